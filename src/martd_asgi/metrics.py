"""``/metrics``: Prometheus text format from counters the app keeps anyway.

The delivery path only bumps plain integers (per message, never per
subscriber); this module turns them into Prometheus metrics when scraped.
Each app has a ``CollectorRegistry`` of its own, so two apps in one process
never share state. Under ``uvicorn --workers N`` set ``PROMETHEUS_MULTIPROC_DIR``
to an empty directory: every worker then copies its counters into
prometheus_client's shared files once a second, and a scrape of any worker
answers for all of them.

Labels are bounded sets chosen by the code (a transport, a status and the
field an error names, a configured namespace, an auth hook outcome), never a
channel name, key, cookie or address.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from .channels import Message
from .errors import MartdError

if TYPE_CHECKING:
    from .authhook import AuthHook
    from .backends.base import Backend
    from .config import Settings
    from .hub import Hub
    from .limits import Limits


class Observed(Protocol):
    """What the metrics read of the app (``MartdApp`` is the one implementation)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def backend(self) -> Backend: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def hook(self) -> AuthHook | None: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def counters(self) -> dict[str, int]: ...


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
TRANSPORTS = ("sse", "longpoll", "jsonp", "websocket")
_REASON = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
SYNC_INTERVAL = 1.0


def reason(error: MartdError) -> str:
    """The field an error names: the start of its message, up to the colon."""
    head = error.message.partition(":")[0]
    return head.lower() if _REASON.fullmatch(head) else "other"


class Metrics:
    """The app's metrics: plain counters on the hot path, Prometheus on scrape."""

    def __init__(self, app: Observed) -> None:
        self.app = app
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        self.delivered_bytes = 0
        self.latency_sum = 0.0  # seconds, over every fan-out: the dashboard's mean by interval
        self.latency_count = 0
        self.rejected: dict[tuple[str, str], int] = {}
        self._synced: dict[Any, float] = {}
        self._task: asyncio.Task[None] | None = None
        r = self.registry
        ProcessCollector(registry=r)  # memory, CPU and open files of this process
        self.latency = Histogram(
            "martd_delivery_latency_seconds",
            "Time from a push being stored to the end of its fan-out to local subscribers",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.connections = Gauge(
            "martd_connections",
            "Open subscriptions by transport",
            ["transport"],
            registry=r,
            multiprocess_mode="livesum",
        )
        # Workers on a shared backend (Redis) each count all of its channels: take
        # that count once, not once per worker.
        shared = bool(getattr(app.backend, "shared", False))
        self.channels = Gauge(
            "martd_channels",
            "Channels the backend stores (memory backend: this process)",
            registry=r,
            multiprocess_mode="livemax" if shared else "livesum",
        )
        self.subscribed = Gauge(
            "martd_subscribed_channels",
            "Channels with subscribers in this process",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.retained = Gauge(
            "martd_retained_bytes",
            "Memory backend: bytes held by retained messages",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.counters: dict[str, Counter] = {
            "connections_total": Counter(
                "martd_subscriptions_opened", "Subscriptions opened", registry=r
            ),
            "published": Counter("martd_messages_pushed", "Messages pushed", registry=r),
            "delivered": Counter(
                "martd_messages_delivered", "Messages handed to subscribers", registry=r
            ),
            "published_bytes": Counter("martd_pushed_bytes", "Payload bytes pushed", registry=r),
            "delivered_bytes": Counter(
                "martd_delivered_bytes", "Payload bytes handed to subscribers", registry=r
            ),
            "dropped_slow": Counter(
                "martd_slow_consumer_drops",
                "Subscribers disconnected because their connection did not drain",
                registry=r,
            ),
            "evicted": Counter(
                "martd_evicted_messages",
                "Memory backend: retained messages dropped to stay under MARTD_MAX_RETAINED_BYTES",
                registry=r,
            ),
            "redis_notifications": Counter(
                "martd_redis_notifications",
                "Redis backend: notifications received (pushes to channels with subscribers here)",
                registry=r,
            ),
            "presence_events": Counter(
                "martd_presence_events", "Join and leave events told to subscribers", registry=r
            ),
            "presence_frames": Counter(
                "martd_presence_frames",
                "Frames that carried join and leave events to subscribers",
                registry=r,
            ),
            "presence_joins_untold": Counter(
                "martd_presence_joins_untold",
                "Joins not told because their channel spent its presence budget",
                registry=r,
            ),
        }
        self.rejects = Counter(
            "martd_rejected_requests",
            "Requests answered with an error, by status and the field the error names",
            ["status", "reason"],
            registry=r,
        )
        self.namespace_channels = Gauge(
            "martd_namespace_channels",
            "Channels of a namespace this process stores or has subscribers for",
            ["namespace"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.namespace_subscribers = Gauge(
            "martd_namespace_subscribers",
            "Subscriptions to a namespace's channels in this process",
            ["namespace"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.namespace_refused = Counter(
            "martd_namespace_refused",
            "Subscriptions refused (429) because a channel reached its namespace's max_subscribers",
            ["namespace"],
            registry=r,
        )
        self.hook_outcomes = Counter(
            "martd_auth_hook",
            "Auth hook answers by outcome: asked (requests sent), granted, refused (401/403),"
            " failed (503), cached (answered from the cache), joined (shared a request in flight)",
            ["outcome"],
            registry=r,
        )
        app.hub.on_deliver = self.on_deliver

    # -- hot path: once per message and once per refused request

    def on_deliver(self, msg: Message, subscribers: int) -> None:
        self.delivered_bytes += msg.size * subscribers
        # An etag starts with the wall-clock millisecond at which the push was stored.
        latency = max(0.0, time.time() - msg.key[0] / 1000)
        self.latency.observe(latency)
        self.latency_sum += latency
        self.latency_count += 1

    def refused(self, error: MartdError) -> None:
        label = (str(error.status), reason(error))
        self.rejected[label] = self.rejected.get(label, 0) + 1

    # -- scrape

    def start(self) -> None:
        """Under multiprocess mode, publish this worker's counters once a second."""
        if self.multiprocess and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            with contextlib.suppress(Exception):
                self.sync(await self.app.backend.stats())

    def sync(self, backend: dict[str, Any]) -> None:
        """Copy the app's counters into the Prometheus metrics."""
        app = self.app
        values: dict[str, float] = {
            **{k: v for k, v in app.hub.counters.items() if isinstance(v, int)},
            "published": app.counters.get("published", 0),
            "published_bytes": app.counters.get("published_bytes", 0),
            "delivered_bytes": self.delivered_bytes,
            "evicted": backend.get("evicted", 0),
            "redis_notifications": backend.get("redis_notifications", 0),
        }
        for name, counter in self.counters.items():
            self._advance(counter, name, values.get(name, 0))
        for (status, why), count in self.rejected.items():
            self._advance(self.rejects.labels(status, why), (status, why), count)
        by_transport = app.hub.by_transport()
        for transport in {*TRANSPORTS, *by_transport}:
            self.connections.labels(transport).set(by_transport.get(transport, 0))
        self.subscribed.set(len(app.hub.by_channel))
        if "channels" in backend:
            self.channels.set(backend["channels"])
        if "retained_bytes" in backend:
            self.retained.set(backend["retained_bytes"])
        self._sync_namespaces()
        hook = app.hook
        if hook is not None:
            for outcome, count in {**hook.counters, "failed": hook.failed}.items():
                self._advance(self.hook_outcomes.labels(outcome), ("hook", outcome), count)

    def _sync_namespaces(self) -> None:
        for name, found in self.namespace_counts().items():
            self.namespace_channels.labels(name).set(found["channels"])
            self.namespace_subscribers.labels(name).set(found["subscribers"])
            key = ("namespace", name)
            self._advance(self.namespace_refused.labels(name), key, found["refused"])

    def namespace_counts(self) -> dict[str, dict[str, int]]:
        """Per namespace: channels, subscribers and refused subscriptions in this process."""
        app = self.app
        if not app.settings.namespaces:
            return {}
        names = getattr(app.backend, "channel_names", None)
        counts = app.settings.namespaces.counts(app.hub.by_channel, names() if names else ())
        for name, found in counts.items():
            found["refused"] = app.limits.refused_by_namespace.get(name, 0)
        return counts

    def namespaces_and_hook(self) -> dict[str, Any]:
        """The ``namespaces`` and ``auth_hook`` parts of ``/stats``, when configured."""
        extra: dict[str, Any] = {}
        if self.app.settings.namespaces:
            extra["namespaces"] = self.namespace_counts()
        hook = self.app.hook
        if hook is not None:
            extra["auth_hook"] = {**hook.counters, "failed": hook.failed}
        return extra

    def _advance(self, counter: Any, key: Any, value: float) -> None:
        delta = value - self._synced.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            self._synced[key] = value

    async def render(self) -> tuple[bytes, bytes]:
        """The exposition body and its content type."""
        self.sync(await self.app.backend.stats())
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST.encode()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST.encode()
