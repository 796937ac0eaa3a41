//! `models.<name>.max_in_flight`: at most that many requests reach the
//! backend at once; the rest wait in llmux's queue (counted in its
//! metrics) and are admitted as places free, none lost.

use crate::support::backend::stats;
use crate::support::http::{self, chat};
use crate::support::mux;

const CHAT: &str = "/v1/chat/completions";

/// 20 requests at once, `max_in_flight: 2`, a stand-in serving 2 at a time
/// with a 100 ms delay each: all 20 succeed, the stand-in never held more
/// than 2 at once, and the 18 others waited in llmux's queue
/// (`llmux_queue_depth`).
#[tokio::test]
async fn twenty_at_once_reach_the_backend_two_at_a_time_and_all_succeed() {
    let mux = mux()
        .model("a")
        .model_line("a", "max_in_flight: 2")
        .backend_args("a", &["--concurrency", "2"])
        .up_at_start("a")
        .start();
    mux.wait_state("a", "active").await;
    let url = mux.url(CHAT);
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let headers = [("content-type", "application/json"), ("x-standin-delay-ms", "100")];
                http::request(hyper::Method::POST, &url, &headers, chat("a")).await
            })
        })
        .collect();
    let m = mux
        .metrics_until("requests queued behind max_in_flight", |m| {
            m.value("llmux_queue_depth", &[("model", "a")]) >= 10.0
        })
        .await;
    assert!(m.value("llmux_in_flight", &[("model", "a")]) <= 3.0, "{}", m.text);
    for request in requests {
        let r = request.await.expect("the request task");
        assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
    }
    let s = stats(mux.backend("a")).await;
    assert_eq!(s["requests"], 20, "{s}");
    assert_eq!(s["max_held"], 2, "the backend held more than max_in_flight at once: {s}");
    let m = mux.metrics().await;
    assert_eq!(m.value("llmux_queue_depth", &[("model", "a")]), 0.0);
    assert_eq!(m.value("llmux_requests_total", &[("model", "a"), ("class", "2xx")]), 20.0);
}

/// Without `max_in_flight` the same burst reaches the stand-in at once
/// (so the test above measures llmux, not the stand-in).
#[tokio::test]
async fn without_max_in_flight_the_backend_gets_the_burst() {
    let mux = mux().model("a").backend_args("a", &["--concurrency", "2"]).up_at_start("a").start();
    mux.wait_state("a", "active").await;
    let url = mux.url(CHAT);
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let headers = [("content-type", "application/json"), ("x-standin-delay-ms", "100")];
                http::request(hyper::Method::POST, &url, &headers, chat("a")).await
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.expect("task").status, 200);
    }
    let held = stats(mux.backend("a")).await["max_held"].as_u64().unwrap_or(0);
    assert!(held > 2, "the stand-in held only {held} at once");
}
