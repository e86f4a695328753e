"""Helpers for tests that run `martd serve` and the `martd` command as real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

MARTD = [sys.executable, "-m", "martd_asgi"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_martd(
    *args: str, input: bytes | None = None, timeout: float = 20, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `martd ARGS...` to its end; stdout and stderr as text."""
    return subprocess.run(
        [*MARTD, *args],
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=os.environ | env,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def _foreground_signals() -> None:
    # A shell starts a foreground command with SIGINT at its default. A test run
    # started in the background by a non-interactive shell ignores SIGINT, and a
    # child inherits that: it would never see the test's Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def martd_process(*args: str) -> Iterator[subprocess.Popen[str]]:
    """`martd ARGS...` running as from a terminal, its output piped; ended with the test."""
    process = subprocess.Popen(
        [*MARTD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=_foreground_signals,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


class Served:
    """A `martd serve` process on a free loopback port."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, log: Path, scheme: str, prefix: str
    ) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.origin = f"{scheme}://127.0.0.1:{port}"
        self.url = f"{self.origin}{prefix}"

    def stderr(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def martd_serve(
    *args: str, tmp: Path, verify: Any = True, port: int | None = None, **env: str
) -> Iterator[Served]:
    port = port or free_port()
    log = tmp / f"serve-{port}-{time.monotonic_ns()}.log"
    environment = os.environ | {"MARTD_LOG_LEVEL": "warning"} | env
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [*MARTD, "serve", "--port", str(port), *args],
            stdout=sink,
            stderr=sink,
            stdin=subprocess.DEVNULL,
            env=environment,
            start_new_session=True,  # its workers, if any, end with it (see below)
        )
    scheme = "https" if "--ssl" in args or "--certfile" in args else "http"
    served = Served(process, port, log, scheme, environment.get("MARTD_PREFIX", "/martd"))
    try:
        _wait_ready(served, verify)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # whatever of its group is left (--workers N: the supervisor's workers)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def _wait_ready(served: Served, verify: Any) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            raise RuntimeError(f"martd serve exited: {served.stderr()}")
        context = verify(served) if callable(verify) else verify
        if context is None:
            time.sleep(0.05)
            continue
        try:
            answer = httpx.get(f"{served.url}/healthz", verify=context, timeout=2)
            if answer.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"martd serve did not start: {served.stderr()}")


def ca_context(path: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=path)
