//! The Lua scripts. Every state change that must be atomic across nodes is one script: Redis
//! runs scripts one at a time, so offsets, stream order and Pub/Sub order always agree, join vs
//! update is decided on the hash's own answer, and two reapers never announce the same leave.
//!
//! Scripts publish events themselves (`PUBLISH` inside the script), so the order of events on a
//! room's channel is the order of the state changes. Event payloads are JSON built by string
//! concatenation around pieces the Rust side already encoded (see `wire.rs`); the only JSON
//! Lua parses is a presence entry's `node` field, in the reaper.

use redis::Script;

/// Helpers shared by the scripts that touch history.
const PRELUDE: &str = r#"
local function fmt(n) return string.format('%d', n) end

-- Redis's clock, so every node stamps messages with the same clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function id_offset(id)
  return tonumber(string.match(id, '^(%d+)-')) or 0
end

local function stored_at(entry)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 't' then return tonumber(f[i + 1]) or 0 end
  end
  return 0
end

-- The history byte budget (see `budget.rs`). `budget` is {bytes = counter key, rooms = hash
-- room -> counted bytes of its stream, log = eviction log stream}. A stream entry counts its
-- field names and values plus ENTRY_OVERHEAD, a record of the eviction log LOG_OVERHEAD plus
-- its room name. Every script that adds or removes an entry counts it here, in the same atomic
-- step; what leaves without a script (a stream expiring as a whole) is corrected by
-- `forget_gone_room`.
local ENTRY_OVERHEAD = 64
local LOG_OVERHEAD = 64

local function entry_bytes(entry)
  local n = ENTRY_OVERHEAD
  local f = entry[2]
  for i = 1, #f do n = n + #f[i] end
  return n
end

local function add_bytes(budget, n)
  if redis.call('INCRBY', budget.bytes, n) < 0 then redis.call('SET', budget.bytes, 0) end
end

-- Adds (n > 0) or removes (n < 0) bytes of `room`'s stream entries. Never removes more than
-- the room has counted: entries written before the budget existed (an upgrade) were never
-- counted, and uncounting them would leave the total low for good.
local function count_room(budget, room, n)
  if n < 0 then
    local have = tonumber(redis.call('HGET', budget.rooms, room) or '0')
    if -n > have then n = -have end
  end
  if n == 0 then return end
  if redis.call('HINCRBY', budget.rooms, room, n) <= 0 then redis.call('HDEL', budget.rooms, room) end
  add_bytes(budget, n)
end

-- If the room's stream is gone as a whole (it expired), so are the bytes counted for it.
local function forget_gone_room(budget, stream, room)
  if redis.call('EXISTS', stream) == 1 then return end
  local stale = tonumber(redis.call('HGET', budget.rooms, room) or '0')
  if stale ~= 0 then count_room(budget, room, -stale) end
end

-- Drops entries stored before `cutoff`. Stamps never decrease along the stream (one clock,
-- scripts run one at a time), so what is kept is a suffix; `PEXPIRE` on every publish bounds
-- how many old entries one call can meet.
local function trim_by_age(stream, cutoff, budget, room)
  while true do
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
    if #first == 0 or stored_at(first[1]) >= cutoff then return end
    redis.call('XTRIM', stream, 'MINID', fmt(id_offset(first[1][1]) + 1) .. '-0')
    count_room(budget, room, -entry_bytes(first[1]))
  end
end

-- Pops at most `limit` records from the head of the eviction log: while the count is over
-- `max_bytes` (oldest message of any room first), and records older than `cutoff` (their
-- message aged out). The entry a record names is deleted if it is still there and is the same
-- message (the stamp tells: a room whose head expired counts offsets from 1 again). It is
-- always its room's oldest entry, since a room's records come in offset order, so what a room
-- keeps stays a suffix and a `since` before it reads as incomplete (resync).
-- Returns how many records were popped.
local function evict(budget, hist_prefix, max_bytes, cutoff, limit)
  local records = redis.call('XRANGE', budget.log, '-', '+', 'COUNT', limit)
  local last = nil
  local popped = 0
  for _, rec in ipairs(records) do
    local f = rec[2]
    local room, offset, t = '', nil, 0
    for i = 1, #f, 2 do
      if f[i] == 'r' then room = f[i + 1]
      elseif f[i] == 'o' then offset = f[i + 1]
      elseif f[i] == 't' then t = tonumber(f[i + 1]) or 0 end
    end
    local over = tonumber(redis.call('GET', budget.bytes) or '0') > max_bytes
    if not over and t >= cutoff then break end
    last = rec[1]
    popped = popped + 1
    add_bytes(budget, -(LOG_OVERHEAD + #room))
    local stream = hist_prefix .. room
    if redis.call('EXISTS', stream) == 0 then
      forget_gone_room(budget, stream, room)
    elseif offset then
      local id = offset .. '-0'
      local entry = redis.call('XRANGE', stream, id, id)
      if #entry == 1 and stored_at(entry[1]) == t then
        redis.call('XDEL', stream, id)
        count_room(budget, room, -entry_bytes(entry[1]))
      end
    end
  end
  if last then
    local ms, seq = string.match(last, '^(%d+)-(%d+)$')
    redis.call('XTRIM', budget.log, 'MINID', ms .. '-' .. fmt(tonumber(seq) + 1))
  end
  return popped
end
"#;

/// KEYS: head, history, history-rooms index, epoch, budget counter, budget rooms hash, budget
/// log, [dedupe key].
/// ARGV: room, channel, max messages, max age ms, dedupe window ms, sender, payload,
/// wire tail (the event JSON after `"at":N,"e":"…",`), epoch candidate, room key ttl ms,
/// budget max bytes, budget records to evict at most, history key prefix, [name].
/// The head and epoch live `room key ttl` (longer than the history) after the room's last
/// publish or read, so fresh room names do not leave permanent keys.
/// Returns `{1, offset, stored_at_ms, epoch}` or `{0, "room offset"}` for a duplicate.
/// The epoch is fixed here too (like on a history read), so the first message after Redis
/// lost its data already carries the new epoch on the live fan-out.
/// Every entry the count bound, the age bound and the byte budget remove is uncounted here;
/// the byte budget evicts the oldest messages of any room while the cluster is over it (at most
/// the given number of log records per publish; the background trim does the rest).
const PUBLISH: &str = r#"
local budget = {bytes = KEYS[5], rooms = KEYS[6], log = KEYS[7]}
local room = ARGV[1]
if KEYS[8] then
  local seen = redis.call('GET', KEYS[8])
  if seen then return {0, seen} end
end
redis.call('SET', KEYS[4], ARGV[9], 'NX')
local epoch = redis.call('GET', KEYS[4])
local now = now_ms()
local offset = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[10])
redis.call('PEXPIRE', KEYS[4], ARGV[10])
local id = fmt(offset) .. '-0'
forget_gone_room(budget, KEYS[2], room)
local max = tonumber(ARGV[3])
local len = redis.call('XLEN', KEYS[2])
if len >= max and len > 0 then
  local freed = 0
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', len - max + 1)) do
    freed = freed + entry_bytes(e)
  end
  count_room(budget, room, -freed)
end
local stamp = fmt(now)
local fields = {'s', ARGV[6], 'p', ARGV[7], 't', stamp}
if ARGV[14] then
  fields[7] = 'n'
  fields[8] = ARGV[14]
end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], id, unpack(fields))
if max > 0 then count_room(budget, room, entry_bytes({id, fields})) end
trim_by_age(KEYS[2], now - tonumber(ARGV[4]), budget, room)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], room)
redis.call('XADD', budget.log, '*', 'r', room, 'o', fmt(offset), 't', stamp)
add_bytes(budget, LOG_OVERHEAD + #room)
evict(budget, ARGV[13], tonumber(ARGV[11]), now - tonumber(ARGV[4]), tonumber(ARGV[12]))
if KEYS[8] then
  redis.call('SET', KEYS[8], room .. ' ' .. fmt(offset), 'PX', ARGV[5])
end
redis.call('PUBLISH', ARGV[2],
  '{"t":"m","o":' .. fmt(offset) .. ',"at":' .. stamp .. ',"e":"' .. epoch .. '",' .. ARGV[8])
return {1, offset, now, epoch}
"#;

/// KEYS: head, history, epoch, budget counter, budget rooms hash.
/// ARGV: since, limit, max age ms, epoch candidate, room key ttl ms, room.
/// Returns `{head, complete (0/1), XRANGE entries, epoch}`. The epoch key is created (with the
/// candidate) on first read; it and the head expire `room key ttl` after the room's last
/// publish or read (always after its history: the stream expires `max age` after the last
/// publish). If they go (expired, or Redis lost its data), both go and the room's next reader
/// fixes a new epoch, so clients' old offsets are recognised (`recovered: false`).
const HISTORY: &str = r#"
redis.call('SET', KEYS[3], ARGV[4], 'NX', 'PX', ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local epoch = redis.call('GET', KEYS[3])
local since = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
trim_by_age(KEYS[2], now_ms() - tonumber(ARGV[3]), {bytes = KEYS[4], rooms = KEYS[5]}, ARGV[6])
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local oldest = head + 1
if #first > 0 then oldest = id_offset(first[1][1]) end
local complete = 0
if since + 1 >= oldest and since <= head then complete = 1 end
local messages = {}
if limit > 0 and since < head then
  messages = redis.call('XRANGE', KEYS[2], fmt(since + 1) .. '-0', '+', 'COUNT', limit)
end
return {head, complete, messages, epoch}
"#;

/// A presence entry as stored: the node's JSON (`{"session":…}`) with the change number `q`
/// put first, taken from the cluster's presence counter in the same atomic step as the `HSET`
/// and the `PUBLISH`. The number is the order of the room's changes, the order its events go
/// out in: a read of the hash is sorted by it (`wire.rs`). An entry without one (written by a
/// node from before it) sorts first.
const STAMP_FN: &str = r#"
local function stamped(seq_key, json)
  local q = redis.call('INCR', seq_key)
  return '{"q":' .. string.format('%d', q) .. ',' .. string.sub(json, 2)
end
"#;

/// KEYS: presence hash, presence-rooms index, presence change counter.
/// ARGV: session, entry JSON, room, channel. Returns 1 for a join, 0 for an update.
const PRESENCE_JOIN: &str = r#"
local entry = stamped(KEYS[3], ARGV[2])
local new = redis.call('HSET', KEYS[1], ARGV[1], entry)
redis.call('SADD', KEYS[2], ARGV[3])
local t = 'pu'
if new == 1 then t = 'pj' end
redis.call('PUBLISH', ARGV[4], '{"t":"' .. t .. '","c":' .. entry .. '}')
return new
"#;

/// KEYS: presence hash, presence change counter. ARGV: session, entry JSON, channel.
/// Returns 1 if the session was there.
const PRESENCE_UPDATE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local entry = stamped(KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], entry)
redis.call('PUBLISH', ARGV[3], '{"t":"pu","c":' .. entry .. '}')
return 1
"#;

/// KEYS: presence hash, presence-rooms index. ARGV: session, room, channel.
/// Returns 1 if the session was there.
const PRESENCE_LEAVE: &str = r#"
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
redis.call('PUBLISH', ARGV[3], '{"t":"pl","c":' .. entry .. '}')
return 1
"#;

/// A room's presence and, in the same atomic step, a marker on its channel: a reader knows
/// that the presence events before the marker are in the snapshot and the ones after are not.
/// KEYS: presence hash. ARGV: channel, marker event JSON. Returns HGETALL's reply.
const PRESENCE_MARKED_SNAPSHOT: &str = r#"
local entries = redis.call('HGETALL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return entries
"#;

/// Removes the entries of dead nodes (liveness key gone) from one room and announces each
/// leave once. KEYS: presence hash, presence-rooms index. ARGV: room, channel, node key prefix.
/// Returns how many entries were removed.
const REAP_ROOM: &str = r#"
local alive = {}
local entries = redis.call('HGETALL', KEYS[1])
local removed = 0
for i = 1, #entries, 2 do
  local ok, conn = pcall(cjson.decode, entries[i + 1])
  local node = ok and type(conn) == 'table' and conn.node
  if type(node) == 'string' then
    if alive[node] == nil then alive[node] = redis.call('EXISTS', ARGV[3] .. node) == 1 end
    if not alive[node] then
      redis.call('HDEL', KEYS[1], entries[i])
      redis.call('PUBLISH', ARGV[2], '{"t":"pl","c":' .. entries[i + 1] .. '}')
      removed = removed + 1
    end
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return removed
"#;

/// One bounded step of the stats pass (see `upkeep.rs`): counts a batch of one index set and
/// forgets index entries whose keys are gone (expired history, empty presence).
/// KEYS: the index set (history rooms or presence rooms). ARGV: SSCAN cursor, batch size,
/// the indexed keys' prefix, `h` (history) or `p` (presence), the history prefix.
/// Returns `{next cursor, rooms, messages or members}`; a presence room that also has history
/// is not counted twice.
const STATS_STEP: &str = r#"
local r = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local rooms, n = 0, 0
for _, room in ipairs(r[2]) do
  local key = ARGV[3] .. room
  if ARGV[4] == 'h' then
    if redis.call('EXISTS', key) == 0 then
      redis.call('SREM', KEYS[1], room)
    else
      rooms = rooms + 1
      n = n + redis.call('XLEN', key)
    end
  else
    local len = redis.call('HLEN', key)
    if len == 0 then
      redis.call('SREM', KEYS[1], room)
    else
      n = n + len
      if redis.call('EXISTS', ARGV[5] .. room) == 0 then rooms = rooms + 1 end
    end
  end
end
return {r[1], rooms, n}
"#;

/// Takes or keeps a lease (one node per cluster does a job: the stats walk, the budget trim).
const LEASE_FN: &str = r#"
local function take_lease(key, node, ttl_ms)
  local holder = redis.call('GET', key)
  if holder == false then
    redis.call('SET', key, node, 'PX', ttl_ms)
    return true
  end
  if holder == node then
    redis.call('PEXPIRE', key, ttl_ms)
    return true
  end
  return false
end
"#;

/// Takes or keeps the stats lease: one node per cluster walks the indexes.
/// KEYS: lease. ARGV: node id, ttl ms. Returns 1 if this node holds the lease.
const STATS_LEASE: &str = r#"
if take_lease(KEYS[1], ARGV[1], ARGV[2]) then return 1 end
return 0
"#;

/// One bounded step of the background trim of the byte budget (see `budget.rs`), by the
/// holder of the trim lease only: evicts while the cluster is over its budget, and pops the
/// log records of messages that aged out.
/// KEYS: lease, budget counter, budget rooms hash, budget log.
/// ARGV: node id, lease ttl ms, max bytes, max age ms, records at most, history key prefix.
/// Returns `{1 if this node holds the lease, records popped, bytes counted after the step}`.
const BUDGET_TRIM: &str = r#"
local budget = {bytes = KEYS[2], rooms = KEYS[3], log = KEYS[4]}
local held, popped = 0, 0
if take_lease(KEYS[1], ARGV[1], ARGV[2]) then
  held = 1
  popped = evict(budget, ARGV[6], tonumber(ARGV[3]), now_ms() - tonumber(ARGV[4]), tonumber(ARGV[5]))
end
return {held, popped, tonumber(redis.call('GET', KEYS[2]) or '0')}
"#;

/// KEYS: ticket hash, the owner's ticket set. ARGV: ticket, payload, ttl ms, per-user cap.
/// Returns 1 if stored, 0 if the owner holds `cap` live tickets already. Expired members of the
/// owner's set are dropped first, so a ticket that was never redeemed frees its slot when it
/// expires.
const ISSUE_TICKET: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'p', ARGV[2], 'o', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"#;

/// KEYS: ticket hash. ARGV: ticket. Returns the payload and deletes the ticket (and its slot
/// in the owner's set), or nil. One script, so of two nodes redeeming the same ticket at once
/// exactly one gets it. The owner's set key is read from the ticket (a single Redis instance
/// is assumed, as for every script here).
const REDEEM_TICKET: &str = r#"
local v = redis.call('HMGET', KEYS[1], 'p', 'o')
if not v[1] then return false end
redis.call('DEL', KEYS[1])
if v[2] then redis.call('ZREM', v[2], ARGV[1]) end
return v[1]
"#;

/// The compiled scripts (`EVALSHA`, loaded on first use and after a `SCRIPT FLUSH`).
pub(super) struct Scripts {
    pub publish: Script,
    pub history: Script,
    pub presence_join: Script,
    pub presence_update: Script,
    pub presence_leave: Script,
    pub presence_marked_snapshot: Script,
    pub reap_room: Script,
    pub stats_step: Script,
    pub stats_lease: Script,
    pub budget_trim: Script,
    pub issue_ticket: Script,
    pub redeem_ticket: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Self {
            publish: with_prelude(PUBLISH),
            history: with_prelude(HISTORY),
            presence_join: Script::new(&format!("{STAMP_FN}\n{PRESENCE_JOIN}")),
            presence_update: Script::new(&format!("{STAMP_FN}\n{PRESENCE_UPDATE}")),
            presence_leave: Script::new(PRESENCE_LEAVE),
            presence_marked_snapshot: Script::new(PRESENCE_MARKED_SNAPSHOT),
            reap_room: Script::new(REAP_ROOM),
            stats_step: Script::new(STATS_STEP),
            stats_lease: Script::new(&format!("{LEASE_FN}\n{STATS_LEASE}")),
            budget_trim: Script::new(&format!("{PRELUDE}\n{LEASE_FN}\n{BUDGET_TRIM}")),
            issue_ticket: Script::new(ISSUE_TICKET),
            redeem_ticket: Script::new(REDEEM_TICKET),
        }
    }
}
