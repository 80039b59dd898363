//! Limits kept in Redis: each decision is one `EVALSHA` of a script that reads the Redis
//! server's clock (`TIME`), so every client, whatever its own clock says, is judged on the same
//! time, and the read-decide-write happens atomically on the server.

use std::time::Duration;

use derive_setters::Setters;
use redis::Script;
use redis::aio::ConnectionManager;

use crate::decision::micros;
use crate::{Algorithm, Decision, FailMode, LimitError, Policy};

/// Reads the server's time in microseconds into `now`. Lua numbers are doubles, exact to 2^53
/// (about 285 years of microseconds); large ones are passed to Redis through
/// `string.format('%d', ...)`, since Lua would print them in exponent notation.
const NOW: &str =
    "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n";

/// GCRA: KEYS[1] holds the theoretical arrival time. ARGV: emission µs, burst, cost.
const GCRA: &str = r"
local e = tonumber(ARGV[1]); local burst = tonumber(ARGV[2]); local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + e * cost
local tol = e * burst
if new - now <= tol then
  redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.floor((new - now) / 1000) + 1000)
  return {1, math.floor((tol - (new - now)) / e), new - now, 0, now}
end
return {0, math.floor((tol - (tat - now)) / e), tat - now, new - now - tol, now}
";

/// Fixed window: one counter per window, KEYS[1]..':'..window. ARGV: period µs, limit, cost.
const FIXED: &str = r"
local period = tonumber(ARGV[1]); local limit = tonumber(ARGV[2]); local cost = tonumber(ARGV[3])
local w = math.floor(now / period)
local k = KEYS[1] .. ':' .. string.format('%d', w)
local count = tonumber(redis.call('GET', k) or '0')
local reset = (w + 1) * period - now
if count + cost <= limit then
  count = redis.call('INCRBY', k, cost)
  redis.call('PEXPIRE', k, math.floor(reset / 1000) + 1000)
  return {1, limit - count, reset, 0, now}
end
return {0, limit - count, reset, reset, now}
";

/// Sliding log: a sorted set of admissions (member 'time:seq:cost', score time), their total
/// in KEYS[1]..':sum' and a sequence in KEYS[1]..':seq'. ARGV: period µs, limit, cost.
const LOG: &str = r"
local period = tonumber(ARGV[1]); local limit = tonumber(ARGV[2]); local cost = tonumber(ARGV[3])
local sum_key = KEYS[1] .. ':sum'; local seq_key = KEYS[1] .. ':seq'
local cutoff = string.format('%d', now - period)
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
local used = tonumber(redis.call('GET', sum_key) or '0')
for _, m in ipairs(old) do used = used - tonumber(string.match(m, ':(%d+)$')) end
if #old > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff) end
if used < 0 then used = 0 end
local ttl = math.floor(period / 1000) + 1000
local allowed = 0
if used + cost <= limit then
  local seq = redis.call('INCR', seq_key)
  redis.call('ZADD', KEYS[1], string.format('%d', now), string.format('%d', now) .. ':' .. seq .. ':' .. cost)
  used = used + cost
  allowed = 1
end
redis.call('SET', sum_key, used, 'PX', ttl)
redis.call('PEXPIRE', KEYS[1], ttl); redis.call('PEXPIRE', seq_key, ttl)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local reset = 0
if #last > 0 then reset = tonumber(last[2]) + period - now end
if allowed == 1 then return {1, limit - used, reset, 0, now} end
local freed = 0; local at = now
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  freed = freed + tonumber(string.match(entries[i], ':(%d+)$'))
  at = tonumber(entries[i + 1]) + period
  if used - freed + cost <= limit then break end
end
return {0, limit - used, reset, at - now, now}
";

/// Sliding-window counter: a hash with the window, the previous and current counts. ARGV:
/// period µs, limit, cost.
const SLIDING: &str = r"
local period = tonumber(ARGV[1]); local limit = tonumber(ARGV[2]); local cost = tonumber(ARGV[3])
local w = math.floor(now / period)
local s = redis.call('HMGET', KEYS[1], 'w', 'p', 'c')
local sw = tonumber(s[1]); local prev = tonumber(s[2] or '0'); local cur = tonumber(s[3] or '0')
if sw ~= w then
  if sw == w - 1 then prev = cur else prev = 0 end
  cur = 0
end
local elapsed = now - w * period
local weighted = prev * (period - elapsed) / period
local allowed = 0
if weighted + cur + cost <= limit then cur = cur + cost; allowed = 1 end
redis.call('HSET', KEYS[1], 'w', string.format('%d', w), 'p', prev, 'c', cur)
redis.call('PEXPIRE', KEYS[1], math.floor(2 * period / 1000) + 1000)
local remaining = math.floor(limit - weighted - cur)
if remaining < 0 then remaining = 0 end
local reset = (w + 2) * period - now
if allowed == 1 then return {1, remaining, reset, 0, now} end
local excess = weighted + cur + cost - limit
local wait = period - elapsed
if prev > 0 then
  local by_prev = math.ceil(excess * period / prev)
  if by_prev <= wait then wait = by_prev end
end
return {0, remaining, reset, wait, now}
";

/// A keyed limiter whose state lives in Redis, shared by every process that uses the same
/// Redis, key prefix and policy.
#[derive(Clone, Setters, derive_more::Debug)]
#[setters(generate = false, prefix = "with_")]
pub struct RedisLimiter {
    #[debug(skip)]
    conn: ConnectionManager,
    policy: Policy,
    prefix: String,
    #[debug(skip)]
    script: Script,
    /// What to decide when Redis cannot be asked.
    #[setters(generate)]
    fail_mode: FailMode,
    /// How long Redis may take per decision before the limiter falls back.
    #[setters(generate)]
    #[debug(skip)]
    timeout: Duration,
}

impl RedisLimiter {
    /// A limiter for `policy` over `conn`, with its keys under `prefix` (one prefix per
    /// policy: two policies must not share keys). Fails open after a 250 ms timeout unless
    /// told otherwise.
    pub fn new(conn: ConnectionManager, policy: Policy, prefix: impl Into<String>) -> Self {
        let body = match policy.algorithm() {
            Algorithm::Gcra => GCRA,
            Algorithm::FixedWindow => FIXED,
            Algorithm::SlidingLog => LOG,
            Algorithm::SlidingWindow => SLIDING,
        };
        Self {
            conn,
            policy,
            prefix: prefix.into(),
            script: Script::new(&format!("{NOW}{body}")),
            fail_mode: FailMode::Open,
            timeout: Duration::from_millis(250),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks `cost` units for `key` in one round trip.
    pub async fn check(&self, key: &str, cost: u64) -> Result<Decision, LimitError> {
        self.policy.check_cost(cost)?;
        let mut invocation = self.script.key(format!("{}{key}", self.prefix));
        match self.policy.algorithm() {
            Algorithm::Gcra => invocation
                .arg(self.policy.emission_us())
                .arg(self.policy.burst()),
            _ => invocation
                .arg(self.policy.period_us())
                .arg(self.policy.limit()),
        };
        invocation.arg(cost);
        let mut conn = self.conn.clone();
        let answer: Result<Result<Vec<i64>, redis::RedisError>, _> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await;
        let failure = match answer {
            Ok(Ok(v)) if v.len() == 5 => {
                return Ok(Decision {
                    allowed: v[0] == 1,
                    limit: self.policy.limit(),
                    remaining: u64::try_from(v[1]).unwrap_or(0),
                    reset_after: micros(v[2]),
                    retry_after: (v[0] != 1).then(|| micros(v[3])),
                    fallback: None,
                    decided_at_us: Some(v[4]),
                });
            }
            Ok(Ok(v)) => format!("the script answered {v:?}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        self.fail_mode.decide(&self.policy, failure)
    }
}

/// Concurrency in Redis: KEYS[1] is a sorted set of permits scored by their expiry on the
/// Redis clock. ARGV: max, permit lifetime µs.
const ACQUIRE: &str = r"
local max = tonumber(ARGV[1]); local life = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
local n = redis.call('ZCARD', KEYS[1])
if n >= max then return {0, n, 0} end
local id = redis.call('INCR', KEYS[1] .. ':seq')
redis.call('ZADD', KEYS[1], string.format('%d', now + life), id)
local ttl = math.floor(life / 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ttl); redis.call('PEXPIRE', KEYS[1] .. ':seq', ttl)
return {1, n + 1, id}
";

/// At most `max` requests in flight per key across every process using the same Redis and
/// prefix. A permit that is never released (its holder crashed) lapses after its lifetime,
/// so a crash cannot hold a slot forever; a request running longer than the lifetime stops
/// being counted, so choose it longer than the slowest request.
#[derive(Clone, derive_more::Debug)]
pub struct RedisConcurrencyLimiter {
    #[debug(skip)]
    conn: ConnectionManager,
    max: u64,
    lifetime: Duration,
    prefix: String,
    #[debug(skip)]
    acquire: Script,
}

/// A request in flight, counted in Redis until [`release`](RedisPermit::release)d (or until
/// its lifetime runs out).
#[derive(Debug)]
pub struct RedisPermit {
    conn: ConnectionManager,
    key: String,
    id: i64,
}

impl RedisPermit {
    /// Ends the request.
    pub async fn release(self) -> Result<(), LimitError> {
        let mut conn = self.conn.clone();
        redis::cmd("ZREM")
            .arg(&self.key)
            .arg(self.id)
            .query_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| LimitError::Store(e.to_string()))
    }
}

impl RedisConcurrencyLimiter {
    /// At most `max` (1 to 1,000,000) in flight per key, each permit lapsing after `lifetime`
    /// (1 ms to 24 h) if not released.
    pub fn new(
        conn: ConnectionManager,
        max: u64,
        lifetime: Duration,
        prefix: impl Into<String>,
    ) -> Result<Self, LimitError> {
        if max == 0 || max > crate::MAX_LIMIT {
            return Err(LimitError::Invalid(format!(
                "max in flight {max} is out of range: use 1 to {}",
                crate::MAX_LIMIT
            )));
        }
        if lifetime < crate::MIN_PERIOD || lifetime > crate::MAX_PERIOD {
            return Err(LimitError::Invalid(
                "permit lifetime is out of range: use 1 ms to 24 h".to_owned(),
            ));
        }
        Ok(Self {
            conn,
            max,
            lifetime,
            prefix: prefix.into(),
            acquire: Script::new(&format!("{NOW}{ACQUIRE}")),
        })
    }

    /// A permit for `key` if fewer than `max` are in flight, or how saturated it is. One
    /// round trip.
    pub async fn try_acquire(
        &self,
        key: &str,
    ) -> Result<Result<RedisPermit, crate::Saturated>, LimitError> {
        if key.is_empty() {
            return Err(LimitError::Invalid("the key is empty".to_owned()));
        }
        let key = format!("{}{key}", self.prefix);
        let mut conn = self.conn.clone();
        let life = i64::try_from(self.lifetime.as_micros()).unwrap_or(i64::MAX);
        let v: Vec<i64> = self
            .acquire
            .key(&key)
            .arg(self.max)
            .arg(life)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LimitError::Store(e.to_string()))?;
        match v.as_slice() {
            [1, _, id] => Ok(Ok(RedisPermit {
                conn: self.conn.clone(),
                key,
                id: *id,
            })),
            [_, n, _] => Ok(Err(crate::Saturated {
                max: self.max,
                in_flight: u64::try_from(*n).unwrap_or(0),
            })),
            other => Err(LimitError::Store(format!("the script answered {other:?}"))),
        }
    }
}
