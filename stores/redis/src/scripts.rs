//! The Lua scripts that make each store method atomic.
//!
//! Redis runs a script without interleaving any other command, so a script that reads a
//! record, decides and writes is atomic. Scripts are sent with `EVALSHA` and loaded on the
//! first `NOSCRIPT` answer.
//!
//! Keys of one store (prefix `P`):
//!
//! - `P` `record:` hex(record key): a hash with the record's fields (see [`crate::record`]);
//!   Redis expires it by TTL, and every script also treats `expires_at` as the truth.
//! - `P` `fence`: the counter fences come from (`INCR`); it never expires.
//! - `P` `expiry`: a sorted set of hex(record key) by `expires_at`, for `purge_expired`.
//! - `P` `pending`: a sorted set of `fence:hex(record key)` (fence zero-padded to 20
//!   digits) by `completed_at`, for completed records whose events are unpublished. Equal
//!   completion times sort by fence, as the members sort as text.
//! - `P` `history`: a sorted set of hex(record key) by `completed_at`, for completed records
//!   with events, published or not: the event history of `events_since`. A claim that
//!   replaces a record and a purge that deletes one remove its entry.
//!
//! Times and fences travel as decimal strings and are stored as sent. Lua compares them as
//! doubles, exact for milliseconds until the year 287 396 and fences below 2^53.

use redis::Script;

/// Claims a record.
///
/// KEYS: record, fence counter, expiry index, pending index, history index.
/// ARGV: now, lease until, expires at, fingerprint, record id (hex), ttl in ms.
/// Returns `{1, fence, takeover}` when granted, `{0, HGETALL of the record}` otherwise.
const CLAIM: &str = r"
local now = tonumber(ARGV[1])
local current = redis.call('HMGET', KEYS[1], 'state', 'lease_until', 'expires_at', 'fence')
local takeover = 0
if current[1] then
    if tonumber(current[3]) > now then
        if current[1] ~= 'in_progress' or tonumber(current[2]) > now then
            return {0, redis.call('HGETALL', KEYS[1])}
        end
        takeover = 1
    end
    local fence = current[4] or ''
    redis.call('ZREM', KEYS[4], string.rep('0', 20 - #fence) .. fence .. ':' .. ARGV[5])
    redis.call('DEL', KEYS[1])
end
redis.call('ZREM', KEYS[5], ARGV[5])
local fence = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'fp', ARGV[4], 'state', 'in_progress', 'fence', fence,
    'lease_until', ARGV[2], 'created_at', ARGV[1], 'expires_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[5])
return {1, fence, takeover}
";

/// Completes a record if it is in progress under the fence.
///
/// KEYS: record, expiry index, pending index, history index.
/// ARGV: fence, completed at, expires at, status, headers, body, events, has events (0/1),
/// record id, ttl in ms, pending member.
/// Returns 1 when stored, 0 when fenced.
const COMPLETE: &str = r"
local current = redis.call('HMGET', KEYS[1], 'state', 'fence')
if current[1] ~= 'in_progress' or current[2] ~= ARGV[1] then
    return 0
end
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('HSET', KEYS[1], 'state', 'completed', 'completed_at', ARGV[2],
    'expires_at', ARGV[3], 'status', ARGV[4], 'headers', ARGV[5], 'body', ARGV[6],
    'events', ARGV[7], 'published', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[10])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[9])
if ARGV[8] == '1' then
    redis.call('ZADD', KEYS[3], ARGV[2], ARGV[11])
    redis.call('ZADD', KEYS[4], ARGV[2], ARGV[9])
end
return 1
";

/// Removes a record if it is in progress under the fence.
///
/// KEYS: record, expiry index. ARGV: fence, record id. Returns 1 when removed.
const RELEASE: &str = r"
local current = redis.call('HMGET', KEYS[1], 'state', 'fence')
if current[1] == 'in_progress' and current[2] == ARGV[1] then
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], ARGV[2])
    return 1
end
return 0
";

/// Marks a completion's events published if the record is completed under the fence.
///
/// KEYS: record, pending index. ARGV: fence, pending member. Returns 1 when marked.
const MARK_PUBLISHED: &str = r"
local current = redis.call('HMGET', KEYS[1], 'state', 'fence')
if current[1] == 'completed' and current[2] == ARGV[1] then
    redis.call('HSET', KEYS[1], 'published', '1')
    redis.call('ZREM', KEYS[2], ARGV[2])
    return 1
end
return 0
";

/// Lists pending events, oldest first, and drops index entries whose record is gone or
/// was replaced.
///
/// KEYS: pending index. ARGV: record key prefix, limit.
/// Returns a flat array of `record id, fence, events` triples.
const PENDING_EVENTS: &str = r"
local limit = tonumber(ARGV[2])
local out = {}
local found = 0
local stale = {}
local start = 0
while found < limit do
    local members = redis.call('ZRANGE', KEYS[1], start, start + limit - 1)
    if #members == 0 then
        break
    end
    for _, member in ipairs(members) do
        local fence, id = string.match(member, '^(%d+):(.+)$')
        local record = redis.call('HMGET', ARGV[1] .. (id or ''),
            'state', 'fence', 'published', 'events')
        if fence and record[1] == 'completed' and record[3] == '0'
            and tonumber(record[2]) == tonumber(fence) then
            out[#out + 1] = id
            out[#out + 1] = record[2]
            out[#out + 1] = record[4]
            found = found + 1
            if found == limit then
                break
            end
        else
            stale[#stale + 1] = member
        end
    end
    start = start + #members
end
for _, member in ipairs(stale) do
    redis.call('ZREM', KEYS[1], member)
end
return out
";

/// Lists the events of completed records from a time, by completion time then fence.
///
/// Reads whole records from the history index in score order until it holds `limit` of
/// them (each has one event at least) and every record sharing the last completion time,
/// skips entries whose record is gone or no longer completed, and sorts by completion
/// time, then fence. Changes nothing.
///
/// KEYS: history index. ARGV: record key prefix, since, limit.
/// Returns the `events` fields in order.
const EVENTS_SINCE: &str = r"
local since = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local found = {}
local last = nil
local offset = 0
local done = false
while not done do
    local entries = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf',
        'WITHSCORES', 'LIMIT', offset, limit)
    if #entries == 0 then
        break
    end
    for i = 1, #entries, 2 do
        local score = tonumber(entries[i + 1])
        if #found >= limit and score ~= last then
            done = true
            break
        end
        local record = redis.call('HMGET', ARGV[1] .. entries[i],
            'state', 'completed_at', 'fence', 'events')
        local completed_at = tonumber(record[2])
        if record[1] == 'completed' and completed_at and completed_at >= since then
            found[#found + 1] = {completed_at, tonumber(record[3]), record[4]}
            last = score
        end
    end
    offset = offset + #entries / 2
end
table.sort(found, function(a, b)
    if a[1] ~= b[1] then
        return a[1] < b[1]
    end
    return a[2] < b[2]
end)
local out = {}
for i, entry in ipairs(found) do
    out[i] = entry[3]
end
return out
";

/// Deletes records whose `expires_at` is at or before now, one batch of the expiry index.
///
/// KEYS: expiry index, pending index, history index. ARGV: now, batch size, record key
/// prefix.
/// Returns `{entries looked at, records deleted}`.
const PURGE_BATCH: &str = r"
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local removed = 0
for _, id in ipairs(ids) do
    local key = ARGV[3] .. id
    local record = redis.call('HMGET', key, 'expires_at', 'fence')
    if record[1] and tonumber(record[1]) > now then
        redis.call('ZADD', KEYS[1], record[1], id)
    else
        if record[1] then
            local fence = record[2] or ''
            redis.call('ZREM', KEYS[2], string.rep('0', 20 - #fence) .. fence .. ':' .. id)
            redis.call('DEL', key)
            removed = removed + 1
        end
        redis.call('ZREM', KEYS[3], id)
        redis.call('ZREM', KEYS[1], id)
    end
end
return {#ids, removed}
";

/// Every script of the store, hashed once.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) claim: Script,
    pub(crate) complete: Script,
    pub(crate) release: Script,
    pub(crate) mark_published: Script,
    pub(crate) pending_events: Script,
    pub(crate) events_since: Script,
    pub(crate) purge_batch: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            claim: Script::new(CLAIM),
            complete: Script::new(COMPLETE),
            release: Script::new(RELEASE),
            mark_published: Script::new(MARK_PUBLISHED),
            pending_events: Script::new(PENDING_EVENTS),
            events_since: Script::new(EVENTS_SINCE),
            purge_batch: Script::new(PURGE_BATCH),
        }
    }
}
