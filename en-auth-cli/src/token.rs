//! `en-auth token`: a token from the client-credentials grant, shown decoded.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use chrono::{SecondsFormat, Utc};
use en_auth_core::{AccessToken, Authorizer, Error};
use en_auth_oauth2::{ServiceAccountAuthorizer, env};
use serde_json::{Value, json};

use crate::cli::TokenArgs;
use crate::decode::{decode_unverified, scopes};

/// Fetches a token and prints it as `args` ask.
pub async fn run(args: TokenArgs) -> Result<ExitCode, String> {
    let authorizer = authorizer(&args).map_err(|e| describe(&e))?;
    let token = authorizer.authorize().await.map_err(|e| describe(&e))?;
    let raw = token.access_token();
    if args.raw {
        let mut stdout = std::io::stdout().lock();
        let newline = if stdout.is_terminal() { "\n" } else { "" };
        write!(stdout, "{raw}{newline}")
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("cannot write the token: {e}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let decoded = decode_unverified(raw);
    let expires_at = token.expires_at();
    let expires_in = expires_at.map(|at| (at - Utc::now()).num_seconds().max(0));
    let granted = decoded
        .as_ref()
        .map(|d| scopes(&d.claims))
        .unwrap_or_default();
    if args.json {
        let output = json!({
            "verified": false,
            "jwt": decoded.is_some(),
            "header": decoded.as_ref().map_or(Value::Null, |d| d.header.clone()),
            "claims": decoded.as_ref().map_or(Value::Null, |d| d.claims.clone()),
            "expires_in": expires_in,
            "expires_at": expires_at.map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true)),
            "scopes": granted,
        });
        println!("{output:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let client = authorizer.client_info().client_id();
    match &decoded {
        Some(decoded) => {
            println!(
                "Access token for client {client}, decoded WITHOUT verifying its signature \
                 (check it with `en-auth verify`; print it with --raw)."
            );
            println!("Header:\n{:#}", decoded.header);
            println!("Claims:\n{:#}", decoded.claims);
        }
        None => println!(
            "Access token for client {client}: opaque (not a JWT), {} characters; print it \
             with --raw.",
            raw.len()
        ),
    }
    match (expires_in, expires_at) {
        (Some(seconds), Some(at)) => {
            println!(
                "Expires in: {seconds} s (at {})",
                at.to_rfc3339_opts(SecondsFormat::Secs, true)
            )
        }
        _ => println!("Expires in: not said by the provider"),
    }
    if granted.is_empty() {
        println!("Scopes: (none in the token)");
    } else {
        // Token text is the provider's: escaped before it reaches the terminal.
        println!(
            "Scopes: {}",
            en_auth_core::untrusted_text(&granted.join(" "))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The authorizer the flags and `EN_AUTH_*` variables describe, built by the library's own
/// `from_lookup` (flags win; clap has already merged each flag with its variable).
fn authorizer(args: &TokenArgs) -> Result<ServiceAccountAuthorizer, Error> {
    let path = args
        .private_key
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    ServiceAccountAuthorizer::from_lookup(|name| match name {
        env::CLIENT_ID => args.client_id.clone(),
        env::CLIENT_SECRET => args.client_secret.clone(),
        env::TOKEN_URL => args.token_url.clone(),
        env::ISSUER => args.issuer.clone(),
        env::AUDIENCE => args.audience.clone(),
        env::SCOPES => args.scopes.clone(),
        env::PRIVATE_KEY_FILE => path.clone(),
        env::KEY_ID => args.key_id.clone(),
        other => std::env::var(other).ok(),
    })
}

/// The error's text, with where to set a missing setting.
fn describe(err: &Error) -> String {
    match err {
        Error::MissingConfiguration { .. } => format!(
            "{err}; set the environment variable or pass the matching flag \
             (en-auth token --help)"
        ),
        _ => err.to_string(),
    }
}
