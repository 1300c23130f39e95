//! Mutual TLS on loopback (RFC 8705 tests): [`TestPki`], a throw-away certificate authority
//! made with `openssl`; [`MtlsFront`], a TLS-terminating front for `oidc-provider` that
//! forwards the client certificate in a header, as nginx does; [`TlsServer`], an axum router
//! served over TLS that hands each request its caller's certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

/// The header [`MtlsFront`] forwards the client certificate in: its URL-encoded PEM (nginx's
/// `$ssl_client_escaped_cert`), empty when the client sent none.
pub const CLIENT_CERT_HEADER: &str = "x-client-cert";
/// The header [`MtlsFront`] says whether the certificate chains to the [`TestPki`]'s CA in:
/// `SUCCESS`, `FAILED` or `NONE` (nginx's `$ssl_client_verify`).
pub const CLIENT_VERIFY_HEADER: &str = "x-client-verify";

/// A certificate and its private key, as PEM.
#[derive(Clone)]
pub struct CertifiedKey {
    /// The certificate (PEM).
    pub cert_pem: Vec<u8>,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: Vec<u8>,
}

impl CertifiedKey {
    /// The certificate, DER-encoded.
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(&self.cert_pem)
            .expect("a PEM certificate")
            .to_vec()
    }

    /// The certificate's DER, base64 (standard, padded): an `x5c` entry.
    pub fn x5c(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.der())
    }
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("key", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

/// A throw-away certificate authority in a temporary folder (removed when dropped), with a
/// server certificate for `127.0.0.1`: every key is a fresh P-256 key made by `openssl`.
pub struct TestPki {
    dir: PathBuf,
    server: CertifiedKey,
    ca: Vec<u8>,
}

impl TestPki {
    /// Makes the CA and the server certificate.
    pub fn create() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "en-auth-mtls-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("temporary folder");
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=en-auth mtls test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        );
        let ca = std::fs::read(dir.join("ca.crt")).expect("ca.crt");
        let mut pki = Self {
            dir,
            server: CertifiedKey {
                cert_pem: Vec::new(),
                key_pem: Vec::new(),
            },
            ca,
        };
        pki.server = pki.issue(
            "server",
            "/CN=127.0.0.1",
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        pki
    }

    /// The CA certificate (PEM): what clients of [`MtlsFront`] and [`TlsServer`] trust.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca
    }

    /// The file of the CA certificate (PEM), for programs that read it from a file
    /// (`NODE_EXTRA_CA_CERTS`, `redis-server --tls-ca-cert-file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The server certificate for `127.0.0.1` (signed by the CA) and its key.
    pub fn server(&self) -> &CertifiedKey {
        &self.server
    }

    /// The files of the server certificate and of its key (PEM), for programs that read them
    /// from files (`redis-server --tls-cert-file --tls-key-file`).
    pub fn server_files(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("server.crt"), self.dir.join("server.key"))
    }

    /// A client certificate for `subject` (e.g. `/CN=my-service`) signed by the CA; `name`
    /// names its files.
    pub fn client(&self, name: &str, subject: &str) -> CertifiedKey {
        self.issue(
            name,
            subject,
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
    }

    /// A client certificate for `subject` signed by an intermediate CA the CA signed: its
    /// `cert_pem` is the chain, leaf first, then the intermediate (what a client sends).
    pub fn client_via_intermediate(&self, name: &str, subject: &str) -> CertifiedKey {
        let intermediate = format!("{name}-intermediate");
        self.issue_by(
            "ca",
            &intermediate,
            "/CN=en-auth mtls intermediate CA",
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
        );
        let mut leaf = self.issue_by(
            &intermediate,
            name,
            subject,
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        let chain = std::fs::read(self.dir.join(format!("{intermediate}.crt")))
            .expect("intermediate certificate");
        leaf.cert_pem.extend_from_slice(&chain);
        leaf
    }

    /// A self-signed client certificate for `subject` (RFC 8705 §2.2).
    pub fn self_signed_client(&self, name: &str, subject: &str) -> CertifiedKey {
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                subject,
                "-addext",
                "extendedKeyUsage=clientAuth",
                "-keyout",
                &key,
                "-out",
                &crt,
            ],
        );
        self.read(&crt, &key)
    }

    fn issue(&self, name: &str, subject: &str, extensions: &str) -> CertifiedKey {
        self.issue_by("ca", name, subject, extensions)
    }

    /// A certificate signed by `issuer` (the files `{issuer}.crt` and `{issuer}.key`).
    fn issue_by(&self, issuer: &str, name: &str, subject: &str, extensions: &str) -> CertifiedKey {
        let (issuer_crt, issuer_key) = (format!("{issuer}.crt"), format!("{issuer}.key"));
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(self.dir.join(&ext), extensions).expect("extensions file");
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &issuer_crt,
                "-CAkey",
                &issuer_key,
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
        self.read(&crt, &key)
    }

    fn read(&self, crt: &str, key: &str) -> CertifiedKey {
        CertifiedKey {
            cert_pem: std::fs::read(self.dir.join(crt)).expect("certificate"),
            key_pem: std::fs::read(self.dir.join(key)).expect("key"),
        }
    }

    fn ca_roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        Arc::new(roots)
    }

    /// A TLS server configuration with the server certificate and `client_auth`.
    fn server_config(&self, client_auth: Arc<dyn ClientCertVerifier>) -> rustls::ServerConfig {
        let chain = vec![
            CertificateDer::from_pem_slice(&self.server.cert_pem)
                .expect("server certificate")
                .into_owned(),
        ];
        let key = PrivateKeyDer::from_pem_slice(&self.server.key_pem).expect("server key");
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(client_auth)
            .with_single_cert(chain, key)
            .expect("server certificate and key")
    }

    /// A verifier of client certificates issued by the CA, not requiring one.
    fn ca_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        WebPkiClientVerifier::builder_with_provider(self.ca_roots(), provider())
            .allow_unauthenticated()
            .build()
            .expect("client verifier")
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Accepts any client certificate whose holder proves the key (self-signed ones included,
/// for `self_signed_tls_client_auth`), and none: whether it chains to the CA is decided
/// after the handshake and forwarded, as nginx's `ssl_verify_client optional_no_ca` does.
#[derive(Debug)]
struct AnyClientCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Serves `service_for(peer chain)` on each TLS connection accepted on `tcp` (failed
/// handshakes are dropped).
fn serve_tls<F>(tcp: TcpListener, acceptor: TlsAcceptor, service_for: F) -> JoinHandle<()>
where
    F: Fn(Option<Vec<CertificateDer<'static>>>) -> Router + Send + Sync + 'static,
{
    let service_for = Arc::new(service_for);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                continue;
            };
            let (acceptor, service_for) = (acceptor.clone(), service_for.clone());
            tokio::spawn(async move {
                let handshake = acceptor.accept(stream);
                let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), handshake).await
                else {
                    return;
                };
                let chain = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect());
                let service = TowerToHyperService::new(service_for(chain));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    })
}

/// A TLS-terminating front on a free loopback port for an HTTP upstream (`oidc-provider`):
/// it asks for a client certificate (any, or none), and forwards every request with the
/// certificate in [`CLIENT_CERT_HEADER`] and whether it chains to the [`TestPki`]'s CA in
/// [`CLIENT_VERIFY_HEADER`], replacing any such headers the client sent.
pub struct MtlsFront {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MtlsFront {
    /// Starts the front for `upstream` (e.g. `http://127.0.0.1:4000`), with `pki`'s server
    /// certificate.
    pub async fn start(pki: &TestPki, upstream: &str) -> Self {
        let provider = provider();
        let config = pki.server_config(Arc::new(AnyClientCertificate {
            provider: provider.clone(),
        }));
        let ca = WebPkiClientVerifier::builder_with_provider(pki.ca_roots(), provider)
            .build()
            .expect("CA verifier");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("address");
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let upstream = upstream.trim_end_matches('/').to_owned();
        let task = serve_tls(tcp, TlsAcceptor::from(Arc::new(config)), move |chain| {
            let (cert, verify) = match chain.as_deref() {
                Some([leaf, intermediates @ ..]) => {
                    let verified = ca
                        .verify_client_cert(leaf, intermediates, UnixTime::now())
                        .is_ok();
                    let pem = pem_of(leaf);
                    let escaped: String = form_urlencoded_component(&pem);
                    (escaped, if verified { "SUCCESS" } else { "FAILED" })
                }
                _ => (String::new(), "NONE"),
            };
            let (http, upstream) = (http.clone(), upstream.clone());
            Router::new()
                .fallback(move |request: Request| forward(http, upstream, request, cert, verify))
        });
        Self { addr, task }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for MtlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The PEM text of a DER certificate.
fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Percent-encodes everything but unreserved characters (what nginx's
/// `$ssl_client_escaped_cert` does to a PEM).
fn form_urlencoded_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Sends `request` on to `upstream` with the certificate headers, and its answer back.
async fn forward(
    http: reqwest::Client,
    upstream: String,
    request: Request,
    cert: String,
    verify: &'static str,
) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(body) = axum::body::to_bytes(body, 1 << 20).await else {
        return status(http::StatusCode::PAYLOAD_TOO_LARGE);
    };
    let mut headers = parts.headers;
    for name in [
        http::header::HOST,
        http::header::CONNECTION,
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    headers.remove(CLIENT_CERT_HEADER);
    headers.remove(CLIENT_VERIFY_HEADER);
    if let Ok(value) = http::HeaderValue::try_from(cert) {
        headers.insert(CLIENT_CERT_HEADER, value);
    }
    headers.insert(CLIENT_VERIFY_HEADER, http::HeaderValue::from_static(verify));
    let sent = http
        .request(parts.method, format!("{upstream}{path}"))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(answer) = sent else {
        return status(http::StatusCode::BAD_GATEWAY);
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != http::header::TRANSFER_ENCODING && name != http::header::CONNECTION {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response
        .body(Body::from(bytes))
        .unwrap_or_else(|_| status(http::StatusCode::BAD_GATEWAY))
}

fn status(code: http::StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = code;
    response
}

/// An axum router served over TLS on a free loopback port with the [`TestPki`]'s server
/// certificate. Client certificates are asked for and, when sent, must chain to the CA;
/// a client without one is served too. The router of a connection whose client sent one
/// gets the extension `tag(leaf DER)` on each request (an `en_auth_verify::PeerCertificate`,
/// say), as a server's TLS acceptor would put it there.
pub struct TlsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsServer {
    /// Serves `router`.
    pub async fn start<T, F>(pki: &TestPki, router: Router, tag: F) -> Self
    where
        T: Clone + Send + Sync + 'static,
        F: Fn(Vec<u8>) -> T + Send + Sync + 'static,
    {
        let config = pki.server_config(pki.ca_verifier());
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("address");
        let task = serve_tls(
            tcp,
            TlsAcceptor::from(Arc::new(config)),
            move |chain| match chain.as_ref().and_then(|chain| chain.first()) {
                Some(leaf) => router.clone().layer(axum::Extension(tag(leaf.to_vec()))),
                None => router.clone(),
            },
        );
        Self { addr, task }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl crate::OidcProvider {
    /// Client `mtls-ca-client` (`tls_client_auth`, certificate-bound tokens) and the subject
    /// its certificate must have (give it to [`TestPki::client`]).
    pub const MTLS_CA_CLIENT: (&'static str, &'static str) =
        ("mtls-ca-client", "/CN=en-auth mtls client");
    /// Client `mtls-self-signed-client` (`self_signed_tls_client_auth`, certificate-bound
    /// tokens), registered with [`register_self_signed_client`](Self::register_self_signed_client).
    pub const MTLS_SELF_SIGNED_CLIENT: &'static str = "mtls-self-signed-client";

    /// Names `alias` as the discovery document's `mtls_endpoint_aliases.token_endpoint`.
    pub async fn set_mtls_token_endpoint_alias(&self, alias: &str) {
        self.mtls_hook(serde_json::json!({ "token_endpoint_alias": alias }))
            .await;
    }

    /// Registers (or re-registers) [`MTLS_SELF_SIGNED_CLIENT`](Self::MTLS_SELF_SIGNED_CLIENT)
    /// with `certificate` (its `x5c`).
    pub async fn register_self_signed_client(&self, certificate: &CertifiedKey) {
        self.mtls_hook(serde_json::json!({ "self_signed_x5c": certificate.x5c() }))
            .await;
    }

    async fn mtls_hook(&self, body: serde_json::Value) {
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .post(format!("{}/__mtls", self.issuer()))
            .json(&body)
            .send()
            .await
            .expect("POST /__mtls");
        assert!(response.status().is_success(), "POST /__mtls: {response:?}");
    }
}
