//! [`RedisLimits`]: the proxy's limits in Redis, shared by every instance of a fleet.
//!
//! Every operation is one atomic round trip (a `MULTI` pipeline or a Lua script):
//! - windows: `INCRBY` + `PEXPIRE` on a key per window *index* (`now / window`, with `now`
//!   from the caller), so every instance counts the same window and a caller on paused time
//!   still gets its own windows;
//! - remembered sets: `ZADD` with the time as score, `ZREMRANGEBYRANK` down to the cap,
//!   `PEXPIRE`, `ZCARD` (the members after adding); `ZREM` to forget one;
//! - deadlines: the later of the stored and the new one (Lua), expiring at it (`PXAT`);
//! - budgets: a hash `{r: remaining, t: reset}` expiring at the reset; a take decrements only
//!   above `keep` (Lua).
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
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

/// Windows outlive their end by this much in Redis (clock differences between instances).
const WINDOW_SLACK_MS: u64 = 5_000;

const HOLD_SCRIPT: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[1])
end
return 0";

const SET_BUDGET_SCRIPT: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'r', ARGV[1], 't', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 0";

const TAKE_BUDGET_SCRIPT: &str = r"
local v = redis.call('HMGET', KEYS[1], 'r', 't')
if not v[1] or not v[2] then return {-1, 0} end
local remaining = tonumber(v[1])
local reset = tonumber(v[2])
if not remaining or not reset or reset <= tonumber(ARGV[2]) then return {-1, 0} end
if remaining > tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'r', -1)
  return {1, remaining - 1}
end
return {0, reset}";

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
            .field("url", &redact_url(&self.url))
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
        let client = match self.tls_root {
            None => ::redis::Client::open(self.url.as_str()),
            Some(root) => ::redis::Client::build_with_tls(
                self.url.as_str(),
                ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            ),
        }
        .map_err(|err| Error::InvalidConfiguration {
            setting: "Redis URL".into(),
            reason: format!(
                "{:?} ({}); use redis://host:port/db or rediss://host:port/db",
                err.kind(),
                redact_url(&self.url)
            ),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.command_timeout))
            .set_connection_timeout(Some(self.connect_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(|err| {
            Error::InvalidConfiguration {
                setting: "Redis URL".into(),
                reason: format!("cannot use it: {:?}", err.kind()),
            }
        })?;
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
                error = %err, url = %redact_url(&self.url),
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
        let mut conn = self.manager.clone();
        if add == 0 {
            let count: Option<i64> = self
                .run("read", async move {
                    ::redis::cmd("GET").arg(&key).query_async(&mut conn).await
                })
                .await?;
            return Ok(count.map_or(0, |n| u64::try_from(n).unwrap_or(0)));
        }
        // Kept until the window ends (by the caller's clock) and a little longer.
        let end = index.saturating_add(1).saturating_mul(window_ms);
        let ttl = end.saturating_sub(now).saturating_add(WINDOW_SLACK_MS);
        let (count,): (i64,) = self
            .run("add", async move {
                ::redis::pipe()
                    .atomic()
                    .cmd("INCRBY")
                    .arg(&key)
                    .arg(int(add))
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(int(ttl))
                    .ignore()
                    .query_async(&mut conn)
                    .await
            })
            .await?;
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
        let (count,): (u64,) = self
            .run("remember", async move {
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
        self.run("forget", async move {
            ::redis::cmd("ZREM")
                .arg(&key)
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
        let (score, count): (Option<f64>, u64) = self
            .run("recall", async move {
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
        self.run("hold_until", async move {
            ::redis::Script::new(HOLD_SCRIPT)
                .key(key)
                .arg(int(until))
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    async fn held_until(&self, key: &str, now: UnixMillis) -> Result<Option<UnixMillis>, Error> {
        let key = self.key("d", key);
        let mut conn = self.manager.clone();
        let until: Option<i64> = self
            .run("held_until", async move {
                ::redis::cmd("GET").arg(&key).query_async(&mut conn).await
            })
            .await?;
        Ok(until
            .and_then(|u| u64::try_from(u).ok())
            .filter(|&u| u > now))
    }

    async fn set_budget(&self, key: &str, remaining: u64, reset: UnixMillis) -> Result<(), Error> {
        let key = self.key("b", key);
        let mut conn = self.manager.clone();
        self.run("set_budget", async move {
            ::redis::Script::new(SET_BUDGET_SCRIPT)
                .key(key)
                .arg(int(remaining))
                .arg(int(reset))
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    async fn take_budget(&self, key: &str, keep: u64, now: UnixMillis) -> Result<Budget, Error> {
        let key = self.key("b", key);
        let mut conn = self.manager.clone();
        let (taken, value): (i64, i64) = self
            .run("take_budget", async move {
                ::redis::Script::new(TAKE_BUDGET_SCRIPT)
                    .key(key)
                    .arg(int(keep))
                    .arg(int(now))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let value = u64::try_from(value).unwrap_or(0);
        Ok(match taken {
            1 => Budget::Taken { remaining: value },
            0 => Budget::Spent { reset: value },
            _ => Budget::Unknown,
        })
    }
}

/// `redis://user:password@host` → `redis://user:***@host`, for logs and errors.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_and_namespaces_depend_on_the_fleet_key() {
        assert_eq!(redact_url("rediss://u:pw@h:1/0"), "rediss://u:***@h:1/0");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
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
