//! The `en-auth-proxy` binary: configuration from `EN_AUTH_PROXY_*` variables and an optional
//! `--config file.toml`; stops gracefully on SIGTERM or Ctrl-C.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use en_auth_core::FLEET_KEY_ENV;
use en_auth_proxy::limits::{FallbackLimits, RedisLimits};
use en_auth_proxy::{LocalLimits, Proxy, ProxyConfig};
use hmac::Mac as _;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use tracing_subscriber::filter::LevelFilter;

const USAGE: &str = "usage: en-auth-proxy [--config FILE.toml]\n\
    Configuration: EN_AUTH_PROXY_TOKEN_URL (or EN_AUTH_PROXY_ISSUER) is required; \
    EN_AUTH_PROXY_LISTEN (default 127.0.0.1:8080), EN_AUTH_PROXY_METRICS_LISTEN, \
    EN_AUTH_PROXY_REDIS_URL and the other \
    keys are described in docs/proxy.md.";

fn config_path() -> Result<Option<PathBuf>, String> {
    let mut args = std::env::args_os().skip(1);
    let mut path = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--config") => match args.next() {
                Some(p) => path = Some(PathBuf::from(p)),
                None => return Err("--config needs a file name".into()),
            },
            Some("--help" | "-h") => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(path)
}

#[tokio::main]
async fn main() -> ExitCode {
    let path = match config_path() {
        Ok(path) => path,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("en-auth-proxy: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match ProxyConfig::load(path.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("en-auth-proxy: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let level = config
        .log
        .parse::<LevelFilter>()
        .unwrap_or(LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .init();
    let listen = config.listen;
    let metrics_listen = config.metrics_listen;
    let redis_url = config.redis_url.clone();
    let redis_timeout_ms = config.redis_timeout_ms;
    let mut builder = Proxy::builder(config);
    if let Some(url) = redis_url {
        // Customers' tokens are encrypted at rest: whoever can read Redis must not hold
        // every tenant's tokens.
        let keys = match redis_encryption_keys(std::env::var(REDIS_KEYS_ENV).ok().as_deref()) {
            Ok(keys) => keys,
            Err(message) => {
                eprintln!("en-auth-proxy: {message}");
                return ExitCode::from(2);
            }
        };
        // connect() reads the fleet key from EN_AUTH_FLEET_KEY and refuses to start without
        // one (instances share tokens only with the same key); it succeeds in a degraded mode
        // when Redis is unreachable: each instance then falls back to its own cache until
        // Redis answers.
        match en_auth_redis::RedisTokenStore::builder(url.clone())
            .encryption(keys)
            .connect()
            .await
        {
            Ok(store) => builder = builder.store(Arc::new(store)),
            Err(err) => {
                eprintln!("en-auth-proxy: EN_AUTH_PROXY_REDIS_URL: {err}");
                return ExitCode::from(2);
            }
        }
        // The limits (quotas, upstream budget, lock-out memory) are shared too, behind a
        // fallback to this instance's memory: nobody is refused because Redis is down.
        let fleet_key = SecretString::from(std::env::var(FLEET_KEY_ENV).unwrap_or_default());
        // Checked by `ProxyConfig::check` (10 ms to 5 s) when the configuration was loaded.
        let timeout = std::time::Duration::from_millis(redis_timeout_ms);
        match RedisLimits::builder(url)
            .fleet_key(fleet_key.expose_secret().as_bytes())
            .command_timeout(timeout)
            .connect()
            .await
        {
            Ok(limits) => {
                let limits =
                    FallbackLimits::new(Arc::new(limits), Arc::new(LocalLimits::default()));
                builder = builder
                    .limits(Arc::new(limits))
                    .secret_key(secret_key(fleet_key.expose_secret().as_bytes()));
            }
            Err(err) => {
                eprintln!("en-auth-proxy: EN_AUTH_PROXY_REDIS_URL: {err}");
                return ExitCode::from(2);
            }
        }
    }
    let proxy = match builder.build() {
        Ok(proxy) => proxy,
        Err(err) => {
            eprintln!("en-auth-proxy: {err}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("en-auth-proxy: cannot listen on {listen}: {err} (set EN_AUTH_PROXY_LISTEN)");
            return ExitCode::from(1);
        }
    };
    let metrics_listener = match metrics_listen {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                eprintln!(
                    "en-auth-proxy: cannot listen on {addr}: {err} (set EN_AUTH_PROXY_METRICS_LISTEN)"
                );
                return ExitCode::from(1);
            }
        },
    };
    if metrics_listener.is_none() {
        tracing::warn!(
            "GET /metrics is served on the customers' listener and names client ids: set \
             EN_AUTH_PROXY_METRICS_LISTEN to serve it on a listener of its own"
        );
    }
    match proxy
        .serve_with_metrics(listener, metrics_listener, shutdown_signal())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("en-auth-proxy: {err}");
            ExitCode::from(1)
        }
    }
}

/// The AES-256-GCM keys tokens are encrypted with in Redis: `id:base64-key`, the current key
/// first, older ones (still read during a rotation) after commas.
const REDIS_KEYS_ENV: &str = "EN_AUTH_PROXY_REDIS_ENCRYPTION_KEYS";

/// Parses [`REDIS_KEYS_ENV`]; the error names the variable and says what to do, never the key.
fn redis_encryption_keys(value: Option<&str>) -> Result<en_auth_redis::EncryptionKeys, String> {
    use base64::Engine as _;
    let value = value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            format!(
                "EN_AUTH_PROXY_REDIS_URL is set but {REDIS_KEYS_ENV} is not: tokens in Redis are \
             encrypted; set it to `<key id>:<32 random bytes in base64>` (e.g. \
             `1:$(openssl rand -base64 32)`), the same on every instance"
            )
        })?;
    let mut keys: Option<en_auth_redis::EncryptionKeys> = None;
    for (index, part) in value.split(',').enumerate() {
        let (id, encoded) = part.trim().split_once(':').ok_or_else(|| {
            format!(
                "{REDIS_KEYS_ENV}: key {} is not `<key id>:<base64 key>`",
                index + 1
            )
        })?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| format!("{REDIS_KEYS_ENV}: key `{id}` is not valid base64"))?;
        let added = match keys.take() {
            None => en_auth_redis::EncryptionKeys::new(id, &key),
            Some(keys) => keys.with_old_key(id, &key),
        };
        keys = Some(added.map_err(|err| format!("{REDIS_KEYS_ENV}: {err}"))?);
    }
    keys.ok_or_else(|| format!("{REDIS_KEYS_ENV} holds no key"))
}

/// The label the proxy's secret key is derived with from the fleet key.
const SECRET_KEY_LABEL: &[u8] = b"en-auth-proxy secret key v1";

/// The key under which secrets are compared and remembered: HMAC-SHA256 of a fixed label under
/// the fleet key, so every instance of a fleet derives the same one (and recognizes the
/// secrets the others saw accepted) without another setting.
fn secret_key(fleet_key: &[u8]) -> SecretSlice<u8> {
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(fleet_key)
        .expect("HMAC takes keys of any length");
    mac.update(SECRET_KEY_LABEL);
    SecretSlice::from(mac.finalize().into_bytes().to_vec())
}

/// SIGTERM (Unix) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested; finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_key_is_the_same_for_one_fleet_key_and_differs_between_fleets() {
        let a = secret_key(b"fleet-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        let again = secret_key(b"fleet-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        let b = secret_key(b"fleet-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
        assert_eq!(a.expose_secret().len(), 32);
        assert_eq!(a.expose_secret(), again.expose_secret());
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_ne!(
            a.expose_secret(),
            b"fleet-key-aaaaaaaaaaaaaaaaaaaaaaa".as_slice()
        );
    }
}
