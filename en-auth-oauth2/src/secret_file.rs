//! Reading a small secret file (a private key, a projected token): a regular file only, at
//! most a given size, its bytes zeroized when dropped.

use std::fs::Metadata;
use std::io::{self, Read as _};
use std::path::Path;

use zeroize::Zeroizing;

/// A secret file's content and the metadata of the file that was read (not of whatever the
/// path names a moment later).
pub(crate) struct SecretFile {
    /// At most `max + 1` bytes: more than `max` means the file is too large.
    pub(crate) bytes: Zeroizing<Vec<u8>>,
    pub(crate) metadata: Metadata,
}

/// Reads at most `max + 1` bytes of the regular file at `path` (following symbolic links).
///
/// Anything else is refused before a byte is read: a directory, and a FIFO, socket or
/// device, which could block the reading thread forever or never end. On Unix the file is
/// opened non-blocking, so even a FIFO swapped in under the path cannot block the open.
/// Blocking: call it from a blocking context ([`read_async`]).
pub(crate) fn read(path: &Path, max: usize) -> io::Result<SecretFile> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file but {}", kind(&metadata)),
        ));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        usize::try_from(metadata.len()).unwrap_or(max).min(max) + 1,
    ));
    file.take(max as u64 + 1).read_to_end(&mut bytes)?;
    Ok(SecretFile { bytes, metadata })
}

/// [`read`] on the blocking pool: one trip for the open, the check and the read.
pub(crate) async fn read_async(path: &Path, max: usize) -> io::Result<SecretFile> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || read(&owned, max))
        .await
        .map_err(|_| io::Error::other("the read was cancelled"))?
}

/// What a file that is not a regular file is, for error messages.
fn kind(metadata: &Metadata) -> &'static str {
    let file_type = metadata.file_type();
    if file_type.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if file_type.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return "a device";
        }
    }
    "not a file"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("en-auth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_at_most_one_byte_past_the_limit() {
        let dir = temp_dir("secret-file-cap");
        let path = dir.join("big");
        std::fs::write(&path, vec![b'a'; 100]).unwrap();
        assert_eq!(read(&path, 10).unwrap().bytes.len(), 11);
        assert_eq!(read(&path, 100).unwrap().bytes.len(), 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = temp_dir("secret-file-dir");
        let err = read(&dir, 10).err().expect("a directory");
        assert!(err.to_string().contains("directory"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO with no writer blocks a plain `open` forever; here it is refused at once.
    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = temp_dir("secret-file-fifo");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let (done, finished) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = done.send(read(&path, 10).err().map(|e| e.to_string()));
        });
        // Real time: a blocked open never returns, so the test waits a bounded while.
        let err = finished
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the read returned")
            .expect("an error");
        assert!(err.contains("FIFO"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
