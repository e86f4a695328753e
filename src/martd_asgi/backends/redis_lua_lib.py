"""The Lua library of the Redis backend's scripts: what more than one of them does.

``BASICS`` (Redis's clock, the notification to a channel's followers) goes at
the head of every script, presence's (``redis_presence``) too; ``COMMON``
(ids, expiry, subscriber leases, one2one holds, dropping an empty channel) at
the head of the channel scripts of ``redis_lua``.
"""

from __future__ import annotations

# Redis's clock and the notification: every script of the backend's, presence's too.
BASICS = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A notification to the processes that follow the channel: `target` is
-- 'PUBLISH NAME', or 'SPUBLISH NAME' (sharded pub/sub) on Redis Cluster.
local function notify(target, payload)
  local sp = string.find(target, ' ', 1, true)
  redis.call(string.sub(target, 1, sp - 1), string.sub(target, sp + 1), payload)
end
"""

COMMON = BASICS + r"""
local function parse_id(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

local function id_gt(a, b)
  local am, as = parse_id(a)
  local bm, bs = parse_id(b)
  return am > bm or (am == bm and as > bs)
end

local function fmt(n)
  return string.format('%d', n)
end

-- The next stream id: above every id this clock gave out, whatever TIME does,
-- and above `last` (a stream's newest id, should the clock have been lost).
local function next_id(clock, now, last)
  local floor = redis.call('GET', clock) or '0-0'
  if last and id_gt(last, floor) then floor = last end
  local fm, fs = parse_id(floor)
  local id
  if now > fm then id = fmt(now) .. '-0' else id = fmt(fm) .. '-' .. fmt(fs + 1) end
  redis.call('SET', clock, id)
  return id
end

-- Let a key live until at least `at` (ms since the epoch); never shortens it.
local function live_until(key, at, now)
  local ttl = redis.call('PTTL', key)
  if ttl < 0 or now + ttl < at then redis.call('PEXPIREAT', key, at) end
end

-- The arrival counter alone holds nothing: the holds key goes with its last hold.
local function tidy_holds(o)
  if redis.call('HLEN', o) == 1 and redis.call('HEXISTS', o, '#') == 1 then
    redis.call('DEL', o)
  end
end

-- Remove expired messages; keep track of the newest dropped ids for `missed`.
local function trim_expired(h, s, now)
  local nx = tonumber(redis.call('HGET', h, 'nx') or '0')
  if nx == 0 or nx > now then return end
  local fifo = redis.call('HGET', h, 'fifo') ~= '0'
  local dropped = redis.call('HGET', h, 'dropped') or '0-0'
  local droppedl = redis.call('HGET', h, 'droppedl') or '0-0'
  local newnx = 0
  local start = '-'
  local prev = 0
  local ordered = true
  while true do
    local batch = redis.call('XRANGE', s, start, '+', 'COUNT', 200)
    if #batch == 0 then break end
    local gone = {}
    local stop = false
    for _, e in ipairs(batch) do
      local x = tonumber(e[2][2])
      if x <= now then
        gone[#gone + 1] = e[1]
        if id_gt(e[1], dropped) then dropped = e[1] end
        if e[2][4] ~= '' and id_gt(e[1], droppedl) then droppedl = e[1] end
      else
        if newnx == 0 or x < newnx then newnx = x end
        if x < prev then ordered = false end
        prev = x
        if fifo then stop = true break end
      end
    end
    if #gone > 0 then redis.call('XDEL', s, unpack(gone)) end
    if stop then break end
    start = '(' .. batch[#batch][1]
  end
  redis.call('HSET', h, 'nx', fmt(newnx), 'dropped', dropped, 'droppedl', droppedl)
  -- back in push order: the last push's expiry is now that of the newest kept entry
  if not fifo and ordered then redis.call('HSET', h, 'fifo', '1', 'lx', fmt(prev)) end
end

-- Live subscribers across processes; forgets processes whose lease lapsed.
local function count_subs(n, now)
  local all = redis.call('HGETALL', n)
  local total = 0
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local sp = string.find(v, ' ', 1, true)
    local conns = tonumber(string.sub(v, 1, sp - 1))
    local exp = tonumber(string.sub(v, sp + 1))
    if exp <= now or conns <= 0 then
      redis.call('HDEL', n, all[i])
    else
      total = total + conns
    end
  end
  return total
end

-- The channel exists while it holds messages or has subscribers.
-- A channel with no subscribers and no message left goes: true when it went.
local function dropped_if_empty(h, s, subs)
  if subs == 0 and redis.call('XLEN', s) == 0 then
    redis.call('DEL', h, s)
    return true
  end
  return false
end

local function alive(h, s, n, now)
  local subs = count_subs(n, now)
  if redis.call('EXISTS', h) == 0 then return false, subs end
  trim_expired(h, s, now)
  if dropped_if_empty(h, s, subs) then return false, 0 end
  return true, subs
end

-- Keys live as long as their newest message, and a lease longer with subscribers.
local function set_expiry(h, s, subs, now, lease, mx)
  local at = mx or tonumber(redis.call('HGET', h, 'mx') or '0')
  if subs > 0 and now + lease > at then at = now + lease end
  if at <= now then at = now + 1000 end
  redis.call('PEXPIREAT', h, at)
  redis.call('PEXPIREAT', s, at)
end

-- The client holding a one2one channel: the earliest whose hold has not lapsed.
local function holder(o, now)
  local all = redis.call('HGETALL', o)
  local best, best_seq = false, nil
  for i = 1, #all, 2 do
    local cid = all[i]
    if cid ~= '#' then
      local v = all[i + 1]
      local sp = string.find(v, ' ', 1, true)
      local seq = tonumber(string.sub(v, 1, sp - 1))
      local exp = tonumber(string.sub(v, sp + 1))
      if exp <= now then
        redis.call('HDEL', o, cid)
      elseif best_seq == nil or seq < best_seq then
        best, best_seq = cid, seq
      end
    end
  end
  tidy_holds(o)
  return best
end

local function touch_hold(o, cid, now, lease)
  local cur = redis.call('HGET', o, cid)
  local seq, exp
  if cur then
    local sp = string.find(cur, ' ', 1, true)
    seq = string.sub(cur, 1, sp - 1)
    exp = tonumber(string.sub(cur, sp + 1))
    if exp <= now then cur = false end
  end
  if not cur then
    seq = fmt(redis.call('HINCRBY', o, '#', 1))
    exp = 0
  end
  if now + lease > exp then exp = now + lease end
  redis.call('HSET', o, cid, seq .. ' ' .. fmt(exp))
  live_until(o, exp, now)
end

-- This process's subscribers on a channel, under a lease that lapses on its own.
local function set_conns(n, node, conns, now, lease)
  if conns > 0 then
    redis.call('HSET', n, node, fmt(conns) .. ' ' .. fmt(now + lease))
    live_until(n, now + lease, now)
  else
    redis.call('HDEL', n, node)
  end
end
"""
