//! Mutual TLS client authentication (RFC 8705): [`TlsClientIdentity`], the certificate and
//! private key a token client presents.

use std::fmt;

use base64::Engine;
use en_auth_core::Error;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
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
    /// [`Error::InvalidConfiguration`] without the key.
    pub fn from_pem(cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidConfiguration {
            setting: "client_certificate".into(),
            reason: reason.into(),
        };
        let cert_pem = cert_pem.as_ref();
        let key_pem = key_pem.as_ref();
        let leaf = CertificateDer::pem_slice_iter(cert_pem)
            .next()
            .ok_or_else(|| invalid("no PEM certificate found"))?
            .map_err(|_| invalid("the certificate PEM cannot be read"))?;
        PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| invalid("no PEM private key found (PKCS#8, PKCS#1 or SEC1)"))?;
        let mut both = Vec::with_capacity(cert_pem.len() + key_pem.len() + 1);
        both.extend_from_slice(cert_pem);
        both.push(b'\n');
        both.extend_from_slice(key_pem);
        let identity = reqwest::Identity::from_pem(&both);
        zeroize::Zeroize::zeroize(&mut both);
        let identity =
            identity.map_err(|_| invalid("the certificate and key cannot be used for TLS"))?;
        // Parsing the PEM checks neither the key's contents nor that it is the certificate's:
        // a TLS client configuration does (so a bad pair fails here, not in a handshake).
        reqwest::Client::builder()
            .identity(identity.clone())
            .build()
            .map_err(|_| {
                invalid(
                    "the certificate and key cannot be used for TLS (a damaged key, or not the \
                     certificate's key)",
                )
            })?;
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
