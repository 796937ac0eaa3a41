//! A script harness: a [`Machine`] with the FIFO policy, a virtual clock
//! and a log of every action with the virtual time it was issued, so tests
//! can assert *when* and *in which order* things happen, not only where
//! they end.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::machine::policy::Fifo;
use crate::machine::{
    Action, Command, Event, HookKind, HookResult, Machine, ModelId, ModelSettings, ModelState, Report, Settings,
    Ticket, Time,
};

pub const A: ModelId = 0;
pub const B: ModelId = 1;
pub const C: ModelId = 2;

/// `secs` seconds of virtual time (rounded to the microsecond).
pub fn time(secs: f64) -> Time {
    Time::from_micros((secs * 1e6).round() as u64)
}

/// `secs` seconds.
pub fn secs(secs: f64) -> Duration {
    Duration::from_micros((secs * 1e6).round() as u64)
}

/// Settings for `n` models named "a", "b", ...: wake timeout 30 s, drain
/// before switch, no drain timeout, no min_active, no idle sleep, no
/// periodic alive check.
pub struct Setup(pub Settings);

impl Setup {
    pub fn new(n: usize) -> Setup {
        let model = ModelSettings {
            configured: true,
            size: 1.0,
            pinned: false,
            weight: 1.0,
            max_wait: crate::machine::DEFAULT_MAX_WAIT,
            wake_timeout: secs(30.0),
            idle_sleep: None,
            alive_interval: None,
        };
        Setup(Settings {
            models: vec![model; n],
            names: (0..n).map(|i| char::from(b'a' + i as u8).to_string()).collect(),
            order: (0..n).collect(),
            min_active: Duration::ZERO,
            drain_before_switch: true,
            drain_timeout: None,
            continue_on_sleep_failure: false,
            preload: None,
            capacity: None,
            request_timeout: None,
        })
    }

    /// A capacity budget, with these sizes (by model).
    pub fn capacity(mut self, capacity: f64, sizes: &[f64]) -> Setup {
        self.0.capacity = Some(capacity);
        for (m, &size) in sizes.iter().enumerate() {
            self.0.models[m].size = size;
        }
        self
    }

    pub fn pinned(mut self, model: ModelId) -> Setup {
        self.0.models[model].pinned = true;
        self
    }

    pub fn min_active(mut self, s: f64) -> Setup {
        self.0.min_active = secs(s);
        self
    }

    pub fn drain_timeout(mut self, s: f64) -> Setup {
        self.0.drain_timeout = Some(secs(s));
        self
    }

    /// `drain_before_switch: false`.
    pub fn no_drain(mut self) -> Setup {
        self.0.drain_before_switch = false;
        self
    }

    /// `on_sleep_failure: continue`.
    pub fn continue_on_sleep_failure(mut self) -> Setup {
        self.0.continue_on_sleep_failure = true;
        self
    }

    pub fn idle_sleep(mut self, model: ModelId, s: f64) -> Setup {
        self.0.models[model].idle_sleep = Some(secs(s));
        self
    }

    pub fn alive_interval(mut self, model: ModelId, s: f64) -> Setup {
        self.0.models[model].alive_interval = Some(secs(s));
        self
    }

    pub fn wake_timeout(mut self, model: ModelId, s: f64) -> Setup {
        self.0.models[model].wake_timeout = secs(s);
        self
    }

    pub fn build(self) -> H {
        self.build_with(Box::new(Fifo))
    }

    /// The harness with `policy` choosing targets.
    pub fn build_with(self, policy: Box<dyn crate::machine::SwitchPolicy>) -> H {
        H {
            m: Machine::new(self.0.clone(), policy),
            settings: self.0,
            now: Time::ZERO,
            next_ticket: 0,
            tickets: BTreeMap::new(),
            log: Vec::new(),
            last: Vec::new(),
        }
    }
}

/// The harness: the machine, its virtual clock and what it said.
pub struct H {
    pub m: Machine,
    pub settings: Settings,
    pub now: Time,
    next_ticket: Ticket,
    tickets: BTreeMap<Ticket, ModelId>,
    /// Every action, with the virtual time it was issued, in order.
    pub log: Vec<(Time, Action)>,
    /// The actions of the last event.
    pub last: Vec<Action>,
}

impl H {
    /// Moves the virtual clock to `secs` (never backwards).
    pub fn at(&mut self, secs: f64) -> &mut H {
        let t = time(secs);
        assert!(t >= self.now, "time goes backwards: {t} < {}", self.now);
        self.now = t;
        self
    }

    /// Sends `event` at the current virtual time; returns its actions.
    pub fn event(&mut self, event: Event) -> Vec<Action> {
        let actions = self.m.handle(event, self.now);
        for a in &actions {
            self.log.push((self.now, a.clone()));
        }
        self.last = actions.clone();
        actions
    }

    /// Start-up with every model's `alive` answered: `up` are up, the
    /// rest down.
    pub fn start(&mut self, up: &[ModelId]) -> Vec<Action> {
        self.event(Event::Start);
        let order = self.settings.order.clone();
        let mut all = Vec::new();
        for m in order {
            let result = if up.contains(&m) { HookResult::Success } else { HookResult::Failed };
            all.extend(self.hook_done(m, HookKind::Alive, result, secs(0.1)));
        }
        all
    }

    /// Start-up that adopts `model` (the others are down).
    pub fn adopt(&mut self, model: ModelId) -> &mut H {
        self.start(&[model]);
        assert!(self.issued(&Action::Publish(model)), "{model} was not adopted");
        self
    }

    /// A request for `model` queues now; returns its ticket.
    pub fn queue(&mut self, model: ModelId) -> Ticket {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.insert(ticket, model);
        self.event(Event::Queued { model, ticket, at: self.now });
        ticket
    }

    /// The request `ticket` leaves its queue now.
    pub fn leave(&mut self, ticket: Ticket) -> Vec<Action> {
        let model = self.tickets.remove(&ticket).expect("a ticket of this harness");
        self.event(Event::Left { model, ticket })
    }

    /// Every request still queued for `model` leaves (admitted).
    pub fn admit_all(&mut self, model: ModelId) {
        let tickets: Vec<Ticket> = self.tickets.iter().filter(|(_, &m)| m == model).map(|(&t, _)| t).collect();
        for t in tickets {
            self.leave(t);
        }
    }

    pub fn hook_done(&mut self, model: ModelId, kind: HookKind, result: HookResult, took: Duration) -> Vec<Action> {
        self.event(Event::hook(model, kind, result, took))
    }

    pub fn gated(&mut self, model: ModelId, in_flight: usize) -> Vec<Action> {
        self.event(Event::Gated { model, in_flight })
    }

    pub fn drained(&mut self, model: ModelId) -> Vec<Action> {
        self.event(Event::Drained { model })
    }

    pub fn idle(&mut self, model: ModelId, idle: Option<f64>) -> Vec<Action> {
        self.event(Event::Idle { model, idle: idle.map(secs) })
    }

    pub fn sleep_command(&mut self, id: u64, model: Option<ModelId>) -> Vec<Action> {
        self.event(Event::Command(Command::Sleep { id, model, all: false }))
    }

    /// Moves the clock to the machine's deadline and sends the timer.
    pub fn fire_timer(&mut self) -> Vec<Action> {
        let at = self.m.deadline().expect("the machine has a deadline");
        assert!(at > self.now, "deadline {at} is not after now ({}): the executor would spin", self.now);
        self.now = at;
        self.event(Event::Timer)
    }

    /// The last event's actions without reports and state changes.
    pub fn effects(&self) -> Vec<Action> {
        effects(&self.last)
    }

    /// True if `action` was ever issued.
    pub fn issued(&self, action: &Action) -> bool {
        self.log.iter().any(|(_, a)| a == action)
    }

    /// How many times `action` was issued.
    pub fn count(&self, action: &Action) -> usize {
        self.log.iter().filter(|(_, a)| a == action).count()
    }

    /// The position in the log of the first `action`.
    pub fn index(&self, action: &Action) -> usize {
        self.log.iter().position(|(_, a)| a == action).unwrap_or_else(|| panic!("{action:?} never issued"))
    }

    /// The virtual time `action` was first issued.
    pub fn when(&self, action: &Action) -> Time {
        self.log[self.index(action)].0
    }

    /// Every time `action` was issued.
    pub fn times(&self, action: &Action) -> Vec<Time> {
        self.log.iter().filter(|(_, a)| a == action).map(|(t, _)| *t).collect()
    }

    /// Asserts `first` was issued, and before `then` if that was.
    pub fn assert_before(&self, first: &Action, then: &Action) {
        let i = self.index(first);
        if let Some(j) = self.log.iter().position(|(_, a)| a == then) {
            assert!(i < j, "{then:?} (#{j}) was issued before {first:?} (#{i})");
        }
    }

    /// The first `Fail` for `model`: its backoff's end.
    pub fn fail_until(&self, model: ModelId) -> Vec<Time> {
        self.log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Fail { model: m, until, .. } if *m == model => Some(*until),
                _ => None,
            })
            .collect()
    }

    /// The records of every finished switch, in order.
    pub fn switches(&self) -> Vec<crate::machine::SwitchRecord> {
        self.log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::SwitchDone(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn reported(&self, report: &Report) -> bool {
        self.issued(&Action::Report(report.clone()))
    }

    pub fn state(&self, model: ModelId) -> ModelState {
        self.m.state(model).expect("a model")
    }

    /// Runs a whole switch from the serving `from` (if any) to `to`, whose
    /// request queued now: drain (nothing in flight), sleep, wake, alive;
    /// every hook takes 1 s. Returns the waiter's ticket.
    pub fn switch_to(&mut self, from: Option<ModelId>, to: ModelId) -> Ticket {
        let ticket = self.queue(to);
        if let Some(from) = from {
            assert_eq!(self.effects(), [Action::Gate(from)]);
            self.gated(from, 0);
            assert_eq!(self.effects(), [Action::Unpublish(from), Action::RunHook(from, HookKind::Sleep)]);
            self.now = self.now + secs(1.0);
            self.hook_done(from, HookKind::Sleep, HookResult::Success, secs(1.0));
        }
        assert_eq!(self.effects(), [Action::RunHook(to, HookKind::Wake)]);
        self.now = self.now + secs(1.0);
        self.hook_done(to, HookKind::Wake, HookResult::Success, secs(1.0));
        assert_eq!(self.effects(), [Action::RunHook(to, HookKind::Alive)]);
        self.hook_done(to, HookKind::Alive, HookResult::Success, Duration::ZERO);
        assert!(self.last.contains(&Action::Publish(to)), "{to} not published: {:?}", self.last);
        ticket
    }
}

/// `actions` without reports, state changes and switch records.
pub fn effects(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| !matches!(a, Action::Report(_) | Action::SetState(..) | Action::SwitchDone(_)))
        .cloned()
        .collect()
}
