"""Serving martd from Python: what ``martd serve`` runs, without the command line.

``serve(**options)`` builds a uvicorn ``Config`` (``build_config``) and runs it;
``build_app`` is the app it serves: martd under a prefix, every other path
proxied to the site (or ``/`` redirected to the demo page). The options are the
``martd serve`` options, by the same names. A bad setting raises
``errors.SettingError`` (its ``option`` names the keyword at fault) and a failure
to start ``errors.StartError``; ``martd serve`` turns either into one line.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING, Any, Literal

from .errors import SettingError, StartError

if TYPE_CHECKING:
    import uvicorn

    from .proxy import ProxyMiddleware

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _check_upstream(upstream: str | None) -> str | None:
    if not upstream:
        return None
    import httpx

    try:
        url = httpx.URL(upstream)
    except httpx.InvalidURL as exc:
        raise SettingError(f"{upstream!r}: {exc}", "upstream") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise SettingError(f"{upstream!r} is not an http:// or https:// URL", "upstream")
    return upstream


def build_app(
    *,
    upstream: str | None = None,
    prefix: str = "/martd",
    upstream_timeout: float = 30.0,
    **settings: Any,
) -> ProxyMiddleware:
    """martd under ``prefix``, the rest proxied to ``upstream`` (or ``/`` → the demo)."""
    from .application import create_app
    from .proxy import ProxyMiddleware, check_prefix

    prefix = check_prefix(prefix)
    hook = settings.get("auth_url") or os.environ.get("MARTD_AUTH_URL") or ""
    if upstream and hook.startswith("/") and not hook.startswith("//"):
        # The auth hook is naturally the site itself: a path means "on the upstream".
        settings["auth_url"] = upstream.rstrip("/") + hook
    martd = create_app(**settings)
    index = f"{prefix}/demo" if martd.settings.demo else None
    return ProxyMiddleware(
        martd, upstream=upstream, prefix=prefix, timeout=upstream_timeout, index=index
    )


def _serve_app() -> ProxyMiddleware:
    """The app of a ``martd serve --workers N`` worker, from ``MARTD_*`` variables."""
    return build_app(
        upstream=os.environ.get("MARTD_UPSTREAM") or None,
        prefix=os.environ.get("MARTD_PREFIX") or "/martd",
        upstream_timeout=float(os.environ.get("MARTD_UPSTREAM_TIMEOUT") or 30.0),
    )


def build_config(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    upstream: str | None = None,
    prefix: str = "/martd",
    backend: str | None = None,
    ssl: bool = False,
    certfile: str | None = None,
    keyfile: str | None = None,
    workers: int = 1,
    log_level: LogLevel = "info",
    access_log: bool = True,
    upstream_timeout: float = 30.0,
) -> uvicorn.Config:
    """The uvicorn ``Config`` that ``martd serve`` runs (see ``martd serve --help``)."""
    import uvicorn

    from . import protocols
    from .config import Settings
    from .proxy import check_prefix

    upstream = _check_upstream(upstream)
    try:
        prefix = check_prefix(prefix)
    except ValueError as exc:
        raise SettingError(str(exc).partition(": ")[2], "prefix") from None
    backend = backend or os.environ.get("MARTD_BACKEND") or "memory"
    try:
        checked = Settings.from_env(backend=backend)
    except ValueError as exc:
        raise SettingError(str(exc)) from None
    if (checked.auth_url or "").startswith("/") and not upstream:
        raise SettingError(
            f"MARTD_AUTH_URL: {checked.auth_url!r} is a path on the site, which needs --upstream;"
            " give a full http:// or https:// URL otherwise"
        )
    if workers < 1:
        raise SettingError("must be at least 1", "workers")
    if workers > 1 and backend == "memory":
        raise SettingError(
            f"--workers {workers} needs a shared backend: with the memory backend each worker "
            "keeps its own channels, so a push would reach only the subscribers of one worker; "
            "use --backend redis://HOST:6379/0 (or --workers 1)"
        )
    if ssl and (certfile or keyfile):
        raise SettingError("give --ssl or --certfile/--keyfile, not both")
    if bool(certfile) != bool(keyfile):
        raise SettingError("--certfile and --keyfile go together")
    if ssl:
        from .devcert import dev_certificate

        try:
            cert = dev_certificate()
        except (OSError, RuntimeError) as exc:
            raise StartError(f"--ssl: {exc}") from None
        _say(cert.instructions())
        certfile, keyfile = str(cert.cert), str(cert.key)

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": access_log,
        "ssl_certfile": certfile,
        "ssl_keyfile": keyfile,
        "lifespan": "on",
        # martd reads X-Forwarded-For itself, from MARTD_TRUSTED_PROXIES only.
        "proxy_headers": False,
        # The site's own streams may never end; martd ends its own on shutdown.
        "timeout_graceful_shutdown": 5,
        # Chosen, not left to what is installed: see martd_asgi.protocols.
        "http": protocols.HTTP,
        "ws": protocols.WEBSOCKET,
        # Pushes are small: compressing them costs more than it saves, and the
        # compression state more than doubled an idle WebSocket's memory.
        "ws_per_message_deflate": False,
    }
    try:
        # Built here even when workers build their own: a setting that cannot work
        # (a malformed backend URL, say) is then one line and an exit, not workers
        # failing and restarted without end.
        app = build_app(
            upstream=upstream, prefix=prefix, upstream_timeout=upstream_timeout, backend=backend
        )
    except ValueError as exc:
        raise SettingError(str(exc)) from None
    if workers > 1:
        # Workers import the app by name, so hand them its options by environment.
        os.environ.update(
            MARTD_BACKEND=backend,
            MARTD_PREFIX=prefix,
            MARTD_UPSTREAM=upstream or "",
            MARTD_UPSTREAM_TIMEOUT=str(upstream_timeout),
        )
        return uvicorn.Config(
            "martd_asgi.serve:_serve_app", factory=True, workers=workers, **options
        )
    return uvicorn.Config(app, **options)


def serve(**options: Any) -> None:
    """Serve martd (and proxy the site) until stopped: the programmatic ``martd serve``."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = build_config(**options)
    # Bind before saying where martd serves: a port in use is one line, not a banner first.
    sock = _listen(config.host, config.port)
    scheme = "https" if config.ssl_certfile else "http"
    host = config.host if ":" not in config.host else f"[{config.host}]"
    port = sock.getsockname()[1]
    base = f"{scheme}://{host}:{port}{options.get('prefix', '/martd').rstrip('/')}"
    _say(f"martd: serving at {base}/ (demo page: {base}/demo, dashboard: {base}/dashboard)")
    if options.get("upstream"):
        _say(f"martd: every other path goes to {options['upstream']}")
    try:
        if config.workers > 1:
            # The supervisor starts the workers (each imports the app by name) and
            # ends them on SIGINT/SIGTERM; no Server object runs in this process.
            Multiprocess(config, sockets=[sock]).run()
            return
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise StartError("martd did not start (uvicorn's log says why)", logged=True)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        hint = "; is martd already running? choose another --port" if port else ""
        raise StartError(f"cannot listen on {host}:{port}: {why}{hint}") from None
    sock.set_inheritable(True)
    return sock
