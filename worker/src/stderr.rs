//! The worker's stderr (where its fd 1 points too): drained by a thread so that a chatty
//! function never blocks on a full pipe, logged, and its last bytes kept for error messages.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

/// How much of the end of a worker's stderr is kept for error messages.
const TAIL_BYTES: usize = 4096;
/// A line longer than this is logged in pieces.
const MAX_LOG_LINE: usize = 4096;

/// The last [`TAIL_BYTES`] of a worker's stderr.
pub(crate) struct StderrTail {
    state: Mutex<TailState>,
    closed: Condvar,
}

struct TailState {
    bytes: VecDeque<u8>,
    closed: bool,
}

impl StderrTail {
    /// Starts the thread that drains `stderr` until every writer has closed it.
    pub(crate) fn start<R: Read + Send + 'static>(stderr: R, pid: u32) -> Arc<Self> {
        let tail = Arc::new(Self {
            state: Mutex::new(TailState {
                bytes: VecDeque::with_capacity(TAIL_BYTES),
                closed: false,
            }),
            closed: Condvar::new(),
        });
        let drained = Arc::clone(&tail);
        let spawned = thread::Builder::new()
            .name(format!("worker-{pid}-stderr"))
            .spawn(move || drained.drain(stderr, pid));
        if let Err(e) = spawned {
            // Without the thread nobody reads the pipe; the worker would block once it
            // fills, which its walltime then catches. Say so rather than fail the start.
            tracing::warn!(
                pid,
                "could not start the thread that reads worker stderr: {e}"
            );
            tail.mark_closed();
        }
        tail
    }

    /// The kept end of stderr as text, after waiting up to `wait` for the pipe to close
    /// (a dead worker's last words may still be in flight).
    pub(crate) fn text(&self, wait: Duration) -> String {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (state, _) = self
            .closed
            .wait_timeout_while(state, wait, |state| !state.closed)
            .unwrap_or_else(PoisonError::into_inner);
        let (front, back) = state.bytes.as_slices();
        let mut bytes = front.to_vec();
        bytes.extend_from_slice(back);
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }

    fn drain<R: Read>(&self, mut stderr: R, pid: u32) {
        let mut chunk = [0u8; 8192];
        let mut line = Vec::new();
        loop {
            let n = match stderr.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(pid, "reading worker stderr: {e}");
                    break;
                }
            };
            self.keep(&chunk[..n]);
            for &byte in &chunk[..n] {
                if byte == b'\n' || line.len() >= MAX_LOG_LINE {
                    log_line(pid, &line);
                    line.clear();
                }
                if byte != b'\n' {
                    line.push(byte);
                }
            }
        }
        if !line.is_empty() {
            log_line(pid, &line);
        }
        self.mark_closed();
    }

    fn keep(&self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(TAIL_BYTES)..];
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let overflow = (state.bytes.len() + bytes.len()).saturating_sub(TAIL_BYTES);
        state.bytes.drain(..overflow);
        state.bytes.extend(bytes);
    }

    fn mark_closed(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.closed.notify_all();
    }
}

fn log_line(pid: u32, line: &[u8]) {
    tracing::debug!(target: "scifaas_worker::stderr", pid, "{}", String::from_utf8_lossy(line));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_of_a_long_stream() {
        let mut text = "first line\n".repeat(1000);
        text.push_str("the end");
        let tail = StderrTail::start(std::io::Cursor::new(text.into_bytes()), 1);
        let kept = tail.text(Duration::from_secs(10));
        assert!(kept.ends_with("first line\nthe end"), "{kept}");
        assert!(kept.len() <= TAIL_BYTES);
    }

    #[test]
    fn an_empty_stream_keeps_nothing() {
        let tail = StderrTail::start(std::io::empty(), 1);
        assert_eq!(tail.text(Duration::from_secs(10)), "");
    }
}
