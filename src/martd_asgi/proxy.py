"""Proxy pass: martd under a prefix, every other request to the site behind it.

``ProxyMiddleware(martd_app, upstream="http://127.0.0.1:3000", prefix="/martd")``
serves martd at ``/martd/...`` (by setting ``root_path``, which martd strips)
and forwards everything else to the upstream, so that a site and its pushes
share one origin during development:

- HTTP: method, path, query string and headers as received; the path goes byte
  for byte under the upstream's own path (``..`` is the site's to resolve, not
  the proxy's), and ``OPTIONS *`` goes as it came. Request and response bodies
  are streamed chunk by chunk, never buffered, so a streaming page or an SSE
  endpoint of the site keeps working.
- Headers as a site behind nginx (deploy/nginx.conf) sees them: ``Host`` as the
  browser sent it (on WebSocket upgrades too), hop-by-hop headers dropped,
  ``X-Forwarded-For`` and ``X-Real-IP`` set to the browser's address and
  ``X-Forwarded-Proto`` / ``-Host`` set, replacing what the browser wrote; a
  ``Forwarded``, ``X-Forwarded-Port`` or ``X-Forwarded-Prefix`` it wrote is
  dropped. Redirects and
  ``Set-Cookie`` go back untouched; no cookie jar is kept, so one user's cookies
  never reach another's requests. An upstream that cannot be reached answers
  ``502``, one that does not answer in time ``504``, both as martd's JSON errors.
- WebSocket: the upgrade is made to the upstream first (with the ``websockets``
  library); its refusal is passed back as it was, and once both sides are open
  frames are relayed both ways and close codes passed on (``proxy_websocket``).

The ``httpx.AsyncClient`` is injected (``client=``); without one, a client with
no timeout on reading bodies and a jar that refuses every cookie is made and
closed with the app's lifespan.
"""

from __future__ import annotations

import http.cookiejar
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from .proxy_websocket import relay_websocket, site_connection
from .transports.common import json_bytes
from .types import Receive, Scope, Send

log = logging.getLogger("martd.proxy")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Made anew by the websockets library for the upstream handshake (Host: the browser's).
WEBSOCKET_HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"content-length",
    }
)
# Written by the proxy, or dropped: never passed on as the browser wrote them.
FORWARDED = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-real-ip",
    }
)


def make_client(timeout: float = 30.0) -> httpx.AsyncClient:
    """An httpx client fit for proxying: no read timeout, no cookies, no redirects."""
    refuse_all = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, read=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        cookies=http.cookiejar.CookieJar(policy=refuse_all),
        follow_redirects=False,
        trust_env=False,
    )


def _dropped(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    dropped = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == b"connection":
            dropped.update(part.strip().lower() for part in value.split(b",") if part.strip())
    return dropped


def forward_headers(
    scope: Scope, *, skip: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """The request's headers for the upstream: hop-by-hop dropped, X-Forwarded-* set
    (the browser's own are replaced: it is the first hop)."""
    raw: list[tuple[bytes, bytes]] = list(scope.get("headers", ()))
    dropped = _dropped(raw) | skip | FORWARDED
    headers = [(name, value) for name, value in raw if name.lower() not in dropped]
    client = scope.get("client")
    if client:
        address = str(client[0]).encode()
        headers += [(b"x-forwarded-for", address), (b"x-real-ip", address)]
    secure = scope.get("scheme", "http") in ("https", "wss")
    headers.append((b"x-forwarded-proto", b"https" if secure else b"http"))
    host = next((value for name, value in raw if name.lower() == b"host"), None)
    if host:
        headers.append((b"x-forwarded-host", host))
    return headers


async def send_error(send: Send, status: int, message: str, *, websocket: bool = False) -> None:
    body = json_bytes({"error": message})
    prefix = "websocket.http.response" if websocket else "http.response"
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": f"{prefix}.start", "status": status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": body})


class ClientDisconnect(Exception):
    """The browser went away while its request body was being forwarded."""


class Proxy:
    """An ASGI app that forwards every HTTP request and WebSocket to ``upstream``."""

    def __init__(
        self, upstream: str, *, client: httpx.AsyncClient | None = None, timeout: float = 30.0
    ) -> None:
        url = httpx.URL(upstream)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"upstream: {upstream!r} is not an http:// or https:// URL")
        self.upstream = upstream
        # what answers and log lines say: never the credentials an upstream URL may hold
        self.shown = str(url.copy_with(username=None, password=None)) if url.userinfo else upstream
        self.base = url.copy_with(query=None, fragment=None)
        self.owns_client = client is None
        self.client = client if client is not None else make_client(timeout)
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.websocket(scope, receive, send)

    async def aclose(self) -> None:
        if self.owns_client:
            await self.client.aclose()

    def target(self, scope: Scope) -> bytes:
        """The request target for the upstream: the path as received, byte for byte,
        under the upstream's path, and the query string; ``*`` stays ``*``."""
        raw_path = scope.get("raw_path") or quote(scope["path"]).encode()
        if raw_path == b"*":
            return raw_path
        query = scope.get("query_string", b"")
        return self.base.raw_path.rstrip(b"/") + raw_path + (b"?" + query if query else b"")

    # ------------------------------------------------------------------ HTTP

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn already answered any `Expect: 100-continue` when the body is read.
        headers = forward_headers(scope, skip=frozenset({b"expect"}))
        names = {name.lower() for name, _ in scope.get("headers", ())}
        has_body = b"content-length" in names or b"transfer-encoding" in names
        body_done = anyio.Event()

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    break
            body_done.set()

        if has_body and b"transfer-encoding" in names:
            # Chunked in, chunked out: httpx frames an iterator body itself.
            headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        if not has_body:
            body_done.set()
        target = self.target(scope)
        if not target.startswith(b"/") and not (target == b"*" and scope["method"] == "OPTIONS"):
            await send_error(send, 400, f"path: {scope['path']!r} is not a path")
            return
        # httpx would resolve "." and ".." in a URL: the target goes as it is.
        request = httpx.Request(
            scope["method"],
            self.base,
            headers=headers,
            content=body() if has_body else None,
            extensions={"target": target},
        )
        try:
            with anyio.fail_after(self.timeout):
                response = await self.client.send(request, stream=True)
        except ClientDisconnect:
            return
        except (TimeoutError, httpx.TimeoutException):
            await send_error(
                send, 504, f"upstream: {self.shown} did not answer within {self.timeout:g} s"
            )
            return
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            await send_error(send, 502, f"upstream: cannot reach {self.shown} ({reason})")
            return
        if self.client.cookies:
            self.client.cookies.clear()
        try:
            await self._relay(response, receive, send, body_done)
        finally:
            await response.aclose()

    async def _relay(
        self, response: httpx.Response, receive: Receive, send: Send, body_done: anyio.Event
    ) -> None:
        raw = list(response.headers.raw)
        dropped = _dropped(raw)
        headers = [(name, value) for name, value in raw if name.lower() not in dropped]
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        async with anyio.create_task_group() as group:
            group.start_soon(_cancel_on_disconnect, receive, body_done, group.cancel_scope)
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError as exc:
                # Too late for a status: leave the response incomplete so the
                # browser sees a cut, not a clean end.
                log.warning("upstream %s: response cut short (%s)", self.shown, exc)
                group.cancel_scope.cancel()
                return
            except OSError:
                group.cancel_scope.cancel()
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            group.cancel_scope.cancel()

    # ------------------------------------------------------------- WebSocket

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus

        if (await receive())["type"] != "websocket.connect":
            return
        can_deny = "websocket.http.response" in scope.get("extensions", {})
        base = self.base
        scheme = "wss" if base.scheme == "https" else "ws"
        port = f":{base.port}" if base.port else ""
        host = f"[{base.host}]" if ":" in base.host else base.host
        url = f"{scheme}://{host}{port}{self.target(scope).decode('latin-1')}"
        headers = forward_headers(scope, skip=WEBSOCKET_HANDSHAKE)
        try:
            upstream = await connect(
                url,
                additional_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                create_connection=site_connection(any(k.lower() == b"host" for k, _ in headers)),
                subprotocols=scope.get("subprotocols") or None,
                user_agent_header=None,
                proxy=None,
                open_timeout=self.timeout,
                max_size=16 * 1024 * 1024,
            )
        except InvalidStatus as exc:
            answer = exc.response
            if can_deny:
                headers = [
                    (k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in answer.headers.raw_items()
                    if k.lower().encode("latin-1") not in HOP_BY_HOP
                ]
                await send(
                    {
                        "type": "websocket.http.response.start",
                        "status": answer.status_code,
                        "headers": headers,
                    }
                )
                await send({"type": "websocket.http.response.body", "body": answer.body or b""})
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            status = 504 if timed_out else 502
            message = (
                f"upstream: {self.shown} did not answer within {self.timeout:g} s"
                if timed_out
                else "upstream: cannot open a WebSocket to "
                f"{self.shown} ({exc or type(exc).__name__})"
            )
            if can_deny:
                await send_error(send, status, message, websocket=True)
            else:
                await send({"type": "websocket.close", "code": 1011})
            return
        handshake = upstream.response
        cookies = [
            (b"set-cookie", value.encode("latin-1"))
            for value in (handshake.headers.get_all("Set-Cookie") if handshake else [])
        ]
        await send(
            {"type": "websocket.accept", "subprotocol": upstream.subprotocol, "headers": cookies}
        )
        try:
            await relay_websocket(upstream, receive, send)
        finally:
            await upstream.close()


async def _cancel_on_disconnect(
    receive: Receive, body_done: anyio.Event, scope: anyio.CancelScope
) -> None:
    await body_done.wait()
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


class ProxyMiddleware:
    """martd under ``prefix``; every other HTTP request and WebSocket to ``upstream``.

    With ``upstream=None`` nothing is proxied: ``/`` redirects to ``index`` when
    one is given (``martd serve`` passes ``{prefix}/demo`` with the demo page on),
    and every other path is 404.
    """

    def __init__(
        self,
        app: Any,
        *,
        upstream: str | None,
        prefix: str = "/martd",
        client: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
        index: str | None = None,
    ) -> None:
        self.app = app
        self.prefix = check_prefix(prefix)
        self.proxy = Proxy(upstream, client=client, timeout=timeout) if upstream else None
        self.index = index

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        root = scope.get("root_path", "")
        path = scope["path"]
        relative = path[len(root) :] if root and path.startswith(root) else path
        if relative == self.prefix or relative.startswith(self.prefix + "/"):
            await self.app(dict(scope, root_path=root + self.prefix), receive, send)
        elif self.proxy is not None:
            await self.proxy(scope, receive, send)
        elif kind == "http" and relative == "/" and self.index:
            location = (root + self.index).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 307,
                    "headers": [(b"location", location), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
        else:
            message = f"path: nothing at {relative!r}; martd is at {self.prefix}/"
            if kind == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
                await send({"type": "websocket.close", "code": 1008})
            elif kind == "websocket":
                await send_error(send, 404, message, websocket=True)
            else:
                await send_error(send, 404, message)

    def _lifespan_send(self, send: Send) -> Send:
        async def wrapped(message: Any) -> None:
            if message["type"] == "lifespan.shutdown.complete" and self.proxy is not None:
                await self.proxy.aclose()
            await send(message)

        return wrapped


def check_prefix(prefix: str) -> str:
    """``/martd`` or ``/a/b``: a leading slash, no trailing one, not the root."""
    cleaned = prefix.rstrip("/")
    if not cleaned.startswith("/") or "//" in cleaned or "?" in cleaned or "#" in cleaned:
        raise ValueError(f"prefix: {prefix!r} must be a path like /martd")
    return cleaned
