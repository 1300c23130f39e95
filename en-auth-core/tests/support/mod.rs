//! Shared setup of the core tests: a client-credentials authorizer for [`LocalIdp`] and a
//! client wired through [`AuthMiddleware`]; [`sim`]: the same, in process, for paused time.
#![allow(dead_code)]

use std::time::Duration;

use en_auth_core::secrecy::ExposeSecret;
use en_auth_core::{
    AuthMiddleware, Authorizer, BearerToken, ClientInfo, Error, LifecyclePolicy, RetryPolicy,
};
use en_auth_testkit::{IdpConfig, LocalIdp, ProtectedApi};

/// A minimal client-credentials authorizer for the local identity provider.
pub struct TestAuthorizer {
    pub info: ClientInfo,
    pub token_url: String,
    pub http: reqwest::Client,
}

impl TestAuthorizer {
    pub fn new(info: ClientInfo, token_url: String) -> Self {
        Self {
            info,
            token_url,
            http: reqwest::Client::new(),
        }
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

#[async_trait::async_trait]
impl Authorizer for TestAuthorizer {
    type Token = BearerToken;

    fn client_info(&self) -> &ClientInfo {
        &self.info
    }

    async fn authorize(&self) -> Result<BearerToken, Error> {
        let (id, secret) = self.info.to_basic_auth();
        let response = self
            .http
            .post(&self.token_url)
            .basic_auth(id, Some(secret.expose_secret()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs);
        match status {
            200 => {
                let body: TokenResponse =
                    response.json().await.map_err(|e| Error::InvalidResponse {
                        status: Some(status),
                        reason: e.to_string(),
                    })?;
                Ok(BearerToken::new(
                    body.access_token,
                    body.expires_in.map(Duration::from_secs),
                ))
            }
            status => Err(sim::error_for_status(status, retry_after)),
        }
    }
}

/// A provider, an API that trusts it, and a middleware client for them.
pub struct Rig {
    pub idp: LocalIdp,
    pub api: ProtectedApi,
    pub auth: AuthMiddleware<TestAuthorizer>,
    pub client: reqwest_middleware::ClientWithMiddleware,
}

impl Rig {
    pub async fn start(lifetime: Option<Duration>, policy: LifecyclePolicy) -> Self {
        Self::start_with(
            IdpConfig {
                lifetime,
                ..IdpConfig::default()
            },
            |info| info,
            policy,
        )
        .await
    }

    pub async fn start_with(
        config: IdpConfig,
        customize: impl FnOnce(ClientInfo) -> ClientInfo,
        policy: LifecyclePolicy,
    ) -> Self {
        let idp = LocalIdp::start(config).await.expect("idp starts");
        let api = ProtectedApi::start(&idp).await.expect("api starts");
        let info = customize(ClientInfo::new(idp.client_id(), idp.client_secret()));
        let auth = AuthMiddleware::with_policy(TestAuthorizer::new(info, idp.token_url()), policy);
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(auth.clone())
            .build();
        Self {
            idp,
            api,
            auth,
            client,
        }
    }

    /// GET /data; the status code.
    pub async fn get(&self) -> u16 {
        self.client
            .get(self.api.url("/data"))
            .send()
            .await
            .expect("request completes")
            .status()
            .as_u16()
    }

    /// The token the API saw on its `i`-th request.
    pub fn token_seen(&self, i: usize) -> String {
        self.api.seen()[i]
            .token
            .clone()
            .expect("request carried a token")
    }
}

/// A policy with quick retries, so fault tests run fast.
pub fn quick_policy() -> LifecyclePolicy {
    LifecyclePolicy::default().with_retry(
        RetryPolicy::default()
            .with_initial_backoff(Duration::from_millis(20))
            .with_max_elapsed(Duration::from_secs(5)),
    )
}

pub mod sim;
