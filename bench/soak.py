"""Soak: drive a mixed load at one martd server for minutes and watch its memory.

    python bench/soak.py --minutes 30                      # memory backend
    python bench/soak.py --minutes 30 --backend redis://127.0.0.1:6379/15
    python bench/soak.py --minutes 2 --check --max-slope 1 --max-settle 40

The load (all on loopback): publishers pushing to random channels with a random
``size`` (1/10/50) and ``life`` (5/60/3600 s); SSE subscribers reconnecting every
0.2 to 3 s on 1 to 3 random channels; long-pollers; WebSocket clients connecting,
reading a little and closing. Every few seconds it samples the server's RSS
(uvicorn and its children). At the end it stops the load, waits ``--settle``
seconds with nothing connected, and reports:

- RSS after the first minute of load (the reference), at the end of the load,
  and ``--settle`` seconds after it;
- the RSS slope over the second half of the load (least squares, MiB/minute);
- retained messages and bytes from ``/stats``; operations and errors.

``--check`` exits 1 when the slope is above ``--max-slope`` MiB/minute, the
settled RSS is more than ``--max-settle`` MiB above the reference, or any
operation failed. ``--trace DIR`` runs the server with tracemalloc and writes
snapshot diffs (first minute → end of load → settled) to DIR, to find what holds
memory. Output: a markdown table on stdout (``--json FILE`` for the raw samples).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from measure import process_tree  # bench/ is on sys.path: this file runs as a script

CHANNELS = 2000
SIZES = (1, 10, 50)
LIVES = (5, 60, 3600)

# Run inside the server process with --trace: snapshot on SIGUSR1 into numbered files.
TRACE_BOOT = """
import os, signal, sys, tracemalloc, gc
tracemalloc.start(12)
_n = [0]
def _snap(*_):
    gc.collect()
    _n[0] += 1
    tracemalloc.take_snapshot().dump(os.path.join({dir!r}, "snap-%d.bin" % _n[0]))
signal.signal(signal.SIGUSR1, _snap)
sys.argv = ["martd"] + {argv!r}
from martd_asgi.cli import main
main()
"""


@dataclass
class Tally:
    ops: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def ok(self, kind: str) -> None:
        self.ops[kind] = self.ops.get(kind, 0) + 1

    def fail(self, kind: str, why: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(f"{time.monotonic() - self.started:.1f} s {kind}: {why}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(m for _, m in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mx) * (m - my) for t, m in points)
    return cov / var * 60


class Server:
    def __init__(self, opts: argparse.Namespace, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/martd"
        backend = opts.backend
        if backend.startswith("redis"):  # keys of this run only
            backend += ("&" if "?" in backend else "?") + f"prefix=soak{os.getpid()}"
        argv = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--backend", backend, "--log-level", "warning"]
        env = os.environ | {"MARTD_DEMO": "0"}
        if opts.trace:
            code = TRACE_BOOT.format(dir=str(opts.trace), argv=argv)
            cmd = [sys.executable, "-c", code]
        else:
            cmd = [sys.executable, "-m", "martd_asgi", *argv]
        self.log = open(workdir / "server.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    async def ready(self, client: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{self.base}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def snapshot(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def channel() -> str:
    return f"soak{random.randrange(CHANNELS)}"


async def publisher(base: str, stop: asyncio.Event, tally: Tally) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            params = {"size": random.choice(SIZES), "life": random.choice(LIVES)}
            body = "x" * random.randrange(10, 500)
            try:
                r = await client.post(f"{base}/pub/{channel()}", params=params, content=body)
                if r.status_code in (200, 201):
                    tally.ok("push")
                else:
                    tally.fail("push", f"{r.status_code} {r.text[:80]}")
            except httpx.HTTPError as exc:
                tally.fail("push", repr(exc))
            await asyncio.sleep(random.uniform(0, 0.01))


async def sse_subscriber(base: str, stop: asyncio.Event, tally: Tally) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:
        while not stop.is_set():
            names = ",".join({channel() for _ in range(random.randint(1, 3))})
            hold = random.uniform(0.2, 3)
            try:
                async with client.stream(
                    "GET", f"{base}/sub/{names}", headers={"Accept": "text/event-stream"}
                ) as r:
                    if r.status_code != 200:
                        tally.fail("sse", f"{r.status_code}")
                        continue
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(hold):
                            async for _ in r.aiter_bytes():
                                if stop.is_set():
                                    break
                tally.ok("sse")
            except httpx.HTTPError as exc:
                tally.fail("sse", repr(exc))


async def long_poller(base: str, stop: asyncio.Event, tally: Tally) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            names = ",".join({channel() for _ in range(random.randint(1, 3))})
            try:
                r = await client.get(f"{base}/sub/{names}", params={"timeout": 2})
                if r.status_code == 200:
                    tally.ok("longpoll")
                else:
                    tally.fail("longpoll", f"{r.status_code} {r.text[:80]}")
            except httpx.HTTPError as exc:
                tally.fail("longpoll", repr(exc))


async def ws_client(base: str, stop: asyncio.Event, tally: Tally) -> None:
    url = base.replace("http://", "ws://")
    while not stop.is_set():
        names = ",".join({channel() for _ in range(random.randint(1, 3))})
        try:
            async with websockets.connect(f"{url}/sub/{names}", open_timeout=10) as ws:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(random.uniform(0, 0.5)):
                        async for _ in ws:
                            pass
            tally.ok("websocket")
        except (OSError, websockets.WebSocketException) as exc:
            tally.fail("websocket", repr(exc))


async def stats(client: httpx.AsyncClient, base: str) -> dict[str, Any]:
    r = await client.get(f"{base}/stats")
    body: dict[str, Any] = r.json()
    return body


async def soak(opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = Server(opts, workdir)
    samples: list[tuple[float, float]] = []
    tally = Tally()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            await server.ready(client)
            stop = asyncio.Event()
            mix = [(publisher, opts.publishers), (sse_subscriber, opts.sse)]
            mix += [(long_poller, opts.longpoll), (ws_client, opts.ws)]
            tasks = [
                asyncio.create_task(fn(server.base, stop, tally)) for fn, n in mix for _ in range(n)
            ]
            start = time.monotonic()
            duration = opts.minutes * 60
            reference: float | None = None
            while (elapsed := time.monotonic() - start) < duration:
                samples.append((elapsed, rss_mib(server.proc.pid)))
                if reference is None and elapsed >= min(60, duration / 2):
                    reference = samples[-1][1]
                    if opts.trace:
                        server.snapshot()
                if opts.progress:
                    ops = sum(tally.ops.values())
                    errs = sum(tally.errors.values())
                    print(f"{elapsed:6.0f} s  {samples[-1][1]:7.1f} MiB  {ops} ops  {errs} errors",
                          file=sys.stderr)
                await asyncio.sleep(opts.interval)
            end_rss = rss_mib(server.proc.pid)
            samples.append((time.monotonic() - start, end_rss))
            if opts.trace:
                server.snapshot()
            stop.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await asyncio.gather(*tasks, return_exceptions=True)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(opts.settle)
            settled = rss_mib(server.proc.pid)
            if opts.trace:
                server.snapshot()
                await asyncio.sleep(2)
            final = await stats(client, server.base)
    finally:
        server.stop()
    log = (workdir / "server.log").read_text(errors="replace").splitlines()
    half = [(t, m) for t, m in samples if t >= duration / 2]
    assert reference is not None
    return {
        "backend": opts.backend,
        "minutes": opts.minutes,
        "reference_rss_mib": reference,
        "end_rss_mib": end_rss,
        "settled_rss_mib": settled,
        "settle_seconds": opts.settle,
        "slope_mib_per_min": slope(half),
        "retained_messages": final.get("messages"),
        "retained_bytes": final.get("retained_bytes"),
        "ops": tally.ops,
        "errors": tally.errors,
        "error_examples": tally.examples,
        "server_log": log[-30:],
        "samples": samples,
    }


def per_minute(samples: list[tuple[float, float]]) -> list[float]:
    """The first sample of each minute of the load."""
    out: dict[int, float] = {}
    for t, m in samples:
        out.setdefault(int(t // 60), m)
    return list(out.values())


def report(result: dict[str, Any]) -> str:
    ops = sum(result["ops"].values())
    errors = sum(result["errors"].values())
    retained = f"{result['retained_messages']} / {result['retained_bytes']}"
    rows = [
        ("backend", result["backend"]),
        ("minutes of load", f"{result['minutes']:g}"),
        ("operations", f"{ops:,} ({', '.join(f'{k} {v:,}' for k, v in result['ops'].items())})"),
        ("errors", f"{errors}" + (f" {result['error_examples'][:3]}" if errors else "")),
        ("RSS after the first minute", f"{result['reference_rss_mib']:.1f} MiB"),
        ("RSS at the end of the load", f"{result['end_rss_mib']:.1f} MiB"),
        (
            f"RSS {result['settle_seconds']:g} s after the load",
            f"{result['settled_rss_mib']:.1f} MiB "
            f"({result['settled_rss_mib'] - result['reference_rss_mib']:+.1f})",
        ),
        ("RSS slope, second half of the load", f"{result['slope_mib_per_min']:.3f} MiB/min"),
        ("retained messages / bytes", retained),
        ("RSS each minute (MiB)", " ".join(f"{m:.0f}" for m in per_minute(result["samples"]))),
    ]
    lines = ["| soak | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def trace_report(directory: Path, top: int = 15) -> str:
    import tracemalloc

    snaps = sorted(directory.glob("snap-*.bin"), key=lambda p: int(p.stem.split("-")[1]))
    if len(snaps) < 2:
        return "no tracemalloc snapshots"
    loaded = [tracemalloc.Snapshot.load(str(p)) for p in snaps]
    out = []
    for label, a, b in (("first minute -> end of load", 0, 1), ("first minute -> settled", 0, -1)):
        if len(loaded) <= max(a, b if b >= 0 else len(loaded) + b):
            continue
        stats = loaded[b].compare_to(loaded[a], "traceback")
        out.append(f"## {label}")
        for stat in stats[:top]:
            out.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
            out.extend(f"      {line}" for line in stat.traceback.format()[-6:])
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--backend", default="memory")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--sse", type=int, default=60)
    parser.add_argument("--longpoll", type=int, default=30)
    parser.add_argument("--ws", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5, help="seconds between RSS samples")
    parser.add_argument("--settle", type=float, default=60, help="seconds idle after the load")
    parser.add_argument("--check", action="store_true", help="exit 1 when a bound is broken")
    parser.add_argument("--max-slope", type=float, default=0.1, help="MiB/minute")
    parser.add_argument("--max-settle", type=float, default=25, help="MiB above the reference")
    parser.add_argument("--trace", type=Path, help="tracemalloc snapshots into this directory")
    parser.add_argument("--json", type=Path, help="write the raw result here")
    parser.add_argument("--progress", action="store_true", help="print each sample on stderr")
    opts = parser.parse_args(argv)
    if opts.trace:
        opts.trace.mkdir(parents=True, exist_ok=True)
        opts.trace = opts.trace.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(soak(opts, Path(tmp)))
    print(report(result))
    if opts.trace:
        print(trace_report(opts.trace))
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=1))
    if not opts.check:
        return 0
    broken = []
    if result["slope_mib_per_min"] > opts.max_slope:
        broken.append(f"slope {result['slope_mib_per_min']:.3f} > {opts.max_slope} MiB/min")
    grown = result["settled_rss_mib"] - result["reference_rss_mib"]
    if grown > opts.max_settle:
        broken.append(f"settled RSS {grown:+.1f} MiB > {opts.max_settle} MiB above the reference")
    if result["errors"]:
        broken.append(f"errors: {result['errors']}")
        broken.extend(result["error_examples"])
        broken.extend(f"server: {line}" for line in result["server_log"])
    for line in broken:
        print(f"soak: {line}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
