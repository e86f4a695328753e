"""``/dashboard``: a live picture of this process, for people who would rather
watch a running server than read ``/stats``.

The page (``js/dashboard.html``: plain HTML whose charts are a few lines of
canvas code, no build step, no dependency) reads ``/dashboard/events``, a
Server-Sent Events stream on which martd sends a snapshot every ``interval``
seconds. Rates are the difference between two snapshots of the same stream, so
viewers never disturb each other or the counters ``/metrics`` reads. Both
routes need server rights, like ``/stats``; ``MARTD_DASHBOARD=0`` turns them off.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import anyio

from . import __version__
from .errors import BadRequest
from .transports.common import NO_CACHE, Request
from .types import Receive, Send

if TYPE_CHECKING:
    from .application import MartdApp

INTERVAL = 1.0  # seconds between snapshots, unless the page asks for another
MIN_INTERVAL, MAX_INTERVAL = 0.2, 10.0
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), *NO_CACHE]


def resident_bytes() -> int:
    """This process's resident memory (its peak where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * 1024


class Sampler:
    """Snapshots of one app; each one's rates are since the previous one."""

    def __init__(self, app: MartdApp) -> None:
        self.app = app
        self.last: tuple[float, int, int, float, int] | None = None

    async def sample(self) -> dict[str, Any]:
        app = self.app
        now = time.monotonic()
        backend = await app.backend.stats()
        metrics = app.metrics
        published = app.counters["published"]
        delivered = app.hub.counters["delivered"]
        latency = (metrics.latency_sum, metrics.latency_count)
        rates = {"pushes": 0.0, "deliveries": 0.0}
        mean_ms: float | None = None
        if self.last is not None:
            then, pushed_then, delivered_then, latency_sum, latency_count = self.last
            elapsed = max(now - then, 1e-6)
            rates["pushes"] = (published - pushed_then) / elapsed
            rates["deliveries"] = (delivered - delivered_then) / elapsed
            if latency[1] > latency_count:
                mean_ms = 1000 * (latency[0] - latency_sum) / (latency[1] - latency_count)
        self.last = (now, published, delivered, *latency)
        connections = app.hub.by_transport()
        return {
            "time": time.time(),
            "uptime": round(time.time() - app.started_at, 1),
            "version": __version__,
            "backend": backend.get("backend", app.backend.name),
            "connections": sum(connections.values()),
            "transports": connections,
            "channels": backend.get("channels", 0),
            "subscribed_channels": len(app.hub.by_channel),
            "pushes_per_second": round(rates["pushes"], 2),
            "deliveries_per_second": round(rates["deliveries"], 2),
            "latency_ms": None if mean_ms is None else round(mean_ms, 2),
            "published": published,
            "delivered": delivered,
            "slow_cuts": app.hub.counters["dropped_slow"],
            "memory_bytes": resident_bytes(),
            "retained_bytes": backend.get("retained_bytes"),
        }


def parse_interval(query: dict[str, str]) -> float:
    raw = query.get("interval")
    if raw is None:
        return INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise BadRequest(
            f"interval: seconds between snapshots, from {MIN_INTERVAL:g} to {MAX_INTERVAL:g}"
        )
    return value


async def events(app: MartdApp, request: Request, receive: Receive, send: Send) -> None:
    """The snapshot stream, until the viewer leaves or martd shuts down."""
    app.require_server(request)
    interval = parse_interval(request.query)
    sampler = Sampler(app)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
    async with anyio.create_task_group() as group:

        async def until_gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(until_gone)
        while not app.closing:
            frame = json.dumps(await sampler.sample(), separators=(",", ":"))
            chunk = f"data: {frame}\n\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            due = time.monotonic() + interval
            while not app.closing and time.monotonic() < due:
                await anyio.sleep(min(0.25, interval))
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        group.cancel_scope.cancel()
