"""The part of a subscription every transport shares: attach, register, history, detach.

``session()`` attaches each channel (one2one holds), registers the subscriber
with the hub in the *busy* state (what arrives meanwhile waits in its backlog),
*then* reads each channel's history after the given etag and records presence;
on leaving it unregisters, records the leave and detaches. Because the
subscriber is registered before the history is read, a message pushed while it
connects is delivered exactly once (the history's etag is its dedupe floor).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..channels import History, etag_key
from ..delivery import Subscriber
from ..errors import MartdError
from ..presence import STREAMS, Client
from ..types import Send
from .app import App
from .common import Request, SubRequest


def floor(given: str | None, history: History) -> tuple[int, int] | None:
    """Dedupe starts at the given etag when history answered from it."""
    if given is None or given == "0" or history.missed or not history.exists:
        return None
    key, newest = etag_key(given), etag_key(history.last_etag)
    if key is None or newest is None:
        return None
    return min(key, newest)


async def attach(app: App, req: SubRequest) -> list[str]:
    attached: list[str] = []
    try:
        for channel in req.channels:
            await app.backend.attach(channel, req.cid)
            attached.append(channel)
    except BaseException:
        await detach(app, req, attached)
        raise
    return attached


async def detach(app: App, req: SubRequest, attached: list[str]) -> None:
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


async def present(app: App, req: SubRequest, attached: list[str]) -> list[str]:
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


async def absent(app: App, req: SubRequest, channels: list[str]) -> None:
    client = _client(req)
    if client is None:
        return
    for channel in channels:
        try:
            await app.backend.absent(channel, client, keep=req.cid_given)
        except Exception:  # the backend is away; the client's lease runs out on its own
            app.log.warning("could not record leaving %s", channel, exc_info=True)


async def histories(app: App, sub: Subscriber, req: SubRequest) -> list[History]:
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
    app: App,
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
