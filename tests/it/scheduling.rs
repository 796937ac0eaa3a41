//! The cost-aware scheduler end to end: it serves what is here before
//! leaving, and a wait bound still gets every model its turn.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::http::{self, chat, frames};
use crate::support::{mux, Mux, PATIENCE};

const CHAT: &str = "/v1/chat/completions";

/// Keeps model `a` busy with back-to-back 300 ms requests until `stop`.
fn keep_busy(mux: &Mux, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    let url = mux.url(CHAT);
    tokio::spawn(async move {
        let mut served = 0;
        while !stop.load(SeqCst) {
            let r = http::request(hyper::Method::POST, &url, &[("x-standin-delay-ms", "300")], chat("a")).await;
            assert_eq!(r.status, 200, "{}", r.text());
            served += 1;
        }
        served
    })
}

#[tokio::test]
async fn a_stream_on_the_active_model_finishes_before_the_switch_starts() {
    let mux = mux().model("a").model("b").policy("scheduler: cost_aware").start();
    mux.served("a").await;
    let stream = mux.slow_stream("a", 10, 150).await;
    let stream = tokio::spawn(frames(stream));
    let (url, body) = (mux.url(CHAT), chat("b"));
    let for_b = tokio::spawn(async move { http::post(&url, &body).await });
    mux.wait_queued("b", 1).await;
    // While the stream runs, a is never gated: FIFO would drain it now.
    let streamed = stream.await.expect("stream task");
    let stream_end = streamed.last().map(|(at, _)| *at).expect("frames");
    let b = for_b.await.expect("b task");
    assert_eq!((b.status.as_u16(), b.served_by()), (200, "b"));
    let events = mux.hooks.events();
    assert_eq!(&events[2..], ["sleep-start a", "sleep-end a", "wake-start b", "wake-end b"]);
    let drained = mux.metrics().await.value("llmux_switch_phase_seconds_sum", &[("phase", "drain"), ("from", "a")]);
    assert!(drained < 0.1, "the switch found a idle: drain took {drained} s");
    assert!(Instant::now() >= stream_end);
}

#[tokio::test]
async fn a_wait_bound_gets_a_waiting_model_its_turn_while_the_active_one_stays_busy() {
    let mux = mux().model("a").model("b").policy("scheduler: cost_aware").policy("max_wait_secs: 12").start();
    mux.served("a").await;
    let stop = Arc::new(AtomicBool::new(false));
    let busy = keep_busy(&mux, Arc::clone(&stop));
    // Let a's traffic settle into back-to-back requests.
    mux.metrics_until("a busy", |m| m.sum("llmux_requests_total", &[("model", "a")]) >= 3.0).await;
    let asked = Instant::now();
    let b = tokio::time::timeout(PATIENCE, http::post(&mux.url(CHAT), &chat("b"))).await.expect("b answered");
    let waited = asked.elapsed();
    assert_eq!((b.status.as_u16(), b.served_by()), (200, "b"));
    assert!(!busy.is_finished(), "b was served while a still had traffic");
    stop.store(true, SeqCst);
    let served_a = busy.await.expect("busy task");
    assert!(served_a >= 3, "a kept serving: {served_a}");
    // The bound (12 s) less the estimated switch cost (10 s while none was
    // measured) decides: b waits about 2 s while a is busy, not until a's
    // traffic stops (which would hold it for the default bound, 120 s).
    assert!(waited >= Duration::from_millis(1500), "b did not wait for busy a: {waited:?}");
    assert!(waited < Duration::from_secs(15), "b waited {waited:?}");
    let reason = mux.status().await["last_switch"]["reason"].clone();
    assert!(reason == "deadline" || reason == "value", "the switch says why: {reason}");
    let m = mux.metrics().await;
    let a_to_b = [("from", "a"), ("to", "b"), ("reason", "deadline"), ("result", "done")];
    assert_eq!(m.value("llmux_switches_total", &a_to_b), 1.0, "the bound forced a -> b, and the metric says so");
}
