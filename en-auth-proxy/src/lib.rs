//! en-auth's token proxy: a service between many customers and the identity
//! provider. Customers ask it for tokens exactly as they would ask the provider
//! (`POST /oauth/token`, RFC 6749 client credentials, or the m2m-auth proxy's `POST /m2mauth` JSON);
//! it requests tokens on their behalf, caches them per (client id, audience/resource,
//! scopes), watches the provider's rate-limit headers and throttles, enforces per-customer
//! quotas, and counts how often each customer asks (`GET /metrics`).
//!
//! The token logic is en-auth's core lifecycle ([`TokenCache`](en_auth_core::TokenCache)):
//! one fetch per key at a time, tokens renewed before they expire, failures remembered with
//! backoff, and an optional shared [`TokenStore`] so several instances fetch one token per
//! key per lifetime. See `docs/proxy.md` for operating it.
//!
//! ```no_run
//! use en_auth_proxy::{Proxy, ProxyConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ProxyConfig::new("https://tenant.us.auth0.com/oauth/token");
//! let proxy = Proxy::new(config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! proxy.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod answer;
mod budget;
mod cache;
mod clock;
pub mod config;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
mod metrics;
mod quota;
mod request;
mod server;
mod upstream;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use en_auth_core::{Error, TokenStore, provider_http_client};
use secrecy::SecretSlice;

pub use budget::RateLimits;
pub use cache::{Entry, ProxyCache, ProxyKey, SECRETS_PER_KEY};
pub use config::{ClientConfig, ProxyConfig, QuotaMode, UpstreamAuth};
pub use limits::{LimitStore, LocalLimits};
pub use metrics::{MAX_CLIENT_LABELS, Metrics, MetricsSnapshot};
pub use upstream::{TokenRequest, Upstream, UpstreamAuthorizer, UpstreamToken};

/// What every request handler shares.
pub(crate) struct Shared {
    config: Arc<ProxyConfig>,
    cache: ProxyCache,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    /// Quotas, the lock-out, accepted secrets and the unknown clients' budget, over the
    /// builder's [`LimitStore`] (the cache's authorizers remember accepted secrets in it).
    limits: Arc<quota::Limits>,
    request_timeout: Duration,
}

/// A configured proxy: its router, metrics and server.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.shared.upstream)
            .field("listen", &self.shared.config.listen)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Proxy`] with options that do not come from configuration (a shared store,
/// shared limits, the secret key).
pub struct ProxyBuilder {
    config: ProxyConfig,
    store: Option<Arc<dyn TokenStore>>,
    limits: Option<Arc<dyn LimitStore>>,
    secret_key: Option<SecretSlice<u8>>,
}

impl std::fmt::Debug for ProxyBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyBuilder")
            .field("config", &self.config)
            .field("store", &self.store.is_some())
            .field("limits", &self.limits)
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

/// The shortest secret key [`ProxyBuilder::secret_key`] accepts, in bytes.
pub const MIN_SECRET_KEY_BYTES: usize = 32;

impl ProxyBuilder {
    /// Keeps quotas, the wrong-secret lock-out, the accepted secrets and the unknown
    /// clients' budget in `limits` (default: [`LocalLimits`], this process's memory). With a
    /// store shared by several instances (Redis), the limits hold for the fleet and survive
    /// restarts, and so does the upstream's rate-limit budget (429 blocks,
    /// `X-RateLimit-Remaining`, Auth0 client quotas); give every instance the same
    /// [`secret_key`](Self::secret_key) too.
    pub fn limits(mut self, limits: Arc<dyn LimitStore>) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The key of the HMAC-SHA256 under which secrets are compared and remembered (at least
    /// [`MIN_SECRET_KEY_BYTES`] random bytes, kept as secret as the client secrets). Instances
    /// sharing a [`LimitStore`] need the same key to recognize each other's accepted secrets.
    /// Default: 32 random bytes drawn at start (accepted secrets are then recognized by this
    /// process only).
    pub fn secret_key(mut self, key: SecretSlice<u8>) -> Self {
        self.secret_key = Some(key);
        self
    }

    /// Shares tokens (and fetch locks) with other instances through `store`: one upstream
    /// request per key per token lifetime across all instances that use the same store.
    pub fn store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The proxy, or what is wrong with the configuration.
    pub fn build(self) -> Result<Proxy, Error> {
        let config = Arc::new(self.config);
        config.check()?;
        if let Some(key) = &self.secret_key {
            let len = secrecy::ExposeSecret::expose_secret(key).len();
            if len < MIN_SECRET_KEY_BYTES {
                return Err(Error::InvalidConfiguration {
                    setting: "secret key".into(),
                    reason: format!(
                        "the proxy's secret key has {len} bytes; it needs at least \
                         {MIN_SECRET_KEY_BYTES} random bytes"
                    ),
                });
            }
        }
        let metrics = Arc::new(Metrics::new());
        let http = provider_http_client(
            en_auth_core::CONNECT_TIMEOUT,
            Duration::from_secs(config.upstream_timeout_secs.max(1)),
        );
        let upstream = Arc::new(Upstream::new(
            config.token_url.clone(),
            config.issuer.clone(),
            http,
            // Only a store given here is shared; this process's memory is the budget's own.
            match &self.limits {
                Some(limits) => RateLimits::shared(config.upstream_reserve, Arc::clone(limits)),
                None => RateLimits::new(config.upstream_reserve),
            },
            Arc::clone(&metrics),
        )?);
        let limits = Arc::new(quota::Limits::new(
            self.limits
                .unwrap_or_else(|| Arc::new(LocalLimits::default())),
            config.refusal(),
            config.unknown_client_per_minute,
            config.unknown_client_per_source_per_minute,
        ));
        let cache = ProxyCache::new(
            Arc::clone(&config),
            Arc::clone(&upstream),
            self.store,
            Arc::clone(&metrics),
            self.secret_key.as_ref(),
            Arc::clone(&limits),
        )?;
        Ok(Proxy {
            shared: Arc::new(Shared {
                request_timeout: Duration::from_secs(config.request_timeout_secs.max(1)),
                config,
                cache,
                upstream,
                metrics,
                limits,
            }),
        })
    }
}

impl Proxy {
    /// A proxy with `config` and tokens kept in memory.
    pub fn new(config: ProxyConfig) -> Result<Self, Error> {
        Self::builder(config).build()
    }

    /// Starts building a proxy (to add a shared store).
    pub fn builder(config: ProxyConfig) -> ProxyBuilder {
        ProxyBuilder {
            config,
            store: None,
            limits: None,
            secret_key: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ProxyConfig {
        &self.shared.config
    }

    /// The proxy's counters (also served on `GET /metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// About how many bytes the cached entries take now (bounded by
    /// [`ProxyConfig::max_cache_bytes`]).
    pub fn cached_bytes(&self) -> usize {
        self.shared.cache.bytes()
    }

    /// The upstream's rate-limit budget as last seen.
    pub fn rate_limits(&self) -> &RateLimits {
        &self.shared.upstream.limits
    }

    /// The customers' axum router: `POST /oauth/token`, `POST /m2mauth`, `GET /healthz`, and
    /// `GET /metrics` unless [`ProxyConfig::metrics_listen`] is set (then `/metrics` is 404
    /// here and served by [`metrics_router`](Self::metrics_router)).
    pub fn router(&self) -> axum::Router {
        server::router(Arc::clone(&self.shared))
    }

    /// The operators' axum router: `GET /metrics` (Prometheus text) and `GET /healthz`, for a
    /// listener of their own.
    pub fn metrics_router(&self) -> axum::Router {
        server::metrics_router(Arc::clone(&self.shared))
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting connections and
    /// lets requests in flight finish. With [`ProxyConfig::metrics_listen`] set, `/metrics`
    /// is served nowhere by this: use [`serve_with_metrics`](Self::serve_with_metrics).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with_metrics(listener, None, shutdown).await
    }

    /// Serves customers on `listener` and, when given, `GET /metrics` and `GET /healthz` on
    /// `metrics_listener` (bind it to [`ProxyConfig::metrics_listen`]), until `shutdown`
    /// completes; then both stop accepting connections and let requests in flight finish.
    /// Returns when both have stopped, with the first error either had.
    pub async fn serve_with_metrics(
        self,
        listener: tokio::net::TcpListener,
        metrics_listener: Option<tokio::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        let metrics_addr = metrics_listener
            .as_ref()
            .map(tokio::net::TcpListener::local_addr)
            .transpose()?;
        tracing::info!(
            %addr,
            metrics = ?metrics_addr,
            upstream = ?self.shared.upstream,
            "en-auth-proxy listening"
        );
        // One shutdown signal for both servers.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signal = tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            // An error means the sender is gone: the signal task ended, so stop too.
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        // With the peer's address, for the unknown clients' budget per source.
        let service = self
            .router()
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        let customers = axum::serve(listener, service)
            .with_graceful_shutdown(until_stopped(stopped.clone()))
            .into_future();
        let result = match metrics_listener {
            Some(metrics_listener) => {
                let operators = axum::serve(metrics_listener, self.metrics_router())
                    .with_graceful_shutdown(until_stopped(stopped))
                    .into_future();
                let (customers, operators) = tokio::join!(customers, operators);
                customers.and(operators)
            }
            None => customers.await,
        };
        signal.abort();
        result?;
        tracing::info!("en-auth-proxy stopped");
        Ok(())
    }
}
