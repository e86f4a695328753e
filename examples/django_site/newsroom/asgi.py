"""The site's ASGI application: martd under /martd/, Django for everything else.

Run it (from the repository root):

    .venv/bin/uvicorn --app-dir examples/django_site newsroom.asgi:application

Django's ASGI handler serves HTTP only: it refuses lifespan events (which martd
needs to start its backend and to end its streams on shutdown) and WebSocket
(one of martd's transports). So a small dispatcher stands in front of it.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "newsroom.settings")

from django.core.asgi import get_asgi_application

# Set Django up before anything imports views or models.
django_app = get_asgi_application()

from .push import martd_app

PREFIX = "/martd"


async def application(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        await martd_app(scope, receive, send)
        return
    root = scope.get("root_path", "")
    path = scope["path"]
    # uvicorn puts root_path (from --root-path) in front of path too.
    local = path[len(root) :] if root and path.startswith(root) else path
    if local == PREFIX or local.startswith(PREFIX + "/"):
        # martd serves what follows root_path: /martd/sub/news is its /sub/news.
        await martd_app({**scope, "root_path": root + PREFIX}, receive, send)
    elif scope["type"] == "http":
        await django_app(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": 1000})
