"""``/sub/{channels}``: one flow for every transport.

Check the request (rights, limits), then the session every transport shares
(``session.py``: attach, register with the hub, *then* read history), send the
history and drain what arrived meanwhile, skipping what history already held: a
message pushed while a subscriber connects is delivered exactly once. SSE and
long-poll are run here; WebSocket by ``websocket.serve``.
"""

from __future__ import annotations

import functools
import time

from ..authhook import check_subscribe
from ..connection import close_delimited
from ..delivery import Subscriber
from ..errors import MartdError, Unavailable
from ..types import Receive, Send
from . import longpoll, sse, websocket
from .app import App
from .common import Request, SubRequest, parse_subscription
from .session import session


async def subscribe(app: App, request: Request, spec: str, receive: Receive, send: Send) -> None:
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
            await websocket.serve(app, request, req, receive, send)
            return
        await run(app, request, req, receive, send)
    finally:
        app.limits.release(address)


def _subscriber(app: App, req: SubRequest, send: Send) -> Subscriber:
    if req.transport == "sse":
        return sse.SSESubscriber(send, req.channels, req.cid, app.hub, json=req.json)
    if req.transport == "jsonp":
        assert req.callback is not None  # parse_subscription requires one for jsonp
        return longpoll.JSONPSubscriber(send, req.channels, req.cid, app.hub, callback=req.callback)
    return longpoll.LongPollSubscriber(send, req.channels, req.cid, app.hub)


async def run(app: App, request: Request, req: SubRequest, receive: Receive, send: Send) -> None:
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
