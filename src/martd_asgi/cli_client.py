"""``martd pub``, ``martd sub`` and ``martd token``: the Python client from a shell.

The commands are added to the ``martd`` group in ``cli.py``. A failure ends the
command with one line on stderr (``Failure``: status 1); a refusal by the server
says its status and martd's message, with a hint when ``--url`` is not where
martd is mounted.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

DEFAULT_URL = "http://127.0.0.1:8000/martd"


class Failure(click.ClickException):
    """One line on stderr, exit status 1."""


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
        f"; is --url where martd is mounted? (uvicorn martd_asgi:app serves it at /: --url {root})"
    )


@click.command("pub")
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


@click.command("sub")
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


@click.command("token")
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
