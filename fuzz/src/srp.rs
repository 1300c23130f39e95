//! en-auth-srp's SRP maths, compiled from its source file so that the SRP target does not
//! build the AWS SDK that the rest of en-auth-srp needs. Same code, same dependency versions.
#![allow(dead_code, missing_docs)]

#[path = "../../en-auth-srp/src/maths.rs"]
pub mod maths;
