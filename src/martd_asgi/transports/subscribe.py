"""``/sub/{channels}``: one flow for every transport.

Attach (one2one holds), register with the hub, *then* read history, send
it, and drain what arrived meanwhile, skipping what history already held: a
message pushed while a subscriber connects is delivered exactly once.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..authhook import check_subscribe
from ..channels import History, etag_key
from ..connection import close_delimited
from ..delivery import Subscriber
from ..errors import MartdError, Unavailable
from ..presence import STREAMS, Client
from ..types import Receive, Send
from . import longpoll, sse
from .common import Request, SubRequest, parse_subscription

if TYPE_CHECKING:
    from ..application import MartdApp


def floor(given: str | None, history: History) -> tuple[int, int] | None:
    """Dedupe starts at the given etag when history answered from it."""
    if given is None or given == "0" or history.missed or not history.exists:
        return None
    key, newest = etag_key(given), etag_key(history.last_etag)
    if key is None or newest is None:
        return None
    return min(key, newest)


async def subscribe(
    app: MartdApp, request: Request, spec: str, receive: Receive, send: Send
) -> None:
    try:
        req = parse_subscription(
            request,
            spec,
            max_channels=app.settings.max_channels,
            poll_timeout=app.settings.poll_timeout,
        )
        granted = await check_subscribe(
            app.authority,
            app.hook,
            request.scope,
            request.headers,
            request.query,
            req.channels,
            req.cid if req.cid_given else None,
        )
        if granted is not None:
            req.user = granted.user
        if req.user is None:  # a public channel: the token's ``sub``, for presence
            req.user = app.authority.user(request.headers, request.query)
        if app.closing:
            raise Unavailable("server: shutting down; reconnect", retry_after=1)
        address = app.limits.admit(request.scope, request.headers, request.query, req.channels)
    except MartdError as error:
        await app.refuse(request, send, error)
        return
    try:
        if req.transport == "websocket":
            await app.websocket(app, request, req, receive, send)
            return
        await run(app, request, req, receive, send)
    finally:
        app.limits.release(address)


async def attach(app: MartdApp, req: SubRequest) -> list[str]:
    attached: list[str] = []
    try:
        for channel in req.channels:
            await app.backend.attach(channel, req.cid)
            attached.append(channel)
    except BaseException:
        await detach(app, req, attached)
        raise
    return attached


async def detach(app: MartdApp, req: SubRequest, attached: list[str]) -> None:
    for channel in attached:
        try:
            await app.backend.detach(channel, req.cid)
        except Exception:  # the backend is away; its holds expire on their own
            app.log.warning("could not detach from %s", channel, exc_info=True)


def _client(req: SubRequest) -> Client | None:
    """Who this subscription is for presence; None for a long-poll without a cid, which
    cannot be told apart from a new client on its next poll."""
    if not req.cid_given and req.transport not in STREAMS:
        return None
    return Client(req.cid, req.user, req.transport)


async def present(app: MartdApp, req: SubRequest, attached: list[str]) -> list[str]:
    client = _client(req)
    if client is None:
        return []
    done: list[str] = []
    for channel in attached:
        try:
            await app.backend.present(channel, client, keep=req.cid_given)
        except Exception:  # the backend is away; presence is renewed once it is back
            app.log.warning("could not record presence on %s", channel, exc_info=True)
        done.append(channel)
    return done


async def absent(app: MartdApp, req: SubRequest, channels: list[str]) -> None:
    client = _client(req)
    if client is None:
        return
    for channel in channels:
        try:
            await app.backend.absent(channel, client, keep=req.cid_given)
        except Exception:  # the backend is away; the client's lease runs out on its own
            app.log.warning("could not record leaving %s", channel, exc_info=True)


async def histories(app: MartdApp, sub: Subscriber, req: SubRequest) -> list[History]:
    out = []
    for index, channel in enumerate(req.channels):
        given = req.etags[index]
        history = await app.backend.history(channel, given)
        start = floor(given, history)
        if start is not None:
            sub.last[index] = start
        if history.missed and not history.exists:
            if sub.missed is None:
                sub.missed = set()
            sub.missed.add(channel)
        out.append(history)
    return out


@contextlib.asynccontextmanager
async def session(
    app: MartdApp,
    request: Request,
    req: SubRequest,
    send: Send,
    make: Callable[[], Subscriber],
) -> AsyncIterator[tuple[Any, list[History]] | None]:
    """The part every transport shares: attach, register, read history; on leaving,
    unregister and detach. Yields ``None`` when the request was refused."""
    try:
        attached = await attach(app, req)
    except MartdError as error:
        await app.refuse(request, send, error)
        yield None
        return
    sub = make()
    app.hub.add(sub)
    here: list[str] = []
    try:
        try:
            found = await histories(app, sub, req)
        except MartdError as error:
            sub.closed = True
            app.hub.remove(sub)
            await app.refuse(request, send, error)
            yield None
            return
        here = await present(app, req, attached)
        yield sub, found
    finally:
        app.hub.remove(sub)
        await absent(app, req, here)
        await detach(app, req, attached)


def _subscriber(app: MartdApp, req: SubRequest, send: Send) -> Subscriber:
    if req.transport == "sse":
        return sse.SSESubscriber(send, req.channels, req.cid, app.hub, json=req.json)
    if req.transport == "jsonp":
        assert req.callback is not None  # parse_subscription requires one for jsonp
        return longpoll.JSONPSubscriber(
            send, req.channels, req.cid, app.hub, callback=req.callback
        )
    return longpoll.LongPollSubscriber(send, req.channels, req.cid, app.hub)


async def run(
    app: MartdApp, request: Request, req: SubRequest, receive: Receive, send: Send
) -> None:
    http10 = req.transport == "sse" and request.scope.get("http_version") == "1.0"
    if http10:
        send = close_delimited(send)
    make = functools.partial(_subscriber, app, req, send)
    async with session(app, request, req, send, make) as started:
        if started is None:
            return
        sub, found = started
        if req.transport == "sse":
            await sse.begin(sub, found, send, req.etags, close=http10)
        else:
            deadline = time.monotonic() + req.timeout
            await longpoll.begin(sub, found, deadline=deadline, hub=app.hub)
        request.forget()
        await sub.wait(receive)


__all__ = ["subscribe"]
