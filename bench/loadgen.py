#!/usr/bin/env python3
"""Load generator for martd's benchmark, cheap enough to share two cores with the server.

One scenario per invocation; prints one JSON object on stdout.  bench/run.py
starts the servers and calls this once per scenario and server, but it can be
run by hand against any running martd or Nchan:

    python bench/loadgen.py fanout --port 8000 --pid $(pgrep -o -f uvicorn) -n 1000

Clients are raw asyncio Protocols (uvloop when installed).  Subscribers do not
parse HTTP beyond the status line: an SSE subscriber cuts its byte stream at the
last blank line (`\\n\\n`) and takes every message's sequence number out of the
complete events with one regular expression; a WebSocket subscriber walks the
frame headers.  Every payload is `m<seq>;` padded with `x`, so a sequence number
can be found in an SSE event, a JSON long-poll answer, a WebSocket frame and an
Nchan long-poll body alike, and each subscriber keeps a bitmap of what it got:
a second copy of a message is a duplicate, a missing one is lost.

Server CPU is utime+stime of the server's process tree (the pid given and all
its descendants) from /proc/PID/stat, taken around the measured phase; server
memory is the sum of Pss and Rss in /proc/PID/smaps_rollup over the same tree.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

HOST = "127.0.0.1"
SEQ = re.compile(rb"m(\d+);")
KEEPALIVE = re.compile(rb'"type": ?"p[io]ng"')  # martd's WebSocket keep-alive frames
CLK_TCK = os.sysconf("SC_CLK_TCK")
BATCH = 500  # connections opened at once: stays below net.core.somaxconn


# -- the server's process tree, from /proc --------------------------------------------


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    tree = [pid]
    for p in tree:
        tree.extend(children.get(p, ()))
    return tree


def server_cpu(pid: int) -> float:
    """Seconds of utime+stime used so far by pid and its descendants."""
    ticks = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def server_memory(pid: int) -> tuple[int, int]:
    """(Pss, Rss) in KiB summed over pid and its descendants."""
    pss = rss = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith(b"Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            continue
    return pss, rss


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Profiler:
    """py-spy over the server during the measured phase only (--profile FILE)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not self.args.profile:
            return
        self.proc = subprocess.Popen(
            [
                self.args.py_spy,
                "record",
                "--pid",
                str(self.args.pid),
                "--subprocesses",
                "--nonblocking",
                "--rate",
                str(self.args.profile_rate),
                "--format",
                "raw",
                "--output",
                self.args.profile,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy finds the interpreter before it samples

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)
            self.proc = None


# -- bookkeeping shared by all clients of one scenario --------------------------------


class Tally:
    """Counts deliveries per sequence number and wakes whoever waits for one to complete."""

    def __init__(self, expect: int) -> None:
        self.expect = expect  # subscribers that should receive each message
        self.per_message = True  # count each message's deliveries (off for throughput)
        self.counts: dict[int, int] = {}
        self.done_at: dict[int, float] = {}
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.delivered = 0
        self.total_target = -1
        self.total_waiter: asyncio.Future[None] | None = None
        self.duplicates = 0
        self.controls = 0  # missed / kicked / deleted events
        self.closed = 0  # subscriber connections the server closed
        self.refused = 0  # subscriptions answered with an error status
        self.pushes_refused = 0
        self.errors: list[str] = []
        self.ready = 0
        self.ready_target = -1
        self.ready_waiter: asyncio.Future[None] | None = None
        self.closing = False
        # Batched reading: a subscriber pauses after each read and a timer resumes
        # them all every read_interval seconds, so one recv() takes several events.
        self.read_interval = 0.0
        self.paused: list[asyncio.Transport] = []

    def on_message(self, seq: int) -> None:
        c = self.counts.get(seq, 0) + 1
        self.counts[seq] = c
        if c == self.expect:
            self.done_at[seq] = time.perf_counter()
            fut = self.waiters.pop(seq, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def on_total(self) -> None:
        if self.total_waiter is not None and not self.total_waiter.done():
            self.total_waiter.set_result(None)

    def wait_message(self, seq: int) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        if self.counts.get(seq, 0) >= self.expect:
            fut.set_result(None)
        else:
            self.waiters[seq] = fut
        return fut

    def wait_total(self, total: int) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        self.total_target = total
        self.total_waiter = fut
        if self.delivered >= total:
            fut.set_result(None)
        return fut

    def on_ready(self) -> None:
        self.ready += 1
        if self.ready == self.ready_target and self.ready_waiter is not None:
            self.ready_waiter.set_result(None)

    def wait_ready(self, target: int) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        self.ready_target = target
        self.ready_waiter = fut
        if self.ready >= target:
            fut.set_result(None)
        return fut

    def pause(self, transport: asyncio.Transport | None) -> None:
        if transport is not None:
            transport.pause_reading()
            self.paused.append(transport)

    async def resume_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.read_interval)
            paused, self.paused = self.paused, []
            for transport in paused:
                if not transport.is_closing():
                    transport.resume_reading()

    def error(self, what: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(what)
        else:
            self.errors[-1] = f"... and more: {what}"


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


# -- scenarios --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


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


def loss_report(tally: Tally, subs: list[Subscriber], seqs: list[int]) -> dict[str, Any]:
    """Lost: a message the server accepted that an accepted subscriber did not get."""
    seqs = sorted(set(seqs))
    return {
        "lost": sum(s.missing(seqs) for s in subs),
        "duplicated": tally.duplicates,
        "control_events": tally.controls,
        "refused_by_server": tally.refused,
        "pushes_refused": tally.pushes_refused,
        "closed_by_server": tally.closed,
        "errors": tally.errors,
    }


async def await_or_note(fut: asyncio.Future[None], timeout: float, tally: Tally, what: str) -> bool:
    try:
        await asyncio.wait_for(fut, timeout)
        return True
    except asyncio.TimeoutError:
        tally.error(f"timed out waiting for {what}")
        return False


async def sequential_pushes(
    args: argparse.Namespace, pub: Publisher, tally: Tally, channel: str
) -> tuple[list[float], float, float]:
    """Push 1..args.pushes one at a time, each once the last reached everyone:
    push-to-last-delivery latencies (ms), server CPU and our own CPU meanwhile."""
    latencies = []
    args.profiler.start()
    own0, cpu0 = own_cpu(), server_cpu(args.pid)
    for seq in range(1, args.pushes + 1):
        done = tally.wait_message(seq)
        t0 = time.perf_counter()
        if await pub.push(channel, seq) is None:
            break
        if not await await_or_note(done, args.timeout, tally, f"message {seq}"):
            break
        latencies.append((tally.done_at[seq] - t0) * 1e3)
    cpu = server_cpu(args.pid) - cpu0
    own = own_cpu() - own0
    args.profiler.stop()
    return latencies, cpu, own


async def scenario_idle(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    tally = Tally(n)
    channels = max(1, args.channels)
    names = [f"{args.prefix}-idle-{k}" for k in range(channels)]
    await asyncio.sleep(0.5)
    pss0, rss0 = server_memory(args.pid)
    args.profiler.start()
    cpu0 = server_cpu(args.pid)
    t0 = time.perf_counter()
    subs = await connect_subscribers(args, tally, n, lambda i: names[i % channels])
    wall = time.perf_counter() - t0
    cpu1 = server_cpu(args.pid)
    args.profiler.stop()
    await asyncio.sleep(args.settle)
    pss1, rss1 = server_memory(args.pid)
    connected = len(subs)
    live = accepted(subs)
    # Every held subscription must still be alive: one message on each channel.
    tally.expect = len(live) // channels
    pub = Publisher(await HTTPConnection.open(args.port), tally, args.size)
    for name in names:
        await pub.push(name, 0)
    await await_or_note(tally.wait_total(len(live)), args.timeout, tally, "the check message")
    result = {
        "connections": connected,
        "subscribed": len(live),
        "server_pss_kib_per_conn": (pss1 - pss0) / max(1, connected),
        "server_rss_kib_per_conn": (rss1 - rss0) / max(1, connected),
        "server_cpu_us_per_connect": (cpu1 - cpu0) / max(1, connected) * 1e6,
        "connect_wall_s": wall,
        "server_pss_kib_before": pss0,
        "server_pss_kib_after": pss1,
        "messages": 1,
    }
    result.update(loss_report(tally, live, pub.acked))
    return result


async def scenario_fanout(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    tally = Tally(n)
    channel = f"{args.prefix}-fanout"
    subs = accepted(await connect_subscribers(args, tally, n, lambda i: channel))
    tally.expect = len(subs)
    pub = Publisher(await HTTPConnection.open(args.port), tally, args.size)
    # Message 0 warms up and proves every subscription live; 1..pushes are measured.
    done = tally.wait_message(0)
    await pub.push(channel, 0)
    await await_or_note(done, args.timeout, tally, "message 0")
    latencies, cpu, own = await sequential_pushes(args, pub, tally, channel)
    deliveries = len(subs) * len(latencies)
    result = {
        "subscribers": len(subs),
        "pushes": args.pushes,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "deliveries": deliveries,
        "server_cpu_s": cpu,
        "deliveries_per_cpu_s": deliveries / cpu if cpu else float("nan"),
        "server_cpu_us_per_delivery": cpu / deliveries * 1e6 if deliveries else float("nan"),
        "loadgen_cpu_s": own,
        "messages": args.pushes + 1,
    }
    result.update(loss_report(tally, subs, pub.acked))
    return result


async def scenario_throughput(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    tally = Tally(n)
    channel = f"{args.prefix}-throughput"
    subs = accepted(await connect_subscribers(args, tally, n, lambda i: channel))
    tally.expect = len(subs)
    publishers = [
        Publisher(await HTTPConnection.open(args.port), tally, args.size)
        for _ in range(args.publishers)
    ]
    done = tally.wait_message(0)
    await publishers[0].push(channel, 0)
    await await_or_note(done, args.timeout, tally, "message 0")
    acked: list[int] = list(publishers[0].acked)  # message 0, if taken
    next_seq = 1
    tally.read_interval = args.read_interval
    tally.per_message = False
    resumer = asyncio.ensure_future(tally.resume_periodically()) if args.read_interval else None
    args.profiler.start()
    own0, cpu0 = own_cpu(), server_cpu(args.pid)
    t0 = time.perf_counter()
    stop_at = t0 + args.duration

    async def publish_loop(pub: Publisher) -> None:
        nonlocal next_seq
        while time.perf_counter() < stop_at:
            seq = next_seq
            next_seq += 1
            if await pub.push(channel, seq) is None:
                return
            acked.append(seq)

    await asyncio.gather(*(publish_loop(p) for p in publishers))
    t_pub = time.perf_counter() - t0
    delivered = await await_or_note(
        tally.wait_total(len(subs) * len(acked)), args.timeout, tally, "every delivery"
    )
    t_all = time.perf_counter() - t0
    cpu = server_cpu(args.pid) - cpu0
    own = own_cpu() - own0
    args.profiler.stop()
    if resumer is not None:
        resumer.cancel()
    deliveries = tally.delivered - len(subs)  # message 0 is not measured
    result = {
        "subscribers": len(subs),
        "publishers": args.publishers,
        "pushes": len(acked) - 1,
        "pushes_per_s": (len(acked) - 1) / t_pub,
        "drain_s": t_all - t_pub,
        "all_delivered": delivered,
        "deliveries": deliveries,
        "server_cpu_s": cpu,
        "deliveries_per_cpu_s": deliveries / cpu if cpu else float("nan"),
        "server_cpu_us_per_push": cpu / max(1, len(acked) - 1) * 1e6,
        "loadgen_cpu_s": own,
        "wall_s": t_all,
        "messages": len(acked),
    }
    result.update(loss_report(tally, subs, acked))
    return result


async def scenario_latency(args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally(1)
    channel = f"{args.prefix}-latency"
    subs = accepted(await connect_subscribers(args, tally, 1, lambda i: channel))
    pub = Publisher(await HTTPConnection.open(args.port), tally, args.size)
    latencies = []
    args.profiler.start()
    cpu0 = server_cpu(args.pid)
    for seq in range(args.pushes):
        done = tally.wait_message(seq)
        t0 = time.perf_counter()
        if await pub.push(channel, seq) is None:
            break
        if not await await_or_note(done, args.timeout, tally, f"message {seq}"):
            break
        latencies.append((tally.done_at[seq] - t0) * 1e3)
    cpu = server_cpu(args.pid) - cpu0
    args.profiler.stop()
    result = {
        "pushes": args.pushes,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "server_cpu_us_per_push": cpu / max(1, len(latencies)) * 1e6,
        "messages": args.pushes,
    }
    result.update(loss_report(tally, subs, pub.acked))
    return result


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


async def scenario_slow(args: argparse.Namespace) -> dict[str, Any]:
    """Readers and stalled subscribers on one channel; the publisher must not notice the stalled."""
    n, k = args.n, args.stalled
    tally = Tally(n)
    channel = f"{args.prefix}-slow"
    readers = accepted(await connect_subscribers(args, tally, n, lambda i: channel))
    tally.expect = len(readers)
    stalled = await connect_stalled(args, tally, k, channel)
    pub = Publisher(await HTTPConnection.open(args.port), tally, args.size)
    pss0, _ = server_memory(args.pid)
    pushed_at: dict[int, float] = {}
    push_ms = []
    args.profiler.start()
    cpu0 = server_cpu(args.pid)
    t0 = time.perf_counter()
    for seq in range(args.pushes):
        t = pushed_at[seq] = time.perf_counter()
        if await pub.push(channel, seq) is None:
            break
        push_ms.append((time.perf_counter() - t) * 1e3)
    t_pub = time.perf_counter() - t0
    pss1, _ = server_memory(args.pid)
    await await_or_note(
        tally.wait_message(args.pushes - 1), args.timeout, tally, "the readers' last message"
    )
    cpu = server_cpu(args.pid) - cpu0
    args.profiler.stop()
    # The stalled ones read again: each must be cut, or get everything.
    for sub in stalled:
        sub.resume()
    deadline = time.perf_counter() + 5
    while time.perf_counter() < deadline and not all(
        s.lost_connection or len(s.got) == args.pushes for s in stalled
    ):
        await asyncio.sleep(0.05)
    cut = sum(s.lost_connection for s in stalled)
    complete = sum(len(s.got) == args.pushes and not s.lost_connection for s in stalled)
    delivery_ms = [(tally.done_at[s] - pushed_at[s]) * 1e3 for s in tally.done_at]
    result = {
        "readers": len(readers),
        "stalled": len(stalled),
        "pushes": args.pushes,
        "pushes_per_s": args.pushes / t_pub,
        "push_p99_ms": percentile(push_ms, 99),
        "push_max_ms": max(push_ms, default=float("nan")),
        "p99_ms": percentile(delivery_ms, 99),
        "server_pss_growth_mib": (pss1 - pss0) / 1024,
        "stalled_closed_by_server": cut,
        "stalled_got_everything": complete,
        # neither cut nor caught up: the server stopped sending without closing
        "stalled_forgotten": len(stalled) - cut - complete,
        "server_cpu_s": cpu,
        "messages": args.pushes,
    }
    result.update(loss_report(tally, readers, pub.acked))
    result["closed_by_server"] = sum(s.lost_connection for s in readers)  # readers only
    return result


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


async def scenario_longpoll(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    tally = Tally(n)
    channel = f"{args.prefix}-longpoll"
    pub = Publisher(await HTTPConnection.open(args.port), tally, args.size)
    # Message 0 creates the channel; every poller starts after it, by its etag,
    # so none can miss message 1 however late its first poll is registered.
    body = await pub.push(channel, 0, accept_json=True)
    if body is None:
        raise SystemExit(f"cannot publish: {tally.errors}")
    info = json.loads(body)
    etag, modified = b"", b""
    if args.flavor == "nchan":
        when, tag = info["last_message_id"].split(":", 1)
        etag, modified = tag.encode(), formatdate(int(when), usegmt=True).encode()
    else:
        etag = info["etag"].encode()
    loop = asyncio.get_running_loop()
    pollers = []
    for first in range(0, n, BATCH):
        conns = await asyncio.gather(
            *(
                loop.create_connection(HTTPConnection, HOST, args.port)
                for _ in range(first, min(n, first + BATCH))
            )
        )
        for _, conn in conns:
            p = LongPoller(tally, conn, channel, args.flavor)
            p.etag, p.modified = etag, modified
            pollers.append(p)
    tasks = [asyncio.ensure_future(p.run()) for p in pollers]
    # Best effort: wait until the server counts every poller as waiting.
    deadline = time.perf_counter() + args.timeout / 3
    registered = -1
    while time.perf_counter() < deadline:
        registered = await channel_subscribers(pub.conn, channel)
        if registered >= n:
            break
        await asyncio.sleep(0.05)
    latencies, cpu, own = await sequential_pushes(args, pub, tally, channel)
    deliveries = n * len(latencies)
    tally.closing = True
    for t in tasks:
        t.cancel()
    result = {
        "clients": n,
        "registered_before_push": registered,
        "pushes": args.pushes,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "deliveries": deliveries,
        "polls": sum(p.polls for p in pollers),
        "server_cpu_s": cpu,
        "deliveries_per_cpu_s": deliveries / cpu if cpu else float("nan"),
        "loadgen_cpu_s": own,
        "messages": args.pushes,
    }
    result.update(loss_report(tally, pollers, [s for s in pub.acked if s > 0]))
    return result


SCENARIOS = {
    "idle": scenario_idle,
    "fanout": scenario_fanout,
    "throughput": scenario_throughput,
    "latency": scenario_latency,
    "longpoll": scenario_longpoll,
    "slow": scenario_slow,
}


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + 256
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, max(want, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            print(f"warning: RLIMIT_NOFILE hard limit {hard} < {want}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's (parent) process")
    parser.add_argument("--flavor", choices=["martd", "nchan"], default="martd")
    parser.add_argument("--transport", choices=["sse", "ws"], default="sse")
    parser.add_argument("-n", type=int, default=1000, help="subscribers / long-poll clients")
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10.0, help="throughput: seconds")
    parser.add_argument("--publishers", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="payload bytes")
    parser.add_argument(
        "--stalled", type=int, default=5, help="slow: subscribers that stop reading"
    )
    parser.add_argument("--channels", type=int, default=1, help="idle: channels to spread over")
    parser.add_argument(
        "--read-interval",
        type=float,
        default=0.0,
        help="throughput: subscribers read at most this often, in seconds (0: on every wake-up)",
    )
    parser.add_argument("--settle", type=float, default=1.0, help="idle: seconds before memory")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--profile", help="record the server with py-spy during the measured phase")
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    parser.add_argument("--prefix", default=f"b{os.getpid()}-{int(time.time()) % 100000}")
    args = parser.parse_args(argv)
    args.profiler = Profiler(args)
    raise_nofile(args.n + args.publishers)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        print("warning: uvloop not installed; the load generator is slower", file=sys.stderr)
    gc.disable()  # short-lived process; its garbage is acyclic
    t0 = time.perf_counter()
    result: dict[str, Any] = asyncio.run(SCENARIOS[args.scenario](args))
    result = {
        "scenario": args.scenario,
        "flavor": args.flavor,
        "transport": args.transport,
        "n": args.n,
        "wall_s_total": time.perf_counter() - t0,
        **result,
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    os._exit(0)  # skip closing thousands of sockets one by one


if __name__ == "__main__":
    main()
