//! [`AuthInterceptor`]: a synchronous tonic interceptor over the token cache.

use std::sync::Arc;

use en_auth_core::{Authorizer, TokenCache};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A tonic interceptor (`Client::with_interceptor`) that adds the cached token to each call.
///
/// Interceptors cannot wait, so this one only reads the cache: with a usable token the call
/// gets `authorization: Bearer <token>` (and `x-api-key` when configured); with none yet it
/// starts the one shared fetch in the background (no task per call) and fails the call with
/// `Status::unavailable` — or, while a failure is remembered, with that error
/// (`UNAVAILABLE` when transient, `FAILED_PRECONDITION` when permanent, e.g. a wrong
/// secret). Call [`TokenCache::warm_up`] before serving to avoid that, or use
/// [`AuthLayer`](crate::AuthLayer), which waits for the token and also handles
/// `UNAUTHENTICATED` answers.
///
/// ```no_run
/// # async fn demo<A: en_auth_core::Authorizer>(authorizer: A) -> Result<(), en_auth_core::Error> {
/// use en_auth_core::TokenCache;
/// use en_auth_tower::AuthInterceptor;
/// let cache = TokenCache::new(authorizer);
/// cache.warm_up().await?;
/// let interceptor = AuthInterceptor::new(cache);
/// // let client = MyServiceClient::with_interceptor(channel, interceptor);
/// # let _ = interceptor; Ok(()) }
/// ```
pub struct AuthInterceptor<A: Authorizer> {
    cache: TokenCache<A>,
    api_key: Option<AsciiMetadataValue>,
    /// Why the client's API key cannot be sent, if it cannot: every call fails with it.
    api_key_error: Option<Arc<str>>,
}

impl<A: Authorizer> Clone for AuthInterceptor<A> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            api_key: self.api_key.clone(),
            api_key_error: self.api_key_error.clone(),
        }
    }
}

impl<A: Authorizer> std::fmt::Debug for AuthInterceptor<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthInterceptor")
            .field("cache", &self.cache)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl<A: Authorizer> AuthInterceptor<A> {
    /// An interceptor reading `cache`. An API key that cannot be sent as metadata makes every
    /// call fail with `FAILED_PRECONDITION` before anything is sent (never a call without the
    /// key).
    pub fn new(cache: TokenCache<A>) -> Self {
        let key = cache
            .authorizer()
            .client_info()
            .api_key_header()
            .and_then(|key| {
                key.map(|key| {
                    AsciiMetadataValue::try_from(key.as_bytes()).map_err(|_| {
                        en_auth_core::Error::InvalidConfiguration {
                            setting: "api_key".into(),
                            reason: "the API key is not ASCII; it cannot be sent as gRPC metadata"
                                .into(),
                        }
                    })
                })
                .transpose()
            });
        // An interceptor sees no method or URL, so it cannot make per-request proofs (DPoP).
        let key = key.and_then(|key| {
            if cache.uses_request_proofs() {
                Err(en_auth_core::Error::InvalidConfiguration {
                    setting: "authorizer".into(),
                    reason: "this authorizer needs a proof per request (DPoP), which an \
                             interceptor cannot make: use AuthLayer instead"
                        .into(),
                })
            } else {
                Ok(key)
            }
        });
        let (api_key, api_key_error) = match key {
            Ok(key) => (
                key.map(|mut value| {
                    value.set_sensitive(true);
                    value
                }),
                None,
            ),
            Err(err) => {
                tracing::error!(error = %err, "every call of this AuthInterceptor will fail");
                (None, Some(Arc::from(crate::layer::api_key_reason(err))))
            }
        };
        Self {
            cache,
            api_key,
            api_key_error,
        }
    }
}

impl<A: Authorizer> Interceptor for AuthInterceptor<A> {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(reason) = &self.api_key_error {
            return Err(Status::failed_precondition(
                crate::layer::api_key_error(reason).to_string(),
            ));
        }
        let Some(token) = self.cache.cached() else {
            // Start (or join) the one shared fetch without waiting; a remembered failure is
            // reported as it is, so wrong credentials do not read as "still fetching".
            return Err(match self.cache.start_fetch() {
                Ok(()) => Status::unavailable(
                    "no access token yet; en-auth is fetching one (warm the cache up before serving)",
                ),
                Err(err) if err.is_transient() => {
                    Status::unavailable(format!("no access token: {err}"))
                }
                Err(err) => Status::failed_precondition(format!("no access token: {err}")),
            });
        };
        let mut value = MetadataValue::try_from(token.authorization().as_bytes())
            .map_err(|_| Status::internal("the access token is not a valid metadata value"))?;
        value.set_sensitive(true);
        let metadata = request.metadata_mut();
        metadata.insert("authorization", value);
        if let Some(key) = &self.api_key {
            metadata.insert("x-api-key", key.clone());
        }
        Ok(request)
    }
}
