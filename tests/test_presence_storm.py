"""A reconnect storm on a presence channel: 2,000 subscribers, bounded events and memory.

The server is a real ``martd serve`` process (so its memory can be read); the
subscribers are raw asyncio sockets that count the join/leave events they get.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from .serving import free_port, martd_serve

pytestmark = pytest.mark.anyio

CROWD = 2000
RATE = 5_000  # MARTD_PRESENCE_RATE: frames a second per channel (the default)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Crowd:
    """CROWD subscribers with fixed cids that reconnect whenever their stream ends."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.told = 0  # join/leave events received, all subscribers together
        self.open: set[int] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.gate = asyncio.Semaphore(100)  # connections being opened at once

    def start(self) -> None:
        self.tasks = [asyncio.ensure_future(self.member(i)) for i in range(CROWD)]

    async def member(self, i: int) -> None:
        request = (
            f"GET /martd/sub/crowd?cid=c{i} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        while True:
            try:
                async with self.gate:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(request)
                    first = await reader.readuntil(b"retry:")
                    assert b" 200 " in first.split(b"\r\n", 1)[0], first
                self.writers[i] = writer
                self.open.add(i)
                rest = b""
                while chunk := await reader.read(65536):
                    *events, rest = (rest + chunk).split(b"\n\n")
                    self.told += sum(1 for e in events if b"event: martd" in e)
            except (OSError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.05)
            finally:
                self.open.discard(i)
                writer = self.writers.pop(i, None)
                if writer is not None:
                    writer.close()

    def drop_all(self) -> None:
        """Every subscriber closes its connection (and reconnects at once)."""
        for writer in list(self.writers.values()):
            writer.transport.abort()

    async def all_open(self, timeout: float = 60) -> float:
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            while len(self.open) < CROWD:
                await asyncio.sleep(0.02)
        return time.monotonic() - started

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def listed(url: str) -> int:
    async with httpx.AsyncClient(timeout=20) as client:
        answer = await client.get(f"{url}/pub/crowd", params={"presence": "1"})
        return len(answer.json()["clients"])


async def settle(url: str, crowd: Crowd) -> None:
    """Wait until the server lists everyone and the events stopped coming."""
    async with asyncio.timeout(60):
        while await listed(url) < CROWD:
            await asyncio.sleep(0.1)
        told = -1
        while told != crowd.told:
            told = crowd.told
            await asyncio.sleep(0.3)


async def test_presence_reconnect_storm_is_bounded(tmp_path: Path) -> None:
    port = free_port()
    env = {"MARTD_HOLD": "30", "MARTD_PRESENCE_RATE": str(RATE)}
    crowd = Crowd(port)
    figures: dict[str, float] = {}
    with martd_serve(tmp=tmp_path, port=port, **env) as first:
        async with httpx.AsyncClient(timeout=10) as client:
            made = await client.post(f"{first.url}/pub/crowd", params={"presence": "1"})
            assert made.status_code == 201
        base = rss_kib(first.process.pid)
        crowd.start()
        try:
            took = await crowd.all_open()
            await settle(first.url, crowd)
            figures["arrive_s"] = took
            figures["arrive_told"] = crowd.told
            figures["rss_crowd_kib"] = rss_kib(first.process.pid) - base
            figures["rss_first_kib"] = rss_kib(first.process.pid)

            # everyone reconnects to the same process within the hold: nothing is told
            crowd.told = 0
            crowd.drop_all()
            await asyncio.sleep(0.2)
            await crowd.all_open()
            await settle(first.url, crowd)
            assert crowd.told == 0

            # a deploy: the process is replaced and everyone reconnects to a new one that
            # has never seen them, so every reconnect is a join
            first.process.terminate()
            first.process.wait(timeout=10)
            with martd_serve(tmp=tmp_path, port=port, **env) as second:
                async with httpx.AsyncClient(timeout=10) as client:
                    await client.post(f"{second.url}/pub/crowd", params={"presence": "1"})
                crowd.told = 0
                started = time.monotonic()
                await crowd.all_open()
                await settle(second.url, crowd)
                storm = time.monotonic() - started
                figures["storm_s"] = storm
                figures["storm_told"] = crowd.told
                figures["rss_after_storm_kib"] = rss_kib(second.process.pid)
                async with httpx.AsyncClient(timeout=10) as client:
                    stats = (await client.get(f"{second.url}/stats")).json()
                figures["storm_events"] = stats["presence_events"]
                figures["storm_untold"] = stats["presence_joins_untold"]
        finally:
            await crowd.stop()
    print("presence storm:", {k: round(v, 2) for k, v in figures.items()})
    naive = CROWD * (CROWD - 1)  # every join told to every other subscriber
    # Each channel spends at most RATE frames a second (and a bucket of as many).
    assert figures["storm_told"] <= RATE * (figures["storm_s"] + 1)
    assert figures["storm_told"] < naive / 20
    assert figures["storm_untold"] > 0
    # After the storm the new process holds the same crowd as the first one did, not a
    # backlog of events.
    assert figures["rss_after_storm_kib"] < 1.25 * figures["rss_first_kib"], figures
