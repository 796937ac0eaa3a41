//! One test (or a few) per rule of README's "The switch protocol", each
//! checking what is issued, in which order and at which virtual time.

use std::time::Duration;

use super::script::{effects, secs, time, Setup, A, B, C};
use crate::machine::HookKind::{Alive, Sleep, Wake};
use crate::machine::HookResult::{Failed, Success, Unknown};
use crate::machine::{Action, Event, ModelId, ModelState, Report, SwitchResult, Time, BACKOFF_MAX};

// Start-up.

#[test]
fn startup_checks_every_model_at_once_and_adopts_the_first_up_in_config_order() {
    let mut h = Setup::new(3).build();
    h.event(Event::Start);
    assert_eq!(h.effects(), [Action::RunHook(A, Alive), Action::RunHook(B, Alive), Action::RunHook(C, Alive)]);
    // A request arriving during start-up waits: nothing starts.
    h.at(0.05).queue(A);
    assert_eq!(h.effects(), []);
    h.at(0.1).hook_done(C, Alive, Success, secs(0.1));
    assert_eq!(h.effects(), [], "nothing is decided before every alive answered");
    h.hook_done(A, Alive, Failed, secs(0.1));
    h.at(0.2).hook_done(B, Alive, Success, secs(0.2));
    // b is first in config order among the models that are up; c, also up,
    // is put to sleep; then the request waiting for a starts a switch.
    assert_eq!(h.effects(), [Action::Publish(B), Action::RunHook(C, Sleep), Action::Gate(B)]);
    assert!(h.reported(&Report::Adopted(vec![B])));
    assert!(h.reported(&Report::Down(A)) && !h.reported(&Report::Down(C)));
    assert!(h.m.is_loaded(B) && h.m.is_loaded(C) && !h.m.is_loaded(A));
    assert_eq!(h.state(C), ModelState::Sleeping);
}

#[test]
fn startup_sleeps_every_other_model_before_any_wake() {
    let mut h = Setup::new(3).build();
    h.event(Event::Start);
    h.hook_done(A, Alive, Failed, secs(0.1));
    h.hook_done(B, Alive, Success, secs(0.1));
    h.hook_done(C, Alive, Unknown, secs(0.1));
    // Unknown counts as possibly up: c is slept too.
    assert_eq!(h.effects(), [Action::Publish(B), Action::RunHook(C, Sleep)]);
    h.at(1.0).queue(A);
    assert_eq!(h.effects(), [Action::Gate(B)]);
    h.gated(B, 0);
    assert_eq!(h.effects(), [Action::Unpublish(B), Action::RunHook(B, Sleep)]);
    h.at(2.0).hook_done(B, Sleep, Success, secs(1.0));
    assert_eq!(h.effects(), [], "c's start-up sleep still runs: no wake yet");
    h.at(5.0).hook_done(C, Sleep, Success, secs(5.0));
    assert_eq!(h.effects(), [Action::RunHook(A, Wake)]);
    assert_eq!(h.when(&Action::RunHook(A, Wake)), time(5.0));
}

#[test]
fn startup_with_nothing_up_adopts_none() {
    let mut h = Setup::new(2).build();
    let actions = h.start(&[]);
    assert!(effects(&actions).is_empty());
    assert!(h.reported(&Report::NoneAdopted));
    assert!(h.reported(&Report::Down(A)) && h.reported(&Report::Down(B)));
    assert!(!h.m.is_loaded(A) && !h.m.is_loaded(B));
}

// A miss: drain, sleep, wake, confirm, publish.

#[test]
fn a_miss_drains_sleeps_wakes_confirms_and_publishes_in_that_order() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    h.at(1.0).queue(B);
    assert_eq!(h.effects(), [Action::Gate(A)]);
    assert_eq!(h.state(A), ModelState::Draining);
    h.gated(A, 2);
    assert_eq!(h.effects(), [], "two requests in flight: the drain waits");
    h.at(4.0).drained(A);
    assert_eq!(h.effects(), [Action::Unpublish(A), Action::RunHook(A, Sleep)]);
    h.at(6.0).hook_done(A, Sleep, Success, secs(2.0));
    assert_eq!(h.effects(), [Action::RunHook(B, Wake)]);
    assert!(!h.m.is_loaded(A) && h.m.is_loaded(B));
    h.at(16.0).hook_done(B, Wake, Success, secs(10.0));
    assert_eq!(h.effects(), [Action::RunHook(B, Alive)]);
    // alive fails a few times: retries after 25, 50, 100 ms.
    let mut retries = Vec::new();
    for _ in 0..3 {
        h.hook_done(B, Alive, Failed, Duration::ZERO);
        assert_eq!(h.effects(), []);
        let before = h.now;
        h.fire_timer();
        assert_eq!(h.effects(), [Action::RunHook(B, Alive)]);
        retries.push(h.now.since(before));
    }
    assert_eq!(retries, [secs(0.025), secs(0.05), secs(0.1)]);
    h.hook_done(B, Alive, Success, Duration::ZERO);
    assert_eq!(h.effects(), [Action::Publish(B)]);
    assert_eq!(h.state(B), ModelState::Active);

    // Order and time of every step.
    assert_eq!(h.when(&Action::Gate(A)), time(1.0));
    assert_eq!(h.when(&Action::RunHook(A, Sleep)), time(4.0));
    assert_eq!(h.when(&Action::RunHook(B, Wake)), time(6.0));
    assert_eq!(h.when(&Action::Publish(B)), time(16.175));
    let record = h.switches().pop().expect("a switch record");
    assert_eq!(record.result, SwitchResult::Done);
    assert_eq!((record.from, record.to), (Some(A), B));
    assert_eq!(record.drain, secs(3.0));
    assert_eq!(record.sleep, Some(secs(2.0)));
    assert_eq!(record.wake, Some(secs(10.0)));
    assert_eq!(record.published, Some(time(16.175)));
    assert!(h.reported(&Report::Activated { model: B, waited: secs(15.175) }));
}

#[test]
fn confirm_pauses_double_up_to_one_second() {
    let mut h = Setup::new(1).wake_timeout(A, 60.0).build();
    h.start(&[]);
    h.queue(A);
    h.at(1.0).hook_done(A, Wake, Success, secs(1.0));
    let mut pauses = Vec::new();
    for _ in 0..9 {
        h.hook_done(A, Alive, Failed, Duration::ZERO);
        let before = h.now;
        h.fire_timer();
        assert_eq!(h.effects(), [Action::RunHook(A, Alive)]);
        pauses.push(h.now.since(before).as_millis());
    }
    assert_eq!(pauses, [25, 50, 100, 200, 400, 800, 1000, 1000, 1000]);
}

#[test]
fn confirm_gives_up_at_the_wake_timeout_counted_from_the_wake_hooks_spawn() {
    let mut h = Setup::new(1).wake_timeout(A, 3.0).build();
    h.start(&[]);
    h.queue(A);
    // The wake hook took 2 s: 1 s of the wake timeout is left.
    h.at(2.0).hook_done(A, Wake, Success, secs(2.0));
    loop {
        h.hook_done(A, Alive, Failed, Duration::ZERO);
        if h.issued(&Action::RunHook(A, Sleep)) {
            break;
        }
        h.fire_timer();
        assert!(h.now < time(3.0), "an alive retry after the wake timeout");
    }
    assert!(h.now <= time(3.0));
    assert!(h.fail_until(A).len() == 1, "the waiters got 503");
    assert!(!h.issued(&Action::Publish(A)));
    assert_eq!(h.switches().pop().map(|r| r.result), Some(SwitchResult::Failed));
}

#[test]
fn requests_for_the_model_being_woken_join_that_switch() {
    let mut h = Setup::new(2).build();
    h.start(&[]);
    h.at(1.0).queue(B);
    assert_eq!(h.effects(), [Action::RunHook(B, Wake)]);
    h.at(2.0).queue(B);
    h.at(3.0).queue(B);
    assert_eq!(h.effects(), []);
    h.at(5.0).hook_done(B, Wake, Success, secs(4.0));
    h.hook_done(B, Alive, Success, Duration::ZERO);
    assert_eq!(h.count(&Action::RunHook(B, Wake)), 1);
    assert_eq!(h.count(&Action::Publish(B)), 1);
    assert!(h.reported(&Report::Activated { model: B, waited: secs(4.0) }), "waited from the first arrival");
}

#[test]
fn queued_models_are_served_in_the_order_of_their_first_arrival() {
    let mut h = Setup::new(3).build();
    h.start(&[]);
    h.at(1.0).queue(C);
    assert_eq!(h.effects(), [Action::RunHook(C, Wake)]);
    h.at(1.5).queue(B);
    h.at(1.6).queue(A);
    h.at(1.7).queue(B);
    h.at(3.0).hook_done(C, Wake, Success, secs(2.0));
    h.hook_done(C, Alive, Success, Duration::ZERO);
    h.admit_all(C);
    // b's first request (1.5) is older than a's (1.6).
    assert_eq!(h.effects(), [Action::Gate(C)]);
    h.gated(C, 0);
    h.at(4.0).hook_done(C, Sleep, Success, secs(1.0));
    assert_eq!(h.effects(), [Action::RunHook(B, Wake)]);
    h.at(5.0).hook_done(B, Wake, Success, secs(1.0));
    h.hook_done(B, Alive, Success, Duration::ZERO);
    h.admit_all(B);
    h.gated(B, 0);
    h.at(6.0).hook_done(B, Sleep, Success, secs(1.0));
    assert_eq!(h.effects(), [Action::RunHook(A, Wake)]);
    let order: Vec<_> = h.switches().iter().map(|r| r.to).collect();
    assert_eq!(order, [C, B]);
}

// min_active.

#[test]
fn min_active_holds_a_switch_until_the_window_ends() {
    let mut h = Setup::new(2).min_active(10.0).build();
    h.adopt(A);
    h.at(2.0).queue(B);
    assert_eq!(h.effects(), [], "inside the window: a keeps serving");
    assert_eq!(h.m.deadline(), Some(time(10.0)));
    h.fire_timer();
    assert_eq!(h.effects(), [Action::Gate(A)]);
    assert_eq!(h.when(&Action::Gate(A)), time(10.0));
}

#[test]
fn min_active_never_delays_a_wake_from_nothing() {
    let mut h = Setup::new(2).min_active(100.0).build();
    h.start(&[]);
    h.at(1.0).queue(B);
    assert_eq!(h.effects(), [Action::RunHook(B, Wake)]);
}

#[test]
fn min_active_counts_from_the_targets_publication() {
    let mut h = Setup::new(2).min_active(10.0).build();
    h.start(&[]);
    h.switch_to(None, A);
    let published = h.when(&Action::Publish(A));
    h.admit_all(A);
    h.queue(B);
    assert_eq!(h.effects(), []);
    h.fire_timer();
    assert_eq!(h.when(&Action::Gate(A)), published + secs(10.0));
}

// The serving model's own queue first.

#[test]
fn the_serving_models_own_queue_is_admitted_before_any_further_switch() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    h.at(1.0).queue(B);
    h.gated(A, 0);
    // a's requests queue while it drains and sleeps.
    h.at(1.5).queue(A);
    h.at(2.0).hook_done(A, Sleep, Success, secs(1.0));
    h.at(3.0).hook_done(B, Wake, Success, secs(1.0));
    h.hook_done(B, Alive, Success, Duration::ZERO);
    assert_eq!(h.effects(), [Action::Publish(B)], "b's waiter is not yet admitted: no switch back to a");
    let late = h.at(3.5).queue(B);
    assert_eq!(h.effects(), []);
    h.admit_all(B);
    // The Left that empties b's queue starts the switch back to a, at once.
    assert_eq!(h.effects(), [Action::Gate(B)]);
    assert_eq!(h.when(&Action::Gate(B)), time(3.5));
    let _ = late;
}

// Leaving: request timeout or disconnect.

#[test]
fn the_last_waiter_leaving_abandons_the_drain_and_the_old_model_serves_again() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    let t = h.at(1.0).queue(B);
    h.gated(A, 1);
    h.at(5.0).leave(t);
    assert_eq!(h.effects(), [Action::Ungate(A)]);
    assert_eq!(h.state(A), ModelState::Active);
    assert!(h.reported(&Report::Abandoned { model: A }));
    assert_eq!(h.switches().pop().map(|r| r.result), Some(SwitchResult::Abandoned));
    assert!(!h.issued(&Action::Unpublish(A)) && !h.issued(&Action::RunHook(A, Sleep)));
    // The stream ending later changes nothing.
    h.at(9.0).drained(A);
    assert_eq!(h.effects(), []);
}

#[test]
fn a_waiter_leaving_once_the_sleep_started_does_not_stop_the_switch() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    let t = h.at(1.0).queue(B);
    h.gated(A, 0);
    h.at(1.5).leave(t);
    assert_eq!(h.effects(), []);
    h.at(2.0).hook_done(A, Sleep, Success, secs(1.0));
    assert_eq!(h.effects(), [Action::RunHook(B, Wake)]);
}

#[test]
fn a_held_switch_with_nobody_left_waiting_is_dropped() {
    let mut h = Setup::new(2).min_active(10.0).build();
    h.adopt(A);
    let t = h.at(2.0).queue(B);
    h.at(3.0).leave(t);
    assert_eq!(h.m.deadline(), None);
    h.at(20.0).event(Event::Timer);
    assert!(!h.issued(&Action::Gate(A)));
}

// Failed wake.

#[test]
fn a_failed_wake_fails_the_waiters_backs_off_and_sleeps_the_target() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    let t = h.at(1.0).queue(B);
    h.gated(A, 0);
    h.at(2.0).hook_done(A, Sleep, Success, secs(1.0));
    h.at(4.0).hook_done(B, Wake, Failed, secs(2.0));
    let effects = h.effects();
    assert!(matches!(effects[0], Action::Fail { model: B, until, .. } if until == time(5.0)), "{effects:?}");
    assert_eq!(effects[1..], [Action::RunHook(B, Sleep)]);
    assert_eq!(h.state(B), ModelState::Failed);
    assert!(h.m.is_loaded(B), "loaded until its clean-up sleep succeeded");
    h.leave(t); // answered 503
    h.at(5.0).hook_done(B, Sleep, Success, secs(1.0));
    assert!(!h.m.is_loaded(B));
    assert_eq!(h.switches().pop().map(|r| r.result), Some(SwitchResult::Failed));
}

#[test]
fn failed_wakes_back_off_one_second_doubling_to_sixty_and_a_success_resets_it() {
    let mut h = Setup::new(1).build();
    h.start(&[]);
    let mut backoffs = Vec::new();
    for i in 0..9 {
        let t = h.queue(A);
        assert_eq!(h.effects(), [Action::RunHook(A, Wake)], "round {i}");
        h.hook_done(A, Wake, Failed, Duration::ZERO);
        let until = *h.fail_until(A).last().expect("a Fail");
        backoffs.push(until.since(h.now).as_secs());
        h.leave(t);
        h.hook_done(A, Sleep, Success, Duration::ZERO);
        h.now = until;
    }
    assert_eq!(backoffs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(BACKOFF_MAX.as_secs(), 60);
    h.switch_to(None, A);
    h.admit_all(A);
    h.sleep_command(1, Some(A));
    h.gated(A, 0);
    h.hook_done(A, Sleep, Success, Duration::ZERO);
    h.queue(A);
    h.hook_done(A, Wake, Failed, Duration::ZERO);
    assert_eq!(h.fail_until(A).last().map(|u| u.since(h.now)), Some(secs(1.0)), "reset by the success");
}

#[test]
fn a_model_in_backoff_does_not_hold_up_other_models_and_is_tried_again_when_it_ends() {
    let mut h = Setup::new(3).build();
    h.start(&[]);
    h.queue(B);
    h.hook_done(B, Wake, Failed, Duration::ZERO);
    h.hook_done(B, Sleep, Success, Duration::ZERO);
    // A request for b queued during the backoff (raced it) waits for its end.
    h.at(0.5).queue(B);
    assert_eq!(h.effects(), []);
    assert_eq!(h.m.deadline(), Some(time(1.0)));
    h.at(0.6).queue(C);
    assert_eq!(h.effects(), [Action::RunHook(C, Wake)]);
}

// Failed sleep.

#[test]
fn a_failed_sleep_of_a_model_still_up_publishes_it_afresh_and_fails_the_switch() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    h.at(1.0).queue(B);
    h.gated(A, 0);
    h.at(2.0).hook_done(A, Sleep, Failed, secs(1.0));
    assert_eq!(h.effects(), [Action::RunHook(A, Alive)]);
    h.at(2.5).hook_done(A, Alive, Success, secs(0.5));
    let effects = h.effects();
    assert_eq!(effects[0], Action::Publish(A));
    assert!(matches!(&effects[1], Action::Fail { model: B, reason, .. } if reason.contains("still active")));
    assert_eq!(effects.len(), 2);
    assert_eq!(h.count(&Action::Publish(A)), 2, "adopted, then published afresh");
    assert!(!h.issued(&Action::Ungate(A)));
    assert!(!h.issued(&Action::RunHook(B, Wake)));
    assert_eq!(h.state(A), ModelState::Active);
    assert_eq!(h.switches().pop().map(|r| r.result), Some(SwitchResult::Failed));
}

#[test]
fn a_failed_sleep_with_an_unknown_alive_counts_as_still_up() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    h.at(1.0).queue(B);
    h.gated(A, 0);
    h.hook_done(A, Sleep, Failed, secs(1.0));
    h.hook_done(A, Alive, Unknown, secs(1.0));
    assert_eq!(h.effects()[0], Action::Publish(A));
    assert!(!h.issued(&Action::RunHook(B, Wake)));
}

#[test]
fn a_failed_sleep_with_on_sleep_failure_continue_goes_on_with_the_wake() {
    let mut h = Setup::new(2).continue_on_sleep_failure().build();
    h.adopt(A);
    h.at(1.0).queue(B);
    h.gated(A, 0);
    h.hook_done(A, Sleep, Failed, secs(1.0));
    h.at(2.0).hook_done(A, Alive, Success, secs(1.0));
    assert_eq!(h.effects(), [Action::RunHook(B, Wake)]);
    assert_eq!(h.count(&Action::Publish(A)), 1, "never published again");
    assert_eq!(h.state(A), ModelState::Failed);
}

#[test]
fn a_failed_sleep_of_a_model_that_is_down_goes_on_with_the_wake() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    h.at(1.0).queue(B);
    h.gated(A, 0);
    h.hook_done(A, Sleep, Failed, secs(1.0));
    h.at(2.0).hook_done(A, Alive, Failed, secs(1.0));
    assert_eq!(h.effects(), [Action::RunHook(B, Wake)]);
    assert!(!h.m.is_loaded(A));
    assert_eq!(h.count(&Action::Publish(A)), 1);
}

// Drain timeout and drain_before_switch.

#[test]
fn a_drain_timeout_cuts_the_in_flight_requests_then_sleeps() {
    let mut h = Setup::new(2).drain_timeout(5.0).build();
    h.adopt(A);
    h.at(1.0).queue(B);
    h.gated(A, 3);
    assert_eq!(h.m.deadline(), Some(time(6.0)));
    h.fire_timer();
    assert_eq!(h.effects(), [Action::Cut(A), Action::Unpublish(A), Action::RunHook(A, Sleep)]);
    assert_eq!(h.when(&Action::Cut(A)), time(6.0));
}

#[test]
fn a_drain_that_ends_in_time_is_not_cut() {
    let mut h = Setup::new(2).drain_timeout(5.0).build();
    h.adopt(A);
    h.at(1.0).queue(B);
    h.gated(A, 3);
    h.at(2.0).drained(A);
    assert_eq!(h.effects(), [Action::Unpublish(A), Action::RunHook(A, Sleep)]);
    h.at(7.0).event(Event::Timer);
    assert!(!h.issued(&Action::Cut(A)));
}

#[test]
fn without_drain_before_switch_the_sleep_does_not_wait_for_in_flight_requests() {
    let mut h = Setup::new(2).no_drain().build();
    h.adopt(A);
    h.at(1.0).queue(B);
    assert_eq!(h.effects(), [Action::Gate(A), Action::Unpublish(A), Action::RunHook(A, Sleep)]);
    h.gated(A, 4);
    assert_eq!(h.effects(), []);
}

// A refused connection.

#[test]
fn a_refused_connection_runs_one_alive_check_then_gives_the_verdict() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    h.at(1.0).event(Event::Refused { model: A });
    assert_eq!(h.effects(), [Action::RunHook(A, Alive)]);
    h.event(Event::Refused { model: A });
    assert_eq!(h.effects(), [], "the check running gives the verdict");
    h.at(1.5).hook_done(A, Alive, Success, secs(0.5));
    assert_eq!(h.effects(), [Action::Verdict(A)]);
    assert_eq!(h.state(A), ModelState::Active);
    assert_eq!(h.count(&Action::RunHook(A, Alive)), 2, "the start-up check and one more");
}

#[test]
fn a_refused_connection_to_a_dead_backend_forgets_it_without_a_sleep() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    h.at(1.0).event(Event::Refused { model: A });
    h.at(1.5).hook_done(A, Alive, Failed, secs(0.5));
    assert_eq!(h.effects(), [Action::Gate(A), Action::Unpublish(A), Action::Verdict(A)]);
    assert_eq!(h.state(A), ModelState::Failed);
    assert!(!h.m.is_loaded(A));
    // The request queues again and a is woken with no sleep before.
    h.queue(A);
    assert_eq!(h.effects(), [Action::RunHook(A, Wake)]);
    assert!(!h.issued(&Action::RunHook(A, Sleep)));
}

#[test]
fn a_refused_connection_to_a_model_on_its_way_out_gets_its_verdict_at_once() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    h.at(1.0).queue(B);
    h.event(Event::Refused { model: A });
    assert_eq!(h.effects(), [Action::Verdict(A)]);
}

// Idle sleep.

#[test]
fn an_idle_model_is_probed_then_put_to_sleep() {
    let mut h = Setup::new(2).idle_sleep(A, 60.0).build();
    h.adopt(A);
    assert_eq!(h.m.deadline(), Some(time(60.0)));
    h.fire_timer();
    assert_eq!(h.effects(), [Action::ProbeIdle(A)]);
    // Busy 30 s ago: probed again when 60 s idle.
    h.idle(A, Some(30.0));
    assert_eq!(h.m.deadline(), Some(time(90.0)));
    h.fire_timer();
    assert_eq!(h.effects(), [Action::ProbeIdle(A)]);
    h.idle(A, None);
    assert_eq!(h.m.deadline(), Some(time(91.0)), "in flight: probed again in a second");
    h.fire_timer();
    h.idle(A, Some(60.0));
    assert_eq!(h.effects(), [Action::Gate(A)]);
    assert!(h.reported(&Report::IdleSleep(A)));
    h.gated(A, 0);
    assert_eq!(h.effects(), [Action::Unpublish(A), Action::RunHook(A, Sleep)]);
    h.at(95.0).hook_done(A, Sleep, Success, secs(3.0));
    assert!(!h.m.is_loaded(A));
    assert_eq!(h.state(A), ModelState::Asleep);
    assert!(h.reported(&Report::Asleep { model: A, why: "idle" }));
    assert!(h.switches().is_empty(), "an idle sleep is not a switch");
}

#[test]
fn a_request_slipping_in_as_the_idle_model_is_gated_abandons_the_idle_sleep() {
    let mut h = Setup::new(2).idle_sleep(A, 60.0).build();
    h.adopt(A);
    h.fire_timer();
    h.idle(A, Some(61.0));
    assert_eq!(h.effects(), [Action::Gate(A)]);
    h.gated(A, 1);
    assert_eq!(h.effects(), [Action::Ungate(A)]);
    assert_eq!(h.state(A), ModelState::Active);
    assert!(!h.issued(&Action::RunHook(A, Sleep)));
}

// Periodic alive check.

#[test]
fn the_periodic_alive_check_runs_every_interval_from_the_last_checks_end() {
    let mut h = Setup::new(2).alive_interval(A, 30.0).build();
    h.adopt(A);
    assert_eq!(h.m.deadline(), Some(time(30.0)));
    h.fire_timer();
    assert_eq!(h.effects(), [Action::RunHook(A, Alive)]);
    h.at(32.0).hook_done(A, Alive, Success, secs(1.9));
    assert_eq!(h.m.deadline(), Some(time(62.0)));
    h.fire_timer();
    h.at(63.0).hook_done(A, Alive, Failed, secs(1.0));
    assert_eq!(h.effects(), [Action::Gate(A), Action::Unpublish(A)]);
    assert_eq!(h.state(A), ModelState::Failed);
    assert!(!h.m.is_loaded(A));
    assert_eq!(h.m.deadline(), None, "no check of a model that is not published");
}

// Operator commands.

#[test]
fn an_operator_sleep_drains_sleeps_and_answers() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    h.at(1.0).sleep_command(7, None);
    assert_eq!(h.effects(), [Action::Gate(A)]);
    h.gated(A, 1);
    h.at(2.0).drained(A);
    assert_eq!(h.effects(), [Action::Unpublish(A), Action::RunHook(A, Sleep)]);
    h.at(3.0).hook_done(A, Sleep, Success, secs(1.0));
    assert_eq!(h.effects(), [Action::CommandDone { id: 7, result: Ok(vec![A]) }]);
    assert!(h.reported(&Report::Asleep { model: A, why: "asked by an operator" }));
}

#[test]
fn an_operator_sleep_with_nothing_loaded_is_answered_at_once() {
    let mut h = Setup::new(2).build();
    h.start(&[]);
    h.sleep_command(1, None);
    assert_eq!(h.effects(), [Action::CommandDone { id: 1, result: Ok(vec![]) }]);
    h.sleep_command(2, Some(B));
    assert_eq!(h.effects(), [Action::CommandDone { id: 2, result: Ok(vec![]) }]);
}

#[test]
fn an_operator_sleep_waits_for_the_switch_under_way() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    h.at(1.0).queue(B);
    h.sleep_command(3, Some(A));
    assert_eq!(h.effects(), []);
    h.gated(A, 0);
    h.hook_done(A, Sleep, Success, secs(1.0));
    h.hook_done(B, Wake, Success, secs(1.0));
    h.hook_done(B, Alive, Success, Duration::ZERO);
    // a is asleep by then: answered at once, nothing slept.
    assert!(h.last.contains(&Action::CommandDone { id: 3, result: Ok(vec![]) }), "{:?}", h.last);
}

// Reload.

#[test]
fn a_reload_removing_the_serving_model_sleeps_it() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    let mut settings = h.settings.clone();
    settings.models[A].configured = false;
    settings.order = vec![B];
    h.at(1.0).event(Event::Reload(settings));
    assert_eq!(h.effects(), [Action::Gate(A)]);
    h.gated(A, 0);
    assert_eq!(h.effects(), [Action::Unpublish(A), Action::RunHook(A, Sleep)]);
    h.hook_done(A, Sleep, Success, secs(1.0));
    assert!(!h.m.is_loaded(A));
    assert!(h.reported(&Report::Asleep { model: A, why: "removed from the config" }));
}

#[test]
fn a_removed_model_whose_sleep_fails_is_never_published_again() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    let mut settings = h.settings.clone();
    settings.models[A].configured = false;
    settings.order = vec![B];
    h.at(1.0).event(Event::Reload(settings));
    h.gated(A, 0);
    h.hook_done(A, Sleep, Failed, secs(1.0));
    h.hook_done(A, Alive, Success, secs(1.0));
    assert_eq!(h.count(&Action::Publish(A)), 1, "only its adoption");
    assert_eq!(h.state(A), ModelState::Failed);
    // Not slept again on its own, and its waiters are never served...
    h.at(2.0).queue(A);
    assert_eq!(h.effects(), []);
    // ...but a switch sleeps it before waking anything.
    h.queue(B);
    assert_eq!(h.effects(), [Action::RunHook(A, Sleep)]);
    h.hook_done(A, Sleep, Success, secs(1.0));
    assert_eq!(h.effects(), [Action::RunHook(B, Wake)]);
    assert_eq!(h.count(&Action::Publish(A)), 1);
}

// Shutdown.

#[test]
fn shutdown_answers_pending_commands_and_starts_nothing_new() {
    let mut h = Setup::new(3).build();
    h.adopt(A);
    h.at(1.0).queue(B);
    h.sleep_command(5, Some(A));
    h.at(2.0).event(Event::Shutdown);
    assert_eq!(h.effects(), [Action::CommandDone { id: 5, result: Err("shutting down".to_owned()) }]);
    h.queue(C);
    h.sleep_command(6, None);
    assert_eq!(h.effects(), [Action::CommandDone { id: 6, result: Err("shutting down".to_owned()) }]);
    h.event(Event::Refused { model: A });
    h.gated(A, 0);
    h.at(60.0).event(Event::Timer);
    assert!(!h.issued(&Action::RunHook(C, Wake)));
    assert!(!h.issued(&Action::RunHook(A, Sleep)));
    assert!(!h.issued(&Action::RunHook(B, Wake)));
}

#[test]
fn a_sleep_ending_during_shutdown_starts_no_wake() {
    let mut h = Setup::new(2).build();
    h.adopt(A);
    h.at(1.0).queue(B);
    h.gated(A, 0);
    h.at(2.0).event(Event::Shutdown);
    h.at(3.0).hook_done(A, Sleep, Success, secs(1.0));
    assert!(!h.issued(&Action::RunHook(B, Wake)), "{:?}", h.last);
    assert!(!h.m.hooks_running());
}

// What the policy sees.

/// What the policy was shown: arrivals and service times, by model.
type Shown = (Vec<Vec<Time>>, Vec<Option<Duration>>);

/// Records what the policy was shown, then chooses as FIFO does.
struct Recording(std::sync::Arc<parking_lot::Mutex<Vec<Shown>>>);

impl crate::machine::SwitchPolicy for Recording {
    fn choose(&mut self, ctx: &crate::machine::policy::PolicyContext<'_>) -> Option<(ModelId, &'static str)> {
        let services = ctx.models.iter().map(|m| m.service_time).collect();
        self.0.lock().push((ctx.arrivals.to_vec(), services));
        crate::machine::policy::Fifo.choose(ctx)
    }
}

#[test]
fn the_policy_sees_every_queued_arrival_and_measured_service_times() {
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut h = Setup::new(2).min_active(10.0).build_with(Box::new(Recording(seen.clone())));
    h.start(&[A]);
    h.event(Event::Served { model: A, completed: 4, busy: secs(2.0), in_flight: 0 });
    h.at(1.0).queue(B);
    h.at(1.5).queue(B);
    h.at(2.0).queue(B);
    let shown = seen.lock().last().cloned().expect("the policy was asked");
    assert_eq!(shown.0[B], [time(1.0), time(1.5), time(2.0)], "every arrival, not only the first");
    assert_eq!(shown.1[A], Some(secs(0.5)), "2 s over 4 requests");
    assert_eq!(shown.1[B], None, "nothing completed yet");
}
