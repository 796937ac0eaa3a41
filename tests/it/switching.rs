//! The switch protocol: drain, sleep, wake, publish, and every way a
//! switch can be held back, abandoned or fail.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::http::{self, chat, frames};
use crate::support::{mux, Mux, PATIENCE};

const CHAT: &str = "/v1/chat/completions";

fn joined(frames: &[(Instant, bytes::Bytes)]) -> String {
    frames.iter().map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect()
}

#[tokio::test]
async fn a_miss_sleeps_the_active_model_before_waking_the_next() {
    let mux = mux().model("a").model("b").start();
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"));
    let r = http::post(&mux.url(CHAT), &chat("b")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"));
    assert_eq!(
        mux.hooks.events(),
        ["wake-start a", "wake-end a", "sleep-start a", "sleep-end a", "wake-start b", "wake-end b"]
    );
    assert_eq!(mux.state("a").await, "asleep");
    assert_eq!(mux.state("b").await, "active");
}

#[tokio::test]
async fn a_stream_on_the_old_model_finishes_before_its_sleep_and_new_requests_for_it_queue() {
    let mux = mux().model("a").model("b").start();
    let stream = mux.slow_stream("a", 6, 150).await;
    let stream = tokio::spawn(frames(stream));
    let for_b = mux.spawn_chat("b");
    mux.wait_state("a", "draining").await;
    // A request for the draining model queues behind the switch.
    let for_a = mux.spawn_chat("a");
    let streamed = stream.await.expect("stream task");
    assert!(joined(&streamed).contains("[DONE]"), "stream was cut: {}", joined(&streamed));
    let b = for_b.await.expect("b task");
    assert_eq!((b.status.as_u16(), b.served_by()), (200, "b"));
    let a = for_a.await.expect("a task");
    assert_eq!((a.status.as_u16(), a.served_by()), (200, "a"));
    let events = mux.hooks.events();
    assert_eq!(
        &events[2..],
        [
            "sleep-start a",
            "sleep-end a",
            "wake-start b",
            "wake-end b",
            "sleep-start b",
            "sleep-end b",
            "wake-start a",
            "wake-end a"
        ]
    );
}

#[tokio::test]
async fn the_sleep_hook_waits_for_the_stream_to_end() {
    use http_body_util::BodyExt;
    let mux = mux().model("a").model("b").start();
    let mut body = mux.slow_stream("a", 5, 200).await.into_body();
    let for_b = mux.spawn_chat("b");
    mux.wait_state("a", "draining").await;
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        let data = frame.expect("frame").into_data().unwrap_or_default();
        text.push_str(&String::from_utf8_lossy(&data));
        if !text.contains("[DONE]") {
            // Mid-stream: the drain holds the sleep hook back.
            assert!(!mux.hooks.events().iter().any(|e| e == "sleep-start a"), "{:?}", mux.hooks.events());
        }
    }
    assert!(text.contains("[DONE]"));
    assert_eq!(for_b.await.expect("b").served_by(), "b");
}

#[tokio::test]
async fn without_drain_the_sleep_starts_while_a_stream_is_still_running() {
    let mux = mux().model("a").model("b").policy("drain_before_switch: false").start();
    let stream = mux.slow_stream("a", 20, 200).await;
    let stream = tokio::spawn(frames(stream));
    let b = http::post(&mux.url(CHAT), &chat("b")).await;
    assert_eq!((b.status.as_u16(), b.served_by()), (200, "b"));
    assert!(!stream.is_finished(), "the switch waited for the stream");
    assert!(mux.hooks.events().contains(&"sleep-end a".to_owned()));
    // The stand-in keeps streaming (a real backend would stop at sleep).
    assert!(joined(&stream.await.expect("stream")).contains("[DONE]"));
}

#[tokio::test]
async fn concurrent_mixed_load_is_all_answered_and_never_two_models_awake() {
    let mux = mux().model("a").model("b").model("c").start();
    let models = ["a", "b", "c"];
    let mut tasks = Vec::new();
    for i in 0..90 {
        let model = models[(i * 7 + i / 5) % 3];
        let url = mux.url(CHAT);
        tasks.push(tokio::spawn(async move { (model, http::post(&url, &chat(model)).await) }));
    }
    for task in tasks {
        let (model, reply) = task.await.expect("task");
        assert_eq!((reply.status.as_u16(), reply.served_by()), (200, model), "{}", reply.text());
    }
    mux.hooks.assert_never_two_awake();
    let wakes = mux.hooks.events().iter().filter(|e| e.starts_with("wake-start")).count();
    assert!(wakes >= 3, "{:?}", mux.hooks.events());
}

#[tokio::test]
async fn min_active_keeps_serving_the_active_model_inside_its_window() {
    let mux = mux().model("a").model("b").policy("min_active_secs: 2").start();
    assert_eq!(http::post(&mux.url(CHAT), &chat("a")).await.status, 200);
    let for_b = mux.spawn_chat("b");
    let a = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!((a.status.as_u16(), a.served_by()), (200, "a"));
    assert_eq!(mux.state("a").await, "active");
    assert!(!mux.hooks.events().contains(&"sleep-start a".to_owned()));
    // When the window ends the switch task wakes itself.
    let b = for_b.await.expect("b");
    assert_eq!((b.status.as_u16(), b.served_by()), (200, "b"));
}

#[tokio::test]
async fn a_request_that_times_out_gets_504_and_its_switch_is_abandoned_while_draining() {
    let mux = mux().model("a").model("b").policy("request_timeout_secs: 1").start();
    let stream = mux.slow_stream("a", 12, 250).await;
    let stream = tokio::spawn(frames(stream));
    http::post(&mux.url(CHAT), &chat("b")).await.assert_error(504, "model_wait_timeout");
    mux.wait_state("a", "active").await;
    let a = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!((a.status.as_u16(), a.served_by()), (200, "a"));
    assert!(joined(&stream.await.expect("stream")).contains("[DONE]"));
    assert!(!mux.hooks.events().iter().any(|e| e.contains("sleep")), "{:?}", mux.hooks.events());
}

#[tokio::test]
async fn a_wait_cut_by_timeout_during_wake_still_completes_the_switch() {
    let mux = mux().model("a").model("b").policy("request_timeout_secs: 1").start();
    mux.hooks.set("hold-wake-b");
    http::post(&mux.url(CHAT), &chat("b")).await.assert_error(504, "model_wait_timeout");
    mux.hooks.clear("hold-wake-b");
    mux.hooks.wait_for("wake-end b").await;
    mux.wait_state("b", "active").await;
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_abandons_the_drain() {
    let mux = mux().model("a").model("b").start();
    let stream = mux.slow_stream("a", 10, 200).await;
    let stream = tokio::spawn(frames(stream));
    let for_b = mux.spawn_chat("b");
    mux.wait_state("a", "draining").await;
    for_b.abort();
    mux.wait_state("a", "active").await;
    assert!(joined(&stream.await.expect("stream")).contains("[DONE]"));
    assert!(mux.hooks.events().iter().all(|e| e.ends_with(" a") && e.starts_with("wake")), "{:?}", mux.hooks.events());
}

#[tokio::test]
async fn a_failed_wake_answers_503_backs_off_and_recovers() {
    let mux = mux().model("a").model("b").start();
    mux.hooks.set("fail-wake-b");
    let r = http::post(&mux.url(CHAT), &chat("b")).await;
    r.assert_error(503, "model_unavailable");
    assert!(r.json()["error"]["message"].as_str().is_some_and(|m| m.contains("wake hook")), "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    // A half-started backend is put to sleep.
    mux.hooks.wait_for("sleep-end b").await;
    assert_eq!(mux.state("b").await, "failed");
    // Inside the backoff: 503 at once, no new wake.
    let again = http::post(&mux.url(CHAT), &chat("b")).await;
    again.assert_error(503, "model_unavailable");
    assert!(again.header("retry-after").is_some());
    let wakes = |m: &Mux| m.hooks.events().iter().filter(|e| *e == "wake-start b").count();
    assert_eq!(wakes(&mux), 1);
    // Other models are not held up.
    assert_eq!(http::post(&mux.url(CHAT), &chat("a")).await.served_by(), "a");
    mux.hooks.clear("fail-wake-b");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = http::post(&mux.url(CHAT), &chat("b")).await;
        if r.status == 200 {
            assert_eq!(r.served_by(), "b");
            break;
        }
        assert_eq!(r.status, 503);
        assert!(Instant::now() < deadline, "b never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mux.hooks.assert_never_two_awake();
}

#[tokio::test]
async fn a_failed_sleep_with_the_old_model_alive_fails_the_switch_and_keeps_it_active() {
    let mux = mux().model("a").model("b").start();
    assert_eq!(http::post(&mux.url(CHAT), &chat("a")).await.status, 200);
    mux.hooks.set("fail-sleep-a");
    let r = http::post(&mux.url(CHAT), &chat("b")).await;
    r.assert_error(503, "model_unavailable");
    assert!(r.text().contains("sleep hook of model `a`"), "{}", r.text());
    assert_eq!(mux.state("a").await, "active");
    assert_eq!(http::post(&mux.url(CHAT), &chat("a")).await.served_by(), "a");
    assert!(!mux.hooks.events().contains(&"wake-start b".to_owned()));
}

#[tokio::test]
async fn on_sleep_failure_continue_wakes_the_next_model_anyway() {
    let mux = mux().model("a").model("b").policy("on_sleep_failure: continue").start();
    assert_eq!(http::post(&mux.url(CHAT), &chat("a")).await.status, 200);
    mux.hooks.set("fail-sleep-a");
    let r = http::post(&mux.url(CHAT), &chat("b")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"));
}

#[tokio::test]
async fn requests_arriving_during_a_wake_join_it() {
    let mux = mux().model("a").model("b").start();
    mux.hooks.set("hold-wake-b");
    let first = mux.spawn_chat("b");
    mux.hooks.wait_for("wake-start b").await;
    let second = mux.spawn_chat("b");
    mux.wait_state("b", "waking").await;
    mux.hooks.clear("hold-wake-b");
    for task in [first, second] {
        assert_eq!(task.await.expect("task").served_by(), "b");
    }
    assert_eq!(mux.hooks.events(), ["wake-start b", "wake-end b"]);
}

#[tokio::test]
async fn queued_models_are_served_in_order_of_first_arrival() {
    let mux = mux().model("a").model("b").model("c").start();
    mux.hooks.set("hold-wake-a");
    let a = mux.spawn_chat("a");
    mux.hooks.wait_for("wake-start a").await;
    let c = mux.spawn_chat("c");
    mux.wait_state("a", "waking").await;
    wait_queued(&mux, "c", 1).await;
    let b = mux.spawn_chat("b");
    wait_queued(&mux, "b", 1).await;
    mux.hooks.clear("hold-wake-a");
    for task in [a, b, c] {
        assert_eq!(task.await.expect("task").status, 200);
    }
    let wakes: Vec<_> = mux.hooks.events().into_iter().filter(|e| e.starts_with("wake-start")).collect();
    assert_eq!(wakes, ["wake-start a", "wake-start c", "wake-start b"]);
}

/// Waits until `model` has `n` requests queued.
async fn wait_queued(mux: &Mux, model: &str, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let health = http::get(&mux.url("/health")).await.json();
        let queued = health["models"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["id"] == model))
            .map(|m| m["queued"].clone());
        if queued.and_then(|q| q.as_u64()) == Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "{model} never had {n} queued: {health}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_running_model_is_adopted_at_start_without_a_wake() {
    let mux = mux().model("a").model("b").model("c").up_at_start("b").up_at_start("c").start();
    let r = http::post(&mux.url(CHAT), &chat("b")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"));
    mux.hooks.wait_for("sleep-end c").await;
    let events = mux.hooks.events();
    assert!(!events.iter().any(|e| e.starts_with("wake")), "{events:?}");
    assert_eq!(mux.state("b").await, "active");
    assert_eq!(mux.state("c").await, "asleep");
}

#[tokio::test]
async fn a_hook_whose_background_child_holds_its_output_is_done_when_it_exits() {
    let mux = mux().model("a").start();
    mux.hooks.set("bg-wake-a");
    let started = Instant::now();
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(5), "waited for the child: {:?}", started.elapsed());
    mux.hooks.clear("bg-wake-a");
}

#[tokio::test]
async fn a_hung_wake_is_killed_at_its_timeout_with_its_children() {
    let mux = mux().model("a").policy("wake_timeout_secs: 1").start();
    mux.hooks.set("hang-wake-a");
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    r.assert_error(503, "model_unavailable");
    assert!(r.text().contains("timed out"), "{}", r.text());
    let pid: i32 = std::fs::read_to_string(mux.hooks.path().join("hang-pid-wake-a"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let deadline = Instant::now() + PATIENCE;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        assert!(Instant::now() < deadline, "the hook's child {pid} survived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_stream_finish_and_exits_zero() {
    let mut mux = mux().model("a").start();
    let stream = mux.slow_stream("a", 5, 200).await;
    let stream = tokio::spawn(frames(stream));
    mux.llmux.signal(Signal::SIGTERM);
    assert!(joined(&stream.await.expect("stream")).contains("[DONE]"));
    let status = tokio::task::block_in_place(|| mux.llmux.wait_exit());
    assert_eq!(status.code(), Some(0));
    // The active model is not put to sleep: the next start adopts it.
    assert!(!mux.hooks.events().iter().any(|e| e.starts_with("sleep")));
}

/// `policy.sleep_on_shutdown: true`: after a stream in flight finished,
/// every model still awake (both residents, with a capacity of 2) is put
/// to sleep before llmux exits; a model asleep is left alone.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_sleep_on_shutdown_sleeps_every_awake_model_after_draining() {
    let mut mux =
        mux().model("a").model("b").model("c").config("capacity: 2").policy("sleep_on_shutdown: true").start();
    for m in ["a", "b"] {
        let r = http::post(&mux.url(CHAT), &chat(m)).await;
        assert_eq!((r.status.as_u16(), r.served_by()), (200, m), "{}", r.text());
    }
    let stream = mux.slow_stream("a", 4, 150).await;
    let stream = tokio::spawn(frames(stream));
    let signalled = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    mux.llmux.signal(Signal::SIGTERM);
    assert!(joined(&stream.await.expect("stream")).contains("[DONE]"), "the stream was cut");
    let status = tokio::task::block_in_place(|| mux.llmux.wait_exit());
    assert_eq!(status.code(), Some(0), "{}", mux.log());
    let events = mux.hooks.events();
    for m in ["a", "b"] {
        assert!(events.contains(&format!("sleep-end {m}")), "{m} not slept: {events:?}");
    }
    assert!(!events.iter().any(|e| e.ends_with(" c")), "c was asleep: {events:?}");
    // The sleeps started after the stream's three pauses of 150 ms: once it had drained.
    let timed = mux.hooks.timed_events();
    let first_sleep = timed.iter().find(|(_, e)| e.starts_with("sleep-start")).expect("a sleep").0;
    assert!(first_sleep >= signalled + 0.4, "a sleep started {:.3} s after SIGTERM", first_sleep - signalled);
}

/// A sleep hook that fails at shutdown makes the exit code say so.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_sleep_on_shutdown_exits_non_zero() {
    let mut mux = mux().model("a").policy("sleep_on_shutdown: true").start();
    assert_eq!(http::post(&mux.url(CHAT), &chat("a")).await.status, 200);
    mux.hooks.set("fail-sleep-a");
    mux.llmux.signal(Signal::SIGTERM);
    let status = tokio::task::block_in_place(|| mux.llmux.wait_exit());
    assert_eq!(status.code(), Some(1));
    mux.hooks.wait_for("sleep-fail a").await;
    assert!(mux.log().contains("may still be loaded"), "{}", mux.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_answers_queued_requests_with_503_and_kills_a_held_hook_after_the_grace() {
    let mut mux = mux().model("a").config("shutdown_grace_secs: 1").start();
    mux.hooks.set("hold-wake-a");
    let queued = mux.spawn_chat("a");
    mux.hooks.wait_for("wake-start a").await;
    mux.wait_state("a", "waking").await;
    mux.llmux.signal(Signal::SIGTERM);
    let r = queued.await.expect("queued");
    r.assert_error(503, "model_unavailable");
    let status = tokio::task::block_in_place(|| mux.llmux.wait_exit());
    assert_ne!(status.code(), Some(0), "a hook was cut: the exit must say so");
    mux.hooks.clear("hold-wake-a");
    assert!(mux.log().contains("hook cut short by shutdown"), "no log line for the cut hook:\n{}", mux.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_drain_answers_the_queue_and_lets_the_stream_finish() {
    let mut mux = mux().model("a").model("b").start();
    let stream = mux.slow_stream("a", 6, 200).await;
    let stream = tokio::spawn(frames(stream));
    let for_b = mux.spawn_chat("b");
    mux.wait_state("a", "draining").await;
    mux.llmux.signal(Signal::SIGTERM);
    for_b.await.expect("b").assert_error(503, "model_unavailable");
    assert!(joined(&stream.await.expect("stream")).contains("[DONE]"));
    let status = tokio::task::block_in_place(|| mux.llmux.wait_exit());
    assert_eq!(status.code(), Some(0));
    assert!(!mux.hooks.events().iter().any(|e| e.starts_with("sleep")), "{:?}", mux.hooks.events());
}

#[tokio::test]
async fn a_wake_whose_backend_never_answers_alive_fails_with_503() {
    let mux = mux().model("a").policy("wake_timeout_secs: 1").start();
    mux.hooks.set("fail-alive-a");
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    r.assert_error(503, "model_unavailable");
    assert!(r.text().contains("alive hook did not pass"), "{}", r.text());
    // The half-started backend was put to sleep.
    mux.hooks.wait_for("sleep-end a").await;
}

#[tokio::test]
async fn a_wake_whose_backend_comes_up_late_is_confirmed_by_alive() {
    let mux = mux().model("a").start();
    mux.hooks.set("fail-alive-a");
    let request = mux.spawn_chat("a");
    mux.hooks.wait_for("wake-end a").await;
    mux.wait_state("a", "waking").await;
    // The backend "comes up" only now: llmux keeps checking until then.
    mux.hooks.clear("fail-alive-a");
    let r = request.await.expect("request");
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"));
}

#[tokio::test]
async fn a_hook_printing_megabytes_costs_bounded_memory() {
    let mux = mux().model("a").start();
    mux.hooks.set("spam-wake-a");
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!(r.status, 200);
    let status = std::fs::read_to_string(format!("/proc/{}/status", mux.llmux.pid())).expect("status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    assert!(peak_kib < 64 * 1024, "llmux peaked at {peak_kib} KiB reading 50 MB of hook output");
}

#[tokio::test]
async fn a_backend_that_died_between_requests_is_woken_again_instead_of_502() {
    let mut mux = mux().model("a").start();
    assert_eq!(http::post(&mux.url(CHAT), &chat("a")).await.served_by(), "a");
    // The backend dies: its port refuses connections, and `alive` fails.
    let port = mux.backend("a").port();
    mux.backends[0].signal(Signal::SIGKILL);
    let _ = mux.backends[0].wait_exit();
    mux.hooks.clear("awake-a");
    mux.hooks.set("hold-wake-a");
    let request = mux.spawn_chat("a");
    wait_for_count(&mux, "wake-start a", 2).await;
    // The wake hook "restarts" the backend.
    mux.backends[0] = crate::support::standin_on("a", port);
    mux.hooks.clear("hold-wake-a");
    let r = request.await.expect("request");
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
    assert!(mux.log().contains("refused a connection and its alive hook failed"), "{}", mux.log());
}

#[tokio::test]
async fn a_refused_connection_while_alive_still_passes_is_502() {
    let mut mux = mux().model("a").start();
    assert_eq!(http::post(&mux.url(CHAT), &chat("a")).await.status, 200);
    mux.backends[0].signal(Signal::SIGKILL);
    let _ = mux.backends[0].wait_exit();
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    r.assert_error(502, "backend_error");
    assert_eq!(mux.hooks.events().iter().filter(|e| *e == "wake-start a").count(), 1);
}

async fn wait_for_count(mux: &Mux, event: &str, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    while mux.hooks.events().iter().filter(|e| *e == event).count() < n {
        assert!(Instant::now() < deadline, "never {n}× `{event}`: {:?}", mux.hooks.events());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
