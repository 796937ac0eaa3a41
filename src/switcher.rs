//! The one task that switches models.
//!
//! [`run`] is the only code that runs wake and sleep hooks. It sleeps until
//! something needs it: a miss (a request queued, see [`crate::queue`]), an
//! operator's command, a reload, or one of its own timers (the min_active
//! window, idle sleep, the periodic alive check). Each time, in this order:
//! a backend a request found refusing connections is checked; a command is
//! carried out; an active model a reload removed is put to sleep; then the
//! policy ([`crate::policy::next_step`]) picks the next switch: drain A,
//! sleep A, wake B, publish B, wake B's waiters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

use crate::config::{ModelConfig, OnSleepFailure};
use crate::hooks::{self, HookKind, HookRun, Outcome};
use crate::metrics::millis;
use crate::policy::{self, ActiveView, DrainVerdict, ModelView, Next, PolicyContext, SwitchPolicy};
use crate::proxy::{Upstream, UpstreamOptions};
use crate::queue::{self, sleep_until};
use crate::routing::{InFlight, Incarnation, Routing};
use crate::state::{Command, HookError, ModelState, Shared, SwitchRecord, SwitchResult};

/// The switch task. Returns at shutdown.
pub async fn run(shared: Arc<Shared>, policy: Box<dyn SwitchPolicy>) {
    start_up(&shared).await;
    let mut alive_checked = AliveClock::default();
    loop {
        let woken = shared.switch_needed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if shared.shutdown.is_started() {
            return;
        }
        let active = shared.routing.load_full().active().cloned();
        if let Some(suspect) = active.as_ref().filter(|i| i.take_suspect()) {
            check_alive(&shared, suspect, "the backend refused a connection").await;
            continue;
        }
        let command = shared.commands.lock().pop_front();
        if let Some(command) = command {
            perform(&shared, command).await;
            continue;
        }
        if let Some(removed) = active.as_ref().filter(|a| shared.catalog().is_removed(a.model)) {
            let _ = sleep_active(&shared, removed, "removed from the config").await;
            continue;
        }
        match plan(&shared, policy.as_ref()) {
            Next::SwitchTo(target) => switch_to(&shared, target).await,
            Next::Wait(until) => {
                let idle = active.as_ref().and_then(|a| idle_deadline(&shared, a));
                let alive = active.as_ref().and_then(|a| alive_checked.next(&shared, a));
                tokio::select! {
                    () = woken => {}
                    () = sleep_until(until) => {}
                    () = sleep_until(idle) => if let Some(a) = &active { sleep_if_idle(&shared, a).await },
                    () = sleep_until(alive) => if let Some(a) = &active {
                        alive_checked.record(a);
                        check_alive(&shared, a, "the periodic alive check failed").await;
                    },
                    () = shared.shutdown.started() => return,
                }
            }
        }
    }
}

/// Gathers what the policy needs and asks it for the next step.
fn plan(shared: &Shared, policy: &dyn SwitchPolicy) -> Next {
    let now = Instant::now();
    let catalog = shared.catalog();
    let routing = shared.routing.load();
    let active = routing.active();
    let models: Vec<ModelView> = catalog
        .slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let queue = *slot.queue.lock();
            ModelView {
                // A removed model's waiters are answered 404, never served.
                waiting: if catalog.is_removed(i) { 0 } else { queue.waiting },
                oldest_wait: queue.since,
                in_flight: active.filter(|a| a.model == i).map_or(0, |a| a.in_flight()),
                in_backoff: slot.backoff.lock().remaining(now).is_some(),
            }
        })
        .collect();
    let n = models.len();
    let mut costs = vec![None; (n + 1) * n];
    for (&(from, to), cost) in shared.switch_costs.lock().iter() {
        if let Some(cell) = costs.get_mut(from.unwrap_or(n) * n + to) {
            *cell = Some(*cost);
        }
    }
    let ctx = PolicyContext {
        now,
        active: active.map(|a| ActiveView { model: a.model, since: a.published_at }),
        models: &models,
        switch_costs: &costs,
    };
    policy::next_step(&ctx, policy, catalog.config.policy.min_active)
}

/// Runs one of `model`'s hooks with the configuration in force (or the
/// last one a removed model had), counting it in the model's metrics.
async fn hook(shared: &Shared, model: usize, kind: HookKind) -> HookRun {
    let catalog = shared.catalog.load_full();
    let Some(config) = catalog.hooks_of(model) else {
        let e = std::io::Error::new(std::io::ErrorKind::NotFound, "the model has no configuration");
        return HookRun { outcome: Outcome::SpawnFailed(e), started: Instant::now(), duration: Duration::ZERO };
    };
    let cfg = &catalog.config;
    let run = hooks::run(config, kind, &cfg.base_dir, &shared.shutdown, cfg.shutdown_grace, &shared.events).await;
    catalog.slot(model).metrics.hooks[kind as usize].record(&run);
    match &run.outcome {
        Outcome::Success => {}
        Outcome::CutByShutdown => shared.shutdown.record_cut(),
        // A failing alive hook is an answer ("down"), not an error.
        Outcome::Failed(_) if kind == HookKind::Alive => {}
        failed => {
            *shared.last_hook_error.lock() = Some(HookError {
                model: config.name.as_str().into(),
                hook: kind.as_str(),
                error: format!("{kind} hook {failed}"),
                at_micros: crate::metrics::now_micros(),
            });
        }
    }
    run
}

/// Start-up: every model's `alive` at once; adopt the first model that is
/// up, put every other up (or unknown) model to sleep; then preload.
async fn start_up(shared: &Arc<Shared>) {
    let models: Vec<usize> = shared.catalog().live().map(|(i, _, _)| i).collect();
    let mut checks = JoinSet::new();
    for &model in &models {
        let shared = Arc::clone(shared);
        checks.spawn(async move { (model, hook(&shared, model, HookKind::Alive).await.outcome) });
    }
    // Some(true): up; Some(false): down; None: unknown (timed out).
    let mut up: Vec<(usize, Option<bool>)> = Vec::with_capacity(models.len());
    while let Some(Ok((model, outcome))) = checks.join_next().await {
        let state = match outcome {
            Outcome::Success => Some(true),
            Outcome::Failed(_) => Some(false),
            _ => None,
        };
        up.push((model, state));
    }
    // Config order decides which of several running models is adopted.
    up.sort_by_key(|(model, _)| models.iter().position(|m| m == model));
    let adopted = up.iter().find(|(_, state)| *state == Some(true)).map(|(m, _)| *m);
    if let Some(model) = adopted {
        publish(shared, model);
        tracing::info!(model = %shared.catalog().name(model), "adopted the running model as active");
    }
    for &(model, state) in &up {
        if Some(model) == adopted || state == Some(false) || shared.shutdown.is_started() {
            continue;
        }
        let slot = Arc::clone(shared.catalog().slot(model));
        slot.set_state(ModelState::Sleeping);
        let run = hook(shared, model, HookKind::Sleep).await;
        slot.set_state(if run.succeeded() { ModelState::Asleep } else { ModelState::Failed });
    }
    let preload = shared.catalog().config.policy.preload.clone();
    if let Some(model) = preload.and_then(|name| shared.catalog().lookup(&name)) {
        if Some(model) != adopted {
            tracing::info!(model = %shared.catalog().name(model), "preloading");
            queue::wake_in_background(shared, model);
        }
    }
}

/// Publishes `model` as active with a fresh incarnation, connecting to the
/// port the configuration in force gives it.
fn publish(shared: &Shared, model: usize) {
    let catalog = shared.catalog();
    let cfg = &catalog.config;
    let options = UpstreamOptions {
        idle_timeout: cfg.upstream_idle_timeout,
        connect_timeout: cfg.limits.upstream_connect_timeout,
        first_byte_timeout: cfg.limits.upstream_first_byte_timeout,
    };
    let (port, idle_sleep) = catalog.hooks_of(model).map_or((0, None), |m| (m.port, m.idle_sleep));
    let slot = Arc::clone(catalog.slot(model));
    let mut incarnation = Incarnation::new(model, Arc::clone(&slot), Upstream::new(port, options));
    if idle_sleep.is_some() {
        incarnation = incarnation.with_idle_tracking();
    }
    let incarnation = Arc::new(incarnation);
    tokio::spawn(reap_idle_connections(Arc::downgrade(&incarnation)));
    shared.routing.store(Arc::new(Routing::with_active(incarnation)));
    slot.set_state(ModelState::Active);
    slot.backoff.lock().reset();
    slot.ready.notify_waiters();
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

/// Runs the active model's `alive` once (a request found its backend
/// refusing connections, or the periodic check is due). If it fails, the
/// model is marked failed and unpublished, so its requests queue and the
/// next switch wakes it again.
async fn check_alive(shared: &Shared, incarnation: &Arc<Incarnation>, why: &str) {
    let alive = hook(shared, incarnation.model, HookKind::Alive).await;
    if !alive.succeeded() && !incarnation.is_draining() {
        let name = shared.catalog().name(incarnation.model).to_owned();
        tracing::warn!(model = %name, "{why} and its alive hook failed: marked failed, the next request wakes it again");
        incarnation.start_draining();
        shared.routing.store(Arc::new(Routing::empty()));
        incarnation.slot.set_state(ModelState::Failed);
        shared.events.emit("failed", || json!({ "model": name, "reason": format!("{why}; alive hook failed") }));
    }
    incarnation.record_verdict();
}

/// When the periodic alive check of each incarnation last ran.
#[derive(Default)]
struct AliveClock {
    /// The incarnation (by its publish instant) and the check's instant.
    last: Option<(Instant, Instant)>,
}

impl AliveClock {
    /// When `active`'s next check is due, if its model has an interval.
    fn next(&self, shared: &Shared, active: &Incarnation) -> Option<Instant> {
        let interval = shared.catalog().model(active.model)?.alive_interval?;
        let base = match self.last {
            Some((published, checked)) if published == active.published_at => checked,
            _ => active.published_at,
        };
        Some(base + interval)
    }

    fn record(&mut self, active: &Incarnation) {
        self.last = Some((active.published_at, Instant::now()));
    }
}

/// When `active` may be put to sleep for idleness, if its model has an
/// idle timeout. While requests are in flight, look again in a second.
fn idle_deadline(shared: &Shared, active: &Incarnation) -> Option<Instant> {
    let idle = shared.catalog().model(active.model)?.idle_sleep?;
    if !active.tracks_idle() {
        // Idle sleep was turned on by a reload: it applies from the
        // model's next wake.
        return None;
    }
    let now = Instant::now();
    Some(match active.idle_for(now) {
        Some(for_how_long) => now + idle.saturating_sub(for_how_long),
        None => now + idle.min(Duration::from_secs(1)),
    })
}

/// Puts `active` to sleep if it is still idle; a request that slipped in
/// first keeps it active.
async fn sleep_if_idle(shared: &Shared, active: &Arc<Incarnation>) {
    let Some(idle) = shared.catalog().model(active.model).and_then(|m| m.idle_sleep) else { return };
    if active.idle_for(Instant::now()).is_none_or(|d| d < idle) {
        return;
    }
    // Stop admitting, then look again: a request admitted in between is
    // seen here (see the drain protocol in `routing`).
    active.start_draining();
    if active.in_flight() > 0 {
        reinstate(shared, active);
        return;
    }
    let name = shared.catalog().name(active.model).to_owned();
    tracing::info!(model = %name, idle_secs = idle.as_secs(), "idle: putting the model to sleep");
    let _ = sleep_active(shared, active, "idle").await;
}

/// Carries out an operator's command.
async fn perform(shared: &Shared, command: Command) {
    match command {
        Command::Sleep { model, done } => {
            let active = shared.routing.load_full().active().cloned();
            let result = match active.filter(|a| model.is_none_or(|m| m == a.model)) {
                None => Ok(None),
                Some(a) => sleep_active(shared, &a, "asked by an operator").await.map(|()| Some(a.model)),
            };
            let _ = done.send(result);
        }
    }
}

/// Drains and sleeps the active model with nothing to wake after it
/// (idle, removed, or an operator's command). Requests that arrive
/// meanwhile queue, and wake it again once it is asleep.
async fn sleep_active(shared: &Shared, old: &Arc<Incarnation>, why: &str) -> Result<(), String> {
    let slot = &old.slot;
    old.start_draining();
    slot.set_state(ModelState::Draining);
    if shared.catalog().config.policy.drain_before_switch && drain(shared, old, None).await == DrainVerdict::Wait {
        return Err("shutting down".to_owned());
    }
    let run = unpublish_and_sleep(shared, old, why).await;
    let name = slot.name.to_string();
    if run.succeeded() {
        tracing::info!(model = %name, why, "model put to sleep");
        return Ok(());
    }
    let reason = format!("sleep hook of model `{name}` {}", run.outcome);
    let still_up = hook(shared, old.model, HookKind::Alive).await.succeeded();
    if still_up && !shared.catalog().is_removed(old.model) {
        // It still answers: serve it again rather than leave it loaded
        // and unreachable.
        reinstate(shared, old);
    } else {
        slot.set_state(ModelState::Failed);
    }
    tracing::warn!(model = %name, still_up, "{reason}");
    shared.events.emit("failed", || json!({ "model": name, "reason": reason }));
    Err(reason)
}

/// Called by a request whose connection the backend refused before
/// anything was sent. Gives up its admission (a drain must not wait for
/// it), has the switch task check the backend, and returns true if the
/// model was retired meanwhile, so the request should queue for it again.
pub async fn backend_refused(shared: &Shared, in_flight: InFlight) -> bool {
    let incarnation = in_flight.into_incarnation();
    let seen = incarnation.report_refused();
    shared.switch_needed.notify_one();
    tokio::select! {
        retired = incarnation.judged(seen) => retired,
        () = shared.shutdown.started() => false,
    }
}

/// How retiring the active model ended.
enum Retired {
    /// Asleep (or down): go on and wake the target.
    Done,
    /// Stop here: abandoned, failed, or shutting down.
    Stop(SwitchResult),
}

/// One switch from whatever is active to `target`.
async fn switch_to(shared: &Shared, target: usize) {
    let from = shared.routing.load_full().active().cloned();
    let slot = Arc::clone(shared.catalog().slot(target));
    let miss = slot.queue.lock().since.unwrap_or_else(Instant::now);
    let mut record = SwitchRecord {
        from: from.as_ref().map(|o| o.model),
        to: target,
        miss,
        drain: Duration::ZERO,
        sleep: None,
        wake: None,
        alive: Duration::ZERO,
        published: None,
        result: SwitchResult::Failed,
    };
    emit_switch(shared, "switch_started", &record, None);
    if let Some(old) = &from {
        if let Retired::Stop(result) = retire(shared, old, target, &mut record).await {
            record.result = result;
            finish(shared, record);
            return;
        }
    }
    slot.set_state(ModelState::Waking);
    let woken = wake_and_confirm(shared, target, &mut record).await;
    emit_switch(shared, "phase_done", &record, Some("wake"));
    match woken {
        Ok(()) => {
            publish(shared, target);
            record.published = Some(Instant::now());
            record.result = SwitchResult::Done;
            shared.record_switch_cost(record.from, target, record.cost());
            log_switch(shared, &record);
            let (name, ms) = (slot.name.to_string(), millis(miss.elapsed()));
            shared.events.emit("activated", || json!({ "model": name, "ms": ms }));
            finish(shared, record);
        }
        Err(reason) => {
            finish(shared, record);
            fail_target(shared, target, reason);
            if shared.shutdown.is_started() {
                return;
            }
            // A half-started backend must not hold the GPU. The model
            // stays `failed` meanwhile: that is what its waiters were told.
            let _ = hook(shared, target, HookKind::Sleep).await;
        }
    }
}

/// Files a finished switch: the last switch, and its metrics.
fn finish(shared: &Shared, record: SwitchRecord) {
    shared.metrics.record_switch(&record);
    *shared.last_switch.lock() = Some(record);
}

/// A switch event: `switch_started`, or `phase_done` for `phase`.
fn emit_switch(shared: &Shared, kind: &str, r: &SwitchRecord, phase: Option<&str>) {
    shared.events.emit(kind, || {
        let catalog = shared.catalog();
        let mut data = json!({ "from": r.from.map(|f| catalog.name(f)), "to": catalog.name(r.to) });
        if let Some(phase) = phase {
            let took = match phase {
                "drain" => r.drain,
                "sleep" => r.sleep.map_or(Duration::ZERO, |s| s.1),
                _ => r.wake.map_or(Duration::ZERO, |w| w.1) + r.alive,
            };
            data["phase"] = json!(phase);
            data["ms"] = json!(millis(took));
        }
        data
    });
}

/// Runs the wake hook, then `alive` until it passes (a wake hook may exit
/// 0 before its backend answers), all within the wake timeout.
async fn wake_and_confirm(shared: &Shared, target: usize, record: &mut SwitchRecord) -> Result<(), String> {
    let catalog = shared.catalog.load_full();
    let Some(model) = catalog.model(target) else {
        return Err(format!("model `{}` was removed from the config", catalog.name(target)));
    };
    let run = hook(shared, target, HookKind::Wake).await;
    record.wake = Some((run.started, run.duration));
    if !run.succeeded() {
        return Err(format!("wake hook of model `{}` {}", model.name, run.outcome));
    }
    confirm_alive(shared, target, model, run.started, record).await
}

/// `alive` until it passes, backing off from 25 ms to 1 s, until the wake
/// timeout (counted from the wake hook's spawn) runs out.
async fn confirm_alive(
    shared: &Shared,
    target: usize,
    model: &ModelConfig,
    woken_at: Instant,
    record: &mut SwitchRecord,
) -> Result<(), String> {
    let deadline = woken_at + model.wake.timeout;
    let mut pause = Duration::from_millis(25);
    loop {
        let alive = hook(shared, target, HookKind::Alive).await;
        record.alive += alive.duration;
        if alive.succeeded() {
            return Ok(());
        }
        if shared.shutdown.is_started() || Instant::now() + pause >= deadline {
            let secs = model.wake.timeout.as_secs();
            return Err(format!(
                "wake hook of model `{}` succeeded but its alive hook did not pass within the wake timeout ({secs}s)",
                model.name
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shared.shutdown.started() => {}
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// One log line per switch, with its phase durations.
fn log_switch(shared: &Shared, r: &SwitchRecord) {
    let catalog = shared.catalog();
    tracing::info!(
        from = r.from.map_or("(none)", |m| catalog.name(m)),
        to = catalog.name(r.to),
        drain_ms = millis(r.drain),
        sleep_ms = millis(r.sleep.map_or(Duration::ZERO, |s| s.1)),
        wake_ms = millis(r.wake.map_or(Duration::ZERO, |w| w.1)),
        alive_ms = millis(r.alive),
        waited_ms = millis(r.miss.elapsed()),
        "switch done"
    );
}

/// Answers every waiter of `target` with 503 and starts its backoff.
fn fail_target(shared: &Shared, target: usize, reason: String) {
    let slot = Arc::clone(shared.catalog().slot(target));
    tracing::warn!(model = %slot.name, "switch failed: {reason}");
    let name = slot.name.to_string();
    shared.events.emit("failed", || json!({ "model": name, "reason": reason }));
    slot.backoff.lock().fail(Instant::now(), Arc::from(reason));
    slot.set_state(ModelState::Failed);
    slot.ready.notify_waiters();
}

/// Drains and sleeps the active model `old` on the way to `target`.
async fn retire(shared: &Shared, old: &Arc<Incarnation>, target: usize, record: &mut SwitchRecord) -> Retired {
    let slot = &old.slot;
    old.start_draining();
    slot.set_state(ModelState::Draining);
    if shared.catalog().config.policy.drain_before_switch {
        let started = Instant::now();
        let verdict = drain(shared, old, Some(target)).await;
        record.drain = started.elapsed();
        emit_switch(shared, "phase_done", record, Some("drain"));
        match verdict {
            DrainVerdict::Drained | DrainVerdict::Cut => {}
            DrainVerdict::Abandon => {
                tracing::info!(model = %slot.name, "switch abandoned: nobody waits for it any more");
                reinstate(shared, old);
                return Retired::Stop(SwitchResult::Abandoned);
            }
            DrainVerdict::Wait => return Retired::Stop(SwitchResult::Failed),
        }
    }
    let run = unpublish_and_sleep(shared, old, "switch").await;
    record.sleep = Some((run.started, run.duration));
    emit_switch(shared, "phase_done", record, Some("sleep"));
    if run.succeeded() {
        return Retired::Done;
    }
    sleep_failed(shared, old, target, run).await
}

/// Unpublishes `old` and runs its sleep hook; if it succeeds, the model is
/// `asleep` and the event stream is told `why`. The caller handles a
/// failure (its rules differ with and without a switch to go on with).
async fn unpublish_and_sleep(shared: &Shared, old: &Incarnation, why: &str) -> HookRun {
    shared.routing.store(Arc::new(Routing::empty()));
    old.slot.set_state(ModelState::Sleeping);
    let run = hook(shared, old.model, HookKind::Sleep).await;
    if run.succeeded() {
        old.slot.set_state(ModelState::Asleep);
        let name = old.slot.name.to_string();
        shared.events.emit("asleep", || json!({ "model": name, "reason": why }));
    }
    run
}

/// A failed sleep: if the old model still answers, the switch fails
/// (unless the policy says to continue) and the old model stays active.
async fn sleep_failed(shared: &Shared, old: &Arc<Incarnation>, target: usize, run: HookRun) -> Retired {
    let name = &old.slot.name;
    let still_up = hook(shared, old.model, HookKind::Alive).await.succeeded();
    if still_up && shared.catalog().config.policy.on_sleep_failure == OnSleepFailure::Abort {
        reinstate(shared, old);
        let reason = format!("sleep hook of model `{name}` {}; `{name}` is still active", run.outcome);
        fail_target(shared, target, reason);
        return Retired::Stop(SwitchResult::Failed);
    }
    tracing::warn!(model = %name, still_up, "sleep hook {}; switching anyway", run.outcome);
    old.slot.set_state(ModelState::Failed);
    Retired::Done
}

/// Serves `old` again after an abandoned drain or a failed sleep.
fn reinstate(shared: &Shared, old: &Arc<Incarnation>) {
    old.stop_draining();
    shared.routing.store(Arc::new(Routing::with_active(Arc::clone(old))));
    old.slot.set_state(ModelState::Active);
    old.slot.ready.notify_waiters();
}

/// Waits for `old`'s in-flight requests. On the way to a `target`, the
/// drain is abandoned if nobody waits for it any more; with no target it
/// never is. Returns `Wait` only at shutdown.
async fn drain(shared: &Shared, old: &Incarnation, target: Option<usize>) -> DrainVerdict {
    let deadline = shared.catalog().config.policy.drain_timeout.map(|t| Instant::now() + t);
    loop {
        let woken = shared.switch_needed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        let waiting = target.map_or(1, |t| shared.catalog().slot(t).waiting());
        let verdict = policy::drain_verdict(waiting, old.in_flight(), timed_out);
        match verdict {
            DrainVerdict::Wait => {}
            DrainVerdict::Cut => {
                let n = old.in_flight();
                old.cut();
                shared.metrics.cut_requests.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(model = %old.slot.name, cut = n, "drain timed out: cutting in-flight requests");
                return verdict;
            }
            _ => return verdict,
        }
        tokio::select! {
            () = old.drained() => {}
            () = woken => {}
            () = sleep_until(deadline) => {}
            () = shared.shutdown.started() => return DrainVerdict::Wait,
        }
    }
}
