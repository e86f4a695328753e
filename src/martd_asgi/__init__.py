"""martd_asgi: a push server for the web, as an ASGI application.

``uvicorn martd_asgi:app`` serves the app built from ``MARTD_*`` variables;
``create_app(**settings)`` builds another, to serve or mount. ``Client`` and
``AsyncClient`` push into a running martd over HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .application import MartdApp, create_app
    from .client import (
        AsyncClient,
        BadRequest,
        ChannelInfo,
        Client,
        ClientError,
        Conflict,
        Forbidden,
        Gone,
        NotFound,
        PayloadTooLarge,
        PublishResult,
        TooManyRequests,
        TransportError,
        Unauthorized,
        Unavailable,
        Unprocessable,
    )
    from .config import Settings

__all__ = [
    "AsyncClient",
    "BadRequest",
    "ChannelInfo",
    "Client",
    "ClientError",
    "Conflict",
    "Forbidden",
    "Gone",
    "MartdApp",
    "NotFound",
    "PayloadTooLarge",
    "PublishResult",
    "Settings",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "__version__",
    "app",
    "create_app",
]

# The publisher client and its errors (martd_asgi.client), imported on first use:
# every public name but the server's own.
_CLIENT_NAMES = frozenset(__all__) - {"MartdApp", "Settings", "__version__", "app", "create_app"}


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
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'martd_asgi' has no attribute {name!r}")
