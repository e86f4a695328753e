"""Limits that protect a process from one client, one channel or one key-holder.

Each check is a dictionary look-up or two, made once per request (never per
delivery). A limit that is reached raises ``TooManyRequests`` whose message
starts with the limit's name, which is also the ``reason`` label it is counted
under in ``/metrics``:

- ``channels``: channels one process stores (memory backend) or has subscribers for,
  whichever is more;
- ``subscribers``: subscribers of one channel in this process (for a channel of a
  namespace, the namespace's ``max_subscribers`` when it sets one);
- ``connections``: open subscriptions from one client address (servers exempt);
- ``rate``: pushes per second by one key-holder on one channel (token bucket,
  keyed by a hash of channel and key, never the key itself), with ``Retry-After``.

The memory held by retained messages is bounded by the memory backend itself
(``MemoryBackend.max_retained_bytes``), which evicts rather than refuses.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import TooManyRequests

if TYPE_CHECKING:
    from .auth import Address, Authority
    from .config import Settings
    from .router import Router

BUCKETS_PRUNE_AT = 10_000


class TokenBuckets:
    """Token buckets by an opaque key: ``rate`` tokens a second, at most ``burst``."""

    __slots__ = ("buckets", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.buckets: dict[bytes, list[float]] = {}

    def take(self, key: bytes, now: float) -> float:
        """Take a token; 0.0 when there was one, else seconds until there is."""
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= BUCKETS_PRUNE_AT:
                self.prune(now)
            self.buckets[key] = [self.burst - 1.0, now]
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def prune(self, now: float) -> None:
        """Forget buckets that have filled up again: they are as good as new."""
        full = self.burst / self.rate
        self.buckets = {k: b for k, b in self.buckets.items() if now - b[1] < full}


class Limits:
    """The per-request limits of one app, and what they refused."""

    def __init__(
        self, settings: Settings, authority: Authority, router: Router, backend: Any = None
    ) -> None:
        # A backend that stores channels in this process tells how many it holds.
        self.stored = backend if hasattr(backend, "channel_count") else None
        self.settings = settings
        self.authority = authority
        self.router = router
        self.by_address: dict[Address, int] = {}
        self.refused_by_namespace: dict[str, int] = {}
        self.pushes = (
            TokenBuckets(settings.push_rate, settings.push_burst) if settings.push_rate else None
        )

    # -- subscriptions

    def admit(
        self,
        scope: Mapping[str, Any],
        headers: Mapping[str, str],
        query: Mapping[str, str],
        channels: Sequence[str],
    ) -> Address | None:
        """Check a new subscription; returns the address to ``release`` when it ends."""
        settings = self.settings
        by_channel = self.router.by_channel
        if settings.max_channels_total:
            stored = self.stored
            new = sum(
                1
                for channel in channels
                if channel not in by_channel and not (stored and stored.holds_channel(channel))
            )
            count = max(len(by_channel), stored.channel_count() if stored else 0)
            if new and count + new > settings.max_channels_total:
                raise TooManyRequests(
                    f"channels: this server has reached its limit of "
                    f"{settings.max_channels_total} channels; try again later",
                    retry_after=5,
                )
        if settings.namespaces:
            self._namespace_caps(channels)
        if settings.max_subscribers:
            for channel in channels:
                if settings.namespaces.of(channel) is not None:
                    continue  # its namespace's cap was checked
                subs = by_channel.get(channel)
                if subs is not None and len(subs) >= settings.max_subscribers:
                    raise TooManyRequests(
                        f"subscribers: channel {channel!r} has reached its limit of "
                        f"{settings.max_subscribers} subscribers",
                        channel=channel,
                        retry_after=5,
                    )
        limit = settings.max_connections_per_address
        if not limit:
            return None
        address = self.authority.address(scope, headers)
        if address is None or self.authority.is_server(scope, headers, query):
            return None
        count = self.by_address.get(address, 0)
        if count >= limit:
            raise TooManyRequests(
                f"connections: at most {limit} open subscriptions from one address",
                retry_after=5,
            )
        self.by_address[address] = count + 1
        return address

    def _namespace_caps(self, channels: Sequence[str]) -> None:
        for channel in channels:
            namespace = self.settings.namespaces.of(channel)
            if namespace is None:
                continue
            cap = namespace.max_subscribers
            if cap is None:
                cap = self.settings.max_subscribers
            subs = self.router.by_channel.get(channel)
            if cap and subs is not None and len(subs) >= cap:
                name = namespace.name
                self.refused_by_namespace[name] = self.refused_by_namespace.get(name, 0) + 1
                raise TooManyRequests(
                    f"subscribers: channel {channel!r} has reached the limit of namespace"
                    f" {name!r}, {cap} subscribers",
                    channel=channel,
                    namespace=name,
                    retry_after=5,
                )

    def release(self, address: Address | None) -> None:
        if address is None:
            return
        count = self.by_address.get(address, 0) - 1
        if count > 0:
            self.by_address[address] = count
        else:
            self.by_address.pop(address, None)

    # -- pushes

    def check_push(self, channel: str, key: str | None) -> None:
        """Rate-limit a key-holder's push (servers are not limited)."""
        if self.pushes is None:
            return
        digest = hashlib.blake2b(
            channel.encode() + b"\0" + (key or "").encode(), digest_size=16
        ).digest()
        wait = self.pushes.take(digest, time.monotonic())
        if wait > 0:
            raise TooManyRequests(
                f"rate: at most {self.settings.push_rate:g} pushes a second with one key;"
                " slow down",
                retry_after=max(1, math.ceil(wait)),
            )


def configure_backend(backend: Any, settings: Settings) -> None:
    """Hand the storage limits to a backend that enforces them (the memory backend)."""
    if hasattr(backend, "max_channels"):
        backend.max_channels = settings.max_channels_total
    if hasattr(backend, "max_retained_bytes"):
        backend.max_retained_bytes = settings.max_retained_bytes
