//! Model names: aliases (one model, one queue, one metrics series) and
//! `upstream_model` (the name the backend is sent), through real llmux and
//! stand-ins.

use crate::support::backend::{echoed, fnv1a64, requests};
use crate::support::http::{self, chat};
use crate::support::mux;

const CHAT: &str = "/v1/chat/completions";

/// A request naming an alias reaches the model's backend and counts under
/// the model's name; `/v1/models` lists the aliases after their model;
/// `/v1/models/{alias}` answers.
#[tokio::test]
async fn an_alias_routes_to_its_model_and_counts_under_its_name() {
    let mux = mux()
        .model("a")
        .model("b")
        .model_line("b", "aliases: [b-fast, 'org/b']")
        .model_line("b", "upstream_model: b")
        .start();
    for name in ["b-fast", "org/b", "b"] {
        let r = http::post(&mux.url(CHAT), &chat(name)).await;
        assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"), "{name}: {}", r.text());
    }
    // One wake for the three names: the same model.
    assert_eq!(mux.hooks.events().iter().filter(|e| *e == "wake-start b").count(), 1, "{:?}", mux.hooks.events());
    let m = mux
        .metrics_until("three requests for b", |m| {
            m.value("llmux_requests_total", &[("model", "b"), ("class", "2xx")]) == 3.0
        })
        .await;
    assert!(!m.text.contains("b-fast"), "an alias made a series of its own:\n{}", m.text);
    let list = http::get(&mux.url("/v1/models")).await.json();
    let ids: Vec<&str> = list["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["a", "b", "b-fast", "org/b"]);
    let one = http::get(&mux.url("/v1/models/org%2Fb")).await;
    assert_eq!((one.status.as_u16(), one.json()["id"].as_str()), (200, Some("org/b")));
}

/// `list_aliases: false` keeps the aliases out of `/v1/models`; they still
/// route.
#[tokio::test]
async fn list_aliases_false_hides_them_from_the_list() {
    let mux = mux()
        .model("a")
        .model_line("a", "aliases: [x]")
        .model_line("a", "upstream_model: a")
        .config("list_aliases: false")
        .start();
    let list = http::get(&mux.url("/v1/models")).await.json();
    let ids: Vec<&str> = list["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["a"]);
    let r = http::post(&mux.url(CHAT), &chat("x")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
}

/// `upstream_model` replaces the value of the top-level `model` string and
/// nothing else: the backend gets the body with only those bytes changed
/// (escapes in the client's name included), with a matching length.
#[tokio::test]
async fn upstream_model_rewrites_only_the_models_bytes() {
    let mux = mux().model("a").model_line("a", "aliases: ['al\"ias']").model_line("a", "upstream_model: a").start();
    let body = r#"{"messages":[{"role":"user","content":"model \"x\""}],"model"  :  "al\"ias" ,"n":1, "tools":[{"model":"keep"}]}"#;
    let r = http::request(
        hyper::Method::POST,
        &mux.url(CHAT),
        &[("content-type", "application/json"), ("x-standin-echo", "1")],
        body.to_owned(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    let want = body.replace(r#""al\"ias""#, r#""a""#);
    assert_eq!(echo["body_len"], want.len());
    assert_eq!(echo["body_fnv64"], fnv1a64(want.as_bytes()), "the forwarded body is not {want}");
    assert_eq!(echoed(&echo, "content-length"), [want.len().to_string()]);
    // Without the echo, the stand-in (which serves only `a`) answers it.
    let r = http::post(&mux.url(CHAT), &chat("al\\\"ias")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
    let seen = requests(mux.backend("a")).await;
    assert_eq!(seen.last().and_then(|r| r["model"].as_str()), Some("a"));
}

/// Without `upstream_model` the body goes byte for byte, alias and all.
#[tokio::test]
async fn without_upstream_model_an_alias_is_forwarded_as_sent() {
    let mux = mux().model("a").model_line("a", "aliases: [x]").start();
    let body = chat("x");
    let r = http::request(hyper::Method::POST, &mux.url(CHAT), &[("x-standin-echo", "1")], body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_fnv64"], fnv1a64(body.as_bytes()));
}

/// `/upstream/{model}/...` reaches the model's backend at `/...` (query
/// kept, any method), waking it like any request; an alias works too, an
/// unknown name is 404, and `api_keys` apply (the key is not forwarded).
#[tokio::test]
async fn upstream_paths_reach_the_backend_directly_and_wake_it() {
    let mux = mux().model("a").model("b").model_line("b", "aliases: [b-alias]").config("api_keys: [k]").start();
    let key = [("authorization", "Bearer k")];
    let r = http::request(hyper::Method::GET, &mux.url("/upstream/b/health"), &key, Vec::new()).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"), "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
    assert_eq!(mux.hooks.events(), ["wake-start b", "wake-end b"]);
    let echo_headers = [("authorization", "Bearer k"), ("x-standin-echo", "1")];
    let r =
        http::request(hyper::Method::PUT, &mux.url("/upstream/b-alias/slots/0?action=save"), &echo_headers, "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(
        (echo["method"].as_str(), echo["path"].as_str(), echo["query"].as_str()),
        (Some("PUT"), Some("/slots/0"), Some("action=save"))
    );
    assert!(echoed(&echo, "authorization").is_empty(), "the client's key reached the backend");
    let r = http::request(hyper::Method::GET, &mux.url("/upstream/b"), &echo_headers, Vec::new()).await;
    assert_eq!(r.json()["path"], "/");
    http::request(hyper::Method::GET, &mux.url("/upstream/zz/health"), &key, Vec::new())
        .await
        .assert_error(404, "model_not_found");
    http::get(&mux.url("/upstream/b/health")).await.assert_error(401, "invalid_api_key");
    assert_eq!(mux.hooks.events(), ["wake-start b", "wake-end b"], "nothing else woke");
}
