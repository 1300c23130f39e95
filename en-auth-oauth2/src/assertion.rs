//! [`AssertionSource`]: a credential someone else issues, read afresh for every token request.
//!
//! Workload identity hands a service a short-lived JWT instead of a secret: Kubernetes
//! projects a service-account token into a file and rewrites it before it expires, SPIFFE's
//! workload API hands out JWT-SVIDs, CI systems mint OIDC tokens on request. en-auth reads such
//! a credential at the moment it sends a token request and keeps it no longer than that one
//! request: a file rewritten by the kubelet is picked up by the next request, never a day late.
//!
//! The same source feeds a client assertion
//! ([`ClientAuthentication::assertion_file`](crate::ClientAuthentication::assertion_file)),
//! a token exchange's subject or actor token, and a JWT bearer grant's assertion.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use en_auth_core::Error;
use secrecy::{ExposeSecret, SecretString};

/// The largest credential read from a file or callback (64 KiB): a projected token is a few
/// kilobytes; anything larger is not a token.
pub const MAX_ASSERTION_BYTES: usize = 64 * 1024;

type Callback =
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<SecretString, Error>> + Send>> + Send + Sync;

/// Where a credential issued by someone else comes from: a file or the application's callback.
///
/// Read with [`read`](Self::read) for each token request; never cached. The credential is a
/// secret: it is never in `Debug`, logs or errors, which name only the file's path (or
/// `callback`).
///
/// ```
/// use en_auth_oauth2::AssertionSource;
/// # async fn demo() -> Result<(), en_auth_core::Error> {
/// // A Kubernetes projected service-account token, rewritten by the kubelet.
/// let file = AssertionSource::file("/var/run/secrets/tokens/idp");
/// // A JWT-SVID from a SPIFFE agent, a CI system's OIDC token, …
/// let callback = AssertionSource::from_fn(|| async { Ok(String::from("eyJ…")) });
/// assert_eq!(format!("{callback:?}"), "AssertionSource::Callback");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AssertionSource(Source);

#[derive(Clone)]
enum Source {
    File(PathBuf),
    Callback(Arc<Callback>),
}

impl AssertionSource {
    /// The credential is the content of the file at `path` (surrounding whitespace removed),
    /// read for each token request. A missing, unreadable, empty or oversized file is
    /// [`Error::CredentialUnavailable`] naming the path, before any request is sent.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self(Source::File(path.into()))
    }

    /// The credential is what `fetch` returns, called for each token request (a SPIFFE
    /// workload API, a CI system's OIDC token endpoint, a cloud metadata service). An `Err`
    /// from it fails the token request with that error (return
    /// [`Error::CredentialUnavailable`] for a source that is down: it is retried with
    /// back-off).
    pub fn from_fn<F, Fut, S>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, Error>> + Send + 'static,
        S: Into<String>,
    {
        let callback: Arc<Callback> = Arc::new(move || {
            let fetched = fetch();
            Box::pin(async move { fetched.await.map(|s| SecretString::from(s.into())) })
        });
        Self(Source::Callback(callback))
    }

    /// Reads the credential now.
    pub async fn read(&self) -> Result<SecretString, Error> {
        match &self.0 {
            Source::File(path) => read_file(path).await,
            Source::Callback(callback) => {
                let value = callback().await?;
                check(value, "callback")
            }
        }
    }

    /// Where the credential comes from, for logs and cache keys: the file's path, or
    /// `callback`.
    pub fn origin(&self) -> String {
        match &self.0 {
            Source::File(path) => path.display().to_string(),
            Source::Callback(_) => "callback".to_owned(),
        }
    }

    /// The file the credential is read from, if it is one.
    pub fn path(&self) -> Option<&Path> {
        match &self.0 {
            Source::File(path) => Some(path),
            Source::Callback(_) => None,
        }
    }
}

async fn read_file(path: &Path) -> Result<SecretString, Error> {
    let unavailable = |reason: String| Error::CredentialUnavailable {
        credential: path.display().to_string(),
        reason,
    };
    // One trip to the blocking pool (open, check it is a regular file, read at most one byte
    // past the limit), not one per file operation.
    let bytes = crate::secret_file::read_async(path, MAX_ASSERTION_BYTES)
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .bytes;
    if bytes.len() > MAX_ASSERTION_BYTES {
        return Err(unavailable(format!(
            "larger than {MAX_ASSERTION_BYTES} bytes; not a token"
        )));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| unavailable("not UTF-8 text".into()))?;
    check(SecretString::from(text), &path.display().to_string())
}

/// Trims the credential and refuses empty, oversized or multi-line values (which cannot be a
/// token and would corrupt the request).
fn check(value: SecretString, origin: &str) -> Result<SecretString, Error> {
    let unavailable = |reason: &str| Error::CredentialUnavailable {
        credential: origin.to_owned(),
        reason: reason.to_owned(),
    };
    let text = value.expose_secret().trim();
    if text.is_empty() {
        return Err(unavailable("empty"));
    }
    if text.len() > MAX_ASSERTION_BYTES {
        return Err(unavailable("too large to be a token"));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(unavailable(
            "contains whitespace or control characters; not a token",
        ));
    }
    if text.len() == value.expose_secret().len() {
        Ok(value)
    } else {
        Ok(SecretString::from(text.to_owned()))
    }
}

impl PartialEq for AssertionSource {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Source::File(a), Source::File(b)) => a == b,
            (Source::Callback(a), Source::Callback(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for AssertionSource {}

impl fmt::Debug for AssertionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::File(path) => write!(f, "AssertionSource::File({})", path.display()),
            Source::Callback(_) => f.write_str("AssertionSource::Callback"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(result: Result<SecretString, Error>) -> (String, String) {
        match result {
            Err(Error::CredentialUnavailable { credential, reason }) => (credential, reason),
            other => panic!("{:?}", other.map(|_| "a credential")),
        }
    }

    #[tokio::test]
    async fn a_file_is_read_afresh_each_time_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("en-auth-assertion-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let source = AssertionSource::file(&path);

        let (credential, reason) = unavailable(source.read().await);
        assert_eq!(credential, path.display().to_string());
        assert!(reason.contains("No such file"), "{reason}");

        std::fs::write(&path, "first.jwt.value\n").unwrap();
        assert_eq!(
            source.read().await.unwrap().expose_secret(),
            "first.jwt.value"
        );
        std::fs::write(&path, "second.jwt.value").unwrap();
        assert_eq!(
            source.read().await.unwrap().expose_secret(),
            "second.jwt.value"
        );

        std::fs::write(&path, "  \n").unwrap();
        assert_eq!(unavailable(source.read().await).1, "empty");
        std::fs::write(&path, "two words").unwrap();
        let (_, reason) = unavailable(source.read().await);
        assert!(reason.contains("whitespace"), "{reason}");
        assert!(!reason.contains("words"), "{reason}");
        std::fs::write(&path, vec![b'a'; MAX_ASSERTION_BYTES + 1]).unwrap();
        assert!(unavailable(source.read().await).1.contains("larger"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO at the path (no writer) would block a blocking-pool thread forever: refused
    /// at once instead, naming what it is.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_fifo_is_unavailable_at_once() {
        let dir =
            std::env::temp_dir().join(format!("en-auth-assertion-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        // Real time: a blocked read never returns, so the wait is bounded.
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            AssertionSource::file(&path).read(),
        )
        .await
        .unwrap_or_else(|_| {
            // Let the blocked reader go (a writer opens the FIFO) so the test fails, not hangs.
            drop(std::fs::OpenOptions::new().write(true).open(&path));
            panic!("blocked on a FIFO")
        });
        let (credential, reason) = unavailable(read);
        assert_eq!(credential, path.display().to_string());
        assert!(reason.contains("FIFO"), "{reason}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_callback_is_called_for_each_read_and_its_errors_pass_through() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let source = AssertionSource::from_fn(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 2 {
                    Err(Error::CredentialUnavailable {
                        credential: "spiffe agent".into(),
                        reason: "connection refused".into(),
                    })
                } else {
                    Ok(format!("svid-{n}"))
                }
            }
        });
        assert_eq!(source.read().await.unwrap().expose_secret(), "svid-0");
        assert_eq!(source.read().await.unwrap().expose_secret(), "svid-1");
        assert_eq!(unavailable(source.read().await).0, "spiffe agent");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(format!("{source:?}"), "AssertionSource::Callback");
    }
}
