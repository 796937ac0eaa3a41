//! The recent past, for `/llmux/status` and the dashboard: bounded rings of
//! the last model state changes, the last switches (with their phase
//! times) and the last hook errors.
//!
//! Written by the switch task only (a state change, a switch's end, a
//! failed hook: the cold path), read by `/llmux/status`. Each ring keeps
//! its newest entries and drops the oldest, so memory stays bounded
//! however long llmux runs. Times are the switch protocol's [`Time`]s;
//! [`History::unix_ms`] turns them into wall-clock milliseconds for
//! clients.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock::{Clock, Time};
use crate::machine::{ModelState, SwitchRecord};

/// State changes kept: a few hundred switches' worth.
pub const STATES_KEPT: usize = 512;
/// Switches kept.
pub const SWITCHES_KEPT: usize = 100;
/// Hook errors kept.
pub const HOOK_ERRORS_KEPT: usize = 20;

/// A model's state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// When.
    pub at: Time,
    /// The model's slot.
    pub model: usize,
    /// Its new state.
    pub state: ModelState,
}

/// A hook that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookFailure {
    /// When it ended.
    pub at: Time,
    /// The model's slot.
    pub model: usize,
    /// Which hook.
    pub hook: &'static str,
    /// How it failed.
    pub error: String,
}

/// The rings, and where the protocol's time started on the wall clock.
#[derive(Debug)]
pub struct History {
    /// Unix milliseconds at the clock's [`Time::ZERO`].
    epoch_unix_ms: u64,
    states: VecDeque<StateChange>,
    switches: VecDeque<SwitchRecord>,
    hook_errors: VecDeque<HookFailure>,
}

impl History {
    /// Empty rings for times read from `clock`.
    pub fn new(clock: &Clock) -> History {
        let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let since_epoch = Duration::from_micros(clock.now().micros());
        History {
            epoch_unix_ms: millis(unix_now.saturating_sub(since_epoch)),
            states: VecDeque::new(),
            switches: VecDeque::new(),
            hook_errors: VecDeque::new(),
        }
    }

    /// Wall-clock milliseconds (Unix) of `time`.
    pub fn unix_ms(&self, time: Time) -> u64 {
        self.epoch_unix_ms.saturating_add(time.micros() / 1000)
    }

    /// Notes a state change.
    pub fn state_changed(&mut self, change: StateChange) {
        push_bounded(&mut self.states, change, STATES_KEPT);
    }

    /// Notes a switch that ended (done, abandoned or failed).
    pub fn switch_ended(&mut self, record: SwitchRecord) {
        push_bounded(&mut self.switches, record, SWITCHES_KEPT);
    }

    /// Notes a failed hook.
    pub fn hook_failed(&mut self, failure: HookFailure) {
        push_bounded(&mut self.hook_errors, failure, HOOK_ERRORS_KEPT);
    }

    /// The state changes kept, oldest first.
    pub fn states(&self) -> impl Iterator<Item = &StateChange> {
        self.states.iter()
    }

    /// The switches kept, oldest first.
    pub fn switches(&self) -> impl Iterator<Item = &SwitchRecord> {
        self.switches.iter()
    }

    /// The hook errors kept, oldest first.
    pub fn hook_errors(&self) -> impl Iterator<Item = &HookFailure> {
        self.hook_errors.iter()
    }
}

fn push_bounded<T>(ring: &mut VecDeque<T>, item: T, kept: usize) {
    if ring.len() == kept {
        ring.pop_front();
    }
    ring.push_back(item);
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_keep_the_newest_entries_only() {
        let clock = Clock::new();
        let mut h = History::new(&clock);
        for i in 0..STATES_KEPT + 10 {
            h.state_changed(StateChange { at: Time::from_micros(i as u64), model: i, state: ModelState::Active });
        }
        assert_eq!(h.states().count(), STATES_KEPT);
        assert_eq!(h.states().next().map(|c| c.model), Some(10));
        for i in 0..HOOK_ERRORS_KEPT + 1 {
            h.hook_failed(HookFailure { at: Time::ZERO, model: i, hook: "wake", error: String::new() });
        }
        assert_eq!(h.hook_errors().count(), HOOK_ERRORS_KEPT);
        assert_eq!(h.hook_errors().last().map(|e| e.model), Some(HOOK_ERRORS_KEPT));
    }

    #[test]
    fn protocol_times_map_to_the_wall_clock() {
        let clock = Clock::new();
        let h = History::new(&clock);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64;
        let t = h.unix_ms(clock.now());
        assert!(t.abs_diff(now) < 1000, "{t} vs {now}");
        assert_eq!(h.unix_ms(Time::from_micros(5_000_000)) - h.unix_ms(Time::ZERO), 5000);
    }
}
