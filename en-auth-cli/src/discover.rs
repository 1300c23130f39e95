//! `en-auth discover`: an OpenID provider's endpoints.

use std::process::ExitCode;

use en_auth_core::{
    CONNECT_TIMEOUT, REQUEST_TIMEOUT, get_document, provider_http_client, secure_url,
    untrusted_text,
};
use serde_json::{Map, Value};

use crate::cli::DiscoverArgs;

/// Fetches `{issuer}/.well-known/openid-configuration` and prints the issuer and every
/// `*_endpoint` / `*_uri` it names.
pub async fn run(args: DiscoverArgs) -> Result<ExitCode, String> {
    let issuer = secure_url("issuer", &args.issuer).map_err(|e| e.to_string())?;
    let base = issuer.as_str().trim_end_matches('/');
    let http = provider_http_client(CONNECT_TIMEOUT, REQUEST_TIMEOUT);
    let body = get_document(&http, &format!("{base}/.well-known/openid-configuration"))
        .await
        .map_err(|e| e.to_string())?;
    let document: Map<String, Value> = serde_json::from_slice(&body)
        .map_err(|e| format!("the discovery document is not a JSON object: {e}"))?;
    let named = document.get("issuer").and_then(Value::as_str).unwrap_or("");
    if named.trim_end_matches('/') != base {
        return Err(format!(
            "the discovery document names issuer `{}`, not `{base}`: refusing it",
            untrusted_text(named)
        ));
    }
    let endpoints: Map<String, Value> = document
        .into_iter()
        .filter(|(name, value)| {
            value.is_string()
                && (name == "issuer" || name.ends_with("_endpoint") || name.ends_with("_uri"))
        })
        .collect();
    if args.json {
        println!("{:#}", Value::Object(endpoints));
    } else {
        let width = endpoints.keys().map(String::len).max().unwrap_or(0);
        for (name, value) in &endpoints {
            let value = value.as_str().unwrap_or_default();
            println!("{name:width$}  {}", untrusted_text(value));
        }
    }
    Ok(ExitCode::SUCCESS)
}
