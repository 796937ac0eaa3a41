//! The queue a request joins on a miss, and the one task that switches.
//!
//! A request whose model is not active (or is draining) calls [`admit`],
//! which takes a [`Ticket`] in that model's queue, raises `switch_needed`
//! and waits for the model's `ready` notification, its request timeout or
//! shutdown. Each wait creates its `Notified` before re-checking the
//! routing snapshot, so a publish between the check and the wait is never
//! lost.
//!
//! [`run`] is the switch task, the only code that runs wake and sleep
//! hooks. It sleeps until a miss raises `switch_needed` (or the
//! min_active window it waits for ends), asks the policy what to do
//! ([`crate::policy::next_step`]) and performs one switch at a time:
//! drain A, sleep A, wake B, publish B, wake B's waiters.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::config::OnSleepFailure;
use crate::error::Error;
use crate::hooks::{self, HookKind, HookRun, Outcome};
use crate::policy::{self, ActiveView, DrainVerdict, ModelView, Next, PolicyContext, SwitchPolicy};
use crate::proxy::{Upstream, UpstreamOptions};
use crate::routing::{try_admit, InFlight, Incarnation, Routing};
use crate::state::{ModelSlot, ModelState, Shared, SwitchRecord, SwitchResult};

/// Admits a request for `model`: at once if it is active, else after
/// queueing for it.
#[inline]
///
/// `body_len` counts against `max_queued_body_bytes` while it waits.
pub async fn admit(shared: &Shared, model: usize, body_len: usize) -> Result<InFlight, Error> {
    match try_admit(&shared.routing, model) {
        Some(guard) => Ok(guard),
        None => wait_for(shared, model, body_len).await,
    }
}

/// The slow path: queue for `model` until it is published.
async fn wait_for(shared: &Shared, model: usize, body_len: usize) -> Result<InFlight, Error> {
    let slot = &shared.slots[model];
    check_backoff(slot)?;
    let _ticket = Ticket::join(shared, model, body_len as u64)?;
    let started = Instant::now();
    let deadline = shared.config.policy.request_timeout.map(|t| started + t);
    loop {
        let ready = slot.ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        if shared.shutdown.is_started() {
            return Err(Error::shutting_down());
        }
        if let Some(guard) = try_admit(&shared.routing, model) {
            return Ok(guard);
        }
        check_backoff(slot)?;
        tokio::select! {
            () = ready => {}
            () = shared.shutdown.started() => return Err(Error::shutting_down()),
            () = sleep_until(deadline) => return Err(Error::wait_timeout(&slot.config.name, started.elapsed())),
        }
    }
}

/// 503 with `Retry-After` while the model's backoff runs.
fn check_backoff(slot: &ModelSlot) -> Result<(), Error> {
    let backoff = slot.backoff.lock();
    match backoff.remaining(Instant::now()) {
        Some(left) => Err(Error::hook_failed(backoff.reason.to_string(), left)),
        None => Ok(()),
    }
}

/// Sleeps until `deadline`, or forever if there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// A place in a model's queue; leaving (drop) is what a timeout or a
/// client disconnect does. Holds its share of the global queue bounds.
struct Ticket<'a> {
    shared: &'a Shared,
    model: usize,
    body_len: u64,
}

impl<'a> Ticket<'a> {
    /// Joins `model`'s queue, or fails with 429 past the queue bounds.
    fn join(shared: &'a Shared, model: usize, body_len: u64) -> Result<Ticket<'a>, Error> {
        let limits = &shared.config.limits;
        let requests = shared.queued_requests.fetch_add(1, SeqCst) + 1;
        let bytes = shared.queued_body_bytes.fetch_add(body_len, SeqCst) + body_len;
        if requests > limits.max_queued_requests || bytes > limits.max_queued_body_bytes {
            shared.queued_requests.fetch_sub(1, SeqCst);
            shared.queued_body_bytes.fetch_sub(body_len, SeqCst);
            let which =
                if requests > limits.max_queued_requests { "max_queued_requests" } else { "max_queued_body_bytes" };
            return Err(Error::queue_full(which));
        }
        {
            let mut queue = shared.slots[model].queue.lock();
            queue.waiting += 1;
            queue.since.get_or_insert_with(Instant::now);
        }
        shared.switch_needed.notify_one();
        Ok(Ticket { shared, model, body_len })
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.shared.queued_requests.fetch_sub(1, SeqCst);
        self.shared.queued_body_bytes.fetch_sub(self.body_len, SeqCst);
        let emptied = {
            let mut queue = self.shared.slots[self.model].queue.lock();
            queue.waiting = queue.waiting.saturating_sub(1);
            if queue.waiting == 0 {
                queue.since = None;
            }
            queue.waiting == 0
        };
        if emptied {
            // A drain towards this model may now be abandoned.
            self.shared.switch_needed.notify_one();
        }
    }
}

/// The switch task. Returns at shutdown.
pub async fn run(shared: Arc<Shared>, policy: Box<dyn SwitchPolicy>) {
    start_up(&shared).await;
    loop {
        let woken = shared.switch_needed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if shared.shutdown.is_started() {
            return;
        }
        if let Some(suspect) = shared.routing.load_full().active().filter(|i| i.take_suspect()).cloned() {
            check_refusing_backend(&shared, &suspect).await;
            continue;
        }
        match plan(&shared, policy.as_ref()) {
            Next::SwitchTo(target) => switch_to(&shared, target).await,
            Next::Wait(until) => tokio::select! {
                () = woken => {}
                () = sleep_until(until) => {}
                () = shared.shutdown.started() => return,
            },
        }
    }
}

/// Gathers what the policy needs and asks it for the next step.
fn plan(shared: &Shared, policy: &dyn SwitchPolicy) -> Next {
    let now = Instant::now();
    let routing = shared.routing.load();
    let active = routing.active();
    let models: Vec<ModelView> = shared
        .slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let queue = *slot.queue.lock();
            ModelView {
                waiting: queue.waiting,
                oldest_wait: queue.since,
                in_flight: active.filter(|a| a.model == i).map_or(0, |a| a.in_flight()),
                in_backoff: slot.backoff.lock().remaining(now).is_some(),
            }
        })
        .collect();
    let costs = shared.switch_costs.lock().clone();
    let ctx = PolicyContext {
        now,
        active: active.map(|a| ActiveView { model: a.model, since: a.published_at }),
        models: &models,
        switch_costs: &costs,
    };
    policy::next_step(&ctx, policy, shared.config.policy.min_active)
}

/// Runs one of `model`'s hooks with the configured directory and grace.
async fn hook(shared: &Shared, model: usize, kind: HookKind) -> HookRun {
    let cfg = &shared.config;
    let run = hooks::run(&cfg.models[model], kind, &cfg.base_dir, &shared.shutdown, cfg.shutdown_grace).await;
    if matches!(run.outcome, Outcome::CutByShutdown) {
        shared.shutdown.record_cut();
    }
    run
}

/// Start-up: every model's `alive` at once; adopt the first model that is
/// up, put every other up (or unknown) model to sleep.
async fn start_up(shared: &Arc<Shared>) {
    let mut checks = JoinSet::new();
    for model in 0..shared.slots.len() {
        let shared = Arc::clone(shared);
        checks.spawn(async move { (model, hook(&shared, model, HookKind::Alive).await.outcome) });
    }
    // Some(true): up; Some(false): down; None: unknown (timed out).
    let mut up: Vec<Option<bool>> = vec![Some(false); shared.slots.len()];
    while let Some(Ok((model, outcome))) = checks.join_next().await {
        up[model] = match outcome {
            Outcome::Success => Some(true),
            Outcome::Failed(_) => Some(false),
            _ => None,
        };
    }
    let adopted = up.iter().position(|u| *u == Some(true));
    if let Some(model) = adopted {
        publish(shared, model);
        tracing::info!(model = %shared.slots[model].config.name, "adopted the running model as active");
    }
    for (model, state) in up.iter().enumerate() {
        if Some(model) == adopted || *state == Some(false) || shared.shutdown.is_started() {
            continue;
        }
        let slot = &shared.slots[model];
        slot.set_state(ModelState::Sleeping);
        let run = hook(shared, model, HookKind::Sleep).await;
        slot.set_state(if run.succeeded() { ModelState::Asleep } else { ModelState::Failed });
    }
}

/// Publishes `model` as active with a fresh incarnation.
fn publish(shared: &Shared, model: usize) {
    let cfg = &shared.config;
    let options = UpstreamOptions {
        idle_timeout: cfg.upstream_idle_timeout,
        connect_timeout: cfg.limits.upstream_connect_timeout,
        first_byte_timeout: cfg.limits.upstream_first_byte_timeout,
    };
    let upstream = Upstream::new(cfg.models[model].port, options);
    let incarnation = Arc::new(Incarnation::new(model, upstream));
    tokio::spawn(reap_idle_connections(Arc::downgrade(&incarnation)));
    shared.routing.store(Arc::new(Routing::with_active(incarnation)));
    let slot = &shared.slots[model];
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

/// A request's connection to the active backend was refused: run `alive`
/// once. If it fails, the model is marked failed and unpublished, so its
/// requests queue and the next switch re-wakes it.
async fn check_refusing_backend(shared: &Shared, incarnation: &Arc<Incarnation>) {
    let slot = &shared.slots[incarnation.model];
    let alive = hook(shared, incarnation.model, HookKind::Alive).await;
    if !alive.succeeded() {
        tracing::warn!(model = %slot.config.name, "the backend refused a connection and its alive hook failed: marked failed, the next request wakes it again");
        incarnation.start_draining();
        shared.routing.store(Arc::new(Routing::empty()));
        slot.set_state(ModelState::Failed);
    }
    incarnation.record_verdict();
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
    let slot = &shared.slots[target];
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
    if let Some(old) = &from {
        if let Retired::Stop(result) = retire(shared, old, target, &mut record).await {
            record.result = result;
            *shared.last_switch.lock() = Some(record);
            return;
        }
    }
    slot.set_state(ModelState::Waking);
    match wake_and_confirm(shared, target, &mut record).await {
        Ok(()) => {
            publish(shared, target);
            record.published = Some(Instant::now());
            record.result = SwitchResult::Done;
            shared.record_switch_cost(record.from, target, record.cost());
            log_switch(shared, &record);
            *shared.last_switch.lock() = Some(record);
        }
        Err(reason) => {
            *shared.last_switch.lock() = Some(record);
            fail_target(shared, target, reason);
            if shared.shutdown.is_started() {
                return;
            }
            // A half-started backend must not hold the GPU.
            slot.set_state(ModelState::Sleeping);
            let _ = hook(shared, target, HookKind::Sleep).await;
            slot.set_state(ModelState::Failed);
        }
    }
}

/// Runs the wake hook, then `alive` until it passes (a wake hook may exit
/// 0 before its backend answers), all within the wake timeout.
async fn wake_and_confirm(shared: &Shared, target: usize, record: &mut SwitchRecord) -> Result<(), String> {
    let model = &shared.slots[target].config;
    let run = hook(shared, target, HookKind::Wake).await;
    record.wake = Some((run.started, run.duration));
    if !run.succeeded() {
        return Err(format!("wake hook of model `{}` {}", model.name, run.outcome));
    }
    let deadline = run.started + model.wake.timeout;
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
    let name = |m: usize| shared.slots[m].config.name.as_str();
    let ms = |d: Duration| d.as_millis() as u64;
    tracing::info!(
        from = r.from.map_or("(none)", name),
        to = name(r.to),
        drain_ms = ms(r.drain),
        sleep_ms = ms(r.sleep.map_or(Duration::ZERO, |s| s.1)),
        wake_ms = ms(r.wake.map_or(Duration::ZERO, |w| w.1)),
        waited_ms = ms(r.miss.elapsed()),
        "switch done"
    );
}

/// Answers every waiter of `target` with 503 and starts its backoff.
fn fail_target(shared: &Shared, target: usize, reason: String) {
    let slot = &shared.slots[target];
    tracing::warn!(model = %slot.config.name, "switch failed: {reason}");
    slot.backoff.lock().fail(Instant::now(), Arc::from(reason));
    slot.set_state(ModelState::Failed);
    slot.ready.notify_waiters();
}

/// Drains and sleeps the active model `old` on the way to `target`.
async fn retire(shared: &Shared, old: &Arc<Incarnation>, target: usize, record: &mut SwitchRecord) -> Retired {
    let slot = &shared.slots[old.model];
    old.start_draining();
    slot.set_state(ModelState::Draining);
    if shared.config.policy.drain_before_switch {
        let started = Instant::now();
        let verdict = drain(shared, old, target).await;
        record.drain = started.elapsed();
        match verdict {
            DrainVerdict::Drained | DrainVerdict::Cut => {}
            DrainVerdict::Abandon => {
                tracing::info!(model = %slot.config.name, "switch abandoned: nobody waits for it any more");
                reinstate(shared, old);
                return Retired::Stop(SwitchResult::Abandoned);
            }
            DrainVerdict::Wait => return Retired::Stop(SwitchResult::Failed),
        }
    }
    shared.routing.store(Arc::new(Routing::empty()));
    slot.set_state(ModelState::Sleeping);
    let run = hook(shared, old.model, HookKind::Sleep).await;
    record.sleep = Some((run.started, run.duration));
    if run.succeeded() {
        slot.set_state(ModelState::Asleep);
        return Retired::Done;
    }
    sleep_failed(shared, old, target, run).await
}

/// A failed sleep: if the old model still answers, the switch fails
/// (unless the policy says to continue) and the old model stays active.
async fn sleep_failed(shared: &Shared, old: &Arc<Incarnation>, target: usize, run: HookRun) -> Retired {
    let slot = &shared.slots[old.model];
    let name = &slot.config.name;
    let still_up = hook(shared, old.model, HookKind::Alive).await.succeeded();
    if still_up && shared.config.policy.on_sleep_failure == OnSleepFailure::Abort {
        reinstate(shared, old);
        let reason = format!("sleep hook of model `{name}` {}; `{name}` is still active", run.outcome);
        fail_target(shared, target, reason);
        return Retired::Stop(SwitchResult::Failed);
    }
    tracing::warn!(model = %name, still_up, "sleep hook {}; switching anyway", run.outcome);
    slot.set_state(ModelState::Failed);
    Retired::Done
}

/// Serves `old` again after an abandoned drain or a failed sleep.
fn reinstate(shared: &Shared, old: &Arc<Incarnation>) {
    old.stop_draining();
    shared.routing.store(Arc::new(Routing::with_active(Arc::clone(old))));
    let slot = &shared.slots[old.model];
    slot.set_state(ModelState::Active);
    slot.ready.notify_waiters();
}

/// Waits for `old`'s in-flight requests, abandoning the drain if nobody
/// waits for `target` any more. Returns `Wait` only at shutdown.
async fn drain(shared: &Shared, old: &Incarnation, target: usize) -> DrainVerdict {
    let deadline = shared.config.policy.drain_timeout.map(|t| Instant::now() + t);
    loop {
        let woken = shared.switch_needed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        let verdict = policy::drain_verdict(shared.slots[target].waiting(), old.in_flight(), timed_out);
        match verdict {
            DrainVerdict::Wait => {}
            DrainVerdict::Cut => {
                let n = old.in_flight();
                old.cut();
                shared.cut_requests.fetch_add(n as u64, SeqCst);
                tracing::warn!(model = %shared.slots[old.model].config.name, cut = n, "drain timed out: cutting in-flight requests");
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
