//! Several models resident at once within `capacity`: models that fit wake
//! beside the residents without draining anyone, a miss that does not fit
//! evicts only the victims it needs (idle before busy) while the other
//! residents keep serving, the sizes of the loaded models never add up to
//! more than the capacity under concurrent mixed load, and a reload that
//! shrinks the budget evicts down to it at once.

use std::time::Duration;

use http_body_util::BodyExt;

use crate::support::http::{self, chat};
use crate::support::{mux, Mux, Spec};

const CHAT: &str = "/v1/chat/completions";

/// Reads a streaming response to its end; returns how many data frames
/// (chunks) it had.
async fn chunks(response: hyper::Response<hyper::body::Incoming>) -> usize {
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("a frame").into_data() {
            text.extend_from_slice(&data);
        }
    }
    let text = String::from_utf8_lossy(&text);
    text.lines().filter(|l| l.starts_with("data: ") && !l.contains("[DONE]")).count()
}

/// `/health`'s state words, model by model, in config order.
async fn states(mux: &Mux) -> Vec<(String, String)> {
    let health = mux.health().await;
    let models = health["models"].as_array().cloned().unwrap_or_default();
    models
        .iter()
        .map(|m| (m["id"].as_str().expect("id").to_owned(), m["state"].as_str().expect("state").to_owned()))
        .collect()
}

/// The models `/health` shows active.
async fn active(mux: &Mux) -> Vec<String> {
    states(mux).await.into_iter().filter(|(_, s)| s == "active").map(|(m, _)| m).collect()
}

fn owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// With `capacity: 2` and sizes 1, a second model wakes beside the first:
/// nothing is drained or slept, and the first keeps streaming while the
/// second wakes and serves.
#[tokio::test]
async fn two_models_that_fit_are_resident_together_and_both_serve() {
    let mux = mux().model("a").model("b").model("c").config("capacity: 2").model_line("a", "size: 1").start();
    mux.served("a").await;
    // a streams for about a second while b is asked for.
    let stream = mux.slow_stream("a", 20, 50).await;
    mux.served("b").await;
    assert_eq!(chunks(stream).await, 20, "a's stream was cut while b woke");
    assert_eq!(mux.hooks.events(), ["wake-start a", "wake-end a", "wake-start b", "wake-end b"]);
    assert_eq!(active(&mux).await, ["a", "b"]);
    assert_eq!(mux.state("c").await, "asleep");
    // Both serve from now on with no hook at all.
    for m in ["a", "b", "a", "b"] {
        mux.served(m).await;
    }
    assert_eq!(mux.hooks.events().len(), 4, "{:?}", mux.hooks.events());
    assert_eq!(mux.hooks.assert_within_capacity(&[("a", 1.0), ("b", 1.0), ("c", 1.0)], 2.0), 2.0);
}

/// A third model that does not fit evicts one resident: the idle one, not
/// the one streaming, which keeps serving throughout (it is never gated).
#[tokio::test]
async fn a_miss_evicts_the_idle_resident_and_the_busy_one_keeps_serving() {
    let mux = mux().model("a").model("b").model("c").config("capacity: 2").start();
    mux.served("a").await;
    mux.served("b").await;
    // a is busy (a stream of about 2 s), b idle.
    let stream = mux.slow_stream("a", 40, 50).await;
    let reader = tokio::spawn(chunks(stream));
    mux.served("c").await;
    // a served new requests while c woke and after.
    mux.served("a").await;
    assert_eq!(reader.await.expect("reader"), 40, "a's stream was cut");
    let events = mux.hooks.events();
    assert_eq!(
        events,
        [
            "wake-start a",
            "wake-end a",
            "wake-start b",
            "wake-end b",
            "sleep-start b",
            "sleep-end b",
            "wake-start c",
            "wake-end c"
        ]
    );
    assert_eq!(active(&mux).await, ["a", "c"]);
    assert_eq!(mux.state("b").await, "asleep");
    mux.hooks.assert_within_capacity(&[("a", 1.0), ("b", 1.0), ("c", 1.0)], 2.0);
}

/// A tiny deterministic generator (64-bit LCG): the load is random but the
/// same on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// The budget's invariant under concurrent mixed load: four models of sizes
/// 1, 1, 1 and 2 in a capacity of 3, sixty requests for random models from
/// six tasks (some streaming, some slow), every one answered 200 by its own
/// backend; replaying the hook log in time order, the sizes of the models
/// between their `wake-start` and `sleep-end` never add up to more than 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loaded_sizes_never_pass_the_capacity_under_concurrent_mixed_load() {
    const SIZES: [(&str, f64); 4] = [("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 2.0)];
    let mut builder = mux().config("capacity: 3").policy("request_timeout_secs: 60");
    for (m, size) in SIZES {
        builder = builder.model(m).model_line(m, &format!("size: {size}"));
    }
    let mux = std::sync::Arc::new(builder.start());
    let mut tasks = Vec::new();
    for task in 0..6u64 {
        let mux = mux.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(task * 7919 + 17);
            let mut answered = Vec::new();
            for _ in 0..10 {
                let model = SIZES[rng.below(4) as usize].0;
                let reply = match rng.below(3) {
                    0 => {
                        let delay = (rng.below(40) + 1).to_string();
                        let headers = [("x-standin-delay-ms", delay.as_str())];
                        http::request(hyper::Method::POST, &mux.url(CHAT), &headers, chat(model)).await
                    }
                    1 => {
                        let response = mux.slow_stream(model, 3, 10).await;
                        let served_by = response
                            .headers()
                            .get("x-standin-model")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("(llmux)")
                            .to_owned();
                        assert_eq!(chunks(response).await, 3, "{model}'s stream was cut");
                        answered.push((model, 200, served_by));
                        continue;
                    }
                    _ => http::post(&mux.url(CHAT), &chat(model)).await,
                };
                answered.push((model, reply.status.as_u16(), reply.served_by().to_owned()));
            }
            answered
        }));
    }
    let mut count = 0;
    for task in tasks {
        for (model, status, served_by) in task.await.expect("task") {
            assert_eq!((status, served_by.as_str()), (200, model));
            count += 1;
        }
    }
    assert_eq!(count, 60);
    let most = mux.hooks.assert_within_capacity(&SIZES, 3.0);
    assert_eq!(most, 3.0, "the load never filled the budget: {:?}", mux.hooks.events());
    let evictions = mux.hooks.events().iter().filter(|e| e.starts_with("sleep-end")).count();
    assert!(evictions > 0, "no model was ever evicted: {:?}", mux.hooks.events());
}

/// A reload that lowers `capacity` from 3 to 1 with three residents evicts
/// two of them at once (their sleeps run together, with no request asking
/// for anything), and the one left keeps serving without a wake.
#[tokio::test]
async fn a_reload_that_shrinks_the_budget_evicts_down_to_it_at_once() {
    let mux = mux().model("a").model("b").model("c").config("capacity: 3").start();
    for m in ["a", "b", "c"] {
        mux.served(m).await;
    }
    assert_eq!(active(&mux).await, ["a", "b", "c"]);
    // Every sleep waits until released: both evictions must be under way
    // together before either ends.
    for m in ["a", "b", "c"] {
        mux.hooks.set(&format!("hold-sleep-{m}"));
    }
    let ports: Vec<(&str, u16)> = ["a", "b", "c"].iter().map(|m| (*m, mux.backend(m).port())).collect();
    let extra = owned(&["capacity: 1"]);
    mux.rewrite_config(&ports, &Spec { extra: &extra, ..Spec::default() });
    let r = mux.reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sleeping = || mux.hooks.events().into_iter().filter(|e| e.starts_with("sleep-start")).count();
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while sleeping() < 2 {
        assert!(std::time::Instant::now() < deadline, "two sleeps never ran together: {:?}", mux.hooks.events());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for m in ["a", "b", "c"] {
        mux.hooks.clear(&format!("hold-sleep-{m}"));
    }
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while mux.hooks.events().iter().filter(|e| e.starts_with("sleep-end")).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "the evictions never ended: {:?}", mux.hooks.events());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let events = mux.hooks.events();
    // Both sleeps started before either ended: they ran at once.
    let after_wakes = &events[6..];
    assert!(after_wakes[0].starts_with("sleep-start") && after_wakes[1].starts_with("sleep-start"), "{events:?}");
    assert_eq!(after_wakes.len(), 4, "exactly two models were evicted: {events:?}");
    let left = active(&mux).await;
    assert_eq!(left.len(), 1, "{:?}", states(&mux).await);
    let asleep: Vec<String> = states(&mux).await.into_iter().filter(|(_, s)| s == "asleep").map(|(m, _)| m).collect();
    assert_eq!(asleep.len(), 2, "{:?}", states(&mux).await);
    for m in &asleep {
        assert!(events.contains(&format!("sleep-end {m}")), "{m}: {events:?}");
    }
    // The one left serves on, with no hook.
    mux.served(&left[0]).await;
    assert_eq!(mux.hooks.events().len(), 10, "{:?}", mux.hooks.events());
}

/// A failed wake beside a resident: the waiter gets 503, the half-started
/// model is slept (clean-up), and the resident never stops serving (no
/// hook of its own runs).
#[tokio::test]
async fn a_failed_wake_beside_a_resident_leaves_it_serving() {
    let mux = mux().model("a").model("b").config("capacity: 2").start();
    mux.served("a").await;
    mux.hooks.set("fail-wake-b");
    http::post(&mux.url(CHAT), &chat("b")).await.assert_error(503, "model_unavailable");
    mux.hooks.wait_for("sleep-end b").await;
    mux.served("a").await;
    assert_eq!(
        mux.hooks.events(),
        ["wake-start a", "wake-end a", "wake-start b", "wake-fail b", "sleep-start b", "sleep-end b"]
    );
    assert_eq!(active(&mux).await, ["a"]);
    mux.hooks.assert_within_capacity(&[("a", 1.0), ("b", 1.0)], 2.0);
}

/// Idle sleep is per resident: the idle one is slept alone while the other,
/// whose own timer is off, keeps serving.
#[tokio::test]
async fn idle_sleep_sleeps_one_resident_and_the_other_keeps_serving() {
    let mux = mux()
        .model("a")
        .model("b")
        .config("capacity: 2")
        .model_line("a", "idle_sleep_secs: 1")
        .model_line("b", "idle_sleep_secs: 0")
        .start();
    mux.served("a").await;
    mux.served("b").await;
    mux.hooks.wait_for("sleep-end a").await;
    mux.served("b").await;
    assert_eq!(
        mux.hooks.events(),
        ["wake-start a", "wake-end a", "wake-start b", "wake-end b", "sleep-start a", "sleep-end a"]
    );
    assert_eq!(states(&mux).await, [("a".to_owned(), "asleep".to_owned()), ("b".to_owned(), "active".to_owned())]);
}

/// min_active is per resident: with `capacity: 2`, a third model waits for
/// the window of the residents, then evicts one; a model that fits never
/// waits for anyone's window.
#[tokio::test]
async fn min_active_holds_an_eviction_but_never_a_wake_that_fits() {
    let mux = mux().model("a").model("b").model("c").config("capacity: 2").policy("min_active_secs: 2").start();
    mux.served("a").await;
    let fit = std::time::Instant::now();
    mux.served("b").await;
    assert!(fit.elapsed() < Duration::from_secs(2), "b waited for a's window: {:?}", fit.elapsed());
    let evict = std::time::Instant::now();
    mux.served("c").await;
    let waited = evict.elapsed();
    assert!(waited >= Duration::from_millis(1500), "c evicted a resident inside its window after {waited:?}");
    let sleeps: Vec<String> = mux.hooks.events().into_iter().filter(|e| e.starts_with("sleep-end")).collect();
    assert_eq!(sleeps.len(), 1, "{:?}", mux.hooks.events());
    mux.hooks.assert_within_capacity(&[("a", 1.0), ("b", 1.0), ("c", 1.0)], 2.0);
}

/// Start-up adopts every running model that fits, in config order, with no
/// wake; one found running that does not fit is put to sleep. The adopted
/// ones serve at once.
#[tokio::test]
async fn start_up_adopts_every_running_model_that_fits() {
    let mux = mux()
        .model("a")
        .model("b")
        .model("c")
        .config("capacity: 2")
        .up_at_start("a")
        .up_at_start("b")
        .up_at_start("c")
        .start();
    mux.hooks.wait_for("sleep-end c").await;
    mux.served("a").await;
    mux.served("b").await;
    assert_eq!(mux.hooks.events(), ["sleep-start c", "sleep-end c"]);
    assert_eq!(active(&mux).await, ["a", "b"]);
}

/// A reload that removes `capacity` altogether goes back to one model at a
/// time: of three residents, two are slept with no request asking, and the
/// next miss switches as without a budget.
#[tokio::test]
async fn a_reload_that_drops_the_capacity_goes_back_to_one_model() {
    let mux = mux().model("a").model("b").model("c").config("capacity: 3").start();
    for m in ["a", "b", "c"] {
        mux.served(m).await;
    }
    let ports: Vec<(&str, u16)> = ["a", "b", "c"].iter().map(|m| (*m, mux.backend(m).port())).collect();
    mux.rewrite_config(&ports, &Spec::default());
    assert_eq!(mux.reload().await.status, 200);
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while active(&mux).await.len() != 1 || mux.hooks.events().iter().filter(|e| e.starts_with("sleep-end")).count() < 2
    {
        assert!(std::time::Instant::now() < deadline, "{:?} {:?}", states(&mux).await, mux.hooks.events());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = active(&mux).await.remove(0);
    let other = ["a", "b", "c"].into_iter().find(|m| *m != left).expect("another");
    mux.served(other).await;
    assert_eq!(active(&mux).await, [other]);
    assert!(mux.hooks.events().ends_with(&[
        format!("sleep-start {left}"),
        format!("sleep-end {left}"),
        format!("wake-start {other}"),
        format!("wake-end {other}")
    ]));
}
