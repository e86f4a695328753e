"""Presence on Redis: who is on a channel, across processes, with leases.

Two keys per channel with presence, beside its others (same ``{name}`` hash tag):

    p   hash   cid -> "node|client JSON": who is here, and the process that last had it
    pz  zset   cid -> when it leaves (ms): a lease while a process has it, the hold after

A process that has a client renews its lease with its other leases (every third
of ``MARTD_LEASE``), so a crashed process's clients run out within the lease;
then any process that serves the channel (at its next renewal, or when it lists
the clients) removes them and publishes their leave. A client whose last
subscription ended gets the hold instead; the process where it ended sweeps the
channel when the hold is over, so it leaves then unless it came back (to any
process) in between. Joins and leaves are published on the channel's pub/sub
channel (``j``/``l`` notifications) and reach the hubs of the processes with
subscribers on it like messages.
Both keys expire with the newest lease or hold in them, and go with the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..presence import Client
from .redis_batch import cancel_all
from .redis_lua_lib import BASICS

log = logging.getLogger("martd.redis")

PRELUDE = BASICS + r"""
local function on(h)
  return redis.call('HGET', h, 'presence') == '1'
end

local function info_of(v)
  local bar = string.find(v, '|', 1, true)
  return string.sub(v, 1, bar - 1), string.sub(v, bar + 1)
end

-- Everyone whose lease or hold ran out leaves.
local function sweep(p, pz, events, channel, now)
  local dead = redis.call('ZRANGEBYSCORE', pz, '-inf', now, 'LIMIT', 0, 1000)
  for _, cid in ipairs(dead) do
    local v = redis.call('HGET', p, cid)
    redis.call('HDEL', p, cid)
    redis.call('ZREM', pz, cid)
    if v then
      local _, info = info_of(v)
      notify(events, 'l' .. channel .. '\n' .. info)
    end
  end
end

local function keep(p, pz, keep_ms)
  redis.call('PEXPIRE', p, keep_ms)
  redis.call('PEXPIRE', pz, keep_ms)
end
"""

# KEYS h p pz; ARGV target channel cid node info lease_ms keep_ms
# -> 0 no presence, 1 joined, 2 was here already (within its hold, or on another process)
PRESENT = r"""
local h, p, pz = KEYS[1], KEYS[2], KEYS[3]
local events, channel, cid, node, info = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not on(h) then return 0 end
local now = now_ms()
sweep(p, pz, events, channel, now)
local cur = redis.call('HGET', p, cid)
redis.call('HSET', p, cid, node .. '|' .. info)
redis.call('ZADD', pz, now + tonumber(ARGV[6]), cid)
keep(p, pz, tonumber(ARGV[7]))
if cur then return 2 end
notify(events, 'j' .. channel .. '\n' .. info)
return 1
"""

# KEYS h p pz; ARGV target channel cid node hold_ms keep_ms
# -> 0 nothing to do (not ours, no presence), 1 held, 2 left
ABSENT = r"""
local h, p, pz = KEYS[1], KEYS[2], KEYS[3]
local events, channel, cid, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cur = redis.call('HGET', p, cid)
if not cur then return 0 end
local who, info = info_of(cur)
if who ~= node then return 0 end
if not on(h) then
  redis.call('DEL', p, pz)
  return 0
end
local hold = tonumber(ARGV[5])
if hold > 0 then
  redis.call('ZADD', pz, now_ms() + hold, cid)
  keep(p, pz, tonumber(ARGV[6]))
  return 1
end
redis.call('HDEL', p, cid)
redis.call('ZREM', pz, cid)
notify(events, 'l' .. channel .. '\n' .. info)
return 2
"""

# KEYS h p pz; ARGV target channel node lease_ms keep_ms [cid info]...
# Renews this process's clients (joining those not there yet) and sweeps the rest.
RENEW = r"""
local h, p, pz = KEYS[1], KEYS[2], KEYS[3]
local events, channel, node = ARGV[1], ARGV[2], ARGV[3]
if not on(h) then
  redis.call('DEL', p, pz)
  return 0
end
local now = now_ms()
sweep(p, pz, events, channel, now)
local until_ms = now + tonumber(ARGV[4])
for i = 6, #ARGV, 2 do
  local cid, info = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', p, cid)
  redis.call('HSET', p, cid, node .. '|' .. info)
  redis.call('ZADD', pz, until_ms, cid)
  if not cur then notify(events, 'j' .. channel .. '\n' .. info) end
end
keep(p, pz, tonumber(ARGV[5]))
return 1
"""

# KEYS h p pz; ARGV target channel -> false (no presence) | {"node|client JSON", ...}
CLIENTS = r"""
local h, p, pz = KEYS[1], KEYS[2], KEYS[3]
if not on(h) then return false end
sweep(p, pz, ARGV[1], ARGV[2], now_ms())
return redis.call('HVALS', p)
"""

# KEYS h p pz; ARGV target channel: whoever's lease or hold ran out leaves
SWEEP = r"""
local h, p, pz = KEYS[1], KEYS[2], KEYS[3]
if not on(h) then return 0 end
sweep(p, pz, ARGV[1], ARGV[2], now_ms())
return 1
"""

# KEYS h p pz: the channel was dropped
FORGET = r"""
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""

PRESENT, ABSENT, RENEW, CLIENTS, SWEEP = (
    PRELUDE + body for body in (PRESENT, ABSENT, RENEW, CLIENTS, SWEEP)
)

Call = Callable[[Any, list[str], list[Any]], Awaitable[Any]]


class _Local:
    """This process's subscriptions of one client on one channel."""

    __slots__ = ("client", "conns")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.conns = 0


class RedisPresence:
    """The Redis backend's presence: this process's part, and the scripts for the rest."""

    def __init__(
        self,
        client: Any,
        call: Call,
        *,
        target: Callable[[str], str],
        keys: Callable[[str], list[str]],
        node: str,
        lease_ms: int,
        hold_ms: int,
    ) -> None:
        self._call = call
        self._target = target  # where a channel's notifications go (``Fanout.target``)
        self._keys = keys
        self._node = node
        # A lease renewed every third of MARTD_LEASE that runs out two thirds after its
        # renewal: a crashed process's clients leave within MARTD_LEASE.
        self._lease_ms = max(1, lease_ms * 2 // 3)
        self._hold_ms = hold_ms
        # Each write keeps both keys as long as the entry it wrote (a lease or a hold),
        # and entries written earlier ran out no later: the keys expire with what they hold.
        self._keep_ms = max(self._lease_ms, hold_ms) + 1000
        register = client.register_script
        self._present = register(PRESENT)
        self._absent = register(ABSENT)
        self._renew = register(RENEW)
        self._clients = register(CLIENTS)
        self._sweeper = register(SWEEP)
        self._forget = register(FORGET)
        self.local: dict[str, dict[str, _Local]] = {}
        self.enabled: set[str] = set()  # channels seen with presence (attach, renewal)
        self._lapses: dict[str, asyncio.TimerHandle] = {}  # the next sweep of a channel
        self._due: dict[str, deque[float]] = {}  # when holds on a channel end, in order
        self._tasks: set[asyncio.Task[None]] = set()

    def _pkeys(self, channel: str) -> list[str]:
        base = self._keys(channel)[0][:-1]  # the prefix of the channel's keys
        return [base + "h", base + "p", base + "pz"]

    def seen(self, channel: str, on: bool) -> None:
        """What Redis said of the channel's presence (an attach or renewal reply)."""
        if on:
            self.enabled.add(channel)
        else:
            self.enabled.discard(channel)

    async def present(self, channel: str, client: Client) -> None:
        entries = self.local.setdefault(channel, {})
        entry = entries.get(client.cid)
        if entry is None:
            entry = entries[client.cid] = _Local(client)
        entry.client = client
        entry.conns += 1
        if entry.conns == 1 and channel in self.enabled:
            args = [
                self._target(channel),
                channel,
                client.cid,
                self._node,
                client.dumps(),
                self._lease_ms,
                self._keep_ms,
            ]
            await self._call(self._present, self._pkeys(channel), args)

    async def absent(self, channel: str, client: Client, *, keep: bool) -> None:
        entries = self.local.get(channel)
        entry = entries.get(client.cid) if entries else None
        if entries is None or entry is None:
            return
        entry.conns -= 1
        if entry.conns > 0:
            return
        del entries[client.cid]
        if not entries:
            del self.local[channel]
        if channel not in self.enabled:
            return
        hold = self._hold_ms if keep else 0
        args = [self._target(channel), channel, client.cid, self._node, hold, self._keep_ms]
        if await self._call(self._absent, self._pkeys(channel), args) == 1:
            self._sweep_later(channel, hold / 1000)

    async def renew(self, channel: str, on: bool) -> None:
        """Renew this process's clients of ``channel``; clients of a crashed process leave."""
        self.seen(channel, on)
        if not on:
            return
        args: list[Any] = [
            self._target(channel),
            channel,
            self._node,
            self._lease_ms,
            self._keep_ms,
        ]
        for cid, entry in self.local.get(channel, {}).items():
            args += [cid, entry.client.dumps()]
        await self._call(self._renew, self._pkeys(channel), args)

    async def clients(self, channel: str) -> list[Client]:
        found = await self._call(
            self._clients, self._pkeys(channel), [self._target(channel), channel]
        )
        self.seen(channel, found is not None)
        out = []
        for value in found or ():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                out.append(Client.loads(str(value).split("|", 1)[1]))
        return out

    async def forget(self, channel: str) -> None:
        """The channel was dropped: so is who was on it."""
        self.enabled.discard(channel)
        await self._call(self._forget, self._pkeys(channel), [])

    # -- the end of a hold: sweep the channel then

    def _sweep_later(self, channel: str, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._due.setdefault(channel, deque()).append(loop.time() + delay + 0.05)
        if channel not in self._lapses:
            self._lapses[channel] = loop.call_at(self._due[channel][0], self._sweep_now, channel)

    def _sweep_now(self, channel: str) -> None:
        loop = asyncio.get_running_loop()
        due = self._due.get(channel)
        while due and due[0] <= loop.time():
            due.popleft()
        if due:
            self._lapses[channel] = loop.call_at(due[0], self._sweep_now, channel)
        else:
            self._lapses.pop(channel, None)
            self._due.pop(channel, None)
        task = asyncio.ensure_future(self._sweep(channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self, channel: str) -> None:
        try:
            await self._call(self._sweeper, self._pkeys(channel), [self._target(channel), channel])
        except Exception as exc:  # the next renewal or listing sweeps it
            log.warning("presence sweep of %s failed: %s", channel, type(exc).__name__)

    async def aclose(self) -> None:
        for handle in self._lapses.values():
            handle.cancel()
        self._lapses.clear()
        self._due.clear()
        await cancel_all(self._tasks)
