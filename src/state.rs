//! The state shared by the server, the request handlers and the switch task.
//!
//! Who writes what is the whole design, so each field says it. The hot path
//! reads only `catalog` and `routing` (see [`crate::routing`]), each with
//! one `ArcSwap` load, and counts itself in its model's preallocated
//! metrics; everything behind a lock here is touched by a request only when
//! it has to queue.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::events::Events;
use crate::inbox::Inbox;
use crate::machine::SwitchRecord;
use crate::metrics::ProcessMetrics;
use crate::routing::Routing;
use crate::shutdown::{Latch, Shutdown};

/// Everything llmux shares between tasks.
pub struct Shared {
    /// The configuration in force and the models it names. Swapped whole
    /// by a reload; read (one `ArcSwap` load) by every request.
    pub catalog: ArcSwap<Catalog>,
    /// The published routing snapshot. Written only by the switch task;
    /// read lock-free by every request.
    pub routing: ArcSwap<Routing>,
    /// What requests, operators and reloads tell the switch task: pushed on
    /// the cold path only (a miss, a command, a reload).
    pub inbox: Inbox,
    /// Set by the supervisor in [`crate::server`] if the switch task ends
    /// before shutdown (a panic, a bug): misses get 503 from then on and
    /// `/health` reports it. Read by requests that would queue.
    pub switch_task_dead: AtomicBool,
    /// Set once at shutdown; awaited by queued requests, the switch task
    /// and running hooks.
    pub shutdown: Shutdown,
    /// Set by the switch task once start-up adoption is done (every
    /// model's `alive` answered); awaited by the readiness notification
    /// (`READY=1`, see [`crate::systemd`] and `lib.rs`).
    pub started: Latch,
    /// Measured switch cost (drain + sleep + wake) per (from, to) slot: a
    /// copy of the machine's, written by the switch task after each switch,
    /// read by `/llmux/status`.
    pub switch_costs: Mutex<BTreeMap<(Option<usize>, usize), Duration>>,
    /// Requests queued for any model, and their body bytes: the global
    /// queue bounds. Written by queued requests (cold path).
    pub queued_requests: AtomicUsize,
    /// See `queued_requests`.
    pub queued_body_bytes: AtomicU64,
    /// The last switch, as it went. Written by the switch task.
    pub last_switch: Mutex<Option<SwitchRecord>>,
    /// The scheduler's estimates per slot: mean service time and the
    /// concurrency seen. Written by the switch task when it samples them,
    /// read by `/llmux/status`.
    pub estimates: Mutex<Vec<(Option<Duration>, usize)>>,
    /// Models whose wait bound was found infeasible: (slot, bound, round
    /// of switches). Written by the switch task, read by `/llmux/status`.
    pub infeasible: Mutex<Vec<(usize, Duration, Duration)>>,
    /// The victims of the last switch that were put to sleep, with their
    /// sleep hook's time. Written by the switch task while it holds
    /// `last_switch` (so a reader that locks `last_switch` first sees the
    /// pair as one); read by `/llmux/status`.
    pub last_evicted: Mutex<Vec<Evicted>>,
    /// The sizes of the loaded models (`Machine::used`), as `f64` bits: a
    /// copy the switch task writes after every event it feeds the machine;
    /// read by `/llmux/status` and `/metrics` through
    /// [`Shared::capacity_used`].
    pub capacity_used: AtomicU64,
    /// The last hook that failed. Written by the switch task.
    pub last_hook_error: Mutex<Option<HookError>>,
    /// The last state changes, switches and hook errors (bounded rings).
    /// Written by the switch task only, read by `/llmux/status`.
    pub history: Mutex<crate::history::History>,
    /// The switch protocol's clock: maps instants to the machine's time.
    pub clock: crate::clock::Clock,
    /// Live events for `/llmux/events`.
    pub events: Events,
    /// Process-wide metrics.
    pub metrics: ProcessMetrics,
    /// Where the config came from, for reloads (`None`: built in memory).
    pub config_file: Option<ConfigFile>,
    /// Serialises reloads.
    pub reload_lock: Mutex<()>,
    /// Request-body bytes held in memory, against
    /// `limits.max_body_bytes_in_memory`. Reserved and released by every
    /// request with a body (one atomic each way; see [`crate::budget`]).
    pub body_budget: crate::budget::BodyBudget,
}

/// The file a config was read from and the command line's overrides.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The file.
    pub path: std::path::PathBuf,
    /// `-p`: overrides the file's port at every load.
    pub port: Option<u16>,
}

/// A victim a switch put to sleep (its sleep hook succeeded during the
/// switch), for `/llmux/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// The victim's slot.
    pub model: usize,
    /// Its sleep hook's spawn-to-reap time.
    pub sleep: Duration,
}

/// A hook failure, for `/llmux/status`.
#[derive(Debug, Clone)]
pub struct HookError {
    /// The model.
    pub model: Box<str>,
    /// Which hook.
    pub hook: &'static str,
    /// How it failed.
    pub error: String,
    /// The last lines it wrote to stderr (bounded: see
    /// [`crate::hooks::TAIL_LINES`]).
    pub stderr: Vec<String>,
    /// When, as [`crate::metrics::now_micros`].
    pub at_micros: u64,
}

impl crate::budget::Budgeted for Arc<Shared> {
    fn budget(&self) -> &crate::budget::BodyBudget {
        &self.body_budget
    }
}

impl Shared {
    /// Shared state for `config`, with nothing active yet.
    pub fn new(config: Config, config_file: Option<ConfigFile>) -> Shared {
        let clock = crate::clock::Clock::new();
        Shared {
            history: Mutex::new(crate::history::History::new(&clock)),
            catalog: ArcSwap::from_pointee(Catalog::new(config)),
            routing: ArcSwap::from_pointee(Routing::empty()),
            inbox: Inbox::default(),
            switch_task_dead: AtomicBool::new(false),
            shutdown: Shutdown::default(),
            started: Latch::default(),
            switch_costs: Mutex::new(BTreeMap::new()),
            last_switch: Mutex::new(None),
            last_evicted: Mutex::new(Vec::new()),
            capacity_used: AtomicU64::new(0f64.to_bits()),
            last_hook_error: Mutex::new(None),
            infeasible: Mutex::new(Vec::new()),
            estimates: Mutex::new(Vec::new()),
            queued_requests: AtomicUsize::new(0),
            queued_body_bytes: AtomicU64::new(0),
            clock,
            events: Events::default(),
            metrics: ProcessMetrics::default(),
            config_file,
            reload_lock: Mutex::new(()),
            body_budget: crate::budget::BodyBudget::default(),
        }
    }

    /// The catalog in force (one `ArcSwap` load).
    #[inline]
    pub fn catalog(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.catalog.load()
    }

    /// Marks the switch task dead and wakes every queued request (they get
    /// 503).
    pub fn switch_task_died(&self) {
        self.switch_task_dead.store(true, SeqCst);
        for slot in &self.catalog().slots {
            slot.ready.notify_waiters();
        }
    }

    /// True if the switch task ended before shutdown.
    pub fn is_switch_task_dead(&self) -> bool {
        self.switch_task_dead.load(SeqCst)
    }

    /// The sizes of the loaded models, as the switch task last saw them.
    pub fn capacity_used(&self) -> f64 {
        f64::from_bits(self.capacity_used.load(Relaxed))
    }

    /// The resident models' slots, in the order they were published
    /// (the last is [`Shared::active_model`]).
    pub fn resident_models(&self) -> Vec<usize> {
        self.routing.load().residents().map(|i| i.model).collect()
    }

    /// The index of the active model, if any.
    pub fn active_model(&self) -> Option<usize> {
        self.routing.load().active().map(|i| i.model)
    }
}
