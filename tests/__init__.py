"""martd_asgi's tests: a package, so that test modules import the shared helpers
(`from .helpers import ...`) instead of reaching into conftest.py."""
