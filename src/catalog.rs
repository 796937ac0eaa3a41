//! The catalog of models: the configuration in force, and per model a
//! stable slot with its state, queue depth, backoff and metrics.
//!
//! Swapped whole by a reload (one `ArcSwap` in [`crate::state::Shared`]);
//! slots outlive reloads, so a slot index is a model's id everywhere (the
//! routing snapshot, the machine, metrics).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::config::{Config, ModelConfig};
use crate::machine::ModelState;
use crate::metrics::ModelMetrics;

/// The models of one configuration, by stable slot index.
///
/// Slots are never removed: a model dropped by a reload keeps its slot (and
/// its index, which the routing snapshot, the switch costs and the metrics
/// use), and gets it back if a later reload names it again.
pub struct Catalog {
    /// The configuration in force.
    pub config: Config,
    /// Every model ever configured, by slot index.
    pub slots: Vec<Arc<ModelSlot>>,
    /// Slot index to position in `config.models`; `None`: removed.
    configs: Vec<Option<usize>>,
    /// Every name a client may send (model names and aliases) to slot
    /// index.
    index: HashMap<Box<str>, usize>,
    /// The last configuration of each removed model: its hooks still put
    /// it to sleep if it was active when it was removed.
    retired: HashMap<usize, ModelConfig>,
    /// The configuration llmux started with: what the settings that need
    /// a restart are in force at, whatever reloads came since.
    started: Arc<Config>,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Models that appeared.
    pub added: Vec<String>,
    /// Models that are gone.
    pub removed: Vec<String>,
    /// Models whose port, hooks or timers changed.
    pub changed: Vec<String>,
    /// Settings that apply at once (everything but the models' own and
    /// those needing a restart), as dotted keys: `policy.min_active_secs`.
    pub settings: Vec<String>,
    /// Settings that apply only after a restart and differ from the ones
    /// llmux started with (so a later reload still lists them).
    pub restart_needed: Vec<&'static str>,
}

impl Catalog {
    /// The catalog of a first configuration.
    pub fn new(config: Config) -> Catalog {
        let slots = config.models.iter().map(|m| Arc::new(ModelSlot::new(&m.name))).collect();
        let started = Arc::new(config.clone());
        Catalog::build(config, slots, HashMap::new(), started)
    }

    fn build(
        config: Config,
        slots: Vec<Arc<ModelSlot>>,
        mut retired: HashMap<usize, ModelConfig>,
        started: Arc<Config>,
    ) -> Catalog {
        let mut configs = vec![None; slots.len()];
        let names = config.models.iter().map(|m| 1 + m.aliases.len()).sum();
        let mut index = HashMap::with_capacity(names);
        for (position, m) in config.models.iter().enumerate() {
            if let Some(slot) = slots.iter().position(|s| *s.name == *m.name) {
                configs[slot] = Some(position);
                index.insert(m.name.as_str().into(), slot);
                for alias in &m.aliases {
                    index.insert(alias.as_str().into(), slot);
                }
                retired.remove(&slot);
            }
        }
        Catalog { config, slots, configs, index, retired, started }
    }

    /// The catalog of `config`, keeping this one's slots; and what changed.
    pub fn reload(&self, config: Config) -> (Catalog, Changes) {
        let mut slots = self.slots.clone();
        let restart_needed = self.started.restart_needed(&config);
        let settings = crate::resolved::changed_keys(&self.config, &config)
            .into_iter()
            .filter(|key| !key.starts_with("models.") && !crate::config::RESTART_KEYS.contains(&key.as_str()))
            .collect();
        let mut changes = Changes { restart_needed, settings, ..Changes::default() };
        for m in &config.models {
            match self.model_slot(&m.name).and_then(|i| self.model(i)) {
                Some(old) if old != m => changes.changed.push(m.name.clone()),
                Some(_) => {}
                None => {
                    changes.added.push(m.name.clone());
                    if !slots.iter().any(|s| *s.name == *m.name) {
                        slots.push(Arc::new(ModelSlot::new(&m.name)));
                    }
                }
            }
        }
        let mut retired = self.retired.clone();
        for m in self.config.models.iter().filter(|m| config.model_index(&m.name).is_none()) {
            changes.removed.push(m.name.clone());
            if let Some(slot) = self.model_slot(&m.name) {
                retired.insert(slot, m.clone());
            }
        }
        (Catalog::build(config, slots, retired, Arc::clone(&self.started)), changes)
    }

    /// The slot of the configured model called `name`, or of which `name`
    /// is an alias: one hash lookup, no allocation.
    #[inline]
    pub fn lookup(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The slot of the configured model called `name` (not an alias).
    pub fn model_slot(&self, name: &str) -> Option<usize> {
        self.lookup(name).filter(|&slot| *self.slots[slot].name == *name)
    }

    /// The configuration of slot `slot`, if the model is configured.
    pub fn model(&self, slot: usize) -> Option<&ModelConfig> {
        self.configs.get(slot).copied().flatten().and_then(|i| self.config.models.get(i))
    }

    /// The hooks of slot `slot`: its configuration, or the last one it had
    /// if a reload removed it.
    pub fn hooks_of(&self, slot: usize) -> Option<&ModelConfig> {
        self.model(slot).or_else(|| self.retired.get(&slot))
    }

    /// True if slot `slot` is not configured any more.
    pub fn is_removed(&self, slot: usize) -> bool {
        self.model(slot).is_none()
    }

    /// Slot `slot`'s state. Slot indices are valid in every later catalog.
    pub fn slot(&self, slot: usize) -> &Arc<ModelSlot> {
        &self.slots[slot]
    }

    /// The configured models in config order: (slot, config, state).
    pub fn live(&self) -> impl Iterator<Item = (usize, &ModelConfig, &Arc<ModelSlot>)> {
        self.config.models.iter().filter_map(|m| {
            let slot = self.model_slot(&m.name)?;
            Some((slot, m, &self.slots[slot]))
        })
    }

    /// A model's name for logs (removed models keep theirs).
    pub fn name(&self, slot: usize) -> &str {
        self.slots.get(slot).map_or("(unknown)", |s| &s.name)
    }
}

/// One model's state outside the routing snapshot.
pub struct ModelSlot {
    /// The model's name (fixed for the slot's life).
    pub name: Box<str>,
    /// The model's [`ModelState`]. Written only by the switch task.
    state: AtomicU8,
    /// When `state` last changed, as [`crate::metrics::now_micros`].
    state_since: AtomicU64,
    /// Requests waiting for this model and when the oldest arrived.
    /// Written by queued requests (cold path), read by the switch task.
    pub queue: Mutex<QueueState>,
    /// How many requests wait for this model, as an atomic: read on the
    /// hot path of a model with `max_in_flight` (a newcomer does not pass
    /// them). Written with `queue` by [`ModelSlot::queue_joined`] and
    /// [`ModelSlot::queue_left`].
    queued: AtomicUsize,
    /// Raised (`notify_waiters`) by the switch task when this model is
    /// published, when its wake fails, or when a drain of it is abandoned.
    pub ready: Notify,
    /// Failure backoff. Written by the switch task, read by queued requests.
    pub backoff: Mutex<Backoff>,
    /// What its requests and hooks count.
    pub metrics: ModelMetrics,
    /// Time spent active. Written by [`ModelSlot::set_state`] (switch
    /// task), read by `/metrics`; a cold-path lock.
    active: Mutex<ActiveClock>,
}

/// Finished stretches of time active and the start of the current one,
/// changed together so a reader never sees a stretch ended but not counted.
#[derive(Default)]
struct ActiveClock {
    finished_micros: u64,
    since: Option<u64>,
}

impl ModelSlot {
    /// A slot for the model `name`, asleep.
    pub fn new(name: &str) -> ModelSlot {
        ModelSlot {
            name: name.into(),
            state: AtomicU8::new(ModelState::Asleep as u8),
            state_since: AtomicU64::new(crate::metrics::now_micros()),
            queue: Mutex::new(QueueState::default()),
            queued: AtomicUsize::new(0),
            ready: Notify::new(),
            backoff: Mutex::new(Backoff::default()),
            metrics: ModelMetrics::default(),
            active: Mutex::new(ActiveClock::default()),
        }
    }

    /// The model's current state.
    pub fn state(&self) -> ModelState {
        ModelState::from_u8(self.state.load(SeqCst))
    }

    /// How long the model has been in its current state.
    pub fn time_in_state(&self) -> Duration {
        let since = self.state_since.load(SeqCst);
        Duration::from_micros(crate::metrics::now_micros().saturating_sub(since))
    }

    /// Sets the model's state (switch task only), ending or starting a
    /// stretch of time active.
    pub fn set_state(&self, state: ModelState) {
        let mut clock = self.active.lock();
        let old = self.state.swap(state as u8, SeqCst);
        if old == state as u8 {
            return;
        }
        let now = crate::metrics::now_micros();
        self.state_since.store(now, SeqCst);
        if let Some(since) = clock.since.take() {
            clock.finished_micros += now.saturating_sub(since);
        }
        if state == ModelState::Active {
            clock.since = Some(now);
        }
    }

    /// Time spent active, the current stretch included. Never goes
    /// backwards: read under the lock the stretches change under.
    pub fn active_time(&self) -> Duration {
        let clock = self.active.lock();
        let current = clock.since.map_or(0, |since| crate::metrics::now_micros().saturating_sub(since));
        Duration::from_micros(clock.finished_micros + current)
    }

    /// Requests waiting for this model.
    pub fn waiting(&self) -> usize {
        self.queue.lock().waiting
    }

    /// Requests waiting for this model (one atomic load).
    #[inline]
    pub fn queued(&self) -> usize {
        self.queued.load(SeqCst)
    }

    /// Counts a request that joined this model's queue.
    pub fn queue_joined(&self) {
        self.queued.fetch_add(1, SeqCst);
    }

    /// Counts a request that left this model's queue.
    pub fn queue_left(&self) {
        self.queued.fetch_sub(1, SeqCst);
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

/// A failed wake's backoff, as the machine set it: requests get 503 with
/// `Retry-After` until it ends. Written by the switch task, read by
/// requests that would queue.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Requests get 503 until then.
    pub until: Option<Instant>,
    /// What failed, for the 503's message.
    pub reason: Arc<str>,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { until: None, reason: Arc::from("") }
    }
}

impl Backoff {
    /// A backoff until `until` for `reason`.
    pub fn fail(&mut self, until: Instant, reason: Arc<str>) {
        self.until = Some(until);
        self.reason = reason;
    }

    /// No backoff.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// Time left in the backoff, if one is running.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until.filter(|u| *u > now).map(|u| u - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(models: &[(&str, u16)]) -> Config {
        let mut text = String::from("models:\n");
        for (name, port) in models {
            text.push_str(&format!("  {name}: {{port: {port}, wake: w, sleep: s, alive: a}}\n"));
        }
        Config::parse(&text, crate::config::Format::Yaml, ".".into()).expect("a test config")
    }

    #[test]
    fn a_reload_keeps_slots_stable_and_reports_what_changed() {
        let first = Catalog::new(config(&[("a", 1), ("b", 2)]));
        let (second, changes) = first.reload(config(&[("b", 3), ("c", 4)]));
        assert_eq!(changes.added, ["c"]);
        assert_eq!(changes.removed, ["a"]);
        assert_eq!(changes.changed, ["b"]);
        assert_eq!((second.lookup("a"), second.lookup("b"), second.lookup("c")), (None, Some(1), Some(2)));
        assert!(Arc::ptr_eq(&first.slots[1], &second.slots[1]), "b keeps its slot");
        assert!(second.is_removed(0));
        assert_eq!(second.hooks_of(0).map(|m| m.backend.port()), Some(1), "a removed model keeps its hooks");
        let names: Vec<&str> = second.live().map(|(_, m, _)| m.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        let (third, changes) = second.reload(config(&[("a", 5), ("c", 4)]));
        assert_eq!((changes.added, changes.removed), (vec!["a".to_owned()], vec!["b".to_owned()]));
        assert_eq!(third.lookup("a"), Some(0), "a returning model gets its old slot back");
        assert_eq!(third.model(0).map(|m| m.backend.port()), Some(5));
        assert_eq!(third.slots.len(), 3);
    }

    fn config_with_aliases(models: &[(&str, u16, &[&str])]) -> Config {
        let mut text = String::from("models:\n");
        for (name, port, aliases) in models {
            let aliases = aliases.join(", ");
            text.push_str(&format!("  {name}: {{port: {port}, wake: w, sleep: s, alive: a, aliases: [{aliases}]}}\n"));
        }
        Config::parse(&text, crate::config::Format::Yaml, ".".into()).expect("a test config")
    }

    #[test]
    fn aliases_name_their_models_slot() {
        let first = Catalog::new(config_with_aliases(&[("a", 1, &["x", "y"]), ("b", 2, &[])]));
        assert_eq!((first.lookup("a"), first.lookup("x"), first.lookup("y")), (Some(0), Some(0), Some(0)));
        assert_eq!((first.model_slot("x"), first.model_slot("a")), (None, Some(0)));
        // A reload that turns an alias into a model of its own adds it
        // (it does not take the old owner's slot), and the old owner keeps
        // its slot.
        let (second, changes) = first.reload(config_with_aliases(&[("a", 1, &["y"]), ("x", 3, &[])]));
        assert_eq!(changes.added, ["x"]);
        assert_eq!(changes.removed, ["b"]);
        assert_eq!(changes.changed, ["a"], "a lost an alias");
        assert_eq!((second.lookup("a"), second.lookup("y"), second.lookup("x")), (Some(0), Some(0), Some(2)));
        assert_eq!(second.name(2), "x");
    }

    #[test]
    fn time_active_is_counted_as_a_model_leaves_active() {
        let slot = ModelSlot::new("m");
        slot.set_state(ModelState::Active);
        std::thread::sleep(Duration::from_millis(5));
        slot.set_state(ModelState::Draining);
        let counted = slot.active_time();
        assert!(counted >= Duration::from_millis(5), "{counted:?}");
    }

    #[test]
    fn time_active_never_goes_backwards_while_states_change() {
        let slot = Arc::new(ModelSlot::new("m"));
        let flipper = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    slot.set_state(if i % 2 == 0 { ModelState::Active } else { ModelState::Draining });
                }
            })
        };
        let mut last = Duration::ZERO;
        while !flipper.is_finished() {
            let now = slot.active_time();
            assert!(now >= last, "went backwards: {last:?} -> {now:?}");
            last = now;
        }
        flipper.join().expect("flipper");
    }

    #[test]
    fn state_words() {
        for s in ModelState::ALL {
            assert_eq!(ModelState::from_u8(s as u8), s);
        }
        assert_eq!(ModelState::Draining.to_string(), "draining");
    }
}
