"""Memory comes back: with the collector tuned, martd still collects cycles and trims the heap."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from martd_asgi.housekeeping import Housekeeper

# martd as the server's app (it gets the lifespan, so it tunes the collector),
# with garbage that only a full collection frees: a cycle that became garbage
# after it was promoted to the oldest generation, as a connection's objects are.
PROGRAM = """
import asyncio, gc, weakref, martd_asgi
app = martd_asgi.create_app(gc_tune=True, gc_interval={interval})
class Node: pass
async def main():
    msgs = asyncio.Queue()
    await msgs.put({{'type': 'lifespan.startup'}})
    sent = asyncio.Queue()
    async def send(m): await sent.put(m)
    life = asyncio.ensure_future(app({{'type': 'lifespan'}}, msgs.get, send))
    assert (await sent.get())['type'] == 'lifespan.startup.complete'
    node = Node(); node.me = node
    ref = weakref.ref(node)
    gc.collect(1); gc.collect(1)  # promoted: only a full collection looks at it now
    del node
    for _ in range(200):  # plenty of allocations, but not a full collection's worth
        [[] for _ in range(1000)]
        await asyncio.sleep(0.005)
    print('collected' if ref() is None else 'kept', app.housekeeper.sweeps > 0)
    await msgs.put({{'type': 'lifespan.shutdown'}})
    await life
    print('stopped', app.housekeeper._timer is None)
asyncio.run(main())
"""


@pytest.mark.parametrize(("interval", "expect"), [(0.2, "collected True"), (0, "kept False")])
def test_housekeeping_collects_cycles_the_tuned_collector_would_keep(
    interval: float, expect: str
) -> None:
    env = {**os.environ, "MARTD_GC_TUNE": "1"}
    code = PROGRAM.format(interval=interval)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [expect, "stopped True"]


def test_housekeeping_sweep_returns_free_heap_to_the_system() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("malloc_trim is glibc's")
    keeper = Housekeeper(60)
    if keeper._trim is None:
        pytest.skip("not glibc")

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    # Many mid-sized blocks (malloc'd, not Python's small-object arenas), then
    # free all but every 50th: the holes are free, yet stay resident until trimmed.
    blocks = [bytearray(4000) for _ in range(50_000)]
    keep = blocks[::50]
    del blocks
    before = rss()
    keeper.sweep()
    after = rss()
    assert keep and before - after > 50_000, (before, after)  # KiB: most of ~190 MiB freed


@pytest.mark.anyio
async def test_websocket_upgrade_leaves_no_http_protocol_for_the_collector() -> None:
    """After an upgrade uvicorn's HTTP protocol object would wait, in a reference
    cycle with its parser, for a full collection (rare when martd tunes the
    collector); martd's HTTP protocol lets go of it at once."""
    import gc

    from websockets.asyncio.client import connect

    from martd_asgi import create_app
    from martd_asgi.protocols import HTTP, WEBSOCKET, HTTPProtocol

    from .helpers import running

    def left() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is HTTPProtocol)

    with running(create_app(), http=HTTP, ws=WEBSOCKET) as server:
        url = server.url.replace("http://", "ws://")
        gc.collect()
        gc.disable()  # only reference counting frees anything now
        try:
            for n in range(30):
                async with connect(f"{url}/sub/churn{n}", compression=None) as ws:
                    await ws.send(json.dumps({"type": "ping"}))
                    await ws.recv()
            async with asyncio.timeout(5):
                while left() > 0:  # the server's thread finishes each close
                    await asyncio.sleep(0.02)
        finally:
            gc.enable()
