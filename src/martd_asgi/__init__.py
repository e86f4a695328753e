"""martd_asgi: a push server for the web, as an ASGI application.

``uvicorn martd_asgi:app`` serves the app built from ``MARTD_*`` variables;
``create_app(**settings)`` builds another, to serve or mount.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .application import MartdApp, create_app
    from .config import Settings

__all__ = ["MartdApp", "Settings", "__version__", "app", "create_app"]


def __getattr__(name: str) -> Any:
    # Importing the package starts nothing; the default app is built on first use.
    if name == "app":
        from .application import default_app

        return default_app()
    if name in ("MartdApp", "create_app"):
        from . import application as module

        return getattr(module, name)
    if name == "Settings":
        from .config import Settings

        return Settings
    raise AttributeError(f"module 'martd_asgi' has no attribute {name!r}")
