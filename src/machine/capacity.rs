//! The capacity budget: what is loaded, what fits, and who makes room.
//!
//! A model is *loaded* from the start of its wake (or its adoption) until
//! its sleep hook succeeded or its `alive` said it is down; the sizes of
//! loaded models never add up to more than the capacity. With no
//! `capacity` configured every model counts 1 against a capacity of 1: one
//! model at a time.

use std::time::Duration;

use super::policy::{Resident, Room};
use super::{Machine, ModelId, Time};

/// Sizes are user numbers (GiB, fractions of a GPU): compare with slack.
const EPSILON: f64 = 1e-9;

/// What a switch needs before its target can wake.
pub(super) enum Plan {
    /// These victims make room (none if the target fits already).
    Evict(Vec<ModelId>, String),
    /// Not now: a resident that would make room is protected by
    /// min_active until then.
    HoldUntil(Time),
    /// Never: the target does not fit beside the pinned models.
    NoRoom(String),
}

impl Machine {
    /// The budget.
    pub(super) fn capacity(&self) -> f64 {
        self.settings.capacity.unwrap_or(1.0)
    }

    /// What `model` takes of the budget.
    pub(super) fn size(&self, model: ModelId) -> f64 {
        match self.settings.capacity {
            Some(_) => self.settings.models.get(model).map_or(1.0, |s| s.size),
            None => 1.0,
        }
    }

    fn pinned(&self, model: ModelId) -> bool {
        self.settings.models.get(model).is_some_and(|s| s.pinned && s.configured)
    }

    /// The sizes of the loaded models, `except` one.
    pub(super) fn used_except(&self, except: Option<ModelId>) -> f64 {
        (0..self.models.len()).filter(|&m| Some(m) != except && self.models[m].loaded).map(|m| self.size(m)).sum()
    }

    /// The sizes of the loaded models.
    pub fn used(&self) -> f64 {
        self.used_except(None)
    }

    /// The sizes of the loaded models not already being slept (a start-up
    /// leftover, a failed wake's clean-up): what a shrunk budget must
    /// evict from.
    pub(super) fn used_staying(&self) -> f64 {
        let leaving = |m: ModelId| matches!(self.models[m].hook, Some((super::HookKind::Sleep, _)));
        (0..self.models.len()).filter(|&m| self.models[m].loaded && !leaving(m)).map(|m| self.size(m)).sum()
    }

    /// True if `target` fits beside what else is loaded.
    pub(super) fn fits(&self, target: ModelId) -> bool {
        self.used_except(Some(target)) + self.size(target) <= self.capacity() + EPSILON
    }

    /// The residents that could make room for `target` (`None`: for the
    /// budget itself), as the policy sees them.
    fn residents(&self, target: Option<ModelId>, now: Time) -> Vec<Resident> {
        (0..self.models.len())
            .filter(|&m| Some(m) != target && self.models[m].loaded)
            .map(|m| {
                let model = &self.models[m];
                let age = now.since(model.published_at).max(Duration::from_secs(1));
                let recent = model.served.completed.saturating_sub(model.completed_at_publish);
                Resident {
                    model: m,
                    size: self.size(m),
                    pinned: self.pinned(m),
                    serving: model.serving(),
                    protected_until: Some(model.published_at + self.settings.min_active)
                        .filter(|&until| model.published && until > now),
                    waiting: model.queue.len(),
                    in_flight: if model.published { model.in_flight } else { 0 },
                    demand_per_sec: recent as f64 / age.as_secs_f64(),
                    wake_cost: self.wake_cost(m),
                }
            })
            .collect()
    }

    /// The last measured cost of waking `model` (from anything).
    fn wake_cost(&self, model: ModelId) -> Option<Duration> {
        self.costs.iter().filter(|((_, to), _)| *to == model).map(|(_, cost)| *cost).max()
    }

    /// What must happen before `target` (or, with `None`, the budget after
    /// a reload) fits.
    pub(super) fn plan_room(&mut self, target: Option<ModelId>, preempt: bool, now: Time) -> Plan {
        let needed = match target {
            Some(t) => self.used_except(Some(t)) + self.size(t) - self.capacity(),
            None => self.used_staying() - self.capacity(),
        };
        if needed <= EPSILON {
            return Plan::Evict(Vec::new(), String::new());
        }
        let residents = self.residents(target, now);
        let room = Room { now, preempt, needed: needed - EPSILON, target };
        if let Some(chosen) = self.policy.choose_victims(&residents, &room) {
            // A policy's choice is checked: only loaded, unpinned residents
            // other than the target, each once, and enough of them.
            let mut victims: Vec<ModelId> = Vec::new();
            for &(v, _) in &chosen {
                if residents.iter().any(|r| r.model == v && !r.pinned) && !victims.contains(&v) {
                    victims.push(v);
                }
            }
            let freed: f64 = victims.iter().map(|&v| self.size(v)).sum();
            if freed >= room.needed {
                let why: Vec<String> = chosen.iter().map(|(v, why)| format!("{} ({why})", self.name(*v))).collect();
                return Plan::Evict(victims, why.join(", "));
            }
        }
        // Would the protected ones do, once their window ends?
        let movable: f64 = residents.iter().filter(|r| !r.pinned).map(|r| r.size).sum();
        let until = residents.iter().filter_map(|r| r.protected_until).min();
        match until {
            Some(until) if movable >= needed - EPSILON => Plan::HoldUntil(until),
            _ => Plan::NoRoom(self.no_room(target)),
        }
    }

    /// Says once per model if its wait bound cannot be met: shorter than a
    /// round of the switches the recent load implies (a wake of every
    /// other model that had waiters lately, at its measured cost).
    pub(super) fn check_feasible(&mut self, now: Time) {
        let recently_asked =
            |m: &super::Model| m.last_asked.is_some_and(|at| now.since(at) <= super::policy::RECENT * 4);
        let cycle: Duration =
            (0..self.models.len()).filter(|&m| recently_asked(&self.models[m])).filter_map(|m| self.wake_cost(m)).sum();
        for m in 0..self.models.len() {
            let bound = self.settings.models.get(m).map_or(super::DEFAULT_MAX_WAIT, |s| s.max_wait);
            let own = self.wake_cost(m).unwrap_or_default();
            let round = cycle.saturating_sub(own);
            if recently_asked(&self.models[m]) && bound < round && !self.models[m].infeasible {
                self.models[m].infeasible = true;
                self.report(super::Report::Infeasible { model: m, max_wait: bound, cycle: round });
            }
        }
    }

    fn no_room(&self, target: Option<ModelId>) -> String {
        let pinned: f64 =
            (0..self.models.len()).filter(|&m| self.pinned(m) && self.models[m].loaded).map(|m| self.size(m)).sum();
        match target {
            Some(t) => format!(
                "model `{}` (size {}) does not fit in the capacity ({}) beside the pinned models (size {pinned})",
                self.name(t),
                self.size(t),
                self.capacity()
            ),
            None => format!("the pinned models (size {pinned}) exceed the capacity ({})", self.capacity()),
        }
    }
}
