#!/usr/bin/env python3
"""Load generator for martd's benchmark, cheap enough to share two cores with the server.

One scenario per invocation; prints one JSON object on stdout.  bench/run.py
starts the servers and calls this once per scenario and server, but it can be
run by hand against any running martd or Nchan:

    python bench/loadgen.py fanout --port 8000 --pid $(pgrep -o -f uvicorn) -n 1000

The scenarios are in bench/scenarios.py, the clients (raw asyncio Protocols on
uvloop when installed) in bench/clients.py, and what is measured (server CPU and
memory from /proc, losses, duplicates) in bench/measure.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from typing import Any

from clients import raise_nofile
from measure import Profiler
from scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's (parent) process")
    parser.add_argument("--flavor", choices=["martd", "nchan"], default="martd")
    parser.add_argument("--transport", choices=["sse", "ws"], default="sse")
    parser.add_argument("-n", type=int, default=1000, help="subscribers / long-poll clients")
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10.0, help="throughput: seconds")
    parser.add_argument("--publishers", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="payload bytes")
    parser.add_argument(
        "--stalled", type=int, default=5, help="slow: subscribers that stop reading"
    )
    parser.add_argument("--channels", type=int, default=1, help="idle: channels to spread over")
    parser.add_argument(
        "--read-interval",
        type=float,
        default=0.0,
        help="throughput: subscribers read at most this often, in seconds (0: on every wake-up)",
    )
    parser.add_argument("--settle", type=float, default=1.0, help="idle: seconds before memory")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--profile", help="record the server with py-spy during the measured phase")
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    parser.add_argument("--prefix", default=f"b{os.getpid()}-{int(time.time()) % 100000}")
    args = parser.parse_args(argv)
    args.profiler = Profiler(args)
    raise_nofile(args.n + args.publishers)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        print("warning: uvloop not installed; the load generator is slower", file=sys.stderr)
    gc.disable()  # short-lived process; its garbage is acyclic
    t0 = time.perf_counter()
    result: dict[str, Any] = asyncio.run(SCENARIOS[args.scenario](args))
    result = {
        "scenario": args.scenario,
        "flavor": args.flavor,
        "transport": args.transport,
        "n": args.n,
        "wall_s_total": time.perf_counter() - t0,
        **result,
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    os._exit(0)  # skip closing thousands of sockets one by one


if __name__ == "__main__":
    main()
