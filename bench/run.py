#!/usr/bin/env python3
"""Benchmark martd beside Nchan: one command, one markdown table.

    python bench/run.py [--quick] [--scenarios idle fanout10k ...] [--repeat 3]

Starts a fresh server for every measurement (martd under uvicorn, one worker,
uvloop + httptools; Nchan in nginx with bench/nchan.conf, one worker), runs
bench/loadgen.py against it, stops it, and goes on with the other server, so
martd and Nchan alternate and share whatever else the machine is doing.  Each
figure is the median over the repeats; each ratio is the median of the
per-repeat ratios martd / Nchan.  See bench/README.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LOADGEN = BENCH / "loadgen.py"
NCHAN_CONF = BENCH / "nchan.conf"
NCHAN_MODULE_PATHS = [
    Path("/usr/lib/nginx/modules/ngx_nchan_module.so"),
    Path("/usr/share/nginx/modules-available/mod-nchan.conf"),
]
REDIS_URL = "redis://127.0.0.1:6379/15"
INSTALL_HINT = "install them with: apt-get install -y nginx-light libnginx-mod-nchan"


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
]

VARIANT_LABEL = {"martd-ws": "WebSocket", "martd-redis": "Redis backend, 2 workers"}


# -- servers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class ServerFailed(Exception):
    pass


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    tmp: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        # uvicorn --workers leaves its children in the same process group
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_until(server: Server, ready: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerFailed(
                f"{server.name} exited ({server.proc.returncode}):\n{server.log_tail()}"
            )
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise ServerFailed(f"{server.name} not ready within {timeout:.0f} s:\n{server.log_tail()}")


def start_martd(opts: argparse.Namespace, variant: str, logdir: Path) -> Server:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(opts.src), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.setdefault("MARTD_DEMO", "0")
    workers = "1"
    if variant == "martd-redis":
        env["MARTD_BACKEND"] = opts.redis_url
        workers = "2"
    cmd = [
        opts.python,
        "-m",
        "uvicorn",
        opts.martd_app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--workers",
        workers,
        "--backlog",
        "16384",
        "--log-level",
        "warning",
    ]
    log = logdir / f"{variant}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=raise_nofile,
            start_new_session=True,
        )
    server = Server(variant, proc, port, log)
    wait_until(server, lambda: http_get(port, "/healthz")[0] == 200)
    return server


def nchan_module() -> Path:
    for path in NCHAN_MODULE_PATHS:
        if path.suffix == ".so" and path.exists():
            return path
        if path.suffix == ".conf" and path.exists():
            for word in path.read_text().replace(";", " ").split():
                if word.endswith(".so"):
                    module = Path(word) if word.startswith("/") else Path("/usr/share/nginx") / word
                    if module.exists():
                        return module.resolve()
    raise ServerFailed(f"the Nchan module for nginx is not installed; {INSTALL_HINT}")


def nchan_config(port: int, directory: Path, nginx: str) -> str:
    text = NCHAN_CONF.read_text()
    build = subprocess.run([nginx, "-V"], check=False, capture_output=True, text=True).stderr
    for module in ("fastcgi", "uwsgi", "scgi", "proxy"):
        if f"--without-http_{module}_module" in build:
            text = "\n".join(
                line for line in text.splitlines() if f"{module}_temp_path" not in line
            )
    values = {
        "nchan_module": str(nchan_module()),
        "nofile": "20000",
        "connections": "20000",
        "dir": str(directory),
        "port": str(port),
        "backlog": "16384",
    }
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def start_nchan(opts: argparse.Namespace, logdir: Path) -> Server:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        raise ServerFailed(f"nginx is not installed; {INSTALL_HINT}")
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="martd-bench-nchan-"))
    tmp.chmod(0o755)
    conf = tmp / "nginx.conf"
    conf.write_text(nchan_config(port, tmp, nginx))
    log = logdir / "nchan.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=raise_nofile,
            start_new_session=True,
        )
    server = Server("nchan", proc, port, log, tmp)
    wait_until(server, lambda: http_get(port, "/pub/bench-probe")[0] in (200, 404))
    return server


def start(opts: argparse.Namespace, variant: str, logdir: Path) -> Server:
    if variant == "nchan":
        return start_nchan(opts, logdir)
    return start_martd(opts, variant, logdir)


def probe_websocket(port: int) -> str | None:
    """None when martd upgrades GET /sub/{channel}; otherwise why not."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(
            b"GET /sub/bench-probe HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = s.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
    return None if " 101 " in head + " " else f"answered {head!r}"


def redis_reachable(url: str) -> bool:
    rest = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = rest.rpartition("@")[2].partition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=2).close()
        return True
    except OSError:
        return False


# -- running ----------------------------------------------------------------------------


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


def summary(result: dict[str, Any]) -> str:
    keys = [
        "deliveries_per_cpu_s",
        "pushes_per_s",
        "p50_ms",
        "p99_ms",
        "server_pss_kib_per_conn",
        "server_cpu_us_per_connect",
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
    return label.format(n=f"{params.get('n', 1):,}", stalled=params.get("stalled", ""))


CASE_TITLES = {
    "idle": "idle {n}",
    "fanout1k": "fan-out {n}",
    "fanout10k": "fan-out {n}",
    "throughput": "throughput, {n} subs",
    "longpoll": "long-poll {n} clients",
    "slow": "slow subscribers",
    "latency": "latency",
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
    for rows in extra.values():
        lines += rows
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
