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
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

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


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol; reads pause while writes cannot keep up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_full = False

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
