//! What the server shares between connections: the one model and its
//! precomputed answers, the loading window (`--load-ms`), the service
//! slots (`--concurrency`), the counters of `/standin/stats` and the last
//! requests of `/standin/requests`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::cli::Config;
use crate::responses::{json_string, models_json};

/// How many requests `/standin/requests` remembers.
const RECENT_CAP: usize = 256;

/// One request as `/standin/requests` lists it.
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    pub request_id: Option<String>,
    pub body_len: usize,
}

pub struct State {
    pub model: String,
    /// `model` as a JSON string literal (quoted, escaped).
    pub model_json: String,
    /// The deterministic completion text, "Hello from NAME".
    content: String,
    pub content_json: String,
    /// Byte offsets of the char boundaries of `content`, both ends included.
    boundaries: Vec<usize>,
    pub completion_tokens: u64,
    pub models_body: Vec<u8>,
    started: Instant,
    load: Duration,
    ready: AtomicBool,
    /// `--concurrency` slots; `None`: unlimited.
    slots: Option<Semaphore>,
    pub requests: AtomicU64,
    pub cancelled: AtomicU64,
    pub in_flight: AtomicU64,
    /// Counted requests held now, waiting for a `--concurrency` slot
    /// included, and the most ever held at once (what a client in front
    /// sent at once).
    pub held: AtomicU64,
    pub max_held: AtomicU64,
    pub connections: AtomicU64,
    pub next_id: AtomicU64,
    pub recent: Mutex<VecDeque<Recorded>>,
}

impl State {
    pub fn new(cfg: &Config) -> Self {
        let content = format!("Hello from {}", cfg.model);
        let mut boundaries: Vec<usize> = content.char_indices().map(|(i, _)| i).collect();
        boundaries.push(content.len());
        State {
            model: cfg.model.clone(),
            model_json: json_string(&cfg.model),
            content_json: json_string(&content),
            completion_tokens: content.split_whitespace().count() as u64,
            content,
            boundaries,
            models_body: models_json(&cfg.model),
            started: Instant::now(),
            load: Duration::from_millis(cfg.load_ms),
            ready: AtomicBool::new(cfg.load_ms == 0),
            slots: cfg.concurrency.map(Semaphore::new),
            requests: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            held: AtomicU64::new(0),
            max_held: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CAP)),
        }
    }

    /// True during the first `--load-ms` milliseconds.
    pub fn is_loading(&self) -> bool {
        if self.ready.load(Ordering::Relaxed) {
            return false;
        }
        if self.started.elapsed() >= self.load {
            self.ready.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts a request held (before it waits for a slot) until the guard
    /// drops, keeping the peak.
    pub fn hold(&self) -> InFlight<'_> {
        let now = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_held.fetch_max(now, Ordering::SeqCst);
        InFlight(&self.held)
    }

    /// Waits for a free service slot (`--concurrency`), held until the
    /// permit drops; `None` at once when serving is unlimited.
    pub async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        // The semaphore is never closed, so acquiring only fails if it were.
        self.slots.as_ref()?.acquire().await.ok()
    }

    /// Counts a request (not `/health`, not `/standin/*`) and remembers it;
    /// it stays in flight until the guard drops.
    pub fn begin(&self, rec: Recorded) -> InFlight<'_> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let mut recent = self.recent.lock();
        if recent.len() >= RECENT_CAP {
            recent.pop_front();
        }
        recent.push_back(rec);
        InFlight(&self.in_flight)
    }

    /// The `content` slice streamed as chunk `i` of `n`.
    pub fn piece(&self, i: usize, n: usize) -> &str {
        let chars = self.boundaries.len() - 1;
        let from = self.boundaries[i * chars / n];
        let to = self.boundaries[(i + 1) * chars / n];
        self.content.get(from..to).unwrap_or("")
    }
}

/// A request in flight, counted in `/standin/stats` until dropped.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
