//! The queue a request joins on a miss.
//!
//! A request whose model is not active (or is draining) calls [`admit`],
//! which takes a `Ticket` in that model's queue, tells the switch task
//! (through the [`crate::inbox`]) and waits for the model's `ready` notification, its request timeout or
//! shutdown. Each wait creates its `Notified` before re-checking the
//! routing snapshot, so a publish between the check and the wait is never
//! lost. A wake asked for by an operator ([`wake_by_hand`]) joins the same
//! queue, so it obeys the same policy as a request.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::ModelSlot;
use crate::error::Error;
use crate::inbox::Input;
use crate::machine::ModelState;
use crate::routing::{try_admit, try_admit_waiting, InFlight};
use crate::state::Shared;

/// Admits a request for `model`: at once if it is active, else after
/// queueing for it. `body_len` counts against `max_queued_body_bytes`
/// while it waits.
#[inline]
pub async fn admit(shared: &Shared, model: usize, body_len: usize) -> Result<InFlight, Error> {
    admit_noting_wait(shared, model, body_len).await.map(|(guard, _)| guard)
}

/// [`admit`], also saying whether the request queued (waited for its
/// model to be published) rather than being admitted at once.
#[inline]
pub async fn admit_noting_wait(shared: &Shared, model: usize, body_len: usize) -> Result<(InFlight, bool), Error> {
    match try_admit(&shared.routing, model) {
        Some(guard) => Ok((guard, false)),
        None => wait_for(shared, model, body_len).await.map(|guard| (guard, true)),
    }
}

/// The slow path: queue for `model` until it is published.
async fn wait_for(shared: &Shared, model: usize, body_len: usize) -> Result<InFlight, Error> {
    let catalog = shared.catalog.load_full();
    let slot = catalog.slot(model);
    check_switch_task(shared)?;
    check_backoff(slot)?;
    let started = Instant::now();
    let _ticket = Ticket::join(shared, model, body_len as u64, started)?;
    let deadline = catalog.config.policy.request_timeout.map(|t| started + t);
    loop {
        let ready = slot.ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        if shared.shutdown.is_started() {
            return Err(Error::shutting_down());
        }
        if let Some(guard) = try_admit_waiting(&shared.routing, model) {
            return Ok(guard);
        }
        if shared.catalog().is_removed(model) {
            // A reload removed the model while this request waited.
            return Err(Error::unknown_model(&slot.name));
        }
        check_switch_task(shared)?;
        check_backoff(slot)?;
        tokio::select! {
            () = ready => {}
            () = shared.shutdown.started() => return Err(Error::shutting_down()),
            () = sleep_until(deadline) => return Err(Error::wait_timeout(&slot.name, started.elapsed())),
        }
    }
}

/// The errors a request for `model` that is not active would get at once
/// rather than after a wait: the switch task is dead, the model backs off,
/// or the queue is full (as it is now: the queue is joined later, and may
/// be full by then). Lets a request that will be answered with a stream
/// (`policy.stream_wait_feedback`) still get these with their own status.
pub fn check_can_wait(shared: &Shared, model: usize, body_len: usize) -> Result<(), Error> {
    check_switch_task(shared)?;
    let catalog = shared.catalog();
    check_backoff(catalog.slot(model))?;
    let limits = &catalog.config.limits;
    let requests = shared.queued_requests.load(SeqCst) + 1;
    let bytes = shared.queued_body_bytes.load(SeqCst) + body_len as u64;
    if requests > limits.max_queued_requests || bytes > limits.max_queued_body_bytes {
        return Err(Error::queue_full(requests > limits.max_queued_requests));
    }
    Ok(())
}

/// 503 once the switch task is dead: nobody would ever publish the model.
fn check_switch_task(shared: &Shared) -> Result<(), Error> {
    if shared.is_switch_task_dead() {
        return Err(Error::switch_task_dead());
    }
    Ok(())
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
pub async fn sleep_until(deadline: Option<Instant>) {
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
    number: crate::machine::Ticket,
}

impl<'a> Ticket<'a> {
    /// Joins `model`'s queue, or fails with 429 past the queue bounds.
    fn join(shared: &'a Shared, model: usize, body_len: u64, at: Instant) -> Result<Ticket<'a>, Error> {
        let catalog = shared.catalog();
        let limits = &catalog.config.limits;
        let requests = shared.queued_requests.fetch_add(1, SeqCst) + 1;
        let bytes = shared.queued_body_bytes.fetch_add(body_len, SeqCst) + body_len;
        if requests > limits.max_queued_requests || bytes > limits.max_queued_body_bytes {
            shared.queued_requests.fetch_sub(1, SeqCst);
            shared.queued_body_bytes.fetch_sub(body_len, SeqCst);
            return Err(Error::queue_full(requests > limits.max_queued_requests));
        }
        {
            let slot = catalog.slot(model);
            let mut queue = slot.queue.lock();
            queue.waiting += 1;
            queue.since.get_or_insert(at);
            slot.queue_joined();
        }
        let number = shared.inbox.ticket();
        shared.inbox.push(Input::Queued { model, ticket: number, at });
        Ok(Ticket { shared, model, body_len, number })
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.shared.queued_requests.fetch_sub(1, SeqCst);
        self.shared.queued_body_bytes.fetch_sub(self.body_len, SeqCst);
        {
            let catalog = self.shared.catalog();
            let slot = catalog.slot(self.model);
            let mut queue = slot.queue.lock();
            queue.waiting = queue.waiting.saturating_sub(1);
            if queue.waiting == 0 {
                queue.since = None;
            }
            slot.queue_left();
        }
        // A drain towards this model may now be abandoned.
        self.shared.inbox.push(Input::Left { model: self.model, ticket: self.number });
    }
}

/// How an operator's wake went.
#[derive(Debug, Clone, Copy)]
pub struct Woken {
    /// Where the model stood when the wake was asked for: 0 if it was
    /// active, else its rank among the queued models (1: next).
    pub position: usize,
    /// How long it took.
    pub waited: Duration,
}

/// Wakes `model` as a request for it would: joins its queue and waits
/// until it is active (or its wake fails, or the request timeout passes).
pub async fn wake_by_hand(shared: &Shared, model: usize) -> Result<Woken, Error> {
    let started = Instant::now();
    let position = position_of(shared, model);
    drop(admit(shared, model, 0).await?);
    Ok(Woken { position, waited: started.elapsed() })
}

/// `model`'s place: 0 if it is active, else 1 + the queued models whose
/// oldest request is older than its own (the FIFO policy serves those
/// first), not counting one being woken now.
pub fn position_of(shared: &Shared, model: usize) -> usize {
    let routing = shared.routing.load();
    if routing.resident(model).is_some_and(|i| !i.is_draining()) {
        return 0;
    }
    let catalog = shared.catalog();
    let mine = catalog.slot(model).queue.lock().since.unwrap_or_else(Instant::now);
    let active = routing.active().map(|a| a.model);
    // A model being woken now is not ahead: its switch is under way.
    let ahead = catalog
        .live()
        .filter(|(i, _, slot)| *i != model && Some(*i) != active && slot.state() != ModelState::Waking)
        .filter(|(_, _, slot)| slot.queue.lock().since.is_some_and(|since| since < mine))
        .count();
    1 + ahead
}

/// Starts a wake that outlives the caller (`?wait=false`, `preload`).
pub fn wake_in_background(shared: &Arc<Shared>, model: usize) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        if let Err(e) = wake_by_hand(&shared, model).await {
            tracing::warn!(model = %shared.catalog().name(model), "wake failed: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, Format};
    use crate::proxy::{Upstream, UpstreamOptions};
    use crate::routing::{Incarnation, Routing};

    /// Shared state with model `m` published under `max_in_flight: limit`.
    fn limited(limit: usize) -> Arc<Shared> {
        let text = "models:\n  m: {port: 1, wake: w, sleep: s, alive: a}\n";
        let shared = Arc::new(Shared::new(Config::parse(text, Format::Yaml, ".".into()).expect("config"), None));
        let slot = Arc::clone(shared.catalog().slot(0));
        let upstream = Upstream::new(1, UpstreamOptions::with_idle_timeout(Duration::from_secs(1)));
        let inc = Incarnation::new(0, slot, upstream).with_max_in_flight(limit);
        shared.routing.store(Arc::new(Routing::with_active(Arc::new(inc))));
        shared
    }

    /// An admission counted in `now` while it lasts.
    struct Held<'a>(Option<InFlight>, &'a AtomicUsize);

    impl<'a> Held<'a> {
        fn new(guard: InFlight, now: &'a AtomicUsize) -> Held<'a> {
            now.fetch_add(1, SeqCst);
            Held(Some(guard), now)
        }
    }

    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.1.fetch_sub(1, SeqCst);
            self.0.take();
        }
    }

    /// Many requests at once under `max_in_flight: 3`, a third of them
    /// leaving (their task aborted) while they wait or while admitted:
    /// never more than 3 admitted at once, and every request that stays
    /// is admitted (no wake-up lost), on a multi-threaded runtime.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_in_flight_admits_every_waiter_and_never_more_than_the_limit() {
        let shared = limited(3);
        let (now, most, done) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let (shared, now, most, done) =
                    (Arc::clone(&shared), Arc::clone(&now), Arc::clone(&most), Arc::clone(&done));
                tokio::spawn(async move {
                    let guard = admit(&shared, 0, 0).await.expect("admitted");
                    // Counted out before the admission ends, aborted or not.
                    let held = Held::new(guard, &now);
                    most.fetch_max(now.load(SeqCst), SeqCst);
                    tokio::time::sleep(Duration::from_micros(200 + (i % 7) * 100)).await;
                    drop(held);
                    done.fetch_add(1, SeqCst);
                })
            })
            .collect();
        let mut kept = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            if i % 3 == 1 {
                tokio::time::sleep(Duration::from_micros(50)).await;
                task.abort();
            } else {
                kept.push(task);
            }
        }
        for task in kept {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("a waiter was never admitted")
                .expect("task");
        }
        assert!(most.load(SeqCst) <= 3, "{} admitted at once", most.load(SeqCst));
        assert!(done.load(SeqCst) >= 200, "{} finished", done.load(SeqCst));
        assert_eq!(shared.catalog().slot(0).queued(), 0);
        assert_eq!(shared.routing.load().resident(0).map(|i| i.in_flight()), Some(0));
    }
}
