"""The site's one martd app: served under /martd/ by asgi.py, published to by views."""

from martd_asgi import create_app

# Settings come from MARTD_* variables; keywords given here win over them.
martd_app = create_app()
