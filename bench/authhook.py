"""What the auth hook costs a subscription: latency, and subscribes per server CPU-second.

    .venv/bin/python bench/authhook.py                 # about half a minute
    .venv/bin/python bench/authhook.py --n 3000 --latency-n 500

Starts a small Starlette site (the hook) and ``uvicorn martd_asgi:app`` (uvloop,
httptools, no access log) on free loopback ports, then subscribes by long-poll
to a channel that holds a message (``?etag=0`` answers at once) in four ways:

- ``public``: a channel that is not private (no grant needed: the floor);
- ``token``: a private channel, with a signed token in ``Authorization``;
- ``hook cached``: a private channel, with the same session cookie every time;
- ``hook cold``: a private channel, with a new session cookie every time, so
  that every subscription makes martd ask the site.

Latency is the client's time per subscription, one at a time (median and p90);
throughput is subscriptions per CPU-second of the martd process (user + system
time from /proc), with ``--concurrency`` subscriptions in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-" + "b" * 32
TICKS = os.sysconf("SC_CLK_TCK")


def site_app() -> object:
    """The hook: every session cookie is a user who may read their own channel."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    calls = {"n": 0}

    async def auth(request: Request) -> JSONResponse:
        calls["n"] += 1
        if not request.cookies.get("session"):
            return JSONResponse({"error": "log in"}, status_code=401)
        return JSONResponse({"subscribe": ["user:*"], "user": "bench", "ttl": 60})

    async def count(request: Request) -> JSONResponse:
        return JSONResponse(calls)

    return Starlette(routes=[Route("/auth", auth, methods=["POST"]), Route("/calls", count)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start(args: list[str], env: dict[str, str], url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *args, "--loop", "uvloop", "--http", "httptools",
         "--no-access-log", "--log-level", "warning", "--timeout-keep-alive", "120"],
        cwd=ROOT, env=os.environ | env,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return process
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{args} did not start")


Headers = Callable[[int], dict[str, str]]


async def latency(client: httpx.AsyncClient, path: str, headers: Headers, n: int) -> list[float]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        answer = await client.get(path, headers=headers(i))
        times.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
    return times


async def throughput(
    client: httpx.AsyncClient, pid: int, path: str, headers: Headers, n: int, concurrency: int
) -> float:
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            answer = await client.get(path, headers=headers(i))
            assert answer.status_code == 200, answer.text

    before = cpu_seconds(pid)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (cpu_seconds(pid) - before)


async def run(opts: argparse.Namespace) -> None:
    from martd_asgi.tokens import mint_token

    site_port, martd_port = free_port(), free_port()
    site_url, martd_url = f"http://127.0.0.1:{site_port}", f"http://127.0.0.1:{martd_port}"
    site = start(
        ["--factory", "authhook:site_app", "--app-dir", "bench", "--port", str(site_port)],
        {}, site_url + "/calls",
    )  # fmt: skip
    martd_env = {
        "MARTD_PRIVATE": "user:*",
        "MARTD_AUTH_URL": site_url + "/auth",
        "MARTD_SECRET": SECRET,
        "MARTD_ALLOW": "192.0.2.1",
        "MARTD_MAX_CONNECTIONS_PER_ADDRESS": "0",
        "MARTD_DEMO": "0",
    }
    martd = start(["martd_asgi:app", "--port", str(martd_port)], martd_env, martd_url + "/healthz")
    token = mint_token(SECRET, subscribe=["user:*"], ttl=3600)
    ways: dict[str, tuple[str, Headers]] = {
        "public": ("/sub/news?etag=0", lambda i: {}),
        "token": ("/sub/user:1?etag=0", lambda i: {"authorization": f"Bearer {token}"}),
        "hook cached": ("/sub/user:1?etag=0", lambda i: {"cookie": "session=same-for-all"}),
        "hook cold": ("/sub/user:1?etag=0", lambda i: {"cookie": f"session=s{i}-{time.time_ns()}"}),
    }
    try:
        limits = httpx.Limits(
            max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency
        )
        async with httpx.AsyncClient(base_url=martd_url, timeout=10, limits=limits) as client:
            auth = {"authorization": f"Bearer {SECRET}"}
            for channel in ("news", "user:1"):
                await client.post(f"/pub/{channel}", content="hello", headers=auth)
            for path, headers in ways.values():
                await latency(client, path, headers, 30)  # warm up
            # Latency: the ways take turns request by request, so the machine's load
            # falls on all of them alike; added latency is the median of the paired
            # differences with the public channel.
            times: dict[str, list[float]] = {name: [] for name in ways}
            for i in range(opts.latency_n):
                for name, (path, headers) in ways.items():
                    one: Headers = lambda _, h=headers, i=i: h(i)  # noqa: E731
                    times[name].extend(await latency(client, path, one, 1))
            rates: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(opts.repeat):
                for name in rates:
                    path, headers = ways[name]
                    rates[name].append(
                        await throughput(client, martd.pid, path, headers, opts.n, opts.concurrency)
                    )
            rows = []
            for name, found in times.items():
                ordered = sorted(found)
                added = statistics.median(
                    a - b for a, b in zip(found, times["public"], strict=True)
                )
                rate = statistics.median(rates[name]) if name in rates else None
                p50, p90 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.9)]
                rows.append((name, p50 * 1000, p90 * 1000, added * 1000, rate))
            calls = (await client.get(site_url + "/calls")).json()["n"]
    finally:
        for process in (martd, site):
            process.terminate()
            process.wait(timeout=10)
    print(
        "| way | latency p50 (ms) | p90 (ms) | added to public, paired median (ms) |"
        f" subscribes / martd CPU-s (concurrency {opts.concurrency}, median of {opts.repeat}) |"
    )
    print("|---|---|---|---|---|")
    for name, median, p90, added, rate in rows:
        shown = f"{rate:,.0f}" if rate is not None else "—"
        print(f"| {name} | {median:.2f} | {p90:.2f} | {added:+.2f} | {shown} |")
    print(f"\nhook calls the site counted: {calls}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="subscriptions per throughput run")
    parser.add_argument(
        "--latency-n", type=int, default=300, help="subscriptions per way for latency"
    )
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
