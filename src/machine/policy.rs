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
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelView {
    /// Requests queued for it (0 for a model a reload removed).
    pub waiting: usize,
    /// When its oldest queued request arrived.
    pub oldest_wait: Option<Time>,
    /// True while a failed wake's backoff runs.
    pub in_backoff: bool,
    /// Published and admitting requests.
    pub serving: bool,
    /// Mean time its completed requests took from admission to their last
    /// byte, once one completed.
    pub service_time: Option<Duration>,
    /// Requests in flight on it (when last sampled).
    pub in_flight: usize,
    /// The most requests seen in flight on it at once: its concurrency,
    /// as far as llmux has seen (at least 1).
    pub concurrency: usize,
    /// When a request of it last completed (as last sampled).
    pub last_done: Option<Time>,
    /// Requests it completed in the last [`RECENT`] (as sampled).
    pub recent_done: usize,
    /// Of those, about how many had queued (admitted from its queue in
    /// the last [`RECENT`]): a backlog served, not new demand.
    pub recent_backlog: usize,
    /// `models.<name>.weight`.
    pub weight: f64,
    /// `policy.max_wait_secs` (or the model's own).
    pub max_wait: Duration,
}

/// The window `recent_done` counts over.
pub const RECENT: Duration = Duration::from_secs(30);

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
    /// `policy.request_timeout_secs`.
    pub request_timeout: Option<Duration>,
}

impl PolicyContext<'_> {
    /// The last measured cost of switching from `from` to `to`.
    pub fn switch_cost(&self, from: Option<ModelId>, to: ModelId) -> Option<Duration> {
        self.switch_costs.get(&(from, to)).copied()
    }

    /// The estimated cost of switching from `from` to `to`: measured for
    /// the pair, else the most any switch to `to` cost, else
    /// [`UNKNOWN_WAKE_COST`].
    pub fn estimated_cost(&self, from: Option<ModelId>, to: ModelId) -> Duration {
        self.switch_cost(from, to)
            .or_else(|| self.switch_costs.iter().filter(|((_, t), _)| *t == to).map(|(_, c)| *c).max())
            .unwrap_or(UNKNOWN_WAKE_COST)
    }

    /// Models a switch could target: queued, not serving, not in backoff.
    pub fn candidates(&self) -> impl Iterator<Item = (ModelId, &ModelView)> {
        self.models.iter().enumerate().filter(|(_, m)| m.waiting > 0 && !m.in_backoff && !m.serving)
    }
}

/// A loaded model that could make room, as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resident {
    /// Its slot.
    pub model: ModelId,
    /// What it takes of the capacity.
    pub size: f64,
    /// Never evicted to make room.
    pub pinned: bool,
    /// Published and admitting (a loaded model may also be failed and
    /// unpublished: it holds memory and serves nobody).
    pub serving: bool,
    /// min_active_secs protects it from eviction until then.
    pub protected_until: Option<Time>,
    /// Requests queued for it.
    pub waiting: usize,
    /// Requests in flight on it (when last sampled).
    pub in_flight: usize,
    /// Requests it completed per second since it was published.
    pub demand_per_sec: f64,
    /// The last measured cost of waking it again, if known.
    pub wake_cost: Option<Duration>,
}

impl Resident {
    /// Nothing queued and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.waiting == 0 && self.in_flight == 0
    }

    /// What keeping it is worth: its recent demand (and its queue) times
    /// what waking it again would cost (unknown: [`UNKNOWN_WAKE_COST`]).
    /// A model that is cheap to wake is a better victim than one that
    /// takes minutes.
    pub fn value(&self) -> f64 {
        let cost = self.wake_cost.unwrap_or(UNKNOWN_WAKE_COST).as_secs_f64();
        (self.demand_per_sec + self.waiting as f64 + self.in_flight as f64) * cost.max(0.001)
    }
}

/// The wake cost assumed for a model never woken by this llmux.
pub const UNKNOWN_WAKE_COST: Duration = Duration::from_secs(10);

/// The room a switch needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    /// Now.
    pub now: Time,
    /// A wait bound is at stake: min_active windows do not protect.
    pub preempt: bool,
    /// How much of the capacity must be freed.
    pub needed: f64,
    /// The model that needs it (`None`: the budget shrank).
    pub target: Option<ModelId>,
}

/// Chooses the next model to switch to, and who makes room for it.
pub trait SwitchPolicy: Send {
    /// The model to wake next, among [`PolicyContext::candidates`], and a
    /// word saying why (logged, and counted by reason).
    fn choose(&mut self, ctx: &PolicyContext<'_>) -> Option<(ModelId, &'static str)>;

    /// The residents to evict so that `room.needed` is freed, each with
    /// why it was chosen; `None` if no allowed set frees enough (the
    /// machine then waits for min_active windows to end, or fails the
    /// target).
    fn choose_victims(&mut self, residents: &[Resident], room: &Room) -> Option<Vec<(ModelId, String)>> {
        victims_by_value(residents, room)
    }

    /// After `choose` said "not now": when to ask again (a wait bound
    /// coming due, a linger ending, a busy model to look at again).
    fn recheck_at(&self) -> Option<Time> {
        None
    }

    /// After `choose` picked a target: true if a wait bound is at stake,
    /// so min_active windows do not hold the switch back.
    fn preempts(&self) -> bool {
        false
    }

    /// A switch ended (done, abandoned or failed).
    fn switch_finished(&mut self, _record: &SwitchRecord) {}
}

/// The default eviction rule: never a pinned model or one inside its
/// min_active window; models that serve nobody first (failed, still
/// loaded), then idle ones (nothing queued, nothing in flight), then the
/// busy ones; within each, the lowest [`Resident::value`] first. Victims
/// that turn out not to be needed (a later, larger one freed enough) are
/// kept.
pub fn victims_by_value(residents: &[Resident], room: &Room) -> Option<Vec<(ModelId, String)>> {
    let mut candidates: Vec<&Resident> = residents
        .iter()
        .filter(|r| !r.pinned && (room.preempt || r.protected_until.is_none_or(|until| until <= room.now)))
        .collect();
    candidates.sort_by(|a, b| {
        let rank = |r: &Resident| (r.serving, !r.is_idle());
        rank(a).cmp(&rank(b)).then(a.value().total_cmp(&b.value())).then(a.model.cmp(&b.model))
    });
    let mut chosen: Vec<&Resident> = Vec::new();
    let mut freed = 0.0;
    for r in candidates {
        if freed >= room.needed {
            break;
        }
        freed += r.size;
        chosen.push(r);
    }
    if freed < room.needed {
        return None;
    }
    // Keep any victim the others make unnecessary, the most valuable first.
    let mut i = chosen.len();
    while i > 0 {
        i -= 1;
        if freed - chosen[i].size >= room.needed {
            freed -= chosen[i].size;
            chosen.remove(i);
        }
    }
    let why = |r: &Resident| {
        let state = if !r.serving {
            "not serving"
        } else if r.is_idle() {
            "idle"
        } else {
            "busy"
        };
        format!("{state}, value {:.2}", r.value())
    };
    Some(chosen.iter().map(|r| (r.model, why(r))).collect())
}

/// The policy `policy.scheduler` names.
pub fn for_scheduler(scheduler: crate::config::Scheduler) -> Box<dyn SwitchPolicy> {
    match scheduler {
        crate::config::Scheduler::CostAware => Box::new(super::cost_aware::CostAware::default()),
        crate::config::Scheduler::Fifo => Box::new(Fifo),
    }
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

    fn resident(model: ModelId, size: f64) -> Resident {
        Resident {
            model,
            size,
            pinned: false,
            serving: true,
            protected_until: None,
            waiting: 0,
            in_flight: 0,
            demand_per_sec: 0.0,
            wake_cost: None,
        }
    }

    fn victims(residents: &[Resident], needed: f64) -> Option<Vec<ModelId>> {
        let room = Room { now: Time::from_micros(10_000_000), preempt: false, needed, target: None };
        victims_by_value(residents, &room).map(|v| v.into_iter().map(|(m, _)| m).collect())
    }

    #[test]
    fn victims_never_include_pinned_or_protected_models() {
        let mut pinned = resident(0, 2.0);
        pinned.pinned = true;
        let mut young = resident(1, 2.0);
        young.protected_until = Some(Time::from_micros(20_000_000));
        let old = resident(2, 1.0);
        assert_eq!(victims(&[pinned.clone(), young.clone(), old.clone()], 1.0), Some(vec![2]));
        assert_eq!(victims(&[pinned, young, old], 2.0), None, "only pinned or protected models would do");
    }

    #[test]
    fn idle_models_go_before_busy_ones_and_cheap_wakes_before_slow_ones() {
        let mut busy = resident(0, 1.0);
        busy.in_flight = 3;
        let mut slow = resident(1, 1.0);
        slow.demand_per_sec = 1.0;
        slow.wake_cost = Some(Duration::from_secs(120));
        let mut cheap = resident(2, 1.0);
        cheap.demand_per_sec = 1.0;
        cheap.wake_cost = Some(Duration::from_secs(2));
        assert_eq!(victims(&[busy.clone(), slow.clone(), cheap.clone()], 1.0), Some(vec![2]));
        assert_eq!(victims(&[busy.clone(), slow.clone(), cheap.clone()], 2.0), Some(vec![2, 1]));
        assert_eq!(victims(&[busy, slow, cheap], 3.0), Some(vec![2, 1, 0]), "busy only when it must");
    }

    #[test]
    fn a_model_that_serves_nobody_goes_first_and_needless_victims_are_kept() {
        let mut failed = resident(0, 1.0);
        failed.serving = false;
        failed.demand_per_sec = 100.0;
        let small = resident(1, 1.0);
        let big = resident(2, 4.0);
        assert_eq!(victims(&[failed.clone(), small.clone(), big.clone()], 0.5), Some(vec![0]));
        // 4 needed: the big one alone does; the small ones taken before it are kept.
        let mut big_cheap = big.clone();
        big_cheap.wake_cost = Some(Duration::from_millis(1));
        assert_eq!(victims(&[small, big_cheap], 4.0), Some(vec![2]));
    }

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
            request_timeout: None,
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
        let ctx = PolicyContext {
            now: Time::ZERO,
            active: None,
            models: &[],
            arrivals: &[],
            switch_costs: &costs,
            request_timeout: None,
        };
        assert_eq!(ctx.switch_cost(Some(0), 1), Some(Duration::from_secs(1)));
        assert_eq!(ctx.switch_cost(None, 0), Some(Duration::from_secs(2)));
        assert_eq!(ctx.switch_cost(Some(1), 0), None);
    }
}
