"""Server control for bench/run.py: martd under uvicorn and Nchan in nginx, one at a time.

Each server starts on a free loopback port in a session of its own (so stopping
it stops uvicorn's workers and nginx's worker too), with the soft RLIMIT_NOFILE
raised to the hard limit, and is ready once it answers over HTTP.  The runner
never touches the system nginx: it fills in bench/nchan.conf in a temporary
directory and runs nginx with `-c FILE -p DIR -g 'daemon off;'`.
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
NCHAN_CONF = BENCH / "nchan.conf"
NCHAN_MODULE_PATHS = [
    Path("/usr/lib/nginx/modules/ngx_nchan_module.so"),
    Path("/usr/share/nginx/modules-available/mod-nchan.conf"),
]
REDIS_URL = "redis://127.0.0.1:6379/15"
INSTALL_HINT = "install them with: apt-get install -y nginx-light libnginx-mod-nchan"


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
        # the protocols `martd serve` pins (httptools and websockets-sansio underneath)
        "--http",
        "martd_asgi.protocols:HTTPProtocol",
        "--ws",
        "martd_asgi.protocols:WebSocketProtocol",
        "--ws-per-message-deflate",
        "false",
        "--no-proxy-headers",  # martd reads X-Forwarded-For itself (MARTD_TRUSTED_PROXIES)
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
