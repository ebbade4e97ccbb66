//! The server-side steps: each is one Lua script, so a step is atomic on Redis and costs one round
//! trip (`EVALSHA`; [`::redis::Script`] falls back to `EVAL` and caches the script on `NOSCRIPT`).
//!
//! Every script that reads the time takes it from Redis's `TIME`, never the sidecar's clock (a fleet
//! shares one clock that way), plus `offset` milliseconds: 0 in service, moved forward by tests so that
//! a ttl or a lease can run out without waiting. Expiry is decided by a record's own `e` (expires at,
//! in that time); the key's `PEXPIRE` of the same length frees its memory, never earlier than `e`
//! (the offset only grows).
//!
//! Every step is safe to run again after a lost reply (see each script).

use std::sync::LazyLock;

use ::redis::Script;

/// The time in milliseconds, as every script reads it.
macro_rules! now_ms {
    ($offset:literal) => {
        concat!(
            "local clock = redis.call('TIME')\n",
            "local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) + tonumber(ARGV[",
            $offset,
            "])\n"
        )
    };
}

/// Claims a record (see `records.rs` for the fields and the index).
///
/// KEYS: the record, its route's index. ARGV: fingerprint, token, lease ms, first provider (`""`:
/// none), ttl ms, offset, the record's name in the index. Answers `{'new'}`, `{'inflight'}`,
/// `{'mismatch'}`, `{'replay', answer}` or `{'resume', provider, kept}` (`kept` nil when the record
/// keeps nothing). A claimed record is in the index, scored by its lease end: from then on, if its
/// holder dies, it may be unknown. A resumed record carries what it kept (`k`, `n`) into its claim.
///
/// Run again after its first run applied (the reply was lost), the claim finds the record in flight
/// under its own token and answers as the first run did (`new`, or `resume` at the same provider
/// with the same kept request): a claim never blocks itself.
pub(super) static BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms!("6"),
        r#"
local k = KEYS[1]
local r = redis.call('HMGET', k, 'f', 's', 'a', 'r', 't', 'l', 'e', 'k', 'n')
local f, s, a, resumed, token, lease_until, expires = r[1], r[2], r[3], r[4], r[5], r[6], r[7]
local kept, next_ms = r[8], r[9]
if s and (s == 'x' or not expires or tonumber(expires) <= now) then
  s = nil
end
local function claim(attempt, again, keep)
  local ttl = tonumber(ARGV[5])
  local lease_end = now + tonumber(ARGV[3])
  redis.call('DEL', k)
  redis.call('HSET', k, 'f', ARGV[1], 's', 'i', 'a', attempt, 'r', again, 't', ARGV[2],
    'l', lease_end, 'e', now + ttl)
  if keep and kept then
    redis.call('HSET', k, 'k', kept, 'n', next_ms)
  end
  redis.call('PEXPIRE', k, ttl)
  redis.call('ZADD', KEYS[2], lease_end, ARGV[7])
end
if s then
  if f ~= ARGV[1] then
    return {'mismatch'}
  end
  if s == 'i' then
    if token == ARGV[2] then
      if resumed == '1' then
        return {'resume', a, kept}
      end
      return {'new'}
    end
    if tonumber(lease_until) > now then
      return {'inflight'}
    end
    if a and a ~= '' then
      claim(a, '1', true)
      return {'resume', a, kept}
    end
  elseif s == 'd' then
    return {'replay', redis.call('HGET', k, 'b')}
  elseif s == 'u' then
    claim(a, '1', true)
    return {'resume', a, kept}
  end
end
claim(ARGV[4], '0', false)
return {'new'}
"#
    ))
});

/// Records the provider the held operation's next attempt goes to.
///
/// KEYS: the record. ARGV: token, provider, offset. Answers 1, or 0 when the record is not held
/// under `token` (fenced). Run again, it writes the same provider again.
pub(super) static ATTEMPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms!("3"),
        r#"
local k = KEYS[1]
local r = redis.call('HMGET', k, 's', 't', 'e')
if r[1] == 'i' and r[2] == ARGV[1] and tonumber(r[3]) > now then
  redis.call('HSET', k, 'a', ARGV[2])
  return 1
end
return 0
"#
    ))
});

/// Ends the held operation.
///
/// KEYS: the record, its route's index. ARGV: token, how (`final`, `unknown`, `nothing`), the
/// answer or the provider, ttl ms, offset, what to keep (`""`: what the record had), when the
/// resolver tries next (ms; with what to keep), the record's name in the index. Answers 1, or 0
/// when the record is not held under `token` (fenced).
///
/// A record settled unknown keeps its request (`k`, `n`: the new one, else the one it had) and is
/// scored in the index by `n` (0 when it keeps nothing); a final answer or a release drops both
/// the request and the index entry. A resumed operation that sent nothing is unknown again, as it
/// was, with what it kept.
///
/// The settled record keeps the token that settled it (`ft`); a record that is dropped (nothing was
/// sent) is left as a short-lived tombstone (`s = x`, taken for no record by `BEGIN`) holding it too.
/// Run again after its first run applied, the step finds its own token there and answers 1 again,
/// changing nothing.
pub(super) static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms!("5"),
        r#"
local k = KEYS[1]
local r = redis.call('HMGET', k, 'f', 's', 'a', 'r', 't', 'ft', 'k', 'n')
local f, s, a, resumed, token, settled_by = r[1], r[2], r[3], r[4], r[5], r[6]
local kept, next_ms = r[7], r[8]
if s ~= 'i' or token ~= ARGV[1] then
  if s and s ~= 'i' and settled_by == ARGV[1] then
    return 1
  end
  return 0
end
local ttl = tonumber(ARGV[4])
local how, value = ARGV[2], ARGV[3]
if how == 'nothing' and resumed == '1' and a and a ~= '' then
  how, value = 'unknown', a
end
if how == 'unknown' and ARGV[6] ~= '' then
  kept, next_ms = ARGV[6], ARGV[7]
end
redis.call('DEL', k)
if how == 'final' then
  redis.call('HSET', k, 'f', f, 's', 'd', 'b', value, 'e', now + ttl, 'ft', ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[8])
elseif how == 'unknown' then
  redis.call('HSET', k, 'f', f, 's', 'u', 'a', value, 'e', now + ttl, 'ft', ARGV[1])
  local score = 0
  if kept then
    redis.call('HSET', k, 'k', kept, 'n', next_ms)
    score = next_ms
  end
  redis.call('ZADD', KEYS[2], score, ARGV[8])
else
  ttl = 60000
  redis.call('HSET', k, 's', 'x', 'e', now + ttl, 'ft', ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[8])
end
redis.call('PEXPIRE', k, ttl)
return 1
"#
    ))
});

/// Lists up to `limit` records of a route that may be unknown, walking its index from the lowest
/// score: records settled unknown, and records in flight past their lease after an attempt was
/// recorded (their holder died).
///
/// KEYS: the route's index. ARGV: the records' key prefix (`sy:r:{route:`), limit, offset, how
/// many index entries to look at at most. Answers a flat array, three items per record: its name,
/// its provider, what it keeps (nil when nothing). Entries whose record has expired, was released
/// or has a final answer are removed from the index on the way; nothing else is written, so it is
/// safe to run again. It reads records it is not given as KEYS (their names are in the index): see
/// the module docs of `records.rs` on Redis Cluster.
pub(super) static UNKNOWNS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms!("3"),
        r#"
local prefix, limit, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local out, gone = {}, {}
local found, seen, at = 0, 0, 0
while found < limit and seen < budget do
  local batch = redis.call('ZRANGE', KEYS[1], at, at + 99)
  if #batch == 0 then
    break
  end
  for _, name in ipairs(batch) do
    seen = seen + 1
    local r = redis.call('HMGET', prefix .. name .. '}', 's', 'a', 'l', 'e', 'k')
    local s, a, lease_until, expires, kept = r[1], r[2], r[3], r[4], r[5]
    if not s or s == 'x' or s == 'd' or not expires or tonumber(expires) <= now then
      gone[#gone + 1] = name
    elseif a and a ~= '' and (s == 'u' or (s == 'i' and tonumber(lease_until) <= now)) then
      out[#out + 1] = name
      out[#out + 1] = a
      out[#out + 1] = kept
      found = found + 1
      if found >= limit then
        break
      end
    end
    if seen >= budget then
      break
    end
  end
  at = at + #batch
end
for i = 1, #gone, 100 do
  redis.call('ZREM', KEYS[1], unpack(gone, i, math.min(i + 99, #gone)))
end
return out
"#
    ))
});

/// Pins an object: KEYS: the pin. ARGV: provider, ttl ms, offset. The value is the provider, a
/// newline, and when the pin ends.
pub(super) static PIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms!("3"),
        r#"
redis.call('SET', KEYS[1], ARGV[1] .. '\n' .. (now + tonumber(ARGV[2])), 'PX', ARGV[2])
return 1
"#
    ))
});

/// Starts delivering a webhook event.
///
/// KEYS: the event. ARGV: token, lease ms, offset. The value is `d <until>` (delivered) or
/// `i <until> <token>` (in flight). Answers `{'deliver'}`, `{'duplicate'}` or `{'wait'}`. Run again
/// after it applied, it finds its own token and answers `deliver` again.
pub(super) static EVENT_BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms!("3"),
        r#"
local v = redis.call('GET', KEYS[1])
if v then
  local kind, untils, token = string.match(v, '^(%a) (%d+) ?(%d*)$')
  if kind and tonumber(untils) > now then
    if kind == 'd' then
      return {'duplicate'}
    end
    if token == ARGV[1] then
      return {'deliver'}
    end
    return {'wait'}
  end
end
redis.call('SET', KEYS[1], 'i ' .. (now + tonumber(ARGV[2])) .. ' ' .. ARGV[1], 'PX', ARGV[2])
return {'deliver'}
"#
    ))
});

/// Ends a webhook delivery: KEYS: the event. ARGV: token, ttl ms (0: forget the id), offset. Only
/// the delivery in flight under `token` changes anything; answers 1 when it did.
pub(super) static EVENT_FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms!("3"),
        r#"
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
local kind, untils, token = string.match(v, '^(%a) (%d+) ?(%d*)$')
if kind ~= 'i' or token ~= ARGV[1] then
  return 0
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], 'd ' .. (now + ttl), 'PX', ttl)
else
  redis.call('DEL', KEYS[1])
end
return 1
"#
    ))
});

/// Takes one slot of a provider's quota: GCRA on Redis time, in microseconds.
///
/// KEYS: the quota. ARGV: emission interval µs (1 s / rate), burst, offset ms. The key holds the
/// theoretical arrival time. Answers `{1}` (taken) or `{0, µs until one is free}` (nothing taken).
pub(super) static QUOTA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2]) + tonumber(ARGV[3]) * 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local next_tat = tat + interval
local allowed_at = next_tat - burst * interval
if allowed_at > now then
  return {0, allowed_at - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return {1}
"#,
    )
});

/// The fleet's epoch: KEYS: `sy:epoch`. ARGV: a new random id. Answers `{id, 1}` when it set the
/// id (there was none: a new Redis, or one that forgot), else `{id, 0}`.
pub(super) static EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local e = redis.call('GET', KEYS[1])
if e then
  return {e, 0}
end
redis.call('SET', KEYS[1], ARGV[1])
return {ARGV[1], 1}
"#,
    )
});
