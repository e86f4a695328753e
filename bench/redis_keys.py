"""What dropped channels leave in Redis: keys (DBSIZE) and bytes (MEMORY USAGE).

Starts a redis-server of its own on a free loopback port (never a shared one),
pushes once into N fresh channels with ``life=2, size=1`` through the Redis
backend, optionally with a subscriber that comes and goes on each, waits until
every channel's life has passed, and prints one JSON line: the keys and bytes
left, in total and per dropped channel.

    .venv/bin/python bench/redis_keys.py                  # 10,000 channels, no subscribers
    .venv/bin/python bench/redis_keys.py --subscribe      # each had a subscriber that left
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import redis.asyncio as aioredis

from martd_asgi.backends.redis import RedisBackend
from martd_asgi.channels import PushAttributes

LIFE = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def measure(url: str, channels: int, subscribe: bool) -> dict[str, Any]:
    backend = RedisBackend(url)
    await backend.start(lambda event: None)
    try:
        for start in range(0, channels, 200):
            names = [f"ch{i}" for i in range(start, min(start + 200, channels))]
            if subscribe:
                await asyncio.gather(*(backend.attach(n, "reader") for n in names))
            attrs = PushAttributes(size=1, life=LIFE)
            await asyncio.gather(*(backend.publish(n, "x", attrs, server=True) for n in names))
            if subscribe:
                await asyncio.gather(*(backend.detach(n, "reader") for n in names))
    finally:
        await backend.aclose()
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        peak = await client.dbsize()
        await asyncio.sleep(LIFE + 1.5)  # every message's life has passed
        keys = [k async for k in client.scan_iter(count=1000)]  # expires what it meets
        sizes = [await client.memory_usage(k, samples=0) or 0 for k in keys]
        left = await client.dbsize()
        kinds: dict[str, int] = {}
        for key in keys:
            kind = key.rsplit(":", 1)[-1]
            kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "channels": channels,
            "subscribe": subscribe,
            "keys_while_live": peak,
            "keys_left": left,
            "bytes_left": sum(sizes),
            "bytes_left_per_channel": round(sum(sizes) / channels, 2),
            "left_by_kind": kinds,
        }
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=10_000)
    parser.add_argument("--subscribe", action="store_true")
    args = parser.parse_args()
    port = free_port()
    directory = tempfile.mkdtemp(prefix="martd-redis-keys-")
    options = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory]
    server = subprocess.Popen(["redis-server", *options], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("redis-server did not start")
                time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        print(json.dumps(asyncio.run(measure(url, args.channels, args.subscribe))))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
