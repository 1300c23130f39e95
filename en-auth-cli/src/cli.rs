//! The command line: commands, flags, and the environment variables they fall back to.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use en_auth_oauth2::env;

/// Fetch, inspect and verify OAuth2 access tokens.
///
/// Configuration comes from the same EN_AUTH_* environment variables as en-auth's
/// `ServiceAccountAuthorizer::from_env`; a flag wins over its variable. Secrets are never
/// printed, and a token only with `token --raw`.
#[derive(Debug, Parser)]
#[command(name = "en-auth", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Get a token with the client-credentials grant and show its decoded header and claims.
    ///
    /// The token is decoded WITHOUT verifying its signature (use `en-auth verify` for that).
    /// The token itself is printed only with --raw.
    Token(TokenArgs),
    /// Verify a token's signature (JWKS), issuer, audience and lifetime, and say why not.
    ///
    /// Exit status 0 when the token is valid, 1 when it is not.
    Verify(VerifyArgs),
    /// Show an OpenID provider's endpoints (from /.well-known/openid-configuration).
    Discover(DiscoverArgs),
}

/// `en-auth token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The client id.
    #[arg(long, env = env::CLIENT_ID)]
    pub client_id: Option<String>,
    /// The client secret (prefer the variable: flags show up in process lists).
    #[arg(long, env = env::CLIENT_SECRET, hide_env_values = true)]
    pub client_secret: Option<String>,
    /// The token endpoint URL.
    #[arg(long, env = env::TOKEN_URL)]
    pub token_url: Option<String>,
    /// The issuer, whose token endpoint is found by OIDC discovery (instead of --token-url).
    #[arg(long, env = env::ISSUER)]
    pub issuer: Option<String>,
    /// The API to get a token for (Auth0 `audience`).
    #[arg(long, env = env::AUDIENCE)]
    pub audience: Option<String>,
    /// Scopes to ask for, separated by spaces or commas.
    #[arg(long = "scopes", env = env::SCOPES)]
    pub scopes: Option<String>,
    /// Authenticate with private_key_jwt, signing with this private key instead of sending a
    /// client secret: a PEM file (RSA or EC, PKCS#8 or PKCS#1; needs --key-id) or a private
    /// JWK (its `kid` is used).
    #[arg(long, env = env::PRIVATE_KEY_FILE)]
    pub private_key: Option<PathBuf>,
    /// The key id (`kid`) the provider knows the PEM key's public half by.
    #[arg(long, env = env::KEY_ID)]
    pub key_id: Option<String>,
    /// Print only the token, with no newline when piped.
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
    /// Print JSON: {"verified": false, "header", "claims", "expires_in", "expires_at", "scopes"}.
    #[arg(long)]
    pub json: bool,
}

/// `en-auth verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The token, or `-` to read it from standard input.
    pub token: String,
    /// The issuer the token must name (`iss`); its JWKS is found by OIDC discovery unless
    /// --jwks-url is given.
    #[arg(long, env = "EN_AUTH_VERIFY_ISSUER")]
    pub issuer: Option<String>,
    /// An audience the token must name (`aud`). Without it, the audience is not checked.
    #[arg(long, env = "EN_AUTH_VERIFY_AUDIENCE")]
    pub audience: Option<String>,
    /// Where the signing keys are (JWKS URL).
    #[arg(long, env = "EN_AUTH_VERIFY_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Print JSON: {"valid": true, "claims": …} or {"valid": false, "reason": …}.
    #[arg(long)]
    pub json: bool,
}

/// `en-auth discover`.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// The issuer URL, e.g. https://tenant.us.auth0.com/
    pub issuer: String,
    /// Print the endpoints as a JSON object.
    #[arg(long)]
    pub json: bool,
}
