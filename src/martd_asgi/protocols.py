"""The uvicorn protocols ``martd serve`` runs, closing two holes of the stock ones.

``uvicorn martd_asgi:app`` gets the same with
``--http martd_asgi.protocols:HTTPProtocol --ws martd_asgi.protocols:WebSocketProtocol``.

- ``HTTPProtocol``: uvicorn's httptools protocol, but header fields that come
  after a chunked body (trailers) are not added to the request's headers. The
  stock one appends them to ``scope["headers"]``, where a trailer such as
  ``X-Forwarded-For`` would speak for a client's address as if a proxy had
  written it, and the proxy would pass it on to the site as a header.
- ``WebSocketProtocol``: uvicorn's ``websockets-sansio`` protocol (the lightest
  and quickest of the three uvicorn offers; bench/ws_impls.py measures them), with
  flow control on what a client makes the server write. The stock one answers
  every ping with a pong written at once, so a client that sends pings and never
  reads grows the server's write buffer without bound. Here, while the write
  buffer is above its high-water mark, the socket is not read: the client's
  pings wait in its own buffers, and the server holds at most one read's worth
  of answers (about the size of the pings it read) above the mark.

``write_frames`` lets martd write its own frames (``martd_asgi.wsframe``) to a
connection of uvicorn's websockets-sansio protocol (this one or the stock one):
one ``transport.write`` for the frames of one loop turn, without an ASGI event,
a frame object and a join per message.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HTTP
except ImportError:  # no httptools: h11 never reads trailers as headers
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HTTP  # type: ignore[assignment]

HTTP = "martd_asgi.protocols:HTTPProtocol"
WEBSOCKET = "martd_asgi.protocols:WebSocketProtocol"


class HTTPProtocol(_HTTP):
    """uvicorn's HTTP protocol; request headers are only those before the body."""

    def on_header(self, name: bytes, value: bytes) -> None:
        if "method" in self.scope:  # set when the header section ended: a trailer
            return
        super().on_header(name, value)

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # The WebSocket protocol owns the connection now, so this one never hears
        # connection_lost, which is where it lets go of its parser; the parser holds
        # it in turn, and the pair (with the transport and socket) would wait for a
        # full garbage collection. Connection churn piled them up by the thousand.
        self.parser = None  # type: ignore[assignment]


class _Inbox:
    """The client's messages for ``receive``: the part of ``asyncio.Queue`` uvicorn uses.

    One reader (the ASGI app's ``receive``). An ``asyncio.Queue`` holds four
    deques (about 2.5 KB) for every idle connection; this holds a list.
    """

    __slots__ = ("items", "loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.items: list[Any] = []
        self.loop = loop
        self.waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self.items

    def qsize(self) -> int:
        return len(self.items)

    async def get(self) -> Any:
        while not self.items:
            waiter = self.waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        return self.items.pop(0)


class _Flag:
    """The part of ``asyncio.Event`` uvicorn uses for "the transport takes writes",
    without a deque of waiters for every connection (there is rarely one)."""

    __slots__ = ("loop", "value", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.value = True
        self.waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self.value

    def set(self) -> None:
        self.value = True
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self.value = False

    async def wait(self) -> bool:
        if self.value:
            return True
        waiter = self.loop.create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waiter)
        try:
            await waiter
        finally:
            if self.waiters is not None and waiter in self.waiters:
                self.waiters.remove(waiter)
        return True


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol; reads pause while writes cannot keep up.

    An idle connection holds less: a list for the client's messages instead of
    an ``asyncio.Queue``, a flag instead of an ``asyncio.Event``, and neither
    the handshake's request nor its response once the connection is open.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_full = False
        self.queue = _Inbox(self.loop)  # type: ignore[assignment]
        self.writable = _Flag(self.loop)  # type: ignore[assignment]

    def start_keepalive(self) -> None:
        # uvicorn calls this right after it wrote the handshake's response
        super().start_keepalive()
        # websockets' parser keeps the request for the connection's life: its headers
        # at least can go (the ASGI scope has its own copy).
        self.request.headers.clear()
        self.request = self.response = None  # type: ignore[assignment]
        self.conn.id = None  # type: ignore[assignment]  # a UUID, for websockets' logs only

    def pause_writing(self) -> None:
        super().pause_writing()
        self.write_full = True
        if not self.read_paused:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_full = False
        if not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()

    async def receive(self) -> Any:
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            if not self.write_full:
                self.transport.resume_reading()
        return message


def frame_protocol(send: Any) -> WebSocketsSansIOProtocol | None:
    """The connection under ``send`` if martd may write frames to it (``write_frames``).

    Only uvicorn's websockets-sansio protocol (this one or the stock one), reached
    through a bound ``send`` (not wrapped by middleware), with no extension
    negotiated.
    """
    protocol = getattr(send, "__self__", None)
    if isinstance(protocol, WebSocketsSansIOProtocol) and not protocol.conn.extensions:
        return protocol
    return None


def write_frames(protocol: WebSocketsSansIOProtocol, data: bytes) -> bool:
    """Write ready frames to the connection; False (nothing written) where ``send`` decides.

    That is before the handshake, once a close was sent or received, and while the
    transport's buffer is above its high-water mark: there ``send`` waits, and the
    subscriber is parked as with any server.
    """
    transport = protocol.transport
    if (
        protocol.conn.state is not State.OPEN
        or protocol.close_sent
        or not protocol.writable.is_set()
        or transport.is_closing()
    ):
        return False
    transport.write(data)
    return True
