"""``/pub/{channel}``: push (POST), channel info (GET), drop (DELETE)."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from ..errors import Forbidden, MartdError, NotFound
from ..types import Receive, Send
from .common import Request, decode_payload, read_body, send_json

if TYPE_CHECKING:
    from ..application import MartdApp
    from ..backends.base import PublishResult
    from ..idempotency import Idempotency


async def publish(
    app: MartdApp, request: Request, channel: str, receive: Receive, send: Send
) -> None:
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
    app: MartdApp,
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


async def rights(
    app: MartdApp, request: Request, channel: str, attrs: PushAttributes
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


async def _hook_grants_publish(
    app: MartdApp, request: Request, channel: str, key: str | None
) -> bool:
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


async def info(app: MartdApp, request: Request, channel: str, send: Send) -> None:
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


async def delete(app: MartdApp, request: Request, channel: str, send: Send) -> None:
    check_name(channel)
    app.require_server(request, channel)
    if not await app.backend.delete(channel):
        raise NotFound(f"channel: {channel!r} does not exist", channel=channel)
    await send_json(send, 200, {"channel": channel, "deleted": True})
