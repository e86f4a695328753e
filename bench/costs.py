#!/usr/bin/env python3
"""Per-operation costs of martd on Redis, for the capacity model in docs/scaling.md.

Starts a redis-server of its own on a free loopback port (never a shared one,
no persistence) and martd processes on it (uvicorn, one worker each, uvloop +
httptools), drives them from this process, and prints a table and one JSON
object: the CPU and memory each operation costs in martd and in Redis.

    .venv/bin/python bench/costs.py                      # about a minute and a half
    .venv/bin/python bench/costs.py --json costs.json    # also keep the figures
    .venv/bin/python bench/costs.py --node-bytes 1024    # Redis with stream-node-max-bytes 1024
    .venv/bin/python bench/costs.py --tiny               # seconds: checks the tool works

The processes: P takes every push (POST /pub, as a load balancer would send
them) and has no subscribers; S1 and S2 hold the SSE subscribers; R holds
subscribers too, with a short lease so that it renews them often. P, S1 and S2
renew less often than the run lasts, so renewals stay out of the push phases.
The phases:

- idle: nothing happens: the CPU each process and Redis spend anyway.
- connect: N SSE subscribers to S1, each on a channel of its own: martd CPU and
  memory (Pss) per connection, Redis CPU and memory per followed channel.
- memory: Redis `used_memory` (less its clients' buffers) and `MEMORY USAGE`
  per channel holding 1 and `--retain` messages, and per message past the first
  stream node (`--deep` messages on a few channels), at the payload size given.
- the measured runs, `--repeat` times, interleaved so that the machine's other
  load touches each alike (every channel already holds `--retain` messages, so
  every push evicts one):
  - store: pushes on channels nobody subscribes to: martd CPU per push taken
    (P), Redis CPU per push, and what S1 and S2 spend meanwhile (the cost of a
    push a process has no subscribers for: nothing, it hears nothing);
  - sunk: the same on channels that `--sinks` pub/sub connections of this
    script follow: Redis CPU per notification sent;
  - notify: pushes on the connect phase's channels, where S1 and S2 each have
    one subscriber per channel: martd CPU per push heard with one subscriber;
    Redis CPU per push on a channel with subscribers;
  - fanout: pushes on channels with `--fanout` subscribers each, all on S1:
    with notify, splits a heard push's cost into the notification and the
    deliveries.
- renew: R's subscribers sit idle while R renews their leases: martd and Redis
  CPU per channel renewed (each process renews each channel it serves every
  lease / 3, 10 s by default); the script calls Redis counts are R's.

CPU is utime + stime from /proc for martd and Redis's own used_cpu_user +
used_cpu_sys from INFO. Each figure is the median over the runs; the machine's
other load moves them, so compare figures of one run. Every subscriber checks
it got each message of its channel once: the script exits non-zero when a
message was lost, duplicated or refused.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
SEQ = re.compile(rb"m(\d+);")
CLK_TCK = os.sysconf("SC_CLK_TCK")
BATCH = 250  # connections opened at once
KEEPALIVE = 2.0  # s a pushing connection may sit idle before it is replaced


# -- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


def redis_command(port: int, *args: str) -> Any:
    """One command on a fresh connection; bulk strings, integers and simple strings."""
    request = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
    )
    with socket.create_connection((HOST, port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while b"\r\n" not in data:
            data += conn.recv(65536)
        kind, rest = data[:1], data[1:]
        line, _, body = rest.partition(b"\r\n")
        if kind == b"$":
            size = int(line)
            while len(body) < size + 2:
                body += conn.recv(65536)
            return body[:size].decode()
        if kind == b":":
            return int(line)
        if kind == b"-":
            raise RuntimeError(line.decode())
        return line.decode()


def redis_info(port: int, section: str = "default") -> dict[str, str]:
    info: dict[str, str] = {}
    for line in redis_command(port, "INFO", section).splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            info[key] = value
    return info


def redis_cpu(port: int) -> float:
    info = redis_info(port)
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_memory(port: int) -> int:
    return int(redis_info(port)["used_memory"])


def script_calls(port: int) -> int:
    info = redis_info(port, "commandstats")
    calls = 0
    for name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall"):
        if name in info:
            calls += int(info[name].split(",")[0].split("=")[1])
    return calls


def proc_cpu(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_pss(pid: int) -> int:
    """Pss of one process, in bytes."""
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        for line in f:
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + 256
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, want)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


class Cluster:
    """A redis-server and martd processes of this run's own; all stop with it."""

    def __init__(self, python: str = sys.executable, src: Path = ROOT / "src") -> None:
        self.python = python
        self.src = src.resolve()
        self.dir = tempfile.mkdtemp(prefix="martd-costs-")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis_port = 0

    def start_redis(self, *extra: str) -> int:
        port = free_port()
        options = ["--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        options += extra
        proc = subprocess.Popen(
            ["redis-server", *options, "--dir", self.dir], stdout=subprocess.DEVNULL
        )
        self.procs.append(proc)

        def up() -> bool:
            try:
                return bool(redis_command(port, "PING") == "PONG")
            except OSError:
                return proc.poll() is None and False

        wait_until(up, "redis-server")
        self.redis_port = port
        self.redis_pid = proc.pid
        return port

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    def start_martd(self, **env: str) -> Martd:
        port = free_port()
        environ = {**os.environ, "MARTD_BACKEND": self.redis_url, "MARTD_DEMO": "0"}
        environ["PYTHONPATH"] = str(self.src)
        environ.update(env)
        command = [self.python, "-m", "uvicorn", "martd_asgi:app", "--port", str(port)]
        command += ["--host", HOST, "--loop", "uvloop", "--http", "httptools"]
        command += ["--no-access-log", "--log-level", "warning", "--backlog", "4096"]
        proc = subprocess.Popen(command, env=environ, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        martd = Martd(proc, port)
        wait_until(lambda: proc.poll() is None and martd.healthy(), "martd")
        return martd

    def stop(self) -> None:
        """martd first (they detach their subscribers from Redis), then Redis."""
        for proc in self.procs[1:] + self.procs[:1]:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def cluster(python: str = sys.executable, src: Path = ROOT / "src") -> Iterator[Cluster]:
    made = Cluster(python, src)
    try:
        yield made
    finally:
        made.stop()


class Martd:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.port = port

    def healthy(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, bytes]:
        with socket.create_connection((HOST, self.port), timeout=5) as conn:
            conn.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head[9:12]), body

    def stats(self) -> dict[str, Any]:
        return dict(json.loads(self.get("/stats")[1]))

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def pss(self) -> int:
        return proc_pss(self.pid)


# -- clients ---------------------------------------------------------------------------


class Tally:
    """What every subscriber of a run received, and who waits for it."""

    def __init__(self) -> None:
        self.delivered = 0
        self.duplicates = 0
        self.bytes = 0
        self.ready = 0
        self.refused = 0
        self.closed = 0
        self.errors: list[str] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def changed(self) -> None:
        if not self._waiters:
            return
        still = []
        for test, fut in self._waiters:
            if test():
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((test, fut))
        self._waiters = still

    async def until(self, test: Callable[[], bool], timeout: float, what: str) -> bool:
        if test():
            return True
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((test, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            self.errors.append(f"timed out waiting for {what}")
            return False


class Subscriber(asyncio.Protocol):
    """An SSE subscriber to one channel: keeps the sequence numbers it received."""

    def __init__(self, tally: Tally, channel: str) -> None:
        self.tally = tally
        self.channel = channel
        self.seen: set[int] = set()
        self.buf = b""
        self.streaming = False
        self.closing = False  # closed by us, not by the server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        request = b"GET /sub/%s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        transport.write(request % self.channel.encode())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.tally.closed += 1

    def data_received(self, data: bytes) -> None:
        tally = self.tally
        buf = self.buf + data
        if not self.streaming:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if buf[9:12] != b"200":
                tally.refused += 1
                tally.errors.append(buf[: buf.find(b"\r\n")].decode("latin-1"))
            self.streaming = True
            tally.ready += 1
            buf = buf[end + 4 :]
        else:
            tally.bytes += len(data)
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.buf = buf
            tally.changed()
            return
        self.buf = buf[end + 2 :]
        for m in SEQ.findall(buf, 0, end):
            seq = int(m)
            if seq in self.seen:
                tally.duplicates += 1
            else:
                self.seen.add(seq)
                tally.delivered += 1
        tally.changed()


class Sink(asyncio.Protocol):
    """A pub/sub connection to Redis, as a martd process's would be: subscribes, reads, drops."""

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics
        self.received = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        words = [b"SUBSCRIBE", *(t.encode() for t in self.topics)]
        command = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        transport.write(command)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)


async def sinks(port: int, channels: list[str], count: int) -> list[Sink]:
    loop = asyncio.get_running_loop()
    topics = [f"martd:{{{ch}}}:e" for ch in channels]
    made = [
        await loop.create_connection(functools.partial(Sink, topics), HOST, port)
        for _ in range(count)
    ]
    await asyncio.sleep(0.5)  # the subscriptions are confirmed
    return [protocol for _, protocol in made]


def ready(tally: Tally, target: int) -> bool:
    return tally.ready >= target


async def subscribe(tally: Tally, port: int, channels: list[str]) -> list[Subscriber]:
    """One SSE subscriber per entry of channels (a name may repeat), all streaming."""
    loop = asyncio.get_running_loop()
    subs: list[Subscriber] = []
    for first in range(0, len(channels), BATCH):
        batch = channels[first : first + BATCH]
        target = tally.ready + len(batch)
        made = await asyncio.gather(
            *(
                loop.create_connection(functools.partial(Subscriber, tally, c), HOST, port)
                for c in batch
            )
        )
        subs += [protocol for _, protocol in made]
        await tally.until(functools.partial(ready, tally, target), 30, "subscribers to connect")
    return subs


def close_all(tally: Tally, subs: list[Subscriber]) -> None:
    for sub in subs:
        sub.closing = True
        if sub.transport is not None:
            sub.transport.close()


def payload(seq: int, size: int) -> bytes:
    head = b"m%d;" % seq
    return head + b"x" * max(0, size - len(head))


class Pusher:
    """Keep-alive HTTP connections that POST /pub; counts refusals and bytes."""

    def __init__(self, size: int, retain: int) -> None:
        self.size = size
        self.query = f"?size={retain}".encode()
        self.refused = 0
        self.errors: list[str] = []
        self.sent_bytes = 0
        self.answer_bytes = 0
        self.failed: set[int] = set()  # sequence numbers of the pushes refused
        self._idle: dict[int, list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]]] = {}

    async def _connection(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        pool = self._idle.setdefault(port, [])
        while pool:
            reader, writer, since = pool.pop()
            if time.monotonic() - since < KEEPALIVE:
                return reader, writer
            writer.close()  # the server may be closing it (uvicorn: after 5 s idle)
        return await asyncio.open_connection(HOST, port)

    async def push(self, port: int, channel: str, seq: int) -> bool:
        reader, writer = await self._connection(port)
        body = payload(seq, self.size)
        request = b"POST /pub/%s%s HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n" % (
            channel.encode(),
            self.query,
        )
        request += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        self.sent_bytes += len(request)
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            answer = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.refused += 1
            self.failed.add(seq)
            self.errors.append(f"push {seq}: {exc!r}")
            writer.close()
            return False
        self.answer_bytes += len(head) + length
        self._idle[port].append((reader, writer, time.monotonic()))
        if head[9:12] not in (b"200", b"201"):
            self.failed.add(seq)
            self.refused += 1
            self.errors.append(f"push {seq}: {head[:12]!r} {answer[:200]!r}")
            return False
        return True

    async def close(self) -> None:
        for pool in self._idle.values():
            for _, writer, _ in pool:
                writer.close()
        self._idle.clear()


async def push_all(
    pusher: Pusher, port: int, jobs: list[tuple[str, int]], in_flight: int = 32
) -> None:
    """Push (channel, seq) pairs as fast as in_flight connections take them."""
    queue = iter(jobs)

    async def worker() -> None:
        for channel, seq in queue:
            await pusher.push(port, channel, seq)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    await pusher.close()


# -- the phases ------------------------------------------------------------------------


class Meter:
    """CPU of martd processes and Redis between start() and stop()."""

    def __init__(self, c: Cluster, martds: dict[str, Martd]) -> None:
        self.c = c
        self.martds = martds

    def read(self) -> dict[str, float]:
        now = {name: m.cpu() for name, m in self.martds.items()}
        now["redis"] = redis_cpu(self.c.redis_port)
        now["calls"] = script_calls(self.c.redis_port)
        now["wall"] = time.perf_counter()
        return now

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in before}


def lost(subs: list[Subscriber], pushed: dict[str, list[int]]) -> int:
    return sum(len(set(pushed.get(s.channel, ())) - s.seen) for s in subs)


async def run_costs(args: argparse.Namespace, c: Cluster) -> dict[str, Any]:
    # P, S1 and S2 renew their leases every lease / 3: longer than the run, so that
    # renewals stay out of the push phases; R renews every --renew-every seconds.
    p, s1, s2 = (c.start_martd(MARTD_LEASE="3000") for _ in range(3))
    lease = max(0.3, 3 * args.renew_every)
    r = c.start_martd(MARTD_LEASE=str(lease))
    meter = Meter(c, {"P": p, "S1": s1, "S2": s2, "R": r})
    tally = Tally()
    seq = 0
    pushed: dict[str, list[int]] = {}
    all_subs: list[Subscriber] = []
    notes: list[str] = []
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 1)
        clock = now

    def jobs(channels: list[str], rounds: int) -> list[tuple[str, int]]:
        nonlocal seq
        out = []
        for _ in range(rounds):
            for ch in channels:
                seq += 1
                out.append((ch, seq))
                pushed.setdefault(ch, []).append(seq)
        return out

    async def pushes(channels: list[str], rounds: int, expect_each: int) -> dict[str, float]:
        """Push rounds x channels messages through P; wait for every delivery."""
        work = jobs(channels, rounds)
        target = tally.delivered + len(work) * expect_each
        before = meter.read()
        pusher = Pusher(args.size, args.retain)
        await push_all(pusher, p.port, work)
        await tally.until(lambda: tally.delivered >= target, 60, "deliveries")
        after = meter.read()
        if pusher.refused:
            notes.append(f"{pusher.refused} pushes refused: {pusher.errors[:3]}")
        d = Meter.delta(before, after)
        d["pushes"] = len(work)
        d["request_bytes"] = pusher.sent_bytes / len(work)
        d["answer_bytes"] = pusher.answer_bytes / len(work)
        return d

    async def dataset() -> int:
        """Redis's memory without its clients' buffers, once they have settled."""
        await asyncio.sleep(args.settle)
        info = redis_info(c.redis_port, "memory")
        return int(info["used_memory"]) - int(info.get("mem_clients_normal", 0))

    n = args.connections
    # idle: what the processes and Redis spend doing nothing (a base rate, not per operation)
    before = meter.read()
    await asyncio.sleep(args.idle)
    idle = Meter.delta(before, meter.read())
    lap("start")
    # connect: one subscriber per channel, on S1
    own = [f"c{i}" for i in range(n)]
    mem0 = [s1.pss(), await dataset()]
    before = meter.read()
    subs = await subscribe(tally, s1.port, own)
    await asyncio.sleep(0.5)  # SUBSCRIBE commands and their catch-up settle
    after = meter.read()
    mem1 = [s1.pss(), await dataset()]
    all_subs += subs
    connect = Meter.delta(before, after)
    # S2: one subscriber per channel too (for notify)
    all_subs += await subscribe(tally, s2.port, own)
    lap("connect")

    # store: channels without subscribers, filled to `retain` messages first
    store = [f"d{i}" for i in range(args.store_channels)]
    mem_empty = await dataset()
    await pushes(store, 1, 0)
    mem_one = await dataset()
    usage_one = key_usage(c.redis_port, store[: args.sample])
    await pushes(store, args.retain - 1, 0)
    mem_full = await dataset()
    usage_full = key_usage(c.redis_port, store[: args.sample])
    # a longer history on a few channels: what each message costs past the first node
    deep = [f"e{i}" for i in range(args.deep_channels)]
    mem_before_deep = await dataset()
    await push_all(Pusher(args.size, args.deep), p.port, jobs(deep, args.deep))
    mem_deep = await dataset()
    usage_deep = key_usage(c.redis_port, deep)
    usage_shallow = usage_full * len(deep) / min(len(store), args.sample)
    # the same from used_memory: the deep channels, less what they would take with --retain
    shallow_mem = len(deep) * (mem_full - mem_empty) / len(store)
    past = len(deep) * (args.deep - args.retain)
    deep_mem_msg = (mem_deep - mem_before_deep - shallow_mem) / past
    lap("memory")

    # sunk: channels like the store's, each followed by --sinks pub/sub connections
    sunk = [f"g{i}" for i in range(args.store_channels)]
    await pushes(sunk, args.retain, 0)
    followers = await sinks(c.redis_port, sunk, args.sinks)
    # notify: fill the subscribed channels' history
    await pushes(own, args.retain, 2)
    # fanout: `fanout` subscribers per channel, all on S1, history filled
    k = args.fanout
    fan = [f"f{i}" for i in range(max(1, n // k))]
    all_subs += await subscribe(tally, s1.port, [ch for ch in fan for _ in range(k)])
    await asyncio.sleep(0.5)
    await pushes(fan, args.retain, k)
    rounds = max(1, args.rounds * n // len(fan) // 2)
    lap("fill")
    # the measured runs, interleaved so that the machine's other load touches all alike
    store_runs, notify_runs, fanout_runs, sunk_runs = [], [], [], []
    sse = [0, 0]
    for _ in range(args.repeat):
        store_runs.append(await pushes(store, args.rounds, 0))
        sunk_runs.append(await pushes(sunk, args.rounds, 0))
        notify_runs.append(await pushes(own, args.rounds, 2))
        bytes0, delivered0 = tally.bytes, tally.delivered
        fanout_runs.append(await pushes(fan, rounds, k))
        sse[0] += tally.bytes - bytes0
        sse[1] += tally.delivered - delivered0
    sse_bytes = sse[0] / max(1, sse[1])
    lap("runs")
    for sink in followers:
        if sink.transport is not None:
            sink.transport.close()

    # the notification itself, as Redis sends it to a subscribed process
    note_bytes = await notification_bytes(c.redis_port, args.size, args.retain)
    missing = lost(all_subs, pushed)
    close_all(tally, all_subs)  # so that R's renewals are the only scripts that run

    # renew: R's subscribers, one per channel, idle
    all_subs = await subscribe(tally, r.port, [f"r{i}" for i in range(args.renew_channels)])
    await asyncio.sleep(lease)  # past the first renewals that follow subscribing
    renew_runs = []
    for _ in range(args.repeat):
        before = meter.read()
        await asyncio.sleep(args.renew_seconds)
        renew_runs.append(Meter.delta(before, meter.read()))
    close_all(tally, all_subs)
    await asyncio.sleep(0.5)  # R detaches them before it is stopped
    lap("renew")

    def med(runs: list[dict[str, float]], f: Callable[[dict[str, float]], float]) -> float:
        return statistics.median(f(run) for run in runs)

    runs = list(zip(store_runs, notify_runs, fanout_runs, strict=True))
    per_store = med(store_runs, lambda d: d["P"] / d["pushes"])
    redis_store = med(store_runs, lambda d: d["redis"] / d["pushes"])
    idle_store = med(store_runs, lambda d: (d["S1"] + d["S2"]) / 2 / d["pushes"])
    heard_1 = med(notify_runs, lambda d: (d["S1"] + d["S2"]) / 2 / d["pushes"])
    redis_notify = med(notify_runs, lambda d: d["redis"] / d["pushes"])
    heard_k = med(fanout_runs, lambda d: d["S1"] / d["pushes"])
    k = args.fanout

    def split(run: tuple[dict[str, float], ...]) -> tuple[float, float]:
        """(notification, delivery) from one repeat's runs with 1 and k subscribers."""
        _, one, many = run
        with_1 = (one["S1"] + one["S2"]) / 2 / one["pushes"]
        with_k = many["S1"] / many["pushes"]
        delivery = (with_k - with_1) / (k - 1)
        return with_1 - delivery, delivery

    notification = statistics.median(split(run)[0] for run in runs)
    delivery = statistics.median(split(run)[1] for run in runs)

    def slope(pair: tuple[dict[str, float], dict[str, float]]) -> float:
        """Redis per push on channels with --sinks followers, less without, per follower."""
        per = [d["redis"] / d["pushes"] for d in pair]
        return (per[1] - per[0]) / max(1, int(args.sinks))

    runs_sunk = list(zip(store_runs, sunk_runs, strict=True))
    per_note = statistics.median(slope(pair) for pair in runs_sunk)
    # a push on a channel with subscribers also reads who they are (its answer's count)
    redis_subscribed = statistics.median(
        d["redis"] / d["pushes"] - 2 * slope(pair)
        for d, pair in zip(notify_runs, runs_sunk, strict=True)
    )
    renewals = med(renew_runs, lambda d: d["calls"])
    per_renew_martd = med(renew_runs, lambda d: d["R"] / max(1.0, d["calls"]))
    per_renew_redis = med(renew_runs, lambda d: d["redis"] / max(1.0, d["calls"]))
    per_msg = (mem_full - mem_one) / (len(store) * (args.retain - 1))
    sampled = min(len(store), args.sample)
    deep_msg = (usage_deep - usage_shallow) / past
    figures = {
        "martd_cpu_per_push_taken_us": per_store * 1e6,
        "martd_cpu_per_push_taken_subscribed_us": med(notify_runs, lambda d: d["P"] / d["pushes"])
        * 1e6,
        "martd_cpu_per_push_not_followed_us": idle_store * 1e6,
        "martd_cpu_per_push_heard_1sub_us": heard_1 * 1e6,
        f"martd_cpu_per_push_heard_{k}subs_us": heard_k * 1e6,
        "martd_cpu_per_notification_us": notification * 1e6,
        "martd_cpu_per_delivery_us": delivery * 1e6,
        "martd_cpu_per_connect_us": connect["S1"] / n * 1e6,
        "martd_cpu_per_renewal_us": per_renew_martd * 1e6,
        "martd_bytes_per_connection": (mem1[0] - mem0[0]) / n,
        "martd_cpu_idle_per_s_us": (idle["P"] + idle["S1"] + idle["S2"]) / 3 / idle["wall"] * 1e6,
        "martd_bytes_idle_process": p.pss(),
        "redis_cpu_per_push_us": redis_store * 1e6,
        "redis_cpu_per_notification_us": per_note * 1e6,
        "redis_cpu_per_push_subscribed_us": redis_subscribed * 1e6,
        "redis_cpu_per_push_2_followers_us": redis_notify * 1e6,
        "redis_cpu_per_push_sunk_us": med(sunk_runs, lambda d: d["redis"] / d["pushes"]) * 1e6,
        "redis_cpu_per_connect_us": connect["redis"] / n * 1e6,
        "redis_cpu_per_renewal_us": per_renew_redis * 1e6,
        "redis_cpu_idle_per_s_us": idle["redis"] / idle["wall"] * 1e6,
        "redis_bytes_per_message": per_msg,
        "redis_bytes_per_channel": (mem_one - mem_empty) / len(store) - per_msg,
        "redis_bytes_per_channel_retained": (mem_full - mem_empty) / len(store),
        "redis_key_bytes_per_channel_1msg": usage_one / sampled,
        "redis_key_bytes_per_channel_retained": usage_full / sampled,
        "redis_key_bytes_per_message_deep": deep_msg,
        "redis_bytes_per_message_deep": deep_mem_msg,
        "redis_bytes_per_followed_channel": (mem1[1] - mem0[1]) / n,
        "push_request_bytes": med(store_runs, lambda d: d["request_bytes"]),
        "push_answer_bytes": med(store_runs, lambda d: d["answer_bytes"]),
        "notification_bytes": note_bytes,
        "sse_bytes_per_delivery": sse_bytes,
    }
    return {
        "figures": {key: round(value, 2) for key, value in figures.items()},
        "setup": {
            "payload_bytes": args.size,
            "retained_per_channel": args.retain,
            "stream_node_max_bytes": args.node_bytes or 4096,
            "connections": n,
            "store_channels": len(store),
            "fanout": k,
            "sinks": args.sinks,
            "pushes_per_phase": {
                "store": store_runs[0]["pushes"],
                "notify": notify_runs[0]["pushes"],
                "fanout": fanout_runs[0]["pushes"],
            },
            "renewals_per_phase": renewals,
            "repeat": args.repeat,
            "phase_seconds": phases,
        },
        "checks": {
            "lost": missing,
            "duplicated": tally.duplicates,
            "refused": tally.refused,
            "closed": tally.closed,
            "errors": tally.errors[:5] + notes[:5],
        },
    }


def key_usage(port: int, channels: list[str]) -> int:
    """MEMORY USAGE of the keys of these channels (stream and hash), summed."""
    total = 0
    for ch in channels:
        for suffix in ("s", "h"):
            used = redis_command(
                port, "MEMORY", "USAGE", f"martd:{{{ch}}}:{suffix}", "SAMPLES", "0"
            )
            total += used if isinstance(used, int) else 0
    return total


async def notification_bytes(port: int, size: int, retain: int) -> int:
    """Bytes of one push's notification on the pub/sub connection of a subscribed process."""
    reader, writer = await asyncio.open_connection(HOST, port)
    topic = "martd:{note}:e"
    writer.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(topic), topic.encode()))
    await reader.readuntil(b":1\r\n")  # the confirmation
    from martd_asgi.backends.redis import RedisBackend  # type: ignore[import-untyped]
    from martd_asgi.channels import PushAttributes  # type: ignore[import-untyped]

    backend = RedisBackend(f"redis://{HOST}:{port}/0")
    await backend.start(lambda event: None)
    try:
        await backend.publish(
            "note", payload(1, size).decode(), PushAttributes(size=retain), server=True
        )
        data = b""
        while True:
            data += await asyncio.wait_for(reader.read(65536), 5)
            if data.startswith(b"*3\r\n") and data.endswith(b"\r\n") and data.count(b"$") >= 3:
                try:
                    parts = data.split(b"\r\n")
                    if len(parts[-2]) >= int(parts[-3][1:]):
                        break
                except ValueError:
                    pass
    finally:
        await backend.aclose()
        writer.close()
    return len(data)


LABELS = [
    ("martd_cpu_per_push_taken_us", "martd CPU per push taken (POST /pub), µs"),
    (
        "martd_cpu_per_push_taken_subscribed_us",
        "martd CPU per push taken on a channel with subscribers, µs",
    ),
    (
        "martd_cpu_per_push_not_followed_us",
        "martd CPU per push on a channel it has no subscribers on, µs",
    ),
    ("martd_cpu_per_push_heard_1sub_us", "martd CPU per push heard, 1 local subscriber, µs"),
    ("martd_cpu_per_notification_us", "martd CPU per notification heard (without deliveries), µs"),
    ("martd_cpu_per_delivery_us", "martd CPU per SSE delivery, µs"),
    ("martd_cpu_per_connect_us", "martd CPU per SSE connect (own channel), µs"),
    ("martd_cpu_per_renewal_us", "martd CPU per channel lease renewal, µs"),
    (
        "martd_bytes_per_connection",
        "martd memory (Pss) per idle SSE connection (own channel), bytes",
    ),
    ("martd_cpu_idle_per_s_us", "martd CPU of an idle process, µs per second"),
    ("martd_bytes_idle_process", "martd memory (Pss) of a process without subscribers, bytes"),
    ("redis_cpu_per_push_us", "Redis CPU per push (script, retained history), µs"),
    (
        "redis_cpu_per_notification_us",
        "Redis CPU per notification sent to a subscribed process, µs",
    ),
    (
        "redis_cpu_per_push_subscribed_us",
        "Redis CPU per push on a channel with subscribers, without notifications, µs",
    ),
    ("redis_cpu_per_push_2_followers_us", "Redis CPU per push, 2 processes subscribed, µs"),
    (
        "redis_cpu_per_push_sunk_us",
        "Redis CPU per push, --sinks pub/sub connections subscribed, µs",
    ),
    ("redis_cpu_per_connect_us", "Redis CPU per SSE connect (attach + SUBSCRIBE), µs"),
    ("redis_cpu_per_renewal_us", "Redis CPU per channel lease renewal, µs"),
    ("redis_cpu_idle_per_s_us", "Redis CPU when idle, µs per second"),
    ("redis_bytes_per_message", "Redis memory per retained message, bytes"),
    ("redis_bytes_per_channel", "Redis memory per channel (without its messages), bytes"),
    (
        "redis_bytes_per_channel_retained",
        "Redis memory per channel holding --retain messages, bytes",
    ),
    ("redis_key_bytes_per_channel_1msg", "MEMORY USAGE of a channel's keys, 1 message, bytes"),
    (
        "redis_key_bytes_per_channel_retained",
        "MEMORY USAGE of a channel's keys, --retain messages, bytes",
    ),
    ("redis_bytes_per_message_deep", "Redis memory per message past the first stream node, bytes"),
    (
        "redis_key_bytes_per_message_deep",
        "MEMORY USAGE per message past the first stream node, bytes",
    ),
    ("redis_bytes_per_followed_channel", "Redis memory per channel a process subscribes to, bytes"),
    ("push_request_bytes", "bytes of one POST /pub request"),
    ("notification_bytes", "bytes of one notification (Redis to martd)"),
    ("sse_bytes_per_delivery", "bytes of one SSE delivery"),
]


def table(result: dict[str, Any]) -> str:
    figures = result["figures"]
    rows = ["| cost | figure |", "|---|---:|"]
    for key, label in LABELS:
        if key in figures:
            rows.append(f"| {label} | {figures[key]:,.1f} |")
    return "\n".join(rows)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--connections", type=int, default=1000, help="subscribed channels (connect, notify)"
    )
    parser.add_argument("--store-channels", type=int, default=500)
    parser.add_argument("--sample", type=int, default=100, help="channels whose keys are sized")
    parser.add_argument("--settle", type=float, default=1.0, help="s before reading Redis's memory")
    parser.add_argument(
        "--rounds", type=int, default=4, help="pushes per channel per measured phase"
    )
    parser.add_argument("--fanout", type=int, default=10, help="subscribers per channel in fanout")
    parser.add_argument("--renew-channels", type=int, default=1000)
    parser.add_argument(
        "--renew-every", type=float, default=0.5, help="R's lease renewal period, s"
    )
    parser.add_argument("--renew-seconds", type=float, default=2.0)
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument(
        "--retain", type=int, default=10, help="messages each channel keeps (size=)"
    )
    parser.add_argument("--deep", type=int, default=110, help="messages kept on the deep channels")
    parser.add_argument("--deep-channels", type=int, default=20)
    parser.add_argument("--node-bytes", type=int, help="redis-server's stream-node-max-bytes")
    parser.add_argument(
        "--idle", type=float, default=3.0, help="s of doing nothing, for the base rates"
    )
    parser.add_argument("--sinks", type=int, default=8, help="followers of the sunk channels")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="seconds, not minutes: checks the tool")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="martd_asgi's tree")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    if args.tiny:
        # 8 rounds: each measured phase takes several of the kernel's 10 ms CPU ticks
        args.connections, args.store_channels, args.rounds = 100, 50, 8
        args.renew_channels, args.renew_seconds, args.repeat, args.retain = 100, 1.0, 1, 3
        args.fanout, args.settle, args.deep, args.deep_channels = 5, 0.2, 20, 2
        args.idle, args.sinks = 0.5, 2
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(args.src.resolve()))
    raise_nofile(2 * args.connections + args.connections + args.renew_channels + 500)
    started = time.perf_counter()
    with cluster(args.python, args.src) as c:
        extra = [] if args.node_bytes is None else ["--stream-node-max-bytes", str(args.node_bytes)]
        c.start_redis(*extra)
        result = asyncio.run(run_costs(args, c))
        version = redis_info(c.redis_port).get("redis_version", "?")
    result["run"] = {
        "command": "bench/costs.py " + " ".join(sys.argv[1:]) if __name__ == "__main__" else "",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.perf_counter() - started, 1),
        "redis": version,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    return result


def stop_on_sigterm() -> None:
    """SIGTERM ends the run as Ctrl-C does: the processes it started are stopped."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def report(result: dict[str, Any], text: str, out: Path | None) -> None:
    """Print the table and the JSON line, write ``out``; exit non-zero on any loss."""
    print(text)
    print()
    print(json.dumps(result))
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n")
    checks = result["checks"]
    if checks["lost"] or checks["duplicated"] or checks["refused"]:
        sys.exit(
            f"lost {checks['lost']}, duplicated {checks['duplicated']}, refused {checks['refused']}"
        )


def main() -> None:
    stop_on_sigterm()
    args = parse()
    result = measure(args)
    report(result, table(result), args.json)


if __name__ == "__main__":
    main()
