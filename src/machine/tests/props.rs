//! Seeded property tests: random event sequences against the machine, the
//! protocol's invariants checked after every event, then a "settle" phase
//! in which everything succeeds and every queue must empty.
//!
//! A failing seed is replayed with its event trace printed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use super::script::Setup;
use crate::machine::policy::Fifo;
use crate::machine::{
    Action, Command, Event, HookKind, HookResult, Machine, ModelId, ModelState, Report, Settings, Ticket, Time,
};

/// xorshift64*: tiny, seeded, good enough to explore.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize])
    }

    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

/// Plays the executor: answers what the machine asks, tracks what it was
/// told, and checks the invariants after every event.
struct Driver {
    m: Machine,
    rng: Rng,
    settings: Settings,
    n: usize,
    now: Time,
    /// Print every event and action (a failing seed's replay).
    verbose: bool,
    /// Events owed at once (the executor answers Gate and ProbeIdle
    /// synchronously).
    pending: VecDeque<Event>,
    /// Running hooks: kind and start.
    hooks: BTreeMap<ModelId, (HookKind, Time)>,
    /// Gated models with requests in flight: a Drained is owed.
    drains: BTreeSet<ModelId>,
    published: Vec<bool>,
    gated: Vec<bool>,
    /// Queued tickets per model, as the executor's queues hold them.
    queues: Vec<BTreeSet<Ticket>>,
    /// Tickets answered 503 by a Fail: they leave.
    failed: BTreeSet<(ModelId, Ticket)>,
    next_ticket: Ticket,
    /// Requests each model completed, as fed in `Event::Served`.
    completed: Vec<u64>,
    /// Commands not yet answered.
    commands: BTreeSet<u64>,
    next_command: u64,
    /// Refused connections waiting for a verdict, per model.
    verdicts_owed: Vec<usize>,
    /// Start-up is over (adoption decided).
    started: bool,
    /// How often each kind of interesting action was seen (coverage).
    seen: BTreeMap<&'static str, usize>,
}

macro_rules! check {
    ($d:expr, $cond:expr, $($arg:tt)*) => {
        if !$cond {
            panic!("invariant broken at {}: {}", $d.now, format!($($arg)*));
        }
    };
}

impl Driver {
    fn new(seed: u64, verbose: bool) -> Driver {
        let mut rng = Rng::new(seed);
        let n = 2 + rng.below(3) as usize;
        let mut settings = Setup::new(n).0;
        randomize(&mut settings, &mut rng);
        // Half the seeds run the cost-aware scheduler, half FIFO.
        let policy: Box<dyn crate::machine::SwitchPolicy> =
            if rng.chance(50) { Box::new(crate::machine::cost_aware::CostAware::default()) } else { Box::new(Fifo) };
        Driver {
            m: Machine::new(settings.clone(), policy),
            rng,
            settings,
            n,
            now: Time::ZERO,
            verbose,
            pending: VecDeque::new(),
            hooks: BTreeMap::new(),
            drains: BTreeSet::new(),
            published: vec![false; n],
            gated: vec![false; n],
            queues: vec![BTreeSet::new(); n],
            failed: BTreeSet::new(),
            next_ticket: 0,
            completed: vec![0; n],
            commands: BTreeSet::new(),
            next_command: 0,
            verdicts_owed: vec![0; n],
            started: false,
            seen: BTreeMap::new(),
        }
    }

    fn loaded(&self) -> BTreeSet<ModelId> {
        (0..self.n).filter(|&i| self.m.is_loaded(i)).collect()
    }

    /// What `model` takes of the budget (1 of 1 without a capacity).
    fn size(&self, model: ModelId) -> f64 {
        self.settings.capacity.map_or(1.0, |_| self.settings.models[model].size)
    }

    fn capacity(&self) -> f64 {
        self.settings.capacity.unwrap_or(1.0)
    }

    /// The sizes of the loaded models.
    fn used(&self) -> f64 {
        self.loaded().iter().map(|&m| self.size(m)).sum()
    }

    /// Hands `event` to the machine, then the answers it owes at once.
    fn feed(&mut self, event: Event) {
        self.pending.push_back(event);
        while let Some(event) = self.pending.pop_front() {
            self.step(event);
        }
    }

    fn step(&mut self, event: Event) {
        if self.verbose {
            eprintln!("{} {event:?}", self.now);
        }
        let before = self.loaded();
        let sleeping_before: BTreeSet<ModelId> =
            self.hooks.iter().filter(|(_, (k, _))| *k == HookKind::Sleep).map(|(&m, _)| m).collect();
        let actions = self.m.handle(event, self.now);
        let mut start_up_ended = false;
        for action in actions {
            if self.verbose {
                eprintln!("    -> {action:?}");
            }
            start_up_ended |= matches!(action, Action::Report(Report::Adopted(_) | Report::NoneAdopted));
            self.apply(action, &sleeping_before);
        }
        if start_up_ended {
            self.started = true;
        }
        // (a) Never over the budget (without one: never two models loaded
        // at once): over it only at start-up's end (leftovers being put to
        // sleep), and then the loaded set only shrinks.
        let loaded = self.loaded();
        let within = self.used() <= self.capacity() + 1e-9;
        check!(
            self,
            within || start_up_ended || loaded.is_subset(&before),
            "models {loaded:?} loaded at once, {} of {} (before: {before:?})",
            self.used(),
            self.capacity()
        );
        // No busy loop: the deadline is still to come.
        let deadline = self.m.deadline();
        check!(self, deadline.is_none_or(|d| d > self.now), "deadline {deadline:?} is not after now");
        // The machine's states agree with what it told the executor.
        for i in 0..self.n {
            let serving = self.published[i] && !self.gated[i];
            let active = self.m.state(i) == Some(ModelState::Active);
            check!(self, serving == active, "model {i}: serving {serving} but state {:?}", self.m.state(i));
        }
    }

    fn apply(&mut self, action: Action, sleeping_before: &BTreeSet<ModelId>) {
        let kind = match &action {
            Action::Publish(x) if self.gated[*x] => Some("publish of a gated model"),
            Action::Publish(_) => Some("publish"),
            Action::Ungate(_) => Some("ungate"),
            Action::Cut(_) => Some("cut"),
            Action::RunHook(_, HookKind::Wake) => Some("wake"),
            Action::Fail { .. } => Some("fail"),
            Action::CommandDone { result: Ok(slept), .. } if !slept.is_empty() => Some("command slept a model"),
            Action::CommandDone { result: Err(_), .. } => Some("command failed"),
            Action::Report(Report::IdleSleep(_)) => Some("idle sleep"),
            Action::Report(Report::Abandoned { .. }) => Some("abandoned"),
            _ => None,
        };
        if let Some(kind) = kind {
            *self.seen.entry(kind).or_default() += 1;
        }
        match action {
            Action::Gate(x) => {
                let in_flight =
                    if self.published[x] && self.rng.chance(50) { 1 + self.rng.below(3) as usize } else { 0 };
                if self.published[x] {
                    self.gated[x] = true;
                }
                if in_flight > 0 {
                    self.drains.insert(x);
                }
                self.pending.push_back(Event::Gated { model: x, in_flight });
            }
            Action::Ungate(x) => {
                // (c) Only a published, gated incarnation is ungated.
                check!(self, self.published[x] && self.gated[x], "Ungate({x}) of a model not published and gated");
                self.gated[x] = false;
                self.drains.remove(&x);
            }
            Action::Cut(x) => check!(self, self.published[x], "Cut({x}) of an unpublished model"),
            Action::Publish(x) => {
                check!(
                    self,
                    !self.published[x],
                    "Publish({x}) of a model already published (gated: {})",
                    self.gated[x]
                );
                self.published[x] = true;
                self.gated[x] = false;
                self.drains.remove(&x);
            }
            Action::Unpublish(x) => {
                check!(self, self.published[x], "Unpublish({x}) of an unpublished model");
                self.published[x] = false;
                self.gated[x] = false;
                self.drains.remove(&x);
            }
            Action::RunHook(x, kind) => {
                // (d) One hook per model at a time.
                check!(self, !self.hooks.contains_key(&x), "RunHook({x}, {kind}) while {:?} runs", self.hooks[&x]);
                if kind == HookKind::Wake {
                    // (b) A wake starts only when its model fits beside
                    // what is loaded: every victim's sleep has ended.
                    let others: f64 =
                        (0..self.n).filter(|&y| y != x && self.m.is_loaded(y)).map(|y| self.size(y)).sum();
                    let fits = others + self.size(x) <= self.capacity() + 1e-9;
                    check!(self, fits, "RunHook({x}, Wake) with {others} of {} loaded", self.capacity());
                    if self.settings.capacity.is_none() {
                        for y in (0..self.n).filter(|&y| y != x) {
                            let sleeping = sleeping_before.contains(&y)
                                || self.hooks.get(&y).is_some_and(|(k, _)| *k == HookKind::Sleep);
                            check!(self, !sleeping, "RunHook({x}, Wake) while {y}'s sleep hook runs");
                        }
                    }
                }
                self.hooks.insert(x, (kind, self.now));
            }
            Action::ProbeIdle(x) => {
                let idle = if self.rng.chance(30) { None } else { Some(self.rng.millis(200_000)) };
                self.pending.push_back(Event::Idle { model: x, idle });
            }
            Action::Fail { model, until, .. } => {
                check!(self, until > self.now, "a backoff that already ended");
                for &t in &self.queues[model] {
                    self.failed.insert((model, t));
                }
            }
            Action::Verdict(x) => self.verdicts_owed[x] = 0,
            Action::CommandDone { id, .. } => {
                check!(self, self.commands.remove(&id), "CommandDone {id} not owed (answered twice?)");
            }
            Action::SetState(..) | Action::Report(_) | Action::SwitchDone(_) | Action::Preload(_) => {}
        }
    }

    fn leave(&mut self, model: ModelId, ticket: Ticket) {
        self.queues[model].remove(&ticket);
        self.failed.remove(&(model, ticket));
        self.feed(Event::Left { model, ticket });
    }

    fn hook_done(&mut self, model: ModelId, result: HookResult) {
        let (kind, started) = self.hooks.remove(&model).expect("a running hook");
        let took = self.now.since(started);
        self.feed(Event::hook(model, kind, result, took));
    }

    /// The machine's private state, for a failure's message.
    fn machine_state(&self) -> String {
        format!(
            "models: {:#?}\nswitch: {:#?}\nheld_until: {:?}\ncommands: {:?}",
            self.m.models, self.m.switch, self.m.held_until, self.m.commands
        )
    }

    fn tickets_of_serving(&self) -> Vec<(ModelId, Ticket)> {
        (0..self.n)
            .filter(|&i| self.published[i] && !self.gated[i])
            .flat_map(|i| self.queues[i].iter().map(move |&t| (i, t)))
            .collect()
    }

    /// One random event.
    fn random_step(&mut self) {
        let models: Vec<ModelId> = (0..self.n).collect();
        match self.rng.below(30) {
            0..=3 => {
                let model = self.rng.pick(&models).unwrap_or(0);
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.queues[model].insert(ticket);
                // As the executor does: what each model served so far, then
                // the miss (in flight is made up: the scheduler's "busy").
                for m in 0..self.n {
                    self.completed[m] += self.rng.below(3);
                    let in_flight = if self.published[m] { self.rng.below(3) as usize } else { 0 };
                    let served =
                        Event::Served { model: m, completed: self.completed[m], busy: Duration::ZERO, in_flight };
                    self.feed(served);
                }
                self.feed(Event::Queued { model, ticket, at: self.now });
            }
            4..=5 => {
                // A timeout or a disconnect.
                let all: Vec<(ModelId, Ticket)> =
                    (0..self.n).flat_map(|i| self.queues[i].iter().map(move |&t| (i, t))).collect();
                if let Some((m, t)) = self.rng.pick(&all) {
                    self.leave(m, t);
                }
            }
            6..=8 => {
                let admitted = self.tickets_of_serving();
                if let Some((m, t)) = self.rng.pick(&admitted) {
                    self.leave(m, t);
                }
            }
            9..=10 => {
                let failed: Vec<_> = self.failed.iter().copied().collect();
                if let Some((m, t)) = self.rng.pick(&failed) {
                    self.leave(m, t);
                }
            }
            11..=16 => {
                let running: Vec<ModelId> = self.hooks.keys().copied().collect();
                if let Some(model) = self.rng.pick(&running) {
                    let result = match self.rng.below(20) {
                        0..=11 => HookResult::Success,
                        12..=16 => HookResult::Failed,
                        _ => HookResult::Unknown,
                    };
                    self.hook_done(model, result);
                }
            }
            17..=18 => {
                let drains: Vec<ModelId> = self.drains.iter().copied().collect();
                if let Some(model) = self.rng.pick(&drains) {
                    self.drains.remove(&model);
                    self.feed(Event::Drained { model });
                }
            }
            19 => {
                let model = self.rng.pick(&models).unwrap_or(0);
                self.verdicts_owed[model] += 1;
                self.feed(Event::Refused { model });
            }
            20 => {
                let id = self.next_command;
                self.next_command += 1;
                self.commands.insert(id);
                let model = if self.rng.chance(50) { None } else { self.rng.pick(&models) };
                self.feed(Event::Command(Command::Sleep { id, model, all: false }));
            }
            21 => {
                let mut settings = self.settings.clone();
                randomize(&mut settings, &mut self.rng);
                self.settings = settings.clone();
                self.feed(Event::Reload(settings));
            }
            22..=26 => {
                self.now = self.now + self.rng.millis(3_000);
                self.feed(Event::Timer);
            }
            _ => {
                if let Some(at) = self.m.deadline() {
                    self.now = at;
                    self.feed(Event::Timer);
                }
            }
        }
    }

    /// Everything succeeds, drains end, waiters are admitted, timers
    /// fire: returns the steps it took for every queue to empty and every
    /// command and verdict to be answered.
    fn settle(&mut self, max_steps: usize) -> Result<usize, String> {
        for step in 0..max_steps {
            if let Some(&model) = self.hooks.keys().next() {
                self.now = self.now + Duration::from_millis(100);
                self.hook_done(model, HookResult::Success);
            } else if let Some(&model) = self.drains.iter().next() {
                self.drains.remove(&model);
                self.feed(Event::Drained { model });
            } else if let Some(&(m, t)) = self.failed.iter().next().or(self.tickets_of_serving().first()) {
                self.leave(m, t);
            } else if self.queues.iter().all(BTreeSet::is_empty)
                && self.commands.is_empty()
                && self.verdicts_owed.iter().all(|&v| v == 0)
            {
                return Ok(step);
            } else if let Some(at) = self.m.deadline() {
                self.now = at;
                // Everything in flight finished: nothing holds the scheduler.
                for m in 0..self.n {
                    let served =
                        Event::Served { model: m, completed: self.completed[m], busy: Duration::ZERO, in_flight: 0 };
                    self.feed(served);
                }
                self.feed(Event::Timer);
            } else {
                return Err(format!(
                    "stuck: nothing runs, no deadline; queues {:?}, commands {:?}, verdicts owed {:?}\n{}",
                    self.queues,
                    self.commands,
                    self.verdicts_owed,
                    self.machine_state()
                ));
            }
        }
        Err(format!(
            "not settled in {max_steps} steps; queues {:?}, commands {:?}, verdicts owed {:?}, hooks {:?}",
            self.queues, self.commands, self.verdicts_owed, self.hooks
        ))
    }
}

/// Random policy settings and per-model timers (all models kept,
/// `on_sleep_failure` off).
fn randomize(settings: &mut Settings, rng: &mut Rng) {
    settings.min_active = if rng.chance(30) { rng.millis(10_000) } else { Duration::ZERO };
    settings.drain_before_switch = rng.chance(80);
    settings.drain_timeout = rng.chance(50).then(|| rng.millis(5_000) + Duration::from_millis(1));
    if rng.chance(40) {
        // A budget: sizes of 0.5 to 2, a capacity of 2 to 4, at times a
        // pinned model that fits.
        for m in &mut settings.models {
            m.size = 0.5 * (1 + rng.below(4)) as f64;
        }
        settings.capacity = Some((2 + rng.below(3)) as f64);
        if rng.chance(30) {
            settings.models[0].pinned = true;
        }
    }
    for m in &mut settings.models {
        m.wake_timeout = Duration::from_millis(500 + rng.below(5_000));
        m.idle_sleep = rng.chance(30).then(|| rng.millis(60_000) + Duration::from_millis(1));
        m.alive_interval = rng.chance(30).then(|| rng.millis(30_000) + Duration::from_millis(1));
    }
}

/// One seed: start-up, `steps` random events, then the settle phase.
fn run(seed: u64, steps: usize, verbose: bool) -> Driver {
    let mut d = Driver::new(seed, verbose);
    d.feed(Event::Start);
    // Start-up: at most one model up on most seeds, any mix on the rest.
    let any_mix = d.rng.chance(20);
    let mut up_given = false;
    while !d.started {
        let running: Vec<ModelId> = d.hooks.keys().copied().collect();
        let Some(model) = d.rng.pick(&running) else { break };
        let result = match d.rng.below(3) {
            0 if any_mix || !up_given => HookResult::Success,
            1 if any_mix => HookResult::Unknown,
            _ => HookResult::Failed,
        };
        up_given |= result == HookResult::Success;
        d.now = d.now + d.rng.millis(300);
        d.hook_done(model, result);
    }
    assert!(d.started, "start-up never ended");
    for _ in 0..steps {
        d.random_step();
    }
    if let Err(e) = d.settle(2_000) {
        panic!("liveness: {e}");
    }
    d
}

/// Runs `seeds` (`MACHINE_PROP_SEEDS` overrides their number); returns
/// how often each interesting action was seen over all of them.
fn check_seeds(seeds: std::ops::Range<u64>, steps: usize) -> BTreeMap<&'static str, usize> {
    let seeds = match std::env::var("MACHINE_PROP_SEEDS").ok().and_then(|n| n.parse::<u64>().ok()) {
        Some(n) => seeds.start..seeds.start + n,
        None => seeds,
    };
    let mut seen = BTreeMap::new();
    for seed in seeds {
        let outcome = catch_unwind(AssertUnwindSafe(|| run(seed, steps, false)));
        if let Ok(d) = &outcome {
            for (k, n) in &d.seen {
                *seen.entry(*k).or_default() += n;
            }
        }
        if let Err(e) = outcome {
            // Replay it, printing its trace (up to the same panic).
            eprintln!("seed {seed} failed; its trace:");
            let _ = catch_unwind(AssertUnwindSafe(|| run(seed, steps, true)));
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("seed {seed} failed: {why}\n(replay it with `run({seed}, {steps}, true)`)");
        }
    }
    seen
}

#[test]
fn random_sequences_keep_the_protocols_invariants_and_settle() {
    let seen = check_seeds(0..500, 200);
    // The random phase reached every path worth checking.
    for kind in ["publish", "ungate", "cut", "wake", "fail", "command slept a model", "idle sleep", "abandoned"] {
        assert!(seen.get(kind).is_some_and(|&n| n > 0), "no {kind} in any seed: {seen:?}");
    }
    assert_eq!(seen.get("publish of a gated model"), None, "a Publish must follow an Unpublish");
}
