//! Certificate-bound access tokens (RFC 8705 §3): [`PeerCertificate`], the client
//! certificate a request came with, and the check that a bound token's `cnf.x5t#S256` names
//! it.
//!
//! A resource server learns the caller's certificate in one of two ways, chosen explicitly
//! on [`RequireAuth`](crate::RequireAuth):
//!
//! - **from its own TLS layer** ([`RequireAuth::certificate_bound`](crate::RequireAuth::certificate_bound)):
//!   the server's TLS acceptor puts the client's leaf certificate into each request's
//!   extensions as a [`PeerCertificate`];
//! - **from a TLS-terminating proxy in front of it**
//!   ([`RequireAuth::certificate_from_header`](crate::RequireAuth::certificate_from_header)):
//!   the proxy verifies the client certificate and forwards it in a header, as the
//!   URL-encoded PEM of the leaf certificate — nginx's `$ssl_client_escaped_cert`, HAProxy's
//!   and Traefik's equivalents. The header is read only when configured, and must be set (and
//!   a client's own header of that name removed) by the proxy alone.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use en_auth_core::Error;
use http::HeaderMap;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

/// The client certificate (leaf, DER) the caller presented in the TLS handshake: put it in
/// each request's extensions from your TLS acceptor, and
/// [`RequireAuth::certificate_bound`](crate::RequireAuth::certificate_bound) checks
/// certificate-bound tokens against it.
///
/// With axum and tokio-rustls, ask for client certificates in the `ServerConfig` (for
/// example with `WebPkiClientVerifier::builder(roots).allow_unauthenticated()`), and give the
/// router of each connection the extension (`axum::Extension` as a layer inserts it into
/// every request):
///
/// ```no_run
/// use std::sync::Arc;
/// use axum::{Extension, Router, routing::get};
/// use en_auth_verify::{PeerCertificate, RequireAuth, Verifier};
/// use hyper_util::rt::{TokioExecutor, TokioIo};
/// use hyper_util::service::TowerToHyperService;
/// use tokio_rustls::{TlsAcceptor, rustls};
///
/// # async fn serve(tls: rustls::ServerConfig) -> std::io::Result<()> {
/// let verifier = Verifier::oidc("https://idp.example.com/", "https://api.example.com");
/// let app: Router = Router::new()
///     .route("/orders", get(|| async { "orders" }))
///     .layer(RequireAuth::new(verifier).certificate_bound());
/// let acceptor = TlsAcceptor::from(Arc::new(tls));
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
/// loop {
///     let (tcp, _) = listener.accept().await?;
///     let (acceptor, app) = (acceptor.clone(), app.clone());
///     tokio::spawn(async move {
///         let Ok(stream) = acceptor.accept(tcp).await else { return };
///         // The leaf certificate of this connection, if the client sent one.
///         let leaf = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first());
///         let app = match leaf {
///             Some(leaf) => app.layer(Extension(PeerCertificate::new(leaf.clone().into_owned()))),
///             None => app,
///         };
///         let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
///             .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
///             .await;
///     });
/// }
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PeerCertificate(CertificateDer<'static>);

impl PeerCertificate {
    /// The caller's leaf certificate, DER-encoded (what rustls's `peer_certificates()` hands
    /// out first).
    pub fn new(der: impl Into<CertificateDer<'static>>) -> Self {
        Self(der.into())
    }

    /// The certificate, DER-encoded.
    pub fn der(&self) -> &[u8] {
        self.0.as_ref()
    }

    /// Its RFC 8705 thumbprint, `x5t#S256`: the base64url SHA-256 of the DER.
    pub fn thumbprint(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.der()))
    }

    /// Reads the value a TLS-terminating proxy forwards: the URL-encoded PEM of the leaf
    /// certificate (nginx `$ssl_client_escaped_cert`); plain PEM is read too. `None` when it
    /// holds no certificate.
    ///
    /// ```
    /// # use en_auth_verify::PeerCertificate;
    /// assert!(PeerCertificate::from_escaped_pem("").is_none());
    /// assert!(PeerCertificate::from_escaped_pem("-----BEGIN%20CERTIFICATE-----%0Anope").is_none());
    /// ```
    pub fn from_escaped_pem(value: &str) -> Option<Self> {
        let pem = percent_encoding::percent_decode_str(value).collect::<Vec<u8>>();
        let der = CertificateDer::from_pem_slice(&pem).ok()?;
        Some(Self(der))
    }
}

impl std::fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("x5t#S256", &self.thumbprint())
            .finish()
    }
}

/// Longest forwarded certificate header read (a URL-encoded PEM chain of a few certificates
/// is under 16 KB).
const MAX_CERTIFICATE_HEADER_BYTES: usize = 32 * 1024;

/// Where [`RequireAuth`](crate::RequireAuth) finds the caller's certificate.
#[derive(Clone, Debug)]
pub(crate) enum CertificateSource {
    /// A [`PeerCertificate`] in the request's extensions, put there by the TLS layer.
    Tls,
    /// This header, set by a trusted TLS-terminating proxy.
    Header(http::HeaderName),
}

/// The caller's certificate's thumbprint, from wherever the route takes it; `Err` when the
/// source is ambiguous (several headers) or unreadable.
pub(crate) fn presented_thumbprint(
    source: &CertificateSource,
    extensions: &http::Extensions,
    headers: &HeaderMap,
) -> Result<Option<String>, Error> {
    match source {
        CertificateSource::Tls => Ok(extensions
            .get::<PeerCertificate>()
            .map(PeerCertificate::thumbprint)),
        CertificateSource::Header(name) => {
            let mut values = headers.get_all(name).iter();
            let Some(value) = values.next() else {
                return Ok(None);
            };
            let invalid = |reason: &str| Error::InvalidToken {
                reason: format!("client certificate header `{name}`: {reason}"),
            };
            if values.next().is_some() {
                return Err(invalid("more than one"));
            }
            if value.len() > MAX_CERTIFICATE_HEADER_BYTES {
                return Err(invalid("too long"));
            }
            let text = value.to_str().map_err(|_| invalid("not text"))?;
            if text.is_empty() {
                // nginx sends an empty value when the client sent no certificate.
                return Ok(None);
            }
            PeerCertificate::from_escaped_pem(text)
                .map(|cert| Some(cert.thumbprint()))
                .ok_or_else(|| invalid("no PEM certificate in it"))
        }
    }
}

/// RFC 8705 §3: a bound token is accepted only from a caller that presented the certificate
/// it names; an unbound one only when the route does not require binding.
pub(crate) fn check_binding(
    require_bound: bool,
    claims: &crate::Claims,
    presented: Option<&str>,
) -> Result<(), Error> {
    let bound = match claims.extra.get("cnf").and_then(|cnf| cnf.get("x5t#S256")) {
        None => None,
        Some(value) => Some(value.as_str().ok_or_else(|| Error::InvalidToken {
            reason: "cnf.x5t#S256 is not a string".into(),
        })?),
    };
    match (bound, presented) {
        (None, _) if require_bound => Err(Error::InvalidToken {
            reason: "this route requires a certificate-bound token (no cnf.x5t#S256)".into(),
        }),
        (None, _) => Ok(()),
        (Some(_), None) => Err(Error::InvalidToken {
            reason: "a certificate-bound token came without a client certificate".into(),
        }),
        (Some(bound), Some(presented)) if constant_time_eq(bound, presented) => Ok(()),
        (Some(_), Some(_)) => Err(Error::InvalidToken {
            reason: "the token is bound to another client certificate than the one presented"
                .into(),
        }),
    }
}

/// Compares thumbprints without stopping at the first difference.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> crate::Claims {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn bound_tokens_need_the_certificate_they_name() {
        let (lenient, strict) = (false, true);
        let bound = claims(r#"{"cnf":{"x5t#S256":"abc"}}"#);
        let unbound = claims(r#"{"sub":"x"}"#);
        assert!(check_binding(lenient, &bound, Some("abc")).is_ok());
        assert!(check_binding(lenient, &bound, Some("abd")).is_err());
        assert!(check_binding(lenient, &bound, None).is_err());
        assert!(check_binding(lenient, &unbound, None).is_ok());
        assert!(check_binding(lenient, &unbound, Some("abc")).is_ok());
        assert!(check_binding(strict, &unbound, Some("abc")).is_err());
        assert!(check_binding(strict, &bound, Some("abc")).is_ok());
        let odd = claims(r#"{"cnf":{"x5t#S256":42}}"#);
        assert!(check_binding(lenient, &odd, Some("42")).is_err());
    }

    #[test]
    fn hostile_headers_are_refused_not_panicked_on() {
        let source = CertificateSource::Header(http::HeaderName::from_static("x-client-cert"));
        let ext = http::Extensions::new();
        for value in ["%ZZ", "-----BEGIN CERTIFICATE-----", "%FF%FE", "a%"] {
            let mut headers = HeaderMap::new();
            headers.insert("x-client-cert", value.parse().unwrap());
            assert!(
                presented_thumbprint(&source, &ext, &headers).is_err(),
                "{value}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert("x-client-cert", "".parse().unwrap());
        assert_eq!(presented_thumbprint(&source, &ext, &headers).unwrap(), None);
        headers.append("x-client-cert", "".parse().unwrap());
        assert!(presented_thumbprint(&source, &ext, &headers).is_err());
    }
}
