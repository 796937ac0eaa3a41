//! The last lines a hook wrote to stderr, kept for `/llmux/status`'s last
//! hook error: that is where `CUDA out of memory` or `address already in
//! use` appears. Bounded: the last [`TAIL_LINES`] lines and at most
//! [`TAIL_BYTES`] bytes together (older lines go first).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The most lines kept.
pub const TAIL_LINES: usize = 20;
/// The most bytes kept, over all the lines.
pub const TAIL_BYTES: usize = 4096;

/// A hook's stderr tail, written by the task reading its stderr and read
/// by the hook runner once the hook has exited.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Shared>);

#[derive(Default)]
struct Shared {
    lines: Mutex<Lines>,
    /// Set when the reader has taken every line the hook wrote.
    complete: AtomicBool,
    completed: Notify,
}

#[derive(Default)]
struct Lines {
    lines: VecDeque<String>,
    bytes: usize,
}

impl StderrTail {
    /// Keeps `line` as the newest, dropping the oldest past the bounds.
    pub fn push(&self, line: &str) {
        let mut cut = line.len().min(TAIL_BYTES);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut kept = self.0.lines.lock();
        kept.bytes += cut;
        kept.lines.push_back(line[..cut].to_owned());
        while kept.lines.len() > TAIL_LINES || kept.bytes > TAIL_BYTES {
            match kept.lines.pop_front() {
                Some(old) => kept.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Says every line of the hook's own is in (its exit was seen, or the
    /// pipe closed).
    pub fn complete(&self) {
        self.0.complete.store(true, SeqCst);
        self.0.completed.notify_waiters();
    }

    /// The lines, oldest first, once complete or after `patience`.
    pub async fn lines(&self, patience: Duration) -> Vec<String> {
        let wait = async {
            loop {
                let completed = self.0.completed.notified();
                if self.0.complete.load(SeqCst) {
                    return;
                }
                completed.await;
            }
        };
        let _ = tokio::time::timeout(patience, wait).await;
        self.0.lines.lock().lines.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_last_lines_within_the_bounds() {
        let tail = StderrTail::default();
        for i in 0..100 {
            tail.push(&format!("line {i}"));
        }
        tail.complete();
        let lines = tail.lines(Duration::from_secs(1)).await;
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!((lines[0].as_str(), lines[19].as_str()), ("line 80", "line 99"));
        tail.push(&"é".repeat(3000));
        let lines = tail.lines(Duration::from_secs(1)).await;
        assert_eq!(lines.len(), 1, "one long line leaves room for nothing else");
        assert_eq!(lines[0].len(), TAIL_BYTES);
    }
}
