//! End-to-end regressions for the defects the implicit switch protocol hid
//! (the machine's own tests in `src/machine/tests` pin the same cases down
//! with virtual time). Each asserts *when* things happen, not only where
//! they end: the review that found these saw end-to-end tests pass while
//! the timing was wrong.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmux::machine::policy::{PolicyContext, SwitchPolicy};
use llmux::machine::ModelId;

use crate::support::backend::free_port;
use crate::support::http::{self, chat, frames};
use crate::support::{mux, PATIENCE};

const CHAT: &str = "/v1/chat/completions";

/// Defect 1: the notification sent when the target's last waiter left went
/// to a `Notified` nobody polled, so `a` served again only when its stream
/// ended. Now `a` is active again while that stream still runs.
#[tokio::test]
async fn abandoning_a_drain_serves_the_old_model_at_once_not_when_its_stream_ends() {
    let mux = mux().model("a").model("b").start();
    // 50 chunks 200 ms apart: about 10 s of stream.
    let stream = mux.slow_stream("a", 50, 200).await;
    let stream = tokio::spawn(frames(stream));
    let for_b = mux.spawn_chat("b");
    mux.wait_state("a", "draining").await;
    for_b.abort();
    // Watched through /health only: a request for `a` would queue, and
    // its own notification would wake the old drain.
    mux.wait_state("a", "active").await;
    let answered = Instant::now();
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"));
    let streamed = stream.await.expect("stream task");
    let last_frame = streamed.last().map(|(at, _)| *at).expect("frames");
    assert!(
        answered + Duration::from_secs(3) < last_frame,
        "the request for `a` waited for the stream: answered {:?} before its end",
        last_frame.saturating_duration_since(answered)
    );
    assert!(mux.hooks.events().iter().all(|e| !e.contains(" b")), "{:?}", mux.hooks.events());
}

/// Defect 2: after a drain timeout cut `a`'s requests, a failing sleep with
/// `alive` still passing republished the same, cut incarnation: every new
/// request for `a` got a closed connection. Now `a` serves again afresh.
#[tokio::test]
async fn a_failed_sleep_after_a_cut_drain_serves_the_old_model_again_afresh() {
    let mux = mux().model("a").model("b").policy("drain_timeout_secs: 1").start();
    let stream = mux.slow_stream("a", 100, 100).await;
    let stream = tokio::spawn(frames_until_cut(stream));
    mux.hooks.set("fail-sleep-a");
    let b = http::post(&mux.url(CHAT), &chat("b")).await;
    b.assert_error(503, "model_unavailable");
    assert!(b.text().contains("sleep hook of model `a`"), "{}", b.text());
    // The stream was cut by the drain timeout.
    let (streamed, cut) = stream.await.expect("stream task");
    assert!(cut && streamed < 100, "the stream was not cut ({streamed} frames)");
    assert_eq!(mux.state("a").await, "active");
    for _ in 0..3 {
        let r = http::post(&mux.url(CHAT), &chat("a")).await;
        assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
    }
}

/// Reads a streamed body to its end or its cut: (data frames, cut).
async fn frames_until_cut(response: hyper::Response<hyper::body::Incoming>) -> (usize, bool) {
    use http_body_util::BodyExt;
    let mut body = response.into_body();
    let mut n = 0;
    loop {
        match tokio::time::timeout(PATIENCE, body.frame()).await.expect("frame in time") {
            None => return (n, false),
            Some(Err(_)) => return (n, true),
            Some(Ok(frame)) => n += usize::from(frame.is_data()),
        }
    }
}

/// Defect 3: a periodic `alive` that timed out ("unknown") forgot `a`
/// without its sleep hook, and the next miss woke `b` beside it. Now a
/// timeout changes nothing and `a` is slept before `b` wakes.
#[tokio::test]
async fn an_alive_check_that_times_out_never_leaves_two_models_loaded() {
    let mux = mux()
        .model("a")
        .model("b")
        .up_at_start("a")
        .policy("alive_interval_secs: 1")
        .policy("alive_timeout_secs: 1")
        .start();
    mux.wait_state("a", "active").await;
    mux.hooks.set("slow-alive-a");
    let deadline = Instant::now() + PATIENCE;
    while !mux.log().contains("alive hook did not answer in time") {
        assert!(Instant::now() < deadline, "no periodic alive timed out:\n{}", mux.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mux.state("a").await, "active", "an unknown answer must change nothing");
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"));
    mux.hooks.clear("slow-alive-a");
    let r = http::post(&mux.url(CHAT), &chat("b")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"));
    assert_eq!(mux.hooks.events(), ["sleep-start a", "sleep-end a", "wake-start b", "wake-end b"]);
    mux.hooks.assert_never_two_awake();
}

/// A policy that panics when asked: the injected failure of the switch
/// task.
struct Panicking;

impl SwitchPolicy for Panicking {
    fn choose(&mut self, _: &PolicyContext<'_>) -> Option<(ModelId, &'static str)> {
        panic!("injected failure");
    }
}

/// Defect 6: a switch task that died left every miss waiting forever. Now
/// it is noticed: misses get 503, `/health` is 503, `/llmux/status` says
/// so, and the exit is not clean.
#[tokio::test]
async fn a_dead_switch_task_answers_misses_503_and_fails_health_and_exit() {
    let port = free_port();
    let yaml = format!(
        "host: 127.0.0.1\nport: 0\nmodels:\n  a:\n    port: {port}\n    wake: 'true'\n    sleep: 'true'\n    alive: 'exit 1'\n"
    );
    let config = llmux::Config::parse(&yaml, llmux::config::Format::Yaml, std::env::temp_dir()).expect("config");
    let server = llmux::Server::bind(config).await.expect("bind").with_policy(Box::new(Panicking));
    let addr: SocketAddr = server.local_addr().expect("addr");
    let shared = Arc::clone(server.shared());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    let url = |path: &str| format!("http://{addr}{path}");
    let r = http::post(&url(CHAT), &chat("a")).await;
    r.assert_error(503, "model_unavailable");
    assert!(r.text().contains("switch task"), "{}", r.text());
    assert!(shared.is_switch_task_dead());
    let health = http::get(&url("/health")).await;
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["status"], "switch_task_dead");
    assert_eq!(http::get(&url("/llmux/status")).await.json()["switch_task"], "dead");
    // A new miss is answered at once too.
    let again = tokio::time::timeout(PATIENCE, http::post(&url(CHAT), &chat("a"))).await.expect("answered");
    again.assert_error(503, "model_unavailable");
    let _ = stop.send(());
    let exit = tokio::time::timeout(PATIENCE, serving).await.expect("shut down").expect("serve task");
    assert!(!exit.clean, "a dead switch task must not exit cleanly");
}
