"""The ``martd`` command: ``serve``, ``pub``, ``sub`` and ``token``.

``martd serve`` maps 1:1 onto ``serve(**kwargs)``, which builds a uvicorn
``Config`` (``build_config``) and runs it; every option is also a ``MARTD_*``
environment variable. Errors end the command with one line on stderr and a
non-zero status (2 for bad usage, 1 otherwise, 130 for Ctrl-C), never a traceback.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, Literal, NoReturn

import click

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
DEFAULT_URL = "http://127.0.0.1:8000/martd"


class Failure(click.ClickException):
    """One line on stderr, exit status 1."""


# ------------------------------------------------------------------ serve


def _check_upstream(upstream: str | None) -> str | None:
    if not upstream:
        return None
    import httpx

    try:
        url = httpx.URL(upstream)
    except httpx.InvalidURL as exc:
        raise click.BadParameter(f"{upstream!r}: {exc}", param_hint="--upstream") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise click.BadParameter(
            f"{upstream!r} is not an http:// or https:// URL", param_hint="--upstream"
        )
    return upstream


def build_app(
    *,
    upstream: str | None = None,
    prefix: str = "/martd",
    upstream_timeout: float = 30.0,
    **settings: Any,
) -> Any:
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


def _serve_app() -> Any:
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
) -> Any:
    """The uvicorn ``Config`` that ``martd serve`` runs (see ``martd serve --help``)."""
    import uvicorn

    from . import protocols
    from .config import Settings
    from .proxy import check_prefix

    upstream = _check_upstream(upstream)
    try:
        prefix = check_prefix(prefix)
    except ValueError as exc:
        raise click.BadParameter(str(exc).partition(": ")[2], param_hint="--prefix") from None
    backend = backend or os.environ.get("MARTD_BACKEND") or "memory"
    try:
        checked = Settings.from_env(backend=backend)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if (checked.auth_url or "").startswith("/") and not upstream:
        raise click.UsageError(
            f"MARTD_AUTH_URL: {checked.auth_url!r} is a path on the site, which needs --upstream;"
            " give a full http:// or https:// URL otherwise"
        )
    if workers < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")
    if workers > 1 and backend == "memory":
        raise click.UsageError(
            f"--workers {workers} needs a shared backend: with the memory backend each worker "
            "keeps its own channels, so a push would reach only the subscribers of one worker; "
            "use --backend redis://HOST:6379/0 (or --workers 1)"
        )
    if ssl and (certfile or keyfile):
        raise click.UsageError("give --ssl or --certfile/--keyfile, not both")
    if bool(certfile) != bool(keyfile):
        raise click.UsageError("--certfile and --keyfile go together")
    if ssl:
        from .devcert import dev_certificate

        try:
            cert = dev_certificate()
        except (OSError, RuntimeError) as exc:
            raise Failure(f"--ssl: {exc}") from None
        click.echo(cert.instructions(), err=True)
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
    if workers > 1:
        # Workers import the app by name, so hand them its options by environment.
        os.environ.update(
            MARTD_BACKEND=backend,
            MARTD_PREFIX=prefix,
            MARTD_UPSTREAM=upstream or "",
            MARTD_UPSTREAM_TIMEOUT=str(upstream_timeout),
        )
        return uvicorn.Config("martd_asgi.cli:_serve_app", factory=True, workers=workers, **options)
    try:
        app = build_app(
            upstream=upstream, prefix=prefix, upstream_timeout=upstream_timeout, backend=backend
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return uvicorn.Config(app, **options)


def serve(**kwargs: Any) -> None:
    """Serve martd (and proxy the site): the programmatic ``martd serve``."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = build_config(**kwargs)
    # Bind before saying where martd serves: a port in use is one line, not a banner first.
    sock = _listen(config.host, config.port)
    scheme = "https" if config.ssl_certfile else "http"
    host = config.host if ":" not in config.host else f"[{config.host}]"
    port = sock.getsockname()[1]
    base = f"{scheme}://{host}:{port}{kwargs.get('prefix', '/martd').rstrip('/')}"
    click.echo(
        f"martd: serving at {base}/ (demo page: {base}/demo, dashboard: {base}/dashboard)",
        err=True,
    )
    if kwargs.get("upstream"):
        click.echo(f"martd: every other path goes to {kwargs['upstream']}", err=True)
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
        sys.exit(1)


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
        raise Failure(f"cannot listen on {host}:{port}: {why}{hint}") from None
    sock.set_inheritable(True)
    return sock


class _Port(click.ParamType):  # type: ignore[type-arg,unused-ignore]  # generic from click 8.3
    name = "port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            port = int(value)
        except (TypeError, ValueError):
            port = -1
        if not 0 <= port <= 65535:
            self.fail(f"{value!r} is not a port number (0 to 65535)", param, ctx)
        return port


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="martd_asgi", prog_name="martd")
def cli() -> None:
    """martd: a push server for the web.

    \b
      martd serve                      serve martd at http://127.0.0.1:8000/martd/
      martd serve --upstream URL       ... and send every other path to your site
      martd pub CHANNEL DATA           push a message
      martd sub CHANNEL                print messages as they arrive
      martd token --publish 'user.*'   mint a signed token
    """


@cli.command("serve")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="MARTD_HOST",
    help="Address to listen on (0.0.0.0 for every interface). [env MARTD_HOST]",
)
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=_Port(),
    envvar="MARTD_PORT",
    help="Port to listen on. [env MARTD_PORT]",
)
@click.option(
    "--upstream",
    metavar="URL",
    envvar="MARTD_UPSTREAM",
    help="Your site (e.g. http://127.0.0.1:3000): every request outside --prefix, "
    "WebSockets included, is proxied there, streamed both ways. Without it, / "
    "redirects to the demo page. [env MARTD_UPSTREAM]",
)
@click.option(
    "--prefix",
    default="/martd",
    show_default=True,
    envvar="MARTD_PREFIX",
    help="Path where martd answers (/pub, /sub, /client.js, ... below it). [env MARTD_PREFIX]",
)
@click.option(
    "--backend",
    metavar="URL",
    envvar="MARTD_BACKEND",
    help="'memory' (default) or a redis:// / rediss:// URL; needed for --workers "
    "above 1. [env MARTD_BACKEND]",
)
@click.option(
    "--ssl",
    is_flag=True,
    envvar="MARTD_SSL",
    help="Serve HTTPS with a self-signed development certificate for localhost, "
    "made once and kept in your cache directory; prints how to trust it. "
    "[env MARTD_SSL]",
)
@click.option(
    "--certfile",
    type=click.Path(exists=True, dir_okay=False),
    envvar="MARTD_CERTFILE",
    help="Serve HTTPS with this certificate (chain) file. [env MARTD_CERTFILE]",
)
@click.option(
    "--keyfile",
    type=click.Path(exists=True, dir_okay=False),
    envvar="MARTD_KEYFILE",
    help="The private key of --certfile. [env MARTD_KEYFILE]",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=int,
    envvar="MARTD_WORKERS",
    help="Processes; above 1 needs --backend redis://... [env MARTD_WORKERS]",
)
@click.option(
    "--upstream-timeout",
    default=30.0,
    show_default=True,
    type=float,
    envvar="MARTD_UPSTREAM_TIMEOUT",
    help="Seconds to wait for the upstream's answer to begin (then 504). "
    "[env MARTD_UPSTREAM_TIMEOUT]",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    envvar="MARTD_LOG_LEVEL",
    help="[env MARTD_LOG_LEVEL]",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    envvar="MARTD_ACCESS_LOG",
    help="Log every request (secrets redacted). [env MARTD_ACCESS_LOG]",
)
def serve_command(**kwargs: Any) -> None:
    """Serve martd, and proxy everything else to your site.

    The other settings (MARTD_ALLOW, MARTD_SECRET, MARTD_PRIVATE, MARTD_CORS_ORIGINS,
    MARTD_POLL_TIMEOUT, ...) are read from the environment, as for `uvicorn martd_asgi:app`.
    """
    kwargs["log_level"] = kwargs["log_level"].lower()
    serve(**kwargs)


# ------------------------------------------------------------ pub / sub / token

url_option = click.option(
    "--url",
    default=DEFAULT_URL,
    show_default=True,
    envvar="MARTD_URL",
    help="Where martd is mounted (martd serve: http://HOST:PORT/martd). [env MARTD_URL]",
)


def _check_channels(raw: str) -> list[str]:
    from .channels import check_name
    from .errors import MartdError

    names = raw.split(",")
    for name in names:
        try:
            check_name(name)
        except MartdError as exc:
            raise click.BadParameter(f"{name!r}: {exc.message}", param_hint="CHANNEL") from None
    if len(set(names)) != len(names):
        raise click.BadParameter("a channel is named twice", param_hint="CHANNEL")
    return names


def _client_failure(exc: Exception, url: str | None = None) -> NoReturn:
    from .client import ClientError

    if isinstance(exc, ClientError) and exc.status is not None:
        hint = ""
        if exc.status == 404 and url:  # pushing and subscribing never 404 where martd is
            hint = _where_is_martd(url)
        raise Failure(f"{exc.status}: {exc.message}{hint}")
    raise Failure(str(getattr(exc, "message", exc)))


def _where_is_martd(url: str) -> str:
    """A hint for a --url that is not where martd is mounted: martd at the origin's root?"""
    import httpx

    parsed = httpx.URL(url)
    if parsed.path.rstrip("/") in ("", "/"):
        return "; is --url where martd is mounted?"
    root = str(parsed.copy_with(path="/", query=None)).rstrip("/")
    try:
        health = httpx.get(f"{root}/healthz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        health = None
    if isinstance(health, dict) and "backend" in health:
        return f"; martd answers at {root} (it is served at /): use --url {root}"
    return (
        "; is --url where martd is mounted? "
        f"(uvicorn martd_asgi:app serves it at /: --url {root})"
    )


@cli.command("pub")
@click.argument("channel")
@click.argument("data", required=False)
@url_option
@click.option("--size", type=int, help="Messages the channel keeps (1..10000, default 10).")
@click.option("--life", type=int, help="Seconds a message is kept (default 3600).")
@click.option("--one2one/--no-one2one", default=None, help="At most one subscriber.")
@click.option(
    "--presence/--no-presence", default=None, help="Tell subscribers who joins and leaves."
)
@click.option("--key", help="The channel's key (needed by non-servers, and on keyed channels).")
@click.option("--event", help="The message's event name (SSE `event:`), [A-Za-z0-9_.:-]{1,64}.")
@click.option("--type", "content_type", help="The message's type, sent as its Content-Type.")
@click.option(
    "--idempotency-key",
    help="Answer a repeat of this push (same key, same push) without storing it again.",
)
@click.option("--secret", envvar="MARTD_SECRET", help="The server secret. [env MARTD_SECRET]")
@click.option(
    "--token", envvar="MARTD_TOKEN", help="A token that grants publish. [env MARTD_TOKEN]"
)
def pub_command(
    channel: str,
    data: str | None,
    url: str,
    size: int | None,
    life: int | None,
    one2one: bool | None,
    presence: bool | None,
    key: str | None,
    event: str | None,
    content_type: str | None,
    idempotency_key: str | None,
    secret: str | None,
    token: str | None,
) -> None:
    """Push DATA into CHANNEL and print martd's answer (its JSON body) on one line.

    DATA '-' reads the payload from standard input; without DATA the push is
    empty (it sets the channel's attributes only).
    """
    from .client import Client, ClientError

    _check_channels(channel)
    if "," in channel:
        raise click.BadParameter("push into one channel at a time", param_hint="CHANNEL")
    payload: str | bytes = sys.stdin.buffer.read() if data == "-" else (data or "")
    if secret and token:
        raise click.UsageError("give --secret or --token, not both")
    if not payload:
        click.echo(
            "martd pub: warning: the message is empty; martd stores it and sets the channel's "
            "attributes, but delivers it to no subscriber",
            err=True,
        )
    try:
        with Client(url, secret=secret or None, token=token or None) as client:
            result = client.publish(
                channel,
                payload,
                size=size,
                life=life,
                one2one=one2one,
                key=key,
                presence=presence,
                event=event,
                content_type=content_type,
                idempotency_key=idempotency_key,
            )
    except ValueError as exc:
        raise click.BadParameter(str(exc).partition(": ")[2], param_hint="--url") from None
    except ClientError as exc:
        _client_failure(exc, url)
    # martd's answer as it sent it: {"channel", "etag", "subscribers", "messages"}.
    click.echo(result.answer.strip())


@cli.command("sub")
@click.argument("channels")
@url_option
@click.option(
    "--etag",
    help="Resume after this etag ('0': every retained message first). Several "
    "channels: one place per channel, comma-separated in their order, an empty "
    "place meaning none (a,b,c --etag E1,,0).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One JSON line per message: {"channel", "etag", "data"}, and "event" and "type"'
    " when the message has them.",
)
@click.option(
    "--transport", type=click.Choice(["sse", "longpoll"]), default="sse", show_default=True
)
@click.option("--count", type=click.IntRange(1), help="Exit after this many messages.")
@click.option(
    "--token", envvar="MARTD_TOKEN", help="A token that grants subscribe. [env MARTD_TOKEN]"
)
def sub_command(
    channels: str,
    url: str,
    etag: str | None,
    as_json: bool,
    transport: str,
    count: int | None,
    token: str | None,
) -> None:
    """Print each message of CHANNELS (comma-separated) as it arrives.

    Several channels print 'CHANNEL: payload'. Reconnects with backoff and resumes
    from the last etag on its own; diagnostics go to stderr.
    """
    from .channels import check_etag
    from .client import ClientError
    from .client_subscription import Subscription
    from .errors import MartdError

    names = _check_channels(channels)
    if etag is not None:
        places = etag.split(",")
        if len(places) != len(names):
            raise click.BadParameter(
                f"{len(places)} place(s) for {len(names)} channel(s): give one etag per "
                "channel, comma-separated in the order of CHANNELS, an empty place meaning "
                "none (a,b,c --etag E1,,0)",
                param_hint="--etag",
            )
        try:
            for part in places:
                if part:
                    check_etag(part)
        except MartdError as exc:
            raise click.BadParameter(exc.message.partition(": ")[2], param_hint="--etag") from None
    _check_url(url)
    try:
        subscription = Subscription(
            url,
            names,
            etag=etag,
            transport="longpoll" if transport == "longpoll" else "sse",
            token=token or None,
            on_notice=lambda text: click.echo(f"martd sub: {text}", err=True),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    out = sys.stdout
    received = 0
    try:
        for delivery in subscription:
            if as_json:
                line = json.dumps(delivery.as_json(), ensure_ascii=False)
            elif len(names) > 1:
                line = f"{delivery.channel}: {delivery.data}"
            else:
                line = delivery.data
            out.write(line + "\n")
            out.flush()
            received += 1
            if count is not None and received >= count:
                return
    except ClientError as exc:
        _client_failure(exc, url)
    finally:
        subscription.close()


def _check_url(url: str) -> None:
    import httpx

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise click.BadParameter(f"{url!r}: {exc}", param_hint="--url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise click.BadParameter(f"{url!r} is not an http:// or https:// URL", param_hint="--url")


def _patterns(values: Sequence[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@cli.command("token")
@click.option(
    "--publish",
    multiple=True,
    metavar="PATTERN",
    help="Channels (or patterns with *) the token may push into; repeatable.",
)
@click.option(
    "--subscribe",
    multiple=True,
    metavar="PATTERN",
    help="Private channels (or patterns) the token may subscribe to; repeatable.",
)
@click.option(
    "--ttl",
    type=float,
    default=3600,
    show_default=True,
    help="Seconds until it expires (0: never).",
)
@click.option(
    "--secret",
    envvar="MARTD_SECRET",
    required=True,
    help="The server secret that signs it. [env MARTD_SECRET]",
)
def token_command(
    publish: tuple[str, ...], subscribe: tuple[str, ...], ttl: float, secret: str
) -> None:
    """Print a signed token (HS256 JWT) granting publish / subscribe on channels."""
    if not publish and not subscribe:
        raise click.UsageError("give --publish and/or --subscribe")
    try:
        mint_token = importlib.import_module("martd_asgi.tokens").mint_token
    except ImportError:
        raise Failure("tokens are not available in this version of martd_asgi") from None
    try:
        token = mint_token(
            secret, publish=_patterns(publish), subscribe=_patterns(subscribe), ttl=ttl or None
        )
    except ValueError as exc:
        raise Failure(str(exc)) from None
    click.echo(token)


# ------------------------------------------------------------------ entry


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``martd`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # Bare `martd` is someone finding their way: the help, not an error.
        result = cli.main(args=args or ["--help"], prog_name="martd", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "martd"
        click.echo(f"{where}: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"martd: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (`martd sub ... | head -1`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as exc:
        click.echo(f"martd: unexpected error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
