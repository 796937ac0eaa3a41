//! Switching decisions as pure functions of what the switch task sees.
//!
//! A [`SwitchPolicy`] chooses which queued model to wake next; [`next_step`]
//! adds the rules every policy shares (min_active_secs, backoff) and
//! [`drain_verdict`] decides each step of a drain. None of this touches a
//! socket, a clock or a lock, so the state machine is tested as a table of
//! cases.

use std::time::{Duration, Instant};

/// What the policy sees of one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelView {
    /// Requests queued for it.
    pub waiting: usize,
    /// When its oldest queued request arrived.
    pub oldest_wait: Option<Instant>,
    /// Requests in flight on it (non-zero only for the active model).
    pub in_flight: usize,
    /// True while a failed wake's backoff runs.
    pub in_backoff: bool,
}

/// What the policy sees of the active model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveView {
    /// Its index.
    pub model: usize,
    /// When it was published.
    pub since: Instant,
}

/// Everything a policy may base its choice on.
pub struct PolicyContext<'a> {
    /// Now.
    pub now: Instant,
    /// The active model.
    pub active: Option<ActiveView>,
    /// Every model, by index.
    pub models: &'a [ModelView],
    /// Measured switch cost (drain + sleep + wake, no queueing or backoff)
    /// per (from, to): row `models.len()` is "from nothing".
    pub switch_costs: &'a [Option<Duration>],
}

impl PolicyContext<'_> {
    /// The last measured cost of switching from `from` to `to`.
    pub fn switch_cost(&self, from: Option<usize>, to: usize) -> Option<Duration> {
        let n = self.models.len();
        let row = from.unwrap_or(n);
        self.switch_costs.get(row * n + to).copied().flatten()
    }

    /// Models a switch could target: queued, not active, not in backoff.
    pub fn candidates(&self) -> impl Iterator<Item = (usize, &ModelView)> {
        let active = self.active.map(|a| a.model);
        self.models.iter().enumerate().filter(move |(i, m)| m.waiting > 0 && !m.in_backoff && Some(*i) != active)
    }
}

/// Chooses the next model to switch to.
pub trait SwitchPolicy: Send + Sync {
    /// The model to wake next, among [`PolicyContext::candidates`].
    fn choose(&self, ctx: &PolicyContext<'_>) -> Option<usize>;
}

/// Serves queued models in the order their first request arrived.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fifo;

impl SwitchPolicy for Fifo {
    fn choose(&self, ctx: &PolicyContext<'_>) -> Option<usize> {
        ctx.candidates().min_by_key(|(i, m)| (m.oldest_wait, *i)).map(|(i, _)| i)
    }
}

/// What the switch task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing to do until woken, or until the instant given.
    Wait(Option<Instant>),
    /// Switch to this model.
    SwitchTo(usize),
}

/// The switch task's next step: the policy's choice, held back while the
/// active model is inside its min_active window.
///
/// A model just published first serves the requests that queued for it:
/// while any of them is still on its way in, nothing is drained.
pub fn next_step(ctx: &PolicyContext<'_>, policy: &dyn SwitchPolicy, min_active: Duration) -> Next {
    if ctx.active.is_some_and(|a| ctx.models.get(a.model).is_some_and(|m| m.waiting > 0)) {
        return Next::Wait(None);
    }
    let Some(target) = policy.choose(ctx) else {
        return Next::Wait(None);
    };
    match ctx.active {
        Some(active) if ctx.now < active.since + min_active => Next::Wait(Some(active.since + min_active)),
        _ => Next::SwitchTo(target),
    }
}

/// One step of a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainVerdict {
    /// Nothing in flight: go on to sleep.
    Drained,
    /// Nobody waits for the target any more: serve the old model again.
    Abandon,
    /// The drain timeout passed: cut what is left and go on.
    Cut,
    /// Keep waiting.
    Wait,
}

/// Decides a drain step from the target's queue, the old model's in-flight
/// count and whether the drain timeout has passed.
pub fn drain_verdict(target_waiting: usize, in_flight: usize, timed_out: bool) -> DrainVerdict {
    if target_waiting == 0 {
        DrainVerdict::Abandon
    } else if in_flight == 0 {
        DrainVerdict::Drained
    } else if timed_out {
        DrainVerdict::Cut
    } else {
        DrainVerdict::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(at: Instant, secs_ago: u64, n: usize) -> ModelView {
        ModelView { waiting: n, oldest_wait: Some(at - Duration::from_secs(secs_ago)), ..Default::default() }
    }

    fn step(now: Instant, active: Option<(usize, u64)>, models: &[ModelView], min_active: u64) -> Next {
        let ctx = PolicyContext {
            now,
            active: active.map(|(model, ago)| ActiveView { model, since: now - Duration::from_secs(ago) }),
            models,
            switch_costs: &[],
        };
        next_step(&ctx, &Fifo, Duration::from_secs(min_active))
    }

    #[test]
    fn fifo_serves_the_oldest_queue_first() {
        let now = Instant::now() + Duration::from_secs(100);
        let models = [ModelView::default(), queued(now, 1, 5), queued(now, 3, 1)];
        assert_eq!(step(now, Some((0, 50)), &models, 0), Next::SwitchTo(2));
    }

    #[test]
    fn nothing_queued_means_wait() {
        let now = Instant::now();
        assert_eq!(step(now, Some((0, 1)), &[ModelView::default(); 2], 0), Next::Wait(None));
    }

    #[test]
    fn the_active_model_and_backoff_are_never_targets() {
        let now = Instant::now() + Duration::from_secs(100);
        let mut backing_off = queued(now, 9, 1);
        backing_off.in_backoff = true;
        let models = [queued(now, 5, 3), backing_off];
        assert_eq!(step(now, Some((0, 50)), &models, 0), Next::Wait(None));
    }

    #[test]
    fn min_active_holds_the_switch_until_the_window_ends() {
        let now = Instant::now() + Duration::from_secs(100);
        let models = [ModelView::default(), queued(now, 1, 1)];
        let end = now + Duration::from_secs(7);
        assert_eq!(step(now, Some((0, 3)), &models, 10), Next::Wait(Some(end)));
        assert_eq!(step(now, Some((0, 10)), &models, 10), Next::SwitchTo(1));
    }

    #[test]
    fn min_active_never_delays_a_wake_from_nothing() {
        let now = Instant::now() + Duration::from_secs(100);
        let models = [ModelView::default(), queued(now, 1, 1)];
        assert_eq!(step(now, None, &models, 1000), Next::SwitchTo(1));
    }

    #[test]
    fn the_active_model_serves_its_own_queue_before_any_switch() {
        let now = Instant::now() + Duration::from_secs(100);
        let models = [queued(now, 1, 2), queued(now, 9, 1)];
        assert_eq!(step(now, Some((0, 50)), &models, 0), Next::Wait(None));
    }

    #[test]
    fn drain_steps() {
        assert_eq!(drain_verdict(0, 3, false), DrainVerdict::Abandon);
        assert_eq!(drain_verdict(0, 0, true), DrainVerdict::Abandon);
        assert_eq!(drain_verdict(2, 0, false), DrainVerdict::Drained);
        assert_eq!(drain_verdict(2, 1, true), DrainVerdict::Cut);
        assert_eq!(drain_verdict(2, 1, false), DrainVerdict::Wait);
    }

    #[test]
    fn switch_costs_are_indexed_by_pair() {
        let models = [ModelView::default(); 2];
        let costs = [None, Some(Duration::from_secs(1)), None, None, Some(Duration::from_secs(2)), None];
        let ctx = PolicyContext { now: Instant::now(), active: None, models: &models, switch_costs: &costs };
        assert_eq!(ctx.switch_cost(Some(0), 1), Some(Duration::from_secs(1)));
        assert_eq!(ctx.switch_cost(None, 0), Some(Duration::from_secs(2)));
        assert_eq!(ctx.switch_cost(Some(1), 0), None);
    }
}
