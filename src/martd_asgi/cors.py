"""CORS as a pure-ASGI middleware: preflights answered, headers added to responses.

An origin listed in ``MARTD_CORS_ORIGINS`` is echoed exactly, with
``Access-Control-Allow-Credentials: true``, so its pages can send the
``martd_auth`` cookie (``fetch(..., {credentials: "include"})``,
``new EventSource(url, {withCredentials: true})``). ``*`` lets any origin in,
but never with credentials: reflecting any origin with credentials would let
every site act with a visitor's cookie. Streams pass through untouched: only
``http.response.start`` gains headers, bodies are not looked at.

MartdApp installs this only when origins are configured, so without them it
costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from .transports.common import json_bytes
from .types import ASGIApp, Message, Receive, Scope, Send

METHODS = ("GET", "POST", "DELETE", "OPTIONS")
HEADERS = ("Authorization", "Content-Type", "Last-Event-ID", "If-None-Match")
EXPOSE = ("ETag", "Retry-After")
MAX_AGE = 600

__all__ = ["CORSMiddleware"]


class CORSMiddleware:
    """Answers preflights and marks responses for allowed origins; passes the rest through."""

    def __init__(self, app: ASGIApp, *, origins: Sequence[str], max_age: int = MAX_AGE) -> None:
        self.app = app
        self.any = "*" in origins
        self.origins = frozenset(origin.rstrip("/") for origin in origins if origin != "*")
        self.max_age = max_age
        self._methods = ", ".join(METHODS).encode()
        self._headers = ", ".join(HEADERS).encode()
        self._expose = ", ".join(EXPOSE).encode()

    def allowed(self, origin: str) -> list[tuple[bytes, bytes]] | None:
        """The headers for a request from ``origin``, or None when it is not allowed."""
        if origin in self.origins:
            return [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-credentials", b"true"),
            ]
        if self.any:
            return [(b"access-control-allow-origin", b"*")]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = None
        preflight = False
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                preflight = True
        if origin is None:
            await self.app(scope, receive, send)
            return
        if preflight and scope.get("method") == "OPTIONS":
            await self.preflight(origin, scope, send)
            return
        extra = self.allowed(origin) or []
        extra.append((b"vary", b"Origin"))
        if len(extra) > 1:
            extra.append((b"access-control-expose-headers", self._expose))

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                # a copy: the app may send the same start message to many responses
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        # lets the hub reach the connection to cut a slow consumer (connection._transport)
        send_with_cors.__wrapped__ = send  # type: ignore[attr-defined]
        await self.app(scope, receive, send_with_cors)

    async def preflight(self, origin: str, scope: Scope, send: Send) -> None:
        allowed = self.allowed(origin)
        method = ""
        for name, value in scope.get("headers", ()):
            if name == b"access-control-request-method":
                method = value.decode("latin-1").strip().upper()
        vary = (b"vary", b"Origin")
        if allowed is None or method not in METHODS:
            error = (
                f"origin: {origin[:100]!r} is not in MARTD_CORS_ORIGINS"
                if allowed is None
                else f"method: use {', '.join(METHODS)}"
            )
            body = json_bytes({"error": error})
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        vary,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        headers = [
            *allowed,
            (b"access-control-allow-methods", self._methods),
            (b"access-control-allow-headers", self._headers),
            (b"access-control-max-age", str(self.max_age).encode()),
            (b"content-length", b"0"),
            vary,
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
