"""The uvicorn protocols ``martd serve`` runs, closing two holes of the stock ones.

``uvicorn martd_asgi:app`` gets the same with
``--http martd_asgi.protocols:HTTPProtocol --ws martd_asgi.protocols:WebSocketProtocol``.

- ``HTTPProtocol``: uvicorn's httptools protocol, but header fields that come
  after a chunked body (trailers) are not added to the request's headers. The
  stock one appends them to ``scope["headers"]``, where a trailer such as
  ``X-Forwarded-For`` would speak for a client's address as if a proxy had
  written it, and the proxy would pass it on to the site as a header.
- ``WebSocketProtocol`` (``martd_asgi.wsprotocol``, named here too): flow control
  on what a client makes the server write.

``joined_writes`` sends a response's head and body as one write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator
from typing import Any

from .wsprotocol import (
    LIGHT_WEBSOCKET,
    Flag,
    FlowControlledProtocol,
    LightProtocol,
    WebSocketProtocol,
)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HTTP
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle as _Cycle
except ImportError:  # no httptools: h11 never reads trailers as headers
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HTTP  # type: ignore[assignment]
    from uvicorn.protocols.http.h11_impl import (  # type: ignore[assignment]
        RequestResponseCycle as _Cycle,
    )

HTTP = "martd_asgi.protocols:HTTPProtocol"
WEBSOCKET = "martd_asgi.protocols:WebSocketProtocol"


__all__ = [
    "HTTP",
    "LIGHT_WEBSOCKET",
    "WEBSOCKET",
    "FlowControlledProtocol",
    "HTTPProtocol",
    "LightProtocol",
    "WebSocketProtocol",
    "joined_writes",
]


class HTTPProtocol(_HTTP):
    """uvicorn's HTTP protocol; request headers are only those before the body.

    A connection holds less for as long as it stays open (an event stream, a
    waiting poll): flags instead of the two ``asyncio.Event`` (the request's
    "message" event and the flow control's "writable" one) and a list instead of
    a deque for pipelined requests; each of those holds a deque of 600 bytes or so.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(getattr(self, "pipeline", None), deque):
            self.pipeline = _Pipeline()  # type: ignore[assignment]

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        flow = getattr(self, "flow", None)
        if isinstance(getattr(flow, "_is_writable_event", None), asyncio.Event):
            writable = flow._is_writable_event.is_set()  # type: ignore[union-attr]
            flow._is_writable_event = Flag(self.loop, writable)  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        before = getattr(self, "cycle", None)
        super().on_headers_complete()
        cycle = getattr(self, "cycle", None)
        event = getattr(cycle, "message_event", None)
        if cycle is not before and isinstance(event, asyncio.Event):
            # a new request, whose task has not run yet: nothing waits on the event
            cycle.message_event = Flag(self.loop, event.is_set())  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        if "method" in self.scope:  # set when the header section ended: a trailer
            return
        super().on_header(name, value)

    def handle_websocket_upgrade(self) -> None:
        ws = self.ws_protocol_class
        if not (isinstance(ws, type) and issubclass(ws, LightProtocol) and hasattr(self, "url")):
            super().handle_websocket_upgrade()
        else:  # as uvicorn does, but the handshake read from what httptools parsed
            self.connections.discard(self)
            protocol = ws(
                config=self.config, server_state=self.server_state, app_state=self.app_state
            )
            protocol.connection_made(self.transport)
            self.transport.set_protocol(protocol)
            method, headers = self.scope["method"], list(self.scope["headers"])
            if not protocol.upgrade(method, self.url, headers):
                head = [method.encode(), b" ", self.url, b" HTTP/1.1\r\n"]
                for name, value in headers:
                    head += [name, b": ", value, b"\r\n"]
                head.append(b"\r\n")
                protocol.data_received(b"".join(head))
        # The WebSocket protocol owns the connection now, so this one never hears
        # connection_lost, which is where it lets go of its parser; the parser holds
        # it in turn, and the pair (with the transport and socket) would wait for a
        # full garbage collection. Connection churn piled them up by the thousand.
        self.parser = None  # type: ignore[assignment]


class _Pipeline(list[Any]):
    """The part of a deque uvicorn uses for requests pipelined behind the current one."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class _Held:
    """A transport whose writes wait, joined, until ``joined_writes`` ends."""

    __slots__ = ("chunks", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def close(self) -> None:  # the end of a response not kept alive: what it held first
        if self.chunks:
            self.transport.write(b"".join(self.chunks))
            self.chunks.clear()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


@contextlib.contextmanager
def joined_writes(send: Any) -> Iterator[None]:
    """The response events sent meanwhile leave in one write (uvicorn's HTTP ``send``).

    uvicorn writes a response's head as soon as it is sent: a JSON answer, a
    long-poll's answer, an event stream's head and first lines would each cost
    two system calls. Elsewhere this does nothing.
    """
    cycle = getattr(send, "__self__", None)
    if not isinstance(cycle, _Cycle):
        yield
        return
    transport = cycle.transport
    held = cycle.transport = _Held(transport)  # type: ignore[assignment]
    try:
        yield
    finally:
        cycle.transport = transport
        if held.chunks and not transport.is_closing():
            transport.write(b"".join(held.chunks))
