"""What bench/run.py measures, and the markdown report of it.

`CASES` are the scenarios with their sizes (full and --quick) and the servers
each runs on; `FIGURES` the rows of the table.  Each figure is the median over
the repeats; each ratio the median of the per-repeat ratios martd / Nchan.
`rerender` prints the report of a run saved with --json again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# -- what is measured -------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    scenario: str
    full: dict[str, Any]
    quick: dict[str, Any]
    variants: tuple[str, ...]


CASES = [
    Case(
        "idle",
        "idle",
        {"n": 10000},
        {"n": 1000, "settle": 0.5},
        ("martd", "nchan", "martd-ws", "martd-redis"),
    ),
    Case(
        "fanout1k",
        "fanout",
        {"n": 1000, "pushes": 20},
        {"n": 200, "pushes": 20},
        ("martd", "nchan", "martd-ws", "martd-redis"),
    ),
    Case(
        "fanout10k",
        "fanout",
        {"n": 10000, "pushes": 20},
        {"n": 1000, "pushes": 10},
        ("martd", "nchan", "martd-ws", "martd-redis"),
    ),
    Case(
        "throughput",
        "throughput",
        {"n": 100, "duration": 10, "publishers": 16},
        {"n": 100, "duration": 1, "publishers": 16},
        ("martd", "nchan", "martd-ws", "martd-redis"),
    ),
    Case(
        "longpoll",
        "longpoll",
        {"n": 1000, "pushes": 20},
        {"n": 100, "pushes": 10},
        ("martd", "nchan", "martd-redis"),
    ),
    Case(
        "slow",
        "slow",
        {"n": 50, "stalled": 5, "pushes": 3000, "size": 4096},
        {"n": 10, "stalled": 2, "pushes": 800, "size": 4096},
        ("martd", "nchan", "martd-ws", "martd-redis"),
    ),
    Case(
        "latency",
        "latency",
        {"pushes": 1000},
        {"pushes": 200},
        ("martd", "nchan", "martd-ws", "martd-redis"),
    ),
    # bench/interest.py: two martd processes on a redis-server of their own, every
    # subscriber on A; what B spends on the pushes, as a share of A's CPU
    Case(
        "interest",
        "interest",
        {"channels": 1000, "pushes": 20000},
        {"channels": 200, "pushes": 2000},
        ("martd-redis",),
    ),
]

# (case, loadgen result key, label, unit format, better)
FIGURES = [
    (
        "idle",
        "server_pss_kib_per_conn",
        "idle {n}: server memory (PSS) per connection, KiB",
        "{:.1f}",
    ),
    (
        "idle",
        "server_rss_kib_per_conn",
        "idle {n}: server memory (RSS) per connection, KiB",
        "{:.1f}",
    ),
    ("idle", "server_cpu_us_per_connect", "idle {n}: server CPU per connect, µs", "{:.0f}"),
    ("fanout1k", "deliveries_per_cpu_s", "fan-out {n}: deliveries / server CPU-s", "{:,.0f}"),
    ("fanout1k", "p50_ms", "fan-out {n}: push to last delivery p50, ms", "{:.1f}"),
    ("fanout1k", "p99_ms", "fan-out {n}: push to last delivery p99, ms", "{:.1f}"),
    ("fanout10k", "deliveries_per_cpu_s", "fan-out {n}: deliveries / server CPU-s", "{:,.0f}"),
    ("fanout10k", "p50_ms", "fan-out {n}: push to last delivery p50, ms", "{:.1f}"),
    ("fanout10k", "p99_ms", "fan-out {n}: push to last delivery p99, ms", "{:.1f}"),
    ("throughput", "pushes_per_s", "throughput, {n} subs, 16 publishers: pushes/s", "{:,.0f}"),
    (
        "throughput",
        "deliveries_per_cpu_s",
        "throughput, {n} subs: deliveries / server CPU-s",
        "{:,.0f}",
    ),
    (
        "longpoll",
        "deliveries_per_cpu_s",
        "long-poll {n} clients: deliveries / server CPU-s",
        "{:,.0f}",
    ),
    ("slow", "push_p99_ms", "slow subscribers ({stalled} stop reading): push p99, ms", "{:.1f}"),
    ("slow", "p99_ms", "slow subscribers: push to last reader p99, ms", "{:.1f}"),
    ("slow", "server_pss_growth_mib", "slow subscribers: server memory growth, MiB", "{:.1f}"),
    (
        "slow",
        "stalled_closed_by_server",
        "slow subscribers: stalled ones cut by the server",
        "{:.0f}",
    ),
    (
        "slow",
        "stalled_forgotten",
        "slow subscribers: stalled ones neither cut nor caught up",
        "{:.0f}",
    ),
    ("latency", "p50_ms", "latency, 1 sub: push to receive p50, ms", "{:.2f}"),
    ("latency", "p99_ms", "latency, 1 sub: push to receive p99, ms", "{:.2f}"),
    (
        "interest",
        "b_share_of_a",
        "2 processes, {channels} channels with every subscriber on A, {pushes} pushes: "
        "B's CPU ÷ A's",
        "{:.3f}",
    ),
]

# The Redis backend beside the memory backend: (case, figure, label), each as the
# median of the per-repeat ratios martd-redis ÷ martd
REDIS_RATIOS = [
    ("longpoll", "deliveries_per_cpu_s", "long-poll {n} clients: deliveries / server CPU-s"),
    ("throughput", "deliveries_per_cpu_s", "throughput, {n} subs: deliveries / server CPU-s"),
    ("throughput", "pushes_per_s", "throughput, {n} subs, 16 publishers: pushes/s"),
    ("idle", "server_cpu_us_per_connect", "idle {n}: server CPU per connect"),
    ("latency", "p50_ms", "latency, 1 sub: push to receive p50"),
]

VARIANT_LABEL = {"martd-ws": "WebSocket", "martd-redis": "Redis backend, 2 workers"}


@dataclass
class Results:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load: list[float] = field(default_factory=lambda: [os.getloadavg()[0]])
    machine: str = ""
    versions: str = ""

    def add(self, case: str, variant: str, result: dict[str, Any]) -> None:
        self.runs.setdefault((case, variant), []).append(result)


# -- reporting --------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return statistics.median(values) if values else None


def paired_ratio(
    res: Results, case: str, key: str, variant: str, base: str = "nchan"
) -> float | None:
    a = res.runs.get((case, variant), [])
    b = res.runs.get((case, base), [])
    ratios = [x[key] / y[key] for x, y in zip(a, b, strict=False) if x.get(key) and y.get(key)]
    return median(ratios)


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else spec.format(value)


def case_n(opts: argparse.Namespace, key: str) -> Any:
    case = next(c for c in CASES if c.key == key)
    return (case.quick if opts.quick else case.full).get("n", 1)


def label_of(opts: argparse.Namespace, key: str, label: str) -> str:
    case = next(c for c in CASES if c.key == key)
    params = case.quick if opts.quick else case.full
    return label.format(
        n=f"{params.get('n', 1):,}",
        stalled=params.get("stalled", ""),
        channels=f"{params.get('channels', 0):,}",
        pushes=f"{params.get('pushes', 0):,}",
    )


CASE_TITLES = {
    "idle": "idle {n}",
    "fanout1k": "fan-out {n}",
    "fanout10k": "fan-out {n}",
    "throughput": "throughput, {n} subs",
    "longpoll": "long-poll {n} clients",
    "slow": "slow subscribers",
    "latency": "latency",
    "interest": "interest",
}


def table(opts: argparse.Namespace, res: Results) -> list[str]:
    lines = ["| figure | martd | Nchan | ratio |", "|---|---:|---:|---:|"]
    extra: dict[str, list[str]] = {"martd-ws": [], "martd-redis": []}
    for case, key, label, spec in FIGURES:
        text = label_of(opts, case, label)
        m = median([r.get(key) for r in res.runs.get((case, "martd"), [])])
        n = median([r.get(key) for r in res.runs.get((case, "nchan"), [])])
        if m is not None or n is not None:
            ratio = paired_ratio(res, case, key, "martd")
            lines.append(f"| {text} | {fmt(m, spec)} | {fmt(n, spec)} | {fmt(ratio, '{:.2f}')} |")
        for variant, rows in extra.items():
            v = median([r.get(key) for r in res.runs.get((case, variant), [])])
            if v is None:
                continue
            ratio = paired_ratio(res, case, key, variant)
            rows.append(
                f"| {VARIANT_LABEL[variant]}: {text} | {fmt(v, spec)} | "
                f"{fmt(n, spec) + ' (SSE)' if n is not None else '—'} | "
                f"{fmt(ratio, '{:.2f}')} |"
            )
    ws_cost = paired_ratio(res, "fanout10k", "server_cpu_us_per_delivery", "martd-ws", "martd")
    if ws_cost is not None:
        extra["martd-ws"].append(
            f"| WebSocket ÷ SSE server CPU per delivery, fan-out {case_n(opts, 'fanout10k'):,} | "
            f"{ws_cost:.2f} | | |"
        )
    for variant, rows in extra.items():
        lines += rows
        if variant == "martd-redis":
            lines += redis_ratio_rows(opts, res)
    # Figures over fewer subscribers or pushes than asked for say so.
    for (case, variant), runs in res.runs.items():
        refused = median([r.get("refused_by_server", 0) for r in runs]) or 0
        pushes = median([r.get("pushes_refused", 0) for r in runs]) or 0
        if refused or pushes:
            who = VARIANT_LABEL.get(variant, variant)
            title = label_of(opts, case, CASE_TITLES[case])
            cells = f"{refused:,.0f} / {pushes:,.0f}"
            lines.append(
                f"| {who}: {title}: subscriptions / pushes refused by the server | "
                + (f"| {cells} | |" if variant == "nchan" else f"{cells} | | |")
            )
    for variant in ("martd", "nchan", "martd-ws", "martd-redis"):
        runs = [r for (c, v), rs in res.runs.items() if v == variant for r in rs]
        if not runs:
            continue
        lost = sum(r.get("lost", 0) for r in runs)
        dup = sum(r.get("duplicated", 0) for r in runs)
        lines.append(
            f"| {variant}: messages lost / duplicated (all scenarios) | {lost} / {dup} | | |"
            if variant != "nchan"
            else f"| Nchan: messages lost / duplicated (all scenarios) | | {lost} / {dup} | |"
        )
    return lines


def redis_ratio_rows(opts: argparse.Namespace, res: Results) -> list[str]:
    """Rows of the Redis backend's figures ÷ the memory backend's, from the same repeats."""
    rows = []
    for case, key, label in REDIS_RATIOS:
        r = paired_ratio(res, case, key, "martd-redis", "martd")
        if r is not None:
            rows.append(f"| Redis ÷ memory backend: {label_of(opts, case, label)} | {r:.2f} | | |")
    return rows


def count_notes(res: Results) -> list[str]:
    notes = []
    for variant in ("martd", "nchan", "martd-ws", "martd-redis"):
        runs = [r for (c, v), rs in res.runs.items() if v == variant for r in rs]
        closed = sum(r.get("closed_by_server", 0) for r in runs)
        ctl = sum(r.get("control_events", 0) for r in runs)
        errors = sum(len(r.get("errors", [])) for r in runs)
        refused = sum(r.get("refused_by_server", 0) for r in runs)
        if closed or ctl or errors or refused:
            notes.append(
                f"{variant}: {refused} subscriptions refused (error status), {closed} "
                f"subscriber connections closed by the server, {ctl} control events, "
                f"{errors} errors noted (see the JSON results)"
            )
    return notes


# (what, case, figure, variant, against, op, bound): the targets of issue 8
TARGETS = [
    ("fan-out {n}: deliveries / CPU-s ≥ 0.75× Nchan",
     "fanout10k", "deliveries_per_cpu_s", "martd", "nchan", ">=", 0.75),
    ("fan-out {n}: p99 ≤ 1.5× Nchan",
     "fanout10k", "p99_ms", "martd", "nchan", "<=", 1.5),
    ("throughput {n} subs: deliveries / CPU-s ≥ 0.35× Nchan",
     "throughput", "deliveries_per_cpu_s", "martd", "nchan", ">=", 0.35),
    ("idle {n}: memory (PSS) per connection ≤ 1.3× Nchan",
     "idle", "server_pss_kib_per_conn", "martd", "nchan", "<=", 1.3),
    ("long-poll {n} clients: deliveries / CPU-s ≥ 0.5× Nchan",
     "longpoll", "deliveries_per_cpu_s", "martd", "nchan", ">=", 0.5),
    ("WebSocket fan-out {n}: CPU per delivery ≤ 1.5× SSE's",
     "fanout10k", "server_cpu_us_per_delivery", "martd-ws", "martd", "<=", 1.5),
]  # fmt: skip


def targets(opts: argparse.Namespace, res: Results) -> list[str]:
    lines = []
    for text, case, key, variant, base, op, bound in TARGETS:
        text = label_of(opts, case, text)
        r = paired_ratio(res, case, key, variant, base)
        if r is None:
            lines.append(f"- {text}: not measured")
            continue
        ok = r >= bound if op == ">=" else r <= bound
        lines.append(f"- {text}: {r:.3f} — {'met' if ok else 'NOT met'}")
    cpu = median([r.get("server_cpu_us_per_connect") for r in res.runs.get(("idle", "martd"), [])])
    if cpu is not None:
        lines.append(
            f"- idle {case_n(opts, 'idle'):,}: server CPU per connect ≤ 200 µs: {cpu:.0f} µs — "
            f"{'met' if cpu <= 200 else 'NOT met'}"
        )
    slow = res.runs.get(("slow", "martd"), [])
    if slow:
        worst = max(r.get("push_max_ms", 0) for r in slow)
        forgotten = sum(r.get("stalled_forgotten", 0) for r in slow)
        ok = worst < 1000 and forgotten == 0
        lines.append(
            f"- a slow subscriber never stalls the publisher (slowest push {worst:.0f} ms) "
            f"nor is silently forgotten ({forgotten} stalled subscribers neither cut nor "
            f"caught up): {'met' if ok else 'NOT met'}"
        )
    runs = [r for (c, v), rs in res.runs.items() if v.startswith("martd") for r in rs]
    if runs:
        bad = sum(
            r.get("lost", 0) + r.get("duplicated", 0) + r.get("stalled_forgotten", 0) for r in runs
        )
        lines.append(
            f"- zero lost or duplicated messages (martd, every scenario): "
            f"{'met' if bad == 0 else f'NOT met ({bad})'}"
        )
    return lines


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    python = platform.python_version()
    return f"{os.cpu_count()} × {model}, Linux {platform.release()}, Python {python}"


def versions(opts: argparse.Namespace) -> str:
    code = (
        "import uvicorn, uvloop, httptools;"
        "print(uvicorn.__version__, uvloop.__version__, httptools.__version__)"
    )
    try:
        uv, loop, ht = subprocess.run(
            [opts.python, "-c", code], check=False, capture_output=True, text=True
        ).stdout.split()
        py = f"uvicorn {uv}, uvloop {loop}, httptools {ht}"
    except ValueError:
        py = "uvicorn ?"
    nginx = shutil.which("nginx")
    ng = (
        subprocess.run([nginx, "-v"], check=False, capture_output=True, text=True).stderr.strip()
        if nginx
        else "no nginx"
    )
    nchan = (
        subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-nchan"],
            check=False,
            capture_output=True,
            text=True,
        ).stdout.strip()
        or "?"
    )
    return f"{py}; {ng.replace('nginx version: ', '')}, Nchan {nchan}"


# (what, case, figure, op, bound): the targets of issue 15, Redis ÷ memory backend
REDIS_TARGETS = [
    ("long-poll {n} clients: deliveries / CPU-s ≥ 0.5× the memory backend's",
     "longpoll", "deliveries_per_cpu_s", ">=", 0.5),
    ("throughput {n} subs: deliveries / CPU-s ≥ 0.6× the memory backend's",
     "throughput", "deliveries_per_cpu_s", ">=", 0.6),
    ("idle {n}: CPU per connect ≤ 1.5× the memory backend's",
     "idle", "server_cpu_us_per_connect", "<=", 1.5),
]  # fmt: skip


def redis_targets(opts: argparse.Namespace, res: Results) -> list[str]:
    lines = []
    for text, case, key, op, bound in REDIS_TARGETS:
        text = label_of(opts, case, text)
        r = paired_ratio(res, case, key, "martd-redis", "martd")
        if r is None:
            lines.append(f"- {text}: not measured")
            continue
        ok = r >= bound if op == ">=" else r <= bound
        lines.append(f"- {text}: {r:.3f} — {'met' if ok else 'NOT met'}")
    p50 = median([r.get("p50_ms") for r in res.runs.get(("latency", "martd-redis"), [])])
    if p50 is not None:
        lines.append(
            f"- latency, 1 sub: p50 ≤ 0.4 ms: {p50:.2f} ms — {'met' if p50 <= 0.4 else 'NOT met'}"
        )
    share = median([r.get("b_share_of_a") for r in res.runs.get(("interest", "martd-redis"), [])])
    if share is not None:
        lines.append(
            label_of(
                opts,
                "interest",
                "- {channels} channels, every subscriber on process A, {pushes} pushes: "
                f"B's CPU ≤ 10 % of A's: {share:.1%} — {'met' if share <= 0.1 else 'NOT met'}",
            )
        )
    runs = [r for (c, v), rs in res.runs.items() if v == "martd-redis" for r in rs]
    if runs:
        bad = sum(r.get("lost", 0) + r.get("duplicated", 0) for r in runs)
        lines.append(
            f"- zero lost or duplicated messages (Redis backend, every scenario): "
            f"{'met' if bad == 0 else f'NOT met ({bad})'}"
        )
    return lines


def report(opts: argparse.Namespace, res: Results, started: datetime.datetime, command: str) -> str:
    load = " → ".join(f"{a:.1f}" for a in res.load) or "?"
    out = [
        (
            f"Measured {started:%Y-%m-%d %H:%M} UTC on {res.machine}; "
            f"load average (1 min) {load} from start to end."
        ),
        f"Servers: {res.versions}.",
        (
            f"Command: `{command}` — {'quick sizes, ' if opts.quick else ''}"
            f"{opts.repeat} repeat{'s' if opts.repeat != 1 else ''}, medians."
        ),
        "",
        *table(opts, res),
        "",
        "Targets (issue 8), as ratios martd ÷ Nchan from the same run:",
        "",
        *targets(opts, res),
    ]
    more = redis_targets(opts, res)
    if more:
        out += ["", "Targets (issue 15), the Redis backend (2 workers) ÷ the memory backend:", ""]
        out += more
    notes = [f"- {v}: skipped, {why}" for v, why in res.skipped.items()] + [
        f"- {n}" for n in res.notes + count_notes(res)
    ]
    if notes:
        out += ["", "Notes:", "", *notes]
    return "\n".join(out) + "\n"


def profile_summary(path: Path, top: int = 25) -> str:
    """Self and inclusive time per function (lines merged) of a py-spy raw profile."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    out = [f"{path.name}: {total} samples", "", "self:"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{n / max(1, total):6.1%}  {frame}")
    out += ["", "inclusive:"]
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{n / max(1, total):6.1%}  {frame}")
    return "\n".join(out) + "\n"


def rerender(opts: argparse.Namespace, path: Path) -> str:
    saved = json.loads(path.read_text())
    res = Results(
        skipped=saved.get("skipped", {}),
        notes=saved.get("notes", []),
        load=saved.get("load", []),
        machine=saved.get("machine") or machine(),
        versions=saved.get("versions") or versions(opts),
    )
    for run in saved["runs"]:
        res.runs[(run["case"], run["variant"])] = run["results"]
    opts.quick = saved.get("quick", False)
    opts.repeat = saved.get("repeat") or max(len(rs) for rs in res.runs.values())
    started = datetime.datetime.fromisoformat(saved["started"])
    return report(opts, res, started, saved["command"])
