"""The load generator's clients: raw asyncio Protocols, cheap enough to share two cores.

Subscribers do not parse HTTP beyond the status line: an SSE subscriber cuts its
byte stream at the last blank line (`\\n\\n`) and takes every message's sequence
number out of the complete events with one regular expression; a WebSocket
subscriber walks the frame headers.  Every payload is `m<seq>;` padded with `x`,
so a sequence number can be found in an SSE event, a JSON long-poll answer, a
WebSocket frame and an Nchan long-poll body alike, and each subscriber keeps a
bitmap of what it got: a second copy of a message is a duplicate, a missing one
is lost.  Publishers and long-pollers share one keep-alive HTTP/1.1 client.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import resource
import socket
import sys
from collections.abc import Callable

from measure import Tally, await_or_note

HOST = "127.0.0.1"
SEQ = re.compile(rb"m(\d+);")
KEEPALIVE = re.compile(rb'"type": ?"p[io]ng"')  # martd's WebSocket keep-alive frames
BATCH = 500  # connections opened at once: stays below net.core.somaxconn


# -- subscribers ------------------------------------------------------------------------


class Subscriber(asyncio.Protocol):
    """A streaming subscriber: sends one request, then records sequence numbers."""

    def __init__(self, tally: Tally, request: bytes) -> None:
        self.tally = tally
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.streaming = False
        self.lost_connection = False
        self.refused = False  # answered with an error status instead of a stream
        self.seen = bytearray(64)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_connection = True
        if not self.tally.closing:
            self.tally.closed += 1

    def deliver(self, seq: int) -> None:
        seen = self.seen
        if seq >= len(seen):
            seen.extend(bytes(seq + 64 - len(seen)))
        tally = self.tally
        if seen[seq]:
            tally.duplicates += 1
            return
        seen[seq] = 1
        tally.delivered += 1
        if tally.per_message:
            tally.on_message(seq)
        if tally.delivered == tally.total_target:
            tally.on_total()

    def missing(self, seqs: range | list[int]) -> int:
        seen = self.seen
        return sum(1 for s in seqs if s >= len(seen) or not seen[s])

    def headers(self, data: bytes, expect: bytes) -> bytes | None:
        """Consume the response head; the rest of data, or None while incomplete."""
        data = self.buf + data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            self.buf = data
            return None
        self.buf = b""
        if data[9:12] != expect:
            self.tally.error(status_line(data[:end]))
            self.tally.refused += 1
            self.refused = True
            self.streaming = True  # ignore the rest
            self.tally.on_ready()
            return b""
        self.streaming = True
        self.tally.on_ready()
        return data[end + 4 :]


class SSESubscriber(Subscriber):
    def data_received(self, data: bytes) -> None:
        if not self.streaming:
            rest = self.headers(data, b"200")
            if not rest:
                return
            data = rest
        buf = self.buf + data if self.buf else data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.buf = buf
            return
        self.buf = buf[end + 2 :]
        for m in SEQ.findall(buf, 0, end):
            self.deliver(int(m))
        if b"event: martd" in buf:
            self.tally.controls += buf.count(b"event: martd", 0, end)
        if self.tally.read_interval:
            self.tally.pause(self.transport)


class WSSubscriber(Subscriber):
    def data_received(self, data: bytes) -> None:
        if not self.streaming:
            rest = self.headers(data, b"101")
            if not rest:
                return
            data = rest
        buf = self.buf + data if self.buf else data
        pos, size = 0, len(buf)
        while size - pos >= 2:
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            if opcode <= 2:
                m = SEQ.search(buf, start, end)
                if m is not None:
                    self.deliver(int(m.group(1)))
                elif buf.find(b'"type"', start, end) >= 0 and not KEEPALIVE.search(buf, start, end):
                    self.tally.controls += 1
            elif opcode == 9 and self.transport is not None:
                self.transport.write(ws_frame(0xA, buf[start:end]))
            elif opcode == 8:
                self.tally.error(f"websocket closed by server: {buf[start:end]!r}")
            pos = end
        self.buf = buf[pos:]
        if self.tally.read_interval:
            self.tally.pause(self.transport)


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (only pongs are ever sent)."""
    mask = os.urandom(4)
    n = len(payload)
    head = (
        bytes([0x80 | opcode, 0x80 | n])
        if n < 126
        else bytes([0x80 | opcode, 0xFE]) + n.to_bytes(2, "big")
    )
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big") if n else 0
    body = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return head + mask + body


class HTTPConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client connection with one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: asyncio.Future[tuple[int, bytes, bytes, bytes]] | None = None

    @classmethod
    async def open(cls, port: int) -> HTTPConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, HOST, port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by server"))

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes, bytes, bytes]]:
        """Send raw; resolves to (status, head, lowercased head, body)."""
        self.waiter = asyncio.get_running_loop().create_future()
        if self.transport is None or self.transport.is_closing():
            self.waiter.set_exception(ConnectionError("connection closed by server"))
        else:
            self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = buf[:end]
        low = head.lower()
        start = end + 4
        length = header(head, low, b"content-length")
        if length is not None:
            stop = start + int(length)
            if len(buf) < stop:
                return
            body, rest = buf[start:stop], buf[stop:]
        elif b"transfer-encoding: chunked" in low:
            parts = []
            pos = start
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return
                n = int(buf[pos:eol].split(b";")[0], 16)
                if n == 0:
                    if len(buf) < eol + 4:
                        return
                    rest = buf[eol + 4 :]
                    break
                if len(buf) < eol + 2 + n + 2:
                    return
                parts.append(buf[eol + 2 : eol + 2 + n])
                pos = eol + 2 + n + 2
            body = b"".join(parts)
        else:
            body, rest = b"", buf[start:]
        self.buf = rest
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((int(head[9:12]), head, low, body))


def status_line(head: bytes) -> str:
    return head.split(b"\r\n", 1)[0].decode("latin-1")


def header(head: bytes, low: bytes, name: bytes) -> bytes | None:
    i = low.find(b"\r\n" + name + b":")
    if i < 0:
        return None
    i += len(name) + 3
    j = head.find(b"\r\n", i)
    return head[i : j if j >= 0 else len(head)].strip()


# -- requests ---------------------------------------------------------------------------


def payload(seq: int, size: int) -> bytes:
    head = b"m%d;" % seq
    return head + b"x" * max(0, size - len(head))


def publish_request(channel: str, body: bytes, accept_json: bool = False) -> bytes:
    accept = b"Accept: application/json\r\n" if accept_json else b""
    return (
        b"POST /pub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
        b"%sContent-Length: %d\r\n\r\n" % (channel.encode(), accept, len(body))
    ) + body


def subscribe_request(channel: str, transport: str) -> bytes:
    if transport == "ws":
        key = base64.b64encode(os.urandom(16))
        return (
            b"GET /sub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (channel.encode(), key)
        )
    return (
        b"GET /sub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        % channel.encode()
    )


class Publisher:
    def __init__(self, conn: HTTPConnection, tally: Tally, size: int) -> None:
        self.conn = conn
        self.tally = tally
        self.size = size
        self.acked: list[int] = []  # messages the server took

    async def push(self, channel: str, seq: int, accept_json: bool = False) -> bytes | None:
        """Push message seq; its answer's body, or None (and an error noted) when refused."""
        try:
            status, head, _, body = await self.conn.request(
                publish_request(channel, payload(seq, self.size), accept_json)
            )
        except ConnectionError as e:
            self.tally.error(f"push {seq}: {e}")
            self.tally.pushes_refused += 1
            return None
        if not 200 <= status < 300:
            self.tally.error(f"push {seq}: {status_line(head)} {body[:200]!r}")
            self.tally.pushes_refused += 1
            return None
        self.acked.append(seq)
        return body


# -- connecting many at once ------------------------------------------------------------


async def connect_subscribers(
    args: argparse.Namespace, tally: Tally, n: int, channel_of: Callable[[int], str]
) -> list[Subscriber]:
    loop = asyncio.get_running_loop()
    cls: type[Subscriber] = WSSubscriber if args.transport == "ws" else SSESubscriber
    subs: list[Subscriber] = []
    for first in range(0, n, BATCH):
        count = min(BATCH, n - first)
        ready = tally.wait_ready(tally.ready + count)
        made = await asyncio.gather(
            *(
                loop.create_connection(
                    lambda i=i: cls(tally, subscribe_request(channel_of(i), args.transport)),
                    HOST,
                    args.port,
                )
                for i in range(first, first + count)
            ),
            return_exceptions=True,
        )
        for m in made:
            if isinstance(m, BaseException):
                tally.error(f"connect: {m!r}")
                tally.on_ready()  # do not wait for it
            else:
                subs.append(m[1])
        try:
            await asyncio.wait_for(ready, args.timeout)
        except asyncio.TimeoutError:
            tally.error(f"only {tally.ready} of {first + count} subscribers got response headers")
            break
    return subs


def accepted(subs: list[Subscriber]) -> list[Subscriber]:
    """The subscribers the server took; the refused ones are counted, not expected."""
    return [s for s in subs if not s.refused]


async def connect_stalled(
    args: argparse.Namespace, tally: Tally, k: int, channel: str
) -> list[Subscriber]:
    """Subscribers that read their response head and then nothing, with small socket buffers."""
    loop = asyncio.get_running_loop()
    expect = b"101" if args.transport == "ws" else b"200"
    subs = []
    ready = tally.wait_ready(tally.ready + k)
    for _ in range(k):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (HOST, args.port))
        sub = StalledSubscriber(tally, subscribe_request(channel, args.transport), expect)
        await loop.create_connection(lambda sub=sub: sub, sock=sock)
        subs.append(sub)
    await await_or_note(ready, args.timeout, tally, "the stalled subscribers' response heads")
    return subs


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + 256
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, max(want, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            print(f"warning: RLIMIT_NOFILE hard limit {hard} < {want}", file=sys.stderr)


# -- subscribers of the slow and long-poll scenarios ------------------------------------


class StalledSubscriber(Subscriber):
    """Reads its response head, then nothing until resume(); then it notes what it gets.

    Once resumed it must either be closed by the server (cut: it would resume by
    etag) or receive every message; anything else is a subscriber that was
    silently forgotten.
    """

    def __init__(self, tally: Tally, request: bytes, expect: bytes) -> None:
        super().__init__(tally, request)
        self.expect = expect
        self.got: set[int] = set()

    def data_received(self, data: bytes) -> None:
        if not self.streaming:
            rest = self.headers(data, self.expect)
            if self.streaming and self.transport is not None:
                self.transport.pause_reading()
            data = rest or b""
        # A sequence number is at most 12 bytes: keep that much for the next read.
        buf = self.buf + data
        self.got.update(int(m) for m in SEQ.findall(buf))
        self.buf = buf[-12:]

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class LongPoller(Subscriber):
    """Re-polls with the etag of the last answer; martd's JSON or Nchan's headers."""

    def __init__(self, tally: Tally, conn: HTTPConnection, channel: str, flavor: str) -> None:
        super().__init__(tally, b"")
        self.conn = conn
        self.channel = channel
        self.flavor = flavor
        self.etag = b""
        self.modified = b""
        self.polls = 0

    def request_bytes(self) -> bytes:
        extra = b""
        if self.etag:
            extra = b"If-None-Match: %s\r\n" % self.etag
        if self.modified:
            extra += b"If-Modified-Since: %s\r\n" % self.modified
        return b"GET /sub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" % (self.channel.encode(), extra)

    async def run(self) -> None:
        tally = self.tally
        while not tally.closing:
            try:
                status, head, low, body = await self.conn.request(self.request_bytes())
            except ConnectionError:
                if not tally.closing:
                    tally.closed += 1
                return
            self.polls += 1
            if status in (304, 408):  # Nchan's poll timeout
                continue
            if status >= 500:  # told to come back: do so, as a client would
                tally.error(f"long-poll: {status_line(head)} {body[:200]!r}")
                tally.refused += 1
                await asyncio.sleep(1.0)
                continue
            if status != 200:
                tally.error(f"long-poll: {status_line(head)} {body[:200]!r}")
                return
            if self.flavor == "nchan":
                self.etag = header(head, low, b"etag") or b""
                self.modified = header(head, low, b"last-modified") or b""
                m = SEQ.search(body)
                if m is not None:
                    self.deliver(int(m.group(1)))
                continue
            answer = json.loads(body).get("channels", {}).get(self.channel)
            if answer is None:  # timed out
                continue
            self.etag = answer["etag"].encode()
            if answer.get("missed"):
                tally.controls += 1
            for message in answer.get("messages", ()):
                m = SEQ.search(message["data"].encode())
                if m is not None:
                    self.deliver(int(m.group(1)))


async def channel_subscribers(conn: HTTPConnection, channel: str) -> int:
    status, _, _, body = await conn.request(
        b"GET /pub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
        % channel.encode()
    )
    if status != 200:
        return -1
    return int(json.loads(body).get("subscribers", -1))
