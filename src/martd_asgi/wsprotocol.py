"""martd's WebSocket protocols for uvicorn, and martd's own frame writes.

- ``WebSocketProtocol``: uvicorn's ``websockets-sansio`` protocol (the lightest
  and quickest of the three uvicorn offers; bench/ws_impls.py measures them), with
  flow control on what a client makes the server write. The stock one answers
  every ping with a pong written at once, so a client that sends pings and never
  reads grows the server's write buffer without bound. Here, while the write
  buffer is above its high-water mark, the socket is not read: the client's
  pings wait in its own buffers, and the server holds at most one read's worth
  of answers (about the size of the pings it read) above the mark. With the
  uvicorn and websockets releases it was written for, it is ``LightProtocol``:
  lighter per connection and with a quicker handshake.

``write_frames`` lets martd write its own frames (``martd_asgi.wsframe``) to a
connection of uvicorn's websockets-sansio protocol (this one or the stock one):
one ``transport.write`` for the frames of one loop turn, without an ASGI event,
a frame object and a join per message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Any
from urllib.parse import unquote

import uvicorn
import websockets.version
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.utils import accept_key

# The quick handshake and the lighter WebSocket connection copy what uvicorn's
# protocol sets up, and reach into websockets' connection state: they are used
# with the releases they were written and tested against. With any other release
# martd's protocols keep only what works through the public parts (the trailer
# fix, the read pause while writes cannot keep up, martd's own frame writes).
LIGHT_WEBSOCKET = uvicorn.__version__.startswith("0.55.") and websockets.version.version.startswith(
    "17."
)


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


class Flag:
    """The part of ``asyncio.Event`` uvicorn uses (set, clear, wait), without a deque
    of waiters for every connection (there is rarely one)."""

    __slots__ = ("loop", "value", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, value: bool = True) -> None:
        self.loop = loop
        self.value = value
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


class FlowControlledProtocol(WebSocketsSansIOProtocol):
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


class LightProtocol(FlowControlledProtocol):
    """``FlowControlledProtocol``, lighter and with a quicker handshake.

    An idle connection holds less: a list for the client's messages instead of
    an ``asyncio.Queue``, a flag instead of an ``asyncio.Event``, and neither
    the handshake's request nor its response once the connection is open.
    """

    # What uvicorn's __init__ sets on every connection, here where it is the same for
    # all (the class, or the config and server state): CPython shares an instance
    # dict's keys between instances only up to 30 of them, and uvicorn's 35 made
    # each connection's dict 1.6 KB instead of about 300 bytes.
    logger = logging.getLogger("uvicorn.error")
    close_timeout = 10.0
    handshake_initiated = handshake_complete = close_sent = disconnected = False
    close_timer = pong_timer = ping_timer = None
    initial_response = pending_ping_payload = None
    ping_sent_at = last_ping_rtt = 0.0
    curr_msg_data_type = "bytes"
    read_paused = False
    write_full = False
    accept_key: bytes | None = None  # a quick handshake, until accepted
    early: list[bytes] | None = None  # what came before the accept, then
    server = client = None

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # uvicorn's WebSocketsSansIOProtocol.__init__, with the above left out
        if not config.loaded:
            config.load()
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.transport = None  # type: ignore[assignment]
        self.queue = _Inbox(self.loop)  # type: ignore[assignment]
        self.writable = Flag(self.loop)  # type: ignore[assignment]
        extensions = []
        if config.ws_per_message_deflate:
            extensions = [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12,
                    client_max_window_bits=12,
                    compress_settings={"memLevel": 5},
                )
            ]
        self.conn = ServerProtocol(
            extensions=extensions, max_size=config.ws_max_size, logger=self.logger
        )
        self.frames: list[bytes] = []

    @property
    def app(self) -> Any:
        return self.config.loaded_app

    @property
    def root_path(self) -> str:  # type: ignore[override]
        return str(self.config.root_path)

    @property
    def asgi_version(self) -> Any:  # type: ignore[override]
        return self.config.asgi_version

    @property
    def connections(self) -> Any:  # type: ignore[override]
        return self.server_state.connections

    @property
    def tasks(self) -> Any:  # type: ignore[override]
        return self.server_state.tasks

    @property
    def default_headers(self) -> Any:  # type: ignore[override]
        return self.server_state.default_headers

    @property
    def ping_interval(self) -> Any:  # type: ignore[override]
        return self.config.ws_ping_interval

    @property
    def ping_timeout(self) -> Any:  # type: ignore[override]
        return self.config.ws_ping_timeout

    def start_keepalive(self) -> None:
        # uvicorn calls this right after it wrote the handshake's response
        super().start_keepalive()
        request = getattr(self, "request", None)
        if request is not None:
            # websockets' parser keeps the request for the connection's life: its
            # headers at least can go (the ASGI scope has its own copy).
            request.headers.clear()
            self.request = self.response = None  # type: ignore[assignment]
        self.conn.id = None  # type: ignore[assignment]  # a UUID, for websockets' logs only

    # -- the quick handshake

    def upgrade(self, method: str, url: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
        """Start from the request httptools parsed (``HTTPProtocol``); False: not here.

        uvicorn writes the request out again for websockets to parse, and then has
        websockets build the response as objects. For a plain handshake (no
        extension to negotiate, nothing websockets would refuse) the key is checked
        and the response written here; anything else goes the usual way.
        """
        key = _handshake_key(method, url, headers, self.config.ws_per_message_deflate)
        if key is None:
            return False
        self.handshake_initiated = True
        self.accept_key = accept_key(key).encode()
        self.early = []
        raw_path, _, query_string = url.partition(b"?")
        subprotocols: list[str] = []
        for name, value in headers:
            if name == b"sec-websocket-protocol":
                subprotocols += [token.strip() for token in value.decode("latin-1").split(",")]
        root_path = self.root_path
        self.scope = {  # what uvicorn's handle_connect makes
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": root_path,
            "path": root_path + unquote(raw_path.decode("ascii")),
            "raw_path": root_path.encode("ascii") + raw_path,
            "query_string": query_string,
            "headers": headers,
            "subprotocols": subprotocols,
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)
        return True

    def data_received(self, data: bytes) -> None:
        if self.early is not None:  # a quick handshake the app has not answered yet
            self.early.append(data)
            self.transport.pause_reading()
            return
        super().data_received(data)

    async def send(self, message: Any) -> None:
        if self.accept_key is not None:
            if message["type"] == "websocket.accept":
                await self.writable.wait()
                if self.disconnected:
                    raise ClientDisconnected()
                self._accept(message)
                return
            self.accept_key = self.early = None  # refused: uvicorn answers
        await super().send(message)

    def _accept(self, message: Any) -> None:
        key, early = self.accept_key, self.early
        self.accept_key = self.early = None
        if self.logger.isEnabledFor(logging.INFO):
            client, path = self.scope.get("client"), self.scope["path"]
            where = f"{client[0]}:{client[1]}" if client else ""
            self.logger.info('%s - "WebSocket %s" [accepted]', where, path)
        head = [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"]
        head.append(b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n" % key)
        for name, value in (*self.default_headers, *message.get("headers", ())):
            head += [name, b": ", value, b"\r\n"]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            head.append(b"Sec-WebSocket-Protocol: %s\r\n" % subprotocol.encode())
        head.append(b"\r\n")
        if self.transport.is_closing():
            return
        self.handshake_complete = True
        conn = self.conn
        conn.state = State.OPEN
        conn.parser = Protocol.parse(conn)  # frames from here on
        next(conn.parser)
        self.transport.write(b"".join(head))
        self.start_keepalive()
        if early:
            self.transport.resume_reading()
            self.data_received(b"".join(early))


WebSocketProtocol: type[FlowControlledProtocol] = (
    LightProtocol if LIGHT_WEBSOCKET else FlowControlledProtocol
)


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


def _one(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of a header given once; None if absent or given twice."""
    found = None
    for key, value in headers:
        if key == name:
            if found is not None:
                return None
            found = value
    return found


def _handshake_key(
    method: str, url: bytes, headers: list[tuple[bytes, bytes]], deflate: bool
) -> str | None:
    """The client's key if websockets would accept this handshake with no extension."""
    if method != "GET" or not url.isascii():
        return None
    connection: list[bytes] = []
    upgrade: list[bytes] = []
    origins = 0
    for name, value in headers:
        if name == b"connection":
            connection += [token.strip().lower() for token in value.split(b",")]
        elif name == b"upgrade":
            upgrade += [token.strip().lower() for token in value.split(b",")]
        elif name == b"sec-websocket-extensions" and deflate:
            return None  # to negotiate: websockets does it
        elif name == b"origin":
            origins += 1
    if b"upgrade" not in connection or upgrade != [b"websocket"] or origins > 1:
        return None
    if _one(headers, b"sec-websocket-version") != b"13":
        return None
    key = _one(headers, b"sec-websocket-key")
    if key is None:
        return None
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    return key.decode("ascii")
