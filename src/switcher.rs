//! The switch task: the executor of the switch protocol.
//!
//! Every decision is the [`Machine`]'s. This task feeds it events (from the
//! [`crate::inbox`], from hooks that finished, from drains that ended, from
//! its timer) with the time they happened, and carries out the actions it
//! returns: hooks run as tasks of their own (so the machine hears of a
//! waiter leaving while a hook runs), the routing snapshot is stored
//! through its `ArcSwap`, waiters are woken through their model's
//! `Notify`. It is the only code that runs hooks or publishes a model.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::{AbortHandle, JoinSet};

use crate::catalog::Catalog;
use crate::clock::{Clock, Time};
use crate::history::{HookFailure, StateChange};
use crate::hooks::{self, HookKind, HookRun, Outcome};
use crate::inbox::{Input, SleepAnswer};
use crate::machine::{
    Action, Command, Event, HookResult, Machine, ModelId, ModelSettings, ModelState, Report, Settings, SwitchPolicy,
    SwitchRecord, SwitchResult,
};
use crate::metrics::millis;
use crate::proxy::{Upstream, UpstreamOptions};
use crate::queue;
use crate::routing::{InFlight, Incarnation, Routing};
use crate::state::{Evicted, HookError, Shared};

/// The switch task. Returns at shutdown, once no hook runs.
pub async fn run(shared: Arc<Shared>, policy: Box<dyn SwitchPolicy>) {
    let settings = settings_of(&shared.catalog());
    let mut executor = Executor::new(shared, Machine::new(settings, policy));
    executor.feed(Event::Start);
    executor.run().await;
}

/// The machine's settings from the catalog in force.
pub fn settings_of(catalog: &Catalog) -> Settings {
    let models = (0..catalog.slots.len())
        .map(|i| match catalog.hooks_of(i) {
            Some(m) => ModelSettings::of(m, !catalog.is_removed(i)),
            // Unreachable: every slot has a configuration or a retired one.
            None => ModelSettings {
                configured: false,
                size: 1.0,
                pinned: false,
                weight: 1.0,
                max_wait: crate::machine::DEFAULT_MAX_WAIT,
                wake_timeout: Duration::ZERO,
                idle_sleep: None,
                alive_interval: None,
            },
        })
        .collect();
    let names = catalog.slots.iter().map(|s| s.name.to_string()).collect();
    let order = catalog.live().map(|(i, _, _)| i).collect();
    Settings::of(&catalog.config, models, names, order, |name| catalog.lookup(name))
}

/// The executor's state: what the machine's actions refer to.
struct Executor {
    shared: Arc<Shared>,
    machine: Machine,
    /// Maps instants to the machine's time (the same as `Shared::clock`).
    clock: Clock,
    /// The published incarnation of each model, by slot.
    incarnations: HashMap<ModelId, Arc<Incarnation>>,
    /// Published models in the order they were published.
    published: Vec<ModelId>,
    /// Running hooks; each yields its [`Event::HookDone`].
    hooks: JoinSet<Event>,
    /// Which hook each task runs, to report one that panicked.
    hook_tasks: HashMap<tokio::task::Id, (ModelId, HookKind)>,
    /// Drains being watched; each yields its model and incarnation, fed as
    /// [`Event::Drained`] only if that incarnation is still the one gated.
    drains: JoinSet<(ModelId, Arc<Incarnation>)>,
    drain_watch: HashMap<ModelId, AbortHandle>,
    /// Operators waiting for an answer, by command number.
    answers: HashMap<u64, SleepAnswer>,
    next_command: u64,
    /// Events the executor owes the machine (answers to its actions).
    pending: VecDeque<Event>,
    shutdown_fed: bool,
    /// Each model's last successful sleep hook: when it ended and how
    /// long it took (which victims of a switch were evicted, and how).
    slept: HashMap<ModelId, (Time, Duration)>,
}

impl Executor {
    fn new(shared: Arc<Shared>, machine: Machine) -> Executor {
        Executor {
            clock: shared.clock,
            shared,
            machine,
            incarnations: HashMap::new(),
            published: Vec::new(),
            hooks: JoinSet::new(),
            hook_tasks: HashMap::new(),
            drains: JoinSet::new(),
            drain_watch: HashMap::new(),
            answers: HashMap::new(),
            next_command: 0,
            pending: VecDeque::new(),
            shutdown_fed: false,
            slept: HashMap::new(),
        }
    }

    async fn run(&mut self) {
        let shared = Arc::clone(&self.shared);
        loop {
            let inbox = shared.inbox.notify.notified();
            tokio::pin!(inbox);
            inbox.as_mut().enable();
            self.read_inbox();
            if self.shared.shutdown.is_started() && !self.shutdown_fed {
                self.shutdown_fed = true;
                self.feed(Event::Shutdown);
            }
            if self.shutdown_fed && self.hooks.is_empty() {
                return;
            }
            let deadline = self.machine.deadline().and_then(|t| self.clock.instant(t));
            tokio::select! {
                () = inbox => {}
                Some(done) = self.hooks.join_next_with_id() => self.hook_finished(done),
                Some(Ok((model, drained))) = self.drains.join_next() => self.drained(model, &drained),
                () = queue::sleep_until(deadline) => {
                    // The policy may be waiting to see a busy model go idle.
                    self.sample_service_times();
                    self.feed(Event::Timer);
                }
                () = shared.shutdown.started(), if !self.shutdown_fed => {}
            }
        }
    }

    /// Feeds everything in the inbox to the machine.
    fn read_inbox(&mut self) {
        let mut sampled = false;
        while let Some(input) = self.shared.inbox.pop() {
            if input.model().is_some_and(|m| m >= self.machine.slots()) {
                // A model a reload just added, named before the reload's
                // own input arrived: the machine learns of it first.
                self.feed(Event::Reload(settings_of(&self.shared.catalog())));
            }
            let event = match input {
                Input::Queued { model, ticket, at } => {
                    if !std::mem::replace(&mut sampled, true) {
                        self.sample_service_times();
                    }
                    Event::Queued { model, ticket, at: self.clock.at(at) }
                }
                Input::Left { model, ticket } => Event::Left { model, ticket },
                Input::Refused(model) => Event::Refused { model },
                Input::Sleep { model, all, answer } => {
                    let id = self.next_command;
                    self.next_command += 1;
                    self.answers.insert(id, answer);
                    Event::Command(Command::Sleep { id, model, all })
                }
                Input::Reload => Event::Reload(settings_of(&self.shared.catalog())),
            };
            self.feed(event);
        }
    }

    /// Tells the machine what each model's completed requests took so far,
    /// from admission to their last byte (their durations less the time
    /// they queued).
    fn sample_service_times(&mut self) {
        let catalog = self.shared.catalog();
        for (model, slot) in catalog.slots.iter().enumerate() {
            let (completed, busy) = (slot.metrics.duration.count(), slot.metrics.served_time());
            let in_flight = self.incarnations.get(&model).map_or(0, |i| i.in_flight());
            self.feed(Event::Served { model, completed, busy, in_flight });
        }
        *self.shared.estimates.lock() = self.machine.estimates();
    }

    fn hook_finished(&mut self, done: Result<(tokio::task::Id, Event), tokio::task::JoinError>) {
        match done {
            Ok((id, event)) => {
                self.hook_tasks.remove(&id);
                self.feed(event);
            }
            Err(e) => {
                // A hook task that panicked: report it as unknown, so the
                // protocol goes on.
                tracing::error!("a hook task failed: {e}");
                if let Some((model, kind)) = self.hook_tasks.remove(&e.id()) {
                    let detail = "could not be run to the end (its task failed; see the log)".to_owned();
                    self.feed(Event::HookDone {
                        model,
                        kind,
                        result: HookResult::Unknown,
                        detail,
                        took: Duration::ZERO,
                    });
                }
            }
        }
    }

    /// Hands `event` to the machine and carries out what it says, then
    /// the answers those actions owe it, until there are none.
    fn feed(&mut self, event: Event) {
        self.pending.push_back(event);
        while let Some(event) = self.pending.pop_front() {
            let now = self.clock.now();
            if let Event::HookDone { model, kind: HookKind::Sleep, result: HookResult::Success, took, .. } = &event {
                self.slept.insert(*model, (now, *took));
            }
            let actions = self.machine.handle(event, now);
            for action in actions {
                self.execute(action);
            }
        }
        self.shared.capacity_used.store(self.machine.used().to_bits(), Relaxed);
        if !self.machine.is_starting() {
            // Start-up adoption is done (this runs after `Event::Start`).
            self.shared.started.set();
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Gate(model) => self.gate(model),
            Action::Ungate(model) => self.ungate(model),
            Action::Cut(model) => self.cut(model),
            Action::Publish(model) => self.publish(model),
            Action::Unpublish(model) => self.unpublish(model),
            Action::RunHook(model, kind) => self.run_hook(model, kind),
            Action::ProbeIdle(model) => {
                let idle = self.incarnations.get(&model).and_then(|i| i.idle_for(Instant::now()));
                self.pending.push_back(Event::Idle { model, idle });
            }
            Action::Fail { model, reason, until } => self.fail(model, reason, until),
            Action::Verdict(model) => {
                if let Some(incarnation) = self.incarnations.get(&model) {
                    incarnation.record_verdict();
                }
            }
            Action::SetState(model, state) => self.set_state(model, state),
            Action::Preload(model) => {
                tracing::info!(model = %self.shared.catalog().name(model), "preloading");
                queue::wake_in_background(&self.shared, model);
            }
            Action::Report(report) => report_to(&self.shared, &report),
            Action::CommandDone { id, result } => {
                if let Some(answer) = self.answers.remove(&id) {
                    let _ = answer.send(result);
                }
            }
            Action::SwitchDone(record) => self.switch_done(record),
        }
    }

    /// Stops admitting, then reads the in-flight count (the drain protocol
    /// in [`crate::routing`]); watches the drain if something is in flight.
    fn gate(&mut self, model: ModelId) {
        let Some(incarnation) = self.incarnations.get(&model).cloned() else {
            self.pending.push_back(Event::Gated { model, in_flight: 0 });
            return;
        };
        incarnation.start_draining();
        let in_flight = incarnation.in_flight();
        if in_flight > 0 {
            let watch = self.drains.spawn(async move {
                incarnation.drained().await;
                (model, incarnation)
            });
            if let Some(old) = self.drain_watch.insert(model, watch) {
                old.abort();
            }
        }
        self.pending.push_back(Event::Gated { model, in_flight });
    }

    /// A watched drain ended. A watcher that finished just as its drain
    /// was abandoned (or its model republished) says nothing. The count is
    /// not read again: once gated, it only rises for a request that backs
    /// out at once, so the watcher's zero is proof enough.
    fn drained(&mut self, model: ModelId, incarnation: &Arc<Incarnation>) {
        let current = self.incarnations.get(&model).is_some_and(|i| Arc::ptr_eq(i, incarnation));
        if current && incarnation.is_draining() {
            self.drain_watch.remove(&model);
            self.feed(Event::Drained { model });
        }
    }

    fn stop_watching(&mut self, model: ModelId) {
        if let Some(watch) = self.drain_watch.remove(&model) {
            watch.abort();
        }
    }

    fn ungate(&mut self, model: ModelId) {
        self.stop_watching(model);
        if let Some(incarnation) = self.incarnations.get(&model) {
            incarnation.stop_draining();
        }
        self.shared.catalog().slot(model).ready.notify_waiters();
    }

    fn cut(&mut self, model: ModelId) {
        let Some(incarnation) = self.incarnations.get(&model) else { return };
        let n = incarnation.in_flight();
        incarnation.cut();
        self.shared.metrics.cut_requests.fetch_add(n as u64, Relaxed);
        let name = self.shared.catalog().name(model).to_owned();
        tracing::warn!(model = %name, cut = n, "drain timed out: cutting in-flight requests");
    }

    /// A fresh incarnation of `model`, connecting to the backend the
    /// configuration in force gives it (a host name is looked up now, in
    /// the background).
    fn publish(&mut self, model: ModelId) {
        self.stop_watching(model);
        let catalog = self.shared.catalog();
        let cfg = &catalog.config;
        let options = UpstreamOptions {
            idle_timeout: cfg.upstream_idle_timeout,
            connect_timeout: cfg.limits.upstream_connect_timeout,
            first_byte_timeout: cfg.limits.upstream_first_byte_timeout,
        };
        let config = catalog.hooks_of(model);
        let upstream = config.map_or_else(|| Upstream::new(0, options), |m| Upstream::to(&m.backend, options));
        upstream.prefetch();
        let idle_sleep = config.and_then(|m| m.idle_sleep);
        let slot = Arc::clone(catalog.slot(model));
        let mut incarnation = Incarnation::new(model, Arc::clone(&slot), upstream);
        if idle_sleep.is_some() {
            incarnation = incarnation.with_idle_tracking();
        }
        if let Some(limit) = config.and_then(|m| m.max_in_flight) {
            incarnation = incarnation.with_max_in_flight(limit);
        }
        let incarnation = Arc::new(incarnation);
        tokio::spawn(reap_idle_connections(Arc::downgrade(&incarnation)));
        if let Some(old) = self.incarnations.insert(model, incarnation) {
            // Never serves again (it was gated when it was retired).
            old.start_draining();
        }
        self.published.retain(|&m| m != model);
        self.published.push(model);
        self.store_routing();
        slot.backoff.lock().reset();
        slot.ready.notify_waiters();
    }

    fn unpublish(&mut self, model: ModelId) {
        self.stop_watching(model);
        let Some(incarnation) = self.incarnations.remove(&model) else { return };
        incarnation.start_draining();
        self.published.retain(|&m| m != model);
        self.store_routing();
        // Requests waiting for a verdict on it queue again.
        incarnation.record_verdict();
    }

    /// Publishes the residents as they are now (one `ArcSwap` store).
    fn store_routing(&self) {
        let residents = self.published.iter().filter_map(|m| self.incarnations.get(m)).cloned();
        self.shared.routing.store(Arc::new(Routing::with_residents(residents)));
    }

    fn run_hook(&mut self, model: ModelId, kind: HookKind) {
        let shared = Arc::clone(&self.shared);
        let task = self.hooks.spawn(async move {
            let run = hook(&shared, model, kind).await;
            let result = match run.outcome {
                Outcome::Success => HookResult::Success,
                Outcome::Failed(_) => HookResult::Failed,
                Outcome::CutByShutdown => HookResult::Cut,
                Outcome::TimedOut(_) | Outcome::SpawnFailed(_) => HookResult::Unknown,
            };
            Event::HookDone { model, kind, result, detail: run.outcome.to_string(), took: run.duration }
        });
        self.hook_tasks.insert(task.id(), (model, kind));
    }

    /// Answers `model`'s waiters 503 and starts its backoff.
    fn fail(&mut self, model: ModelId, reason: String, until: crate::clock::Time) {
        let catalog = self.shared.catalog();
        let slot = catalog.slot(model);
        let until = self.clock.instant(until).unwrap_or_else(Instant::now);
        slot.backoff.lock().fail(until, Arc::from(reason));
        slot.ready.notify_waiters();
    }

    /// Sets `model`'s state, noting a change in the history.
    fn set_state(&self, model: ModelId, state: ModelState) {
        let catalog = self.shared.catalog();
        let slot = catalog.slot(model);
        if slot.state() != state {
            let change = StateChange { at: self.clock.now(), model, state };
            self.shared.history.lock().state_changed(change);
        }
        slot.set_state(state);
    }

    fn switch_done(&mut self, record: SwitchRecord) {
        if record.result == SwitchResult::Done {
            log_switch(&self.shared, &record, &self.clock);
        }
        let costs = self.machine.costs().clone();
        *self.shared.switch_costs.lock() = costs;
        self.shared.metrics.record_switch(&record);
        let evicted = self.evicted(&record);
        let catalog = self.shared.catalog();
        for e in &evicted {
            catalog.slot(e.model).metrics.evictions.fetch_add(1, Relaxed);
        }
        self.shared.metrics.record_victims(record.to, evicted.iter().map(|e| e.model));
        self.shared.history.lock().switch_ended(record.clone());
        let mut last = self.shared.last_switch.lock();
        *self.shared.last_evicted.lock() = evicted;
        *last = Some(record);
    }

    /// The victims of `record` whose sleep hook succeeded during it.
    fn evicted(&self, record: &SwitchRecord) -> Vec<Evicted> {
        let slept_during = |v: &ModelId| self.slept.get(v).filter(|(at, _)| *at >= record.started);
        record.victims.iter().filter_map(|v| slept_during(v).map(|&(_, sleep)| Evicted { model: *v, sleep })).collect()
    }
}

/// Runs one of `model`'s hooks with the configuration in force (or the
/// last one a removed model had), counting it in the model's metrics.
async fn hook(shared: &Shared, model: usize, kind: HookKind) -> HookRun {
    let catalog = shared.catalog.load_full();
    let Some(config) = catalog.hooks_of(model) else {
        let e = std::io::Error::new(std::io::ErrorKind::NotFound, "the model has no configuration");
        let (started, duration, stderr) = (Instant::now(), Duration::ZERO, Vec::new());
        return HookRun { outcome: Outcome::SpawnFailed(e), started, duration, stderr };
    };
    let cfg = &catalog.config;
    let run = hooks::run(config, kind, &config.dir, &shared.shutdown, cfg.shutdown_grace, &shared.events).await;
    run.count_in(&catalog.slot(model).metrics.hooks[kind as usize]);
    match &run.outcome {
        Outcome::Success => {}
        Outcome::CutByShutdown => shared.shutdown.record_cut(),
        // A failing alive hook is an answer ("down"), not an error.
        Outcome::Failed(_) if kind == HookKind::Alive => {}
        failed => {
            let error = format!("{kind} hook {failed}");
            let failure = HookFailure { at: shared.clock.now(), model, hook: kind.as_str(), error: error.clone() };
            shared.history.lock().hook_failed(failure);
            *shared.last_hook_error.lock() = Some(HookError {
                model: config.name.as_str().into(),
                hook: kind.as_str(),
                error,
                stderr: run.stderr.clone(),
                at_micros: crate::metrics::now_micros(),
            });
        }
    }
    run
}

/// `policy.sleep_on_shutdown`: once the switch task has ended (requests
/// drained, hooks done), runs the sleep hook of every configured model
/// that is not asleep, all at once, each bounded by its own timeout only
/// (the shutdown grace is over by now). True if every one succeeded.
pub async fn sleep_all_at_exit(shared: &Arc<Shared>) -> bool {
    let catalog = shared.catalog.load_full();
    let mut sleeps = JoinSet::new();
    for (slot, model, state) in catalog.live() {
        if state.state() == crate::machine::ModelState::Asleep {
            continue;
        }
        tracing::info!(model = %model.name, "shutting down: putting the model to sleep (policy.sleep_on_shutdown)");
        let (shared, catalog) = (Arc::clone(shared), Arc::clone(&catalog));
        sleeps.spawn(async move {
            let Some(model) = catalog.model(slot) else { return true };
            // A shutdown that never starts: only the hook's timeout bounds it.
            let not_stopping = crate::shutdown::Shutdown::default();
            let grace = catalog.config.shutdown_grace;
            let run = hooks::run(model, HookKind::Sleep, &model.dir, &not_stopping, grace, &shared.events).await;
            run.count_in(&catalog.slot(slot).metrics.hooks[HookKind::Sleep as usize]);
            if run.succeeded() {
                catalog.slot(slot).set_state(crate::machine::ModelState::Asleep);
            } else {
                tracing::warn!(model = %model.name, "shutting down: the sleep hook {}; the model may still be loaded", run.outcome);
            }
            run.succeeded()
        });
    }
    let mut all_slept = true;
    while let Some(slept) = sleeps.join_next().await {
        all_slept &= slept.unwrap_or(false);
    }
    all_slept
}

/// Closes an incarnation's idle backend connections as they pass the idle
/// timeout; ends when the incarnation is gone.
async fn reap_idle_connections(incarnation: std::sync::Weak<Incarnation>) {
    let Some(period) = incarnation.upgrade().map(|i| (i.upstream.idle_timeout() / 2).max(Duration::from_millis(100)))
    else {
        return;
    };
    loop {
        tokio::time::sleep(period).await;
        match incarnation.upgrade() {
            Some(inc) => inc.upstream.reap_idle(),
            None => return,
        }
    }
}

/// Called by a request whose connection the backend refused before
/// anything was sent. Gives up its admission (a drain must not wait for
/// it), has the switch task check the backend, and returns true if the
/// model was retired meanwhile, so the request should queue for it again.
pub async fn backend_refused(shared: &Shared, in_flight: InFlight) -> bool {
    let incarnation = in_flight.into_incarnation();
    let seen = incarnation.report_refused();
    shared.inbox.push(Input::Refused(incarnation.model));
    tokio::select! {
        retired = incarnation.judged(seen) => retired,
        () = shared.shutdown.started() => false,
    }
}

/// The log line and the `/llmux/events` event of a [`Report`].
fn report_to(shared: &Shared, report: &Report) {
    let catalog = shared.catalog();
    let name = |m: ModelId| catalog.name(m).to_owned();
    let events = &shared.events;
    match report {
        Report::SwitchStarted { from, to, reason } => {
            tracing::info!(from = from.map(name), to = name(*to), reason, "switch started");
            events.emit("switch_started", || json!({ "from": from.map(name), "to": name(*to), "reason": reason }));
        }
        Report::PhaseDone { from, to, phase, took } => events.emit(
            "phase_done",
            || json!({ "from": from.map(name), "to": name(*to), "phase": phase, "ms": millis(*took) }),
        ),
        Report::Activated { model, waited } => {
            events.emit("activated", || json!({ "model": name(*model), "ms": millis(*waited) }))
        }
        Report::Down(model) => {
            let model = name(*model);
            tracing::info!(model, "model {model} is down");
        }
        Report::Adopted(models) => {
            let names: Vec<String> = models.iter().map(|&m| name(m)).collect();
            let list = names.join(", ");
            tracing::info!(models = ?names, "adopted {list}: already running, active without a wake");
        }
        Report::NoneAdopted => tracing::info!("no model is running: none is active, llmux waits for requests"),
        Report::Asleep { model, why } => {
            tracing::info!(model = name(*model), why, "model put to sleep");
            events.emit("asleep", || json!({ "model": name(*model), "reason": why }));
        }
        Report::Failed { model, reason } => {
            tracing::warn!(model = name(*model), "switch failed: {reason}");
            events.emit("failed", || json!({ "model": name(*model), "reason": reason }));
        }
        Report::Evicting { to, victims, why } => {
            let names: Vec<String> = victims.iter().map(|&v| name(v)).collect();
            tracing::info!(to = to.map(name), victims = ?names, why = %why, "evicting to make room");
            events.emit("evicting", || json!({ "to": to.map(name), "victims": names, "why": why }));
        }
        Report::Abandoned { model } => {
            tracing::info!(model = name(*model), "switch abandoned: nobody waits for it any more")
        }
        Report::IdleSleep(model) => tracing::info!(model = name(*model), "idle: putting the model to sleep"),
        Report::Infeasible { model, max_wait, cycle } => {
            shared.infeasible.lock().push((*model, *max_wait, *cycle));
            let (bound, round) = (max_wait.as_secs_f64(), cycle.as_secs_f64());
            tracing::warn!(
                model = name(*model),
                max_wait_secs = bound,
                cycle_secs = round,
                "the wait bound cannot always be met: a round of switches under the recent load takes longer"
            );
            events.emit("infeasible", || json!({ "model": name(*model), "max_wait_secs": bound, "cycle_secs": round }));
        }
        Report::AliveUnknown(model) => {
            tracing::warn!(model = name(*model), "alive hook did not answer in time: state unknown, nothing changed")
        }
    }
}

/// One log line per switch, with its phase durations.
fn log_switch(shared: &Shared, r: &SwitchRecord, clock: &Clock) {
    let catalog = shared.catalog();
    tracing::info!(
        from = r.from.map_or("(none)", |m| catalog.name(m)),
        to = catalog.name(r.to),
        reason = r.reason,
        drain_ms = millis(r.drain),
        sleep_ms = millis(r.sleep.unwrap_or_default()),
        wake_ms = millis(r.wake.unwrap_or_default()),
        alive_ms = millis(r.alive),
        waited_ms = millis(clock.now().since(r.miss)),
        "switch done"
    );
}
