//! The switch protocol as a sans-IO state machine.
//!
//! [`Machine::handle`] takes an [`Event`] and the [`Time`] it happened and
//! returns [`Action`]s; [`Machine::deadline`] says when it next wants to be
//! called if nothing else happens (its timer). It runs no hook, reads no
//! clock, touches no socket and no lock: the switch task
//! ([`crate::switcher`]) turns its actions into hook runs, `ArcSwap`
//! stores and `Notify` wake-ups and feeds their results back as events; the
//! unit tests drive it with scripted events and virtual time.
//!
//! # What it decides
//!
//! - **Start-up**: `alive` of every model at once; the models that are up
//!   are adopted in config order while they fit, every other that is up or
//!   unknown is put to sleep before anything is woken.
//! - **Switches**: when a model has waiters and is not serving, the
//!   [`SwitchPolicy`] picks a target. If it fits in the capacity beside the
//!   *loaded* models, it is woken at once and every resident keeps serving.
//!   Otherwise the policy picks victims ([`policy::victims_by_value`]:
//!   never pinned, never inside min_active; idle and cheap to wake again
//!   first): each is gated (its new requests queue), drained (its in-flight
//!   requests finish, or are cut at `drain_timeout`), unpublished and
//!   slept; only when every victim's sleep hook has finished does the
//!   target's wake hook start, then its `alive` until it passes, then it
//!   is published. A drain whose target nobody waits for any more is
//!   abandoned at once and the victims serve again. Without a `capacity`,
//!   every model counts 1 of 1: one model at a time.
//! - **Failures**: a failed wake fails the target's waiters, backs it off
//!   and sleeps it; a failed sleep runs `alive`: down, the switch goes on;
//!   up (or unknown), the victim is published again as a *fresh*
//!   incarnation and the switch fails (unless `on_sleep_failure:
//!   continue`).
//! - **Upkeep**: idle sleep (probing the idle time it cannot read itself),
//!   the periodic `alive` check and a refused connection's `alive` check
//!   (exit non-zero: the model is down and forgotten; a timeout is
//!   "unknown" and changes nothing), operators' sleep commands, sleeping a
//!   model a reload removed.
//!
//! # Invariants (checked by the property tests)
//!
//! - A model is *loaded* from the start of its wake hook (or adoption)
//!   until its sleep hook succeeded or its `alive` exited non-zero. The
//!   sizes of the loaded models never add up to more than the capacity
//!   (without one: at most one model is loaded), except under
//!   `on_sleep_failure: continue`, which trades this for availability.
//! - A victim's sleep has finished before the next wake starts.
//! - An incarnation that was unpublished never serves again: a model that
//!   serves again is published afresh.

mod capacity;
pub mod cost_aware;
pub mod policy;
mod switch;
#[cfg(test)]
mod tests;
mod upkeep;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

pub use crate::clock::Time;
pub use crate::config::HookKind;
pub use policy::SwitchPolicy;

use policy::{ModelView, PolicyContext};

/// A model, by its stable slot index.
pub type ModelId = usize;

/// A queued request's number, unique for the process's life.
pub type Ticket = u64;

/// How a hook run ended, as the protocol sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookResult {
    /// Exited 0.
    Success,
    /// Exited non-zero (for `alive`: the backend is down).
    Failed,
    /// Timed out or could not be started: for `alive`, "unknown".
    Unknown,
    /// Killed by the shutdown.
    Cut,
}

/// Something that happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// llmux started: check every model.
    Start,
    /// A request queued for `model`; it arrived `at`.
    Queued {
        /// Its model.
        model: ModelId,
        /// Its number.
        ticket: Ticket,
        /// When it arrived.
        at: Time,
    },
    /// A queued request left the queue (admitted, timed out, gone).
    Left {
        /// Its model.
        model: ModelId,
        /// Its number.
        ticket: Ticket,
    },
    /// [`Action::Gate`] was carried out; this many requests were in flight.
    Gated {
        /// The model gated.
        model: ModelId,
        /// Requests still in flight on it.
        in_flight: usize,
    },
    /// The gated model's last in-flight request finished.
    Drained {
        /// The model.
        model: ModelId,
    },
    /// A hook exited.
    HookDone {
        /// Its model.
        model: ModelId,
        /// Which hook.
        kind: HookKind,
        /// How it ended.
        result: HookResult,
        /// How it ended, in words ("exited with status 1").
        detail: String,
        /// Spawn to reap.
        took: Duration,
    },
    /// The answer to [`Action::ProbeIdle`]: how long nothing has been in
    /// flight (`None`: something is).
    Idle {
        /// The model probed.
        model: ModelId,
        /// Idle for this long, or busy.
        idle: Option<Duration>,
    },
    /// A request found `model`'s backend refusing connections.
    Refused {
        /// The model.
        model: ModelId,
    },
    /// An operator's command.
    Command(Command),
    /// The configuration changed.
    Reload(Settings),
    /// Requests `model` has completed so far and the time they took
    /// (cumulative; sampled by the executor as misses arrive): the service
    /// time the policy sees.
    Served {
        /// The model.
        model: ModelId,
        /// Requests completed.
        completed: u64,
        /// Their total duration.
        busy: Duration,
        /// Requests in flight now.
        in_flight: usize,
    },
    /// Shutdown started: start nothing new.
    Shutdown,
    /// The time given by [`Machine::deadline`] came.
    Timer,
}

/// An operator's command; answered by [`Action::CommandDone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Drain and sleep `model` (`None`: every resident but the pinned
    /// ones, or all of them with `all`).
    Sleep {
        /// The command's number, echoed in the answer.
        id: u64,
        /// The model, or every resident.
        model: Option<ModelId>,
        /// With no model: pinned residents too.
        all: bool,
    },
}

/// Something the executor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Stop admitting `model`'s requests (they queue), then answer
    /// [`Event::Gated`] and, once nothing is in flight, [`Event::Drained`].
    Gate(ModelId),
    /// Admit `model`'s requests again (an abandoned drain) and wake its
    /// waiters.
    Ungate(ModelId),
    /// End `model`'s in-flight requests (a drain timed out).
    Cut(ModelId),
    /// Publish `model` with a fresh incarnation and wake its waiters.
    Publish(ModelId),
    /// Take `model` out of the routing snapshot.
    Unpublish(ModelId),
    /// Run one of `model`'s hooks; answer [`Event::HookDone`].
    RunHook(ModelId, HookKind),
    /// Read how long `model` has been idle; answer [`Event::Idle`].
    ProbeIdle(ModelId),
    /// Answer `model`'s waiters 503 with `reason`; new requests get 503
    /// until `until` (the backoff).
    Fail {
        /// The model.
        model: ModelId,
        /// Why, for the 503's message.
        reason: String,
        /// The end of its backoff.
        until: Time,
    },
    /// Wake the requests waiting for a verdict on `model`'s backend.
    Verdict(ModelId),
    /// Show `model` in this state (`/health`, metrics).
    SetState(ModelId, ModelState),
    /// Wake `model` as a request would (`policy.preload`).
    Preload(ModelId),
    /// Log and publish on the event stream.
    Report(Report),
    /// Answer an operator's command: the models put to sleep.
    CommandDone {
        /// The command's number.
        id: u64,
        /// The models slept, or why it failed.
        result: Result<Vec<ModelId>, String>,
    },
    /// A switch ended.
    SwitchDone(SwitchRecord),
}

/// Something worth a log line and an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A switch began.
    SwitchStarted {
        /// The model it leaves.
        from: Option<ModelId>,
        /// Its target.
        to: ModelId,
        /// Why this target, now (the policy's word).
        reason: &'static str,
    },
    /// A phase of a switch ended.
    PhaseDone {
        /// The model it leaves.
        from: Option<ModelId>,
        /// Its target.
        to: ModelId,
        /// `drain`, `sleep` or `wake`.
        phase: &'static str,
        /// How long it took.
        took: Duration,
    },
    /// `model` serves; its oldest waiter waited this long.
    Activated {
        /// The model.
        model: ModelId,
        /// From its oldest waiter's arrival.
        waited: Duration,
    },
    /// Start-up: `model`'s `alive` failed, it is not running.
    Down(ModelId),
    /// Start-up ended: these models (at least one), found running, were
    /// adopted, in config order.
    Adopted(Vec<ModelId>),
    /// Start-up ended and adopted no model: none is active.
    NoneAdopted,
    /// `model` was put to sleep.
    Asleep {
        /// The model.
        model: ModelId,
        /// Why it was put to sleep.
        why: &'static str,
    },
    /// `model` failed.
    Failed {
        /// The model.
        model: ModelId,
        /// What happened.
        reason: String,
    },
    /// A switch must make room: these residents are evicted.
    Evicting {
        /// The model that needs the room (`None`: a reload shrank the
        /// budget).
        to: Option<ModelId>,
        /// The victims.
        victims: Vec<ModelId>,
        /// Why these (the policy's words).
        why: String,
    },
    /// A drain was abandoned: nobody waits for the target any more.
    Abandoned {
        /// The model that serves again.
        model: ModelId,
    },
    /// `model` is idle: it is put to sleep.
    IdleSleep(ModelId),
    /// An `alive` check timed out: nothing is changed.
    AliveUnknown(ModelId),
    /// `model`'s wait bound is shorter than a round of the switches the
    /// recent load implies: it cannot always be met (said once).
    Infeasible {
        /// The model.
        model: ModelId,
        /// Its bound.
        max_wait: Duration,
        /// The round of switches it would wait through.
        cycle: Duration,
    },
}

/// A model's state, shown by `/health`, metrics and the control API with
/// these exact words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ModelState {
    /// Not loaded.
    Asleep = 0,
    /// Its wake hook (or the `alive` confirming it) is running.
    Waking = 1,
    /// Published and serving.
    Active = 2,
    /// Finishing its in-flight requests before it is slept.
    Draining = 3,
    /// Its sleep hook is running.
    Sleeping = 4,
    /// Its last wake or sleep failed, or its backend went down.
    Failed = 5,
}

impl ModelState {
    /// Every state, in the order metrics list them.
    pub const ALL: [ModelState; 6] = [
        ModelState::Asleep,
        ModelState::Waking,
        ModelState::Active,
        ModelState::Draining,
        ModelState::Sleeping,
        ModelState::Failed,
    ];

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

    /// The state stored as `v` (unknown values read as asleep).
    pub fn from_u8(v: u8) -> ModelState {
        ModelState::ALL.get(usize::from(v)).copied().unwrap_or(ModelState::Asleep)
    }
}

impl fmt::Display for ModelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a switch ended (the discriminant indexes per-result metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchResult {
    /// The target was published.
    Done = 0,
    /// The drain was abandoned: nobody waited for the target any more.
    Abandoned = 1,
    /// A hook failed; the target's waiters got 503.
    Failed = 2,
}

impl SwitchResult {
    /// Every result, in discriminant order.
    pub const ALL: [SwitchResult; 3] = [SwitchResult::Done, SwitchResult::Abandoned, SwitchResult::Failed];

    /// The word used in metrics and the control API.
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchResult::Done => "done",
            SwitchResult::Abandoned => "abandoned",
            SwitchResult::Failed => "failed",
        }
    }
}

/// What happened in one switch, phase by phase.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchRecord {
    /// The model that served, if any.
    pub from: Option<ModelId>,
    /// The model switched to.
    pub to: ModelId,
    /// The residents slept to make room.
    pub victims: Vec<ModelId>,
    /// Why (the policy's word).
    pub reason: &'static str,
    /// When the oldest request for `to` arrived.
    pub miss: Time,
    /// When the switch began.
    pub started: Time,
    /// How long the drain took.
    pub drain: Duration,
    /// How long the sleep took, if anything was slept.
    pub sleep: Option<Duration>,
    /// When the wake hook was spawned, if it ran.
    pub wake_started: Option<Time>,
    /// The wake hook's spawn-to-reap time, if it ran.
    pub wake: Option<Duration>,
    /// Time spent in `alive` hooks confirming the wake.
    pub alive: Duration,
    /// When `to` was published.
    pub published: Option<Time>,
    /// How it ended.
    pub result: SwitchResult,
}

impl SwitchRecord {
    /// The measured cost: drain, sleep and wake (no queueing, no backoff).
    pub fn cost(&self) -> Duration {
        self.drain + self.sleep.unwrap_or_default() + self.wake.unwrap_or_default() + self.alive
    }
}

/// What the machine needs to know of the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Per slot (removed models included, with `configured: false`).
    pub models: Vec<ModelSettings>,
    /// Model names per slot, for messages.
    pub names: Vec<String>,
    /// Configured models in config order (adoption prefers the first).
    pub order: Vec<ModelId>,
    /// `policy.min_active_secs`.
    pub min_active: Duration,
    /// `policy.drain_before_switch`.
    pub drain_before_switch: bool,
    /// `policy.drain_timeout_secs`.
    pub drain_timeout: Option<Duration>,
    /// `policy.on_sleep_failure: continue`.
    pub continue_on_sleep_failure: bool,
    /// `policy.preload`.
    pub preload: Option<ModelId>,
    /// `capacity`: the budget the sizes of loaded models add up to at
    /// most. `None`: one model at a time (every size counts as 1).
    pub capacity: Option<f64>,
    /// `policy.request_timeout_secs`.
    pub request_timeout: Option<Duration>,
}

/// One model's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSettings {
    /// False once a reload removed it.
    pub configured: bool,
    /// `models.<name>.size`: what it takes of the capacity.
    pub size: f64,
    /// `models.<name>.pinned`: never evicted to make room.
    pub pinned: bool,
    /// `models.<name>.weight`: how much its waiting requests count.
    pub weight: f64,
    /// `policy.max_wait_secs` or `models.<name>.max_wait_secs`: the wait
    /// bound the scheduler keeps.
    pub max_wait: Duration,
    /// The wake timeout: wake hook and confirming `alive` together.
    pub wake_timeout: Duration,
    /// Sleep after this long idle.
    pub idle_sleep: Option<Duration>,
    /// Run `alive` this often while it serves.
    pub alive_interval: Option<Duration>,
}

impl ModelSettings {
    /// The settings of `model`'s configuration (`configured`: false once a
    /// reload removed it).
    pub fn of(model: &crate::config::ModelConfig, configured: bool) -> ModelSettings {
        ModelSettings {
            configured,
            size: model.size,
            pinned: model.pinned,
            weight: model.weight,
            max_wait: model.max_wait,
            wake_timeout: model.wake.timeout,
            idle_sleep: model.idle_sleep,
            alive_interval: model.alive_interval,
        }
    }
}

impl Settings {
    /// The settings of `config` for `models` and their `names` (per slot),
    /// the configured slots in config `order`; `slot_of` maps a model name
    /// to its slot (for `policy.preload`).
    pub fn of(
        config: &crate::config::Config,
        models: Vec<ModelSettings>,
        names: Vec<String>,
        order: Vec<ModelId>,
        slot_of: impl Fn(&str) -> Option<ModelId>,
    ) -> Settings {
        let p = &config.policy;
        Settings {
            models,
            names,
            preload: p.preload.as_deref().and_then(slot_of),
            order,
            min_active: p.min_active,
            drain_before_switch: p.drain_before_switch,
            drain_timeout: p.drain_timeout,
            continue_on_sleep_failure: p.on_sleep_failure == crate::config::OnSleepFailure::Continue,
            capacity: config.capacity,
            request_timeout: p.request_timeout,
        }
    }
}

/// The default wait bound (`policy.max_wait_secs`).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(120);

/// First backoff after a failed wake.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// First pause between the `alive` checks that confirm a wake.
const CONFIRM_PAUSE_START: Duration = Duration::from_millis(25);
/// Longest pause between them.
const CONFIRM_PAUSE_MAX: Duration = Duration::from_secs(1);
/// How soon a busy model's idle time is probed again.
const IDLE_REPROBE: Duration = Duration::from_secs(1);

/// Why a hook runs: decides what its result means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Start-up: is it running?
    Adopt,
    /// Confirming a wake.
    Confirm,
    /// Is a serving model still up (periodic, or a refused connection)?
    Check,
    /// Its sleep failed: is it still up?
    AfterSleepFailed,
    /// Sleeping a victim of a switch (or a start-up leftover).
    Sleep,
    /// Sleeping a model whose wake failed.
    CleanUp,
    /// Waking a switch's target.
    Wake,
}

/// The protocol's view of one model.
#[derive(Debug, Clone)]
struct Model {
    /// What `/health` shows.
    state: ModelState,
    /// Holds GPU memory: from its wake (or adoption) until its sleep
    /// succeeded or `alive` said it is down.
    loaded: bool,
    /// In the routing snapshot.
    published: bool,
    /// Published but not admitting (a drain).
    gated: bool,
    /// Gated and nothing in flight.
    drained: bool,
    /// When it was last published.
    published_at: Time,
    /// The hook running, and why.
    hook: Option<(HookKind, Purpose)>,
    /// Queued requests: ticket to arrival.
    queue: BTreeMap<Ticket, Time>,
    /// Requests get 503 until then.
    backoff_until: Option<Time>,
    /// The next backoff's length.
    backoff_next: Duration,
    /// When the periodic `alive` check is due.
    alive_due: Option<Time>,
    /// When its idle time is probed next.
    idle_due: Option<Time>,
    /// A probe is out.
    probing: bool,
    /// A request saw its backend refuse: a verdict is owed.
    suspect: bool,
    /// Its last sleep failed while it was up: not put to sleep again on
    /// its own (a removed model), only as a switch's victim.
    stuck: bool,
    /// Why its last sleep failed.
    sleep_failure: String,
    /// Requests it completed and their total duration.
    served: Served,
    /// Requests in flight when last sampled.
    in_flight: usize,
    /// `served.completed` when it was last published: its recent demand.
    completed_at_publish: u64,
    /// The most requests seen in flight at once.
    max_in_flight: usize,
    /// When a request last completed (as sampled).
    last_done: Option<Time>,
    /// Completions sampled in the last `policy::RECENT`: (when, how many).
    done_at: VecDeque<(Time, usize)>,
    /// When queued requests were admitted to it, in the last
    /// `policy::RECENT`: what of `done_at` was backlog, not new demand.
    admitted_at: VecDeque<Time>,
    /// When a request last queued for it.
    last_asked: Option<Time>,
    /// Its wait bound was found infeasible (reported once).
    infeasible: bool,
}

/// What a model's completed requests took, cumulative.
#[derive(Debug, Clone, Copy, Default)]
struct Served {
    completed: u64,
    busy: Duration,
}

impl Served {
    /// Mean time per request, once one completed.
    fn mean(self) -> Option<Duration> {
        let n = u32::try_from(self.completed).unwrap_or(u32::MAX);
        (n > 0).then(|| self.busy / n)
    }
}

impl Model {
    fn new() -> Model {
        Model {
            state: ModelState::Asleep,
            loaded: false,
            published: false,
            gated: false,
            drained: false,
            published_at: Time::ZERO,
            hook: None,
            queue: BTreeMap::new(),
            backoff_until: None,
            backoff_next: BACKOFF_START,
            alive_due: None,
            idle_due: None,
            probing: false,
            suspect: false,
            stuck: false,
            sleep_failure: String::new(),
            served: Served::default(),
            in_flight: 0,
            completed_at_publish: 0,
            max_in_flight: 0,
            last_done: None,
            done_at: VecDeque::new(),
            admitted_at: VecDeque::new(),
            last_asked: None,
            infeasible: false,
        }
    }

    /// A new sample of what it served.
    fn sampled(&mut self, served: Served, in_flight: usize, now: Time) {
        if served.completed > self.served.completed {
            self.last_done = Some(now);
            let done = usize::try_from(served.completed - self.served.completed).unwrap_or(usize::MAX);
            self.done_at.push_back((now, done));
        }
        while self.done_at.front().is_some_and(|&(at, _)| now.since(at) > policy::RECENT) {
            self.done_at.pop_front();
        }
        while self.admitted_at.front().is_some_and(|&at| now.since(at) > policy::RECENT) {
            self.admitted_at.pop_front();
        }
        self.served = served;
        self.in_flight = in_flight;
        self.max_in_flight = self.max_in_flight.max(in_flight);
    }

    /// Published and admitting requests.
    fn serving(&self) -> bool {
        self.published && !self.gated
    }

    fn oldest(&self) -> Option<Time> {
        self.queue.values().min().copied()
    }

    fn in_backoff(&self, now: Time) -> bool {
        self.backoff_until.is_some_and(|until| until > now)
    }
}

/// Why a switch (or a sleep with no target) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Requests wait for the target.
    Miss,
    /// The victim was idle.
    Idle,
    /// An operator's command.
    Operator(u64),
    /// An operator's command already answered (at shutdown).
    Answered,
    /// A reload removed the victim.
    Removed,
    /// A reload shrank the budget below what is loaded.
    OverBudget,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Miss => "switch",
            Why::Idle => "idle",
            Why::Operator(_) | Why::Answered => "asked by an operator",
            Why::Removed => "removed from the config",
            Why::OverBudget => "over the capacity after a reload",
        }
    }
}

/// Where a switch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Victims gated, waiting for their in-flight requests.
    Draining {
        /// When what is still in flight is cut.
        deadline: Option<Time>,
    },
    /// Victims' sleep hooks running.
    Sleeping,
    /// The target's wake hook running.
    Waking,
    /// The target's `alive` confirming the wake.
    Confirming {
        /// The wake timeout's end.
        deadline: Time,
        /// The pause before the next try.
        pause: Duration,
        /// When the next try is due (`None`: one is running).
        retry_at: Option<Time>,
    },
}

/// The switch in progress.
#[derive(Debug, Clone)]
struct Switch {
    why: Why,
    target: Option<ModelId>,
    victims: Vec<ModelId>,
    stage: Stage,
    stage_started: Time,
    record: SwitchRecord,
}

/// The switch protocol's state. See the module docs.
pub struct Machine {
    settings: Settings,
    models: Vec<Model>,
    switch: Option<Switch>,
    commands: VecDeque<Command>,
    /// Start-up `alive` results still missing (`None`: start-up is over).
    starting: Option<Vec<Option<HookResult>>>,
    /// The configured models, in config order, when start-up began.
    start_order: Vec<ModelId>,
    shutting_down: bool,
    policy: Box<dyn SwitchPolicy>,
    /// Last measured cost per (from, to).
    costs: BTreeMap<(Option<ModelId>, ModelId), Duration>,
    /// A switch held back by min_active may go ahead then.
    held_until: Option<Time>,
    /// The policy's last "not now" stands until then: events that cannot
    /// make a switch more urgent (another waiter for a model that already
    /// waits, a waiter leaving, a sample) do not ask it again before. With
    /// thousands waiting, asking on every arrival (each ask reads every
    /// waiter) would be quadratic; the policy looks again at its recheck.
    policy_hold: Option<Time>,
    /// The time of the event being handled.
    last_now: Time,
    out: Vec<Action>,
}

impl Machine {
    /// A machine for `settings`, choosing targets with `policy`. Nothing
    /// happens until [`Event::Start`].
    pub fn new(settings: Settings, policy: Box<dyn SwitchPolicy>) -> Machine {
        let models = settings.models.iter().map(|_| Model::new()).collect();
        Machine {
            settings,
            models,
            switch: None,
            commands: VecDeque::new(),
            starting: None,
            start_order: Vec::new(),
            shutting_down: false,
            policy,
            costs: BTreeMap::new(),
            held_until: None,
            policy_hold: None,
            last_now: Time::ZERO,
            out: Vec::new(),
        }
    }

    /// Handles `event`, which happened at `now`; returns what to do, in
    /// order.
    pub fn handle(&mut self, event: Event, now: Time) -> Vec<Action> {
        self.on(event, now);
        self.advance(now);
        std::mem::take(&mut self.out)
    }

    /// When the machine wants [`Event::Timer`] if nothing happens before.
    pub fn deadline(&self) -> Option<Time> {
        let timers = self.models.iter().filter(|m| m.published).flat_map(|m| [m.alive_due, m.idle_due]);
        let backoffs = self.models.iter().filter(|m| !m.queue.is_empty()).map(|m| m.backoff_until);
        let switch = self.switch.as_ref().and_then(|s| match s.stage {
            Stage::Draining { deadline } => deadline,
            Stage::Confirming { retry_at, .. } => retry_at,
            _ => None,
        });
        // Only times still to come: one that passed and was not acted on
        // waits for an event (a drain holding an alive check, a backoff
        // that ended during another switch, a min_active hold during an
        // idle sleep); handing it out again makes the executor's timer
        // fire at once, forever. Found by
        // the_deadline_is_never_in_the_past_*.
        timers.chain(backoffs).chain([switch, self.held_until]).flatten().filter(|&t| t > self.last_now).min()
    }

    /// The measured cost of each (from, to) switch so far.
    pub fn costs(&self) -> &BTreeMap<(Option<ModelId>, ModelId), Duration> {
        &self.costs
    }

    /// True while `model` holds GPU memory (for tests and the simulator).
    pub fn is_loaded(&self, model: ModelId) -> bool {
        self.models.get(model).is_some_and(|m| m.loaded)
    }

    /// `model`'s state as the machine sees it.
    pub fn state(&self, model: ModelId) -> Option<ModelState> {
        self.models.get(model).map(|m| m.state)
    }

    /// The scheduler's estimates per slot: mean service time, concurrency
    /// seen.
    pub fn estimates(&self) -> Vec<(Option<Duration>, usize)> {
        self.models.iter().map(|m| (m.served.mean(), m.max_in_flight.max(1))).collect()
    }

    /// True from [`Event::Start`] until every model's start-up `alive` has
    /// answered and the running models were adopted.
    pub fn is_starting(&self) -> bool {
        self.starting.is_some()
    }

    /// How many model slots the machine knows (a reload adds some).
    pub fn slots(&self) -> usize {
        self.models.len()
    }

    /// True while a switch (or a sleep) is under way.
    pub fn is_switching(&self) -> bool {
        self.switch.is_some()
    }

    /// True while a hook runs.
    pub fn hooks_running(&self) -> bool {
        self.models.iter().any(|m| m.hook.is_some())
    }

    fn on(&mut self, event: Event, now: Time) {
        if !self.keeps_policy_hold(&event) {
            self.policy_hold = None;
        }
        match event {
            Event::Start => self.start(),
            Event::Queued { model, ticket, at } => {
                if let Some(m) = self.models.get_mut(model) {
                    m.queue.insert(ticket, at);
                    m.last_asked = Some(now);
                }
            }
            Event::Left { model, ticket } => {
                if let Some(m) = self.models.get_mut(model) {
                    // Leaving the queue of a serving model is (almost
                    // always) admission: count it in flight until the next
                    // sample says otherwise, so that the policy does not
                    // see a model that has just taken its queue as idle.
                    if m.queue.remove(&ticket).is_some() && m.serving() {
                        m.in_flight += 1;
                        m.admitted_at.push_back(now);
                    }
                }
            }
            Event::Gated { model, in_flight } => self.on_gated(model, in_flight, now),
            Event::Drained { model } => self.on_drained(model),
            Event::HookDone { model, kind, result, detail, took } => {
                self.on_hook_done(model, kind, result, detail, took, now)
            }
            Event::Idle { model, idle } => self.on_idle(model, idle, now),
            Event::Refused { model } => self.on_refused(model),
            Event::Command(Command::Sleep { id, .. }) if self.shutting_down => {
                self.emit(Action::CommandDone { id, result: Err("shutting down".to_owned()) })
            }
            Event::Command(command) => self.commands.push_back(command),
            Event::Reload(settings) => self.reload(settings),
            Event::Shutdown => self.shut_down(),
            Event::Served { model, completed, busy, in_flight } => {
                if let Some(m) = self.models.get_mut(model) {
                    m.sampled(Served { completed, busy }, in_flight, now);
                }
            }
            Event::Timer => {}
        }
    }

    fn emit(&mut self, action: Action) {
        self.out.push(action);
    }

    fn report(&mut self, report: Report) {
        self.out.push(Action::Report(report));
    }

    fn set_state(&mut self, model: ModelId, state: ModelState) {
        if let Some(m) = self.models.get_mut(model) {
            if m.state != state {
                m.state = state;
                self.out.push(Action::SetState(model, state));
            }
        }
    }

    fn run_hook(&mut self, model: ModelId, kind: HookKind, purpose: Purpose) {
        if self.shutting_down {
            // Nothing new starts: a hook spawned now would get a fresh
            // shutdown grace of its own.
            return;
        }
        if let Some(m) = self.models.get_mut(model) {
            m.hook = Some((kind, purpose));
            self.out.push(Action::RunHook(model, kind));
        }
    }

    /// Publishes `model` as a fresh incarnation.
    fn publish(&mut self, model: ModelId, now: Time) {
        let settings = self.settings.models.get(model).copied();
        let Some(m) = self.models.get_mut(model) else { return };
        m.loaded = true;
        m.published = true;
        m.gated = false;
        m.drained = false;
        m.published_at = now;
        m.backoff_until = None;
        m.backoff_next = BACKOFF_START;
        m.stuck = false;
        m.completed_at_publish = m.served.completed;
        m.alive_due = settings.and_then(|s| s.alive_interval).map(|i| now + i);
        m.idle_due = settings.and_then(|s| s.idle_sleep).map(|i| now + i);
        m.probing = false;
        self.emit(Action::Publish(model));
        self.set_state(model, ModelState::Active);
    }

    /// Takes `model` out of the routing snapshot (gating it first, so a
    /// request holding an old snapshot is turned away too).
    fn unpublish(&mut self, model: ModelId) {
        let Some(m) = self.models.get_mut(model) else { return };
        if !m.published {
            return;
        }
        let gate = !m.gated;
        m.published = false;
        m.gated = false;
        m.drained = false;
        m.alive_due = None;
        m.idle_due = None;
        if gate {
            self.emit(Action::Gate(model));
        }
        self.emit(Action::Unpublish(model));
    }

    /// A model's backend is gone (its `alive` exited non-zero): forget it.
    fn forget_down(&mut self, model: ModelId, reason: String) {
        self.unpublish(model);
        if let Some(m) = self.models.get_mut(model) {
            m.loaded = false;
        }
        self.set_state(model, ModelState::Failed);
        self.report(Report::Failed { model, reason });
    }

    fn policy_context_views(&self, now: Time) -> Vec<ModelView> {
        self.models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let configured = self.settings.models.get(i).is_some_and(|s| s.configured);
                let settings = self.settings.models.get(i);
                ModelView {
                    // A removed model's waiters are answered 404, never served.
                    waiting: if configured { m.queue.len() } else { 0 },
                    oldest_wait: m.oldest(),
                    in_backoff: m.in_backoff(now),
                    serving: m.serving(),
                    service_time: m.served.mean(),
                    in_flight: if m.published { m.in_flight } else { 0 },
                    concurrency: m.max_in_flight.max(1),
                    last_done: m.last_done,
                    recent_done: m.done_at.iter().map(|&(_, n)| n).sum(),
                    recent_backlog: m.admitted_at.len(),
                    weight: settings.map_or(1.0, |s| s.weight),
                    max_wait: settings.map_or(DEFAULT_MAX_WAIT, |s| s.max_wait),
                }
            })
            .collect()
    }

    /// True if `event` leaves the policy's "not now" standing (see
    /// `policy_hold`).
    fn keeps_policy_hold(&self, event: &Event) -> bool {
        match event {
            Event::Queued { model, .. } => self.models.get(*model).is_some_and(|m| !m.queue.is_empty()),
            Event::Left { .. } | Event::Served { .. } => true,
            _ => false,
        }
    }

    /// The policy's next target, and whether a wait bound is at stake; a
    /// "not now" may come with a time to ask again (`held_until`).
    fn choose(&mut self, now: Time) -> Option<(ModelId, &'static str, bool)> {
        if self.models.iter().all(|m| m.queue.is_empty()) {
            return None;
        }
        if let Some(until) = self.policy_hold.filter(|&until| until > now) {
            self.held_until = Some(until);
            return None;
        }
        let views = self.policy_context_views(now);
        let arrivals: Vec<Vec<Time>> = self.models.iter().map(|m| m.queue.values().copied().collect()).collect();
        let active = self.models.iter().position(Model::serving).map(|i| (i, self.models[i].published_at));
        let ctx = PolicyContext {
            now,
            active,
            models: &views,
            arrivals: &arrivals,
            switch_costs: &self.costs,
            request_timeout: self.settings.request_timeout,
        };
        // A policy's choice is checked: only a candidate is ever a target.
        let choice = self.policy.choose(&ctx).filter(|(t, _)| ctx.candidates().any(|(c, _)| c == *t));
        if choice.is_none() {
            self.held_until = self.policy.recheck_at().filter(|&at| at > now);
            self.policy_hold = self.held_until;
        }
        choice.map(|(t, reason)| (t, reason, self.policy.preempts()))
    }
}
