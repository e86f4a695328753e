#!/usr/bin/env python3
"""Compare uvicorn's WebSocket implementations under martd: a short run, one table.

    python bench/ws_impls.py [--sockets 300] [--pushes 40] [--pings 3000] [--flood 3]

For each of ``websockets``, ``websockets-sansio``, ``wsproto`` and martd's own
(``martd_asgi.protocols:WebSocketProtocol``, websockets-sansio with flow control)
it starts ``uvicorn martd_asgi:app --ws IMPL`` and measures, on loopback:

- memory per idle socket: RSS growth for ``--sockets`` subscribed WebSockets,
  before any message and after the pushes (compression state is made lazily);
- CPU per frame sent: server CPU time for ``--pushes`` messages to all of them;
- CPU per frame received: server CPU time for ``--pings`` application pings
  (``{"type": "ping"}``, each answered with a pong frame);
- a ping flood: one client sends protocol pings for ``--flood`` seconds and never
  reads; the server's RSS growth and how many bytes it took in.

Figures vary with the machine and its load; the comparison is what counts.
``wsproto`` is not a dependency of martd: ``pip install wsproto`` to measure it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
from websockets.asyncio.client import connect

IMPLS = ["websockets", "websockets-sansio", "wsproto", "martd_asgi.protocols:WebSocketProtocol"]
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@contextlib.contextmanager
def server(impl: str, deflate: bool = True) -> Iterator[tuple[int, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"MARTD_BACKEND": "memory", "MARTD_GC_TUNE": "0"}
    log = os.environ.get("WS_BENCH_LOG")
    command = [sys.executable, "-W", "ignore", "-m", "uvicorn", "martd_asgi:app"]
    command += ["--port", str(port), "--ws", impl, "--log-level", log or "error"]
    command += ["--no-access-log", "--ws-ping-interval", "0"]
    command += ["--ws-per-message-deflate", "true" if deflate else "false"]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=None if log else subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"uvicorn --ws {impl} did not start")
            time.sleep(0.05)
        yield proc.pid, port
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def idle_and_fanout(
    pid: int, port: int, sockets: int, pushes: int
) -> tuple[float, float, float]:
    url = f"ws://127.0.0.1:{port}/sub/fan"
    warm = await connect(url)
    await warm.close()
    before = rss(pid)
    clients = [await connect(url, max_queue=None) for _ in range(sockets)]
    await asyncio.sleep(0.5)
    per_socket = (rss(pid) - before) / sockets
    got = [0] * sockets

    async def read(index: int) -> None:
        while got[index] < pushes:
            if json.loads(await clients[index].recv()).get("data") is not None:
                got[index] += 1

    readers = [asyncio.create_task(read(i)) for i in range(sockets)]
    start = cpu(pid)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for i in range(pushes):
            await http.post("/pub/fan", content=f"message {i} " + "x" * 100)
    await asyncio.wait_for(asyncio.gather(*readers), 60)
    per_frame = (cpu(pid) - start) / (sockets * pushes)
    after = (rss(pid) - before) / sockets
    for client in clients:
        await client.close()
    return per_socket, after, per_frame


async def client_frames(pid: int, port: int, pings: int) -> float:
    async with connect(f"ws://127.0.0.1:{port}/sub/pings") as ws:
        start = cpu(pid)
        for _ in range(pings // 100):
            for _ in range(100):
                await ws.send('{"type":"ping"}')
            pongs = 0
            while pongs < 100:
                if json.loads(await ws.recv()).get("type") == "pong":
                    pongs += 1
        return (cpu(pid) - start) / pings


def ping_flood(pid: int, port: int, seconds: float) -> tuple[float, int, str]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that never reads
    sock.sendall(
        b"GET /sub/flood HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    time.sleep(0.3)
    payload = os.urandom(125)
    frame = b"\x89" + bytes([0x80 | len(payload)]) + b"\0\0\0\0" + payload  # zero mask
    burst = frame * 512
    before = rss(pid)
    sock.setblocking(False)
    sent = 0
    outcome = "open"
    end = time.monotonic() + seconds
    left = memoryview(burst)
    while time.monotonic() < end:
        try:
            count = sock.send(left)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        except OSError:
            outcome = "closed by the server"
            break
        sent += count
        left = left[count:] or memoryview(burst)
    growth = (rss(pid) - before) / 2**20
    sock.close()
    return growth, sent, outcome


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=300)
    parser.add_argument("--pushes", type=int, default=40)
    parser.add_argument("--pings", type=int, default=3000)
    parser.add_argument("--flood", type=float, default=3.0)
    parser.add_argument("--impls", nargs="+", default=IMPLS, help="which --ws to measure")
    parser.add_argument(
        "--deflate", choices=("on", "off", "both"), default="on",
        help="permessage-deflate offered by the server (martd serve turns it off)",
    )
    args = parser.parse_args()
    rows = []
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.deflate]
    for impl, deflate in [(i, d) for i in args.impls for d in modes]:
        label = impl if args.deflate == "on" else f"{impl}, deflate {'on' if deflate else 'off'}"
        with server(impl, deflate) as (pid, port):
            per_socket, after, out_frame = asyncio.run(
                idle_and_fanout(pid, port, args.sockets, args.pushes)
            )
            in_frame = asyncio.run(client_frames(pid, port, args.pings))
        with server(impl, deflate) as (pid, port):
            growth, sent, outcome = ping_flood(pid, port, args.flood)
        rows.append(
            f"| {label} | {per_socket / 1024:.1f} KiB | {after / 1024:.1f} KiB "
            f"| {out_frame * 1e6:.1f} µs "
            f"| {in_frame * 1e6:.1f} µs | +{growth:.1f} MiB, {sent / 2**20:.1f} MiB taken in, "
            f"{outcome} |"
        )
    print(
        f"{args.sockets} idle sockets, {args.pushes} pushes to each, {args.pings} client frames,"
        f" a {args.flood:g} s ping flood\n"
    )
    print("| --ws | memory per idle socket | ... after the pushes | CPU per frame sent "
          "| CPU per frame received | ping flood from a client that never reads |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
