"""The load generator's scenarios: each sets up its clients, measures one phase, reports.

Every scenario takes the parsed command line (bench/loadgen.py) and returns the
figures of one JSON line; `loss_report` adds what every scenario reports:
messages lost and duplicated, control events, refusals, closes and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from email.utils import formatdate
from typing import Any

from clients import (
    BATCH,
    HOST,
    HTTPConnection,
    LongPoller,
    Publisher,
    Subscriber,
    accepted,
    channel_subscribers,
    connect_stalled,
    connect_subscribers,
)
from measure import Tally, await_or_note, own_cpu, percentile, server_cpu, server_memory


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
