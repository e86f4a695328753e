#!/usr/bin/env python3
"""The capacity model of docs/scaling.md: martd processes and Redis shards for a load.

Reads the per-operation costs that bench/costs.py measured (its --json file)
and prints, for each scenario, what one martd process and one Redis shard
would carry, how many of each the load needs, and which resource decides.

    .venv/bin/python bench/costs.py --json costs.json
    .venv/bin/python bench/capacity.py costs.json              # the scenarios of docs/scaling.md
    .venv/bin/python bench/capacity.py costs.json --json model.json

The formulas (per second; the names are the keys of costs.py's figures):

    D  = processes that follow a subscribed channel: P·(1 - (1 - 1/P)^k) when
         subscribers land on processes at random, 1 when routed by channel
    martd CPU, per process = [ R·(1-f)·cpu_push_taken + R·f·cpu_push_taken_subscribed
                               + R·f·D·cpu_notification
                               + R·f·k·cpu_delivery + (N/T)·cpu_connect
                               + (N/k)·D/(L/3)·cpu_renewal ] / P
    martd memory, per process = base + (N/P)·bytes_per_connection
    Redis CPU, all shards = R·(1-f)·redis_push + R·f·redis_push_subscribed
                            + R·f·D·redis_notification
                            + (N/T)·redis_connect + (N/k)·D/(L/3)·redis_renewal
    Redis memory, all shards = H·bytes_per_channel(retain) + (N/k)·D·bytes_per_followed_channel
    network out of martd, per process = R·f·k·sse_bytes / P
    network out of Redis, all shards = R·f·D·notification_bytes + R·answer

with N connections, H channels, R pushes/s, k subscribers per subscribed
channel (N/k channels have subscribers), f the share of pushes that go to
subscribed channels, T the mean life of a connection (each reconnects once
per T), L the lease (MARTD_LEASE, renewed every L/3). P, the number of martd
processes, is the smallest that keeps every process under the headroom rule;
shards the smallest count that keeps every shard under it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

GIB = 1024**3

# The headroom rule: plan every resource at half of what it can give, so that a
# process or shard can take a failed peer's share and bursts twice the mean.
CPU_SHARE = 0.5  # of one core, per martd process and per Redis shard (both single-threaded)
PROCESS_MEMORY = 1 * GIB  # per martd process: half of 2 GiB per core on a typical host
SHARD_MEMORY = 8 * GIB  # per Redis shard: half of a 16 GiB node (fork, fragmentation)
LINK = 10e9 / 8 * 0.5  # bytes/s per host: half of 10 Gbit/s
PROCESS_BASE = 45 * 1024**2  # Pss of a martd process without subscribers, when not measured


@dataclasses.dataclass
class Costs:
    cpu_push_taken: float  # s of martd CPU, on a channel nobody subscribes to
    cpu_push_taken_subscribed: float  # the same on a channel with subscribers
    cpu_notification: float
    cpu_delivery: float
    cpu_connect: float
    cpu_renewal: float
    bytes_per_connection: float
    redis_push: float  # s of Redis CPU, on a channel nobody subscribes to
    redis_push_subscribed: float  # the same on a channel with subscribers (no notification)
    redis_notification: float
    redis_connect: float
    redis_renewal: float
    bytes_per_channel: float  # at the retained count of the costs run
    bytes_per_message: float  # past the first stream node
    bytes_per_followed_channel: float
    retained: int
    cpu_idle: float  # s of martd CPU per second, per process
    redis_idle: float  # s of Redis CPU per second, per shard
    process_base: float  # Pss of a process without subscribers
    sse_bytes: float
    notification_bytes: float
    answer_bytes: float

    @classmethod
    def from_figures(cls, result: dict[str, Any]) -> Costs:
        f = result["figures"]
        us = 1e-6
        return cls(
            cpu_push_taken=f["martd_cpu_per_push_taken_us"] * us,
            cpu_push_taken_subscribed=f.get("martd_cpu_per_push_taken_subscribed_us", 0.0) * us
            or f["martd_cpu_per_push_taken_us"] * us,
            cpu_notification=f["martd_cpu_per_notification_us"] * us,
            cpu_delivery=f["martd_cpu_per_delivery_us"] * us,
            cpu_connect=f["martd_cpu_per_connect_us"] * us,
            cpu_renewal=f["martd_cpu_per_renewal_us"] * us,
            bytes_per_connection=f["martd_bytes_per_connection"],
            redis_push=f["redis_cpu_per_push_us"] * us,
            redis_push_subscribed=f.get("redis_cpu_per_push_subscribed_us", 0.0) * us
            or f["redis_cpu_per_push_us"] * us,
            redis_notification=f["redis_cpu_per_notification_us"] * us,
            redis_connect=f["redis_cpu_per_connect_us"] * us,
            redis_renewal=f["redis_cpu_per_renewal_us"] * us,
            bytes_per_channel=f["redis_bytes_per_channel_retained"],
            bytes_per_message=f["redis_key_bytes_per_message_deep"],
            bytes_per_followed_channel=f["redis_bytes_per_followed_channel"],
            retained=int(result["setup"]["retained_per_channel"]),
            cpu_idle=f.get("martd_cpu_idle_per_s_us", 0.0) * us,
            redis_idle=f.get("redis_cpu_idle_per_s_us", 0.0) * us,
            process_base=f.get("martd_bytes_idle_process", PROCESS_BASE),
            sse_bytes=f["sse_bytes_per_delivery"],
            notification_bytes=f["notification_bytes"],
            answer_bytes=f["push_answer_bytes"],
        )

    def channel_bytes(self, retain: int, payload: int, measured_payload: int) -> float:
        """A channel's Redis memory holding `retain` messages of `payload` bytes."""
        extra = max(0, retain - self.retained) * (
            self.bytes_per_message + payload - measured_payload
        )
        return self.bytes_per_channel + extra


@dataclasses.dataclass
class Load:
    name: str
    connections: float = 1e6
    channels: float = 1e6
    pushes: float = 1e5  # per second
    fanout: float = 1.0  # subscribers per subscribed channel
    on_subscribed: float = 1.0  # share of pushes that go to subscribed channels
    payload: int = 100
    retain: int = 10
    life: float = 600.0  # s a connection lasts before it reconnects
    lease: float = 30.0
    routed: bool = False  # subscribers of one channel sent to one process


def followers(processes: int, load: Load) -> float:
    """Processes that follow a subscribed channel (D)."""
    if load.routed:
        return 1.0
    p, k = processes, load.fanout
    return float(p * (1 - (1 - 1 / p) ** k))


def rates(load: Load, processes: int) -> dict[str, float]:
    """Operations per second, all processes together."""
    d = followers(processes, load)
    subscribed = load.connections / load.fanout
    return {
        "pushes": load.pushes,
        "pushes_subscribed": load.pushes * load.on_subscribed,
        "notifications": load.pushes * load.on_subscribed * d,
        "deliveries": load.pushes * load.on_subscribed * load.fanout,
        "connects": load.connections / load.life,
        "renewals": subscribed * d / (load.lease / 3),
        "followed": subscribed * d,
        "followers": d,
    }


def martd_cpu(c: Costs, r: dict[str, float]) -> float:
    return (
        (r["pushes"] - r["pushes_subscribed"]) * c.cpu_push_taken
        + r["pushes_subscribed"] * c.cpu_push_taken_subscribed
        + r["notifications"] * c.cpu_notification
        + r["deliveries"] * c.cpu_delivery
        + r["connects"] * c.cpu_connect
        + r["renewals"] * c.cpu_renewal
    )


def redis_cpu(c: Costs, r: dict[str, float]) -> float:
    return (
        (r["pushes"] - r["pushes_subscribed"]) * c.redis_push
        + r["pushes_subscribed"] * c.redis_push_subscribed
        + r["notifications"] * c.redis_notification
        + r["connects"] * c.redis_connect
        + r["renewals"] * c.redis_renewal
    )


def plan(c: Costs, load: Load, measured_payload: int) -> dict[str, Any]:
    """The fewest martd processes and Redis shards for the load, and what decides each."""

    def cpu_per_process(processes: int) -> float:
        return martd_cpu(c, rates(load, processes)) / processes + c.cpu_idle

    # CPU per process falls as processes are added (D/P never grows): bisect.
    low, high = 1, 1
    while cpu_per_process(high) > CPU_SHARE and high < 10**7:
        low, high = high, high * 2
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if cpu_per_process(mid) > CPU_SHARE else (low, mid)
    martd_cpu_need = high
    room = PROCESS_MEMORY - c.process_base
    martd_memory_need = math.ceil(load.connections * c.bytes_per_connection / room)
    p = max(martd_cpu_need, martd_memory_need)
    r = rates(load, p)
    per_channel = c.channel_bytes(load.retain, load.payload, measured_payload)
    best = {
        "cpu": martd_cpu(c, r) / p + c.cpu_idle,
        "memory": c.process_base + load.connections / p * c.bytes_per_connection,
        "out": r["deliveries"] * c.sse_bytes / p,
    }
    redis = redis_cpu(c, r)
    redis_memory = load.channels * per_channel + r["followed"] * c.bytes_per_followed_channel
    redis_out = r["notifications"] * c.notification_bytes + r["pushes"] * c.answer_bytes
    shards_cpu = math.ceil(redis / (CPU_SHARE - c.redis_idle))
    shards_memory = math.ceil(redis_memory / SHARD_MEMORY)
    shards = max(shards_cpu, shards_memory)
    return {
        "processes": p,
        "processes_for_cpu": martd_cpu_need,
        "processes_for_memory": martd_memory_need,
        "martd_decides": "CPU" if martd_cpu_need >= martd_memory_need else "memory",
        "process_cpu": round(best["cpu"], 3),
        "process_memory_mib": round(best["memory"] / 2**20),
        "process_out_mbit": round(best["out"] * 8 / 1e6, 1),
        "followers_per_channel": round(r["followers"], 2),
        "rates": {key: round(value) for key, value in r.items() if key != "followers"},
        "martd_cpu_cores": round(martd_cpu(c, r), 1),
        "martd_cpu_split": {
            "pushes taken": round(
                (r["pushes"] - r["pushes_subscribed"]) * c.cpu_push_taken
                + r["pushes_subscribed"] * c.cpu_push_taken_subscribed,
                1,
            ),
            "notifications": round(r["notifications"] * c.cpu_notification, 1),
            "deliveries": round(r["deliveries"] * c.cpu_delivery, 1),
            "connects": round(r["connects"] * c.cpu_connect, 1),
            "renewals": round(r["renewals"] * c.cpu_renewal, 1),
        },
        "redis_cpu_cores": round(redis, 1),
        "redis_cpu_split": {
            "pushes": round(
                (r["pushes"] - r["pushes_subscribed"]) * c.redis_push
                + r["pushes_subscribed"] * c.redis_push_subscribed,
                1,
            ),
            "notifications": round(r["notifications"] * c.redis_notification, 1),
            "connects": round(r["connects"] * c.redis_connect, 1),
            "renewals": round(r["renewals"] * c.redis_renewal, 1),
        },
        "redis_memory_gib": round(redis_memory / GIB, 1),
        "redis_out_mbit": round(redis_out * 8 / 1e6),
        "shards": shards,
        "shards_for_cpu": shards_cpu,
        "shards_for_memory": shards_memory,
        "redis_decides": "CPU" if shards_cpu >= shards_memory else "memory",
        "network_share_of_link_per_process": round(best["out"] / LINK, 4),
    }


SCENARIOS = [
    Load("base: 1 subscriber per channel"),
    Load("10 subscribers per channel (100k channels subscribed)", fanout=10),
    Load("100 subscribers per channel (10k subscribed), at random", fanout=100),
    Load("100 subscribers per channel, routed by channel", fanout=100, routed=True),
    Load("100 per channel, 1% of pushes on subscribed channels", fanout=100, on_subscribed=0.01),
    Load("base, 1 KB payloads, 100 retained", payload=1000, retain=100),
    Load("base, connections live 60 s", life=60.0),
    Load("base, lease 300 s (renewed every 100 s)", lease=300.0),
]


def table(costs: Costs, measured_payload: int) -> str:
    rows = [
        "| scenario | followers D | martd processes (CPU / memory) | per process: CPU, MiB | "
        "Redis CPU (cores) | Redis memory (GiB) | shards (CPU / memory) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for load in SCENARIOS:
        got = plan(costs, load, measured_payload)
        rows.append(
            f"| {load.name} | {got['followers_per_channel']} | **{got['processes']}** "
            f"({got['processes_for_cpu']} / {got['processes_for_memory']}) | "
            f"{got['process_cpu']:.2f}, {got['process_memory_mib']} | {got['redis_cpu_cores']} | "
            f"{got['redis_memory_gib']} | **{got['shards']}** ({got['shards_for_cpu']} / "
            f"{got['shards_for_memory']}) |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "costs", type=Path, help="the --json file of bench/costs.py (or of bench/simulate.py)"
    )
    parser.add_argument("--json", type=Path, help="also write every scenario's figures here")
    args = parser.parse_args()
    result = json.loads(args.costs.read_text())
    result = result.get("costs", result)  # bench/simulate.py's --json holds its costs
    costs = Costs.from_figures(result)
    payload = int(result["setup"]["payload_bytes"])
    print(table(costs, payload))
    plans = {
        load.name: {"load": dataclasses.asdict(load), **plan(costs, load, payload)}
        for load in SCENARIOS
    }
    if args.json:
        args.json.write_text(json.dumps(plans, indent=1) + "\n")
    else:
        json.dump(plans, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
