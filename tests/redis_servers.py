"""redis-server processes of a test's own (a restartable one, a Cluster, a Sentinel).

Never the machine's shared Redis: these run on free loopback ports in a
temporary directory and are stopped when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from .helpers import require


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(16)


class RedisServer:
    def __init__(self, directory: str, *options: str, config: str | None = None) -> None:
        self.port = free_port()
        self.dir = os.path.join(directory, str(self.port))
        os.makedirs(self.dir)
        head = [] if config is None else [config]
        self.args = [
            "redis-server",
            *head,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            *options,
        ]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                if ping(self.port).startswith(b"+PONG"):
                    return self
            assert self.proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RedisServers:
    """Makes redis-servers in one temporary directory; stops them all at the end."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.servers: list[RedisServer] = []

    def server(self, *options: str, config: str | None = None) -> RedisServer:
        server = RedisServer(self.directory, *options, config=config).start()
        self.servers.append(server)
        return server

    def durable(self) -> RedisServer:
        """Keeps every acknowledged write across its restarts."""
        return self.server("--appendonly", "yes", "--appendfsync", "always")

    def cluster(self, nodes: int = 3) -> list[RedisServer]:
        require("redis", shutil.which("redis-cli") is not None, "no redis-cli binary")
        servers = [
            self.server(
                "--cluster-port",  # not port + 10000, which may be past 65535
                str(free_port()),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--appendonly",
                "no",
            )
            for _ in range(nodes)
        ]
        addresses = [f"127.0.0.1:{s.port}" for s in servers]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=30,
        )
        deadline = time.monotonic() + 10
        for server in servers:
            while (
                b"cluster_state:ok"
                not in subprocess.run(
                    ["redis-cli", "-p", str(server.port), "cluster", "info"],
                    capture_output=True,
                    check=True,
                    timeout=10,
                ).stdout
            ):
                assert time.monotonic() < deadline, "the cluster did not come up"
                time.sleep(0.05)
        return servers

    def sentinel(self, master: RedisServer, name: str) -> RedisServer:
        config = os.path.join(self.directory, f"sentinel-{free_port()}.conf")
        with open(config, "w") as out:
            out.write(f"sentinel monitor {name} 127.0.0.1 {master.port} 1\n")
            out.write(f"sentinel down-after-milliseconds {name} 1000\n")
        return self.server("--sentinel", config=config)


@contextlib.contextmanager
def redis_servers() -> Iterator[RedisServers]:
    require("redis", shutil.which("redis-server") is not None, "no redis-server binary")
    with tempfile.TemporaryDirectory() as directory:
        servers = RedisServers(directory)
        try:
            yield servers
        finally:
            for server in servers.servers:
                server.stop()
