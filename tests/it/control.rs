//! The control API under `/llmux/`: status, waking and sleeping models by
//! hand, the event stream, and who may use any of it.

use std::net::SocketAddr;

use hyper::Method;
use llmux::config::{Config, Format};
use serde_json::{json, Value};

use crate::support::admin::{ask_as, Event, Events};
use crate::support::backend::free_port;
use crate::support::http::{self, chat, frames};
use crate::support::mux;

const CHAT: &str = "/v1/chat/completions";

/// Where the first event of `kind` whose data has `key: value` is in `events`.
fn find(events: &[Event], kind: &str, key: &str, value: &str) -> Option<usize> {
    events.iter().position(|(k, d)| k == kind && d[key] == value)
}

/// `GET /llmux/status` answers for a client at `peer` (over a pipe).
async fn status_as(server: &llmux::Server, peer: &str) -> (u16, Value) {
    let peer: SocketAddr = peer.parse().expect("peer address");
    let get = "GET /llmux/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (status, body) = ask_as(server.shared(), peer, get).await;
    let json = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    (status, json)
}

/// Status lists every model with its backend port and queue, and the last
/// switch with its timings and the cost learnt for it.
#[tokio::test]
async fn status_reports_every_model_and_the_last_switch() {
    let mux = mux().model("a").model("b").start();
    mux.served("a").await;
    mux.served("b").await;
    let status = mux.status().await;
    assert_eq!(status["active"], "b");
    let models = status["models"].as_array().expect("models");
    assert_eq!(models.iter().map(|m| m["id"].clone()).collect::<Vec<_>>(), ["a", "b"]);
    for (m, want) in models.iter().zip(["asleep", "active"]) {
        assert_eq!(m["state"], want, "{m}");
        assert_eq!(m["port"], mux.backend(m["id"].as_str().expect("id")).port(), "{m}");
        assert_eq!((m["queued"].as_u64(), m["in_flight"].as_u64()), (Some(0), Some(0)), "{m}");
        assert!(m["oldest_wait_ms"].is_null() && m["state_secs"].is_number(), "{m}");
    }
    let last = &status["last_switch"];
    assert_eq!((&last["from"], &last["to"], &last["result"]), (&json!("a"), &json!("b"), &json!("done")), "{last}");
    for key in ["drain_ms", "sleep_ms", "wake_ms", "alive_ms", "total_ms"] {
        assert!(last[key].is_u64(), "{key} in {last}");
    }
    assert!(last["total_ms"].as_u64() >= last["wake_ms"].as_u64(), "{last}");
    assert!(status["last_hook_error"].is_null(), "{status}");
    let costs = status["switch_costs"].as_array().expect("switch_costs");
    assert!(costs.iter().any(|c| c["from"] == "a" && c["to"] == "b" && c["ms"].is_number()), "{costs:?}");
    assert!(costs.iter().any(|c| c["from"].is_null() && c["to"] == "a"), "{costs:?}");
}

/// A failed wake shows in status as the last hook error and a failed switch.
#[tokio::test]
async fn status_names_the_last_hook_error() {
    let mux = mux().model("a").model("b").start();
    mux.hooks.set("fail-wake-b");
    http::post(&mux.url(CHAT), &chat("b")).await.assert_error(503, "model_unavailable");
    let status = mux.status().await;
    let error = &status["last_hook_error"];
    assert_eq!((&error["model"], &error["hook"]), (&json!("b"), &json!("wake")), "{status}");
    assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()), "{status}");
    assert_eq!((&status["last_switch"]["to"], &status["last_switch"]["result"]), (&json!("b"), &json!("failed")));
    assert_eq!(mux.status_of("b").await["state"], "failed");
}

/// The last hook error carries the end of the hook's stderr, where the
/// reason is (`CUDA out of memory`): the last 20 lines, in order.
#[tokio::test]
async fn the_last_hook_error_carries_the_end_of_its_stderr() {
    let mux = mux().model("a").model("b").start();
    mux.hooks.set("fail-wake-b");
    mux.hooks.set("stderr-wake-b");
    http::post(&mux.url(CHAT), &chat("b")).await.assert_error(503, "model_unavailable");
    let status = mux.status().await;
    let lines: Vec<&str> = status["last_hook_error"]["stderr"]
        .as_array()
        .unwrap_or_else(|| panic!("no stderr in {status}"))
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    let mut want: Vec<String> = (82..=100).map(|i| format!("loading shard {i}")).collect();
    want.push("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB".to_owned());
    assert_eq!(lines, want, "{status}");
    // The client's 503 does not carry it: hook output never reaches clients.
    let r = http::post(&mux.url(CHAT), &chat("b")).await;
    assert!(!r.text().contains("CUDA"), "{}", r.text());
}

/// A wake request answers once the model is active, with its rank in the
/// queue; asked again, the model is already active (position 0).
#[tokio::test]
async fn wake_answers_once_the_model_is_active() {
    let mux = mux().model("a").model("b").start();
    let r = mux.admin_post("/llmux/models/b/wake").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!((&body["model"], &body["state"], &body["position"]), (&json!("b"), &json!("active"), &json!(1)));
    assert!(body["waited_ms"].is_u64(), "{body}");
    assert_eq!(mux.hooks.events(), ["wake-start b", "wake-end b"]);
    assert_eq!(mux.health().await["active"], "b");
    let again = mux.admin_post("/llmux/models/b/wake").await.json();
    assert_eq!((&again["state"], &again["position"]), (&json!("active"), &json!(0)));
    assert_eq!(mux.hook_count("wake-start b"), 1);
}

/// `?wait=false` answers 202 at once with the model's rank behind the
/// models already queued, and the wake still happens in its turn.
#[tokio::test]
async fn wake_without_waiting_answers_202_and_the_wake_still_happens() {
    let mux = mux().model("a").model("b").model("c").start();
    mux.hooks.set("hold-wake-a");
    let (url, body) = (mux.url(CHAT), chat("a"));
    let for_a = tokio::spawn(async move { http::post(&url, &body).await });
    mux.hooks.wait_for("wake-start a").await;
    let (url, body) = (mux.url(CHAT), chat("b"));
    let for_b = tokio::spawn(async move { http::post(&url, &body).await });
    mux.wait_queued("b", 1).await;
    let r = mux.admin_post("/llmux/models/c/wake?wait=false").await;
    assert_eq!(r.status, 202, "{}", r.text());
    let body = r.json();
    assert_eq!((&body["model"], &body["position"]), (&json!("c"), &json!(2)), "{body}");
    assert!(body["state"].is_string(), "{body}");
    mux.hooks.clear("hold-wake-a");
    assert_eq!(for_a.await.expect("a").served_by(), "a");
    assert_eq!(for_b.await.expect("b").served_by(), "b");
    mux.wait_state("c", "active").await;
    let events = mux.hooks.events();
    assert_eq!(
        events.iter().filter(|e| e.starts_with("wake-start")).collect::<Vec<_>>(),
        ["wake-start a", "wake-start b", "wake-start c"]
    );
}

/// Unknown models are 404 for wake and sleep; a wake whose hook fails is 503.
#[tokio::test]
async fn unknown_models_are_404_and_a_failed_wake_is_503() {
    let mux = mux().model("a").model("b").start();
    mux.admin_post("/llmux/models/nope/wake").await.assert_error(404, "model_not_found");
    mux.admin_post("/llmux/models/nope/sleep").await.assert_error(404, "model_not_found");
    mux.hooks.set("fail-wake-b");
    mux.admin_post("/llmux/models/b/wake").await.assert_error(503, "model_unavailable");
    assert_eq!(mux.state("b").await, "failed");
}

/// Sleeping the active model by hand drains it first: its stream ends
/// whole before the sleep hook starts; sleeping it again is a no-op.
#[tokio::test]
async fn sleeping_a_model_drains_it_first() {
    let mux = mux().model("a").model("b").start();
    let stream = mux.slow_stream("a", 6, 150).await;
    let stream = tokio::spawn(frames(stream));
    let url = mux.url("/llmux/models/a/sleep");
    let sleep = tokio::spawn(async move { http::request(Method::POST, &url, &[], "").await });
    mux.wait_state("a", "draining").await;
    assert_eq!(mux.hook_count("sleep-start a"), 0, "slept mid-stream");
    let streamed: Vec<u8> = stream.await.expect("stream").into_iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert!(String::from_utf8_lossy(&streamed).contains("[DONE]"), "the stream was cut");
    let r = sleep.await.expect("sleep task");
    assert_eq!((r.status.as_u16(), r.json()), (200, json!({"model": "a", "state": "asleep"})), "{}", r.text());
    assert_eq!(mux.hooks.events(), ["wake-start a", "wake-end a", "sleep-start a", "sleep-end a"]);
    let again = mux.admin_post("/llmux/models/a/sleep").await;
    assert_eq!((again.status.as_u16(), again.json()), (200, json!({"model": "a", "state": "asleep"})));
    assert_eq!(mux.hook_count("sleep-start a"), 1);
}

/// `POST /llmux/sleep` sleeps whatever is active (or reports nothing was),
/// and the next request wakes its model as usual.
#[tokio::test]
async fn sleep_all_sleeps_whatever_is_active() {
    let mux = mux().model("a").model("b").start();
    let r = mux.admin_post("/llmux/sleep").await;
    assert_eq!((r.status.as_u16(), r.json()), (200, json!({"slept": null, "models": []})), "{}", r.text());
    mux.served("a").await;
    let r = mux.admin_post("/llmux/sleep").await;
    assert_eq!((r.status.as_u16(), r.json()), (200, json!({"slept": "a", "models": ["a"]})), "{}", r.text());
    let health = mux.health().await;
    assert!(health["active"].is_null() && health["resident"] == json!([]), "{health}");
    assert_eq!(mux.state("a").await, "asleep");
    mux.served("a").await;
    assert_eq!(mux.hook_count("wake-start a"), 2);
    assert_eq!(mux.hook_count("sleep-end a"), 1);
}

/// The event stream says hello, then narrates a switch: started, the wake
/// phase, the wake hook's output, and the activation.
#[tokio::test]
async fn events_narrate_a_switch_as_it_happens() {
    let mux = mux().model("a").model("b").start();
    mux.wait_state("a", "asleep").await;
    let mut events = Events::open(&mux).await;
    let (kind, hello) = events.next().await;
    assert_eq!((kind.as_str(), &hello["active"]), ("hello", &Value::Null), "{hello}");
    let (url, body) = (mux.url(CHAT), chat("a"));
    let request = tokio::spawn(async move { http::post(&url, &body).await });
    let mut seen = events.until(|kind, data| kind == "activated" && data["model"] == "a").await;
    let activated = seen.len() - 1;
    assert!(seen[activated].1["ms"].is_u64(), "{seen:?}");
    let started = find(&seen, "switch_started", "to", "a").expect("switch_started before activated");
    assert!(seen[started].1["from"].is_null(), "{seen:?}");
    let wake = seen.iter().position(|(k, d)| k == "phase_done" && d["to"] == "a" && d["phase"] == "wake");
    assert!(wake.is_some_and(|i| started < i && i < activated), "{seen:?}");
    let output = |kind: &str, d: &Value| kind == "hook_output" && d["model"] == "a" && d["hook"] == "wake";
    if !seen.iter().any(|(k, d)| output(k, d)) {
        seen = events.until(output).await;
    }
    let line = seen.iter().find(|(k, d)| output(k, d)).map(|(_, d)| d["line"].clone());
    assert_eq!(line, Some(json!("running wake for a")));
    assert_eq!(request.await.expect("request").served_by(), "a");
}

/// The event stream reports the old model asleep and a failed wake with
/// its reason.
#[tokio::test]
async fn events_report_a_sleep_and_a_failed_wake() {
    let mux = mux().model("a").model("b").start();
    mux.served("a").await;
    let mut events = Events::open(&mux).await;
    let (kind, hello) = events.next().await;
    assert_eq!((kind.as_str(), &hello["active"]), ("hello", &json!("a")), "{hello}");
    mux.hooks.set("fail-wake-b");
    http::post(&mux.url(CHAT), &chat("b")).await.assert_error(503, "model_unavailable");
    let seen = events.until(|kind, data| kind == "failed" && data["model"] == "b").await;
    assert!(seen.last().is_some_and(|(_, d)| d["reason"].as_str().is_some_and(|r| !r.is_empty())), "{seen:?}");
    assert!(find(&seen, "asleep", "model", "a").is_some(), "{seen:?}");
}

/// With `admin_api_keys`, the control API needs an admin key: none or an
/// unknown one is 401, an ordinary API key is 403, an admin key passes.
#[tokio::test]
async fn admin_keys_guard_the_control_api() {
    let mux = mux().model("a").config("api_keys: [k]").config("admin_api_keys: [adm]").start();
    let status = |key: &'static str| {
        let url = mux.url("/llmux/status");
        async move {
            let headers: &[(&str, &str)] = if key.is_empty() { &[] } else { &[("authorization", key)] };
            http::request(Method::GET, &url, headers, "").await
        }
    };
    status("").await.assert_error(401, "invalid_api_key");
    status("Bearer nope").await.assert_error(401, "invalid_api_key");
    status("Bearer k").await.assert_error(403, "forbidden");
    let ok = status("Bearer adm").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["models"][0]["id"], "a");
    mux.admin_post_with("/llmux/sleep", &[("authorization", "Bearer k")]).await.assert_error(403, "forbidden");
    let slept = mux.admin_post_with("/llmux/sleep", &[("authorization", "Bearer adm")]).await;
    assert_eq!(slept.status, 200, "{}", slept.text());
}

/// Without `admin_api_keys`, `api_keys` still apply to the control API as
/// to every path.
#[tokio::test]
async fn without_admin_keys_the_api_keys_still_apply() {
    let mux = mux().model("a").config("api_keys: [k]").start();
    http::get(&mux.url("/llmux/status")).await.assert_error(401, "invalid_api_key");
    let ok = http::request(Method::GET, &mux.url("/llmux/status"), &[("authorization", "Bearer k")], "").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}

/// Without `admin_api_keys`, only loopback clients reach the control API;
/// others get 403.
#[tokio::test]
async fn without_admin_keys_only_loopback_clients_are_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "host: 127.0.0.1\nport: 0\nmodels:\n  a:\n    port: {}\n    wake: 'true'\n    sleep: 'true'\n    alive: 'false'\n",
        free_port()
    );
    let config = Config::parse(&yaml, Format::Yaml, dir.path().to_path_buf()).expect("config");
    let server = llmux::Server::bind(config).await.expect("bind");
    let (status, body) = status_as(&server, "10.1.2.3:5555").await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")), "{body}");
    for loopback in ["127.0.0.1:5555", "[::1]:5555"] {
        let (status, body) = status_as(&server, loopback).await;
        assert_eq!((status, &body["models"][0]["id"]), (200, &json!("a")), "{loopback}: {body}");
    }
}
