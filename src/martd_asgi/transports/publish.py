"""``/pub/{channel}``: push (POST), channel info (GET), drop (DELETE); the one push path.

Every push goes through ``store``, which stores and delivers it and counts it:
``POST /pub`` and a WebSocket ``pub`` frame by way of ``push`` (who may push, the
limits), ``App.publish`` by way of ``push_in_process`` (a server's push).
``check_data`` holds the payload rules of a push given as text (a frame's
``data``, ``App.publish``'s); ``POST /pub`` applies them while reading its body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import idempotency
from ..authhook import may_publish
from ..channels import (
    PushAttributes,
    check_event,
    check_name,
    message_type,
    parse_bool,
    parse_push_attributes,
)
from ..errors import BadRequest, Forbidden, MartdError, NotFound, PayloadTooLarge
from ..types import Receive, Send
from .app import App
from .common import Request, decode_payload, read_body, send_json

if TYPE_CHECKING:
    from ..backends.base import PublishResult
    from ..idempotency import Idempotency


async def publish(app: App, request: Request, channel: str, receive: Receive, send: Send) -> None:
    check_name(channel)
    attrs = parse_push_attributes(request.query)
    event = check_event(request.query["event"]) if "event" in request.query else None
    content_type = message_type(request.headers.get("content-type"))
    idem_key = idempotency.key_from(request.headers)
    data = decode_payload(await read_body(receive, request.headers, app.settings.max_payload))
    ttl = app.settings.idempotency_ttl
    idem = idempotency.make(idem_key, data, attrs, event, content_type, ttl)
    result = await push(
        app, request, channel, data, attrs, event=event, content_type=content_type, idem=idem
    )
    await send_json(send, 201 if result.created else 200, result.answer(data))


async def push(
    app: App,
    request: Request,
    channel: str,
    data: str,
    attrs: PushAttributes,
    *,
    event: str | None,
    content_type: str | None,
    idem: Idempotency | None,
) -> PublishResult:
    """One push, from ``POST /pub`` or a WebSocket ``pub`` frame: who may push,
    the limits, storing and delivering, and the counters."""
    server, attrs = await rights(app, request, channel, attrs)
    if not server and attrs.key is None:
        raise Forbidden(
            "key: not a server; pushing needs the channel's key, a server address, "
            "the secret or a token that grants publish",
            field="key",
        )
    if not server:
        app.limits.check_push(channel, attrs.key)
    with app.limits.key_attempt(request.scope, request.headers, channel, server):
        return await store(
            app,
            channel,
            data,
            attrs,
            server=server,
            event=event,
            content_type=content_type,
            idem=idem,
        )


async def push_in_process(
    app: App,
    channel: str,
    data: str,
    given: dict[str, Any],
    *,
    event: str | None,
    content_type: str | None,
) -> PublishResult:
    """``MartdApp.publish``: a server's push without a request. ``given`` holds the
    attributes named (``size``, ``life``, ``one2one``, ``presence``, ``key``); the
    rest come from the channel's namespace, as for a server's ``POST /pub``."""
    check_name(channel)
    check_data(app, data)
    query = {name: query_text(value) for name, value in given.items() if value is not None}
    attrs = app.settings.namespaces.apply(channel, parse_push_attributes(query))
    return await store(
        app,
        channel,
        data,
        attrs,
        server=True,
        event=None if event is None else check_event(event),
        content_type=message_type(content_type),
        idem=None,
    )


async def store(
    app: App,
    channel: str,
    data: str,
    attrs: PushAttributes,
    *,
    server: bool,
    event: str | None,
    content_type: str | None,
    idem: Idempotency | None,
) -> PublishResult:
    """Store the push and deliver it (the backend), and count it unless it was a replay."""
    result = await app.backend.publish(
        channel,
        data,
        attrs,
        server=server,
        event=event,
        content_type=content_type,
        idempotency=idem,
    )
    if not result.replayed:
        app.counters["published"] += 1
        app.counters["published_bytes"] += len(data.encode()) if not data.isascii() else len(data)
    return result


def check_data(app: App, data: str) -> None:
    """A push's text payload: valid Unicode (JSON can spell a lone surrogate, UTF-8
    cannot carry one) and within ``MARTD_MAX_PAYLOAD`` bytes."""
    try:
        size = len(data.encode())
    except UnicodeEncodeError:
        raise BadRequest("data: not valid UTF-8 (a lone surrogate)", field="data") from None
    if size > app.settings.max_payload:
        raise PayloadTooLarge(f"payload: larger than {app.settings.max_payload} bytes")


def query_text(value: Any) -> str:
    """An attribute as the query string spells it (``true``, ``10``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def rights(
    app: App, request: Request, channel: str, attrs: PushAttributes
) -> tuple[bool, PushAttributes]:
    """Whether the pusher is a server for ``channel`` (by address, the secret, a
    token or the site's auth hook), and ``attrs`` with the channel's namespace
    defaults where a server's push omits them."""
    server = app.authority.is_server(request.scope, request.headers, request.query, channel)
    if not server and app.hook is not None:
        server = await _hook_grants_publish(app, request, channel, attrs.key)
    if server:
        attrs = app.settings.namespaces.apply(channel, attrs)
    return server, attrs


async def _hook_grants_publish(app: App, request: Request, channel: str, key: str | None) -> bool:
    """A browser's push granted by the site's auth hook. With the channel's key the
    push goes on as a key-holder's when the hook refuses or fails."""
    assert app.hook is not None
    try:
        return await may_publish(
            app.authority,
            app.hook,
            request.scope,
            request.headers,
            channel,
            request.query.get("cid"),
        )
    except MartdError:
        if key is None:
            raise
        return False


async def info(app: App, request: Request, channel: str, send: Send) -> None:
    check_name(channel)
    app.require_server(request, channel)
    listing = parse_bool("presence", request.query.get("presence", "0"))
    found = await app.backend.info(channel)
    if found is None:
        raise NotFound(f"channel: {channel!r} does not exist", channel=channel)
    body = found.body()
    if listing:
        body["clients"] = [client.body() for client in await app.backend.clients(channel)]
    await send_json(send, 200, body)


async def delete(app: App, request: Request, channel: str, send: Send) -> None:
    check_name(channel)
    app.require_server(request, channel)
    if not await app.backend.delete(channel):
        raise NotFound(f"channel: {channel!r} does not exist", channel=channel)
    await send_json(send, 200, {"channel": channel, "deleted": True})
