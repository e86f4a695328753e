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
  an address that forwarded headers cannot settle counts as the peer's;
- ``channels`` (also): channels one client address is subscribed to;
- ``rate``: pushes per second by one key-holder on one channel (token bucket,
  keyed by a hash of channel and key, never the key itself), with ``Retry-After``;
- ``key``: wrong keys tried by one address on one channel (token bucket), with
  ``Retry-After``.

The memory held by retained messages is bounded by the memory backend itself
(``MemoryBackend.max_retained_bytes``), which evicts rather than refuses.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import Forbidden, TooManyRequests

if TYPE_CHECKING:
    from .auth import Address, Authority
    from .config import Settings
    from .hub import Hub

BUCKETS_PRUNE_AT = 10_000
# Counted against when a request carries no peer address at all (not over TCP).
UNKNOWN = ipaddress.ip_address("0.0.0.0")
# Wrong keys one address may try on one channel: this many at once, then one
# every 1 / KEY_FAILURE_RATE seconds.
KEY_FAILURE_BURST = 10
KEY_FAILURE_RATE = 0.5


class Admission:
    """An admitted subscription: what ``Limits.release`` gives back when it ends."""

    __slots__ = ("address", "channels")

    def __init__(self, address: Address, channels: Sequence[str]) -> None:
        self.address = address
        self.channels = channels


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

    def wait(self, key: bytes, now: float) -> float:
        """Seconds until ``key`` has a token (0.0: it has one), taking none."""
        bucket = self.buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def prune(self, now: float) -> None:
        """Forget buckets that have filled up again: they are as good as new."""
        full = self.burst / self.rate
        self.buckets = {k: b for k, b in self.buckets.items() if now - b[1] < full}


class Limits:
    """The per-request limits of one app, and what they refused."""

    def __init__(
        self, settings: Settings, authority: Authority, hub: Hub, backend: Any = None
    ) -> None:
        # A backend that stores channels in this process tells how many it holds.
        self.stored = backend if hasattr(backend, "channel_count") else None
        self.settings = settings
        self.authority = authority
        self.hub = hub
        self.by_address: dict[Address, int] = {}
        self.refused_by_namespace: dict[str, int] = {}
        # channel -> open subscriptions naming it, per address
        self.channels_by_address: dict[Address, dict[str, int]] = {}
        self.pushes = (
            TokenBuckets(settings.push_rate, settings.push_burst) if settings.push_rate else None
        )
        self.key_failures = TokenBuckets(KEY_FAILURE_RATE, KEY_FAILURE_BURST)

    # -- subscriptions

    def counted_address(self, scope: Mapping[str, Any], headers: Mapping[str, str]) -> Address:
        """The address a request counts against: the client's, or the peer's when
        forwarded headers cannot settle it (a client cannot slip by uncounted)."""
        address = self.authority.address(scope, headers)
        if address is not None:
            return address
        peer = scope.get("client")
        try:
            return ipaddress.ip_address(peer[0]) if peer else UNKNOWN
        except ValueError:
            return UNKNOWN

    def admit(
        self,
        scope: Mapping[str, Any],
        headers: Mapping[str, str],
        query: Mapping[str, str],
        channels: Sequence[str],
    ) -> Admission | None:
        """Check a new subscription; returns what to ``release`` when it ends."""
        settings = self.settings
        by_channel = self.hub.by_channel
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
        channel_limit = settings.max_channels_per_address
        if not (limit or channel_limit) or self.authority.is_server(scope, headers, query):
            return None
        address = self.counted_address(scope, headers)
        count = self.by_address.get(address, 0)
        if limit and count >= limit:
            raise TooManyRequests(
                f"connections: at most {limit} open subscriptions from one address",
                retry_after=5,
            )
        held = self.channels_by_address.get(address)
        if channel_limit:
            new = sum(1 for channel in channels if not held or channel not in held)
            if new and (len(held) if held else 0) + new > channel_limit:
                raise TooManyRequests(
                    f"channels: at most {channel_limit} channels subscribed from one address",
                    retry_after=5,
                )
        self.by_address[address] = count + 1
        if held is None:
            held = self.channels_by_address[address] = {}
        for channel in channels:
            held[channel] = held.get(channel, 0) + 1
        return Admission(address, channels)

    def _namespace_caps(self, channels: Sequence[str]) -> None:
        for channel in channels:
            namespace = self.settings.namespaces.of(channel)
            if namespace is None:
                continue
            cap = namespace.max_subscribers
            if cap is None:
                cap = self.settings.max_subscribers
            subs = self.hub.by_channel.get(channel)
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

    def release(self, admission: Admission | None) -> None:
        if admission is None:
            return
        address = admission.address
        count = self.by_address.get(address, 0) - 1
        if count > 0:
            self.by_address[address] = count
        else:
            self.by_address.pop(address, None)
        held = self.channels_by_address.get(address)
        if held is None:
            return
        for channel in admission.channels:
            left = held.get(channel, 0) - 1
            if left > 0:
                held[channel] = left
            else:
                held.pop(channel, None)
        if not held:
            del self.channels_by_address[address]

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


    @contextlib.contextmanager
    def key_attempt(
        self, scope: Mapping[str, Any], headers: Mapping[str, str], channel: str, server: bool
    ) -> Iterator[None]:
        """Around a push that the channel's key decides: an address that got the key
        wrong too often on this channel is refused (429) before its key is checked."""
        if server:
            yield
            return
        address = self.counted_address(scope, headers)
        digest = hashlib.blake2b(
            address.packed + b"\0" + channel.encode(), digest_size=16
        ).digest()
        now = time.monotonic()
        wait = self.key_failures.wait(digest, now)
        if wait > 0:
            raise TooManyRequests(
                "key: too many wrong keys for this channel from one address; slow down",
                retry_after=max(1, math.ceil(wait)),
            )
        try:
            yield
        except Forbidden as error:
            if error.extra.get("field") == "key":
                self.key_failures.take(digest, now)
            raise


def configure_backend(backend: Any, settings: Settings) -> None:
    """Hand the storage limits to a backend that enforces them (the memory backend)."""
    if hasattr(backend, "max_channels"):
        backend.max_channels = settings.max_channels_total
    if hasattr(backend, "max_retained_bytes"):
        backend.max_retained_bytes = settings.max_retained_bytes
