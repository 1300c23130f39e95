//! [`RequireAuth`]: a tower layer that lets only verified requests through.
//!
//! The layer only wraps: verification is the [`Verifier`]'s. A request without a valid
//! bearer token, or with more than one `Authorization` header, gets `401` with
//! `WWW-Authenticate: Bearer error="invalid_token"`; a valid
//! token without the route's scopes gets `403` with `error="insufficient_scope"`; when the
//! issuer's keys cannot be fetched, `503`. The reason goes to the log (`tracing`), never to
//! the caller. Verified claims are put in the request's extensions as [`Authenticated`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use en_auth_core::Error;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tower_layer::Layer;
use tower_service::Service;

use crate::verifier::check_scopes;
use crate::{Claims, Verifier};

/// The verified claims of the request's token, put in the request extensions by
/// [`RequireAuth`]; with the `axum` feature, also an extractor.
#[derive(Clone, Debug)]
pub struct Authenticated(pub Arc<Claims>);

impl std::ops::Deref for Authenticated {
    type Target = Claims;
    fn deref(&self) -> &Claims {
        &self.0
    }
}

/// Requires a valid bearer token (and optionally scopes) on every request of the wrapped
/// service.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use en_auth_verify::{Authenticated, RequireAuth, Verifier};
///
/// async fn orders(claims: Authenticated) -> String {
///     format!("orders for {}", claims.sub.as_deref().unwrap_or("?"))
/// }
///
/// let verifier = Verifier::oidc("https://issuer.example.com/", "https://api.example.com");
/// let app: Router = Router::new()
///     .route("/orders", get(orders))
///     .layer(RequireAuth::new(verifier).scopes(["read"]));
/// ```
#[derive(Clone, Debug)]
pub struct RequireAuth {
    verifier: Verifier,
    scopes: Arc<[String]>,
}

impl RequireAuth {
    /// Requires a token `verifier` accepts.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            scopes: Arc::from(Vec::new()),
        }
    }

    /// Also requires these scopes (each in `scope` or Auth0 `permissions`) on the wrapped
    /// routes.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Verifies the `Authorization` header's token and the required scopes.
    async fn check(&self, authorization: Authorization) -> Result<Arc<Claims>, Error> {
        let Authorization::One(authorization) = authorization else {
            // Which one would the application behind us read? Refuse rather than guess.
            return Err(Error::InvalidToken {
                reason: "more than one Authorization header".into(),
            });
        };
        let token = authorization
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(|| Error::InvalidToken {
                reason: "no bearer token".into(),
            })?;
        let claims = self.verifier.verify_shared(token).await?;
        check_scopes(&claims, &self.scopes)?;
        Ok(claims)
    }
}

/// The request's `Authorization` header(s).
enum Authorization {
    /// None or one.
    One(Option<HeaderValue>),
    /// More than one: refused.
    Several,
}

impl Authorization {
    fn of(headers: &http::HeaderMap) -> Self {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let first = values.next().cloned();
        if values.next().is_some() {
            Authorization::Several
        } else {
            Authorization::One(first)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The response for a rejected request.
pub(crate) fn rejection<B: Default>(err: &Error) -> Response<B> {
    let (status, challenge) = match err {
        Error::InvalidToken { .. } => (
            StatusCode::UNAUTHORIZED,
            "Bearer error=\"invalid_token\"".to_string(),
        ),
        Error::InsufficientScope { required } => (
            StatusCode::FORBIDDEN,
            format!(
                "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                required.join(" ")
            ),
        ),
        _ => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
    };
    tracing::info!(status = status.as_u16(), reason = %err, "request refused");
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::try_from(challenge) {
        if !value.is_empty() {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

impl<S> Layer<S> for RequireAuth {
    type Service = RequireAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireAuthService {
            inner,
            auth: self.clone(),
        }
    }
}

/// The service [`RequireAuth`] wraps around yours.
#[derive(Clone, Debug)]
pub struct RequireAuthService<S> {
    inner: S,
    auth: RequireAuth,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireAuthService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone is the one that was not polled ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let authorization = Authorization::of(request.headers());
        Box::pin(async move {
            match auth.check(authorization).await {
                Ok(claims) => {
                    request.extensions_mut().insert(Authenticated(claims));
                    inner.call(request).await
                }
                Err(err) => Ok(rejection(&err)),
            }
        })
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Authenticated {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Authenticated>()
            .cloned()
            .ok_or_else(|| {
                // The route is not behind `RequireAuth`: refuse rather than run unauthenticated.
                rejection(&Error::InvalidToken {
                    reason: "route is not protected by RequireAuth".into(),
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
