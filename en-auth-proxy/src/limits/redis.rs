//! [`RedisLimits`]: the proxy's limits in Redis, shared by every instance of a fleet.
//!
//! Every operation is one atomic round trip (a `MULTI` pipeline or a Lua script):
//! - windows: `INCRBY` + `PEXPIRE` (Lua) on a key per window *index* (`now / window`, with
//!   `now` from the caller), so every instance counts the same window and a caller on paused
//!   time still gets its own windows;
//! - remembered sets: `ZADD` with the time as score, `ZREMRANGEBYRANK` down to the cap,
//!   `PEXPIRE`, `ZCARD` (the members after adding); `ZREM` to forget one;
//! - deadlines: the later of the stored and the new one (Lua), expiring at it (`PXAT`);
//! - budgets: a hash `{r: remaining, t: reset}` expiring at the reset; a take decrements only
//!   above `keep` (Lua).
//!
//! What Redis holds is checked on every read, since anyone with write access to it (or a bug)
//! could have put anything there: a count or time that is not a non-negative integer, a
//! value of another type, a deadline or budget reset further ahead than the caller's cap
//! (plus 5 s for clocks) is corrupt. The scripts delete it and go on without it, and one
//! warning names the key; a command that fails on a key's type or format anyway (`WRONGTYPE`
//! on a remembered set) deletes that key too. So a bad value costs at most one call, never a
//! block that outlives its cap or a fleet that stops sharing its limits.
//!
//! Keys are `en-auth-proxy:<namespace>:<kind>:<caller's key>`; the namespace is an HMAC-SHA256
//! of a fixed label under the fleet key, truncated to 8 bytes, so two fleets with different
//! keys on one Redis never mix their limits, and nobody can tell from Redis which fleet a key
//! belongs to. Callers put client ids in keys (they are not secrets), secrets only as MACs.
//!
//! Redis expires keys on its own clock; callers' times decide which window or deadline is
//! current. A command that does not answer within the command timeout (default 100 ms)
//! fails: wrap the store in [`FallbackLimits`](super::FallbackLimits) so that such a failure
//! falls back to this process's limits instead of failing a request.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use async_trait::async_trait;
use en_auth_core::{Error, FLEET_KEY_ENV, FleetKey};
use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

use super::{Budget, LimitStore, Mac, Recall, UnixMillis};

/// Default timeout of one Redis command: short, because a request waits for it.
pub const DEFAULT_LIMITS_TIMEOUT: Duration = Duration::from_millis(100);

/// Every key starts with this, then the fleet's namespace.
pub const KEY_PREFIX: &str = "en-auth-proxy";

/// The label the namespace is derived with from the fleet key.
const NAMESPACE_LABEL: &[u8] = b"en-auth-proxy limits namespace v1";

/// Clock differences between instances: windows outlive their end by this much in Redis, and
/// a deadline or reset may be this much further ahead than a caller's cap.
const CLOCK_SLACK_MS: u64 = 5_000;

/// The Lua function every script reads stored numbers with: a non-negative integer of at most
/// 15 digits (what no limit ever exceeds, and what Lua's numbers hold exactly), else `nil`.
/// Anything else (a negative number, a fraction, text, a value of another type, which
/// `redis.pcall` answers with an error table) was written by no instance.
const INT_FN: &str = r"
local function int(v)
  if type(v) ~= 'string' or string.len(v) > 15 or not string.match(v, '^%d+$') then
    return nil
  end
  return tonumber(v)
end
";

/// Counts: `ARGV[1]` added (0 reads), the key kept for `ARGV[2]` ms. A stored count that is
/// not a non-negative integer is corrupt: deleted, and the window counted afresh. Returns
/// `{count, corrupt}`.
const COUNT_SCRIPT: &str = r"
local v = redis.pcall('GET', KEYS[1])
local corrupt = 0
if v and not int(v) then
  redis.call('DEL', KEYS[1])
  corrupt = 1
  v = false
end
local ttl = tonumber(ARGV[2])
if ARGV[1] == '0' then
  if not v then return {0, corrupt} end
  local left = redis.call('PTTL', KEYS[1])
  if left < 0 or left > ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
  return {int(v), corrupt}
end
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return {n, corrupt}";

/// Moves the deadline to `ARGV[1]` unless it is later already; a stored value that is not a
/// time is overwritten.
const HOLD_SCRIPT: &str = r"
local current = int(redis.pcall('GET', KEYS[1])) or 0
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[1])
end
return 0";

/// The deadline if it is after `ARGV[1]` (now). One that is not a time, or later than
/// `ARGV[2]` (now + the caller's cap + the clock slack), is corrupt: deleted. Returns
/// `{deadline or 0, corrupt}`.
const HELD_SCRIPT: &str = r"
local v = redis.pcall('GET', KEYS[1])
if not v then return {0, 0} end
local until_ = int(v)
if not until_ or until_ > tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return {0, 1}
end
if until_ <= tonumber(ARGV[1]) then return {0, 0} end
return {until_, 0}";

const SET_BUDGET_SCRIPT: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'r', ARGV[1], 't', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 0";

/// Takes one from the budget unless only `ARGV[1]` (keep) remain; `ARGV[2]` is now. A budget
/// that is not a hash of two non-negative integers, or whose reset is later than `ARGV[3]`
/// (now + the caller's cap + the clock slack), is corrupt: deleted. Returns
/// `{1 taken | 0 spent | -1 unknown, remaining or reset, corrupt}`.
const TAKE_BUDGET_SCRIPT: &str = r"
local v = redis.pcall('HMGET', KEYS[1], 'r', 't')
if v['err'] then
  redis.call('DEL', KEYS[1])
  return {-1, 0, 1}
end
if not v[1] and not v[2] then return {-1, 0, 0} end
local remaining = int(v[1])
local reset = int(v[2])
if not remaining or not reset or reset > tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[1])
  return {-1, 0, 1}
end
if reset <= tonumber(ARGV[2]) then return {-1, 0, 0} end
if remaining > tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'r', -1)
  return {1, remaining - 1, 0}
end
return {0, reset, 0}";

/// The scripts, each with [`INT_FN`] before it, hashed once.
struct Scripts {
    count: ::redis::Script,
    hold: ::redis::Script,
    held: ::redis::Script,
    set_budget: ::redis::Script,
    take_budget: ::redis::Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let script = |body: &str| ::redis::Script::new(&format!("{INT_FN}{body}"));
    Scripts {
        count: script(COUNT_SCRIPT),
        hold: script(HOLD_SCRIPT),
        held: script(HELD_SCRIPT),
        set_budget: script(SET_BUDGET_SCRIPT),
        take_budget: script(TAKE_BUDGET_SCRIPT),
    }
});

/// Configures a [`RedisLimits`].
pub struct RedisLimitsBuilder {
    url: String,
    fleet_key: Option<Result<SecretSlice<u8>, Error>>,
    command_timeout: Duration,
    connect_timeout: Duration,
    tls_root: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisLimitsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimitsBuilder")
            .field("url", &en_auth_redis::redact_url(&self.url))
            .field("fleet_key", &self.fleet_key.as_ref().map(|_| "[REDACTED]"))
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLimitsBuilder {
    /// The fleet key (at least 32 bytes, the same on every instance): the key namespace is
    /// derived from it. Without this call, [`connect`](Self::connect) reads
    /// [`FLEET_KEY_ENV`].
    pub fn fleet_key(mut self, key: impl AsRef<[u8]>) -> Self {
        let key = key.as_ref();
        self.fleet_key = Some(FleetKey::new(key).map(|_| SecretSlice::from(key.to_vec())));
        self
    }

    /// Timeout of every command (default [`DEFAULT_LIMITS_TIMEOUT`], 100 ms).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Timeout of one connection attempt (default 1 s; a command still waits at most the
    /// command timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// For `rediss://` URLs: trust only this CA certificate (PEM).
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root = Some(pem.into());
        self
    }

    /// The store. Fails on configuration errors only (no or a short fleet key, a malformed
    /// URL); an unreachable Redis is logged as a warning, not an error: the connection is
    /// re-made on use after failures.
    pub async fn connect(self) -> Result<RedisLimits, Error> {
        let fleet_key = match self.fleet_key {
            Some(key) => key?,
            None => fleet_key_from_env()?,
        };
        let (_, manager) = en_auth_redis::connect_lazily(
            &self.url,
            self.tls_root,
            self.command_timeout,
            self.connect_timeout,
        )?;
        let namespace = namespace(fleet_key.expose_secret());
        let limits = RedisLimits {
            manager,
            prefix: format!("{KEY_PREFIX}:{namespace}"),
            command_timeout: self.command_timeout,
            commands: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        };
        let mut conn = limits.manager.clone();
        let ping = limits
            .run("ping", async move {
                ::redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await;
        if let Err(err) = ping {
            tracing::warn!(
                error = %err, url = %en_auth_redis::redact_url(&self.url),
                "Redis is not reachable for the proxy's limits; each instance uses its own \
                 until it answers"
            );
        }
        Ok(limits)
    }
}

/// The fleet key from [`FLEET_KEY_ENV`], checked as the token store checks it.
fn fleet_key_from_env() -> Result<SecretSlice<u8>, Error> {
    let value = std::env::var(FLEET_KEY_ENV).ok();
    FleetKey::from_env_value(value.as_deref())?;
    Ok(SecretSlice::from(value.unwrap_or_default().into_bytes()))
}

/// The fleet's namespace: 8 bytes of HMAC-SHA256(fleet key, label), in hex.
fn namespace(fleet_key: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(fleet_key)
        .expect("HMAC takes keys of any length");
    mac.update(NAMESPACE_LABEL);
    hex(&mac.finalize().into_bytes()[..8])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The proxy's limits in Redis, shared by every instance with the same fleet key.
///
/// Each [`LimitStore`] operation is one atomic round trip (a `MULTI` pipeline or a Lua
/// script) on keys `en-auth-proxy:<namespace>:<kind>:<caller's key>`, the namespace derived
/// from the fleet key (two fleets on one Redis never mix). Windows are keyed by their index
/// from the caller's time, so instances agree on them; deadlines and budgets expire in Redis
/// at the caller's deadline or reset. Each command fails after the command timeout (default
/// [`DEFAULT_LIMITS_TIMEOUT`]): wrap the store in [`FallbackLimits`](super::FallbackLimits)
/// so that a failure falls back to the instance's own limits.
pub struct RedisLimits {
    manager: ConnectionManager,
    prefix: String,
    command_timeout: Duration,
    commands: AtomicU64,
    errors: AtomicU64,
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits")
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("commands", &self.commands.load(Ordering::Relaxed))
            .field("errors", &self.errors.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisLimits {
    /// Starts configuring a store for `url` (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://…` for TLS).
    pub fn builder(url: impl Into<String>) -> RedisLimitsBuilder {
        RedisLimitsBuilder {
            url: url.into(),
            fleet_key: None,
            command_timeout: DEFAULT_LIMITS_TIMEOUT,
            connect_timeout: Duration::from_secs(1),
            tls_root: None,
        }
    }

    /// `en-auth-proxy:<namespace>`: the start of every key this store writes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Commands sent so far, and how many of them failed or timed out.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.commands.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}:{kind}:{key}", self.prefix)
    }

    /// Runs one command within the command timeout.
    async fn run<T>(
        &self,
        op: &'static str,
        command: impl std::future::Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        self.commands.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.command_timeout, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(Error::Store {
                    message: format!("Redis limits: {op} failed: {err}"),
                    source: Some(Box::new(err)),
                })
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(Error::Store {
                    message: format!(
                        "Redis limits: {op} timed out after {} ms",
                        self.command_timeout.as_millis()
                    ),
                    source: None,
                })
            }
        }
    }
}

impl RedisLimits {
    /// [`run`](Self::run) for a command on `key`: when it fails because of what `key` holds
    /// (a value of another type, or one that does not parse; see [`is_key_error`]), the key
    /// is deleted, so that the next command finds it absent instead of failing again.
    async fn run_key<T>(
        &self,
        op: &'static str,
        key: &str,
        command: impl std::future::Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        let result = self.run(op, command).await;
        if let Err(err) = &result {
            if is_key_error(err) {
                let mut conn = self.manager.clone();
                let deleted = self
                    .run("delete", async move {
                        ::redis::cmd("DEL")
                            .arg(key)
                            .query_async::<i64>(&mut conn)
                            .await
                    })
                    .await;
                tracing::warn!(
                    key, op, error = %err, deleted = deleted.is_ok(),
                    "Redis limits: a key holds a value no instance writes (another type, or \
                     not a number); deleted it, this call is answered from this instance's memory"
                );
            }
        }
        result
    }
}

/// Logs one key that a script found corrupt and deleted.
fn corrupt_value(op: &'static str, key: &str) {
    tracing::warn!(
        key,
        op,
        "Redis limits: a key held a value no instance writes (not a non-negative integer, or \
         a time further ahead than any limit holds); deleted it and went on without it"
    );
}

/// Whether `err` (from a [`RedisLimits`] call) is about what one key holds, not about Redis
/// being unavailable: a value of the wrong type (`WRONGTYPE`), one that does not parse as the
/// type asked for, or that a command cannot count with (`ERR value is not an integer`,
/// `… overflow`). Such an error must not make the instance stop using Redis for every key.
pub(crate) fn is_key_error(err: &Error) -> bool {
    let Error::Store {
        source: Some(source),
        ..
    } = err
    else {
        return false;
    };
    let Some(err) = source.downcast_ref::<::redis::RedisError>() else {
        return false;
    };
    match err.kind() {
        ::redis::ErrorKind::UnexpectedReturnType => true,
        ::redis::ErrorKind::Extension
        | ::redis::ErrorKind::Server(::redis::ServerErrorKind::ResponseError) => {
            let text = err.to_string();
            err.code() == Some("WRONGTYPE")
                || text.contains("WRONGTYPE")
                || text.contains("not an integer")
                || text.contains("not a valid float")
                || text.contains("would overflow")
        }
        _ => false,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A count or time for Redis, whose integers are signed 64-bit.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[async_trait]
impl LimitStore for RedisLimits {
    async fn add(
        &self,
        key: &str,
        window: Duration,
        now: UnixMillis,
        add: u64,
    ) -> Result<u64, Error> {
        let window_ms = millis(window).max(1);
        let index = now / window_ms;
        let key = self.key("w", &format!("{key}:{index}"));
        // Kept until the window ends (by the caller's clock) and a little longer.
        let end = index.saturating_add(1).saturating_mul(window_ms);
        let ttl = end.saturating_sub(now).saturating_add(CLOCK_SLACK_MS);
        let mut conn = self.manager.clone();
        let op = if add == 0 { "read" } else { "add" };
        let script_key = key.clone();
        let (count, corrupt): (i64, i64) = self
            .run_key(op, &key, async move {
                SCRIPTS
                    .count
                    .key(script_key)
                    .arg(int(add))
                    .arg(int(ttl))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if corrupt != 0 {
            corrupt_value(op, &key);
        }
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn remember(
        &self,
        key: &str,
        member: Mac,
        cap: usize,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<u64, Error> {
        let key = self.key("s", key);
        let keep = i64::try_from(cap).unwrap_or(i64::MAX);
        let ttl = int(millis(ttl).max(1));
        let mut conn = self.manager.clone();
        let script_key = key.clone();
        let (count,): (u64,) = self
            .run_key("remember", &key, async move {
                let key = script_key;
                ::redis::pipe()
                    .atomic()
                    .cmd("ZADD")
                    .arg(&key)
                    .arg(int(now))
                    .arg(hex(&member))
                    .ignore()
                    .cmd("ZREMRANGEBYRANK")
                    .arg(&key)
                    .arg(0)
                    .arg(-keep - 1)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl)
                    .ignore()
                    .cmd("ZCARD")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(count)
    }

    async fn forget(&self, key: &str, member: &Mac) -> Result<(), Error> {
        let key = self.key("s", key);
        let member = hex(member);
        let mut conn = self.manager.clone();
        let script_key = key.clone();
        self.run_key("forget", &key, async move {
            ::redis::cmd("ZREM")
                .arg(&script_key)
                .arg(member)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    async fn recall(&self, key: &str, member: &Mac, _now: UnixMillis) -> Result<Recall, Error> {
        let key = self.key("s", key);
        let member = hex(member);
        let mut conn = self.manager.clone();
        let script_key = key.clone();
        let (score, count): (Option<f64>, u64) = self
            .run_key("recall", &key, async move {
                let key = script_key;
                ::redis::pipe()
                    .cmd("ZSCORE")
                    .arg(&key)
                    .arg(member)
                    .cmd("ZCARD")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(Recall {
            member: score.is_some(),
            any: count > 0,
        })
    }

    async fn hold_until(&self, key: &str, until: UnixMillis) -> Result<(), Error> {
        let key = self.key("d", key);
        let mut conn = self.manager.clone();
        let script_key = key.clone();
        self.run_key("hold_until", &key, async move {
            SCRIPTS
                .hold
                .key(script_key)
                .arg(int(until))
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    async fn held_until(
        &self,
        key: &str,
        now: UnixMillis,
        max: Duration,
    ) -> Result<Option<UnixMillis>, Error> {
        let key = self.key("d", key);
        let latest = now
            .saturating_add(millis(max))
            .saturating_add(CLOCK_SLACK_MS);
        let mut conn = self.manager.clone();
        let script_key = key.clone();
        let (until, corrupt): (i64, i64) = self
            .run_key("held_until", &key, async move {
                SCRIPTS
                    .held
                    .key(script_key)
                    .arg(int(now))
                    .arg(int(latest))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if corrupt != 0 {
            corrupt_value("held_until", &key);
        }
        Ok(u64::try_from(until).ok().filter(|&u| u > now))
    }

    async fn set_budget(&self, key: &str, remaining: u64, reset: UnixMillis) -> Result<(), Error> {
        let key = self.key("b", key);
        let mut conn = self.manager.clone();
        let script_key = key.clone();
        self.run_key("set_budget", &key, async move {
            SCRIPTS
                .set_budget
                .key(script_key)
                .arg(int(remaining))
                .arg(int(reset))
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    async fn take_budget(
        &self,
        key: &str,
        keep: u64,
        now: UnixMillis,
        max: Duration,
    ) -> Result<Budget, Error> {
        let key = self.key("b", key);
        let latest = now
            .saturating_add(millis(max))
            .saturating_add(CLOCK_SLACK_MS);
        let mut conn = self.manager.clone();
        let script_key = key.clone();
        let (taken, value, corrupt): (i64, i64, i64) = self
            .run_key("take_budget", &key, async move {
                SCRIPTS
                    .take_budget
                    .key(script_key)
                    .arg(int(keep))
                    .arg(int(now))
                    .arg(int(latest))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if corrupt != 0 {
            corrupt_value("take_budget", &key);
        }
        let value = u64::try_from(value).unwrap_or(0);
        Ok(match taken {
            1 => Budget::Taken { remaining: value },
            0 => Budget::Spent { reset: value },
            _ => Budget::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_and_namespaces_depend_on_the_fleet_key() {
        assert_eq!(
            en_auth_redis::redact_url("rediss://u:pw@h:1/0"),
            "rediss://u:***@h:1/0"
        );
        assert_eq!(en_auth_redis::redact_url("redis://h:1"), "redis://h:1");
        let builder = RedisLimits::builder("redis://:hunter2@h:1").fleet_key([7u8; 32]);
        let debug = format!("{builder:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("[REDACTED]"),
            "{debug}"
        );
        let a = namespace(&[1u8; 32]);
        assert_eq!(a.len(), 16);
        assert_eq!(a, namespace(&[1u8; 32]));
        assert_ne!(a, namespace(&[2u8; 32]));
    }

    #[tokio::test]
    async fn a_short_fleet_key_is_refused() {
        let err = RedisLimits::builder("redis://127.0.0.1:1")
            .fleet_key(b"short")
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfiguration { .. }), "{err:?}");
    }
}
