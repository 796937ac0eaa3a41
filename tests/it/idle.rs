//! Policies that act without a request: sleeping an idle model, waking a
//! preloaded one at start, and the periodic alive check of the active one.

use std::process::{Command, Stdio};
use std::time::Instant;

use crate::support::backend::free_port;
use crate::support::http::{self, chat, frames};
use crate::support::{mux, Mux, PATIENCE};

const CHAT: &str = "/v1/chat/completions";

/// Waits until `/health` shows nothing active.
async fn wait_nothing_active(mux: &Mux) {
    let deadline = Instant::now() + PATIENCE;
    while !mux.health().await["active"].is_null() {
        assert!(Instant::now() < deadline, "a model stayed active: {}", mux.health().await);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Waits until `model` has been in its current state for `secs` seconds
/// (`/llmux/status`'s `state_secs`), the witness that nothing changed it.
async fn wait_unchanged_for(mux: &Mux, model: &str, secs: f64) {
    let deadline = Instant::now() + PATIENCE;
    while mux.status_of(model).await["state_secs"].as_f64().unwrap_or(0.0) < secs {
        assert!(Instant::now() < deadline, "{model}'s state_secs never reached {secs}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An active model idle for `idle_sleep_secs` is put to sleep, leaving
/// nothing active; the next request wakes it as usual.
#[tokio::test]
async fn an_idle_model_is_put_to_sleep_and_woken_by_the_next_request() {
    let mux = mux().model("a").model("b").policy("idle_sleep_secs: 1").start();
    mux.served("a").await;
    mux.hooks.wait_for("sleep-end a").await;
    wait_nothing_active(&mux).await;
    assert_eq!(mux.state("a").await, "asleep");
    mux.served("a").await;
    assert_eq!(
        mux.hooks.events()[..6],
        ["wake-start a", "wake-end a", "sleep-start a", "sleep-end a", "wake-start a", "wake-end a"]
    );
}

/// A stream in flight longer than the idle time keeps its model awake; the
/// idle clock starts when it ends.
#[tokio::test]
async fn a_request_in_flight_keeps_the_model_awake() {
    let mux = mux().model("a").policy("idle_sleep_secs: 1").start();
    let stream = mux.slow_stream("a", 10, 250).await;
    let streamed = frames(stream).await;
    let text: String = streamed.iter().map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect();
    assert!(text.contains("[DONE]"), "the stream was cut: {text}");
    assert_eq!(mux.hook_count("sleep-start a"), 0, "slept during a 2.5 s stream: {:?}", mux.hooks.events());
    mux.hooks.wait_for("sleep-end a").await;
}

/// A model's own `idle_sleep_secs: 0` turns the policy's idle sleep off
/// for it alone.
#[tokio::test]
async fn a_model_can_opt_out_of_idle_sleep() {
    let mux = mux().model("a").model("b").policy("idle_sleep_secs: 1").model_line("b", "idle_sleep_secs: 0").start();
    mux.served("b").await;
    wait_unchanged_for(&mux, "b", 3.0).await;
    assert_eq!(mux.state("b").await, "active");
    assert_eq!(mux.hook_count("sleep-start b"), 0);
    mux.served("a").await;
    // a has the policy's idle sleep: it goes to sleep after its request.
    mux.hooks.wait_for("sleep-end a").await;
    wait_nothing_active(&mux).await;
}

/// A request arriving while the idle sleep runs waits for it to finish,
/// then wakes the model again.
#[tokio::test]
async fn a_request_during_the_idle_sleep_waits_and_then_wakes_the_model() {
    let mux = mux().model("a").policy("idle_sleep_secs: 1").start();
    mux.served("a").await;
    mux.hooks.set("hold-sleep-a");
    mux.hooks.wait_for("sleep-start a").await;
    let (url, body) = (mux.url(CHAT), chat("a"));
    let request = tokio::spawn(async move { http::post(&url, &body).await });
    mux.wait_queued("a", 1).await;
    mux.hooks.clear("hold-sleep-a");
    let r = request.await.expect("request");
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
    assert_eq!(
        mux.hooks.events()[..6],
        ["wake-start a", "wake-end a", "sleep-start a", "sleep-end a", "wake-start a", "wake-end a"]
    );
}

/// `preload` wakes its model at start, before any request.
#[tokio::test]
async fn preload_wakes_its_model_at_start() {
    let mux = mux().model("a").model("b").policy("preload: b").start();
    mux.wait_state("b", "active").await;
    mux.served("b").await;
    assert_eq!(mux.hooks.events(), ["wake-start b", "wake-end b"]);
}

/// A model adopted at start is switched away from when another is preloaded.
#[tokio::test]
async fn preload_switches_away_from_an_adopted_model() {
    let mux = mux().model("a").model("b").up_at_start("a").policy("preload: b").start();
    mux.wait_state("b", "active").await;
    assert_eq!(mux.hooks.events(), ["sleep-start a", "sleep-end a", "wake-start b", "wake-end b"]);
    assert_eq!(mux.state("a").await, "asleep");
}

/// A `preload` naming no configured model is a config error naming the key.
#[test]
fn an_unknown_preload_model_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("llmux.yaml");
    let text = format!(
        "models:\n  a:\n    port: {}\n    wake: w\n    sleep: s\n    alive: a\npolicy:\n  preload: nope\n",
        free_port()
    );
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .arg("--check")
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run llmux --check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("preload"), "{stderr}");
}

/// With `alive_interval_secs`, an active model whose alive hook starts
/// failing is marked failed with a warning; the next request wakes it again.
#[tokio::test]
async fn a_failing_alive_check_marks_the_active_model_failed() {
    let mux = mux().model("a").model("b").policy("alive_interval_secs: 1").start();
    mux.served("a").await;
    let warnings = |mux: &Mux| mux.log().lines().filter(|l| l.contains("WARN")).count();
    let before = warnings(&mux);
    mux.hooks.set("fail-alive-a");
    mux.wait_state("a", "failed").await;
    assert!(warnings(&mux) > before, "no warning logged:\n{}", mux.log());
    mux.hooks.clear("fail-alive-a");
    mux.served("a").await;
    assert_eq!(mux.hook_count("wake-start a"), 2, "{:?}", mux.hooks.events());
}
