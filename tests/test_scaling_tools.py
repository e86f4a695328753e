"""bench/costs.py and bench/simulate.py still run, in their tiny modes, on a real redis-server.

They measure CPU (so they share the "timing" worker, see conftest.py); their
figures are not checked here, only that each produces its JSON and that no
message was lost, duplicated or refused on the way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import require
from .opshelpers import run_tool

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(script: str, *args: str) -> dict[str, Any]:
    """Run a tool; on a timeout, stop it and every process it started (its process group)."""
    stdout = run_tool([sys.executable, str(BENCH / script), "--tiny", *args])
    return dict(json.loads(stdout.strip().splitlines()[-1]))


@pytest.mark.timeout(300)
def test_costs_and_simulation_run_and_lose_nothing(tmp_path: Path) -> None:
    require("redis", shutil.which("redis-server") is not None, "no redis-server binary")
    costs = run("costs.py", "--json", str(tmp_path / "costs.json"))
    assert costs["checks"] == {
        **costs["checks"],
        "lost": 0,
        "duplicated": 0,
        "refused": 0,
        "closed": 0,
    }
    figures = costs["figures"]
    for name in (
        "martd_cpu_per_push_taken_us",
        "redis_cpu_per_push_us",
        "martd_bytes_per_connection",
    ):
        assert figures[name] > 0, name
    assert json.loads((tmp_path / "costs.json").read_text())["figures"] == figures

    sim = run("simulate.py", "--costs", str(tmp_path / "costs.json"))
    checks = sim["checks"]
    assert checks["expected_deliveries"] > 0
    assert checks == {**checks, "lost": 0, "duplicated": 0, "refused": 0, "closed": 0}
    assert [w["rate"] for w in sim["windows"]] == [50.0, 0.0]  # a fixed rate, then a burst
    for window in sim["windows"]:
        rows = window["processes"]
        assert sum(row["pushes taken"] for row in rows) == window["pushes"]
        assert all(row["cpu measured s"] >= 0 and row["cpu predicted s"] > 0 for row in rows)

    model = subprocess.run(
        [sys.executable, str(BENCH / "capacity.py"), str(tmp_path / "costs.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert model.returncode == 0, model.stderr
    assert "base: 1 subscriber per channel" in model.stdout
