//! Which model to switch to next: the part of the machine a scheduler
//! replaces.
//!
//! A [`SwitchPolicy`] is asked only when nothing is under way, the serving
//! model's own queue is empty and a model waits; the rules every policy
//! shares (min_active_secs, backoff, "serve your own queue first") are the
//! machine's. A policy has state of its own (`&mut self`) and hears of
//! every finished switch, so it can learn costs. It sees real arrival
//! times (virtual in tests and the simulator), never a clock.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ModelId, SwitchRecord, Time};

/// What the policy sees of one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelView {
    /// Requests queued for it (0 for a model a reload removed).
    pub waiting: usize,
    /// When its oldest queued request arrived.
    pub oldest_wait: Option<Time>,
    /// True while a failed wake's backoff runs.
    pub in_backoff: bool,
    /// Published and admitting requests.
    pub serving: bool,
    /// Mean time its completed requests took (arrival to last byte), once
    /// one completed.
    pub service_time: Option<Duration>,
}

/// Everything a policy may base its choice on.
pub struct PolicyContext<'a> {
    /// Now.
    pub now: Time,
    /// The serving model and when it was published.
    pub active: Option<(ModelId, Time)>,
    /// Every model, by slot.
    pub models: &'a [ModelView],
    /// When each queued request of each model arrived, by slot.
    pub arrivals: &'a [Vec<Time>],
    /// Last measured switch cost (drain + sleep + wake) per (from, to).
    pub switch_costs: &'a BTreeMap<(Option<ModelId>, ModelId), Duration>,
}

impl PolicyContext<'_> {
    /// The last measured cost of switching from `from` to `to`.
    pub fn switch_cost(&self, from: Option<ModelId>, to: ModelId) -> Option<Duration> {
        self.switch_costs.get(&(from, to)).copied()
    }

    /// Models a switch could target: queued, not serving, not in backoff.
    pub fn candidates(&self) -> impl Iterator<Item = (ModelId, &ModelView)> {
        self.models.iter().enumerate().filter(|(_, m)| m.waiting > 0 && !m.in_backoff && !m.serving)
    }
}

/// Chooses the next model to switch to.
pub trait SwitchPolicy: Send {
    /// The model to wake next, among [`PolicyContext::candidates`], and a
    /// word saying why (logged, and counted by reason).
    fn choose(&mut self, ctx: &PolicyContext<'_>) -> Option<(ModelId, &'static str)>;

    /// A switch ended (done, abandoned or failed).
    fn switch_finished(&mut self, _record: &SwitchRecord) {}
}

/// Serves queued models in the order their first request arrived.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fifo;

impl SwitchPolicy for Fifo {
    fn choose(&mut self, ctx: &PolicyContext<'_>) -> Option<(ModelId, &'static str)> {
        ctx.candidates().min_by_key(|(i, m)| (m.oldest_wait, *i)).map(|(i, _)| (i, "fifo"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(secs: u64, n: usize) -> ModelView {
        ModelView { waiting: n, oldest_wait: Some(Time::from_micros(secs * 1_000_000)), ..Default::default() }
    }

    fn choose(models: &[ModelView]) -> Option<ModelId> {
        let costs = BTreeMap::new();
        let ctx = PolicyContext {
            now: Time::from_micros(100_000_000),
            active: None,
            models,
            arrivals: &[],
            switch_costs: &costs,
        };
        Fifo.choose(&ctx).map(|(m, _)| m)
    }

    #[test]
    fn fifo_serves_the_oldest_queue_first() {
        assert_eq!(choose(&[ModelView::default(), queued(9, 5), queued(7, 1)]), Some(2));
    }

    #[test]
    fn ties_go_to_the_first_slot_and_empty_queues_are_not_chosen() {
        assert_eq!(choose(&[queued(7, 1), queued(7, 1)]), Some(0));
        assert_eq!(choose(&[ModelView::default(); 3]), None);
    }

    #[test]
    fn the_serving_model_and_backoff_are_never_targets() {
        let mut serving = queued(1, 3);
        serving.serving = true;
        let mut backing_off = queued(2, 1);
        backing_off.in_backoff = true;
        assert_eq!(choose(&[serving, backing_off]), None);
    }

    #[test]
    fn switch_costs_are_looked_up_by_pair() {
        let mut costs = BTreeMap::new();
        costs.insert((Some(0), 1), Duration::from_secs(1));
        costs.insert((None, 0), Duration::from_secs(2));
        let ctx = PolicyContext { now: Time::ZERO, active: None, models: &[], arrivals: &[], switch_costs: &costs };
        assert_eq!(ctx.switch_cost(Some(0), 1), Some(Duration::from_secs(1)));
        assert_eq!(ctx.switch_cost(None, 0), Some(Duration::from_secs(2)));
        assert_eq!(ctx.switch_cost(Some(1), 0), None);
    }
}
