"""The Lua scripts of the Redis backend: each change to a channel is one script.

A script runs atomically, so pushes from many processes get one order and
etags that never collide. Every key a script touches belongs to one channel
and carries its ``{name}`` hash tag, so a channel lives in one Redis Cluster
slot (the id clock, shared by the channels of a slot, is named to land in it).
Times are Redis's own clock (``TIME``), the same for every process.

Keys of a channel (see docs/scaling.md), each expiring with what it holds:

    h   hash    size life one2one key(sha256) first last dropped droppedl nx mx lx fifo presence
    s   stream  one entry per message: x (expiry, ms since the epoch), d (data),
                then e (event name) and t (type) when the push gave them
    n   hash    node -> "connections lease-expiry": subscribers per process
    o   hash    cid -> "arrival expiry" (one2one holds and their order), "#" -> counter
    p pz        presence: who is here (see ``redis_presence``)
    g   string  newest id of a deleted channel, while subscribers' leases on it last
    i   hash    Idempotency-Key -> "fingerprint etag subscribers messages created"
    ix  zset    Idempotency-Key -> expiry (ms); i and ix expire with their newest record

and the id clock of the slot (``redis_keys``), a string: the newest id given
out there. It is the one key that outlives channels, so that ids only grow.

Pushes and control events go to the channel's own pub/sub channel ``e``
(``SPUBLISH`` on Redis Cluster), which only processes with subscribers on the
channel listen to.
"""

from __future__ import annotations

from .redis_lua_lib import COMMON

# KEYS h s clock n o i ix; ARGV target channel data server size life one2one keyhash
#   given_size given_life given_one2one lease_ms presence given_presence
#   event type idem_key idem_fingerprint idem_ttl_ms idem_cap
# (i ix and the six v1.1 arguments are read from the ends of KEYS and ARGV.)
# -> {'ok', etag, subscribers, messages, created, before, expiry}  or  {'err', reason}
#    (before: the channel's previous id when the push notified nothing but its message)
#    or {'replay', etag, subscribers, messages, created} (the answer to an earlier push)
PUBLISH = r"""
local h, s, clock, n, o = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local events, channel, data = ARGV[1], ARGV[2], ARGV[3]
local server = ARGV[4] == '1'
local keyhash = ARGV[8]
local lease = tonumber(ARGV[12])
local now = now_ms()
-- alive(), with what the push reads of the channel in one HMGET (read again
-- only when expired messages were removed): h exists exactly when it has a size.
local subs = count_subs(n, now)
local function read()
  return redis.call('HMGET', h, 'size', 'life', 'one2one', 'key', 'dropped', 'droppedl', 'nx',
    'mx', 'lx', 'presence', 'last', 'fifo')
end
local cur = read()
local exists = cur[1] ~= false
if exists then
  local nx = tonumber(cur[7] or '0')
  if nx ~= 0 and nx <= now then
    trim_expired(h, s, now)
    cur = read()
  end
  if dropped_if_empty(h, s, subs) then
    exists = false
    cur = {false, false, false, false, false, false, false, false, false, false, false, false}
  end
end
local cur_key = cur[4]
if cur_key and cur_key ~= keyhash then return {'err', 'key'} end

-- v1.1: the message's event and type, and its Idempotency-Key: a repeated push
-- stores nothing and gets the first answer.
local ik, ix = KEYS[#KEYS - 1], KEYS[#KEYS]
local v11 = #ARGV - 6
local ev, ty, ikey, ifp = ARGV[v11 + 1], ARGV[v11 + 2], ARGV[v11 + 3], ARGV[v11 + 4]
local ittl, icap = tonumber(ARGV[v11 + 5]), tonumber(ARGV[v11 + 6])
if ikey ~= '' then
  local old = redis.call('ZRANGEBYSCORE', ix, '-inf', fmt(now), 'LIMIT', 0, 100)
  if #old > 0 then
    redis.call('ZREM', ix, unpack(old))
    redis.call('HDEL', ik, unpack(old))
  end
  local until_ms = tonumber(redis.call('ZSCORE', ix, ikey) or '0')
  local seen = redis.call('HGET', ik, ikey)
  if seen and until_ms > now then
    local f = {}
    for part in string.gmatch(seen, '%S+') do f[#f + 1] = part end
    if f[1] ~= ifp then return {'err', 'idempotency'} end
    return {'replay', f[2], tonumber(f[3]), tonumber(f[4]), tonumber(f[5])}
  end
end
local size, life, one2one
if not server then
  if not exists then return {'err', 'create'} end
  if not cur_key then return {'err', 'nokey'} end
  local names = {'size', 'life', 'one2one'}
  for i = 1, 3 do
    local given = ARGV[8 + i]
    if given ~= '' and given ~= cur[i] then return {'err', names[i]} end
  end
  size, life, one2one = cur[1], cur[2], cur[3]
  if ARGV[14] ~= '' and ARGV[14] ~= (cur[10] or '0') then
    return {'err', 'presence'}
  end
else
  if exists and not cur_key and keyhash ~= '' then return {'err', 'addkey'} end
  size, life, one2one = ARGV[5], ARGV[6], ARGV[7]
end
local had_presence = exists and cur[10] == '1'
local presence = ARGV[13]
if not server then presence = (had_presence and '1') or '0' end
-- one2one comes on: on an existing channel, or on one created while clients wait on it
local switched_on = one2one == '1' and ((exists and cur[3] ~= '1') or (not exists and subs > 0))

local prev = exists and cur[11]
local id = next_id(clock, now, prev)
local x = now + tonumber(life) * 1000
if ev == '' and ty == '' then
  redis.call('XADD', s, id, 'x', fmt(x), 'd', data)
else
  redis.call('XADD', s, id, 'x', fmt(x), 'd', data, 'e', ev, 't', ty)
end

local dropped = cur[5] or '0-0'
local droppedl = cur[6] or '0-0'
local len = redis.call('XLEN', s)
local over = len - tonumber(size)
if over > 0 then
  local gone = {}
  for _, e in ipairs(redis.call('XRANGE', s, '-', '+', 'COUNT', over)) do
    gone[#gone + 1] = e[1]
    if id_gt(e[1], dropped) then dropped = e[1] end
    if e[2][4] ~= '' and id_gt(e[1], droppedl) then droppedl = e[1] end
    if #gone >= 500 then redis.call('XDEL', s, unpack(gone)) gone = {} end
  end
  if #gone > 0 then redis.call('XDEL', s, unpack(gone)) end
  len = len - over
end

local nx = tonumber(cur[7] or '0')
if nx == 0 or x < nx then nx = x end
local mx = tonumber(cur[8] or '0')
if x > mx then mx = x end
-- The keys go with the last message to expire: evicted ones no longer count.
local fifo = false  -- false: as it is
if len == 1 then
  mx = x
  fifo = '1'
elseif x < tonumber(cur[9] or '0') then
  fifo = '0'
elseif not exists or cur[12] ~= '0' then
  mx = x  -- in expiry order, the newest message goes last
end
local fields = {'size', size, 'life', life, 'one2one', one2one, 'last', id,
  'dropped', dropped, 'droppedl', droppedl, 'nx', fmt(nx), 'mx', fmt(mx), 'lx', fmt(x),
  'presence', presence}
if not exists then
  fifo = '1'
  fields[#fields + 1] = 'first'
  fields[#fields + 1] = id
  if keyhash ~= '' then
    fields[#fields + 1] = 'key'
    fields[#fields + 1] = keyhash
  end
end
if fifo then
  fields[#fields + 1] = 'fifo'
  fields[#fields + 1] = fifo
end
redis.call('HSET', h, unpack(fields))
set_expiry(h, s, subs, now, lease, mx)

local keep = ''
if switched_on then
  keep = holder(o, now) or ''
  for _, cid in ipairs(redis.call('HKEYS', o)) do
    if cid ~= '#' and cid ~= keep then redis.call('HDEL', o, cid) end
  end
  tidy_holds(o)
  notify(events, 'k' .. channel .. '\n' .. keep)
end
if (presence == '1') ~= had_presence then notify(events, 'P' .. channel) end
if data ~= '' then
  if ev == '' and ty == '' then
    notify(events, 'm' .. channel .. '\n' .. id .. '\n' .. fmt(x) .. '\n' .. data)
  else
    notify(events, 'M' .. channel .. '\n' .. id .. '\n' .. fmt(x) .. '\n' .. ev
      .. '\n' .. ty .. '\n' .. data)
  end
end
local created = 0
if not exists then created = 1 end
if ikey ~= '' then
  redis.call('HSET', ik, ikey, ifp .. ' ' .. id .. ' ' .. fmt(subs) .. ' ' .. fmt(len) .. ' '
    .. fmt(created))
  redis.call('ZADD', ix, fmt(now + ittl), ikey)
  local over = redis.call('ZCARD', ix) - icap
  if over > 0 then
    local gone = redis.call('ZPOPMIN', ix, over)
    for i = 1, #gone, 2 do redis.call('HDEL', ik, gone[i]) end
  end
  redis.call('PEXPIRE', ik, ittl)
  redis.call('PEXPIRE', ix, ittl)
end
-- The id before this push, when nothing but its message was notified: the
-- publishing process, having handed that one over, may hand this one at once.
local before = ''
if prev and not switched_on and (presence == '1') == had_presence then before = prev end
return {'ok', id, subs, len, created, before, fmt(x)}
"""

# KEYS h s n -> false | {size, life, one2one, has_key, last, messages, subscribers, presence}
INFO = r"""
local h, s, n = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()
local exists, subs = alive(h, s, n, now)
if not exists then return false end
local v = redis.call('HMGET', h, 'size', 'life', 'one2one', 'key', 'last', 'presence')
local has_key = 0
if v[4] then has_key = 1 end
return {v[1], v[2], v[3], has_key, v[5] or '0', redis.call('XLEN', s), subs, v[6] or '0'}
"""

# KEYS h s n; ARGV after... (each '' none, '0' all, or an id)
# -> false | {{last, given_out, dropped_live, entries}, ...}: one answer per `after`,
# so that subscribers coming together from the same etags cost one script
HISTORY = r"""
local h, s, n = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()
local exists = alive(h, s, n, now)
if not exists then return false end
local v = redis.call('HMGET', h, 'last', 'first', 'dropped', 'droppedl')
local last, first, dropped, droppedl = v[1] or '0-0', v[2] or '0-0', v[3] or '0-0', v[4] or '0-0'
local out = {}
for i = 1, #ARGV do
  local after = ARGV[i]
  if after == '' then
    out[i] = {last, 1, droppedl, {}}
  elseif after == '0' then
    out[i] = {last, 1, droppedl, redis.call('XRANGE', s, '-', '+')}
  else
    local retained = #redis.call('XRANGE', s, after, after) > 0
    local given = retained or (not id_gt(first, after) and not id_gt(after, dropped))
    if not given then
      out[i] = {last, 0, droppedl, redis.call('XRANGE', s, '-', '+')}
    else
      out[i] = {last, 1, droppedl, redis.call('XRANGE', s, '(' .. after, '+')}
    end
  end
end
return out
"""

# KEYS h s n o g i ix; ARGV target channel -> 1 deleted, 0 no such channel
# (the notification names the deleted incarnation's newest id)
DELETE = r"""
local h, s, n, o, g = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = now_ms()
if not alive(h, s, n, now) then return 0 end
-- A process that cannot hear the notification now learns of it when it
-- reconnects (or subscribes), while its subscribers' lease on the channel lasts.
local last = redis.call('HGET', h, 'last') or '0-0'
local ttl = redis.call('PTTL', n)
if ttl > 0 then redis.call('SET', g, last, 'PX', ttl) end
redis.call('DEL', h, s, o, KEYS[#KEYS - 1], KEYS[#KEYS])
notify(ARGV[1], 'd' .. ARGV[2] .. '\n' .. last)
return 1
"""

# KEYS h s n o; ARGV node conns lease_ms hold_ms detached cid left ... cid ...
# This process's subscribers of a channel came and went: `conns` is how many it
# has now (the attaching ones included), `detached` pairs of a client that left
# and how many connections it still has here, then the clients attaching, in
# order. -> {last, presence, ok...} (ok: 1, or 0 when one2one refuses that client)
SYNC = r"""
local h, s, n, o = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local node, conns = ARGV[1], tonumber(ARGV[2])
local lease, hold = tonumber(ARGV[3]), tonumber(ARGV[4])
local detached = tonumber(ARGV[5])
local now = now_ms()
local exists = redis.call('EXISTS', h) == 1
local one2one = exists and redis.call('HGET', h, 'one2one') == '1'
for i = 6, 5 + 2 * detached, 2 do
  local cid, cid_conns = ARGV[i], tonumber(ARGV[i + 1])
  if cid_conns <= 0 then
    local cur = redis.call('HGET', o, cid)
    if cur and one2one and hold > 0 then
      local seq = string.sub(cur, 1, string.find(cur, ' ', 1, true) - 1)
      redis.call('HSET', o, cid, seq .. ' ' .. fmt(now + hold))
      live_until(o, now + hold, now)
    elseif cur then
      redis.call('HDEL', o, cid)
      tidy_holds(o)
    end
  end
end
local out = {'0-0', '0'}
local who = false
if one2one then who = holder(o, now) end
for i = 6 + 2 * detached, #ARGV do
  local cid = ARGV[i]
  if who and who ~= cid then
    out[#out + 1] = 0
    conns = conns - 1
  else
    touch_hold(o, cid, now, lease)
    if one2one and not who then who = cid end
    out[#out + 1] = 1
  end
end
set_conns(n, node, conns, now, lease)
if exists then
  out[1] = redis.call('HGET', h, 'last') or '0-0'
  out[2] = redis.call('HGET', h, 'presence') or '0'
  local alive_now, subs = alive(h, s, n, now)
  if alive_now then set_expiry(h, s, subs, now, lease) end
end
return out
"""

# KEYS h s n o; ARGV node conns lease_ms cid...
# Renews this process's leases on a channel (subscriber count and holds);
# answers whether the channel has presence.
REFRESH = r"""
local h, s, n, o = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local node, conns = ARGV[1], tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local now = now_ms()
set_conns(n, node, conns, now, lease)
for i = 4, #ARGV do touch_hold(o, ARGV[i], now, lease) end
local alive_now, subs = alive(h, s, n, now)
if alive_now then set_expiry(h, s, subs, now, lease) end
return redis.call('HGET', h, 'presence') or '0'
"""

PUBLISH, INFO, HISTORY, DELETE, SYNC, REFRESH = (
    COMMON + body for body in (PUBLISH, INFO, HISTORY, DELETE, SYNC, REFRESH)
)
