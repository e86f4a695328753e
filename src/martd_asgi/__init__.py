"""martd_asgi: a push server for the web, as an ASGI application.

``uvicorn martd_asgi:app`` serves the app built from ``MARTD_*`` variables;
``create_app(**settings)`` builds another, to serve or mount (``ProxyMiddleware``
puts it in front of a site, ``build_config`` is what ``martd serve`` runs).
``Client`` and ``AsyncClient`` push into a running martd over HTTP,
``Subscription`` reads channels from a script, ``mint_token`` signs a grant.
Errors are one hierarchy under ``MartdError`` (``errors.py``), whether the server
raised them in process or the client read them from an answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .application import MartdApp, create_app
    from .client import AsyncClient, ChannelInfo, Client, ClientError, PublishResult, TransportError
    from .client_subscription import Subscription
    from .config import Settings
    from .errors import (
        BadRequest,
        Conflict,
        Forbidden,
        Gone,
        MartdError,
        NotFound,
        PayloadTooLarge,
        TooManyRequests,
        Unauthorized,
        Unavailable,
        Unprocessable,
    )
    from .proxy import ProxyMiddleware
    from .serve import build_config
    from .tokens import mint_token

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
    "MartdError",
    "NotFound",
    "PayloadTooLarge",
    "ProxyMiddleware",
    "PublishResult",
    "Settings",
    "Subscription",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "__version__",
    "app",
    "build_config",
    "create_app",
    "mint_token",
]

# Where each public name lives; imported on first use, so that importing the
# package starts nothing and loads neither httpx nor uvicorn.
_HOMES = {
    "MartdApp": "application",
    "create_app": "application",
    "Settings": "config",
    "Subscription": "client_subscription",
    "ProxyMiddleware": "proxy",
    "build_config": "serve",
    "mint_token": "tokens",
    **dict.fromkeys(
        [
            "AsyncClient",
            "ChannelInfo",
            "Client",
            "ClientError",
            "PublishResult",
            "TransportError",
        ],
        "client",
    ),
    **dict.fromkeys(
        [
            "BadRequest",
            "Conflict",
            "Forbidden",
            "Gone",
            "MartdError",
            "NotFound",
            "PayloadTooLarge",
            "TooManyRequests",
            "Unauthorized",
            "Unavailable",
            "Unprocessable",
        ],
        "errors",
    ),
}


def __getattr__(name: str) -> Any:
    # Importing the package starts nothing; the default app is built on first use.
    if name == "app":
        from .application import default_app

        return default_app()
    home = _HOMES.get(name)
    if home is not None:
        import importlib

        return getattr(importlib.import_module(f".{home}", __name__), name)
    raise AttributeError(f"module 'martd_asgi' has no attribute {name!r}")
