//! Several models resident within a capacity budget, as operators see
//! them: `/health`'s `resident`, `/llmux/status`'s capacity and victims,
//! the eviction metrics and events, and `POST /llmux/sleep` sparing pinned
//! models.

use std::time::Instant;

use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::support::admin::{Events, Metrics};
use crate::support::{mux, Mux, PATIENCE};

/// Polls `/llmux/status` until `check` holds; returns that answer.
async fn status_until(mux: &Mux, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = mux.status().await;
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "/llmux/status never showed {what}: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Three models of size 1 in a capacity of 2.
fn three_in_two() -> Mux {
    mux().model("a").model("b").model("c").config("capacity: 2").start()
}

#[tokio::test]
async fn two_models_fit_the_capacity_and_stay_resident_together() {
    let mux = three_in_two();
    mux.served("a").await;
    mux.served("b").await;
    mux.served("a").await;
    let health = mux.health().await;
    assert_eq!((&health["resident"], &health["active"]), (&json!(["a", "b"]), &json!("b")), "{health}");
    assert_eq!(mux.hooks.events(), ["wake-start a", "wake-end a", "wake-start b", "wake-end b"]);
    let status = mux.status().await;
    assert_eq!(
        (&status["capacity"], &status["used"], &status["resident"]),
        (&json!(2.0), &json!(2.0), &json!(["a", "b"]))
    );
    let a = mux.status_of("a").await;
    assert_eq!((&a["size"], &a["pinned"], &a["state"]), (&json!(1.0), &json!(false), &json!("active")), "{a}");
    let m = mux.metrics().await;
    assert_eq!((m.value("llmux_capacity", &[]), m.value("llmux_capacity_used", &[])), (2.0, 2.0));
    assert_eq!(m.kind("llmux_capacity"), "gauge");
    assert_eq!(m.sum("llmux_evictions_total", &[]), 0.0, "{}", m.text);
}

/// With a and b resident and a streaming, a request for c evicts b (the
/// idle one): the `evicting` event, the metrics and the status say so,
/// and a's stream keeps flowing while c wakes.
#[tokio::test]
async fn a_miss_evicts_the_idle_resident_while_the_busy_one_keeps_streaming() {
    let mux = three_in_two();
    mux.served("a").await;
    mux.served("b").await;
    let mut events = Events::open(&mux).await;
    let (kind, hello) = events.next().await;
    assert_eq!((kind.as_str(), &hello["resident"], &hello["active"]), ("hello", &json!(["a", "b"]), &json!("b")));
    let mut stream = mux.slow_stream("a", 40, 50).await.into_body();
    // a is not the resident published last, yet its own in-flight count shows.
    assert_eq!(mux.status_of("a").await["in_flight"], 1);
    let m = mux.metrics().await;
    assert_eq!(
        (m.value("llmux_in_flight", &[("model", "a")]), m.value("llmux_in_flight", &[("model", "b")])),
        (1.0, 0.0)
    );
    mux.hooks.set("hold-wake-c");
    let for_c = mux.spawn_chat("c");
    mux.hooks.wait_for("wake-start c").await;
    // c's wake is held: a frame of a's stream arriving now arrived while c woke.
    let frame = tokio::time::timeout(PATIENCE, stream.frame()).await.expect("a frame while c wakes");
    assert!(frame.expect("stream open").expect("frame").is_data());
    assert!(!mux.hooks.events().contains(&"wake-end c".to_owned()), "{:?}", mux.hooks.events());
    mux.hooks.clear("hold-wake-c");
    let c = for_c.await.expect("c task");
    assert_eq!((c.status.as_u16(), c.served_by()), (200, "c"), "{}", c.text());
    let mut rest = Vec::new();
    while let Some(frame) = tokio::time::timeout(PATIENCE, stream.frame()).await.expect("frame in time") {
        rest.extend_from_slice(&frame.expect("frame").into_data().unwrap_or_default());
    }
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"), "a's stream was cut");
    let log = mux.hooks.events();
    assert!(
        log.contains(&"sleep-end b".to_owned()) && !log.iter().any(|e| e.ends_with(" a") && e.starts_with("sleep"))
    );
    let seen = events.until(|kind, _| kind == "evicting").await;
    let (_, evicting) = seen.last().expect("an evicting event");
    assert_eq!((&evicting["to"], &evicting["victims"]), (&json!("c"), &json!(["b"])), "{evicting}");
    assert_evictions_shown(&mux).await;
}

/// After the switch to c that evicted b: metrics, status and health.
async fn assert_evictions_shown(mux: &Mux) {
    let m: Metrics =
        mux.metrics_until("b's eviction", |m| m.sum("llmux_evictions_total", &[("model", "b")]) == 1.0).await;
    assert_eq!(m.value("llmux_evictions_total", &[("model", "a")]), 0.0);
    assert_eq!(m.value("llmux_evictions_total", &[("model", "c")]), 0.0);
    assert_eq!(m.value("llmux_switch_victims_total", &[("to", "c"), ("victim", "b")]), 1.0);
    assert_eq!(m.series("llmux_switch_victims_total", &[]).len(), 1, "{}", m.text);
    assert_eq!(m.value("llmux_capacity_used", &[]), 2.0);
    let status = status_until(mux, "the switch to c", |s| s["last_switch"]["to"] == "c").await;
    let last = &status["last_switch"];
    assert_eq!((&last["victims"], &last["result"]), (&json!(["b"]), &json!("done")), "{last}");
    assert_eq!(last["evicted"][0]["model"], "b", "{last}");
    assert!(last["evicted"][0]["sleep_ms"].is_u64(), "{last}");
    assert_eq!(status["resident"], json!(["a", "c"]), "{status}");
    let health = mux.health().await;
    assert_eq!((&health["resident"], &health["active"]), (&json!(["a", "c"]), &json!("c")), "{health}");
}

#[tokio::test]
async fn sleep_spares_pinned_residents_unless_all_is_asked() {
    let mux = mux().model("a").model("b").config("capacity: 2").model_line("a", "pinned: true").start();
    mux.served("a").await;
    mux.served("b").await;
    assert_eq!(mux.status_of("a").await["pinned"], true);
    let r = mux.admin_post("/llmux/sleep").await;
    assert_eq!((r.status.as_u16(), r.json()), (200, json!({"slept": "b", "models": ["b"]})), "{}", r.text());
    assert_eq!(mux.health().await["resident"], json!(["a"]));
    assert_eq!(mux.hook_count("sleep-start a"), 0, "{:?}", mux.hooks.events());
    let r = mux.admin_post("/llmux/sleep?all=true").await;
    assert_eq!((r.status.as_u16(), r.json()), (200, json!({"slept": "a", "models": ["a"]})), "{}", r.text());
    let health = mux.health().await;
    assert_eq!((&health["resident"], &health["active"]), (&json!([]), &Value::Null), "{health}");
    assert_eq!(mux.hook_count("sleep-end a"), 1);
    assert_eq!(mux.status().await["used"], 0.0);
}

#[tokio::test]
async fn without_a_capacity_one_model_is_resident_and_active_names_it() {
    let mux = mux().model("a").model("b").start();
    mux.served("a").await;
    let health = mux.health().await;
    assert_eq!((&health["resident"], &health["active"]), (&json!(["a"]), &json!("a")), "{health}");
    mux.served("b").await;
    let health = mux.health().await;
    assert_eq!((&health["resident"], &health["active"]), (&json!(["b"]), &json!("b")), "{health}");
    let status = mux.status().await;
    assert_eq!((&status["capacity"], &status["used"]), (&Value::Null, &json!(1.0)), "{status}");
    let m = mux.metrics_until("a's eviction", |m| m.sum("llmux_evictions_total", &[("model", "a")]) == 1.0).await;
    assert!(m.series("llmux_capacity", &[]).is_empty(), "{}", m.text);
    assert_eq!(m.value("llmux_capacity_used", &[]), 1.0);
    assert_eq!(m.value("llmux_switch_victims_total", &[("to", "b"), ("victim", "a")]), 1.0);
}
