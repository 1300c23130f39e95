//! Keys that never enter the process (issue 18, item 6) against panva's `oidc-provider`:
//! a "KMS" implemented here — the key lives in a task the signer talks to over a channel, as a
//! KMS client talks to its service; it answers ECDSA signatures in DER as KMS APIs do, counts
//! sign calls and can be switched off — signs `private_key_jwt` assertions (`pkjwt-ec`,
//! `pkjwt-rsa`) and DPoP proofs (`dpop-client`); and a [`PemFileSigner`] follows a key file
//! rotated between token requests (`rotating-key-client`, registered with both keys).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use en_auth_core::{AccessToken, AuthMiddleware, Authorizer, ClientInfo, Error, TokenCache};
use en_auth_oauth2::{
    ClientAuthentication, PemFileSigner, ServiceAccountAuthorizer, Signer, SigningAlgorithm,
};
use en_auth_testkit::OidcProvider;
use tokio::sync::{mpsc, oneshot};

type SignRequest = (Vec<u8>, oneshot::Sender<Vec<u8>>);

/// The key material inside the "KMS": never handed to en-auth.
enum KmsKey {
    Ec(p256::ecdsa::SigningKey),
    Rsa(jsonwebtoken::EncodingKey),
}

/// A signer whose key is held by a task ("the KMS"); en-auth sees only this handle.
#[derive(Debug)]
struct KmsSigner {
    requests: mpsc::Sender<SignRequest>,
    algorithm: SigningAlgorithm,
    kid: Option<String>,
    public_jwk: serde_json::Value,
    /// Sign calls made (failed ones included).
    calls: Arc<AtomicUsize>,
    /// While set, the KMS is unreachable.
    down: Arc<AtomicBool>,
}

impl KmsSigner {
    /// Starts the KMS task with `key`; `public_jwk` is what the KMS's "get public key" says.
    fn start(key: KmsKey, kid: Option<&str>, public_jwk: serde_json::Value) -> Self {
        let algorithm = match key {
            KmsKey::Ec(_) => SigningAlgorithm::ES256,
            KmsKey::Rsa(_) => SigningAlgorithm::RS256,
        };
        let (requests, mut inbox) = mpsc::channel::<SignRequest>(16);
        tokio::spawn(async move {
            while let Some((message, reply)) = inbox.recv().await {
                let signature = match &key {
                    // As KMS APIs answer ECDSA: an ASN.1 DER `ECDSA-Sig-Value`.
                    KmsKey::Ec(key) => {
                        use p256::ecdsa::signature::Signer as _;
                        let signature: p256::ecdsa::Signature = key.sign(&message);
                        signature.to_der().as_bytes().to_vec()
                    }
                    KmsKey::Rsa(key) => {
                        let b64 = jsonwebtoken::crypto::sign(
                            &message,
                            key,
                            jsonwebtoken::Algorithm::RS256,
                        )
                        .expect("RS256");
                        base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .decode(b64)
                            .unwrap()
                    }
                };
                let _ = reply.send(signature);
            }
        });
        Self {
            requests,
            algorithm,
            kid: kid.map(str::to_owned),
            public_jwk,
            calls: Arc::new(AtomicUsize::new(0)),
            down: Arc::new(AtomicBool::new(false)),
        }
    }
}

#[async_trait]
impl Signer for KmsSigner {
    fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }
    fn key_id(&self) -> Option<String> {
        self.kid.clone()
    }
    fn public_jwk(&self) -> serde_json::Value {
        self.public_jwk.clone()
    }
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let unreachable = || Error::CredentialUnavailable {
            credential: "kms key".into(),
            reason: "the KMS is unreachable".into(),
        };
        if self.down.load(Ordering::SeqCst) {
            return Err(unreachable());
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((message.to_vec(), reply))
            .await
            .map_err(|_| unreachable())?;
        let signature = answer.await.map_err(|_| unreachable())?;
        match self.algorithm {
            // JWS wants `r || s`: convert the DER the KMS answered.
            SigningAlgorithm::ES256 => p256::ecdsa::Signature::from_der(&signature)
                .map(|s| s.to_bytes().to_vec())
                .map_err(|_| Error::InvalidResponse {
                    status: None,
                    reason: "the KMS answered no DER signature".into(),
                }),
            _ => Ok(signature),
        }
    }
}

/// The public members of a private JWK.
fn public_members(jwk: &str) -> serde_json::Value {
    let jwk: serde_json::Value = serde_json::from_str(jwk).unwrap();
    let mut public = serde_json::Map::new();
    for member in ["kty", "crv", "x", "y", "n", "e"] {
        if let Some(value) = jwk.get(member) {
            public.insert(member.into(), value.clone());
        }
    }
    public.into()
}

async fn ec_kms(provider: &OidcProvider) -> KmsSigner {
    use p256::pkcs8::DecodePrivateKey;
    let pem = provider.client_key("ec").await;
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&pem).unwrap();
    let jwk = public_members(&provider.client_key("ec_jwk").await);
    KmsSigner::start(KmsKey::Ec(key), Some("ec-1"), jwk)
}

async fn rsa_kms(provider: &OidcProvider) -> KmsSigner {
    let pem = provider.client_key("rsa").await;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let jwk = public_members(&provider.client_key("rsa_jwk").await);
    KmsSigner::start(KmsKey::Rsa(key), Some("rsa-1"), jwk)
}

fn key_authorizer(
    provider: &OidcProvider,
    client: &str,
    signer: Arc<dyn Signer>,
) -> ServiceAccountAuthorizer {
    ServiceAccountAuthorizer::new(ClientInfo::new(client, ""), provider.token_url())
        .with_audience(OidcProvider::API)
        .with_authentication(ClientAuthentication::private_key_jwt_signer(signer))
}

#[tokio::test]
async fn a_kms_signer_signs_private_key_jwt_assertions() {
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
    let provider = OidcProvider::start(600).await;
    let cases = [
        (
            OidcProvider::EC_KEY_CLIENT,
            ec_kms(&provider).await,
            "ES256",
        ),
        (
            OidcProvider::RSA_KEY_CLIENT,
            rsa_kms(&provider).await,
            "RS256",
        ),
    ];
    for (n, ((client, kid), kms, alg)) in cases.into_iter().enumerate() {
        let calls = Arc::clone(&kms.calls);
        let sa = key_authorizer(&provider, client, Arc::new(kms));
        // pkjwt-ec's token endpoint asks for a DPoP nonce only with DPoP; none here.
        sa.authorize()
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        sa.authorize()
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "{alg}: one signature per token request"
        );
        assert_eq!(provider.tokens_issued().await, 2 * (n as u64 + 1), "{alg}");
        let assertions = provider.client_assertions().await;
        let last = &assertions.last().unwrap()["header"];
        assert_eq!(last["alg"], alg);
        assert_eq!(last["kid"], kid);
    }
}

#[tokio::test]
async fn a_kms_that_is_down_is_a_transient_error_and_the_lifecycle_recovers() {
    let provider = OidcProvider::start(600).await;
    let kms = ec_kms(&provider).await;
    let (calls, down) = (Arc::clone(&kms.calls), Arc::clone(&kms.down));
    let sa = key_authorizer(&provider, OidcProvider::EC_KEY_CLIENT.0, Arc::new(kms));

    down.store(true, Ordering::SeqCst);
    let err = sa.authorize().await.expect_err("the KMS is down");
    assert!(err.is_transient(), "{err:?}");
    assert!(
        matches!(err, Error::CredentialUnavailable { .. }),
        "{err:?}"
    );
    assert_eq!(provider.token_requests().await, 0, "nothing sent unsigned");

    // The lifecycle retries with back-off (first retry after ~200 ms); the KMS comes back
    // meanwhile. Real time: the retry waits on the runtime's clock while the provider runs.
    let auth = AuthMiddleware::from_cache(TokenCache::new(sa));
    let back = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        down.store(false, Ordering::SeqCst);
    });
    auth.access_token()
        .await
        .expect("a token once the KMS is back");
    back.await.unwrap();
    assert!(
        calls.load(Ordering::SeqCst) >= 3,
        "failed attempts, then the one that signed"
    );
    assert_eq!(provider.token_requests().await, 1);
    assert_eq!(provider.tokens_issued().await, 1);
}

#[tokio::test]
async fn dpop_proofs_are_signed_by_a_kms_signer() {
    let provider = OidcProvider::start(600).await;
    // The DPoP key: a fresh P-256 key that only the KMS task holds.
    let secret: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let key = p256::ecdsa::SigningKey::from_slice(&secret).unwrap();
    let point = key.verifying_key().to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
    });
    let kms = KmsSigner::start(KmsKey::Ec(key), None, jwk.clone());
    let (calls, down) = (Arc::clone(&kms.calls), Arc::clone(&kms.down));

    for (id, secret) in [OidcProvider::DPOP_CLIENT, OidcProvider::DPOP_NONCE_CLIENT] {
        let before = calls.load(Ordering::SeqCst);
        let kms: Arc<dyn Signer> = Arc::new(KmsSigner {
            requests: kms.requests.clone(),
            algorithm: kms.algorithm,
            kid: None,
            public_jwk: kms.public_jwk.clone(),
            calls: Arc::clone(&calls),
            down: Arc::clone(&down),
        });
        let sa = ServiceAccountAuthorizer::new(ClientInfo::new(id, secret), provider.token_url())
            .with_audience(OidcProvider::API)
            .with_dpop_signer(kms);
        let token = sa.authorize().await.unwrap_or_else(|e| panic!("{id}: {e}"));
        // The provider bound the token to the KMS key.
        let claims = token.access_token().split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["cnf"]["jkt"], sa.dpop_thumbprint().unwrap(), "{id}");
        let token_proofs = calls.load(Ordering::SeqCst) - before;
        let expected = if id == OidcProvider::DPOP_NONCE_CLIENT.0 {
            2
        } else {
            1
        };
        assert_eq!(
            token_proofs, expected,
            "{id}: one proof per token request sent"
        );

        // An API request's proof is signed by the KMS too, and names the request.
        let (name, proof) = sa
            .request_proof(
                &token,
                &http::Method::GET,
                "https://api.example.com/orders?x=1",
            )
            .await
            .unwrap()
            .expect("a proof");
        assert_eq!(name, "dpop");
        assert_eq!(calls.load(Ordering::SeqCst) - before, expected + 1);
        let parts: Vec<&str> = proof.to_str().unwrap().split('.').collect();
        let decode = |p: &str| -> serde_json::Value {
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(decode(parts[0])["jwk"], jwk, "the KMS key's public half");
        assert_eq!(decode(parts[0])["typ"], "dpop+jwt");
        assert_eq!(decode(parts[1])["htu"], "https://api.example.com/orders");

        // The KMS down: the proof fails with its transient error, then works again.
        down.store(true, Ordering::SeqCst);
        let err = sa
            .request_proof(&token, &http::Method::GET, "https://api.example.com/orders")
            .await
            .expect_err("no proof without the KMS");
        assert!(err.is_transient(), "{err:?}");
        down.store(false, Ordering::SeqCst);
        assert!(
            sa.request_proof(&token, &http::Method::GET, "https://api.example.com/orders")
                .await
                .unwrap()
                .is_some()
        );
    }
}

#[tokio::test]
async fn a_rotated_key_file_is_used_without_rebuilding_the_authorizer() {
    let provider = OidcProvider::start(600).await;
    let keys: serde_json::Value = reqwest::get(format!("{}/__signer_keys", provider.issuer()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids = [
        keys["rotation_kids"][0].as_str().unwrap(),
        keys["rotation_kids"][1].as_str().unwrap(),
    ];
    let dir = std::env::temp_dir().join(format!("en-auth-rotation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client-key.pem");
    std::fs::write(&path, keys["rotation_1"].as_str().unwrap()).unwrap();
    let (captured, _guard) = en_auth_testkit::capture_traces();

    let signer = Arc::new(PemFileSigner::open(&path).expect("key 1"));
    assert_eq!(
        signer.key_id().as_deref(),
        Some(kids[0]),
        "kid: the key's thumbprint"
    );
    let sa = key_authorizer(&provider, "rotating-key-client", signer.clone());
    let kid_sent = || async {
        provider.client_assertions().await.last().unwrap()["header"]["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    sa.authorize().await.expect("a token with key 1");
    assert_eq!(kid_sent().await, kids[0]);

    // The key is rotated: the file now holds key 2 (written in place, as a secret manager
    // agent might).
    std::fs::write(&path, keys["rotation_2"].as_str().unwrap()).unwrap();
    sa.authorize()
        .await
        .expect("a token with key 2, accepted by its signature");
    assert_eq!(kid_sent().await, kids[1]);
    assert_eq!(signer.key_id().as_deref(), Some(kids[1]));
    assert_eq!(provider.tokens_issued().await, 2);

    // A broken new file: the last good key (2) stays in use, one warning, no panic.
    std::fs::write(
        &path,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    sa.authorize().await.expect("still key 2");
    sa.authorize().await.expect("still key 2");
    assert_eq!(kid_sent().await, kids[1]);
    assert_eq!(provider.tokens_issued().await, 4);
    let logs = captured.text();
    assert_eq!(logs.matches("cannot be used").count(), 1, "{logs}");
    assert!(!logs.contains("not a key"), "{logs}");
    std::fs::remove_dir_all(&dir).unwrap();
}
