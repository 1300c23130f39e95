//! [`SrpAuthorizer`]: logs a user into a Cognito user pool with SRP and keeps the tokens fresh.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_cognitoidentityprovider::Client;
use aws_sdk_cognitoidentityprovider::config::{
    BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig,
};
use aws_sdk_cognitoidentityprovider::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cognitoidentityprovider::types::{
    AuthFlowType, AuthenticationResultType, ChallengeNameType,
};
use en_auth_core::{
    Authorizer, CONNECT_TIMEOUT, CacheKey, ClientInfo, Error, REQUEST_TIMEOUT, UserCredentials,
    secure_url, untrusted_text,
};
use secrecy::ExposeSecret;
use tracing::Instrument;

use crate::maths::{self, Ephemeral};
use crate::{CognitoTokens, HeaderToken};

/// Logs a user into an AWS Cognito user pool with `USER_SRP_AUTH` — the password never
/// leaves the process, only a proof that the user knows it — and refreshes the tokens with
/// `REFRESH_TOKEN_AUTH`, logging in again when the refresh token is refused.
///
/// ```no_run
/// use en_auth_core::{AuthMiddleware, ClientInfo, UserCredentials};
/// use en_auth_srp::SrpAuthorizer;
///
/// # fn demo() -> Result<(), en_auth_core::Error> {
/// let authorizer = SrpAuthorizer::new(
///     ClientInfo::new("app-client-id", "app-client-secret"), // an empty secret for public clients
///     UserCredentials::new("alice", "correct horse battery staple"),
///     "us-east-1_AbCdEf123",                                  // the region comes from the pool id
/// )?;
/// let auth = AuthMiddleware::new(authorizer);
/// # Ok(()) }
/// ```
///
/// No AWS credentials are needed: these operations are unauthenticated. The SDK's own retries
/// are off; the lifecycle retries transient failures (throttling, 5xx, timeouts).
pub struct SrpAuthorizer {
    info: ClientInfo,
    credentials: UserCredentials,
    pool_id: String,
    pool_name: String,
    region: String,
    /// As given; checked with [`secure_url`] when the SDK client is built, before any I/O.
    endpoint: Option<String>,
    header: HeaderToken,
    client: OnceLock<Client>,
}

impl SrpAuthorizer {
    /// An authorizer for `credentials` in the pool `user_pool_id` (`<region>_<name>`), app
    /// client `client_info`. A malformed pool id is [`Error::InvalidConfiguration`].
    pub fn new(
        client_info: ClientInfo,
        credentials: UserCredentials,
        user_pool_id: &str,
    ) -> Result<Self, Error> {
        let (region, pool_name) = parse_pool_id(user_pool_id)?;
        Ok(Self {
            info: client_info,
            credentials,
            pool_id: user_pool_id.to_owned(),
            pool_name: pool_name.to_owned(),
            region: region.to_owned(),
            endpoint: None,
            header: HeaderToken::default(),
            client: OnceLock::new(),
        })
    }

    /// Sends requests to `url` instead of AWS (a local emulator, a test server). Plain
    /// `http://` is accepted on loopback only; anything else fails before any I/O.
    pub fn with_endpoint_url(mut self, url: impl AsRef<str>) -> Self {
        self.endpoint = Some(url.as_ref().to_owned());
        self.client = OnceLock::new();
        self
    }

    /// Uses a ready SDK client (your own region, endpoint, HTTP client, interceptors).
    pub fn with_client(self, client: Client) -> Self {
        let cell = OnceLock::new();
        let _ = cell.set(client);
        Self {
            client: cell,
            ..self
        }
    }

    /// Which token goes into the `Authorization` header (default: the access token).
    pub fn with_header_token(mut self, header: HeaderToken) -> Self {
        self.header = header;
        self
    }

    /// The region, read from the pool id.
    pub fn region(&self) -> &str {
        &self.region
    }

    fn client(&self) -> Result<&Client, Error> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let mut config = aws_sdk_cognitoidentityprovider::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(REQUEST_TIMEOUT)
                    .build(),
            );
        if let Some(url) = &self.endpoint {
            let url = secure_url("endpoint_url", url)?;
            config = config.endpoint_url(url.as_str().trim_end_matches('/'));
        }
        Ok(self
            .client
            .get_or_init(|| Client::from_conf(config.build())))
    }

    fn secret_hash(&self, username: &str) -> Option<String> {
        self.info.has_secret().then(|| {
            maths::secret_hash(
                self.info.client_secret().expose_secret(),
                username,
                self.info.client_id(),
            )
        })
    }

    /// The full SRP login: `InitiateAuth(USER_SRP_AUTH)` then `RespondToAuthChallenge`.
    async fn login(&self) -> Result<CognitoTokens, Error> {
        let client = self.client()?;
        let ephemeral = tokio::task::spawn_blocking(Ephemeral::random)
            .await
            .map_err(Error::transport)??;
        let user = self.credentials.user_name();
        let mut initiate = client
            .initiate_auth()
            .auth_flow(AuthFlowType::UserSrpAuth)
            .client_id(self.info.client_id())
            .auth_parameters("USERNAME", user)
            .auth_parameters("SRP_A", ephemeral.public_hex());
        if let Some(hash) = self.secret_hash(user) {
            initiate = initiate.auth_parameters("SECRET_HASH", hash);
        }
        let started = initiate.send().await.map_err(map_sdk_error)?;
        if let Some(result) = started.authentication_result() {
            return self.tokens(result);
        }
        match started.challenge_name() {
            Some(ChallengeNameType::PasswordVerifier) => {}
            other => return Err(unsupported(other)),
        }
        let params = started.challenge_parameters().cloned().unwrap_or_default();
        let responses = self.answer_password_verifier(ephemeral, &params).await?;
        let mut respond = client
            .respond_to_auth_challenge()
            .client_id(self.info.client_id())
            .challenge_name(ChallengeNameType::PasswordVerifier)
            .set_challenge_responses(Some(responses));
        if let Some(session) = started.session() {
            respond = respond.session(session);
        }
        let answered = respond.send().await.map_err(map_sdk_error)?;
        match answered.authentication_result() {
            Some(result) => self.tokens(result),
            None => Err(unsupported(answered.challenge_name())),
        }
    }

    /// Computes the PASSWORD_VERIFIER answer (off the async threads: it is ~10 ms of maths).
    async fn answer_password_verifier(
        &self,
        ephemeral: Ephemeral,
        params: &HashMap<String, String>,
    ) -> Result<HashMap<String, String>, Error> {
        let param = |name: &str| {
            params
                .get(name)
                .cloned()
                .ok_or_else(|| Error::InvalidResponse {
                    status: None,
                    reason: format!("PASSWORD_VERIFIER challenge without {name}"),
                })
        };
        let user_id = param("USER_ID_FOR_SRP")?;
        let username = params
            .get("USERNAME")
            .cloned()
            .unwrap_or_else(|| user_id.clone());
        let b = maths::parse_hex("SRP_B", &param("SRP_B")?)?;
        let salt = maths::parse_hex("SALT", &param("SALT")?)?;
        let secret_block_text = param("SECRET_BLOCK")?;
        let secret_block = maths::decode_secret_block(&secret_block_text)?;
        let pool_name = self.pool_name.clone();
        let password = self.credentials.password().clone();
        let proof_user = user_id.clone();
        let (signature, timestamp) = tokio::task::spawn_blocking(move || {
            prove(
                &ephemeral,
                &pool_name,
                &proof_user,
                password.expose_secret(),
                &b,
                &salt,
                &secret_block,
            )
        })
        .await
        .map_err(Error::transport)??;
        let mut responses = HashMap::from([
            ("USERNAME".to_owned(), username.clone()),
            ("PASSWORD_CLAIM_SECRET_BLOCK".to_owned(), secret_block_text),
            ("PASSWORD_CLAIM_SIGNATURE".to_owned(), signature),
            ("TIMESTAMP".to_owned(), timestamp),
        ]);
        if let Some(hash) = self.secret_hash(&username) {
            responses.insert("SECRET_HASH".to_owned(), hash);
        }
        Ok(responses)
    }

    fn tokens(&self, result: &AuthenticationResultType) -> Result<CognitoTokens, Error> {
        let access = result
            .access_token()
            .ok_or_else(|| Error::InvalidResponse {
                status: None,
                reason: "authentication result without an access token".into(),
            })?;
        let lifetime = u64::try_from(result.expires_in())
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let device_key = result
            .new_device_metadata()
            .and_then(|device| device.device_key())
            .map(str::to_owned);
        Ok(CognitoTokens::new(
            access.to_owned(),
            result.id_token().map(str::to_owned),
            result.refresh_token().map(str::to_owned),
            lifetime,
            self.header,
        )
        .with_device_key(device_key))
    }

    /// `REFRESH_TOKEN_AUTH` with the refresh token of `previous`.
    async fn refresh_tokens(
        &self,
        previous: &CognitoTokens,
        refresh_token: &str,
    ) -> Result<CognitoTokens, Error> {
        let client = self.client()?;
        let mut request = client
            .initiate_auth()
            .auth_flow(AuthFlowType::RefreshTokenAuth)
            .client_id(self.info.client_id())
            .auth_parameters("REFRESH_TOKEN", refresh_token);
        // With a client secret, the hash must use the pool's internal user name, not the
        // alias (e-mail, phone) the user signed in with.
        let username = previous.username().unwrap_or(self.credentials.user_name());
        if let Some(hash) = self.secret_hash(username) {
            request = request.auth_parameters("SECRET_HASH", hash);
        }
        // With device tracking, the pool accepts the refresh token only with its device key.
        if let Some(device_key) = previous.device_key() {
            request = request.auth_parameters("DEVICE_KEY", device_key);
        }
        let output = request.send().await.map_err(map_sdk_error)?;
        match output.authentication_result() {
            Some(result) => Ok(self.tokens(result)?.keeping_refresh_token_of(previous)),
            None => Err(unsupported(output.challenge_name())),
        }
    }
}

/// The proof for one PASSWORD_VERIFIER challenge, timestamped now.
fn prove(
    ephemeral: &Ephemeral,
    pool_name: &str,
    user_id: &str,
    password: &str,
    b: &[u8],
    salt: &[u8],
    secret_block: &[u8],
) -> Result<(String, String), Error> {
    let session = maths::session(ephemeral, pool_name, user_id, password, b, salt)?;
    let timestamp = maths::timestamp(chrono::Utc::now());
    let signature =
        maths::claim_signature(&session.key, pool_name, user_id, secret_block, &timestamp);
    Ok((signature, timestamp))
}

#[async_trait]
impl Authorizer for SrpAuthorizer {
    type Token = CognitoTokens;

    fn client_info(&self) -> &ClientInfo {
        &self.info
    }

    async fn authorize(&self) -> Result<CognitoTokens, Error> {
        let span = tracing::debug_span!("en_auth.srp_login", pool = %self.pool_id, client_id = self.info.client_id());
        let result = self.login().instrument(span).await;
        if let Err(err) = &result {
            tracing::debug!(pool = %self.pool_id, error = %err, "SRP login failed");
        }
        result
    }

    /// `true`: a refresh spends the token's refresh token, and a refused one falls back to
    /// a login; a fleet refreshes from the newest stored token.
    fn refresh_spends_token(&self) -> bool {
        true
    }

    async fn refresh(&self, token: &CognitoTokens) -> Result<CognitoTokens, Error> {
        let Some(refresh_token) = token.refresh_token() else {
            return self.authorize().await;
        };
        match self
            .refresh_tokens(token, refresh_token.expose_secret())
            .await
        {
            // A refused refresh token, or a refresh the pool does not accept from this client
            // (e.g. a SECRET_HASH over a user name that could not be read from the token):
            // a full login starts afresh instead of leaving the cache stuck on a token it
            // cannot refresh.
            Err(
                err @ (Error::InvalidCredentials
                | Error::InvalidClient { .. }
                | Error::Authorization { .. }),
            ) => {
                tracing::debug!(pool = %self.pool_id, error = %err, "refresh refused; logging in again");
                self.authorize().await
            }
            other => other,
        }
    }

    fn cache_key(&self) -> CacheKey {
        CacheKey::builder("srp")
            .part("pool", &self.pool_id)
            .part("endpoint", self.endpoint.as_deref().unwrap_or(""))
            .part("client_id", self.info.client_id())
            .secret("client_secret", self.info.client_secret().expose_secret())
            // The password is left out: a password change does not change who the user is,
            // and a hash of a low-entropy password is a target for offline guessing.
            .part("user", self.credentials.user_name())
            .part("header", &format!("{:?}", self.header))
            .build()
    }
}

impl fmt::Debug for SrpAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrpAuthorizer")
            .field("client_info", &self.info)
            .field("credentials", &self.credentials)
            .field("pool_id", &self.pool_id)
            .field("endpoint", &self.endpoint)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// `us-east-1_AbC123` → (`us-east-1`, `AbC123`).
fn parse_pool_id(pool_id: &str) -> Result<(&str, &str), Error> {
    let invalid = |reason: &str| Error::InvalidConfiguration {
        setting: "user_pool_id".into(),
        reason: format!(
            "`{pool_id}` {reason}; expected `<region>_<id>` such as `us-east-1_AbC123`"
        ),
    };
    let (region, name) = pool_id
        .split_once('_')
        .ok_or_else(|| invalid("has no `_`"))?;
    let parts: Vec<&str> = region.split('-').collect();
    let region_ok = parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()));
    if !region_ok {
        return Err(invalid("does not start with a region"));
    }
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(invalid("has no pool name after `_`"));
    }
    Ok((region, name))
}

fn unsupported(challenge: Option<&ChallengeNameType>) -> Error {
    Error::UnsupportedChallenge {
        challenge: challenge.map_or_else(|| "none".to_owned(), |c| untrusted_text(c.as_str())),
    }
}

/// Maps an SDK error to en-auth's, by Cognito's error code.
fn map_sdk_error<E, R>(err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let service = match &err {
        SdkError::ServiceError(context) => Some((
            context.err().code().map(str::to_owned),
            context.err().message().map(str::to_owned),
        )),
        _ => None,
    };
    let Some((code, message)) = service else {
        // The SdkError is not kept as the source: a response error carries the raw HTTP
        // response, which may hold tokens. Connection failures keep their error chain as text.
        let timeout = matches!(err, SdkError::TimeoutError(_));
        let detail = match &err {
            SdkError::DispatchFailure(_) => format!(": {}", DisplayErrorContext(&err)),
            _ => String::new(),
        };
        return Error::Transport {
            message: format!(
                "Cognito request failed: {}{detail}",
                describe_transport(&err)
            ),
            timeout,
            source: None,
        };
    };
    // Cognito's text goes into Display and logs: escaped and bounded.
    let code = untrusted_text(&code.unwrap_or_default());
    let message = untrusted_text(&message.unwrap_or_default());
    match code.as_str() {
        "NotAuthorizedException" if message.to_ascii_lowercase().contains("secret") => {
            Error::InvalidClient {
                status: Some(400),
                description: Some(message),
            }
        }
        // Same error for an unknown user and a wrong password: no user enumeration.
        "NotAuthorizedException" | "UserNotFoundException" => Error::InvalidCredentials,
        "ResourceNotFoundException"
        | "InvalidParameterException"
        | "InvalidUserPoolConfigurationException" => Error::InvalidClient {
            status: Some(400),
            description: Some(message),
        },
        "TooManyRequestsException" | "LimitExceededException" => Error::RateLimited {
            retry_after: None,
            reset_at: None,
        },
        "InternalErrorException" | "ServiceUnavailable" | "ThrottlingException" => {
            Error::ServerError {
                status: 500,
                retry_after: None,
            }
        }
        "PasswordResetRequiredException" => Error::UnsupportedChallenge {
            challenge: "PASSWORD_RESET_REQUIRED".into(),
        },
        _ => Error::Authorization {
            status: None,
            error: code,
            description: Some(message),
            error_uri: None,
        },
    }
}

fn describe_transport<E, R>(err: &SdkError<E, R>) -> &'static str {
    match err {
        SdkError::TimeoutError(_) => "timed out",
        SdkError::DispatchFailure(_) => "could not connect",
        SdkError::ResponseError(_) => "unreadable response",
        SdkError::ConstructionFailure(_) => "could not build the request",
        _ => "unknown error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_the_pool_id() {
        assert_eq!(
            parse_pool_id("us-east-1_AbC123").unwrap(),
            ("us-east-1", "AbC123")
        );
        assert_eq!(
            parse_pool_id("ap-southeast-2_x9").unwrap(),
            ("ap-southeast-2", "x9")
        );
        assert_eq!(
            parse_pool_id("us-gov-west-1_Q").unwrap(),
            ("us-gov-west-1", "Q")
        );
        for bad in [
            "",
            "us-east-1",
            "us-east-1_",
            "_AbC",
            "US-EAST-1_abc",
            "us-east_abc",
            "us-east-1_ab-c",
            "us-east-x_abc",
        ] {
            let err = parse_pool_id(bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidConfiguration { ref setting, .. } if setting == "user_pool_id"),
                "{bad}"
            );
        }
    }

    #[test]
    fn cognito_text_in_errors_is_escaped_and_bounded() {
        use aws_sdk_cognitoidentityprovider::error::ErrorMetadata;
        use aws_sdk_cognitoidentityprovider::operation::initiate_auth::InitiateAuthError;
        let long = format!("{}\nINFO forged log line\u{1b}[2J", "m".repeat(100_000));
        for code in ["InvalidParameterException", "SomethingNewException"] {
            let meta = ErrorMetadata::builder().code(code).message(&long).build();
            let err = map_sdk_error(SdkError::<InitiateAuthError, ()>::service_error(
                InitiateAuthError::generic(meta),
                (),
            ));
            let shown = err.to_string();
            let description = match &err {
                Error::InvalidClient { description, .. }
                | Error::Authorization { description, .. } => description.clone(),
                other => panic!("{other:?}"),
            }
            .expect("description");
            for text in [&shown, &description] {
                assert!(text.len() < 1024, "{} bytes", text.len());
                assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
            }
        }
    }
}
