//! The proxy's configuration: environment variables (`EN_AUTH_PROXY_*`) over an optional TOML
//! file whose keys are the same names, lower-cased, without the prefix.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! token_url = "https://tenant.us.auth0.com/oauth/token"
//! quota_per_minute = 60
//! quota_mode = "enforce"
//!
//! [clients."customer-a"]
//! quota_per_minute = 600
//! upstream_auth = "client_secret_basic"
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use en_auth_core::Error;
use serde::Deserialize;

/// How the proxy authenticates a customer's client to the upstream token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamAuth {
    /// `client_id` and `client_secret` in the form body (Auth0's default for M2M apps).
    #[default]
    ClientSecretPost,
    /// HTTP Basic, id and secret form-encoded first (RFC 6749 §2.3.1).
    ClientSecretBasic,
}

/// What happens when a customer exceeds its quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaMode {
    /// Answer 429 with `Retry-After`.
    #[default]
    Enforce,
    /// Serve anyway; log and count (`en_auth_proxy_quota_exceeded_total`).
    Monitor,
}

/// Settings for one customer (a `[clients."<client id>"]` table).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// This client's token requests per minute (overrides `quota_per_minute`; 0: unlimited).
    pub quota_per_minute: Option<u64>,
    /// How this client authenticates upstream (overrides `upstream_auth`).
    pub upstream_auth: Option<UpstreamAuth>,
}

/// Everything the proxy can be told. Build it with [`ProxyConfig::from_env`] /
/// [`ProxyConfig::load`], or in code starting from [`ProxyConfig::new`].
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where to listen (`EN_AUTH_PROXY_LISTEN`). Default `127.0.0.1:8080`: loopback only.
    pub listen: SocketAddr,
    /// Where to serve `GET /metrics` (and `GET /healthz`) for operators
    /// (`EN_AUTH_PROXY_METRICS_LISTEN`, e.g. `127.0.0.1:9090`). When set, the customers'
    /// listener answers 404 for `/metrics`; when unset, `/metrics` is served on the customers'
    /// listener, where whoever can reach it reads every client id that asked for tokens.
    pub metrics_listen: Option<SocketAddr>,
    /// The upstream token endpoint (`EN_AUTH_PROXY_TOKEN_URL`).
    pub token_url: Option<String>,
    /// The upstream issuer, for OIDC discovery of the token endpoint
    /// (`EN_AUTH_PROXY_ISSUER`); used when `token_url` is not set.
    pub issuer: Option<String>,
    /// The audience asked for when a request names none (`EN_AUTH_PROXY_AUDIENCE`; the m2m-auth
    /// service's `AUDIENCE`): customers of one API then need not send it.
    pub audience: Option<String>,
    /// Redis shared by several proxy instances (`EN_AUTH_PROXY_REDIS_URL`).
    pub redis_url: Option<String>,
    /// How customers' clients authenticate upstream (`EN_AUTH_PROXY_UPSTREAM_AUTH`:
    /// `client_secret_post`, the default, or `client_secret_basic`).
    pub upstream_auth: UpstreamAuth,
    /// Most cached (client, audience/resource, scopes) keys; the least recently used go
    /// first (`EN_AUTH_PROXY_MAX_KEYS`, default 10 000).
    pub max_keys: usize,
    /// Tokens are handed out with at least this much life left (clamped to a quarter of a
    /// short token's lifetime); renewal starts in the background at twice this before
    /// expiry (`EN_AUTH_PROXY_MIN_REMAINING_SECS`, default 60, at most
    /// [`MAX_MIN_REMAINING_SECS`]).
    pub min_remaining_secs: u64,
    /// A secret the upstream refused is refused locally, without asking upstream again, for
    /// this long (`EN_AUTH_PROXY_REFUSAL_SECS`, default 30, at most [`MAX_REFUSAL_SECS`];
    /// doubles on repeated refusals).
    pub refusal_secs: u64,
    /// Upstream requests left (`X-RateLimit-Remaining`) kept for cache misses: at or below
    /// it, tokens that are still valid are not renewed until the limit resets
    /// (`EN_AUTH_PROXY_UPSTREAM_RESERVE`, default 5).
    pub upstream_reserve: u64,
    /// Total timeout of one upstream request (`EN_AUTH_PROXY_UPSTREAM_TIMEOUT_SECS`, default
    /// 10, at most [`MAX_TIMEOUT_SECS`]).
    pub upstream_timeout_secs: u64,
    /// Total time a customer's request may take (`EN_AUTH_PROXY_REQUEST_TIMEOUT_SECS`,
    /// default 30, at most [`MAX_TIMEOUT_SECS`]); answered 503 after it.
    pub request_timeout_secs: u64,
    /// Largest request body accepted (`EN_AUTH_PROXY_MAX_BODY_BYTES`, default 16 KiB).
    pub max_body_bytes: usize,
    /// Timeout of one Redis command for the shared limits, in milliseconds
    /// (`EN_AUTH_PROXY_REDIS_TIMEOUT_MS`, 10 to 5000, default 100); a slower answer is taken
    /// as Redis being down and the instance uses its own limits.
    pub redis_timeout_ms: u64,
    /// Token requests per client per minute; 0 (default) means no quota
    /// (`EN_AUTH_PROXY_QUOTA_PER_MINUTE`).
    pub quota_per_minute: u64,
    /// `enforce` (default) or `monitor` (`EN_AUTH_PROXY_QUOTA_MODE`).
    pub quota_mode: QuotaMode,
    /// Per-client overrides, from the TOML file only.
    pub clients: HashMap<String, ClientConfig>,
    /// Log level: `error`, `warn`, `info` (default), `debug`, `trace` (`EN_AUTH_PROXY_LOG`).
    pub log: String,
    /// About how many bytes the cached entries may take (key strings, secrets, tokens and a
    /// fixed overhead per entry); beyond it, entries without a token go first, then the least
    /// recently used (`EN_AUTH_PROXY_MAX_CACHE_BYTES`, default 64 MiB).
    pub max_cache_bytes: usize,
    /// Requests sent upstream per minute, all sources together, for client ids with no
    /// accepted secret on record (`EN_AUTH_PROXY_UNKNOWN_CLIENT_PER_MINUTE`, default 60).
    pub unknown_client_per_minute: u64,
    /// The same per source address as the proxy sees it (behind a load balancer, the
    /// balancer's) (`EN_AUTH_PROXY_UNKNOWN_CLIENT_PER_SOURCE_PER_MINUTE`, default 10).
    pub unknown_client_per_source_per_minute: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            token_url: None,
            issuer: None,
            audience: None,
            redis_url: None,
            upstream_auth: UpstreamAuth::default(),
            max_keys: 10_000,
            min_remaining_secs: 60,
            refusal_secs: 30,
            upstream_reserve: 5,
            upstream_timeout_secs: 10,
            request_timeout_secs: 30,
            max_body_bytes: 16 * 1024,
            redis_timeout_ms: 100,
            quota_per_minute: 0,
            quota_mode: QuotaMode::default(),
            clients: HashMap::new(),
            log: "info".into(),
            max_cache_bytes: 64 * 1024 * 1024,
            unknown_client_per_minute: 60,
            unknown_client_per_source_per_minute: 10,
        }
    }
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("token_url", &self.token_url)
            .field("issuer", &self.issuer)
            // A Redis URL may carry a password.
            .field("audience", &self.audience)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "[REDACTED]"))
            .field("upstream_auth", &self.upstream_auth)
            .field("max_keys", &self.max_keys)
            .field("min_remaining_secs", &self.min_remaining_secs)
            .field("refusal_secs", &self.refusal_secs)
            .field("upstream_reserve", &self.upstream_reserve)
            .field("quota_per_minute", &self.quota_per_minute)
            .field("quota_mode", &self.quota_mode)
            .field("clients", &self.clients)
            .field("max_cache_bytes", &self.max_cache_bytes)
            .field("unknown_client_per_minute", &self.unknown_client_per_minute)
            .field(
                "unknown_client_per_source_per_minute",
                &self.unknown_client_per_source_per_minute,
            )
            .finish_non_exhaustive()
    }
}

/// The environment variables read, with the TOML key each overrides.
const ENV_KEYS: &[(&str, &str)] = &[
    ("EN_AUTH_PROXY_LISTEN", "listen"),
    ("EN_AUTH_PROXY_METRICS_LISTEN", "metrics_listen"),
    ("EN_AUTH_PROXY_TOKEN_URL", "token_url"),
    ("EN_AUTH_PROXY_ISSUER", "issuer"),
    ("EN_AUTH_PROXY_AUDIENCE", "audience"),
    ("EN_AUTH_PROXY_REDIS_URL", "redis_url"),
    ("EN_AUTH_PROXY_UPSTREAM_AUTH", "upstream_auth"),
    ("EN_AUTH_PROXY_MAX_KEYS", "max_keys"),
    ("EN_AUTH_PROXY_MIN_REMAINING_SECS", "min_remaining_secs"),
    ("EN_AUTH_PROXY_REFUSAL_SECS", "refusal_secs"),
    ("EN_AUTH_PROXY_UPSTREAM_RESERVE", "upstream_reserve"),
    (
        "EN_AUTH_PROXY_UPSTREAM_TIMEOUT_SECS",
        "upstream_timeout_secs",
    ),
    ("EN_AUTH_PROXY_REQUEST_TIMEOUT_SECS", "request_timeout_secs"),
    ("EN_AUTH_PROXY_MAX_BODY_BYTES", "max_body_bytes"),
    ("EN_AUTH_PROXY_REDIS_TIMEOUT_MS", "redis_timeout_ms"),
    ("EN_AUTH_PROXY_QUOTA_PER_MINUTE", "quota_per_minute"),
    ("EN_AUTH_PROXY_QUOTA_MODE", "quota_mode"),
    ("EN_AUTH_PROXY_LOG", "log"),
    ("EN_AUTH_PROXY_MAX_CACHE_BYTES", "max_cache_bytes"),
    (
        "EN_AUTH_PROXY_UNKNOWN_CLIENT_PER_MINUTE",
        "unknown_client_per_minute",
    ),
    (
        "EN_AUTH_PROXY_UNKNOWN_CLIENT_PER_SOURCE_PER_MINUTE",
        "unknown_client_per_source_per_minute",
    ),
];

/// The most seconds `EN_AUTH_PROXY_MIN_REMAINING_SECS` may name: a day (tokens shorter than
/// four times it are handed out down to a quarter of their lifetime anyway).
pub const MAX_MIN_REMAINING_SECS: u64 = 86_400;
/// The most seconds `EN_AUTH_PROXY_REFUSAL_SECS` may name: a day.
pub const MAX_REFUSAL_SECS: u64 = 86_400;
/// The most seconds `EN_AUTH_PROXY_UPSTREAM_TIMEOUT_SECS` and
/// `EN_AUTH_PROXY_REQUEST_TIMEOUT_SECS` may name: an hour.
pub const MAX_TIMEOUT_SECS: u64 = 3_600;

/// Keys whose values are socket addresses (checked where the variable can be named).
const ADDRESS_KEYS: &[&str] = &["listen", "metrics_listen"];

const NUMERIC_KEYS: &[&str] = &[
    "max_keys",
    "min_remaining_secs",
    "refusal_secs",
    "upstream_reserve",
    "upstream_timeout_secs",
    "request_timeout_secs",
    "max_body_bytes",
    "redis_timeout_ms",
    "quota_per_minute",
    "max_cache_bytes",
    "unknown_client_per_minute",
    "unknown_client_per_source_per_minute",
];

impl ProxyConfig {
    /// Defaults with the upstream token endpoint set: the smallest working configuration.
    pub fn new(token_url: impl Into<String>) -> Self {
        Self {
            token_url: Some(token_url.into()),
            ..Self::default()
        }
    }

    /// From the environment alone.
    pub fn from_env() -> Result<Self, Error> {
        Self::load(None)
    }

    /// From the TOML file at `path` (if given), overridden by the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let text = match path {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| Error::InvalidConfiguration {
                    setting: "--config".into(),
                    reason: format!("cannot read {}: {e}", path.display()),
                })?
            }
            None => String::new(),
        };
        Self::from_sources(&text, |name| std::env::var(name).ok())
    }

    /// From TOML text and an environment lookup (the testable core of [`load`](Self::load)).
    pub fn from_sources(
        toml_text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let mut table: toml::Table =
            toml::from_str(toml_text).map_err(|e| Error::InvalidConfiguration {
                setting: "--config".into(),
                reason: format!("not valid TOML: {}", e.message()),
            })?;
        for (var, key) in ENV_KEYS {
            let Some(value) = env(var).filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            let value = value.trim().to_owned();
            if ADDRESS_KEYS.contains(key) && value.parse::<SocketAddr>().is_err() {
                return Err(Error::InvalidConfiguration {
                    setting: (*var).into(),
                    reason: format!("expected an address such as 127.0.0.1:9090, got `{value}`"),
                });
            }
            let parsed = if NUMERIC_KEYS.contains(key) {
                toml::Value::Integer(whole_number(var, &value)?)
            } else {
                toml::Value::String(value)
            };
            table.insert((*key).into(), parsed);
        }
        let config: ProxyConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| Error::InvalidConfiguration {
                    setting: "configuration".into(),
                    reason: format!(
                        "{} (see docs/proxy.md for every key and its variable)",
                        e.message()
                    ),
                })?;
        config.check()?;
        Ok(config)
    }

    /// Checks what can be checked before starting. Settings that name a time are bounded
    /// ([`MAX_MIN_REMAINING_SECS`], [`MAX_REFUSAL_SECS`], [`MAX_TIMEOUT_SECS`]), so that no
    /// time arithmetic of the proxy can overflow; counts (quotas, the reserve, the unknown
    /// clients' budgets, `max_keys`, `max_cache_bytes`, `max_body_bytes`) may be as large as
    /// their type.
    pub fn check(&self) -> Result<(), Error> {
        if self.token_url.is_none() && self.issuer.is_none() {
            return Err(Error::MissingConfiguration {
                setting: "EN_AUTH_PROXY_TOKEN_URL (the upstream token endpoint, e.g. \
                          https://tenant.us.auth0.com/oauth/token; or EN_AUTH_PROXY_ISSUER for \
                          OIDC discovery)"
                    .into(),
            });
        }
        if self.max_keys == 0 {
            return Err(Error::InvalidConfiguration {
                setting: "EN_AUTH_PROXY_MAX_KEYS".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.max_cache_bytes < 64 * 1024 {
            return Err(Error::InvalidConfiguration {
                setting: "EN_AUTH_PROXY_MAX_CACHE_BYTES".into(),
                reason: "must be at least 65536".into(),
            });
        }
        if !(10..=5_000).contains(&self.redis_timeout_ms) {
            return Err(Error::InvalidConfiguration {
                setting: "EN_AUTH_PROXY_REDIS_TIMEOUT_MS".into(),
                reason: format!(
                    "must be from 10 to 5000 (milliseconds), not {}",
                    self.redis_timeout_ms
                ),
            });
        }
        if self.max_body_bytes < 256 {
            return Err(Error::InvalidConfiguration {
                setting: "EN_AUTH_PROXY_MAX_BODY_BYTES".into(),
                reason: "must be at least 256".into(),
            });
        }
        for (setting, value, max) in [
            (
                "EN_AUTH_PROXY_MIN_REMAINING_SECS",
                self.min_remaining_secs,
                MAX_MIN_REMAINING_SECS,
            ),
            (
                "EN_AUTH_PROXY_REFUSAL_SECS",
                self.refusal_secs,
                MAX_REFUSAL_SECS,
            ),
            (
                "EN_AUTH_PROXY_UPSTREAM_TIMEOUT_SECS",
                self.upstream_timeout_secs,
                MAX_TIMEOUT_SECS,
            ),
            (
                "EN_AUTH_PROXY_REQUEST_TIMEOUT_SECS",
                self.request_timeout_secs,
                MAX_TIMEOUT_SECS,
            ),
        ] {
            if value > max {
                return Err(Error::InvalidConfiguration {
                    setting: setting.into(),
                    reason: format!("must be at most {max} (seconds)"),
                });
            }
        }
        Ok(())
    }

    /// The quota of `client_id` per minute, `None` for unlimited.
    pub fn quota_of(&self, client_id: &str) -> Option<u64> {
        let n = self
            .clients
            .get(client_id)
            .and_then(|c| c.quota_per_minute)
            .unwrap_or(self.quota_per_minute);
        (n > 0).then_some(n)
    }

    /// How `client_id` authenticates upstream.
    pub fn upstream_auth_of(&self, client_id: &str) -> UpstreamAuth {
        self.clients
            .get(client_id)
            .and_then(|c| c.upstream_auth)
            .unwrap_or(self.upstream_auth)
    }

    pub(crate) fn min_remaining(&self) -> Duration {
        Duration::from_secs(self.min_remaining_secs)
    }

    pub(crate) fn refusal(&self) -> Duration {
        Duration::from_secs(self.refusal_secs.max(1))
    }
}

/// A numeric variable's value as a TOML integer. A whole number past TOML's integers
/// (`i64::MAX`) becomes `i64::MAX`: the bounds of [`ProxyConfig::check`] refuse it where a
/// bound applies, and for a count it means "unlimited" either way.
fn whole_number(var: &str, value: &str) -> Result<i64, Error> {
    let invalid = |reason: String| Error::InvalidConfiguration {
        setting: var.into(),
        reason,
    };
    match value.parse::<i64>() {
        Ok(n) if n < 0 => Err(invalid(format!("must not be negative, got `{value}`"))),
        Ok(n) => Ok(n),
        Err(_) if value.bytes().all(|b| b.is_ascii_digit()) => Ok(i64::MAX),
        Err(_) => Err(invalid(format!("expected a whole number, got `{value}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_timeout_is_bounded_and_named() {
        let env = |value: &'static str| {
            move |name: &str| {
                (name == "EN_AUTH_PROXY_TOKEN_URL")
                    .then(|| "https://idp.example/oauth/token".to_owned())
                    .or_else(|| (name == "EN_AUTH_PROXY_REDIS_TIMEOUT_MS").then(|| value.into()))
            }
        };
        assert_eq!(
            ProxyConfig::from_sources("", env("250"))
                .unwrap()
                .redis_timeout_ms,
            250
        );
        assert_eq!(
            ProxyConfig::from_sources("", |name| (name == "EN_AUTH_PROXY_TOKEN_URL")
                .then(|| "https://idp.example/oauth/token".to_owned()))
            .unwrap()
            .redis_timeout_ms,
            100
        );
        for bad in ["0", "9", "5001", "fast"] {
            let err = ProxyConfig::from_sources("", env(bad))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("EN_AUTH_PROXY_REDIS_TIMEOUT_MS"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn environment_wins_over_the_file() {
        let toml = r#"
            listen = "127.0.0.1:9000"
            token_url = "https://file.example/oauth/token"
            quota_per_minute = 10
            quota_mode = "monitor"
            [clients."big"]
            quota_per_minute = 1000
            upstream_auth = "client_secret_basic"
        "#;
        let config = ProxyConfig::from_sources(toml, |name| match name {
            "EN_AUTH_PROXY_TOKEN_URL" => Some("https://env.example/oauth/token".into()),
            "EN_AUTH_PROXY_QUOTA_PER_MINUTE" => Some("20".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            config.token_url.as_deref(),
            Some("https://env.example/oauth/token")
        );
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.metrics_listen, None);
        let other = ProxyConfig::from_sources(toml, |name| {
            (name == "EN_AUTH_PROXY_METRICS_LISTEN").then(|| "127.0.0.1:9090".into())
        })
        .unwrap();
        assert_eq!(
            other.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
        );
        let err = ProxyConfig::from_sources(toml, |name| {
            (name == "EN_AUTH_PROXY_METRICS_LISTEN").then(|| "not an address".into())
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("EN_AUTH_PROXY_METRICS_LISTEN"),
            "{err}"
        );
        let other = ProxyConfig::from_sources(
            &format!("metrics_listen = \"127.0.0.1:9191\"\n{toml}"),
            |_| None,
        )
        .unwrap();
        assert_eq!(other.metrics_listen.map(|a| a.port()), Some(9191));
        assert_eq!(config.quota_mode, QuotaMode::Monitor);
        assert_eq!(config.quota_of("small"), Some(20));
        assert_eq!(config.quota_of("big"), Some(1000));
        assert_eq!(
            config.upstream_auth_of("big"),
            UpstreamAuth::ClientSecretBasic
        );
        assert_eq!(
            config.upstream_auth_of("small"),
            UpstreamAuth::ClientSecretPost
        );
    }

    #[test]
    fn missing_upstream_names_the_variable() {
        let err = ProxyConfig::from_sources("", |_| None).unwrap_err();
        assert!(err.to_string().contains("EN_AUTH_PROXY_TOKEN_URL"), "{err}");
        let err = ProxyConfig::from_sources("", |name| {
            (name == "EN_AUTH_PROXY_MAX_KEYS").then(|| "many".into())
        })
        .unwrap_err();
        assert!(err.to_string().contains("EN_AUTH_PROXY_MAX_KEYS"), "{err}");
        let err = ProxyConfig::from_sources("typo_key = 1\ntoken_url = \"https://x/\"", |_| None)
            .unwrap_err();
        assert!(err.to_string().contains("typo_key"), "{err}");
    }

    /// The variable of every numeric key, from the lists the loader reads (keys added later
    /// are covered too).
    fn numeric_variables() -> Vec<&'static str> {
        let vars: Vec<_> = ENV_KEYS
            .iter()
            .filter(|(_, key)| NUMERIC_KEYS.contains(key))
            .map(|(var, _)| *var)
            .collect();
        assert_eq!(
            vars.len(),
            NUMERIC_KEYS.len(),
            "a numeric key without a variable"
        );
        vars
    }

    #[test]
    fn times_past_their_bound_are_refused_naming_the_variable_and_the_bound() {
        let url = "https://idp.example/oauth/token";
        for (var, max) in [
            ("EN_AUTH_PROXY_REFUSAL_SECS", MAX_REFUSAL_SECS),
            ("EN_AUTH_PROXY_MIN_REMAINING_SECS", MAX_MIN_REMAINING_SECS),
            ("EN_AUTH_PROXY_UPSTREAM_TIMEOUT_SECS", MAX_TIMEOUT_SECS),
            ("EN_AUTH_PROXY_REQUEST_TIMEOUT_SECS", MAX_TIMEOUT_SECS),
        ] {
            let load = |value: String| {
                ProxyConfig::from_sources("", |name| match name {
                    "EN_AUTH_PROXY_TOKEN_URL" => Some(url.into()),
                    name if name == var => Some(value.clone()),
                    _ => None,
                })
            };
            assert!(load(max.to_string()).is_ok(), "{var} at its bound");
            for value in [
                (max + 1).to_string(),
                "1000000000000000000".into(),
                i64::MAX.to_string(),
                u64::MAX.to_string(),
                "99999999999999999999999999".into(),
            ] {
                let err = load(value.clone()).unwrap_err().to_string();
                assert!(
                    err.contains(var) && err.contains(&format!("must be at most {max}")),
                    "{var}={value}: {err}"
                );
            }
        }
        for var in numeric_variables() {
            let err = ProxyConfig::from_sources("", |name| match name {
                "EN_AUTH_PROXY_TOKEN_URL" => Some(url.into()),
                name if name == var => Some("-1".into()),
                _ => None,
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(var) && err.contains("negative"), "{err}");
        }
        // In code, past what a variable can say.
        let mut config = ProxyConfig::new(url);
        config.refusal_secs = u64::MAX;
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains("EN_AUTH_PROXY_REFUSAL_SECS"), "{err}");
    }

    /// Every numeric variable at `u64::MAX`, `i64::MAX` and 10^18, through the environment and
    /// the file, then `Proxy::new`: refused naming the variable, or a proxy that answers a
    /// token request. Real time: the identity provider is a real HTTP server on loopback, and
    /// paused time would let the clients' timeouts fire while its sockets work.
    #[tokio::test]
    async fn huge_numbers_are_refused_or_served_never_a_panic() {
        use en_auth_testkit::{IdpConfig, LocalIdp, LoopbackServer};
        let idp = LocalIdp::start(IdpConfig::default()).await.unwrap();
        let (id, secret) = (idp.client_id(), idp.client_secret());
        let http = reqwest::Client::new();
        let mut refused = Vec::new();
        let mut served = Vec::new();
        for var in numeric_variables() {
            let key = ENV_KEYS.iter().find(|(v, _)| *v == var).unwrap().1;
            for value in [
                u64::MAX.to_string(),
                i64::MAX.to_string(),
                10u64.pow(18).to_string(),
            ] {
                let from_env = ProxyConfig::from_sources("", |name| match name {
                    "EN_AUTH_PROXY_TOKEN_URL" => Some(idp.token_url()),
                    name if name == var => Some(value.clone()),
                    _ => None,
                });
                let file = format!("token_url = \"{}\"\n{key} = {}", idp.token_url(), {
                    // TOML integers stop at i64::MAX.
                    value.parse::<i64>().unwrap_or(i64::MAX)
                });
                let from_file = ProxyConfig::from_sources(&file, |_| None);
                for (route, loaded) in [("env", from_env), ("file", from_file)] {
                    let what = format!("{var}={value} ({route})");
                    match loaded.and_then(crate::Proxy::new) {
                        Err(err) => {
                            let shown = err.to_string();
                            assert!(shown.contains(var), "{what}: {shown}");
                            refused.push(var);
                        }
                        Ok(proxy) => {
                            let server = LoopbackServer::start(proxy.router()).await.unwrap();
                            let answer = http
                                .post(server.url("/oauth/token"))
                                .form(&[
                                    ("grant_type", "client_credentials"),
                                    ("client_id", &id),
                                    ("client_secret", &secret),
                                ])
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(answer.status(), 200, "{what}");
                            let body: serde_json::Value = answer.json().await.unwrap();
                            assert!(body["access_token"].is_string(), "{what}: {body}");
                            // A wrong secret: the refusal is remembered for the refusal time.
                            let wrong = http
                                .post(server.url("/oauth/token"))
                                .form(&[
                                    ("grant_type", "client_credentials"),
                                    ("client_id", &id),
                                    ("client_secret", "wrong"),
                                ])
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(wrong.status(), 401, "{what}");
                            served.push(var);
                        }
                    }
                }
            }
        }
        // Each time setting is refused at all three values through both routes; each count
        // is served at all of them.
        for var in [
            "EN_AUTH_PROXY_REFUSAL_SECS",
            "EN_AUTH_PROXY_MIN_REMAINING_SECS",
            "EN_AUTH_PROXY_UPSTREAM_TIMEOUT_SECS",
            "EN_AUTH_PROXY_REQUEST_TIMEOUT_SECS",
        ] {
            assert_eq!(refused.iter().filter(|v| **v == var).count(), 6, "{var}");
        }
        for var in [
            "EN_AUTH_PROXY_MAX_KEYS",
            "EN_AUTH_PROXY_UPSTREAM_RESERVE",
            "EN_AUTH_PROXY_MAX_BODY_BYTES",
            "EN_AUTH_PROXY_QUOTA_PER_MINUTE",
        ] {
            assert_eq!(served.iter().filter(|v| **v == var).count(), 6, "{var}");
        }
        assert_eq!(idp.tokens_issued(), served.len() as u64);
        assert_eq!(idp.token_requests(), 2 * served.len() as u64);
        // A client's own quota, in the file only.
        let file = format!(
            "token_url = \"{}\"\n[clients.\"{id}\"]\nquota_per_minute = {}",
            idp.token_url(),
            i64::MAX
        );
        let proxy = crate::Proxy::new(ProxyConfig::from_sources(&file, |_| None).unwrap()).unwrap();
        let server = LoopbackServer::start(proxy.router()).await.unwrap();
        let answer = http
            .post(server.url("/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &secret),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }

    /// At their bounds, the time settings give a proxy that serves.
    #[tokio::test]
    async fn times_at_their_bounds_are_served() {
        // Real time, as above: a real identity provider on loopback.
        use en_auth_testkit::{IdpConfig, LocalIdp, LoopbackServer};
        let idp = LocalIdp::start(IdpConfig::default()).await.unwrap();
        let mut config = ProxyConfig::new(idp.token_url());
        config.min_remaining_secs = MAX_MIN_REMAINING_SECS;
        config.refusal_secs = MAX_REFUSAL_SECS;
        config.upstream_timeout_secs = MAX_TIMEOUT_SECS;
        config.request_timeout_secs = MAX_TIMEOUT_SECS;
        config.max_keys = usize::MAX;
        config.max_body_bytes = usize::MAX;
        config.quota_per_minute = u64::MAX;
        config.upstream_reserve = u64::MAX;
        let server = LoopbackServer::start(crate::Proxy::new(config).unwrap().router())
            .await
            .unwrap();
        let http = reqwest::Client::new();
        for attempt in 0..2 {
            let answer = http
                .post(server.url("/oauth/token"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", &idp.client_id()),
                    ("client_secret", &idp.client_secret()),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200, "attempt {attempt}");
            let body: serde_json::Value = answer.json().await.unwrap();
            // A one-hour token with a minimum of a day: handed out down to a quarter of
            // its life, so the second request is served from the cache.
            let left = body["expires_in"].as_u64().unwrap();
            assert!(left > 3_000, "{body}");
        }
        assert_eq!(
            idp.token_requests(),
            1,
            "the second answer came from the cache"
        );
    }
}
