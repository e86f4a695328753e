#!/usr/bin/env python3
"""A small deployment on loopback, measured against the capacity model's predictions.

Starts a redis-server of its own on a free loopback port and N martd processes
on it (uvicorn, one worker each, the default settings but MARTD_DEMO=0), opens
SSE subscribers on channels picked at random and spread at random over the
processes (as a load balancer would), then pushes at a fixed rate for a fixed
time, each push on a random channel and through a random process. It measures
each process's CPU and memory and Redis's CPU and memory, and prints them beside
what the model of docs/scaling.md predicts from bench/costs.py's per-operation
costs for the same work (the operations counted by this script: pushes taken,
notifications heard, deliveries, connects, lease renewals), with the ratio.
Every subscriber checks it received each message of its channel once: lost
and duplicated must be zero (the script exits non-zero otherwise).

    .venv/bin/python bench/simulate.py                     # measures the costs first: ~3 min
    .venv/bin/python bench/simulate.py --costs costs.json  # the costs of a bench/costs.py run
    .venv/bin/python bench/simulate.py --processes 4 --rate 400 --seconds 30
    .venv/bin/python bench/simulate.py --tiny                   # seconds: checks the tool works

Every process it starts ends with it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import capacity  # noqa: E402  (bench/ is not a package)
import costs as kit  # noqa: E402

BURST_IN_FLIGHT = 32  # pushes in flight in the burst window: as bench/costs.py pushes


async def simulate(
    args: argparse.Namespace, c: kit.Cluster, model: capacity.Costs
) -> dict[str, Any]:
    rng = random.Random(args.seed)
    martds = [c.start_martd() for _ in range(args.processes)]
    names = [f"m{i + 1}" for i in range(len(martds))]
    meter = kit.Meter(c, dict(zip(names, martds, strict=True)))
    channels = [f"s{i}" for i in range(args.channels)]
    tally = kit.Tally()
    pushed: dict[str, list[int]] = {}

    async def dataset() -> int:
        await asyncio.sleep(args.settle)
        info = kit.redis_info(c.redis_port, "memory")
        return int(info["used_memory"]) - int(info.get("mem_clients_normal", 0))

    # every channel holds a message or more before anyone subscribes
    seq = 0
    prefill = []
    for _ in range(args.prefill):
        for ch in channels:
            seq += 1
            prefill.append((ch, seq))
    redis_mem0 = await dataset()
    pusher = kit.Pusher(args.size, args.retain)
    await kit.push_all(pusher, martds[0].port, prefill)
    refused = pusher.refused

    # subscribers: a random channel each, on a random process
    placement = [
        (rng.randrange(args.channels), rng.randrange(len(martds))) for _ in range(args.subscribers)
    ]
    subs_on: list[Counter[int]] = [Counter() for _ in martds]  # process -> channel -> subscribers
    for where, proc in placement:
        subs_on[proc][where] += 1
    pss0 = [m.pss() for m in martds]
    redis_mem1 = await dataset()
    before = meter.read()
    subs: list[kit.Subscriber] = []
    for i, m in enumerate(martds):
        mine = [channels[where] for where, proc in placement if proc == i]
        subs += await kit.subscribe(tally, m.port, mine)
    await asyncio.sleep(1.0)  # SUBSCRIBE and catch-up settle
    connected = kit.Meter.delta(before, meter.read())
    pss1 = [m.pss() for m in martds]
    redis_mem2 = await dataset()

    windows = []
    failed: set[int] = set()
    errors: list[str] = []
    expected_total = 0
    for rate in [*args.rate, *([0.0] if args.burst else [])]:
        got = await window(
            args, martds, names, meter, channels, subs_on, tally, pushed, rng, model, rate, seq
        )
        seq += got.pop("pushes_made")
        failed |= got.pop("failed")
        errors += got.pop("errors")
        expected_total += got["expected_deliveries"]
        refused += got["refused"]
        windows.append(got)
    for ch, seqs in pushed.items():  # a refused push is counted as refused, not as lost
        pushed[ch] = [n for n in seqs if n not in failed]
    lost = kit.lost(subs, pushed)
    kit.close_all(tally, subs)
    await asyncio.sleep(0.5)

    followed = sum(len(s) for s in subs_on)
    connect = []
    for i, name in enumerate(names):
        connects = sum(subs_on[i].values())
        connect.append(
            {
                "process": name,
                "subscribers": connects,
                "channels followed": len(subs_on[i]),
                "connect cpu predicted s": round(connects * model.cpu_connect, 2),
                "connect cpu measured s": round(connected[name], 2),
                "memory predicted MiB": round(connects * model.bytes_per_connection / 2**20, 1),
                "memory measured MiB": round((pss1[i] - pss0[i]) / 2**20, 1),
                "base memory MiB": round(pss0[i] / 2**20, 1),
            }
        )
    redis = {
        "connect cpu predicted s": round(args.subscribers * model.redis_connect, 3),
        "connect cpu measured s": round(connected["redis"], 3),
        # a channel's stream reserves a node of 4 KiB with its first message, so the
        # figure for --retain messages stands for fewer as well
        "memory of the channels predicted MiB": round(
            args.channels * model.channel_bytes(args.prefill, args.size, args.size) / 2**20, 2
        ),
        "memory of the channels measured MiB": round((redis_mem1 - redis_mem0) / 2**20, 2),
        "memory of the followed channels predicted MiB": round(
            followed * model.bytes_per_followed_channel / 2**20, 2
        ),
        "memory of the followed channels measured MiB": round((redis_mem2 - redis_mem1) / 2**20, 2),
    }
    return {
        "setup": {
            "processes": len(martds),
            "channels": args.channels,
            "subscribers": args.subscribers,
            "rates": args.rate,
            "seconds": args.seconds,
            "payload_bytes": args.size,
            "seed": args.seed,
        },
        "connect": connect,
        "redis": redis,
        "windows": windows,
        "checks": {
            "lost": lost,
            "duplicated": tally.duplicates,
            "refused": refused + tally.refused,
            "closed": tally.closed,
            "expected_deliveries": expected_total,
            "errors": tally.errors[:5] + errors[:5],
        },
    }


async def window(
    args: argparse.Namespace,
    martds: list[kit.Martd],
    names: list[str],
    meter: kit.Meter,
    channels: list[str],
    subs_on: list[Counter[int]],
    tally: kit.Tally,
    pushed: dict[str, list[int]],
    rng: random.Random,
    model: capacity.Costs,
    rate: float,
    seq: int,
) -> dict[str, Any]:
    """Pushes at `rate` for args.seconds (rate 0: --burst pushes, as fast as they are
    taken, as bench/costs.py pushes); each process's CPU and Redis's, and the model's."""
    total = int(rate * args.seconds) if rate else args.burst
    plan = []
    for n in range(seq + 1, seq + 1 + total):
        ch = rng.randrange(args.channels)
        plan.append((ch, rng.randrange(len(martds)), n))
        pushed.setdefault(channels[ch], []).append(n)
    expected = sum(sum(s[ch] for s in subs_on) for ch, _, _ in plan)
    target = tally.delivered + expected
    pusher = kit.Pusher(args.size, args.retain)
    gate = asyncio.Semaphore(args.in_flight if rate else BURST_IN_FLIGHT)
    late = 0

    async def one(ch: int, proc: int, n: int) -> None:
        async with gate:
            await pusher.push(martds[proc].port, channels[ch], n)

    before = meter.read()
    started = time.perf_counter()
    tasks = []
    for i, (ch, proc, n) in enumerate(plan):
        delay = started + i / rate - time.perf_counter() if rate else 0.0
        if delay > 0.002:
            await asyncio.sleep(delay)
        elif delay < -0.1:
            late += 1
        tasks.append(asyncio.ensure_future(one(ch, proc, n)))
    await asyncio.gather(*tasks)
    pushing = time.perf_counter() - started
    await tally.until(lambda: tally.delivered >= target - len(pusher.failed), 60, "deliveries")
    # the window ends at a fixed time after the first push, unless the deliveries took longer
    rest = (args.seconds if rate else 0.0) + args.drain - (time.perf_counter() - started)
    if rest > 0:
        await asyncio.sleep(rest)
    measured = kit.Meter.delta(before, meter.read())
    span = time.perf_counter() - started
    await pusher.close()

    # the model's predictions for the same operations
    renew_every = 30.0 / 3  # MARTD_LEASE's default, renewed every lease / 3
    rows = []
    totals = Counter[str]()
    subscribed = set().union(*subs_on)
    for i, name in enumerate(names):
        mine = subs_on[i]
        taken_subscribed = sum(1 for ch, proc, _ in plan if proc == i and ch in subscribed)
        ops = {
            "pushes taken": sum(1 for _, proc, _ in plan if proc == i),
            "notifications": sum(1 for ch, _, _ in plan if mine[ch]),
            "deliveries": sum(mine[ch] for ch, _, _ in plan),
            "renewals": len(mine) * span / renew_every,
        }
        totals.update(ops)
        cpu = (
            (ops["pushes taken"] - taken_subscribed) * model.cpu_push_taken
            + taken_subscribed * model.cpu_push_taken_subscribed
            + ops["notifications"] * model.cpu_notification
            + ops["deliveries"] * model.cpu_delivery
            + ops["renewals"] * model.cpu_renewal
            + span * model.cpu_idle
        )
        rows.append(
            {
                "process": name,
                **{key: round(v) for key, v in ops.items()},
                "cpu predicted s": round(cpu, 4),
                "cpu measured s": round(measured[name], 2),
                "core share measured": round(measured[name] / span, 3),
            }
        )
    on_subscribed = sum(1 for ch, _, _ in plan if ch in subscribed)
    redis_cpu = (
        (total - on_subscribed) * model.redis_push
        + on_subscribed * model.redis_push_subscribed
        + totals["notifications"] * model.redis_notification
        + totals["renewals"] * model.redis_renewal
        + span * model.redis_idle
    )
    return {
        "rate": rate,
        "achieved_rate": round(total / pushing, 1),
        "window_s": round(span, 1),
        "pushing_s": round(pushing, 1),
        "pushes": total,
        "late_pushes": late,
        "processes": rows,
        "redis": {
            "cpu predicted s": round(redis_cpu, 4),
            "cpu measured s": round(measured["redis"], 2),
            "script calls": measured["calls"],
            "renewals predicted": round(totals["renewals"]),
        },
        "expected_deliveries": expected,
        "refused": pusher.refused,
        "pushes_made": total,
        "failed": pusher.failed,
        "errors": pusher.errors[:5],
    }


def ratio(measured: float, predicted: float) -> str:
    return f"{measured / predicted:.2f}" if predicted else "–"


def label(w: dict[str, Any]) -> str:
    """The window's rate, and the rate it reached when that was less."""
    if not w["rate"]:
        return f"burst ({w['achieved_rate']:.0f}/s)"
    if w["achieved_rate"] < 0.95 * w["rate"]:
        return f"{w['rate']:g} ({w['achieved_rate']:.0f}/s reached)"
    return f"{w['rate']:g}"


def table(result: dict[str, Any]) -> str:
    out = [
        "| pushes/s | process | pushes taken | notifications | deliveries | renewals | "
        "CPU predicted (s) | CPU measured (s) | measured ÷ predicted |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in result["windows"]:
        for r in w["processes"]:
            out.append(
                f"| {label(w)} | {r['process']} | {r['pushes taken']} | {r['notifications']} | "
                f"{r['deliveries']} | {r['renewals']} | {r['cpu predicted s']:.2f} | "
                f"{r['cpu measured s']:.2f} | {ratio(r['cpu measured s'], r['cpu predicted s'])} |"
            )
        red = w["redis"]
        out.append(
            f"| {label(w)} | Redis | {w['pushes']} | "
            f"{sum(r['notifications'] for r in w['processes'])} | | {red['renewals predicted']} | "
            f"{red['cpu predicted s']:.2f} | {red['cpu measured s']:.2f} | "
            f"{ratio(red['cpu measured s'], red['cpu predicted s'])} |"
        )
    out += [
        "",
        "| process | subscribers | channels followed | "
        "connect CPU predicted / measured (s) | ratio | "
        "memory predicted / measured (MiB) | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["connect"]:
        out.append(
            f"| {r['process']} | {r['subscribers']} | {r['channels followed']} | "
            f"{r['connect cpu predicted s']:.2f} / {r['connect cpu measured s']:.2f} | "
            f"{ratio(r['connect cpu measured s'], r['connect cpu predicted s'])} | "
            f"{r['memory predicted MiB']:.1f} / {r['memory measured MiB']:.1f} | "
            f"{ratio(r['memory measured MiB'], r['memory predicted MiB'])} |"
        )
    red = result["redis"]
    pairs = [
        (
            "Redis",
            "connect cpu predicted s",
            "connect cpu measured s",
            "memory of the channels predicted MiB",
            "memory of the channels measured MiB",
        ),
    ]
    for name, cp, cm, mp, mm in pairs:
        out.append(
            f"| {name} (channels) | {result['setup']['subscribers']} | "
            f"{result['setup']['channels']} | "
            f"{red[cp]:.2f} / {red[cm]:.2f} | {ratio(red[cm], red[cp])} | "
            f"{red[mp]:.1f} / {red[mm]:.1f} | {ratio(red[mm], red[mp])} |"
        )
    fp, fm = (
        red["memory of the followed channels predicted MiB"],
        red["memory of the followed channels measured MiB"],
    )
    out.append(f"| Redis (followed channels) | | | | | {fp:.1f} / {fm:.1f} | {ratio(fm, fp)} |")
    checks = result["checks"]
    out.append("")
    out.append(
        f"lost {checks['lost']}, duplicated {checks['duplicated']}, refused {checks['refused']}, "
        f"closed by the server {checks['closed']}, of {checks['expected_deliveries']} deliveries"
    )
    return "\n".join(out)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--costs", type=Path, help="bench/costs.py's --json (default: measure them first)"
    )
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--channels", type=int, default=3000)
    parser.add_argument("--subscribers", type=int, default=4000)
    parser.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[300.0, 600.0],
        help="pushes per second; several: one window each, one after the other",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="of pushing, per rate")
    parser.add_argument(
        "--burst",
        type=int,
        default=6000,
        help="pushes of a last window, as fast as they are taken (0: none)",
    )
    parser.add_argument(
        "--drain", type=float, default=2.0, help="s after the pushes, in the window"
    )
    parser.add_argument(
        "--prefill", type=int, default=2, help="messages on each channel beforehand"
    )
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument("--retain", type=int, default=10, help="size= of every push")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="seconds, not minutes: checks the tool")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--src", type=Path, default=kit.ROOT / "src", help="martd_asgi's tree")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    if args.tiny:
        args.channels, args.subscribers, args.rate, args.seconds = 100, 150, [50.0], 2.0
        args.burst = 100
        args.drain, args.prefill, args.settle = 0.5, 1, 0.2
    return args


def main() -> None:
    kit.stop_on_sigterm()
    args = parse()
    if args.costs is None:
        options = ["--tiny"] if args.tiny else []
        measured = kit.measure(
            kit.parse([*options, "--src", str(args.src), "--python", args.python])
        )
    else:
        measured = json.loads(args.costs.read_text())
    model = capacity.Costs.from_figures(measured)
    kit.raise_nofile(args.subscribers + 500)
    started = time.perf_counter()
    with kit.cluster(args.python, args.src) as c:
        c.start_redis()
        result = asyncio.run(simulate(args, c, model))
    result["run"] = {
        "command": "bench/simulate.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    result["costs"] = measured  # bench/capacity.py reads this file as well
    kit.report(result, table(result), args.json)


if __name__ == "__main__":
    main()
