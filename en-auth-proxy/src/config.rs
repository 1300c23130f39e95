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
    /// The upstream token endpoint (`EN_AUTH_PROXY_TOKEN_URL`).
    pub token_url: Option<String>,
    /// The upstream issuer, for OIDC discovery of the token endpoint
    /// (`EN_AUTH_PROXY_ISSUER`); used when `token_url` is not set.
    pub issuer: Option<String>,
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
    /// expiry (`EN_AUTH_PROXY_MIN_REMAINING_SECS`, default 60).
    pub min_remaining_secs: u64,
    /// A secret the upstream refused is refused locally, without asking upstream again, for
    /// this long (`EN_AUTH_PROXY_REFUSAL_SECS`, default 30; doubles on repeated refusals).
    pub refusal_secs: u64,
    /// Upstream requests left (`X-RateLimit-Remaining`) kept for cache misses: at or below
    /// it, tokens that are still valid are not renewed until the limit resets
    /// (`EN_AUTH_PROXY_UPSTREAM_RESERVE`, default 5).
    pub upstream_reserve: u64,
    /// Total timeout of one upstream request (`EN_AUTH_PROXY_UPSTREAM_TIMEOUT_SECS`, default 10).
    pub upstream_timeout_secs: u64,
    /// Total time a customer's request may take (`EN_AUTH_PROXY_REQUEST_TIMEOUT_SECS`,
    /// default 30); answered 503 after it.
    pub request_timeout_secs: u64,
    /// Largest request body accepted (`EN_AUTH_PROXY_MAX_BODY_BYTES`, default 16 KiB).
    pub max_body_bytes: usize,
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
            token_url: None,
            issuer: None,
            redis_url: None,
            upstream_auth: UpstreamAuth::default(),
            max_keys: 10_000,
            min_remaining_secs: 60,
            refusal_secs: 30,
            upstream_reserve: 5,
            upstream_timeout_secs: 10,
            request_timeout_secs: 30,
            max_body_bytes: 16 * 1024,
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
            .field("token_url", &self.token_url)
            .field("issuer", &self.issuer)
            // A Redis URL may carry a password.
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
    ("EN_AUTH_PROXY_TOKEN_URL", "token_url"),
    ("EN_AUTH_PROXY_ISSUER", "issuer"),
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

const NUMERIC_KEYS: &[&str] = &[
    "max_keys",
    "min_remaining_secs",
    "refusal_secs",
    "upstream_reserve",
    "upstream_timeout_secs",
    "request_timeout_secs",
    "max_body_bytes",
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
            let parsed = if NUMERIC_KEYS.contains(key) {
                let n = value
                    .parse::<i64>()
                    .map_err(|_| Error::InvalidConfiguration {
                        setting: (*var).into(),
                        reason: format!("expected a whole number, got `{value}`"),
                    })?;
                toml::Value::Integer(n)
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

    /// Checks what can be checked before starting.
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
        if self.max_body_bytes < 256 {
            return Err(Error::InvalidConfiguration {
                setting: "EN_AUTH_PROXY_MAX_BODY_BYTES".into(),
                reason: "must be at least 256".into(),
            });
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
