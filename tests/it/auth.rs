//! API keys: every path but `GET /health` needs one; the backend never sees it.

use hyper::Method;

use crate::support::backend::{assert_untouched, echoed};
use crate::support::http::{self, chat};
use crate::support::mux;

const CHAT: &str = "/v1/chat/completions";

#[tokio::test]
async fn without_a_valid_key_every_path_but_health_is_401() {
    let mux = mux().model("a").config("api_keys: [sk-alpha, sk-beta]").start();
    let health = http::get(&mux.url("/health")).await;
    assert_eq!(health.status, 200);
    http::get(&mux.url("/v1/models")).await.assert_error(401, "invalid_api_key");
    let cases: [&[(&str, &str)]; 4] = [
        &[],
        &[("authorization", "Bearer sk-alph")],
        &[("authorization", "sk-alpha")],
        &[("authorization", "Basic c2stYWxwaGE=")],
    ];
    for headers in cases {
        let r = http::request(Method::POST, &mux.url(CHAT), headers, chat("a")).await;
        r.assert_error(401, "invalid_api_key");
        assert!(!r.text().contains("sk-"), "the error must not echo keys: {}", r.text());
    }
    assert_untouched(mux.backend("a")).await;
}

#[tokio::test]
async fn a_valid_key_passes_and_is_stripped_before_forwarding() {
    let mux = mux().model("a").config("api_keys: [sk-alpha, sk-beta]").start();
    let headers = [("authorization", "Bearer sk-beta"), ("x-standin-echo", "1")];
    let r = http::request(Method::POST, &mux.url(CHAT), &headers, chat("a")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(echoed(&r.json(), "authorization").is_empty(), "the key reached the backend: {}", r.text());
    let models = http::request(Method::GET, &mux.url("/v1/models"), &[("authorization", "Bearer sk-alpha")], "").await;
    assert_eq!(models.status, 200);
}

/// `api_keys: ["${VAR}"]` takes the key from llmux's environment: that key
/// passes, the text `${VAR}` itself does not.
#[tokio::test]
async fn an_api_key_from_the_environment() {
    let var = "LLMUX_IT_API_KEY";
    let mux = mux().model("a").config(&format!("api_keys: [\"${{{var}}}\"]")).env(var, "sk-from-env").start();
    let send = |key: &'static str| {
        let url = mux.url(CHAT);
        async move { http::request(Method::POST, &url, &[("authorization", key)], chat("a")).await }
    };
    send("Bearer ${LLMUX_IT_API_KEY}").await.assert_error(401, "invalid_api_key");
    send("Bearer sk-wrong").await.assert_error(401, "invalid_api_key");
    let r = send("Bearer sk-from-env").await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
}
