//! Nothing here: the package exists for `benches/headers.rs` (en-auth next to huskarl).
