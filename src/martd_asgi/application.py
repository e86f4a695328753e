"""The martd ASGI application: routes, lifecycle, and in-process publishing.

The two hot endpoints (``/pub`` and ``/sub``) are plain ASGI code with no
framework objects per request; everything else is small and rare.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from . import dashboard, logformat, logs, signals
from .auth import Authority
from .authhook import AuthHook
from .backends import make_backend
from .backends.base import Backend
from .config import Settings
from .cors import CORSMiddleware
from .errors import Forbidden, MartdError, MethodNotAllowed, NotFound
from .housekeeping import Housekeeper
from .hub import Hub
from .limits import Limits, configure_backend
from .metrics import Metrics
from .transports import publish as pub
from .transports.common import (
    CALLBACK_RE,
    Request,
    json_bytes,
    send_error,
    send_json,
)
from .transports.longpoll import send_jsonp_error
from .transports.subscribe import subscribe
from .types import Receive, Scope, Send

STATIC = Path(__file__).parent / "static"


def _static_file(name: str) -> bytes:
    for place in (STATIC / name, Path(__file__).parents[2] / "js" / name):
        if place.is_file():
            return place.read_bytes()
    raise FileNotFoundError(name)


class MartdApp:
    """A martd server as an ASGI application. Build it with ``create_app``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.authority = Authority(settings)
        self.hook = AuthHook.from_settings(settings)
        self.hub = Hub(
            max_backlog=settings.sub_buffer_messages,
            max_backlog_bytes=settings.sub_buffer_bytes,
            stall=settings.sub_stall,
            ping=settings.ping,
            presence_rate=settings.presence_rate,
        )
        self.hub.sndbuf = settings.sub_sndbuf
        lease = {"lease": settings.lease} if settings.backend != "memory" else {}
        self.backend: Backend = make_backend(settings.backend, hold=settings.hold, **lease)
        configure_backend(self.backend, settings)
        self.limits = Limits(settings, self.authority, self.hub, self.backend)
        self.log = logging.getLogger("martd")
        self.counters: dict[str, int] = {"published": 0, "published_bytes": 0}
        self.metrics = Metrics(self)
        self.housekeeper = Housekeeper(settings.gc_interval)
        self.started = False
        self.closing = False
        self.started_at = time.time()
        self._start_lock: asyncio.Lock | None = None
        self._static: dict[str, tuple[bytes, bytes]] = {}
        self._serve: Callable[[Scope, Receive, Send], Awaitable[None]] = self._handle
        if settings.cors_origins:
            self._serve = CORSMiddleware(self._handle, origins=settings.cors_origins)

    # ------------------------------------------------------------- lifecycle

    async def startup(self) -> None:
        """Start the backend and timers. Runs on the first request if no lifespan does."""
        if self.started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self.started:
                return
            await self.backend.start(self.hub.deliver)
            if self.hook is not None:
                self.hook.start()
            self.hub.start(interval=min(0.25, self.settings.ping / 2))
            logs.install("uvicorn.access", "uvicorn.error", "martd")
            logformat.apply(self.settings.log_format)
            self.metrics.start()
            signals.watch(self, asyncio.get_running_loop())
            self.closing = False
            self.started = True

    async def shutdown(self) -> None:
        """End every subscription (long-polls answer, SSE gets a retry hint), then stop."""
        if not self.started:
            return
        self.begin_shutdown()
        deadline = time.monotonic() + self.settings.grace
        while self.hub.by_channel and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        signals.unwatch(self)
        self.housekeeper.stop()
        self.hub.stop()
        await self.metrics.stop()
        await self.backend.aclose()
        if self.hook is not None:
            await self.hook.aclose()
        self.started = False

    def begin_shutdown(self) -> None:
        self.closing = True
        self.hub.close_all("shutdown")

    @contextlib.asynccontextmanager
    async def lifespan(self, *_: Any) -> AsyncIterator[None]:
        """For hosts that mount martd: ``async with martd_app.lifespan(): ...``."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                if self.settings.gc_tune:
                    tune_collector()
                    self.housekeeper.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------ publishing

    async def publish(
        self,
        channel: str,
        data: str,
        size: int | None = None,
        life: int | None = None,
        one2one: bool | None = None,
        key: str | None = None,
        *,
        presence: bool | None = None,
        event: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """Push as a server, in process; returns the new etag.

        The push takes the path of ``POST /pub`` by a server (``transports/publish.py``):
        the same checks and errors (``martd_asgi.BadRequest`` and the rest of
        ``errors.py``), the same ``MARTD_MAX_PAYLOAD``, the same counters.

        An attribute left out gets its namespace's default, else the global one
        (``size=10``, ``life=3600``, ``one2one=False``). ``event`` names the
        message's event and ``content_type`` becomes its ``type``, as ``?event=``
        and the Content-Type header of ``POST /pub`` do.
        """
        await self.startup()
        given = {"size": size, "life": life, "one2one": one2one, "presence": presence, "key": key}
        result = await pub.push_in_process(
            self, channel, data, given, event=event, content_type=content_type
        )
        return result.etag

    # ------------------------------------------------------------------ HTTP

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind not in ("http", "websocket"):
            return
        if not self.started:
            await self.startup()
        await self._serve(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        request = Request(scope, path)
        try:
            if path.startswith("/sub/"):
                if kind == "http" and request.method not in ("GET", "HEAD"):
                    raise _method_not_allowed("GET")
                await subscribe(self, request, path[5:], receive, send)
                return
            if kind == "websocket":
                raise NotFound(f"path: no WebSocket endpoint at {path!r}; use /sub/{{channels}}")
            await self._route(request, path, receive, send)
        except MartdError as error:
            await self.refuse(request, send, error)

    async def _route(self, request: Request, path: str, receive: Receive, send: Send) -> None:
        method = request.method
        if path.startswith("/pub/"):
            channel = path[5:]
            if method == "POST":
                await pub.publish(self, request, channel, receive, send)
            elif method == "GET":
                await pub.info(self, request, channel, send)
            elif method == "DELETE":
                await pub.delete(self, request, channel, send)
            else:
                raise _method_not_allowed("POST, GET, DELETE")
            return
        routes: dict[str, Callable[[Request, Send], Awaitable[None]]] = {
            "/client.js": self._client_js,
            "/client.mjs": self._client_mjs,
            "/healthz": self._healthz,
            "/stats": self._stats,
            "/metrics": self._metrics,
            "/demo": self._demo,
            "/dashboard": self._dashboard,
        }
        if path == "/dashboard/events" and self.settings.dashboard:
            if method != "GET":
                raise _method_not_allowed("GET")
            await dashboard.events(self, request, receive, send)
            return
        handler = routes.get(path)
        if (
            handler is None
            or (path == "/demo" and not self.settings.demo)
            or (path == "/dashboard" and not self.settings.dashboard)
        ):
            raise NotFound(f"path: nothing at {path!r}")
        if method not in ("GET", "HEAD"):
            raise _method_not_allowed("GET")
        await handler(request, send)

    async def refuse(self, request: Request, send: Send, error: MartdError) -> None:
        """Answer an error on whatever transport the request came by."""
        self.metrics.refused(error)
        scope = request.scope
        if scope["type"] == "websocket":
            await _deny_websocket(scope, send, error)
            return
        callback = request.query.get("callback") if request.path.startswith("/sub/") else None
        if callback and CALLBACK_RE.match(callback):
            await send_jsonp_error(send, callback, error)
            return
        await send_error(send, error)

    def require_server(self, request: Request, channel: str | None = None) -> None:
        if not self.authority.is_server(request.scope, request.headers, request.query, channel):
            raise Forbidden("server: this needs a server address, the secret or a token")

    # ------------------------------------------------------------ small routes

    async def _static_response(
        self, request: Request, send: Send, name: str, content_type: bytes, cache: bytes
    ) -> None:
        if name not in self._static:
            data = _static_file(name)
            etag = b'"' + hashlib.sha256(data).hexdigest()[:20].encode() + b'"'
            self._static[name] = (data, etag)
        data, etag = self._static[name]
        headers = [(b"content-type", content_type), (b"etag", etag), (b"cache-control", cache)]
        if request.headers.get("if-none-match") == etag.decode():
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        body = b"" if request.method == "HEAD" else data
        await send({"type": "http.response.body", "body": body})

    async def _client_js(self, request: Request, send: Send) -> None:
        await self._static_response(
            request,
            send,
            "client.js",
            b"application/javascript; charset=utf-8",
            b"public, max-age=300, must-revalidate",
        )

    async def _client_mjs(self, request: Request, send: Send) -> None:
        await self._static_response(
            request,
            send,
            "client.mjs",
            b"text/javascript; charset=utf-8",
            b"public, max-age=300, must-revalidate",
        )

    async def _demo(self, request: Request, send: Send) -> None:
        await self._static_response(
            request, send, "demo.html", b"text/html; charset=utf-8", b"no-cache"
        )

    async def _dashboard(self, request: Request, send: Send) -> None:
        self.require_server(request)
        await self._static_response(
            request, send, "dashboard.html", b"text/html; charset=utf-8", b"no-cache"
        )

    async def _healthz(self, request: Request, send: Send) -> None:
        try:
            ok = await asyncio.wait_for(self.backend.healthy(), timeout=2.0)
        except Exception:
            ok = False
        body = {"status": "ok" if ok else "unavailable", "backend": self.backend.name}
        await send_json(send, 200 if ok else 503, body)

    async def _stats(self, request: Request, send: Send) -> None:
        self.require_server(request)
        await send_json(send, 200, await self.stats())

    async def _metrics(self, request: Request, send: Send) -> None:
        self.require_server(request)
        body, content_type = await self.metrics.render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        body = b"" if request.method == "HEAD" else body
        await send({"type": "http.response.body", "body": body})

    async def stats(self) -> dict[str, Any]:
        backend = await self.backend.stats()
        return {
            **backend,
            "subscribers": self.hub.subscribers(),
            "connections": self.hub.by_transport(),
            "published": self.counters["published"],
            "published_bytes": self.counters["published_bytes"],
            "delivered_bytes": self.metrics.delivered_bytes,
            "rejected": {f"{s} {r}": n for (s, r), n in sorted(self.metrics.rejected.items())},
            **self.hub.counters,
            "uptime": round(time.time() - self.started_at, 3),
            **self.metrics.namespaces_and_hook(),
        }


def _method_not_allowed(allowed: str) -> MartdError:
    return MethodNotAllowed(f"method: use {allowed}", allow=allowed)


async def _deny_websocket(scope: Scope, send: Send, error: MartdError) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json_bytes(error.as_json())
        await send(
            {
                "type": "websocket.http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


GC_THRESHOLDS = (20_000, 50, 100)


def tune_collector() -> None:
    """Collect less often, and never walk what start-up made.

    Every connection and delivery makes short-lived objects; with the default
    thresholds the collector runs so often, and walks so many long-lived
    connection objects when it does, that it took over half of the CPU of a
    long-poll benchmark. martd makes few reference cycles, so collecting less
    often costs little memory. Only done when martd itself receives the
    lifespan, i.e. when it is the server's app, not mounted in someone's.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app(**settings: Any) -> MartdApp:
    """A new martd app: settings from ``MARTD_*`` variables, then these keywords."""
    return MartdApp(Settings.from_env(**settings))


_default: MartdApp | None = None


def default_app() -> MartdApp:
    global _default
    if _default is None:
        try:
            _default = create_app()
        except ValueError as exc:
            # `uvicorn martd_asgi:app` with a bad setting: one line, no traceback.
            raise SystemExit(f"martd: {exc}") from None
    return _default
