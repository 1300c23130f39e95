//! [`capture_traces`]: everything the code under test logs, for asserting that no secret is in
//! it.

use std::io::Write;
use std::sync::Arc;

use parking_lot::Mutex;

/// The text of every event and span logged (at TRACE and above) while its guard lives.
#[derive(Clone, Default)]
pub struct TraceCapture(Arc<Mutex<Vec<u8>>>);

impl TraceCapture {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl Write for TraceCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's logging at TRACE level (no colours) until the guard is dropped.
pub fn capture_traces() -> (TraceCapture, tracing::subscriber::DefaultGuard) {
    let captured = TraceCapture::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}
