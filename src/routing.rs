//! The routing snapshot and admission: the lock-free hot path.
//!
//! The switch task publishes a [`Routing`] through one `ArcSwap`: which
//! models are resident and, for each, an [`Incarnation`] that owns the
//! upstream connection pool and the in-flight counter of that one period of
//! residency. A request for a resident model is admitted by [`try_admit`]:
//! one `ArcSwap` load, one atomic increment, one atomic load of the
//! incarnation's draining flag. No lock, no channel, no allocation.
//!
//! The drain protocol rests on one rule: the switch task sets `draining`
//! before it reads `in_flight`, and [`try_admit`] increments `in_flight`
//! before it reads `draining` (all `SeqCst`). So either the request sees
//! the flag and backs out (and queues), or the drain sees its increment and
//! waits for it: nothing slips past a drain that has read zero. Every
//! incarnation is retired by setting its `draining` flag first, so a
//! request that loaded a stale snapshot is caught by the same check.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::utils::CachePadded;
use tokio::sync::Notify;

use crate::catalog::ModelSlot;
use crate::proxy::Upstream;

/// What the hot path reads: the resident models.
///
/// Indexed by slot: admitting a request for any resident costs the same
/// with one resident or many (no search). Built whole by the switch task
/// at each publish and unpublish (cold path).
#[derive(Default)]
pub struct Routing {
    /// The incarnation of each resident model, by slot.
    residents: Box<[Option<Arc<Incarnation>>]>,
    /// Resident slots in the order they were published.
    order: Box<[usize]>,
}

impl Routing {
    /// A snapshot with nothing resident.
    pub fn empty() -> Routing {
        Routing::default()
    }

    /// A snapshot with `incarnation` the one resident.
    pub fn with_active(incarnation: Arc<Incarnation>) -> Routing {
        Routing::with_residents([incarnation])
    }

    /// A snapshot with these residents, in the order they were published.
    pub fn with_residents(incarnations: impl IntoIterator<Item = Arc<Incarnation>>) -> Routing {
        let incarnations: Vec<Arc<Incarnation>> = incarnations.into_iter().collect();
        let slots = incarnations.iter().map(|i| i.model + 1).max().unwrap_or(0);
        let mut residents = vec![None; slots];
        let order = incarnations.iter().map(|i| i.model).collect();
        for incarnation in incarnations {
            let model = incarnation.model;
            residents[model] = Some(incarnation);
        }
        Routing { residents: residents.into_boxed_slice(), order }
    }

    /// The incarnation serving `model`, if it is resident.
    #[inline]
    pub fn resident(&self, model: usize) -> Option<&Arc<Incarnation>> {
        self.residents.get(model)?.as_ref()
    }

    /// The most recently published resident (deprecated in `/health` in
    /// favour of [`Routing::residents`]).
    pub fn active(&self) -> Option<&Arc<Incarnation>> {
        self.order.last().and_then(|&m| self.resident(m))
    }

    /// Every resident, in the order they were published.
    pub fn residents(&self) -> impl Iterator<Item = &Arc<Incarnation>> {
        self.order.iter().filter_map(|&m| self.resident(m))
    }
}

/// One period during which a model is published as active.
///
/// Created by the switch task when it publishes a model; retired (draining
/// set) before it is unpublished. Counters start at zero for each period,
/// so requests cut from an earlier period never hold up a later drain.
pub struct Incarnation {
    /// The model's slot index.
    pub model: usize,
    /// The model's slot: its requests count themselves in its metrics.
    pub slot: Arc<ModelSlot>,
    /// Connection pool to the backend, new for each incarnation.
    pub upstream: Upstream,
    /// When the model was published (min_active_secs counts from here).
    pub published_at: Instant,
    /// Requests admitted and not yet finished (their response body
    /// included). Written by [`try_admit`] and [`InFlight`]'s drop; read by
    /// the switch task while draining.
    in_flight: CachePadded<AtomicUsize>,
    /// When `in_flight` last fell to zero, in µs after `published_at`.
    /// Written by [`InFlight`]'s drop; read by the switch task for idle
    /// sleep.
    last_done: CachePadded<AtomicU64>,
    /// True if the model has an idle timeout: only then is `last_done`
    /// kept (it costs a clock read when the count falls to zero).
    track_idle: bool,
    /// `max_in_flight`: at most this many requests admitted at once
    /// (`usize::MAX`: no limit). Requests past it wait in the model's queue;
    /// each one that finishes wakes the longest waiting (`slot.ready`).
    limit: usize,
    /// Set by the switch task when it starts to drain or retire this
    /// incarnation; cleared only if a drain is abandoned.
    draining: AtomicBool,
    /// Raised by the last [`InFlight`] to finish while draining.
    drained: Notify,
    /// Set by the switch task when a drain timed out: response bodies still
    /// streaming end at their next frame.
    cut: AtomicBool,
    /// How many suspicions the switch task has judged; raised with
    /// `judged` after each.
    verdicts: AtomicU64,
    /// Wakes requests waiting for a verdict.
    judged: Notify,
}

impl Incarnation {
    /// A new incarnation of `model`, published now.
    pub fn new(model: usize, slot: Arc<ModelSlot>, upstream: Upstream) -> Incarnation {
        Incarnation {
            model,
            slot,
            upstream,
            published_at: Instant::now(),
            in_flight: CachePadded::new(AtomicUsize::new(0)),
            last_done: CachePadded::new(AtomicU64::new(0)),
            track_idle: false,
            limit: usize::MAX,
            draining: AtomicBool::new(false),
            drained: Notify::new(),
            cut: AtomicBool::new(false),
            verdicts: AtomicU64::new(0),
            judged: Notify::new(),
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    /// Keeps the time the in-flight count last fell to zero, for
    /// [`Incarnation::idle_for`] (set before publishing).
    pub fn with_idle_tracking(mut self) -> Incarnation {
        self.track_idle = true;
        self
    }

    /// Admits at most `limit` requests at once (`max_in_flight`).
    pub fn with_max_in_flight(mut self, limit: usize) -> Incarnation {
        self.limit = limit.max(1);
        self
    }

    /// How long nothing has been in flight; `None` if something is, or if
    /// this incarnation was not published [with idle
    /// tracking](Incarnation::with_idle_tracking).
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        if !self.track_idle || self.in_flight() > 0 {
            return None;
        }
        let last = self.published_at + Duration::from_micros(self.last_done.load(Relaxed));
        Some(now.saturating_duration_since(last))
    }

    fn stamp_idle(&self) {
        let since_publish = self.published_at.elapsed().as_micros();
        self.last_done.store(u64::try_from(since_publish).unwrap_or(u64::MAX), Relaxed);
    }

    /// True once a drain or retirement began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(SeqCst)
    }

    /// Stops admitting requests: new ones queue.
    pub fn start_draining(&self) {
        self.draining.store(true, SeqCst);
    }

    /// Cuts the requests still in flight (a drain timed out).
    pub fn cut(&self) {
        self.cut.store(true, SeqCst);
    }

    /// True once the in-flight requests were cut.
    #[inline]
    pub fn is_cut(&self) -> bool {
        self.cut.load(Relaxed)
    }

    /// The verdict count a request that saw the backend refuse waits past
    /// (see [`Incarnation::judged`]); read before it tells the switch task.
    pub fn report_refused(&self) -> u64 {
        self.verdicts.load(SeqCst)
    }

    /// Records a verdict and wakes the requests waiting for it.
    pub fn record_verdict(&self) {
        self.verdicts.fetch_add(1, SeqCst);
        self.judged.notify_waiters();
    }

    /// Waits until a verdict after `seen` is in, or the incarnation is
    /// retired; true if it was retired.
    pub async fn judged(&self, seen: u64) -> bool {
        loop {
            let notified = self.judged.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_draining() {
                return true;
            }
            if self.verdicts.load(SeqCst) > seen {
                return false;
            }
            notified.await;
        }
    }

    /// Admits requests again after an abandoned drain.
    pub fn stop_draining(&self) {
        self.draining.store(false, SeqCst);
    }

    /// Waits until nothing is in flight. Call after [`start_draining`];
    /// the future may be dropped and recreated (no wake-up is lost).
    ///
    /// [`start_draining`]: Incarnation::start_draining
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Proof that a request is admitted to an incarnation; decrements the
/// in-flight count when dropped. Lives as long as the response body.
pub struct InFlight {
    incarnation: Arc<Incarnation>,
}

impl InFlight {
    /// The incarnation this request was admitted to.
    pub fn incarnation(&self) -> &Incarnation {
        &self.incarnation
    }

    /// Ends the admission (the request is no longer in flight) and keeps
    /// the incarnation.
    pub fn into_incarnation(self) -> Arc<Incarnation> {
        Arc::clone(&self.incarnation)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let inc = &self.incarnation;
        // The idle clock starts when the count falls to zero: stamped
        // before the decrement (so the switch task never sees zero with an
        // old stamp) and again after it if a race hid the transition. The
        // clock is read only then, not per request under load.
        let last = inc.track_idle && inc.in_flight.load(Relaxed) == 1;
        if last {
            inc.stamp_idle();
        }
        let was = inc.in_flight.fetch_sub(1, SeqCst);
        if was == 1 && inc.track_idle && !last {
            inc.stamp_idle();
        }
        if was == 1 && inc.draining.load(SeqCst) {
            // `notify_one` stores a permit, so a drain that has not started
            // waiting yet still sees this.
            inc.drained.notify_one();
        }
        if inc.limit != usize::MAX {
            // A place under `max_in_flight` is free: the longest waiting
            // request tries for it (a waiter that left passes it on).
            inc.slot.ready.notify_one();
        }
    }
}

/// Admits a request for `model` if it is resident and not draining, and,
/// with a `max_in_flight`, if a place is free and nobody waits for one
/// (arrival order: a newcomer does not pass the queue).
///
/// The hot path: no lock, no channel, no allocation.
#[inline]
pub fn try_admit(routing: &ArcSwap<Routing>, model: usize) -> Option<InFlight> {
    admit_if(routing, model, true)
}

/// [`try_admit`] for a request already waiting in the model's queue: it
/// may take a free place whoever else waits.
#[inline]
pub fn try_admit_waiting(routing: &ArcSwap<Routing>, model: usize) -> Option<InFlight> {
    admit_if(routing, model, false)
}

#[inline]
fn admit_if(routing: &ArcSwap<Routing>, model: usize, behind_waiters: bool) -> Option<InFlight> {
    let snapshot = routing.load();
    let inc = snapshot.resident(model)?;
    if inc.limit == usize::MAX {
        inc.in_flight.fetch_add(1, SeqCst);
    } else if !take_place(inc, behind_waiters) {
        return None;
    }
    // From here the guard undoes the increment on every path.
    let guard = InFlight { incarnation: Arc::clone(inc) };
    if inc.draining.load(SeqCst) {
        return None;
    }
    Some(guard)
}

/// Counts a request in under `max_in_flight`: only while a place is free
/// (compare and swap, so a refused request never holds one, even for a
/// moment), not while draining (a waiter that backed out of a drain would
/// wake itself: see [`InFlight`]'s drop), and, for a newcomer
/// (`behind_waiters`), only if nobody waits for a place.
#[inline]
fn take_place(inc: &Incarnation, behind_waiters: bool) -> bool {
    if inc.draining.load(SeqCst) || (behind_waiters && inc.slot.queued() > 0) {
        return false;
    }
    let mut now = inc.in_flight.load(SeqCst);
    loop {
        if now >= inc.limit {
            return false;
        }
        match inc.in_flight.compare_exchange_weak(now, now + 1, SeqCst, SeqCst) {
            Ok(_) => return true,
            Err(actual) => now = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::UpstreamOptions;
    use std::time::Duration;

    fn routing_with(model: usize) -> (ArcSwap<Routing>, Arc<Incarnation>) {
        let inc = Arc::new(Incarnation::new(
            model,
            Arc::new(ModelSlot::new("m")),
            Upstream::new(1, UpstreamOptions::with_idle_timeout(Duration::from_secs(1))),
        ));
        (ArcSwap::from_pointee(Routing::with_active(inc.clone())), inc)
    }

    #[test]
    fn admits_only_the_resident_model() {
        let (routing, inc) = routing_with(0);
        let guard = try_admit(&routing, 0).expect("resident");
        assert_eq!(inc.in_flight(), 1);
        assert!(try_admit(&routing, 1).is_none());
        drop(guard);
        assert_eq!(inc.in_flight(), 0);
    }

    #[test]
    fn draining_turns_requests_away_and_backs_out_the_count() {
        let (routing, inc) = routing_with(0);
        inc.start_draining();
        assert!(try_admit(&routing, 0).is_none());
        assert_eq!(inc.in_flight(), 0);
        inc.stop_draining();
        assert!(try_admit(&routing, 0).is_some());
    }

    #[test]
    fn max_in_flight_admits_that_many_and_a_release_frees_a_place() {
        let inc = Arc::new(
            Incarnation::new(
                0,
                Arc::new(ModelSlot::new("m")),
                Upstream::new(1, UpstreamOptions::with_idle_timeout(Duration::from_secs(1))),
            )
            .with_max_in_flight(2),
        );
        let routing = ArcSwap::from_pointee(Routing::with_active(inc.clone()));
        let a = try_admit(&routing, 0).expect("first");
        let _b = try_admit(&routing, 0).expect("second");
        assert!(try_admit(&routing, 0).is_none(), "a third at once");
        assert_eq!(inc.in_flight(), 2, "the refused one holds no place");
        drop(a);
        let _c = try_admit(&routing, 0).expect("a place freed");
        drop(_c);
        // With a request waiting for a place, a newcomer does not pass it;
        // the waiter takes it.
        inc.slot.queue_joined();
        assert!(try_admit(&routing, 0).is_none(), "a newcomer passed the queue");
        assert!(try_admit_waiting(&routing, 0).is_some());
        inc.slot.queue_left();
    }

    #[tokio::test]
    async fn drain_ends_when_the_last_request_finishes() {
        let (routing, inc) = routing_with(0);
        let a = try_admit(&routing, 0).expect("admitted");
        let b = try_admit(&routing, 0).expect("admitted");
        inc.start_draining();
        let waiter = {
            let inc = inc.clone();
            tokio::spawn(async move { inc.drained().await })
        };
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("drain finished").expect("task ok");
    }
}
