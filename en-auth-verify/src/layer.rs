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
use en_auth_core::secrecy::SecretString;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tower_layer::Layer;
use tower_service::Service;

use crate::dpop::{DpopError, DpopRequest, DpopVerifier, bound_thumbprint};
use crate::mtls::{
    CertificateSource, PeerCertificate, bound_certificate, check_binding, presented_certificate,
};
use crate::verifier::check_scopes;
use crate::{Claims, Verifier};

/// The verified claims of the request's token, and the token itself, put in the request
/// extensions by [`RequireAuth`]; with the `axum` feature, also an extractor.
///
/// The token ([`token`](Self::token)) is what an API passes on when it calls another on its
/// caller's behalf (`en_auth::oauth2::OnBehalfOf`); it is a secret, `[REDACTED]` in `Debug`.
///
/// ```no_run
/// use axum::extract::State;
/// use axum::http::StatusCode;
/// use en_auth_oauth2::{CallerToken, OnBehalfOf};
/// use en_auth_verify::Authenticated;
///
/// async fn orders(
///     State(obo): State<OnBehalfOf>,
///     caller: Authenticated,
/// ) -> Result<String, StatusCode> {
///     let token = obo
///         .token_for(CallerToken::verified(caller.token(), caller.exp))
///         .await
///         .map_err(|_| StatusCode::BAD_GATEWAY)?;
///     // … call the downstream API with `token.authorization()`
///     # let _ = token;
///     Ok(String::new())
/// }
/// ```
#[derive(Clone)]
pub struct Authenticated(pub Arc<Claims>, VerifiedToken);

/// The verified token, as it came (shared: cloning an [`Authenticated`] copies no token).
#[derive(Clone)]
struct VerifiedToken(Arc<SecretString>);

impl Authenticated {
    /// The verified `claims` of `token`.
    pub fn new(claims: Arc<Claims>, token: &str) -> Self {
        Self(
            claims,
            VerifiedToken(Arc::new(SecretString::from(token.to_owned()))),
        )
    }

    /// The verified token, as the caller sent it (without its `Bearer` / `DPoP` scheme).
    pub fn token(&self) -> &SecretString {
        &self.1.0
    }
}

impl std::fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Authenticated")
            .field(&self.0)
            .field(&"[REDACTED]")
            .finish()
    }
}

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
    /// DPoP required on the wrapped routes (sender-constrained tokens, RFC 9449).
    dpop: Option<DpopVerifier>,
    /// Certificate-bound tokens checked on the wrapped routes (mutual TLS, RFC 8705 §3).
    certificate: Option<CertificateSetting>,
    /// Tokens without `cnf.x5t#S256` refused.
    require_certificate_binding: bool,
    /// Without a certificate source, tokens with `cnf.x5t#S256` accepted as bearer tokens.
    accept_certificate_bound_as_bearer: bool,
}

/// [`RequireAuth::certificate_from_header`] with a name that cannot be a header: every
/// request is refused with 503 rather than checked against nothing.
#[derive(Clone, Debug)]
enum CertificateSetting {
    On(CertificateSource),
    Invalid(String),
}

/// What a DPoP route needs from the request besides the token.
struct ProofParts {
    method: http::Method,
    path: String,
    host: Option<HeaderValue>,
    proofs: Vec<HeaderValue>,
}

/// Why a request is refused: the token (or scopes), or its DPoP proof.
enum Refusal {
    Token(Error),
    Proof(DpopError),
}

impl From<Error> for Refusal {
    fn from(err: Error) -> Self {
        Refusal::Token(err)
    }
}

impl RequireAuth {
    /// Requires a token `verifier` accepts.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            scopes: Arc::from(Vec::new()),
            dpop: None,
            certificate: None,
            require_certificate_binding: false,
            accept_certificate_bound_as_bearer: false,
        }
    }

    /// Checks certificate-bound tokens (mutual TLS, RFC 8705 §3) on the wrapped routes: a
    /// token whose `cnf.x5t#S256` names a client certificate is accepted only from a caller
    /// that presented that certificate in the TLS handshake — a [`PeerCertificate`] your TLS
    /// acceptor puts in the request's extensions (see its documentation for axum and
    /// tokio-rustls). Otherwise: `401` with `error="invalid_token"`.
    ///
    /// Tokens without `cnf.x5t#S256` are accepted as plain bearer tokens, as RFC 8705 has it
    /// (a provider binds only the tokens of clients registered for it); to refuse them, add
    /// [`require_certificate_binding`](Self::require_certificate_binding). Without this
    /// call (or [`certificate_from_header`](Self::certificate_from_header)), no certificate
    /// is looked at and a certificate-bound token is refused (`401`), as a DPoP-bound one
    /// presented as `Bearer` is: RFC 8705 §3 has a resource server that knows the binding
    /// check it. [`accept_certificate_bound_as_bearer`](Self::accept_certificate_bound_as_bearer)
    /// accepts them unchecked instead.
    ///
    /// ```no_run
    /// # use en_auth_verify::{RequireAuth, Verifier};
    /// let layer = RequireAuth::new(Verifier::oidc("https://idp.example.com/", "https://api.example.com"))
    ///     .certificate_bound();
    /// # let _ = layer;
    /// ```
    ///
    /// [`PeerCertificate`]: crate::PeerCertificate
    pub fn certificate_bound(self) -> Self {
        self.certificate_source(CertificateSource::Tls)
    }

    /// Like [`certificate_bound`](Self::certificate_bound), with the caller's certificate
    /// taken from the header `name`, set by a TLS-terminating proxy in front of this service
    /// that verified it: the URL-encoded PEM of the leaf certificate, as nginx's
    /// `$ssl_client_escaped_cert` (`proxy_set_header X-Client-Cert $ssl_client_escaped_cert;`);
    /// an empty value means no certificate. The TLS layer's [`PeerCertificate`] is then not
    /// read.
    ///
    /// The header is trusted as the proxy's word: use this only when every request reaches
    /// the service through that proxy, and the proxy replaces any header of that name the
    /// client sent. Several headers of that name, or one that holds no certificate, are
    /// refused (`401`). An invalid header name makes every request with a valid token fail
    /// with `503` (one without a valid token still gets its `401` first).
    ///
    /// ```no_run
    /// # use en_auth_verify::{RequireAuth, Verifier};
    /// let layer = RequireAuth::new(Verifier::oidc("https://idp.example.com/", "https://api.example.com"))
    ///     .certificate_from_header("x-client-cert");
    /// # let _ = layer;
    /// ```
    ///
    /// [`PeerCertificate`]: crate::PeerCertificate
    pub fn certificate_from_header(mut self, name: &str) -> Self {
        match http::HeaderName::try_from(name) {
            Ok(name) => self.certificate_source(CertificateSource::Header(name)),
            Err(_) => {
                self.certificate = Some(CertificateSetting::Invalid(format!(
                    "`{}` is not a header name",
                    en_auth_core::untrusted_text(name)
                )));
                self
            }
        }
    }

    /// With [`certificate_bound`](Self::certificate_bound) or
    /// [`certificate_from_header`](Self::certificate_from_header) (alone, the same as after
    /// `certificate_bound`): also refuse tokens that are not certificate-bound (`401`), so
    /// that a token stolen from a client without mTLS is useless here.
    pub fn require_certificate_binding(mut self) -> Self {
        self.require_certificate_binding = true;
        self
    }

    /// Accepts certificate-bound tokens (`cnf.x5t#S256`) as plain bearer tokens, without
    /// looking at any certificate, on routes without
    /// [`certificate_bound`](Self::certificate_bound) or
    /// [`certificate_from_header`](Self::certificate_from_header) (which refuse them by
    /// default). The binding is then not checked: a stolen bound token works from anywhere.
    /// For a service that cannot see its callers' certificates (e.g. behind a proxy that
    /// does not forward them) and accepts that risk; ignored when a certificate source is
    /// configured.
    ///
    /// ```no_run
    /// # use en_auth_verify::{RequireAuth, Verifier};
    /// let layer = RequireAuth::new(Verifier::oidc("https://idp.example.com/", "https://api.example.com"))
    ///     .accept_certificate_bound_as_bearer();
    /// # let _ = layer;
    /// ```
    pub fn accept_certificate_bound_as_bearer(mut self) -> Self {
        self.accept_certificate_bound_as_bearer = true;
        self
    }

    fn certificate_source(mut self, source: CertificateSource) -> Self {
        self.certificate = Some(CertificateSetting::On(source));
        self
    }

    /// How the route checks the request's token's certificate binding, with the certificate
    /// the request came with.
    fn certificate_check<B>(&self, request: &Request<B>) -> CertificateCheck {
        let tls = CertificateSetting::On(CertificateSource::Tls);
        let setting = match &self.certificate {
            Some(setting) => setting,
            None if self.require_certificate_binding => &tls,
            None => {
                return CertificateCheck::NoSource {
                    accept_bound: self.accept_certificate_bound_as_bearer,
                };
            }
        };
        let presented = match setting {
            CertificateSetting::Invalid(reason) => Err(Error::InvalidConfiguration {
                setting: "RequireAuth::certificate_from_header".into(),
                reason: reason.clone(),
            }),
            CertificateSetting::On(source) => {
                presented_certificate(source, request.extensions(), request.headers())
            }
        };
        CertificateCheck::Checked {
            require_bound: self.require_certificate_binding,
            presented,
        }
    }

    /// Requires DPoP-bound tokens (RFC 9449) on the wrapped routes: `Authorization: DPoP
    /// <token>` whose token names a key (`cnf.jkt`), and a `DPoP` proof by that key for this
    /// request, checked by a [`DpopVerifier`] with default settings. A bound token presented
    /// as `Bearer` is refused (on every route, with or without this).
    ///
    /// ```no_run
    /// # use en_auth_verify::{RequireAuth, Verifier};
    /// let layer = RequireAuth::new(Verifier::oidc("https://idp.example.com/", "https://api.example.com")).dpop();
    /// # let _ = layer;
    /// ```
    pub fn dpop(self) -> Self {
        self.dpop_with(DpopVerifier::new())
    }

    /// Like [`dpop`](Self::dpop), with a configured verifier (public origin, window, nonce).
    pub fn dpop_with(mut self, verifier: DpopVerifier) -> Self {
        self.dpop = Some(verifier);
        self
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

    /// Verifies the `Authorization` header's token, its certificate binding and the
    /// required scopes.
    async fn check(
        &self,
        authorization: Authorization,
        certificate: CertificateCheck,
    ) -> Result<Authenticated, Error> {
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
        if bound_thumbprint(&claims).is_some() {
            return Err(Error::InvalidToken {
                reason: "a DPoP-bound token was presented as a bearer token".into(),
            });
        }
        check_certificate(&claims, certificate)?;
        check_scopes(&claims, &self.scopes)?;
        Ok(Authenticated::new(claims, token))
    }

    /// Verifies a DPoP route's request: `DPoP` token, its binding and the proof.
    async fn check_dpop(
        &self,
        dpop: &DpopVerifier,
        authorization: Option<HeaderValue>,
        parts: ProofParts,
        certificate: CertificateCheck,
    ) -> Result<Authenticated, Refusal> {
        let token = authorization
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| scheme_token(v, "dpop"))
            .ok_or_else(|| Error::InvalidToken {
                reason: "this route requires a DPoP-bound token (`Authorization: DPoP …`)".into(),
            })?;
        let claims = self.verifier.verify_shared(token).await?;
        let jkt = bound_thumbprint(&claims).ok_or_else(|| Error::InvalidToken {
            reason: "the token is not DPoP-bound (no cnf.jkt)".into(),
        })?;
        let proof = match parts.proofs.as_slice() {
            [one] => one.to_str().map_err(|_| {
                Refusal::Proof(DpopError::InvalidProof("the proof is not text".into()))
            })?,
            [] => {
                return Err(Refusal::Proof(DpopError::InvalidProof(
                    "no DPoP header".into(),
                )));
            }
            _ => {
                return Err(Refusal::Proof(DpopError::InvalidProof(
                    "more than one DPoP header".into(),
                )));
            }
        };
        dpop.verify(&DpopRequest {
            method: parts.method.as_str(),
            url: &parts.path,
            host: parts.host.as_ref().and_then(|h| h.to_str().ok()),
            access_token: token,
            proof,
            jkt,
        })
        .map_err(Refusal::Proof)?;
        check_certificate(&claims, certificate)?;
        check_scopes(&claims, &self.scopes)?;
        Ok(Authenticated::new(claims, token))
    }
}

/// How a route checks certificate-bound tokens (RFC 8705 §3).
enum CertificateCheck {
    /// No certificate source configured: a bound token is refused, unless `accept_bound`.
    NoSource { accept_bound: bool },
    /// Checked against the certificate the request came with (if any), or why it could not
    /// be read.
    Checked {
        require_bound: bool,
        presented: Result<Option<PeerCertificate>, Error>,
    },
}

/// Checks `claims`' certificate binding as the route has it.
fn check_certificate(claims: &Claims, certificate: CertificateCheck) -> Result<(), Error> {
    match certificate {
        CertificateCheck::NoSource { accept_bound: true } => Ok(()),
        CertificateCheck::NoSource {
            accept_bound: false,
        } => match bound_certificate(claims)? {
            None => Ok(()),
            Some(_) => Err(Error::InvalidToken {
                reason: "a certificate-bound token (cnf.x5t#S256) on a route that reads no \
                         client certificate (see RequireAuth::certificate_bound)"
                    .into(),
            }),
        },
        CertificateCheck::Checked {
            require_bound,
            presented,
        } => check_binding(require_bound, claims, presented?.as_ref()),
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
    scheme_token(value, "bearer")
}

/// The token of an `Authorization: <scheme> <token>` value (scheme case-insensitive).
fn scheme_token<'v>(value: &'v str, wanted: &str) -> Option<&'v str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case(wanted) && !token.is_empty()).then_some(token)
}

/// The response for a request refused on a DPoP route.
fn dpop_rejection<B: Default>(refusal: &Refusal) -> Response<B> {
    let (challenge, nonce) = match refusal {
        Refusal::Token(err @ Error::InvalidToken { .. }) => {
            tracing::info!(status = 401, reason = %err, "request refused");
            (
                "DPoP error=\"invalid_token\", algs=\"ES256 ES384 RS256 PS256 EdDSA\"",
                None,
            )
        }
        Refusal::Token(err) => return rejection(err),
        Refusal::Proof(err @ DpopError::InvalidProof(_)) => {
            tracing::info!(status = 401, reason = %err, "request refused");
            (
                "DPoP error=\"invalid_dpop_proof\", algs=\"ES256 ES384 RS256 PS256 EdDSA\"",
                None,
            )
        }
        Refusal::Proof(DpopError::UseNonce(nonce)) => {
            tracing::debug!("DPoP nonce required: challenge sent");
            ("DPoP error=\"use_dpop_nonce\"", Some(nonce.as_str()))
        }
        Refusal::Proof(DpopError::Busy) => {
            // Not the client's fault: a 401 would make it drop a good token and fetch another.
            tracing::warn!(
                status = 503,
                "DPoP replay memory full; request refused for now"
            );
            let mut response = Response::new(B::default());
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    };
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    if let Some(nonce) = nonce.and_then(|n| HeaderValue::try_from(n).ok()) {
        response.headers_mut().insert("dpop-nonce", nonce);
    }
    response
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
        let certificate = auth.certificate_check(&request);
        if let Some(dpop) = auth.dpop.clone() {
            let Authorization::One(authorization) = authorization else {
                let refusal = Refusal::Token(Error::InvalidToken {
                    reason: "more than one Authorization header".into(),
                });
                return Box::pin(async move { Ok(dpop_rejection(&refusal)) });
            };
            let parts = ProofParts {
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
                host: request.headers().get(header::HOST).cloned().or_else(|| {
                    let authority = request.uri().authority()?;
                    HeaderValue::try_from(authority.as_str()).ok()
                }),
                proofs: request.headers().get_all("dpop").iter().cloned().collect(),
            };
            return Box::pin(async move {
                match auth
                    .check_dpop(&dpop, authorization, parts, certificate)
                    .await
                {
                    Ok(authenticated) => {
                        request.extensions_mut().insert(authenticated);
                        inner.call(request).await
                    }
                    Err(refusal) => Ok(dpop_rejection(&refusal)),
                }
            });
        }
        Box::pin(async move {
            match auth.check(authorization, certificate).await {
                Ok(authenticated) => {
                    request.extensions_mut().insert(authenticated);
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

    #[tokio::test]
    async fn the_handler_gets_the_verified_token_as_a_secret() {
        use std::sync::{Arc, Mutex};

        use en_auth_core::secrecy::ExposeSecret;
        use tower::ServiceExt;

        use super::{Authenticated, RequireAuth};
        use crate::Verifier;

        let key = b"a-shared-key-of-at-least-32-bytes!!";
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        // The test is the application here: with the workspace's `backend-clash` member both
        // jsonwebtoken backends are on, and its own `encode` needs a process default.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"sub": "alice", "aud": "api", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap();
        let seen = Arc::new(Mutex::new(None::<Authenticated>));
        let handler = {
            let seen = Arc::clone(&seen);
            tower::service_fn(move |request: http::Request<()>| {
                let seen = Arc::clone(&seen);
                async move {
                    *seen.lock().unwrap() = request.extensions().get::<Authenticated>().cloned();
                    Ok::<_, std::convert::Infallible>(http::Response::new(()))
                }
            })
        };
        let service = tower_layer::Layer::layer(
            &RequireAuth::new(Verifier::hs256(key).with_audience("api")),
            handler,
        );
        // The scheme in another case and extra spaces, as RFC 9110 allows.
        let request = http::Request::get("/orders")
            .header("authorization", format!("bearer  {token} "))
            .body(())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let caller = seen.lock().unwrap().take().expect("the handler ran");
        assert_eq!(caller.token().expose_secret(), token);
        assert_eq!(caller.sub.as_deref(), Some("alice"));
        assert_eq!(caller.exp, Some(exp as i64));
        assert!(!format!("{caller:?}").contains(&token));
    }
}
