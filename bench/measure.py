"""What the load generator measures, and the tally its clients keep.

Server CPU is utime+stime of the server's process tree (the pid given and all
its descendants) from /proc/PID/stat, taken around the measured phase; server
memory is the sum of Pss and Rss in /proc/PID/smaps_rollup over the same tree.
`Tally` is the bookkeeping shared by all clients of one scenario: deliveries per
sequence number, duplicates, refusals, closes and errors.  bench/soak.py reads
the same process tree.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def await_or_note(fut: asyncio.Future[None], timeout: float, tally: Tally, what: str) -> bool:
    try:
        await asyncio.wait_for(fut, timeout)
        return True
    except asyncio.TimeoutError:
        tally.error(f"timed out waiting for {what}")
        return False
