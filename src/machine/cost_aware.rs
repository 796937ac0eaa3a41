//! The `cost_aware` scheduler: which model to serve next when switches cost
//! seconds to minutes (`docs/scheduling.md` has the theory and the
//! simulator's tables).
//!
//! A polling system with switchover times: one server (the GPU), several
//! queues (the models), a cost to move between them. Its rules, in order:
//!
//! 1. **A wait bound, earliest deadline first.** A model's waiters may not
//!    wait past `max_wait`: once the oldest one's arrival plus its bound,
//!    less the estimated cost of the switch, has come, the model is served
//!    next even if the active model is busy or inside `min_active`
//!    (`preempts`). Among several, the earliest deadline first.
//! 2. **Serve what is here before leaving** (exhaustive service): while
//!    the active model has requests in flight or queued, stay.
//!    It also stays while its own recent demand (weighted completions per
//!    second) is worth more than the best switch (rule 4's value): leaving
//!    a hot model for one waiter costs the hot model's whole traffic for
//!    two switches.
//! 3. **Wait and see**: when the active model has just gone idle and a
//!    follow-up is worth waiting for (the model's recent completions per
//!    second, times the switch away and back it would save, outweigh the
//!    weighted waiters elsewhere: an agent loop that calls again seconds
//!    after a reply), linger a quarter of the switch it would cost, at
//!    most [`MAX_LINGER`].
//! 4. **Value per cost**: otherwise the model with the most weighted
//!    waiters per second of work: `weight × waiting` over the estimated
//!    switch cost plus the time to clear its queue (`waiting × service
//!    time / concurrency`); ties to the oldest waiter. A model cheap to
//!    wake beats one that takes minutes at equal demand.
//!
//! Waiters whose remaining `request_timeout` is shorter than the switch
//! would take are not counted: they would get 504 anyway, so they cause no
//! switch by themselves.

use std::time::Duration;

use super::policy::{ModelView, PolicyContext, SwitchPolicy};
use super::{ModelId, Time};

/// The longest a model lingers idle on the chance of a follow-up.
pub const MAX_LINGER: Duration = Duration::from_secs(10);

/// How often a busy active model is looked at again while others wait.
pub const RECHECK: Duration = Duration::from_millis(250);

/// The `cost_aware` policy. See the module docs.
#[derive(Debug, Default)]
pub struct CostAware {
    /// When to look again after a "not now".
    recheck: Option<Time>,
    /// The last choice was forced by a wait bound.
    preempt: bool,
}

/// A candidate's numbers, as the rules see them.
struct Candidate {
    model: ModelId,
    /// Waiters that can still be served in time.
    viable: usize,
    oldest: Time,
    /// When the wait bound forces its switch.
    deadline: Time,
    cost: Duration,
}

impl CostAware {
    fn candidates(ctx: &PolicyContext<'_>) -> Vec<Candidate> {
        let from = ctx.active.map(|(a, _)| a);
        ctx.candidates()
            .filter_map(|(model, view)| {
                let cost = ctx.estimated_cost(from, model);
                let arrivals = ctx.arrivals.get(model).map_or(&[][..], Vec::as_slice);
                let viable: Vec<Time> = arrivals
                    .iter()
                    .copied()
                    .filter(|&at| ctx.request_timeout.is_none_or(|t| at + t > ctx.now + cost))
                    .collect();
                let oldest = viable.iter().copied().min().or(view.oldest_wait.filter(|_| arrivals.is_empty()))?;
                let viable = if arrivals.is_empty() { view.waiting } else { viable.len() };
                let deadline = Time::from_micros((oldest + view.max_wait).micros().saturating_sub(micros(cost)));
                Some(Candidate { model, viable, oldest, deadline, cost })
            })
            .collect()
    }

    /// Rule 3: linger on the active model, until when: for a quarter of
    /// the cheapest switch (at most [`MAX_LINGER`]) after its last
    /// completion, if a follow-up is worth waiting for. Lingering `L`
    /// costs the `elsewhere` weighted waiters `L` each; a follow-up that
    /// comes in time (about `rate × L` of them, `rate` its recent
    /// completions per second) saves a switch away and back (`2 × cost`).
    /// So it lingers while `elsewhere < 2 × cost × rate`.
    fn linger_until(ctx: &PolicyContext<'_>, active: &ModelView, cheapest: Duration, elsewhere: f64) -> Option<Time> {
        let last = active.last_done?;
        if elsewhere >= 2.0 * cheapest.as_secs_f64() * per_sec(active, active.recent_done) {
            return None;
        }
        let until = last + (cheapest / 4).min(MAX_LINGER);
        (ctx.now < until).then_some(until)
    }

    /// What the active model's own traffic is worth: its weighted recent
    /// completions per second (the requests it would leave waiting), less
    /// those that had queued for it: a backlog it has just cleared says
    /// nothing of what will come next.
    fn demand(view: &ModelView) -> f64 {
        per_sec(view, view.recent_done.saturating_sub(view.recent_backlog))
    }

    /// Rule 4: weighted waiters per second of work.
    fn value(ctx: &PolicyContext<'_>, c: &Candidate) -> f64 {
        let view = &ctx.models[c.model];
        let service = view.service_time.unwrap_or(Duration::from_secs(1)).as_secs_f64();
        let clear = c.viable as f64 * service / view.concurrency.max(1) as f64;
        view.weight * c.viable as f64 / (c.cost.as_secs_f64() + clear).max(0.001)
    }
}

/// `n` of `view`'s requests over the recent window, weighted, per second.
fn per_sec(view: &ModelView, n: usize) -> f64 {
    view.weight * n as f64 / super::policy::RECENT.as_secs_f64()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl SwitchPolicy for CostAware {
    fn choose(&mut self, ctx: &PolicyContext<'_>) -> Option<(ModelId, &'static str)> {
        self.recheck = None;
        self.preempt = false;
        let candidates = Self::candidates(ctx);
        let due = candidates.iter().filter(|c| c.deadline <= ctx.now).min_by_key(|c| (c.deadline, c.model));
        if let Some(c) = due {
            self.preempt = true;
            return Some((c.model, "deadline"));
        }
        let next_deadline = candidates.iter().map(|c| c.deadline).min();
        let best = candidates.iter().filter(|c| c.viable > 0).max_by(|a, b| {
            Self::value(ctx, a)
                .total_cmp(&Self::value(ctx, b))
                .then(b.oldest.cmp(&a.oldest))
                .then(b.model.cmp(&a.model))
        })?;
        if let Some((active, _)) = ctx.active {
            let view = &ctx.models[active];
            let cheapest = candidates.iter().map(|c| c.cost).min().unwrap_or_default();
            let elsewhere: f64 = candidates.iter().map(|c| ctx.models[c.model].weight * c.viable as f64).sum();
            let linger = Self::linger_until(ctx, view, cheapest, elsewhere);
            // Stay while it is busy, while its own demand is worth more than
            // the best switch, or while a follow-up is likely.
            let worth_staying = Self::demand(view) > Self::value(ctx, best);
            if view.in_flight > 0 || view.waiting > 0 || worth_staying || linger.is_some() {
                let soon = linger.unwrap_or(ctx.now + RECHECK).max(ctx.now + RECHECK);
                self.recheck = Some(next_deadline.map_or(soon, |d| d.min(soon)));
                return None;
            }
        }
        Some((best.model, if ctx.active.is_some() { "value" } else { "idle_gpu" }))
    }

    fn recheck_at(&self) -> Option<Time> {
        self.recheck
    }

    fn preempts(&self) -> bool {
        self.preempt
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::machine::DEFAULT_MAX_WAIT;

    fn secs(s: f64) -> Time {
        Time::from_secs_f64(s)
    }

    fn view(waiting: usize) -> ModelView {
        ModelView {
            waiting,
            oldest_wait: None,
            in_backoff: false,
            serving: false,
            service_time: Some(Duration::from_secs(2)),
            in_flight: 0,
            concurrency: 1,
            last_done: None,
            recent_done: 0,
            recent_backlog: 0,
            weight: 1.0,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }

    /// The policy's choice at `now` with model 0 active (`busy` in flight).
    fn decide(
        now: f64,
        models: &mut [ModelView],
        arrivals: &[Vec<Time>],
        costs: &BTreeMap<(Option<ModelId>, ModelId), Duration>,
    ) -> (Option<(ModelId, &'static str)>, CostAware) {
        models[0].serving = true;
        for (m, a) in models.iter_mut().zip(arrivals) {
            m.oldest_wait = a.iter().copied().min();
        }
        let ctx = PolicyContext {
            now: secs(now),
            active: Some((0, Time::ZERO)),
            models,
            arrivals,
            switch_costs: costs,
            request_timeout: None,
        };
        let mut policy = CostAware::default();
        let choice = policy.choose(&ctx);
        (choice, policy)
    }

    #[test]
    fn a_busy_active_model_keeps_serving_until_a_bound_comes_due() {
        let costs = BTreeMap::from([((Some(0), 1), Duration::from_secs(10))]);
        let mut models = [view(0), view(1)];
        models[0].in_flight = 3;
        let arrivals = [vec![], vec![secs(5.0)]];
        let (choice, policy) = decide(6.0, &mut models, &arrivals, &costs);
        assert_eq!(choice, None, "one waiter elsewhere does not pull the GPU away");
        assert_eq!(policy.recheck_at(), Some(secs(6.0) + RECHECK));
        // 5 s + 120 s bound - 10 s switch = 115 s: the bound forces it.
        let (choice, policy) = decide(115.0, &mut models, &arrivals, &costs);
        assert_eq!(choice, Some((1, "deadline")));
        assert!(policy.preempts());
    }

    #[test]
    fn earliest_deadline_first_among_due_models() {
        let costs = BTreeMap::new();
        let mut models = [view(0), view(1), view(1)];
        models[0].in_flight = 1;
        models[2].max_wait = Duration::from_secs(30);
        let arrivals = [vec![], vec![secs(0.0)], vec![secs(50.0)]];
        // Model 2: 50 + 30 - 10 = 70; model 1: 0 + 120 - 10 = 110.
        let (choice, _) = decide(200.0, &mut models, &arrivals, &costs);
        assert_eq!(choice, Some((2, "deadline")));
    }

    #[test]
    fn a_model_cheap_to_wake_beats_a_slow_one_at_equal_demand() {
        let costs = BTreeMap::from([((Some(0), 1), Duration::from_secs(90)), ((Some(0), 2), Duration::from_secs(3))]);
        let mut models = [view(0), view(2), view(2)];
        let arrivals = [vec![], vec![secs(1.0), secs(2.0)], vec![secs(3.0), secs(4.0)]];
        let (choice, _) = decide(5.0, &mut models, &arrivals, &costs);
        assert_eq!(choice, Some((2, "value")), "equal queues: the cheap switch first, though 1 waited longer");
    }

    #[test]
    fn a_recently_busy_model_lingers_a_little_for_a_follow_up() {
        let costs = BTreeMap::from([((Some(0), 1), Duration::from_secs(20))]);
        let mut models = [view(0), view(3)];
        models[0].last_done = Some(secs(10.0));
        models[0].recent_done = 3;
        let arrivals = [vec![], vec![secs(9.0), secs(9.1), secs(9.2)]];
        // 3 completions in 30 s: 0.1/s, so a 20 s switch away and back
        // (40 s) is worth 4 waiter-seconds per second of lingering, more
        // than the 3 waiters elsewhere lose.
        let (choice, policy) = decide(10.5, &mut models, &arrivals, &costs);
        assert_eq!(choice, None);
        assert_eq!(policy.recheck_at(), Some(secs(15.0)), "a quarter of the 20 s switch");
        let (choice, _) = decide(15.0, &mut models, &arrivals, &costs);
        assert_eq!(choice, Some((1, "value")), "no follow-up came: switch");
        models[0].recent_done = 1;
        let (choice, _) = decide(10.5, &mut models, &arrivals, &costs);
        assert_eq!(choice, Some((1, "value")), "too little sign of a loop: no lingering");
        models[0].recent_done = 3;
        let mut models = [models[0], view(5)];
        let arrivals = [vec![], vec![secs(9.0), secs(9.1), secs(9.2), secs(9.3), secs(9.4)]];
        let (choice, _) = decide(10.5, &mut models, &arrivals, &costs);
        assert_eq!(choice, Some((1, "value")), "5 waiters elsewhere outweigh the chance of a follow-up");
    }

    #[test]
    fn lingering_is_capped() {
        let costs = BTreeMap::from([((Some(0), 1), Duration::from_secs(100))]);
        let mut models = [view(0), view(1)];
        models[0].last_done = Some(secs(10.0));
        models[0].recent_done = 3;
        let arrivals = [vec![], vec![secs(9.0)]];
        let (choice, policy) = decide(10.5, &mut models, &arrivals, &costs);
        assert_eq!(choice, None);
        assert_eq!(policy.recheck_at(), Some(secs(10.0) + MAX_LINGER), "not a quarter of 100 s");
    }

    #[test]
    fn a_hot_idle_model_is_not_left_for_one_waiter_worth_less() {
        let costs = BTreeMap::from([((Some(0), 1), Duration::from_secs(10))]);
        let mut models = [view(0), view(1)];
        // 60 completions in the last 30 s: 2 requests/s, against one waiter
        // worth 1 / (10 s switch + 2 s service) = 0.08 per second.
        models[0].recent_done = 60;
        models[0].last_done = Some(secs(0.0));
        let arrivals = [vec![], vec![secs(20.0)]];
        let (choice, policy) = decide(30.0, &mut models, &arrivals, &costs);
        assert_eq!(choice, None, "leaving would cost a's traffic two switches");
        assert_eq!(policy.recheck_at(), Some(secs(30.0) + RECHECK));
        models[0].recent_done = 1;
        let (choice, _) = decide(30.0, &mut models, &arrivals, &costs);
        assert_eq!(choice, Some((1, "value")), "a cooled down: b's turn");
    }

    #[test]
    fn a_backlog_just_cleared_is_not_demand() {
        let costs = BTreeMap::from([((Some(0), 1), Duration::from_secs(10))]);
        let mut models = [view(0), view(3)];
        // 30 completions in the window, 28 of them the queue it was woken
        // for: 2 new requests in 30 s against 3 waiters worth 3 / 16 s.
        models[0].recent_done = 30;
        models[0].recent_backlog = 28;
        models[0].last_done = Some(secs(0.0));
        let arrivals = [vec![], vec![secs(20.0), secs(21.0), secs(22.0)]];
        let (choice, _) = decide(30.0, &mut models, &arrivals, &costs);
        assert_eq!(choice, Some((1, "value")));
        models[0].recent_backlog = 0;
        let (choice, _) = decide(30.0, &mut models, &arrivals, &costs);
        assert_eq!(choice, None, "30 new requests in 30 s are worth staying for");
    }

    #[test]
    fn waiters_that_would_time_out_before_the_switch_cause_none() {
        let costs = BTreeMap::from([((Some(0), 1), Duration::from_secs(30))]);
        let mut models = [view(0), view(1)];
        let arrivals = [vec![], vec![secs(0.0)]];
        models[0].serving = true;
        models[1].oldest_wait = Some(secs(0.0));
        let ctx = PolicyContext {
            now: secs(5.0),
            active: Some((0, Time::ZERO)),
            models: &models,
            arrivals: &arrivals,
            switch_costs: &costs,
            request_timeout: Some(Duration::from_secs(20)),
        };
        assert_eq!(CostAware::default().choose(&ctx), None, "its 504 comes before the switch would end");
    }
}
