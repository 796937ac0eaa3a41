//! Everything around switches: start-up adoption, choosing the next switch,
//! idle sleep, `alive` checks, operators' commands, reloads and shutdown.

use std::time::Duration;

use super::capacity::Plan;
use super::{
    Action, Command, Event, HookKind, HookResult, Machine, Model, ModelId, ModelState, Purpose, Report, Settings, Why,
    IDLE_REPROBE,
};
use crate::clock::Time;

impl Machine {
    /// [`Event::Start`]: every configured model's `alive` at once.
    pub(super) fn start(&mut self) {
        let order = self.settings.order.clone();
        self.start_order = order.clone();
        self.starting = Some(vec![None; self.models.len()]);
        for model in order {
            self.run_hook(model, HookKind::Alive, Purpose::Adopt);
        }
        if !self.hooks_running() {
            self.starting = None;
        }
    }

    /// A start-up `alive` answered; once all have, adopt and sleep.
    fn adopt_checked(&mut self, model: ModelId, result: HookResult, now: Time) {
        let Some(results) = self.starting.as_mut() else { return };
        if let Some(slot) = results.get_mut(model) {
            *slot = Some(result);
        }
        // The order of the start: a reload meanwhile changes nothing here.
        let order = self.start_order.clone();
        if order.iter().any(|&m| results.get(m).is_some_and(Option::is_none)) {
            return;
        }
        let results = self.starting.take().unwrap_or_default();
        let up = |m: ModelId| results.get(m).copied().flatten();
        for &m in order.iter().filter(|&&m| up(m) == Some(HookResult::Failed)) {
            self.report(Report::Down(m));
        }
        // Every model that is up is adopted while it fits, in config order.
        let mut adopted = Vec::new();
        for &m in order.iter().filter(|&&m| up(m) == Some(HookResult::Success)) {
            if self.fits(m) {
                self.publish(m, now);
                adopted.push(m);
            }
        }
        self.report(if adopted.is_empty() { Report::NoneAdopted } else { Report::Adopted(adopted.clone()) });
        for m in order {
            let loaded = matches!(up(m), Some(HookResult::Success | HookResult::Unknown));
            if !adopted.contains(&m) && loaded && !self.shutting_down {
                // Up or unknown: it may hold memory until its sleep succeeds.
                self.models[m].loaded = true;
                self.set_state(m, ModelState::Sleeping);
                self.run_hook(m, HookKind::Sleep, Purpose::Sleep);
            }
        }
        if let Some(p) = self.settings.preload.filter(|p| !adopted.contains(p)) {
            self.emit(Action::Preload(p));
        }
    }

    /// Routes a hook's result by why it ran.
    pub(super) fn on_hook_done(
        &mut self,
        model: ModelId,
        kind: HookKind,
        result: HookResult,
        detail: String,
        took: Duration,
        now: Time,
    ) {
        let Some(m) = self.models.get_mut(model) else { return };
        let purpose = match m.hook.take() {
            Some((running, purpose)) if running == kind => purpose,
            other => {
                m.hook = other;
                return;
            }
        };
        match purpose {
            Purpose::Adopt => self.adopt_checked(model, result, now),
            Purpose::Check => self.checked(model, result, now),
            Purpose::CleanUp => self.cleaned_up(model, result),
            Purpose::AfterSleepFailed | Purpose::Sleep | Purpose::Wake | Purpose::Confirm => {
                self.switch_hook_done(model, purpose, result, detail, took, now)
            }
        }
        self.progress(now);
    }

    /// A periodic or refused-connection `alive` answered. Only a non-zero
    /// exit means down; a timeout is unknown and changes nothing.
    fn checked(&mut self, model: ModelId, result: HookResult, now: Time) {
        let interval = self.settings.models.get(model).and_then(|s| s.alive_interval);
        let m = &mut self.models[model];
        let suspect = std::mem::take(&mut m.suspect);
        let why = if suspect { "the backend refused a connection" } else { "the periodic alive check failed" };
        match result {
            HookResult::Failed if m.published => {
                let reason = format!("{why} and its alive hook failed");
                self.forget_down(model, reason);
            }
            HookResult::Unknown => self.report(Report::AliveUnknown(model)),
            _ => {}
        }
        self.models[model].alive_due = None;
        if self.models[model].published {
            // Counted from the check's end, as the interval always was:
            // `now`, not `last_now`, which is still the previous event's
            // time here (`advance` sets it after `on`). Found by
            // the_periodic_alive_check_runs_every_interval_from_the_last_checks_end.
            self.models[model].alive_due = interval.map(|i| now + i);
        }
        if suspect {
            self.emit(Action::Verdict(model));
        }
    }

    /// A failed wake's clean-up sleep ended.
    fn cleaned_up(&mut self, model: ModelId, result: HookResult) {
        match result {
            HookResult::Success => self.models[model].loaded = false,
            HookResult::Cut => {}
            _ => self.run_hook(model, HookKind::Alive, Purpose::AfterSleepFailed),
        }
    }

    /// The answer to a probe of `model`'s idle time.
    pub(super) fn on_idle(&mut self, model: ModelId, idle: Option<Duration>, now: Time) {
        let timeout = self.settings.models.get(model).and_then(|s| s.idle_sleep);
        let Some(m) = self.models.get_mut(model) else { return };
        m.probing = false;
        let (Some(timeout), true) = (timeout, m.serving()) else { return };
        match idle {
            Some(idle) if idle >= timeout && self.switch.is_none() && m.hook.is_none() => {
                self.report(Report::IdleSleep(model));
                self.start_switch(Why::Idle, None, vec![model], now);
            }
            Some(idle) if idle < timeout => m.idle_due = Some(now + (timeout - idle)),
            _ => m.idle_due = Some(now + timeout.min(IDLE_REPROBE)),
        }
    }

    /// A request found `model`'s backend refusing connections: check it
    /// once (a check already running gives the verdict).
    pub(super) fn on_refused(&mut self, model: ModelId) {
        let Some(m) = self.models.get_mut(model) else { return };
        if !m.serving() {
            // Already on its way out: the request queues again.
            self.emit(Action::Verdict(model));
            return;
        }
        m.suspect = true;
        match m.hook {
            None if !self.shutting_down => self.run_hook(model, HookKind::Alive, Purpose::Check),
            Some((HookKind::Alive, _)) => {}
            _ => {
                m.suspect = false;
                self.emit(Action::Verdict(model));
            }
        }
    }

    /// [`Event::Reload`]: new settings; new slots get a model each.
    pub(super) fn reload(&mut self, settings: Settings) {
        while self.models.len() < settings.models.len() {
            self.models.push(Model::new());
        }
        self.settings = settings;
    }

    /// [`Event::Shutdown`]: pending commands are answered; nothing new
    /// starts; running hooks finish (or are cut by the executor).
    pub(super) fn shut_down(&mut self) {
        self.shutting_down = true;
        if let Some(switch) = self.switch.as_mut() {
            if let Why::Operator(id) = switch.why {
                // Its sleep may still finish; the operator is answered now.
                switch.why = Why::Answered;
                self.emit(Action::CommandDone { id, result: Err("shutting down".to_owned()) });
            }
        }
        for command in std::mem::take(&mut self.commands) {
            let Command::Sleep { id, .. } = command;
            self.emit(Action::CommandDone { id, result: Err("shutting down".to_owned()) });
        }
    }

    /// After every event: timers that are due, then the next thing to do
    /// if nothing is under way.
    pub(super) fn advance(&mut self, now: Time) {
        self.last_now = now;
        if self.starting.is_some() || self.shutting_down {
            return;
        }
        self.progress(now);
        self.run_checks(now);
        if self.switch.is_none() {
            self.next_switch(now);
        }
    }

    /// Periodic `alive` checks and idle probes that are due.
    fn run_checks(&mut self, now: Time) {
        for model in 0..self.models.len() {
            let m = &mut self.models[model];
            if !m.serving() || m.hook.is_some() {
                continue;
            }
            if m.alive_due.is_some_and(|due| due <= now) {
                m.alive_due = None;
                self.run_hook(model, HookKind::Alive, Purpose::Check);
            } else if !m.probing && m.idle_due.is_some_and(|due| due <= now) {
                m.probing = true;
                m.idle_due = None;
                self.emit(Action::ProbeIdle(model));
            }
        }
    }

    /// With nothing under way: a command, a removed model to sleep, or the
    /// policy's next switch.
    fn next_switch(&mut self, now: Time) {
        self.held_until = None;
        // A command with nothing to sleep is answered at once and starts
        // nothing: go on with the next command, then the policy (returning
        // after it left the queued models waiting until some other event;
        // found by random_sequences_keep_the_protocols_invariants_and_settle).
        while self.switch.is_none() {
            let Some(Command::Sleep { id, model, all }) = self.commands.pop_front() else { break };
            self.operator_sleep(id, model, all, now);
        }
        if self.switch.is_some() {
            return;
        }
        let removed = (0..self.models.len()).find(|&i| {
            let m = &self.models[i];
            m.loaded && !m.stuck && m.hook.is_none() && !self.settings.models.get(i).is_some_and(|s| s.configured)
        });
        if let Some(model) = removed {
            return self.start_switch(Why::Removed, None, vec![model], now);
        }
        if self.used_staying() > self.capacity() + 1e-9 {
            return self.shrink_to_budget(now);
        }
        // A serving model first admits the requests that queued for it.
        if self.models.iter().any(|m| m.serving() && !m.queue.is_empty()) {
            return;
        }
        let Some((target, reason, preempt)) = self.choose(now) else { return };
        match self.plan_room(Some(target), preempt, now) {
            Plan::Evict(victims, why) => {
                if !victims.is_empty() {
                    self.report(Report::Evicting { to: Some(target), victims: victims.clone(), why });
                }
                self.start_switch_for(Why::Miss, reason, Some(target), victims, now);
            }
            Plan::HoldUntil(until) => self.held_until = Some(until),
            Plan::NoRoom(reason) => self.fail_target(target, reason, now),
        }
    }

    /// A reload shrank the budget (or grew sizes): evict down to it at once.
    fn shrink_to_budget(&mut self, now: Time) {
        match self.plan_room(None, false, now) {
            Plan::Evict(victims, why) if !victims.is_empty() => {
                self.report(Report::Evicting { to: None, victims: victims.clone(), why });
                self.start_switch(Why::OverBudget, None, victims, now);
            }
            Plan::HoldUntil(until) => self.held_until = Some(until),
            _ => {}
        }
    }

    /// An operator's sleep: `model`, or every resident (the pinned ones
    /// only with `all`).
    fn operator_sleep(&mut self, id: u64, model: Option<ModelId>, all: bool, now: Time) {
        let victims: Vec<ModelId> = match model {
            Some(m) => vec![m].into_iter().filter(|&m| self.models.get(m).is_some_and(|m| m.loaded)).collect(),
            None => (0..self.models.len())
                .filter(|&m| {
                    self.models[m].published && (all || !self.settings.models.get(m).is_some_and(|s| s.pinned))
                })
                .collect(),
        };
        if victims.is_empty() {
            self.emit(Action::CommandDone { id, result: Ok(Vec::new()) });
        } else {
            self.start_switch(Why::Operator(id), None, victims, now);
        }
    }
}

impl Event {
    /// A hook's result, as the executor reports it (a helper for tests and
    /// the simulator).
    pub fn hook(model: ModelId, kind: HookKind, result: HookResult, took: Duration) -> Event {
        let detail = match result {
            HookResult::Success => "succeeded",
            HookResult::Failed => "exited with status 1",
            HookResult::Unknown => "timed out and was killed",
            HookResult::Cut => "was killed at the end of the shutdown grace",
        };
        Event::HookDone { model, kind, result, detail: detail.to_owned(), took }
    }
}
