//! Which request bodies can be sent twice: the rule behind the 401 replay.

/// A request body that may be sent again after a 401.
///
/// [`AuthService`](crate::AuthService) replays a rejected request once, with a new token, only
/// when its body says it can be copied. Buffered bodies (`Full`, `Empty`, `String`, `Bytes`,
/// `Vec<u8>`) can; streams cannot — their data is gone once sent — so a rejected streaming
/// request is not replayed: its 401 (or gRPC `UNAUTHENTICATED`) is returned, and the next
/// request carries the new token. tonic's request body is always treated as a stream, so gRPC
/// calls are never replayed.
///
/// Implement it for your own body type: return `None` for anything that cannot be re-read.
///
/// ```
/// use en_auth_tower::ReplayBody;
/// let body = http_body_util::Full::new(bytes::Bytes::from_static(b"{}"));
/// assert!(body.try_clone_body().is_some());
/// ```
pub trait ReplayBody: Sized {
    /// A copy of this body to send again, or `None` when it cannot be sent twice.
    fn try_clone_body(&self) -> Option<Self>;
}

impl<D: Clone> ReplayBody for http_body_util::Full<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for http_body_util::Empty<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(http_body_util::Empty::new())
    }
}

impl ReplayBody for String {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for Vec<u8> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for bytes::Bytes {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for () {
    fn try_clone_body(&self) -> Option<Self> {
        Some(())
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::BoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::UnsyncBoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<B> ReplayBody for http_body_util::StreamBody<B> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

#[cfg(feature = "tonic")]
impl ReplayBody for tonic::body::Body {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}
