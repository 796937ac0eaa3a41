//! Reloading the config (`POST /llmux/reload` and SIGHUP) while llmux
//! serves: models come and go, changes apply at the next switch or wake,
//! a bad file changes nothing, and nothing in flight is disturbed.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::support::admin::Events;
use crate::support::backend::{free_port, stats};
use crate::support::http::{self, chat};
use crate::support::wire::RawConn;
use crate::support::{harness_yaml, mux, standin, Mux, Process, Spec, PATIENCE};

const CHAT: &str = "/v1/chat/completions";

/// Sends a chat request for `model` that must be served by it.
async fn served(mux: &Mux, model: &str) {
    let r = http::post(&mux.url(CHAT), &chat(model)).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, model), "{}", r.text());
}

/// `model`'s backend port in the running config.
fn port(mux: &Mux, model: &str) -> u16 {
    mux.backend(model).port()
}

/// Reloads through the endpoint, asserting a 200; returns its body.
async fn reloaded(mux: &Mux) -> Value {
    let r = mux.reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The names a reload answer lists under `key`.
fn listed(answer: &Value, key: &str) -> Vec<String> {
    let list = answer[key].as_array().unwrap_or_else(|| panic!("no {key} list in {answer}"));
    list.iter().map(|v| v.as_str().expect("a name").to_owned()).collect()
}

/// How many requests `backend` has answered.
async fn requests_seen(backend: &Process) -> u64 {
    stats(backend).await["requests"].as_u64().expect("a request count")
}

/// Waits until `/v1/models` lists exactly `ids`.
async fn wait_models(mux: &Mux, ids: &[&str]) {
    let deadline = Instant::now() + PATIENCE;
    while mux.model_ids().await != ids {
        assert!(Instant::now() < deadline, "/v1/models never became {ids:?}: {:?}", mux.model_ids().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `/health` no longer lists `model`.
async fn wait_unlisted(mux: &Mux, model: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let health = mux.health().await;
        if !health["models"].as_array().expect("models").iter().any(|m| m["id"] == model) {
            return;
        }
        assert!(Instant::now() < deadline, "{model} is still in /health: {health}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reload adds and removes models: the new one is listed and served, the
/// removed one is unknown, and the event stream reports both.
#[tokio::test]
async fn a_reload_adds_and_removes_models() {
    let mux = mux().model("a").model("b").start();
    served(&mux, "a").await;
    let c = standin("c");
    let mut events = Events::open(&mux).await;
    assert_eq!(events.next().await.0, "hello");
    mux.rewrite_config(&[("a", port(&mux, "a")), ("c", c.port())], &Spec::default());
    let answer = reloaded(&mux).await;
    assert_eq!((listed(&answer, "added"), listed(&answer, "removed")), (vec!["c".to_owned()], vec!["b".to_owned()]));
    assert!(listed(&answer, "changed").is_empty() && listed(&answer, "restart_needed").is_empty(), "{answer}");
    assert_eq!(mux.model_ids().await, ["a", "c"]);
    served(&mux, "c").await;
    http::post(&mux.url(CHAT), &chat("b")).await.assert_error(404, "model_not_found");
    let seen = events.until(|kind, _| kind == "reloaded").await;
    let data = &seen.last().expect("reloaded").1;
    assert_eq!((&data["added"], &data["removed"]), (&json!(["c"]), &json!(["b"])), "{data}");
}

/// Removing the active model drains and sleeps it, and it leaves /health.
#[tokio::test]
async fn removing_the_active_model_sleeps_it() {
    let mux = mux().model("a").model("b").start();
    served(&mux, "b").await;
    mux.rewrite_config(&[("a", port(&mux, "a"))], &Spec::default());
    assert_eq!(listed(&reloaded(&mux).await, "removed"), ["b"]);
    mux.hooks.wait_for("sleep-end b").await;
    wait_unlisted(&mux, "b").await;
    http::post(&mux.url(CHAT), &chat("b")).await.assert_error(404, "model_not_found");
    served(&mux, "a").await;
    mux.hooks.assert_never_two_awake();
}

/// An invalid file is refused with 400 `invalid_config` and the old config
/// stays in force.
#[tokio::test]
async fn an_invalid_config_is_refused_and_the_old_one_stays() {
    let mux = mux().model("a").model("b").start();
    served(&mux, "a").await;
    mux.write_config("models: [\n");
    mux.reload().await.assert_error(400, "invalid_config");
    let models = [("a", port(&mux, "a"))];
    let typo = format!("{}polcy: {{}}\n", harness_yaml(&models, &Spec::default()));
    mux.write_config(&typo);
    mux.reload().await.assert_error(400, "invalid_config");
    assert_eq!(mux.model_ids().await, ["a", "b"]);
    served(&mux, "a").await;
    served(&mux, "b").await;
}

/// SIGHUP reloads like the endpoint, and logs whether it worked.
#[tokio::test]
async fn sighup_reloads_the_config() {
    let mux = mux().model("a").model("b").start();
    let c = standin("c");
    mux.rewrite_config(&[("a", port(&mux, "a")), ("b", port(&mux, "b")), ("c", c.port())], &Spec::default());
    mux.llmux.signal(Signal::SIGHUP);
    wait_models(&mux, &["a", "b", "c"]).await;
    mux.wait_log("config reloaded").await;
    served(&mux, "c").await;
    mux.write_config("models: [\n");
    mux.llmux.signal(Signal::SIGHUP);
    mux.wait_log("config reload failed").await;
    assert_eq!(mux.model_ids().await, ["a", "b", "c"]);
    served(&mux, "c").await;
}

/// A SIGHUP sent as soon as llmux says it is listening reloads the config
/// instead of killing llmux.
#[tokio::test]
async fn a_sighup_right_after_start_reloads() {
    let mut mux = mux().model("a").start();
    mux.llmux.signal(Signal::SIGHUP);
    let deadline = Instant::now() + PATIENCE;
    while !mux.log().contains("config reloaded") {
        assert!(mux.llmux.running(), "llmux died of a SIGHUP sent after `listening on`:\n{}", mux.log());
        assert!(Instant::now() < deadline, "no reload logged:\n{}", mux.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served(&mux, "a").await;
}

/// A new backend port for the active model is used from its next wake on;
/// until then its requests still go to the old port.
#[tokio::test]
async fn a_changed_backend_port_applies_at_the_next_wake() {
    let mux = mux().model("a").model("b").start();
    served(&mux, "a").await;
    let moved = standin("a");
    mux.rewrite_config(&[("a", moved.port()), ("b", port(&mux, "b"))], &Spec::default());
    assert_eq!(listed(&reloaded(&mux).await, "changed"), ["a"]);
    served(&mux, "a").await;
    assert_eq!((requests_seen(mux.backend("a")).await, requests_seen(&moved).await), (2, 0));
    served(&mux, "b").await;
    served(&mux, "a").await;
    assert_eq!((requests_seen(mux.backend("a")).await, requests_seen(&moved).await), (2, 1));
}

/// Changed hooks apply to the next switch, not to the model already awake.
#[tokio::test]
async fn changed_hooks_apply_to_the_next_switch() {
    let mux = mux().model("a").model("b").start();
    served(&mux, "a").await;
    let models = [("a", port(&mux, "a")), ("b", port(&mux, "b"))];
    let new_wake = "    wake: sh hook.sh wake && echo new-wake $LLMUX_MODEL >> hooks.log\n";
    mux.write_config(&harness_yaml(&models, &Spec::default()).replace("    wake: sh hook.sh wake\n", new_wake));
    let changed = listed(&reloaded(&mux).await, "changed");
    assert!(changed.contains(&"a".to_owned()) && changed.contains(&"b".to_owned()), "{changed:?}");
    served(&mux, "a").await;
    assert!(!mux.hooks.events().iter().any(|e| e.starts_with("new-wake")), "{:?}", mux.hooks.events());
    served(&mux, "b").await;
    mux.hooks.wait_for("new-wake b").await;
}

/// A new listen port is only reported as needing a restart; the active
/// model and a keep-alive connection opened before the reload carry on.
#[tokio::test]
async fn a_new_listen_port_needs_a_restart_and_connections_survive() {
    let mux = mux().model("a").model("b").start();
    served(&mux, "a").await;
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    let get = b"GET /v1/models HTTP/1.1\r\nHost: llmux\r\n\r\n";
    conn.write(get).await;
    assert_eq!(conn.read_response().await.status, 200);
    let models = [("a", port(&mux, "a")), ("b", port(&mux, "b"))];
    let text = harness_yaml(&models, &Spec::default()).replacen("port: 0\n", &format!("port: {}\n", free_port()), 1);
    mux.write_config(&text);
    let restart = listed(&reloaded(&mux).await, "restart_needed");
    assert!(restart.iter().any(|k| k.contains("port")), "{restart:?}");
    mux.wait_log("restart").await;
    conn.write(get).await;
    assert_eq!(conn.read_response().await.status, 200, "the keep-alive connection did not survive");
    served(&mux, "a").await;
    assert_eq!(mux.hooks.events(), ["wake-start a", "wake-end a"]);
}

/// A restart-only setting changed by one reload is still reported by the
/// next (it is compared with the config llmux started with), until the
/// file says what llmux runs with again.
#[tokio::test]
async fn a_pending_restart_is_reported_until_it_happens() {
    let mux = mux().model("a").model("b").start();
    let models = [("a", port(&mux, "a")), ("b", port(&mux, "b"))];
    let started = harness_yaml(&models, &Spec::default());
    let moved = started.replacen("port: 0\n", &format!("port: {}\n", free_port()), 1);
    mux.write_config(&moved);
    assert_eq!(listed(&reloaded(&mux).await, "restart_needed"), ["port"]);
    // A second reload, with something else changed: the port still waits.
    let extra = [String::from("min_active_secs: 1")];
    let spec = Spec { policy: &extra, ..Spec::default() };
    mux.write_config(&harness_yaml(&models, &spec).replacen("port: 0\n", &format!("port: {}\n", free_port()), 1));
    let answer = reloaded(&mux).await;
    assert_eq!(listed(&answer, "restart_needed"), ["port"], "{answer}");
    // The same file again: nothing changed since the last reload, and yet the restart is pending.
    assert_eq!(listed(&reloaded(&mux).await, "restart_needed"), ["port"]);
    // Back to the port llmux listens on: nothing pending.
    mux.write_config(&started);
    let answer = reloaded(&mux).await;
    assert!(listed(&answer, "restart_needed").is_empty(), "{answer}");
    served(&mux, "a").await;
}

/// A reload names the settings it changed besides the models: the policy's
/// keys (in the answer, the `reloaded` event and the log line); a
/// restart-only key is listed under `restart_needed` only.
#[tokio::test]
async fn a_reload_names_the_policy_keys_it_changed() {
    let mux = mux().model("a").model("b").start();
    let mut events = Events::open(&mux).await;
    let models = [("a", port(&mux, "a")), ("b", port(&mux, "b"))];
    let policy = [String::from("min_active_secs: 2.5"), String::from("request_timeout_secs: 30")];
    let extra = [String::from("access_log: false"), String::from("limits: {max_headers: 50}")];
    mux.write_config(&harness_yaml(&models, &Spec { policy: &policy, extra: &extra, ..Spec::default() }));
    let answer = reloaded(&mux).await;
    let settings = listed(&answer, "settings");
    assert_eq!(settings, ["access_log", "policy.request_timeout_secs", "policy.min_active_secs"], "{answer}");
    assert_eq!(listed(&answer, "restart_needed"), ["limits.max_headers"], "{answer}");
    // The models' effective settings did not change.
    assert!(listed(&answer, "changed").is_empty(), "{answer}");
    let seen = events.until(|kind, _| kind == "reloaded").await;
    assert_eq!(seen.last().expect("reloaded").1["settings"], json!(settings));
    mux.wait_log("policy.min_active_secs").await;
    // A reload that changes nothing names nothing.
    let answer = reloaded(&mux).await;
    assert!(listed(&answer, "settings").is_empty(), "{answer}");
}
