"""This process's subscribers in Redis: counts per channel and clients' holds, as leases.

Each process writes, on each channel it serves, how many connections it has
there and which clients (``cid``) hold them, with a lease that it renews every
third of ``MARTD_LEASE``; a crashed process's subscribers lapse on their own.
Subscribers of a channel that come and go in the same moment share one script
(``SYNC``): the count, the holds of those that left, and the holds of those
that attach, where a ``one2one`` channel held by another client refuses them.
Attaching also makes the fan-out follow the channel; the last one leaving
lets it go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..channels import ZERO, etag_key
from ..errors import Conflict, Unavailable
from .redis_batch import Gather
from .redis_client import brief
from .redis_fanout import Fanout
from .redis_presence import RedisPresence

log = logging.getLogger("martd.redis")

Call = Callable[[Any, list[str], list[Any]], Awaitable[Any]]


class Leases:
    def __init__(
        self,
        call: Call,
        keys: Callable[[str], list[str]],
        *,
        sync: Any,
        refresh: Any,
        fanout: Fanout,
        presence: RedisPresence,
        node: str,
        lease_ms: int,
        hold_ms: int,
    ) -> None:
        self._call = call
        self._keys = keys  # h s n o: the KEYS of SYNC and REFRESH
        self._sync = sync
        self._refresh = refresh
        self._fanout = fanout
        self._presence = presence
        self._node = node
        self._lease_ms = lease_ms
        self._hold_ms = hold_ms
        self._every = lease_ms / 3000  # seconds between renewals
        self._now = asyncio.Event()  # renew at once (a reconnect, presence switched)
        # channel -> cid -> open connections in this process
        self.conns: dict[str, dict[str, int]] = {}
        self._dirty: set[str] = set()  # channels whose leases need rewriting
        self.detaching = 0  # detaches (and presence leaves) under way
        self._changes: Gather[tuple[str, bool], tuple[bool, str, str]] = Gather(self._write)

    def renew_soon(self) -> None:
        """Renew every lease now, not at the next round (Redis may have lost them)."""
        self._now.set()

    async def run(self) -> None:
        """Renew every third of the lease, or sooner when asked; never gives up."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._now.wait(), self._every)
            self._now.clear()
            try:
                await self.renew()
            except Exception as exc:  # retried on the next round
                log.warning("lease renewal failed: %s", brief(exc.__cause__ or exc))

    async def renew(self) -> None:
        """Rewrite this process's subscriber counts and holds on every channel it serves.

        Every channel is tried even when some fail; then the first failure is raised
        (the failed channels are tried again on the next round).
        """
        pending = list(set(self.conns) | self._dirty)
        failed: list[BaseException] = []
        for start in range(0, len(pending), 100):
            batch = pending[start : start + 100]
            results = await asyncio.gather(
                *(self._renew_one(c) for c in batch), return_exceptions=True
            )
            failed += [r for r in results if isinstance(r, BaseException)]
        if failed:
            if len(failed) > 1:
                log.warning("lease renewal failed on %d of %d channels", len(failed), len(pending))
            raise failed[0]

    async def _renew_one(self, channel: str) -> None:
        # A subscriber that came or left while the script was on its way may have
        # been counted by Redis before it ran: write the count again, or a lease
        # would stand for connections that are gone.
        for _ in range(3):
            cids = dict(self.conns.get(channel, {}))
            live = [cid for cid, n in cids.items() if n > 0]
            args = [self._node, sum(cids.values()), self._lease_ms, *live]
            presence = await self._call(self._refresh, self._keys(channel), args)
            if self.conns.get(channel, {}) == cids:
                self._dirty.discard(channel)
                break
        else:
            self._dirty.add(channel)
        await self._presence.renew(channel, presence == "1")

    async def attach(self, channel: str, cid: str) -> None:
        cids = self.conns.setdefault(channel, {})
        cids[cid] = cids.get(cid, 0) + 1
        try:
            ok, last, presence = await self._changes.call(channel, (cid, True))
        except BaseException:
            self._forget(channel, cid)
            self._dirty.add(channel)
            raise
        if not ok:
            self._forget(channel, cid)
            raise Conflict(
                f"channel: {channel!r} is one2one and another client holds it", channel=channel
            )
        self._fanout.track(channel, etag_key(last) or ZERO)
        self._presence.seen(channel, presence == "1")

    async def detach(self, channel: str, cid: str) -> None:
        self._forget(channel, cid)
        self.detaching += 1
        try:
            await self._changes.call(channel, (cid, False))
        except Unavailable:
            self._dirty.add(channel)
            raise
        finally:
            self.detaching -= 1

    async def _write(
        self, channel: str, changes: list[tuple[str, bool]]
    ) -> list[tuple[bool, str, str]]:
        """One script for the subscribers of a channel that came and went together:
        this process's count on it, the holds of the clients that left, and those
        that attach (refused when a one2one channel is held by another)."""
        cids = self.conns.get(channel, {})
        left = dict.fromkeys(cid for cid, joins in changes if not joins)
        detached = [x for cid in left for x in (cid, cids.get(cid, 0))]
        attaching = [cid for cid, joins in changes if joins]
        args = [
            self._node,
            sum(cids.values()),
            self._lease_ms,
            self._hold_ms,
            len(left),
            *detached,
            *attaching,
        ]
        reply = await self._call(self._sync, self._keys(channel), args)
        last, presence = reply[0], reply[1]
        answers = iter(reply[2:])
        return [(bool(next(answers)) if joins else True, last, presence) for _, joins in changes]

    def _forget(self, channel: str, cid: str) -> None:
        """One connection fewer; the last one on the channel lets the fan-out go."""
        cids = self.conns.get(channel)
        if cids is None:
            return
        left = cids.get(cid, 0) - 1
        if left > 0:
            cids[cid] = left
        else:
            cids.pop(cid, None)
        if not cids:
            del self.conns[channel]
            self._fanout.untrack(channel)
