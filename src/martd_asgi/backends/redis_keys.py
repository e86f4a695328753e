"""The names of the keys the Redis backend writes (the key table of docs/scaling.md).

A channel's keys share the hash tag ``{NAME}``, so a whole channel is in one
Redis Cluster slot. Beside them there is one more key, the id clock: the
newest stream id given out, which every push reads and advances so that ids
only grow, across a channel's drop and re-creation, a restart of martd, and a
Redis clock that steps back. It outlives every channel and is the only key
that does: one in a single Redis, one per slot that has seen a push on a Redis
Cluster (a script may only touch keys of one slot).
"""

from __future__ import annotations

import functools
from binascii import crc_hqx

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


class KeyNames:
    def __init__(self, prefix: str, *, cluster: bool) -> None:
        self.prefix = prefix
        # A prefix with a hash tag of its own puts every key in one slot already.
        self._per_slot = cluster and key_slot(f"{prefix}:{{a}}".encode()) != key_slot(
            f"{prefix}:{{b}}".encode()
        )
        if self._per_slot:
            slot_tags()  # a third of a second, once: at start rather than on a push

    def channel(self, name: str) -> list[str]:
        """h s clock n o: every key a push may touch (PUBLISH's KEYS)."""
        base = f"{self.prefix}:{{{name}}}:"
        return [base + "h", base + "s", self.clock(base + "h"), base + "n", base + "o"]

    def gone(self, name: str) -> str:
        """The newest etag of a deleted channel, for processes that did not hear of it."""
        return f"{self.prefix}:{{{name}}}:g"

    def events(self, name: str) -> str:
        """The channel's pub/sub channel: its pushes and control events, for the
        processes that have subscribers on it (not a key; in the channel's slot)."""
        return f"{self.prefix}:{{{name}}}:e"

    def idempotency(self, name: str) -> list[str]:
        """i ix: the answers to pushes that gave an Idempotency-Key, and when each expires."""
        base = f"{self.prefix}:{{{name}}}:"
        return [base + "i", base + "ix"]

    def clock(self, key: str) -> str:
        """The id clock of the slot ``key`` is in."""
        if not self._per_slot:
            return f"{self.prefix}:clock"
        return f"{self.prefix}:{{{slot_tags()[key_slot(key.encode())]}}}:clock"


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """For each cluster slot, the first hex number whose hash tag lands in it."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    left, n = REDIS_CLUSTER_HASH_SLOTS, 0
    while left:
        tag = format(n, "x")
        slot = crc_hqx(tag.encode(), 0) % REDIS_CLUSTER_HASH_SLOTS
        if tags[slot] is None:
            tags[slot] = tag
            left -= 1
        n += 1
    return tuple(t or "" for t in tags)
