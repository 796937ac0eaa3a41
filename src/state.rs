//! The state shared by the server, the request handlers and the switch task.
//!
//! Who writes what is the whole design, so each field says it. The hot path
//! reads only `routing` and `index` (see [`crate::routing`]); everything
//! behind a lock here is touched by a request only when it has to queue.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::config::{Config, ModelConfig};
use crate::routing::Routing;

/// A model's state, reported by `/health` (and later metrics and the
/// control API) with these exact words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ModelState {
    /// Not loaded.
    Asleep = 0,
    /// Its wake hook is running.
    Waking = 1,
    /// Published and serving.
    Active = 2,
    /// Finishing its in-flight requests before a switch.
    Draining = 3,
    /// Its sleep hook is running.
    Sleeping = 4,
    /// Its last wake or sleep failed.
    Failed = 5,
}

impl ModelState {
    /// The word used in `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Asleep => "asleep",
            ModelState::Waking => "waking",
            ModelState::Active => "active",
            ModelState::Draining => "draining",
            ModelState::Sleeping => "sleeping",
            ModelState::Failed => "failed",
        }
    }

    fn from_u8(v: u8) -> ModelState {
        match v {
            1 => ModelState::Waking,
            2 => ModelState::Active,
            3 => ModelState::Draining,
            4 => ModelState::Sleeping,
            5 => ModelState::Failed,
            _ => ModelState::Asleep,
        }
    }
}

impl fmt::Display for ModelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything llmux shares between tasks.
pub struct Shared {
    /// The configuration; fixed for the life of the process.
    pub config: Config,
    /// Model name to index. Built at start, read by every request.
    pub index: HashMap<Box<str>, usize>,
    /// Per-model state, indexed like `config.models`.
    pub slots: Box<[ModelSlot]>,
    /// The published routing snapshot. Written only by the switch task;
    /// read lock-free by every request.
    pub routing: ArcSwap<Routing>,
    /// Raised when a request queues or leaves the queue; awaited only by
    /// the switch task.
    pub switch_needed: Notify,
    /// Set once at shutdown; awaited by queued requests, the switch task
    /// and running hooks.
    pub shutdown: Shutdown,
    /// Measured switch cost (drain + sleep + wake) per (from, to); row
    /// `models.len()` is "from nothing". Written by the switch task, read
    /// by the policy.
    pub switch_costs: Mutex<Vec<Option<Duration>>>,
    /// Requests cut at a drain timeout. Written by the switch task.
    pub cut_requests: AtomicU64,
    /// Requests queued for any model, and their body bytes: the global
    /// queue bounds. Written by queued requests (cold path).
    pub queued_requests: AtomicUsize,
    /// See `queued_requests`.
    pub queued_body_bytes: AtomicU64,
    /// The last switch, as it went. Written by the switch task.
    pub last_switch: Mutex<Option<SwitchRecord>>,
}

/// How a switch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchResult {
    /// The target was published.
    Done,
    /// The drain was abandoned: nobody waited for the target any more.
    Abandoned,
    /// A hook failed; the target's waiters got 503.
    Failed,
}

/// What happened in one switch, phase by phase.
#[derive(Debug, Clone)]
pub struct SwitchRecord {
    /// The model that was active, if any.
    pub from: Option<usize>,
    /// The model switched to.
    pub to: usize,
    /// When the oldest request for `to` arrived: the miss.
    pub miss: Instant,
    /// How long the drain took.
    pub drain: Duration,
    /// The sleep hook's spawn instant and spawn-to-reap time.
    pub sleep: Option<(Instant, Duration)>,
    /// The wake hook's spawn instant and spawn-to-reap time.
    pub wake: Option<(Instant, Duration)>,
    /// Time spent in alive hooks confirming the wake.
    pub alive: Duration,
    /// When `to` was published.
    pub published: Option<Instant>,
    /// How it ended.
    pub result: SwitchResult,
}

impl SwitchRecord {
    /// The measured cost: drain, sleep and wake (no queueing, no backoff).
    pub fn cost(&self) -> Duration {
        self.drain + self.sleep.map_or(Duration::ZERO, |s| s.1) + self.wake.map_or(Duration::ZERO, |w| w.1) + self.alive
    }
}

impl Shared {
    /// Shared state for `config`, with nothing active yet.
    pub fn new(config: Config) -> Shared {
        let index = config.models.iter().enumerate().map(|(i, m)| (m.name.as_str().into(), i)).collect();
        let slots = config.models.iter().map(|m| ModelSlot::new(m.clone())).collect();
        let n = config.models.len();
        Shared {
            index,
            slots,
            routing: ArcSwap::from_pointee(Routing::empty()),
            switch_needed: Notify::new(),
            shutdown: Shutdown::default(),
            switch_costs: Mutex::new(vec![None; (n + 1) * n]),
            cut_requests: AtomicU64::new(0),
            last_switch: Mutex::new(None),
            queued_requests: AtomicUsize::new(0),
            queued_body_bytes: AtomicU64::new(0),
            config,
        }
    }

    /// The index of the model called `name`.
    #[inline]
    pub fn lookup(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The index of the active model, if any.
    pub fn active_model(&self) -> Option<usize> {
        self.routing.load().active().map(|i| i.model)
    }

    /// Records a switch's cost for the policy.
    pub fn record_switch_cost(&self, from: Option<usize>, to: usize, cost: Duration) {
        let n = self.slots.len();
        let row = from.unwrap_or(n);
        if let Some(cell) = self.switch_costs.lock().get_mut(row * n + to) {
            *cell = Some(cost);
        }
    }
}

/// One configured model's state outside the routing snapshot.
pub struct ModelSlot {
    /// The model's configuration.
    pub config: ModelConfig,
    /// The model's [`ModelState`]. Written only by the switch task.
    state: AtomicU8,
    /// Requests waiting for this model and when the oldest arrived.
    /// Written by queued requests (cold path), read by the switch task.
    pub queue: Mutex<QueueState>,
    /// Raised (`notify_waiters`) by the switch task when this model is
    /// published, when its wake fails, or when a drain of it is abandoned.
    pub ready: Notify,
    /// Failure backoff. Written by the switch task, read by queued requests.
    pub backoff: Mutex<Backoff>,
}

impl ModelSlot {
    fn new(config: ModelConfig) -> ModelSlot {
        ModelSlot {
            config,
            state: AtomicU8::new(ModelState::Asleep as u8),
            queue: Mutex::new(QueueState::default()),
            ready: Notify::new(),
            backoff: Mutex::new(Backoff::default()),
        }
    }

    /// The model's current state.
    pub fn state(&self) -> ModelState {
        ModelState::from_u8(self.state.load(SeqCst))
    }

    /// Sets the model's state (switch task only).
    pub fn set_state(&self, state: ModelState) {
        self.state.store(state as u8, SeqCst);
    }

    /// Requests waiting for this model.
    pub fn waiting(&self) -> usize {
        self.queue.lock().waiting
    }
}

/// The queue of one model: a count and the oldest arrival.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueState {
    /// Requests waiting.
    pub waiting: usize,
    /// When the oldest of them arrived (None when nobody waits).
    pub since: Option<Instant>,
}

/// Backoff after a failed wake: 1 s, doubling, capped at 60 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Requests get 503 until then.
    pub until: Option<Instant>,
    /// The next backoff's length.
    pub next: Duration,
    /// What failed, for the 503's message.
    pub reason: Arc<str>,
}

/// First backoff after a failure.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { until: None, next: BACKOFF_START, reason: Arc::from("") }
    }
}

impl Backoff {
    /// Starts a backoff for `reason`; the next one will be twice as long.
    pub fn fail(&mut self, now: Instant, reason: Arc<str>) {
        self.until = Some(now + self.next);
        self.next = (self.next * 2).min(BACKOFF_MAX);
        self.reason = reason;
    }

    /// A success: no backoff, and the next failure starts from 1 s.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// Time left in the backoff, if one is running.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until.filter(|u| *u > now).map(|u| u - now)
    }
}

/// The shutdown signal: a flag and a notification, set once.
#[derive(Default)]
pub struct Shutdown {
    started: AtomicBool,
    notify: Notify,
    /// Requests and hooks cut short by the shutdown.
    cut: AtomicUsize,
}

impl Shutdown {
    /// Starts the shutdown; wakes everything waiting for it.
    pub fn trigger(&self) {
        self.started.store(true, SeqCst);
        self.notify.notify_waiters();
    }

    /// True once shutdown has started.
    pub fn is_started(&self) -> bool {
        self.started.load(SeqCst)
    }

    /// Resolves once shutdown has started.
    pub async fn started(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_started() {
                return;
            }
            notified.await;
        }
    }

    /// Counts something cut short by the shutdown.
    pub fn record_cut(&self) {
        self.cut.fetch_add(1, SeqCst);
    }

    /// How many things were cut short.
    pub fn cut_count(&self) -> usize {
        self.cut.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let now = Instant::now();
        let mut b = Backoff::default();
        let mut lengths = Vec::new();
        for _ in 0..8 {
            b.fail(now, Arc::from("x"));
            lengths.push(b.remaining(now).map(|d| d.as_secs()));
        }
        let expected = [1, 2, 4, 8, 16, 32, 60, 60].map(Some);
        assert_eq!(lengths, expected);
        b.reset();
        assert_eq!(b.remaining(now), None);
        b.fail(now, Arc::from("x"));
        assert_eq!(b.remaining(now), Some(Duration::from_secs(1)));
    }

    #[test]
    fn state_words() {
        for s in [
            ModelState::Asleep,
            ModelState::Waking,
            ModelState::Active,
            ModelState::Draining,
            ModelState::Sleeping,
            ModelState::Failed,
        ] {
            assert_eq!(ModelState::from_u8(s as u8), s);
        }
        assert_eq!(ModelState::Draining.to_string(), "draining");
    }
}
