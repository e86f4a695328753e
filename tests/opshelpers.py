"""Helpers for the operations tests: /metrics, a uvicorn subprocess, percentiles."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

# the protocols and WebSocket options `martd serve` pins, as uvicorn options
MARTD_SERVE = (
    "--http", "martd_asgi.protocols:HTTPProtocol",
    "--ws", "martd_asgi.protocols:WebSocketProtocol",
    "--ws-per-message-deflate", "false",
)  # fmt: skip


def run_tool(command: list[str], timeout: float = 120) -> str:
    """Run a bench tool to its end and return its output; it must exit 0. On a
    timeout it is stopped with every process it started (its process group)."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class UvicornProcess:
    """``uvicorn martd_asgi:app`` in a subprocess, configured by environment."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.env = {**os.environ, **env}
        self.args = args
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open while the server runs
        self.final = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> UvicornProcess:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [
            sys.executable, "-m", "uvicorn", "martd_asgi:app",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
            *self.args,
        ]  # fmt: skip
        # A session of its own: stop() ends the whole group, workers included.
        self.proc = subprocess.Popen(
            command, env=self.env, stdout=self.log, stderr=self.log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start: {self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        if self.log.closed:
            return self.final
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            # uvicorn --workers N: killing the supervisor alone would orphan its workers
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.final = self.output()
        self.log.close()


@contextlib.contextmanager
def uvicorn_process(env: dict[str, str], *args: str) -> Iterator[UvicornProcess]:
    server = UvicornProcess(env, *args).start()
    try:
        yield server
    finally:
        server.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
