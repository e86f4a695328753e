"""bench/floor_app.py still speaks what the bench's load generator checks.

The floor app is the bench's measuring stick for what uvicorn costs with no
martd on top (`python bench/run.py --martd-app bench.floor_app:app`). This runs
the bench's runner on it, in its quick sizes, under real uvicorn on loopback:
every pushed message must reach the SSE subscriber, the long-pollers and the
WebSocket subscriber, none twice, none refused. Its figures are not checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .opshelpers import run_tool

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_run(tmp_path: Path, *args: str) -> dict[str, Any]:
    """bench/run.py on the floor app; on a timeout, stop it and every server it started."""
    out = tmp_path / "run.json"
    cmd = [sys.executable, str(BENCH / "run.py"), "--quick", "--martd-app", "bench.floor_app:app"]
    run_tool([*cmd, "--json", str(out), *args])
    return dict(json.loads(out.read_text()))


@pytest.mark.timeout(150)
@pytest.mark.parametrize("protocols", ["martd", "stock"])
def test_floor_app_delivers_what_the_bench_checks(tmp_path: Path, protocols: str) -> None:
    extra = ["--stock-protocols"] if protocols == "stock" else []
    saved = bench_run(
        tmp_path,
        "--scenarios",
        "longpoll",
        "latency",
        "--variants",
        "martd",
        "martd-ws",
        *extra,
    )
    assert saved["notes"] == [] and saved["skipped"] == {}
    runs = {(r["case"], r["variant"]): r["results"][0] for r in saved["runs"]}
    assert set(runs) == {("longpoll", "martd"), ("latency", "martd"), ("latency", "martd-ws")}
    for (case, variant), result in runs.items():
        where = f"{case} {variant}: {result}"
        assert result["errors"] == [], where
        assert (result["lost"], result["duplicated"]) == (0, 0), where
        assert result["refused_by_server"] == result["pushes_refused"] == 0, where
        assert result["closed_by_server"] == 0, where
    longpoll = runs[("longpoll", "martd")]
    assert longpoll["registered_before_push"] == longpoll["clients"] > 0
    assert longpoll["deliveries"] == longpoll["clients"] * longpoll["pushes"]
    assert longpoll["polls"] >= longpoll["deliveries"]
    for variant in ("martd", "martd-ws"):
        latency = runs[("latency", variant)]
        assert latency["p50_ms"] == latency["p50_ms"]  # a number: every push arrived
