"""Idempotent pushes (v1.1): the ``Idempotency-Key`` header and what it is checked against.

A push that carries a key is remembered per channel, with a fingerprint of
everything it asked for (payload, event, type, attributes) and the answer it got,
for ``MARTD_IDEMPOTENCY_TTL`` seconds. A later push with the same key and the same
fingerprint stores nothing and gets that answer again; one with another
fingerprint is refused (422). The Redis backend keeps the same records in Redis,
checked inside its push script, so that two processes receiving the same retried
push store it once; ``IdempotencyTable`` is the memory backend's.

Memory stays bounded: records expire, and a channel remembers at most ``CAP``
keys, forgetting the oldest first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import OrderedDict
from typing import TYPE_CHECKING

from .channels import PushAttributes, hash_key
from .errors import BadRequest, Unprocessable

if TYPE_CHECKING:
    from .backends.base import PublishResult

KEY_RE = re.compile(r"[\x21-\x7e]{1,128}\Z")
CAP = 10_000  # keys remembered per channel
HEADER = "idempotency-key"


@dataclasses.dataclass(frozen=True)
class Idempotency:
    """A push's idempotency key, the fingerprint of the push, and how long to remember it."""

    key: str
    fingerprint: str
    ttl: float


def check_key(raw: str) -> str:
    if not KEY_RE.match(raw):
        raise BadRequest(
            "Idempotency-Key: 1 to 128 visible ASCII characters (no spaces)",
            field="Idempotency-Key",
        )
    return raw


def fingerprint(
    data: str, attrs: PushAttributes, event: str | None, content_type: str | None
) -> str:
    """What makes two pushes the same push: payload, event, type and the attributes given."""
    given = dataclasses.asdict(attrs)
    if given.get("key") is not None:
        given["key"] = hash_key(given["key"])
    blob = json.dumps([data, event, content_type, given], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def key_from(headers: dict[str, str]) -> str | None:
    """The push's ``Idempotency-Key``, checked; None when it gave none."""
    raw = headers.get(HEADER)
    return None if raw is None else check_key(raw)


def make(
    key: str | None,
    data: str,
    attrs: PushAttributes,
    event: str | None,
    content_type: str | None,
    ttl: float,
) -> Idempotency | None:
    """What the backend checks a keyed push against (None: no key, or keys not remembered)."""
    if key is None or ttl <= 0:
        return None
    return Idempotency(key, fingerprint(data, attrs, event, content_type), ttl)


def reused(key: str) -> Unprocessable:
    return Unprocessable(
        "Idempotency-Key: this key was used on this channel for a different push"
        " (another payload, event, type or attributes)",
        field="Idempotency-Key",
    )


class IdempotencyTable:
    """Per channel, the answers to pushes that gave a key, until they expire."""

    __slots__ = ("_channels", "cap")

    def __init__(self, cap: int = CAP) -> None:
        self.cap = cap
        # channel -> key -> (expires, fingerprint, answer); in the order they came,
        # which is also the order they expire in (one ttl for all)
        self._channels: dict[str, OrderedDict[str, tuple[float, str, PublishResult]]] = {}

    def answer(self, channel: str, idem: Idempotency, now: float) -> PublishResult | None:
        """The first push's answer if this one repeats it; raises 422 for a different push."""
        records = self._channels.get(channel)
        if records is None:
            return None
        found = records.get(idem.key)
        if found is None or found[0] <= now:
            return None
        if found[1] != idem.fingerprint:
            raise reused(idem.key)
        return dataclasses.replace(found[2], replayed=True)

    def remember(self, channel: str, idem: Idempotency, result: PublishResult, now: float) -> None:
        records = self._channels.get(channel)
        if records is None:
            records = self._channels[channel] = OrderedDict()
        records.pop(idem.key, None)
        records[idem.key] = (now + idem.ttl, idem.fingerprint, result)
        self._trim(channel, records, now)
        while len(records) > self.cap:
            records.popitem(last=False)

    def forget(self, channel: str) -> None:
        self._channels.pop(channel, None)

    def sweep(self, now: float) -> None:
        """Drop expired records (the memory backend's timer calls this)."""
        for channel, records in list(self._channels.items()):
            self._trim(channel, records, now)

    def _trim(
        self, channel: str, records: OrderedDict[str, tuple[float, str, PublishResult]], now: float
    ) -> None:
        while records:
            first = next(iter(records.values()))
            if first[0] > now:
                break
            records.popitem(last=False)
        if not records:
            del self._channels[channel]

    def __len__(self) -> int:
        return sum(len(records) for records in self._channels.values())
