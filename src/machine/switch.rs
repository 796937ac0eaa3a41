//! One switch, stage by stage: gate and drain the victims, sleep them,
//! wake the target, confirm it with `alive`, publish it. A switch with no
//! target (idle sleep, an operator's sleep, a removed model) stops after
//! the sleep.

use std::time::Duration;

use super::{
    Action, HookKind, HookResult, Machine, ModelId, ModelState, Purpose, Report, Stage, Switch, SwitchRecord,
    SwitchResult, Time, Why, BACKOFF_MAX, CONFIRM_PAUSE_MAX, CONFIRM_PAUSE_START,
};

impl Machine {
    /// Starts a switch to `target` (or a sleep of `victims` with none).
    pub(super) fn start_switch(&mut self, why: Why, target: Option<ModelId>, victims: Vec<ModelId>, now: Time) {
        self.start_switch_for(why, why.as_str(), target, victims, now);
    }

    /// Starts a switch, saying why this target (`reason`).
    pub(super) fn start_switch_for(
        &mut self,
        why: Why,
        reason: &'static str,
        target: Option<ModelId>,
        victims: Vec<ModelId>,
        now: Time,
    ) {
        let from = victims.iter().copied().find(|&v| self.models[v].published).or(victims.first().copied());
        let miss = target.and_then(|t| self.models[t].oldest()).unwrap_or(now);
        let record = SwitchRecord {
            from,
            to: target.unwrap_or(from.unwrap_or(0)),
            victims: victims.clone(),
            reason,
            miss,
            started: now,
            drain: Duration::ZERO,
            sleep: None,
            wake_started: None,
            wake: None,
            alive: Duration::ZERO,
            published: None,
            result: SwitchResult::Failed,
        };
        if let Some(to) = target {
            self.report(Report::SwitchStarted { from, to, reason: record.reason });
        }
        for &v in &victims {
            if self.models[v].serving() {
                self.models[v].gated = true;
                self.models[v].drained = false;
                self.emit(Action::Gate(v));
                self.set_state(v, ModelState::Draining);
            }
        }
        let deadline = self.settings.drain_timeout.map(|t| now + t);
        let stage = Stage::Draining { deadline };
        self.switch = Some(Switch { why, target, victims, stage, stage_started: now, record });
        self.progress(now);
    }

    /// Moves the switch on as far as it can go now.
    pub(super) fn progress(&mut self, now: Time) {
        // Shutdown starts nothing new: a drain that ends or a sleep that
        // finishes must not start the next stage's hooks (a wake, a
        // sleep of the model the next start should adopt, an alive retry).
        // `advance` already stops here; `on_gated` and `on_hook_done` call
        // this directly (found by the shutdown table tests).
        if self.shutting_down {
            return;
        }
        loop {
            let Some(switch) = &self.switch else { return };
            let advanced = match switch.stage {
                Stage::Draining { deadline } => self.step_drain(deadline, now),
                Stage::Sleeping => self.step_sleep(now),
                Stage::Waking | Stage::Confirming { .. } => self.step_confirm(now),
            };
            if !advanced {
                return;
            }
        }
    }

    /// The drain: abandoned if nobody waits for the target, over when
    /// every victim is drained (or cut at the deadline).
    fn step_drain(&mut self, deadline: Option<Time>, now: Time) -> bool {
        let Some(switch) = &self.switch else { return false };
        let victims = switch.victims.clone();
        if switch.why == Why::Miss && switch.target.is_some_and(|t| self.models[t].queue.is_empty()) {
            self.abandon(now);
            return false;
        }
        let waiting = |m: &super::Model| m.published && !m.drained;
        let mut drained = !self.settings.drain_before_switch || !victims.iter().any(|&v| waiting(&self.models[v]));
        if !drained && deadline.is_some_and(|d| now >= d) {
            let undrained: Vec<ModelId> = victims.into_iter().filter(|&v| waiting(&self.models[v])).collect();
            for v in undrained {
                self.emit(Action::Cut(v));
            }
            drained = true;
        }
        if drained {
            let took = self.next_stage(Stage::Sleeping, now);
            self.phase_done("drain", took);
            if let Some(s) = self.switch.as_mut() {
                s.record.drain = took;
            }
        }
        drained
    }

    /// The sleep: every loaded victim with no hook running is unpublished
    /// and slept; over when none is loaded.
    fn step_sleep(&mut self, now: Time) -> bool {
        let Some(switch) = &self.switch else { return false };
        let victims = switch.victims.clone();
        let target = switch.target;
        for &v in &victims {
            let m = &self.models[v];
            if m.loaded && m.hook.is_none() && m.state != ModelState::Sleeping {
                self.unpublish(v);
                self.set_state(v, ModelState::Sleeping);
                self.run_hook(v, HookKind::Sleep, Purpose::Sleep);
            }
        }
        if victims.iter().any(|&v| self.models[v].loaded) {
            return false;
        }
        if let Some(t) = target.filter(|&t| !self.fits(t)) {
            // Something else still holds the room (a start-up leftover
            // being slept): wait for it, or fail if nothing will free it.
            if self.models.iter().any(|m| matches!(m.hook, Some((HookKind::Sleep, _)))) {
                return false;
            }
            let reason = self.no_room_now(t);
            self.fail_target(t, reason, now);
            self.finish(SwitchResult::Failed, now);
            return false;
        }
        // The target's own hook (a failed wake's clean-up sleep that
        // outlasted the backoff, a start-up leftover's sleep) must end
        // before its wake starts: one hook per model at a time. Found by
        // a_wake_never_starts_while_the_targets_clean_up_sleep_runs.
        if target.is_some_and(|t| self.models[t].hook.is_some()) {
            return false;
        }
        let took = self.next_stage(Stage::Waking, now);
        if let Some(s) = self.switch.as_mut() {
            s.record.sleep = Some(took);
        }
        self.phase_done("sleep", took);
        match target {
            Some(t) => self.start_wake(t, now),
            None => self.finish(SwitchResult::Done, now),
        }
        false
    }

    /// Confirming: a retry of `alive` when its pause is over; the wake
    /// timeout's end fails the switch.
    fn step_confirm(&mut self, now: Time) -> bool {
        let Some(switch) = self.switch.as_mut() else { return false };
        let (Some(target), Stage::Confirming { deadline, pause, retry_at: Some(at) }) = (switch.target, switch.stage)
        else {
            return false;
        };
        if at > now {
            return false;
        }
        if now >= deadline {
            self.wake_failed(target, self.confirm_timeout_reason(target), now);
            return false;
        }
        switch.stage = Stage::Confirming { deadline, pause, retry_at: None };
        self.run_hook(target, HookKind::Alive, Purpose::Confirm);
        false
    }

    fn confirm_timeout_reason(&self, target: ModelId) -> String {
        let secs = self.settings.models.get(target).map_or(0.0, |s| s.wake_timeout.as_secs_f64());
        format!(
            "wake hook of model `{}` succeeded but its alive hook did not pass within the wake timeout ({secs}s)",
            self.name(target)
        )
    }

    /// Enters `stage`; returns how long the one left took.
    fn next_stage(&mut self, stage: Stage, now: Time) -> Duration {
        let Some(switch) = self.switch.as_mut() else { return Duration::ZERO };
        let took = now.since(switch.stage_started);
        switch.stage = stage;
        switch.stage_started = now;
        took
    }

    fn phase_done(&mut self, phase: &'static str, took: Duration) {
        let Some(switch) = &self.switch else { return };
        if let (Some(to), Why::Miss) = (switch.target, switch.why) {
            let from = switch.record.from;
            self.report(Report::PhaseDone { from, to, phase, took });
        }
    }

    fn start_wake(&mut self, target: ModelId, now: Time) {
        if let Some(m) = self.models.get_mut(target) {
            m.loaded = true;
        }
        if let Some(s) = self.switch.as_mut() {
            s.record.wake_started = Some(now);
        }
        self.set_state(target, ModelState::Waking);
        self.run_hook(target, HookKind::Wake, Purpose::Wake);
    }

    /// Nobody waits for the target: the victims serve again, as they were.
    fn abandon(&mut self, now: Time) {
        let Some(switch) = &self.switch else { return };
        for v in switch.victims.clone() {
            if self.models[v].published && self.models[v].gated {
                self.models[v].gated = false;
                // An idle sleep's probe cleared `idle_due`: probe again
                // later, or the model never idles out (found by
                // an_abandoned_idle_sleep_is_probed_again_later).
                let idle_sleep = self.settings.models.get(v).and_then(|s| s.idle_sleep);
                let m = &mut self.models[v];
                if m.idle_due.is_none() && !m.probing {
                    m.idle_due = idle_sleep.map(|i| now + i);
                }
                self.emit(Action::Ungate(v));
                self.set_state(v, ModelState::Active);
                self.report(Report::Abandoned { model: v });
            }
        }
        self.finish(SwitchResult::Abandoned, now);
    }

    /// Ends the switch: its record (a switch to a target) or the
    /// operator's answer.
    pub(super) fn finish(&mut self, result: SwitchResult, now: Time) {
        let Some(mut switch) = self.switch.take() else { return };
        switch.record.result = result;
        match switch.why {
            Why::Miss => {
                if result == SwitchResult::Done {
                    switch.record.published = Some(now);
                    self.costs.insert((switch.record.from, switch.record.to), switch.record.cost());
                    self.check_feasible(now);
                }
                self.policy.switch_finished(&switch.record);
                self.emit(Action::SwitchDone(switch.record));
            }
            Why::Operator(id) => {
                let failed = switch.victims.iter().find(|&&v| self.models[v].loaded);
                let answer = match (result, failed) {
                    (SwitchResult::Done, _) => Ok(switch.victims.clone()),
                    (_, failed) => Err(failed.map(|&v| self.models[v].sleep_failure.clone()).unwrap_or_default()),
                };
                self.emit(Action::CommandDone { id, result: answer });
            }
            Why::Idle | Why::Removed | Why::OverBudget | Why::Answered => {}
        }
    }

    /// A drain that was waiting on `model`'s in-flight requests.
    pub(super) fn on_gated(&mut self, model: ModelId, in_flight: usize, now: Time) {
        let Some(m) = self.models.get_mut(model) else { return };
        if !m.gated {
            return;
        }
        if in_flight == 0 {
            m.drained = true;
        } else if self.switch.as_ref().is_some_and(|s| s.why == Why::Idle && s.victims.contains(&model)) {
            // A request slipped in as the idle model was gated: it is not
            // idle after all.
            self.abandon(now);
            return;
        }
        self.progress(now);
    }

    pub(super) fn on_drained(&mut self, model: ModelId) {
        if let Some(m) = self.models.get_mut(model).filter(|m| m.gated) {
            m.drained = true;
        }
    }

    /// The result of a hook that belongs to the switch.
    pub(super) fn switch_hook_done(
        &mut self,
        model: ModelId,
        purpose: Purpose,
        result: HookResult,
        detail: String,
        took: Duration,
        now: Time,
    ) {
        match purpose {
            Purpose::Sleep => self.sleep_done(model, result, detail),
            Purpose::AfterSleepFailed => self.after_sleep_failed(model, result, now),
            Purpose::Wake => self.wake_done(model, result, detail, took, now),
            Purpose::Confirm => self.confirm_done(model, result, took, now),
            _ => {}
        }
    }

    fn sleep_done(&mut self, model: ModelId, result: HookResult, detail: String) {
        if result == HookResult::Success {
            self.models[model].loaded = false;
            self.models[model].stuck = false;
            self.set_state(model, ModelState::Asleep);
            let why = self.switch.as_ref().map_or("start-up", |s| s.why.as_str());
            self.report(Report::Asleep { model, why });
            return;
        }
        self.models[model].sleep_failure = format!("sleep hook of model `{}` {detail}", self.name(model));
        if result == HookResult::Cut {
            return;
        }
        self.run_hook(model, HookKind::Alive, Purpose::AfterSleepFailed);
    }

    /// A victim's sleep failed and `alive` answered.
    fn after_sleep_failed(&mut self, model: ModelId, result: HookResult, now: Time) {
        let reason = self.models[model].sleep_failure.clone();
        if result == HookResult::Failed {
            // Down: nothing is loaded any more, the switch goes on.
            self.forget_down(model, format!("{reason}; its alive hook says it is down"));
            return;
        }
        let in_switch = self.switch.as_ref().filter(|s| s.victims.contains(&model)).map(|s| s.target);
        let Some(target) = in_switch else {
            // A start-up leftover or a failed wake's clean-up: still
            // loaded; the next switch sleeps it first.
            self.set_state(model, ModelState::Failed);
            self.report(Report::Failed { model, reason });
            return;
        };
        if target.is_some() && self.settings.continue_on_sleep_failure {
            self.models[model].loaded = false;
            self.set_state(model, ModelState::Failed);
            self.report(Report::Failed { model, reason: format!("{reason}; switching anyway (on_sleep_failure)") });
            return;
        }
        self.keep_after_failed_sleep(model, target, reason, now);
    }

    /// A failed sleep of a model that still answers: it serves again (a
    /// fresh incarnation) unless a reload removed it, and the switch fails.
    fn keep_after_failed_sleep(&mut self, model: ModelId, target: Option<ModelId>, reason: String, now: Time) {
        let configured = self.settings.models.get(model).is_some_and(|s| s.configured);
        // Another victim not slept yet (still published, gated) serves
        // again as it was; this one stays loaded for the next switch.
        let victims = self.switch.as_ref().map(|s| s.victims.clone()).unwrap_or_default();
        let gated = victims.into_iter().find(|&v| v != model && self.models[v].published && self.models[v].gated);
        if let Some(other) = gated {
            self.models[other].gated = false;
            self.emit(Action::Ungate(other));
            self.set_state(other, ModelState::Active);
            self.models[model].stuck = !configured;
            self.set_state(model, ModelState::Failed);
        } else if configured {
            self.publish(model, now);
        } else {
            self.models[model].stuck = true;
            self.set_state(model, ModelState::Failed);
        }
        self.report(Report::Failed { model, reason: reason.clone() });
        if let Some(t) = target {
            let name = self.name(model).to_owned();
            self.fail_target(t, format!("{reason}; `{name}` is still active"), now);
        }
        self.finish(SwitchResult::Failed, now);
    }

    fn wake_done(&mut self, model: ModelId, result: HookResult, detail: String, took: Duration, now: Time) {
        if let Some(s) = self.switch.as_mut() {
            s.record.wake = Some(took);
        }
        if result != HookResult::Success {
            self.wake_failed(model, format!("wake hook of model `{}` {detail}", self.name(model)), now);
            return;
        }
        let timeout = self.settings.models.get(model).map_or(Duration::ZERO, |s| s.wake_timeout);
        // The wake timeout counts from the wake hook's spawn.
        let deadline = now + timeout.saturating_sub(took);
        if let Some(s) = self.switch.as_mut() {
            s.stage = Stage::Confirming { deadline, pause: CONFIRM_PAUSE_START, retry_at: None };
        }
        self.run_hook(model, HookKind::Alive, Purpose::Confirm);
    }

    fn confirm_done(&mut self, model: ModelId, result: HookResult, took: Duration, now: Time) {
        let Some(switch) = self.switch.as_mut() else { return };
        switch.record.alive += took;
        let Stage::Confirming { deadline, pause, .. } = switch.stage else { return };
        if result == HookResult::Success {
            let waited = now.since(switch.record.miss);
            let wake = switch.record.wake.unwrap_or_default() + switch.record.alive;
            self.phase_done("wake", wake);
            self.publish(model, now);
            self.report(Report::Activated { model, waited });
            self.finish(SwitchResult::Done, now);
        } else if result == HookResult::Cut || now + pause >= deadline {
            self.wake_failed(model, self.confirm_timeout_reason(model), now);
        } else {
            let next = (pause * 2).min(CONFIRM_PAUSE_MAX);
            switch.stage = Stage::Confirming { deadline, pause: next, retry_at: Some(now + pause) };
        }
    }

    /// The target's wake failed: its waiters get 503, it backs off, and a
    /// half-started backend is put to sleep (it stays loaded until then).
    fn wake_failed(&mut self, target: ModelId, reason: String, now: Time) {
        if let Some(s) = self.switch.as_ref().filter(|s| s.why == Why::Miss) {
            let (from, wake) = (s.record.from, s.record.wake.unwrap_or_default() + s.record.alive);
            self.report(Report::PhaseDone { from, to: target, phase: "wake", took: wake });
        }
        self.fail_target(target, reason, now);
        self.finish(SwitchResult::Failed, now);
        if !self.shutting_down && self.models[target].hook.is_none() {
            self.run_hook(target, HookKind::Sleep, Purpose::CleanUp);
        }
    }

    /// Answers `target`'s waiters 503 and starts its backoff.
    pub(super) fn fail_target(&mut self, target: ModelId, reason: String, now: Time) {
        let m = &mut self.models[target];
        let until = now + m.backoff_next;
        m.backoff_until = Some(until);
        m.backoff_next = (m.backoff_next * 2).min(BACKOFF_MAX);
        self.set_state(target, ModelState::Failed);
        self.report(Report::Failed { model: target, reason: reason.clone() });
        self.emit(Action::Fail { model: target, reason, until });
    }

    fn no_room_now(&self, target: ModelId) -> String {
        format!(
            "model `{}` does not fit: {} of {} is held by models that could not be slept",
            self.name(target),
            self.used_except(Some(target)),
            self.capacity()
        )
    }

    /// A model's name, for messages.
    pub(super) fn name(&self, model: ModelId) -> &str {
        self.settings.names.get(model).map_or("?", String::as_str)
    }
}
