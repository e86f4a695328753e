#!/usr/bin/env python3
"""Benchmark martd beside Nchan: one command, one markdown table.

    python bench/run.py [--quick] [--scenarios idle fanout10k ...] [--repeat 3]

Starts a fresh server for every measurement (martd under uvicorn, one worker,
uvloop + httptools; Nchan in nginx with bench/nchan.conf, one worker), runs
bench/loadgen.py against it, stops it, and goes on with the other server, so
martd and Nchan alternate and share whatever else the machine is doing.  Each
figure is the median over the repeats; each ratio is the median of the
per-repeat ratios martd / Nchan.  See bench/README.md for what the figures mean;
bench/servers.py starts and stops the servers, bench/report.py writes the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from report import CASES, Case, Results, machine, profile_summary, report, rerender, versions
from servers import (
    BENCH,
    REDIS_URL,
    ROOT,
    Server,
    ServerFailed,
    probe_websocket,
    raise_nofile,
    redis_reachable,
    start,
)

LOADGEN = BENCH / "loadgen.py"
INTEREST = BENCH / "interest.py"


# -- running ----------------------------------------------------------------------------


def loadgen(
    opts: argparse.Namespace, case: Case, variant: str, server: Server, repeat: int
) -> dict[str, Any]:
    params = dict(case.quick if opts.quick else case.full)
    cmd = [
        opts.python,
        str(LOADGEN),
        case.scenario,
        "--port",
        str(server.port),
        "--pid",
        str(server.pid),
        "--flavor",
        "nchan" if variant == "nchan" else "martd",
        "--transport",
        "ws" if variant == "martd-ws" else "sse",
        "--prefix",
        f"r{os.getpid()}x{repeat}-{variant}",
    ]
    for key, value in params.items():
        cmd += ["-n" if key == "n" else f"--{key}", str(value)]
    if opts.profile and variant != "nchan":
        opts.profile.mkdir(parents=True, exist_ok=True)
        out = opts.profile / f"{case.key}-{variant}-{repeat + 1}.txt"
        cmd += ["--profile", str(out), "--py-spy", opts.py_spy]
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=600, preexec_fn=raise_nofile
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def interest(opts: argparse.Namespace, case: Case) -> dict[str, Any]:
    """bench/interest.py: it starts its own redis-server and two martd processes."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("interest needs redis-server (apt-get install -y redis-server)")
    params = dict(case.quick if opts.quick else case.full)
    cmd = [opts.python, str(INTEREST), "--src", str(opts.src), "--python", opts.python]
    for key, value in params.items():
        cmd += [f"--{key}", str(value)]
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=900, preexec_fn=raise_nofile
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"interest failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def summary(result: dict[str, Any]) -> str:
    keys = [
        "deliveries_per_cpu_s",
        "pushes_per_s",
        "p50_ms",
        "p99_ms",
        "server_pss_kib_per_conn",
        "server_cpu_us_per_connect",
        "b_share_of_a",
    ]
    parts = [f"{k}={result[k]:.4g}" for k in keys if isinstance(result.get(k), (int, float))]
    parts.append(f"lost={result.get('lost')} dup={result.get('duplicated')}")
    if result.get("refused_by_server"):
        parts.append(f"refused={result['refused_by_server']}")
    if result.get("closed_by_server"):
        parts.append(f"closed={result['closed_by_server']}")
    if result.get("errors"):
        parts.append(f"errors={result['errors'][:3]}")
    return " ".join(parts)


def run_all(opts: argparse.Namespace, logdir: Path) -> Results:
    res = Results()
    cases = [c for c in CASES if c.key in opts.scenarios]
    wanted = set(opts.variants)
    if "martd-redis" in wanted and not redis_reachable(opts.redis_url):
        res.skipped["martd-redis"] = f"no Redis at {opts.redis_url}"
    for repeat in range(opts.repeat):
        for ci, case in enumerate(cases):
            variants = [v for v in case.variants if v in wanted and v not in res.skipped]
            if (repeat + ci) % 2:  # alternate who goes first
                variants.sort(key=lambda v: v != "nchan")
            for variant in variants:
                if variant in res.skipped:
                    continue
                label = f"[{repeat + 1}/{opts.repeat}] {case.key} {variant}"
                began = time.monotonic()
                if case.scenario == "interest":
                    try:
                        result = interest(opts, case)
                    except Exception as e:  # one failure must not lose the run
                        res.notes.append(f"{label}: {e}")
                        print(f"{label}: FAILED {e}", file=sys.stderr)
                        continue
                    res.add(case.key, variant, result)
                    took = time.monotonic() - began
                    print(f"{label} ({took:.0f} s): {summary(result)}", file=sys.stderr, flush=True)
                    continue
                try:
                    server = start(opts, variant, logdir)
                except ServerFailed as e:
                    if variant == "nchan" or variant == "martd":
                        raise
                    res.skipped[variant] = f"martd did not start with it: {str(e).splitlines()[-1]}"
                    print(f"{label}: skipped ({res.skipped[variant]})", file=sys.stderr)
                    continue
                try:
                    if variant == "martd-ws":
                        why = probe_websocket(server.port)
                        if why is not None:
                            res.skipped[variant] = (
                                f"GET /sub/{{channel}} does not upgrade to WebSocket yet ({why})"
                            )
                            print(f"{label}: skipped ({res.skipped[variant]})", file=sys.stderr)
                            continue
                    result = loadgen(opts, case, variant, server, repeat)
                except Exception as e:  # one failure must not lose the run
                    res.notes.append(f"{label}: {e}")
                    print(f"{label}: FAILED {e}", file=sys.stderr)
                    continue
                finally:
                    server.stop()
                res.add(case.key, variant, result)
                took = time.monotonic() - began
                print(f"{label} ({took:.0f} s): {summary(result)}", file=sys.stderr, flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, one repeat: a smoke run under a minute"
    )
    parser.add_argument(
        "--scenarios", nargs="+", choices=[c.key for c in CASES], default=[c.key for c in CASES]
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=["martd", "nchan", "martd-ws", "martd-redis"],
        default=["martd", "nchan", "martd-ws", "martd-redis"],
    )
    parser.add_argument("--repeat", type=int, help="repeats (default 3, or 1 with --quick)")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for uvicorn and the load generator"
    )
    parser.add_argument(
        "--martd-app", default="martd_asgi:app", help="ASGI app uvicorn serves as martd"
    )
    parser.add_argument(
        "--stock-protocols",
        action="store_true",
        help="run martd's variants on uvicorn's default protocols, not those `martd serve` pins",
    )
    parser.add_argument(
        "--src",
        type=Path,
        default=ROOT / "src",
        help="import martd_asgi from here (e.g. another checkout, to compare versions)",
    )
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record martd with py-spy during each measured phase; profiles, summaries to DIR",
    )
    parser.add_argument("--json", type=Path, help="also write every raw result here")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the report of a run saved with --json",
    )
    opts = parser.parse_args(argv)
    if opts.report:
        print(rerender(opts, opts.report))
        return 0
    if opts.repeat is None:
        opts.repeat = 1 if opts.quick else 3
    if opts.profile:
        opts.py_spy = shutil.which("py-spy") or str(Path(opts.python).parent / "py-spy")
        if not os.path.exists(opts.py_spy):
            parser.error("--profile needs py-spy: pip install py-spy")
    raise_nofile()
    started = datetime.datetime.now(datetime.timezone.utc)
    command = "python bench/run.py" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])
    )
    logdir = Path(tempfile.mkdtemp(prefix="martd-bench-logs-"))
    try:
        res = run_all(opts, logdir)
    except ServerFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    res.load.append(os.getloadavg()[0])
    res.machine, res.versions = machine(), versions(opts)
    text = report(opts, res, started, command)
    print(text)
    if opts.output:
        opts.output.write_text(text)
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "started": started.isoformat(),
                    "runs": [
                        {"case": c, "variant": v, "results": rs} for (c, v), rs in res.runs.items()
                    ],
                    "skipped": res.skipped,
                    "notes": res.notes,
                    "load": res.load,
                    "machine": res.machine,
                    "versions": res.versions,
                    "quick": opts.quick,
                    "repeat": opts.repeat,
                },
                indent=1,
            )
        )
    if opts.profile:
        for path in sorted(opts.profile.glob("*.txt")):
            if not path.name.endswith(".top.txt"):
                path.with_suffix(".top.txt").write_text(profile_summary(path))
        print(
            f"profiles: {opts.profile}/*.txt (py-spy raw), summaries in *.top.txt", file=sys.stderr
        )
    shutil.rmtree(logdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
