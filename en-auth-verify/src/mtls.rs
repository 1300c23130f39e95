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
//!   URL-encoded PEM of the leaf certificate alone — nginx's `$ssl_client_escaped_cert`, or
//!   AWS ALB's `X-Amzn-Mtls-Clientcert-Leaf` (mutual TLS verify mode). Other formats (a
//!   chain, base64 DER, PEM without its `BEGIN`/`END` lines, as HAProxy and Traefik forward
//!   by default) are refused. The header is read only when configured, and must be set (and a
//!   client's own header of that name removed) by the proxy alone.

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
/// example with `WebPkiClientVerifier::builder(roots).allow_unauthenticated()` for callers
/// whose certificates a CA issued; for self-signed ones, `self_signed_tls_client_auth`, a
/// `ClientCertVerifier` that accepts any certificate but checks the handshake signatures —
/// the whole verifier is in `docs/client-authentication.md`), and give the router of each
/// connection the extension, with the **leaf** certificate, the first of the chain
/// (`axum::Extension` as a layer inserts it into every request):
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
    /// certificate (nginx `$ssl_client_escaped_cert`, AWS ALB `X-Amzn-Mtls-Clientcert-Leaf`);
    /// plain PEM is read too. `None` unless it holds exactly one PEM certificate: a chain, or
    /// two values run together, is refused rather than its first certificate taken (which
    /// one did the proxy verify?).
    ///
    /// ```
    /// # use en_auth_verify::PeerCertificate;
    /// assert!(PeerCertificate::from_escaped_pem("").is_none());
    /// assert!(PeerCertificate::from_escaped_pem("-----BEGIN%20CERTIFICATE-----%0Anope").is_none());
    /// ```
    pub fn from_escaped_pem(value: &str) -> Option<Self> {
        let pem = percent_encoding::percent_decode_str(value).collect::<Vec<u8>>();
        let mut certificates = CertificateDer::pem_slice_iter(&pem);
        let der = certificates.next()?.ok()?;
        if certificates.next().is_some() {
            return None;
        }
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

/// The caller's certificate, from wherever the route takes it; `Err` when the source is
/// ambiguous (several headers) or unreadable.
pub(crate) fn presented_certificate(
    source: &CertificateSource,
    extensions: &http::Extensions,
    headers: &HeaderMap,
) -> Result<Option<PeerCertificate>, Error> {
    match source {
        CertificateSource::Tls => Ok(extensions.get::<PeerCertificate>().cloned()),
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
            if text.contains(',') {
                // Two values folded into one (a client's header appended to the proxy's, or
                // a chain): which one did the proxy verify? Refuse rather than guess.
                return Err(invalid("several values joined with `,`"));
            }
            PeerCertificate::from_escaped_pem(text)
                .map(Some)
                .ok_or_else(|| invalid("not one PEM certificate"))
        }
    }
}

/// The certificate `claims` are bound to (`cnf.x5t#S256`), if any.
pub(crate) fn bound_certificate(claims: &crate::Claims) -> Result<Option<&str>, Error> {
    match claims.extra.get("cnf").and_then(|cnf| cnf.get("x5t#S256")) {
        None => Ok(None),
        Some(value) => value.as_str().map(Some).ok_or_else(|| Error::InvalidToken {
            reason: "cnf.x5t#S256 is not a string".into(),
        }),
    }
}

/// RFC 8705 §3: a bound token is accepted only from a caller that presented the certificate
/// it names; an unbound one only when the route does not require binding. The presented
/// certificate's thumbprint is computed only for a bound token.
pub(crate) fn check_binding(
    require_bound: bool,
    claims: &crate::Claims,
    presented: Option<&PeerCertificate>,
) -> Result<(), Error> {
    match (bound_certificate(claims)?, presented) {
        (None, _) if require_bound => Err(Error::InvalidToken {
            reason: "this route requires a certificate-bound token (no cnf.x5t#S256)".into(),
        }),
        (None, _) => Ok(()),
        (Some(_), None) => Err(Error::InvalidToken {
            reason: "a certificate-bound token came without a client certificate".into(),
        }),
        (Some(bound), Some(presented)) if constant_time_eq(bound, &presented.thumbprint()) => {
            Ok(())
        }
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

    /// A PEM "certificate" (the DER is not parsed, only hashed).
    fn pem(body: &str) -> String {
        format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
    }

    fn escaped(text: &str) -> String {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    #[test]
    fn bound_tokens_need_the_certificate_they_name() {
        let (lenient, strict) = (false, true);
        let mine = PeerCertificate::new(b"mine".to_vec());
        let other = PeerCertificate::new(b"other".to_vec());
        let bound = claims(&format!(
            r#"{{"cnf":{{"x5t#S256":"{}"}}}}"#,
            mine.thumbprint()
        ));
        let unbound = claims(r#"{"sub":"x"}"#);
        assert!(check_binding(lenient, &bound, Some(&mine)).is_ok());
        assert!(check_binding(lenient, &bound, Some(&other)).is_err());
        assert!(check_binding(lenient, &bound, None).is_err());
        assert!(check_binding(lenient, &unbound, None).is_ok());
        assert!(check_binding(lenient, &unbound, Some(&mine)).is_ok());
        assert!(check_binding(strict, &unbound, Some(&mine)).is_err());
        assert!(check_binding(strict, &bound, Some(&mine)).is_ok());
        let odd = claims(r#"{"cnf":{"x5t#S256":42}}"#);
        assert!(check_binding(lenient, &odd, Some(&mine)).is_err());
        assert!(bound_certificate(&odd).is_err());
        assert_eq!(
            bound_certificate(&bound).unwrap(),
            Some(mine.thumbprint().as_str())
        );
        assert_eq!(bound_certificate(&unbound).unwrap(), None);
    }

    #[test]
    fn hostile_headers_are_refused_not_panicked_on() {
        let source = CertificateSource::Header(http::HeaderName::from_static("x-client-cert"));
        let ext = http::Extensions::new();
        let read = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-client-cert", value.parse().unwrap());
            presented_certificate(&source, &ext, &headers)
        };
        let (leaf, attacker) = (pem("AAAA"), pem("BBBB"));
        // One certificate: read.
        let presented = read(&escaped(&leaf)).unwrap().expect("a certificate");
        assert_eq!(presented.der(), [0, 0, 0]);
        let folded = [
            // The client's header appended to the proxy's by a proxy that does not replace it.
            format!("{}, {}", escaped(&attacker), escaped(&leaf)),
            format!("{},{}", escaped(&attacker), escaped(&leaf)),
            // Two certificates in one value (a chain, or one prepended).
            escaped(&format!("{attacker}{leaf}")),
            escaped(&format!("{attacker}\n{leaf}")),
        ];
        let hostile = [
            "%ZZ",
            "-----BEGIN CERTIFICATE-----",
            "%FF%FE",
            "a%",
            "AAAA",
            ",",
        ];
        for value in folded.iter().map(String::as_str).chain(hostile) {
            assert!(read(value).is_err(), "{value}");
        }
        let mut headers = HeaderMap::new();
        headers.insert("x-client-cert", "".parse().unwrap());
        assert_eq!(
            presented_certificate(&source, &ext, &headers).unwrap(),
            None
        );
        headers.append("x-client-cert", "".parse().unwrap());
        assert!(presented_certificate(&source, &ext, &headers).is_err());
    }
}
