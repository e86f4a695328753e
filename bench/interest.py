"""What a martd process pays for pushes to channels it has no subscribers on.

Starts a redis-server of its own on a free loopback port (never a shared one)
and two martd processes on it (uvicorn, one worker each, uvloop + httptools),
A and B. Opens one SSE subscriber on each of N channels, all on A; pushes P
messages spread evenly over the channels straight into Redis through the Redis
backend, as a third martd process would, at most 64 at a time; waits until
every subscriber has its channel's messages, and prints one JSON line: the CPU
seconds A and B spent meanwhile, B's as a share of A's, the notifications each
process's pub/sub received (when the martd it runs reports them), and how many
deliveries were lost or duplicated.

    .venv/bin/python bench/interest.py                       # 1,000 channels, 20,000 pushes
    .venv/bin/python bench/interest.py --src ../other/src    # another tree's martd_asgi

The machine's load moves both processes' figures alike; compare the share
within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import costs as kit  # noqa: E402  (bench/ is not a package)
from clients import connect_subscribers, payload, raise_nofile  # noqa: E402
from measure import Tally, await_or_note, server_cpu  # noqa: E402

IN_FLIGHT = 64


async def measure(
    args: argparse.Namespace, url: str, a: kit.Martd, b: kit.Martd
) -> dict[str, Any]:
    from martd_asgi.backends.redis import RedisBackend
    from martd_asgi.channels import PushAttributes

    n, total = args.channels, args.pushes
    tally = Tally(1)
    options = argparse.Namespace(transport="sse", port=a.port, timeout=30.0)
    subs = await connect_subscribers(options, tally, n, lambda i: f"c{i}")
    pusher = RedisBackend(url)
    await pusher.start(lambda event: None)
    attrs = PushAttributes(size=10)
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def push(seq: int) -> None:
        async with gate:
            body = payload(seq, args.size).decode()
            await pusher.publish(f"c{seq % n}", body, attrs, server=True)

    async def pushes(seqs: range) -> None:
        done = tally.wait_total(tally.delivered + len(seqs))
        await asyncio.gather(*(push(seq) for seq in seqs))
        await await_or_note(done, 60.0, tally, "the deliveries")

    try:
        await pushes(range(1, n + 1))  # every channel once: warms up, proves each live
        heard = [a.stats().get("redis_notifications"), b.stats().get("redis_notifications")]
        cpu = [server_cpu(a.pid), server_cpu(b.pid)]
        started = time.perf_counter()
        await pushes(range(n + 1, n + 1 + total))
        elapsed = time.perf_counter() - started
        cpu = [server_cpu(a.pid) - cpu[0], server_cpu(b.pid) - cpu[1]]
        after = [a.stats().get("redis_notifications"), b.stats().get("redis_notifications")]
    finally:
        await pusher.aclose()
    lost = sum(1 for seq in range(1, n + 1 + total) if subs[seq % n].missing([seq]))
    return {
        "channels": n,
        "subscribers_on_a": len(subs),
        "pushes": total,
        "seconds": round(elapsed, 2),
        "cpu_a_s": round(cpu[0], 2),
        "cpu_b_s": round(cpu[1], 2),
        "b_share_of_a": round(cpu[1] / cpu[0], 3) if cpu[0] else None,
        "notifications_a": None if heard[0] is None else after[0] - heard[0],
        "notifications_b": None if heard[1] is None else after[1] - heard[1],
        "lost": lost,
        "duplicated": tally.duplicates,
        "errors": tally.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--pushes", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="martd_asgi's tree")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    sys.path.insert(0, str(args.src.resolve()))
    raise_nofile(args.channels + 200)
    with kit.cluster(args.python, args.src) as cluster:
        cluster.start_redis()
        a, b = cluster.start_martd(), cluster.start_martd()
        result = asyncio.run(measure(args, cluster.redis_url, a, b))
    print(json.dumps({"src": str(args.src), **result}))


if __name__ == "__main__":
    main()
