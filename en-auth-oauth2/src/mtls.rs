//! Mutual TLS client authentication (RFC 8705): [`TlsClientIdentity`], the certificate and
//! private key a token client presents.

use std::fmt;

use base64::Engine;
use en_auth_core::Error;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::Digest as _;

/// A client certificate (with its chain) and its private key, presented in the TLS handshake
/// of token requests — and of API requests, for certificate-bound tokens.
///
/// `Debug` shows the certificate's thumbprint, never the key.
#[derive(Clone)]
pub struct TlsClientIdentity {
    identity: reqwest::Identity,
    /// `x5t#S256`: base64url SHA-256 of the leaf certificate's DER (RFC 8705 §3.1).
    thumbprint: String,
}

impl TlsClientIdentity {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1). Unreadable input, or a key that is not the certificate's, is
    /// [`Error::InvalidConfiguration`] without the key. Only the pair is checked: no CA
    /// certificate is read (the system's may be missing, as in a minimal container).
    pub fn from_pem(cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Result<Self, Error> {
        let cert_pem = cert_pem.as_ref();
        let key_pem = key_pem.as_ref();
        let leaf = CertificateDer::pem_slice_iter(cert_pem)
            .next()
            .ok_or_else(|| invalid("no PEM certificate found"))?
            .map_err(|_| invalid("the certificate PEM cannot be read"))?;
        // Looked for, not decoded: the key is decoded once, by reqwest, into a value that is
        // not left lying around.
        if !has_private_key_label(key_pem) {
            return Err(invalid("no PEM private key found (PKCS#8, PKCS#1 or SEC1)"));
        }
        let mut both = Vec::with_capacity(cert_pem.len() + key_pem.len() + 1);
        both.extend_from_slice(cert_pem);
        both.push(b'\n');
        both.extend_from_slice(key_pem);
        let identity = reqwest::Identity::from_pem(&both);
        zeroize::Zeroize::zeroize(&mut both);
        let identity =
            identity.map_err(|_| invalid("the certificate and key cannot be used for TLS"))?;
        check_pair(&identity)?;
        let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(leaf.as_ref()));
        Ok(Self {
            identity,
            thumbprint,
        })
    }

    /// The certificate's RFC 8705 thumbprint (`x5t#S256`): what a certificate-bound token's
    /// `cnf` names.
    pub fn certificate_thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The identity for a `reqwest::ClientBuilder::identity`.
    pub fn reqwest_identity(&self) -> reqwest::Identity {
        self.identity.clone()
    }
}

/// Parsing the PEM checks neither the key's contents nor that it is the certificate's: a TLS
/// client configuration does (so a bad pair fails here, not in a handshake). It trusts no
/// server (`tls_certs_only([])`), so the system's CA certificates are not loaded: their
/// absence is no reason to call the key damaged.
fn check_pair(identity: &reqwest::Identity) -> Result<(), Error> {
    reqwest::Client::builder()
        .tls_certs_only([])
        .identity(identity.clone())
        .build()
        .map(drop)
        .map_err(|e| {
            // rustls's and reqwest's messages name the TLS problem, never the key.
            invalid(&format!(
                "the certificate and key cannot be used for TLS (a damaged key, or not the \
                 certificate's key): {}",
                error_chain(&e)
            ))
        })
}

/// Whether `pem` has a `-----BEGIN … PRIVATE KEY-----` line.
fn has_private_key_label(pem: &[u8]) -> bool {
    pem.split(|&b| b == b'\n').any(|line| {
        let line = line.trim_ascii();
        line.starts_with(b"-----BEGIN ") && line.ends_with(b"PRIVATE KEY-----")
    })
}

/// `err`'s message followed by its causes' (`: `-separated): reqwest's own message alone
/// often says only "builder error".
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        let next = err.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = err.source();
    }
    text
}

fn invalid(reason: &str) -> Error {
    Error::InvalidConfiguration {
        setting: "client_certificate".into(),
        reason: reason.into(),
    }
}

impl PartialEq for TlsClientIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.thumbprint == other.thumbprint
    }
}

impl Eq for TlsClientIdentity {}

impl fmt::Debug for TlsClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientIdentity")
            .field("certificate_thumbprint", &self.thumbprint)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child process [`the_pair_is_checked_without_the_systems_ca_certificates`]
    /// starts.
    const CHILD: &str = "EN_AUTH_MTLS_NO_SYSTEM_CAS";

    /// Without any system CA certificate (`SSL_CERT_FILE`, `SSL_CERT_DIR` naming empty
    /// places, as in a minimal container) a good pair is accepted, and a bad one refused for
    /// what it is. Environment variables are process-wide, so the check runs in a child
    /// process (this test binary, running this test alone).
    #[test]
    fn the_pair_is_checked_without_the_systems_ca_certificates() {
        if std::env::var_os(CHILD).is_some() {
            let pki = en_auth_testkit::TestPki::create();
            let (good, other) = (pki.client("good", "/CN=good"), pki.client("other", "/CN=o"));
            let identity = TlsClientIdentity::from_pem(&good.cert_pem, &good.key_pem)
                .expect("a good pair, no CA certificates needed");
            assert_eq!(identity.certificate_thumbprint().len(), 43);
            let err = TlsClientIdentity::from_pem(&good.cert_pem, &other.key_pem)
                .expect_err("not the certificate's key");
            assert!(
                err.to_string().contains("not the certificate's key"),
                "{err}"
            );
            assert!(!err.to_string().contains("No CA certificates"), "{err}");
            return;
        }
        let empty = std::env::temp_dir().join(format!("en-auth-no-cas-{}", std::process::id()));
        std::fs::create_dir_all(&empty).expect("empty folder");
        std::fs::write(empty.join("empty.pem"), b"").expect("empty file");
        let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "mtls::tests::the_pair_is_checked_without_the_systems_ca_certificates",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env("SSL_CERT_FILE", empty.join("empty.pem"))
            .env("SSL_CERT_DIR", &empty)
            .output()
            .expect("the test binary runs");
        let _ = std::fs::remove_dir_all(&empty);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn a_private_key_is_found_by_its_label() {
        assert!(has_private_key_label(b"-----BEGIN PRIVATE KEY-----\nAA\n"));
        assert!(has_private_key_label(
            b"x\r\n-----BEGIN EC PRIVATE KEY-----\r\n"
        ));
        assert!(has_private_key_label(b"-----BEGIN RSA PRIVATE KEY-----"));
        assert!(!has_private_key_label(b"-----BEGIN CERTIFICATE-----\n"));
        assert!(!has_private_key_label(b""));
        let err = TlsClientIdentity::from_pem(b"", b"").expect_err("nothing");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }
}
