"""One pipelined connection for the Redis backend's scripts (single Redis, Sentinel).

Every change to a channel is a script call. Sent through redis-py's pool, each
call takes a connection, a timeout context, a task for the write and a lock
or two, and is written to the socket on its own; its reply wakes the caller
through a stream reader. Here the scripts of a process share one connection:
a call is written at once (the calls that follow in the same event-loop turn
go out together, in one write, at its end) and its reply, parsed by hiredis
in the connection's own ``data_received``, settles the caller's future. Redis
answers in order, so replies match calls first in, first out. Concurrent
pushes from one process then reach Redis together and their notifications
come back together, which lets the subscribers' writes of one turn carry
several messages.

The connection is made by redis-py (address, TLS, AUTH, SELECT, Sentinel's
master lookup), then taken over. When it fails, or a reply does not come
within ``timeout``, every call waiting on it fails (503 upstream, never
retried: a script whose reply was lost may have run) and the next call
connects again. A ``READONLY`` reply (a Sentinel failover demoted the master)
also drops it, so the next call finds the new master.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from redis import exceptions as rexc

from ..turns import Turns

try:
    import hiredis

    AVAILABLE = True
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    AVAILABLE = False


class _Wire(asyncio.Protocol):
    """The taken-over socket: writes calls, reads replies, settles futures in order."""

    def __init__(self, reader: Any, timeout: float) -> None:
        self.reader = reader
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.out: list[bytes] | None = None  # written later in this turn; None: none yet
        self.turns = Turns()  # calls per loop turn
        self.failed: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.streams: tuple[Any, Any] | None = None

    # -- calls

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        if self.failed is not None or self.transport is None:
            fut.set_exception(rexc.ConnectionError("redis: connection lost"))
            return fut
        self.waiting.append((fut, self.loop.time() + self.timeout))
        if self.turns.add():
            # The first call of a calm turn goes out now; any others at its end.
            self.transport.write(packed)
            self.out = []
            self.loop.call_soon(self._flush)
        elif self.out is None:
            # After a busy turn, the calls of this one go out together at its end:
            # Redis then runs them as one batch and their notifications come back
            # together, so a subscriber's write carries all of them.
            self.out = [packed]
            self.loop.call_soon(self._flush)
        else:
            self.out.append(packed)
        if self._timer is None:
            self._timer = self.loop.call_later(self.timeout, self._check)
        return fut

    def _flush(self) -> None:
        out, self.out = self.out, None
        self.turns.end()
        if out and self.transport is not None and self.failed is None:
            self.transport.write(b"".join(out))

    def _check(self) -> None:
        """The oldest call waits too long: Redis or the network is stuck."""
        self._timer = None
        if not self.waiting:
            return
        deadline = self.waiting[0][1]
        now = self.loop.time()
        if deadline <= now:
            self.fail(rexc.TimeoutError("redis: no reply in time"))
        else:
            self._timer = self.loop.call_later(deadline - now, self._check)

    def fail(self, exc: BaseException) -> None:
        """Give up on this connection and on every call waiting on it."""
        if self.failed is None:
            self.failed = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()
        waiting, self.waiting = self.waiting, collections.deque()
        for fut, _ in waiting:
            if not fut.done():
                fut.set_exception(exc)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        waiting = self.waiting
        try:
            reader.feed(data)
            while True:
                reply = reader.gets()
                if reply is False:
                    return
                if not waiting:
                    raise rexc.InvalidResponse("redis: a reply to no call")
                fut = waiting.popleft()[0]
                if isinstance(reply, rexc.ReadOnlyError):
                    # Talking to a replica now: answer this call, then connect again.
                    if not fut.done():
                        fut.set_exception(reply)
                    self.fail(rexc.ConnectionError("redis: the master is now a replica"))
                    return
                if fut.done():  # its caller was cancelled
                    continue
                if isinstance(reply, BaseException):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except Exception as exc:  # a protocol error: nothing on this connection can be trusted
            self.fail(rexc.ConnectionError(f"redis: {exc}"))

    def eof_received(self) -> bool:
        self.fail(rexc.ConnectionError("redis: connection closed by the server"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(rexc.ConnectionError(f"redis: connection lost ({exc or 'closed'})"))


class Line:
    """Scripts' calls on one connection, made (again) when needed."""

    def __init__(self, pool: Any, timeout: float) -> None:
        self._pool = pool  # a redis-py asyncio pool: how to connect, to where
        self._timeout = timeout
        self._wire: _Wire | None = None
        self._lock = asyncio.Lock()

    async def call(self, packed: bytes) -> Any:
        """Send a packed command; its reply, or the error Redis answered, raised."""
        wire = self._wire
        if wire is None or wire.failed is not None:
            wire = await self._connect()
        return await wire.call(packed)

    async def _connect(self) -> _Wire:
        async with self._lock:
            wire = self._wire
            if wire is not None and wire.failed is None:
                return wire
            conn = self._pool.make_connection()
            await conn.connect()
            try:
                wire = self._take(conn)
            except BaseException:
                await conn.disconnect()
                raise
            self._wire = wire
            return wire

    def _take(self, conn: Any) -> _Wire:
        if getattr(conn._reader, "_buffer", b""):
            raise rexc.ConnectionError("redis: unexpected data after connecting")
        wire = _Wire(reply_reader(conn), self._timeout)
        take_over(conn, wire)
        return wire

    async def aclose(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.fail(rexc.ConnectionError("redis: closed"))


def reply_reader(conn: Any) -> Any:
    """A hiredis reader that parses replies as redis-py's connection ``conn`` would."""
    options: dict[str, Any] = {
        "protocolError": rexc.InvalidResponse,
        "replyError": conn._parser.parse_error,
    }
    if conn.encoder.decode_responses:
        options["encoding"] = conn.encoder.encoding
        options["errors"] = conn.encoder.encoding_errors
    return hiredis.Reader(**options)


def take_over(conn: Any, protocol: Any) -> None:
    """Make ``protocol`` (with a ``streams`` slot) own the socket of redis-py's
    connected ``conn``; ``conn`` lets go of it. The stream objects stay referenced
    by ``protocol``: a collected StreamWriter would close the socket."""
    reader, writer = conn._reader, conn._writer
    if reader is None or writer is None:
        raise rexc.ConnectionError("redis: not connected")
    transport = writer.transport
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    protocol.streams = (reader, writer)
    conn._reader = conn._writer = None


def pack(*args: Any) -> bytes:
    """A command in RESP, as redis-py's encoder makes it (str as UTF-8, int as text);
    by hiredis where it can (a third of the time), else here."""
    if AVAILABLE:
        try:
            return hiredis.pack_command(args)  # type: ignore[no-any-return]
        except TypeError:  # a bool or None: spelled as str() spells it, below
            pass
    return _pack(args)


def _pack(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)
