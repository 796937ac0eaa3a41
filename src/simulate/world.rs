//! The simulated world: a discrete-event loop around one [`Machine`].
//!
//! It plays the executor ([`crate::switcher`]) with virtual time: the next
//! thing to happen is the earliest of a request's arrival (the workload is
//! already in order), a timed event in a binary heap (a hook's end, a
//! request's end at its backend, a queued request's timeout; ties broken
//! by a sequence number, so runs are deterministic) and the machine's
//! [`Machine::deadline`] (fired as [`Event::Timer`]). Ties between the
//! three go to the heap, then the timer, then the arrival.
//!
//! Every action is answered as the executor answers it: hooks take the
//! backend's `wake` / `sleep` time (cut at the config's hook timeout,
//! which reads as "unknown"); `alive` takes no time and passes once the
//! backend was woken; `Gate` answers `Gated` with the in-flight count and
//! `Drained` when it reaches 0; `ProbeIdle` answers from the backend.
//! A request whose model is published and not gated is admitted at once;
//! otherwise it queues (`Served` for every model, then `Queued`) and
//! leaves (`Left`) when admitted after a `Publish` or `Ungate`, when it
//! times out, or when a `Fail` answers it. A request arriving during a
//! model's backoff is answered 503 at once, as `queue::admit` does.
//!
//! Nothing here allocates per request on the common path: requests are
//! indices into the workload, their fates live in one preallocated vector.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use super::trace::{Backend, Request};
use crate::clock::Time;
use crate::config::Config;
use crate::machine::{
    Action, Event, HookKind, HookResult, Machine, ModelId, ModelSettings, Settings, SwitchPolicy, SwitchResult, Ticket,
};

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Not arrived yet, or still queued when the simulation ended.
    Waiting,
    /// Admitted: at its backend.
    Running,
    /// Answered in full.
    Done,
    /// Timed out in the queue.
    TimedOut,
    /// Answered 503 (a failed wake, or its backoff).
    Failed,
    /// Cut by a drain timeout.
    Cut,
}

/// One request's record.
#[derive(Debug, Clone, Copy)]
pub struct Track {
    /// What became of it.
    pub fate: Fate,
    /// When it arrived (valid once it did: a follow-up arrives when its
    /// predecessor's end and think time say).
    pub arrived: Time,
    /// When it was admitted (valid once it ran).
    pub admitted: Time,
    /// When it ended (valid once it ended).
    pub finished: Time,
}

/// A run's raw results: per-request tracks and switch counts.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Per request, in workload order.
    pub tracks: Vec<Track>,
    /// Switches that published their target.
    pub switches: u64,
    /// Switches that failed.
    pub failed_switches: u64,
    /// Switches abandoned (nobody waited any more).
    pub abandoned_switches: u64,
    /// Time spent switching: the sum of the switches' measured costs.
    pub switching: Duration,
    /// When the last event happened.
    pub end: Time,
}

/// The machine's settings from `config` (as [`crate::switcher::settings_of`]
/// reads them from the catalog; every slot configured).
pub fn settings(config: &Config) -> Settings {
    let models = config.models.iter().map(|m| ModelSettings::of(m, true)).collect();
    let names = config.models.iter().map(|m| m.name.clone()).collect();
    Settings::of(config, models, names, (0..config.models.len()).collect(), |name| config.model_index(name))
}

/// A timed event in the heap.
#[derive(Debug, Clone, Copy)]
enum Timed {
    /// A hook ends.
    Hook { model: u32, kind: HookKind, result: HookResult, took: Duration },
    /// A request ends at its backend (if the backend's generation still
    /// matches: a cut ends them all).
    Finish { req: u32, generation: u32 },
    /// A queued request gives up.
    Timeout { req: u32 },
    /// A follow-up request arrives.
    Arrive { req: u32 },
}

/// A heap entry, ordered by time then sequence number only.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: Time,
    seq: u64,
    what: Timed,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One simulated backend and what the executor knows of its model.
#[derive(Debug, Clone, Default)]
struct Model {
    sim: Backend,
    sleep_timeout: Duration,
    wake_timeout: Duration,
    /// Its wake hook succeeded and no sleep since: `alive` passes.
    up: bool,
    published: bool,
    gated: bool,
    /// Gated with requests in flight: `Drained` is owed.
    drain_owed: bool,
    /// Requests running at the backend.
    running: Vec<u32>,
    /// Admitted requests waiting at the backend for a free slot.
    backlog: VecDeque<u32>,
    /// Queued tickets (some may have left: their fate says so).
    queue: VecDeque<Ticket>,
    completed: u64,
    busy: Duration,
    /// Nothing in flight since then.
    idle_since: Time,
    backoff_until: Option<Time>,
    /// Bumped by a cut: older `Finish` events are void.
    generation: u32,
}

impl Model {
    fn in_flight(&self) -> usize {
        self.running.len() + self.backlog.len()
    }
}

/// Runs `requests` through a machine with `policy`; see the module docs.
pub fn run(config: &Config, backends: &[Backend], requests: &[Request], policy: Box<dyn SwitchPolicy>) -> Outcome {
    let mut world = World::new(config, backends, requests, policy);
    world.run();
    world.out.end = world.now;
    world.out
}

/// Past the last arrival and with nothing else timed, the machine's own
/// timers are followed this much longer at most (a request nobody serves
/// stays "unserved" rather than looping forever).
const HORIZON: Duration = Duration::from_secs(7 * 86_400);

struct World<'a> {
    machine: Machine,
    now: Time,
    requests: &'a [Request],
    /// The requests that arrive at their own time (not follow-ups), in
    /// order; `next_arrival` indexes it.
    first_arrivals: Vec<u32>,
    next_arrival: usize,
    /// Per request, the follow-up that waits for its end.
    successor: Vec<Option<u32>>,
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    models: Vec<Model>,
    /// Events owed to the machine at once (answers to its actions).
    pending: VecDeque<Event>,
    request_timeout: Option<Duration>,
    /// Tickets above the requests' indices: preloads.
    next_synthetic: Ticket,
    /// Requests queued now.
    queued: usize,
    out: Outcome,
}

impl<'a> World<'a> {
    fn new(config: &Config, backends: &[Backend], requests: &'a [Request], policy: Box<dyn SwitchPolicy>) -> World<'a> {
        let models = config
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| Model {
                sim: backends.get(i).copied().unwrap_or_default(),
                sleep_timeout: m.sleep.timeout,
                wake_timeout: m.wake.timeout,
                ..Model::default()
            })
            .collect();
        let track = Track { fate: Fate::Waiting, arrived: Time::ZERO, admitted: Time::ZERO, finished: Time::ZERO };
        let first_arrivals = (0..requests.len() as u32).filter(|&i| requests[i as usize].follows.is_none()).collect();
        let mut successor = vec![None; requests.len()];
        for (i, r) in requests.iter().enumerate() {
            if let Some(slot) = r.follows.and_then(|f| successor.get_mut(f.prev as usize)) {
                *slot = Some(i as u32);
            }
        }
        World {
            machine: Machine::new(settings(config), policy),
            now: Time::ZERO,
            requests,
            first_arrivals,
            next_arrival: 0,
            successor,
            heap: BinaryHeap::new(),
            seq: 0,
            models,
            pending: VecDeque::new(),
            request_timeout: config.policy.request_timeout,
            next_synthetic: requests.len() as Ticket,
            queued: 0,
            out: Outcome { tracks: vec![track; requests.len()], ..Outcome::default() },
        }
    }

    fn run(&mut self) {
        self.feed(Event::Start);
        let mut horizon = None;
        loop {
            let heap = self.heap.peek().map(|Reverse(e)| e.at);
            let arrival = self.first_arrivals.get(self.next_arrival).map(|&i| self.requests[i as usize].at);
            let timer = self.machine.deadline();
            if heap.is_none() && arrival.is_none() {
                // Only the machine's timers are left: follow them while
                // requests still queue, up to the horizon.
                let end = *horizon.get_or_insert(self.now + HORIZON);
                if self.queued == 0 || timer.is_none_or(|t| t > end) {
                    return;
                }
            }
            let next = [heap, timer, arrival].into_iter().flatten().min();
            let Some(at) = next else { return };
            self.now = self.now.max(at);
            if heap == Some(at) {
                if let Some(Reverse(entry)) = self.heap.pop() {
                    self.timed(entry.what);
                }
            } else if timer == Some(at) {
                self.sample();
                self.feed(Event::Timer);
            } else {
                let req = self.first_arrivals[self.next_arrival];
                self.next_arrival += 1;
                self.arrive(req);
            }
        }
    }

    fn schedule(&mut self, after: Duration, what: Timed) {
        self.seq += 1;
        self.heap.push(Reverse(Entry { at: self.now + after, seq: self.seq, what }));
    }

    /// Hands `event` to the machine and carries out its actions, then the
    /// answers they owe, until there are none.
    fn feed(&mut self, event: Event) {
        self.pending.push_back(event);
        while let Some(event) = self.pending.pop_front() {
            for action in self.machine.handle(event, self.now) {
                self.execute(action);
            }
        }
    }

    fn timed(&mut self, what: Timed) {
        match what {
            Timed::Hook { model, kind, result, took } => self.hook_done(model as ModelId, kind, result, took),
            Timed::Finish { req, generation } => self.finish(req, generation),
            Timed::Arrive { req } => self.arrive(req),
            Timed::Timeout { req } => {
                if self.out.tracks[req as usize].fate == Fate::Waiting {
                    self.end(req, Fate::TimedOut);
                    self.queued -= 1;
                    let model = self.requests[req as usize].model as ModelId;
                    self.feed(Event::Left { model, ticket: Ticket::from(req) });
                }
            }
        }
    }

    fn end(&mut self, req: u32, fate: Fate) {
        let t = &mut self.out.tracks[req as usize];
        t.fate = fate;
        t.finished = self.now;
        if let Some(next) = self.successor[req as usize] {
            if let Some(follow) = self.requests[next as usize].follows {
                self.schedule(follow.think, Timed::Arrive { req: next });
            }
        }
    }

    fn arrive(&mut self, req: u32) {
        let r = self.requests[req as usize];
        self.out.tracks[req as usize].arrived = self.now;
        let model = r.model as ModelId;
        let m = &self.models[model];
        if m.published && !m.gated {
            return self.admit(req);
        }
        if m.backoff_until.is_some_and(|until| until > self.now) {
            return self.end(req, Fate::Failed);
        }
        self.models[model].queue.push_back(Ticket::from(req));
        self.queued += 1;
        if let Some(timeout) = r.timeout.or(self.request_timeout) {
            self.schedule(timeout, Timed::Timeout { req });
        }
        self.sample();
        self.feed(Event::Queued { model, ticket: Ticket::from(req), at: self.now });
    }

    /// What each model served so far, as the executor samples it before a
    /// miss and before a timer.
    fn sample(&mut self) {
        for i in 0..self.models.len() {
            let m = &self.models[i];
            let (completed, busy, in_flight) = (m.completed, m.busy, m.in_flight());
            self.feed(Event::Served { model: i, completed, busy, in_flight });
        }
    }

    /// Admits `req` to its backend: it runs now if a slot is free.
    fn admit(&mut self, req: u32) {
        let model = self.requests[req as usize].model as usize;
        let t = &mut self.out.tracks[req as usize];
        t.fate = Fate::Running;
        t.admitted = self.now;
        let m = &mut self.models[model];
        if m.running.len() < m.sim.concurrency {
            self.start(req);
        } else {
            m.backlog.push_back(req);
        }
    }

    fn start(&mut self, req: u32) {
        let r = self.requests[req as usize];
        let m = &mut self.models[r.model as usize];
        m.running.push(req);
        let generation = m.generation;
        self.schedule(r.service, Timed::Finish { req, generation });
    }

    fn finish(&mut self, req: u32, generation: u32) {
        let model = self.requests[req as usize].model as usize;
        let m = &mut self.models[model];
        if m.generation != generation || self.out.tracks[req as usize].fate != Fate::Running {
            return;
        }
        if let Some(i) = m.running.iter().position(|&r| r == req) {
            m.running.swap_remove(i);
        }
        m.completed += 1;
        m.busy += self.now.since(self.out.tracks[req as usize].admitted);
        if let Some(next) = m.backlog.pop_front() {
            self.start(next);
        }
        self.end(req, Fate::Done);
        let m = &mut self.models[model];
        if m.in_flight() == 0 {
            m.idle_since = self.now;
            if m.gated && std::mem::take(&mut m.drain_owed) {
                self.feed(Event::Drained { model });
            }
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Gate(model) => {
                let m = &mut self.models[model];
                m.gated = m.published;
                let in_flight = m.in_flight();
                m.drain_owed = m.gated && in_flight > 0;
                self.pending.push_back(Event::Gated { model, in_flight });
            }
            Action::Ungate(model) => {
                self.models[model].gated = false;
                self.models[model].drain_owed = false;
                self.admit_waiters(model);
            }
            Action::Cut(model) => self.cut(model),
            Action::Publish(model) => {
                let m = &mut self.models[model];
                (m.published, m.gated, m.drain_owed, m.backoff_until) = (true, false, false, None);
                if m.in_flight() == 0 {
                    m.idle_since = self.now;
                }
                self.admit_waiters(model);
            }
            Action::Unpublish(model) => {
                let m = &mut self.models[model];
                (m.published, m.gated, m.drain_owed) = (false, false, false);
            }
            Action::RunHook(model, kind) => self.run_hook(model, kind),
            Action::ProbeIdle(model) => {
                let m = &self.models[model];
                let idle = (m.in_flight() == 0).then(|| self.now.since(m.idle_since));
                self.pending.push_back(Event::Idle { model, idle });
            }
            Action::Fail { model, until, .. } => self.fail(model, until),
            Action::Preload(model) => {
                let ticket = self.next_synthetic;
                self.next_synthetic += 1;
                self.models[model].queue.push_back(ticket);
                self.pending.push_back(Event::Queued { model, ticket, at: self.now });
            }
            Action::SwitchDone(record) => {
                match record.result {
                    SwitchResult::Done => self.out.switches += 1,
                    SwitchResult::Failed => self.out.failed_switches += 1,
                    SwitchResult::Abandoned => self.out.abandoned_switches += 1,
                }
                self.out.switching += record.cost();
            }
            Action::Verdict(_) | Action::SetState(..) | Action::Report(_) | Action::CommandDone { .. } => {}
        }
    }

    /// Every queued request of `model` is admitted and leaves the queue.
    fn admit_waiters(&mut self, model: ModelId) {
        while let Some(ticket) = self.models[model].queue.pop_front() {
            if let Ok(req) = u32::try_from(ticket) {
                if (req as usize) < self.requests.len() {
                    if self.out.tracks[req as usize].fate != Fate::Waiting {
                        continue; // timed out or failed: it left already
                    }
                    self.queued -= 1;
                    self.admit(req);
                }
            }
            self.pending.push_back(Event::Left { model, ticket });
        }
    }

    /// A failed wake: its waiters are answered 503 and leave.
    fn fail(&mut self, model: ModelId, until: Time) {
        self.models[model].backoff_until = Some(until);
        while let Some(ticket) = self.models[model].queue.pop_front() {
            if let Some(req) = u32::try_from(ticket).ok().filter(|&r| (r as usize) < self.requests.len()) {
                if self.out.tracks[req as usize].fate != Fate::Waiting {
                    continue;
                }
                self.queued -= 1;
                self.end(req, Fate::Failed);
            }
            self.pending.push_back(Event::Left { model, ticket });
        }
    }

    /// A drain timed out: everything in flight on `model` ends now.
    fn cut(&mut self, model: ModelId) {
        let m = &mut self.models[model];
        m.generation = m.generation.wrapping_add(1);
        m.drain_owed = false;
        let running = std::mem::take(&mut m.running);
        let backlog = std::mem::take(&mut m.backlog);
        for req in running.into_iter().chain(backlog) {
            self.end(req, Fate::Cut);
        }
        self.models[model].idle_since = self.now;
    }

    /// A hook's run: its time and result from the simulated backend.
    fn run_hook(&mut self, model: ModelId, kind: HookKind) {
        let m = &self.models[model];
        let (secs, timeout) = match kind {
            HookKind::Wake => (m.sim.wake, m.wake_timeout),
            HookKind::Sleep => (m.sim.sleep, m.sleep_timeout),
            HookKind::Alive => (Duration::ZERO, Duration::MAX),
        };
        let (took, result) = match kind {
            _ if secs > timeout => (timeout, HookResult::Unknown),
            HookKind::Alive if !m.up => (secs, HookResult::Failed),
            _ => (secs, HookResult::Success),
        };
        self.schedule(took, Timed::Hook { model: model as u32, kind, result, took });
    }

    fn hook_done(&mut self, model: ModelId, kind: HookKind, result: HookResult, took: Duration) {
        if result == HookResult::Success {
            match kind {
                HookKind::Wake => self.models[model].up = true,
                HookKind::Sleep => self.models[model].up = false,
                HookKind::Alive => {}
            }
        }
        self.feed(Event::hook(model, kind, result, took));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;

    fn config(policy: &str) -> Config {
        let mut text = format!("policy:\n{policy}\nmodels:\n");
        for (i, name) in ["a", "b"].iter().enumerate() {
            text += &format!("  {name}:\n    port: {}\n    wake: w\n    sleep: s\n    alive: x\n", 9000 + i);
        }
        Config::parse(&text, Format::Yaml, ".".into()).expect("config")
    }

    fn req(t: f64, model: u32, service: f64, timeout: Option<f64>) -> Request {
        Request {
            at: Time::from_secs_f64(t),
            model,
            service: Duration::from_secs_f64(service),
            timeout: timeout.map(Duration::from_secs_f64),
            follows: None,
        }
    }

    fn run_fifo(config: &Config, backends: &[Backend], requests: &[Request]) -> Outcome {
        run(config, backends, requests, Box::new(crate::machine::policy::Fifo))
    }

    fn secs(t: Time) -> f64 {
        t.micros() as f64 / 1e6
    }

    #[test]
    fn two_models_one_request_each_switch_twice_with_known_waits() {
        // a: woken 0..10, served 10..11. b: a drains at 11, sleeps
        // 11..13, b wakes 13..23, served 23..24.
        let requests = [req(0.0, 0, 1.0, None), req(0.0, 1, 1.0, None)];
        let out = run_fifo(&config("  min_active_secs: 0"), &[Backend::default(); 2], &requests);
        assert_eq!(out.switches, 2);
        assert_eq!(out.switching, Duration::from_secs(10 + 13));
        let t = &out.tracks;
        assert_eq!((t[0].fate, secs(t[0].admitted), secs(t[0].finished)), (Fate::Done, 10.0, 11.0));
        assert_eq!((t[1].fate, secs(t[1].admitted), secs(t[1].finished)), (Fate::Done, 23.0, 24.0));
    }

    #[test]
    fn a_backend_runs_concurrency_requests_at_once() {
        let backends = [Backend { concurrency: 1, ..Backend::default() }; 2];
        let requests = [req(0.0, 0, 1.0, None), req(0.0, 0, 1.0, None), req(10.5, 0, 1.0, None)];
        let out = run_fifo(&config("  min_active_secs: 0"), &backends, &requests);
        let finished: Vec<f64> = out.tracks.iter().map(|t| secs(t.finished)).collect();
        assert_eq!(finished, [11.0, 12.0, 13.0]);
        assert_eq!(out.tracks[2].admitted, Time::from_secs_f64(10.5), "admitted at once, waits at the backend");
        assert_eq!(out.switches, 1);
    }

    #[test]
    fn a_request_that_waits_too_long_times_out_and_is_counted() {
        // b gives up at 5, before a is even up: no switch to b.
        let requests = [req(0.0, 0, 1.0, None), req(0.0, 1, 1.0, Some(5.0))];
        let out = run_fifo(&config("  min_active_secs: 0"), &[Backend::default(); 2], &requests);
        assert_eq!((out.tracks[1].fate, secs(out.tracks[1].finished)), (Fate::TimedOut, 5.0));
        assert_eq!(out.switches, 1);
        // The config's request_timeout_secs does the same.
        let requests = [req(0.0, 0, 1.0, None), req(0.0, 1, 1.0, None)];
        let out = run_fifo(&config("  request_timeout_secs: 5"), &[Backend::default(); 2], &requests);
        assert_eq!(out.tracks[1].fate, Fate::TimedOut);
    }

    #[test]
    fn a_wake_past_its_timeout_fails_its_waiters_and_backs_off() {
        let slow = Backend { wake: Duration::from_secs(60), ..Backend::default() };
        let requests = [req(0.0, 0, 1.0, None), req(0.5, 0, 1.0, None), req(30.5, 0, 1.0, None)];
        let out = run_fifo(&config("  wake_timeout_secs: 30"), &[slow, Backend::default()], &requests);
        let fates: Vec<Fate> = out.tracks.iter().map(|t| t.fate).collect();
        assert_eq!(fates, [Fate::Failed, Fate::Failed, Fate::Failed], "the third arrives in the backoff");
        assert_eq!((out.switches, out.failed_switches), (0, 1));
    }
}
