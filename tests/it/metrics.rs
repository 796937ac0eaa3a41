//! `GET /metrics`: Prometheus text format read with a real parser, every
//! family llmux exports, and what requests, switches, hooks and refusals
//! do to them.

use hyper::Method;

use crate::support::admin::Metrics;
use crate::support::http::{self, chat, frames};
use crate::support::{mux, Mux};

const CHAT: &str = "/v1/chat/completions";
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const STATES: [&str; 6] = ["asleep", "waking", "active", "draining", "sleeping", "failed"];

/// Sends `n` chat requests for `model`, each of which must succeed.
async fn chats(mux: &Mux, model: &str, n: usize) {
    for _ in 0..n {
        let r = http::post(&mux.url(CHAT), &chat(model)).await;
        assert_eq!((r.status.as_u16(), r.served_by()), (200, model), "{}", r.text());
    }
}

/// Asserts `model`'s `llmux_model_state` is 1 for `state` and 0 otherwise.
fn assert_state(m: &Metrics, model: &str, state: &str) {
    for s in STATES {
        let want = if s == state { 1.0 } else { 0.0 };
        assert_eq!(m.value("llmux_model_state", &[("model", model), ("state", s)]), want, "{model} {s}");
    }
}

/// At start every family is there with its type, request counters are
/// preallocated at zero for every model and class, and build info is 1.
#[tokio::test]
async fn every_family_is_exported_and_request_counters_start_at_zero() {
    let mux = mux().model("a").model("b").start();
    mux.wait_state("a", "asleep").await;
    let m = mux.metrics().await;
    for model in ["a", "b"] {
        for class in CLASSES {
            assert_eq!(m.value("llmux_requests_total", &[("model", model), ("class", class)]), 0.0);
        }
        assert_eq!(m.value("llmux_queue_depth", &[("model", model)]), 0.0);
        assert_eq!(m.value("llmux_in_flight", &[("model", model)]), 0.0);
        assert_state(&m, model, "asleep");
    }
    for (family, kind) in [
        ("llmux_requests_total", "counter"),
        ("llmux_queue_depth", "gauge"),
        ("llmux_in_flight", "gauge"),
        ("llmux_model_state", "gauge"),
        ("llmux_open_connections", "gauge"),
        ("llmux_build_info", "gauge"),
    ] {
        assert_eq!(m.kind(family), kind, "{family}");
    }
    assert_eq!(m.value("llmux_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    // The scrape's own connection is open.
    assert!(m.value("llmux_open_connections", &[]) >= 1.0);
}

/// Successful requests are counted per model under 2xx and timed in both
/// histograms, whose buckets run from 5 ms to an hour; a backend's 500 is
/// counted under 5xx.
#[tokio::test]
async fn requests_are_counted_by_model_and_class_and_timed() {
    let mux = mux().model("a").model("b").start();
    chats(&mux, "a", 3).await;
    let a = [("model", "a")];
    let m =
        mux.metrics_until("three timed requests for a", |m| m.sum("llmux_request_duration_seconds", &a) == 3.0).await;
    assert_eq!(m.value("llmux_requests_total", &[("model", "a"), ("class", "2xx")]), 3.0);
    assert_eq!(m.value("llmux_requests_total", &[("model", "b"), ("class", "2xx")]), 0.0);
    assert_eq!(m.value("llmux_request_first_byte_seconds", &a), 3.0);
    for family in ["llmux_request_first_byte_seconds", "llmux_request_duration_seconds"] {
        assert_eq!(m.kind(family), "histogram");
        let buckets = m.buckets(family, &a);
        let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
        assert!(bounds.contains(&0.005) && bounds.contains(&3600.0), "{family} buckets {bounds:?}");
        assert!(bounds.contains(&f64::INFINITY), "{family} has no +Inf bucket");
    }
    let failing = [("x-standin-status", "500")];
    let r = http::request(Method::POST, &mux.url(CHAT), &failing, chat("a")).await;
    assert_eq!(r.status, 500);
    let five = [("model", "a"), ("class", "5xx")];
    mux.metrics_until("a 5xx for a", |m| m.value("llmux_requests_total", &five) == 1.0).await;
}

/// A request for an unknown model, or without a model, creates no series:
/// no `model` label value outside the config appears anywhere.
#[tokio::test]
async fn unknown_models_never_create_a_series() {
    let mux = mux().model("a").model("b").start();
    http::post(&mux.url(CHAT), &chat("gpt-9")).await.assert_error(404, "model_not_found");
    http::post(&mux.url(CHAT), r#"{"messages":[]}"#).await.assert_error(400, "invalid_body");
    chats(&mux, "a", 1).await;
    let m = mux.metrics().await;
    let known = ["a", "b"].map(str::to_owned).into_iter().collect();
    assert_eq!(m.label_values("model"), known);
    for key in ["from", "to"] {
        assert!(m.label_values(key).iter().all(|v| v.is_empty() || known.contains(v)), "{key}: {}", m.text);
    }
    assert!(!m.text.contains("gpt-9"), "{}", m.text);
    assert_eq!(m.value("llmux_requests_total", &[("model", "a"), ("class", "4xx")]), 0.0);
}

/// A switch a -> b is counted as done with one sample per phase, the hooks
/// that ran are counted and timed, and the model states follow.
#[tokio::test]
async fn a_switch_counts_its_phases_hooks_and_states() {
    let mux = mux().model("a").model("b").start();
    chats(&mux, "a", 1).await;
    chats(&mux, "b", 1).await;
    let a_to_b = [("from", "a"), ("to", "b")];
    let done = [a_to_b[0], a_to_b[1], ("result", "done")];
    let m = mux.metrics_until("the switch a -> b", |m| m.sum("llmux_switches_total", &done) > 0.0).await;
    assert_eq!(m.value("llmux_switches_total", &done), 1.0);
    assert_eq!(m.value("llmux_switches_total", &[a_to_b[0], a_to_b[1], ("reason", "fifo"), ("result", "done")]), 1.0);
    assert_eq!(m.value("llmux_switches_total", &[("from", ""), ("to", "a"), ("result", "done")]), 1.0);
    assert_eq!(m.kind("llmux_switch_phase_seconds"), "histogram");
    for phase in ["drain", "sleep", "wake"] {
        assert_eq!(m.value("llmux_switch_phase_seconds", &[a_to_b[0], a_to_b[1], ("phase", phase)]), 1.0, "{phase}");
    }
    assert!(m.value("llmux_hook_runs_total", &[("model", "b"), ("hook", "wake")]) >= 1.0);
    assert!(m.value("llmux_hook_runs_total", &[("model", "a"), ("hook", "sleep")]) >= 1.0);
    assert!(m.value("llmux_hook_duration_seconds", &[("model", "b"), ("hook", "wake")]) >= 1.0);
    assert_eq!(m.value("llmux_hook_failures_total", &[("model", "b"), ("hook", "wake")]), 0.0);
    assert_state(&m, "b", "active");
    assert_state(&m, "a", "asleep");
    assert_eq!(m.kind("llmux_model_active_seconds_total"), "counter");
    assert!(m.value("llmux_model_active_seconds_total", &[("model", "a")]) > 0.0, "a was active for a while");
}

/// A failing wake hook counts a hook failure (not a timeout), a failed
/// switch, and leaves the model in state `failed`.
#[tokio::test]
async fn a_failed_wake_counts_a_hook_failure_and_a_failed_switch() {
    let mux = mux().model("a").model("b").start();
    mux.hooks.set("fail-wake-b");
    http::post(&mux.url(CHAT), &chat("b")).await.assert_error(503, "model_unavailable");
    let failed = [("to", "b"), ("result", "failed")];
    let m = mux.metrics_until("the failed switch", |m| m.sum("llmux_switches_total", &failed) > 0.0).await;
    let b_wake = [("model", "b"), ("hook", "wake")];
    assert_eq!(m.value("llmux_hook_failures_total", &b_wake), 1.0);
    assert_eq!(m.value("llmux_hook_timeouts_total", &b_wake), 0.0);
    assert_eq!(m.sum("llmux_switches_total", &failed), 1.0);
    assert_eq!(m.sum("llmux_switches_total", &[("to", "b"), ("result", "done")]), 0.0);
    assert_state(&m, "b", "failed");
}

/// Requests queued for a model and streams in flight on another show in
/// the gauges, which fall back to zero once all is served.
#[tokio::test]
async fn queue_depth_and_in_flight_follow_the_requests() {
    let mux = mux().model("a").model("b").start();
    let stream = mux.slow_stream("a", 8, 150).await;
    let stream = tokio::spawn(frames(stream));
    let (url, body) = (mux.url(CHAT), chat("b"));
    let for_b = tokio::spawn(async move { http::post(&url, &body).await });
    mux.wait_state("a", "draining").await;
    let m = mux.metrics().await;
    assert_eq!(m.value("llmux_in_flight", &[("model", "a")]), 1.0);
    assert_eq!(m.value("llmux_queue_depth", &[("model", "b")]), 1.0);
    stream.await.expect("stream task");
    assert_eq!(for_b.await.expect("b task").served_by(), "b");
    mux.metrics_until("empty queues and no request in flight", |m| {
        m.sum("llmux_in_flight", &[]) == 0.0 && m.sum("llmux_queue_depth", &[]) == 0.0
    })
    .await;
}

/// With `api_keys`, `/metrics` needs a key (the refusal is counted under
/// `api_key`) unless `metrics_public: true`.
#[tokio::test]
async fn metrics_need_a_key_unless_public() {
    let keyed = mux().model("a").config("api_keys: [k]").start();
    http::get(&keyed.url("/metrics")).await.assert_error(401, "invalid_api_key");
    let m = keyed.metrics_with(&[("authorization", "Bearer k")]).await;
    assert!(m.value("llmux_rejected_total", &[("limit", "api_key")]) >= 1.0);
    let public = mux().model("a").config("api_keys: [k]").config("metrics_public: true").start();
    let m = public.metrics().await;
    assert_eq!(m.value("llmux_requests_total", &[("model", "a"), ("class", "2xx")]), 0.0);
    http::post(&public.url(CHAT), &chat("a")).await.assert_error(401, "invalid_api_key");
}

/// A body over `max_body_bytes` is refused and counted under that limit.
#[tokio::test]
async fn a_refused_body_is_counted_under_its_limit() {
    let mux = mux().model("a").config("max_body_bytes: 100").start();
    let big = format!(r#"{{"model":"a","pad":"{}"}}"#, "x".repeat(200));
    http::post(&mux.url(CHAT), &big).await.assert_error(413, "body_too_large");
    let limit = [("limit", "max_body_bytes")];
    let m = mux.metrics_until("the refusal", |m| m.sum("llmux_rejected_total", &limit) > 0.0).await;
    assert_eq!(m.kind("llmux_rejected_total"), "counter");
    assert_eq!(m.value("llmux_rejected_total", &limit), 1.0);
}

/// Requests turned away before a model's queue are counted by reason, a
/// fixed label set: an unknown model's name makes no series. The edge
/// cases go over raw HTTP.
#[tokio::test]
async fn rejections_are_counted_by_reason_with_fixed_labels() {
    let mux = mux().model("a").config("api_keys: [k]").config("max_body_bytes: 1000").start();
    let auth = "Authorization: Bearer k\r\n";
    let send = |head: String, body: &'static str| {
        let addr = mux.llmux.addr.clone();
        async move {
            let raw = format!("{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            http::raw(&addr, raw.as_bytes(), std::time::Duration::from_secs(5)).await
        }
    };
    let cases: [(String, &str, &str); 7] = [
        (format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\n"), r#"{"model":"a"}"#, "401"),
        (format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\n{auth}"), "", "400"),
        (format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\n{auth}"), r#"{"model":"a""#, "400"),
        (format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\n{auth}"), r#"{"model":"secret-name-1"}"#, "404"),
        (format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\n{auth}"), r#"{"model":"secret-name-2"}"#, "404"),
        (format!("GET /nope HTTP/1.1\r\nHost: x\r\n{auth}"), "", "404"),
        (format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\n{auth}"), include_str!("../../LICENSE"), "413"),
    ];
    for (head, body, status) in cases {
        let reply = send(head.clone(), body).await;
        assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{head:?}: {reply}");
    }
    let headers = [("authorization", "Bearer k")];
    let reason = |m: &Metrics, r: &str| m.value("llmux_requests_rejected_total", &[("reason", r)]);
    let m = mux.metrics_until_with(&headers, "the rejections", |m| reason(m, "body_too_large") == 1.0).await;
    assert_eq!(m.kind("llmux_requests_rejected_total"), "counter");
    for (r, n) in [
        ("unauthorized", 1.0),
        ("bad_body", 2.0),
        ("unknown_model", 2.0),
        ("unknown_route", 1.0),
        ("body_too_large", 1.0),
        ("forbidden", 0.0),
        ("body_read_timeout", 0.0),
        ("overloaded", 0.0),
        ("upgrade", 0.0),
    ] {
        assert_eq!(reason(&m, r), n, "{r}");
    }
    assert!(!m.text.contains("secret-name"), "an unknown name made a series:\n{}", m.text);
}
