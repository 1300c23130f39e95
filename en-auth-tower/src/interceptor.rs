//! [`AuthInterceptor`]: a synchronous tonic interceptor over the token cache.

use std::sync::Arc;

use en_auth_core::{AdapterCore, Authorizer, TokenCache};
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
    core: AdapterCore<A>,
    /// Why this interceptor cannot authorize calls at all, if it cannot: every call fails.
    refusal: Option<Arc<str>>,
}

impl<A: Authorizer> Clone for AuthInterceptor<A> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            refusal: self.refusal.clone(),
        }
    }
}

impl<A: Authorizer> std::fmt::Debug for AuthInterceptor<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthInterceptor")
            .field("core", &self.core)
            .field("refusal", &self.refusal)
            .finish()
    }
}

impl<A: Authorizer> AuthInterceptor<A> {
    /// An interceptor reading `cache`. An API key that cannot be sent, or an authorizer that
    /// needs a proof per request (DPoP, which an interceptor cannot make: it sees no method
    /// or URL), makes every call fail with `FAILED_PRECONDITION` before anything is sent
    /// (never a call without the key or the proof).
    pub fn new(cache: TokenCache<A>) -> Self {
        let core = AdapterCore::new(cache, "AuthInterceptor");
        let refusal = core.uses_request_proofs().then(|| {
            tracing::error!(
                "every call of this AuthInterceptor will fail: the authorizer needs a proof \
                 per request (DPoP)"
            );
            Arc::from(
                "this authorizer needs a proof per request (DPoP), which an interceptor cannot \
                 make: use AuthLayer instead",
            )
        });
        Self { core, refusal }
    }
}

impl<A: Authorizer> Interceptor for AuthInterceptor<A> {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(reason) = &self.refusal {
            return Err(Status::failed_precondition(
                en_auth_core::Error::InvalidConfiguration {
                    setting: "authorizer".into(),
                    reason: reason.to_string(),
                }
                .to_string(),
            ));
        }
        // A gRPC call has no scheme or host here; only the API key can be refused.
        self.core
            .check_request(None, || None)
            .map_err(|err| Status::failed_precondition(err.to_string()))?;
        let token = match self.core.cached_token() {
            Some(token) => token,
            // Start (or join) the one shared fetch without waiting; a remembered failure is
            // reported as it is, so wrong credentials do not read as "still fetching".
            None => match self.core.start_fetch() {
                Ok(Some(token)) => token,
                Ok(None) => {
                    return Err(Status::unavailable(
                        "no access token yet; en-auth is fetching one (warm the cache up before \
                         serving)",
                    ));
                }
                Err(err) if err.is_transient() => {
                    return Err(Status::unavailable(format!("no access token: {err}")));
                }
                Err(err) => {
                    return Err(Status::failed_precondition(format!(
                        "no access token: {err}"
                    )));
                }
            },
        };
        // No proofs here (refused above), so neither method nor URL is read: every gRPC call
        // is a POST. Header values are what tonic's ASCII metadata holds, so they go in as
        // they are (marked sensitive), without a copy.
        let credentials = self
            .core
            .bearer_credentials(&token)
            .map_err(|err| Status::internal(err.to_string()))?;
        credentials.apply(request.metadata_mut().as_mut());
        Ok(request)
    }
}
