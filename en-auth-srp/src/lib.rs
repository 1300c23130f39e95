//! AWS Cognito SRP for en-auth: [`SrpAuthorizer`].
//!
//! Cognito's `USER_SRP_AUTH` flow logs a user in with the Secure Remote Password protocol:
//! the client sends `A = g^a`, the pool answers with its `B`, a salt and a secret block, and
//! the client proves it knows the password by signing the secret block with a key both sides
//! derive — the password itself never leaves the process. [`maths`] holds that computation
//! (checked against vectors from AWS's own client libraries); [`SrpAuthorizer`] runs the two
//! calls through the AWS SDK and refreshes with `REFRESH_TOKEN_AUTH`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod authorizer;
pub mod maths;
mod tokens;

pub use authorizer::SrpAuthorizer;
pub use tokens::{CognitoTokens, HeaderToken};
