//! The error table: every error llmux answers itself, in OpenAI's shape,
//! with its status, code and `X-Request-Id`, and never forwarded when the
//! request was at fault. Wire-level cases go over raw TCP.

use std::time::{Duration, Instant};

use hyper::Method;

use crate::support::backend::{assert_untouched, free_port, requests, stats, wait_stats};
use crate::support::http::{self, chat, chat_stream, Reply};
use crate::support::wire::RawConn;
use crate::support::{mux, start_llmux, PATIENCE};

const CHAT: &str = "/v1/chat/completions";

/// `assert_error`, plus an `X-Request-Id` on the error.
fn check(r: &Reply, status: u16, code: &str) {
    r.assert_error(status, code);
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()), "no x-request-id on {status} {code}");
}

#[tokio::test]
async fn bodies_without_one_usable_model_are_400_and_never_forwarded() {
    let mux = mux().model("a").start();
    let bodies = [
        "not json",
        "{",
        r#"{"model":"a""#,
        r#"{"model":"a",}"#,
        r#"{"model":"a"} {"model":"a"}"#,
        r#"{"model":"a"}x"#,
        r#"[{"model":"a"}]"#,
        r#""a""#,
        "null",
        "{}",
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":1}"#,
        r#"{"model":null}"#,
        r#"{"model":["a"]}"#,
        r#"{"model":{"name":"a"}}"#,
        r#"{"model":"\ud800"}"#,
        r#"{"metadata":{"model":"a"}}"#,
        // A duplicate top-level model, same or different.
        r#"{"model":"a","model":"a"}"#,
        r#"{"model":"a","messages":[],"model":"b"}"#,
        r#"{"model":"a","\u006dodel":"a"}"#,
    ];
    for body in bodies {
        let r = http::request(Method::POST, &mux.url(CHAT), &[("content-type", "application/json")], body).await;
        assert_eq!(r.status, 400, "{body} gave {}", r.text());
        check(&r, 400, "invalid_body");
    }
    // Invalid UTF-8 inside a string.
    let r = http::request(Method::POST, &mux.url(CHAT), &[], &b"{\"model\":\"a\xff\"}"[..]).await;
    check(&r, 400, "invalid_body");
    assert_untouched(mux.backend("a")).await;
    assert!(mux.hooks.events().is_empty(), "nothing should wake: {:?}", mux.hooks.events());
}

#[tokio::test]
async fn requests_without_a_model_are_unknown_routes_or_invalid_bodies() {
    let mux = mux().model("a").start();
    // No body: 404 unknown_route, whatever the method.
    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::GET, "/v1/chat/completions"),
        (Method::DELETE, "/v1/files/x"),
        (Method::POST, "/health"),
        (Method::PUT, "/v1/models"),
    ] {
        let r = http::request(method.clone(), &mux.url(path), &[], Vec::new()).await;
        check(&r, 404, "unknown_route");
        assert!(r.json()["error"]["message"].as_str().is_some_and(|m| m.contains(path)), "{method} {path}");
    }
    // A body without a model: 400 invalid_body.
    for (method, path) in [(Method::POST, "/anything"), (Method::PUT, "/v1/x")] {
        let r = http::request(method, &mux.url(path), &[], r#"{"prompt":"hi"}"#).await;
        check(&r, 400, "invalid_body");
    }
    assert_untouched(mux.backend("a")).await;
}

/// A POST to an API path that takes a body, sent without one (no
/// `Content-Length`, `Content-Length: 0`, an empty chunked body), is 400
/// "request body required", not 404.
#[tokio::test]
async fn an_empty_body_on_an_api_path_is_400_request_body_required() {
    let mux = mux().model("a").start();
    for path in [CHAT, "/v1/embeddings", "/v1/audio/transcriptions", "/v1/completions"] {
        for framing in ["", "Content-Length: 0\r\n", "Transfer-Encoding: chunked\r\n"] {
            let chunked_end = if framing.contains("chunked") { "0\r\n\r\n" } else { "" };
            let raw = format!("POST {path} HTTP/1.1\r\nHost: x\r\n{framing}Connection: close\r\n\r\n{chunked_end}");
            let reply = http::raw(&mux.llmux.addr, raw.as_bytes(), std::time::Duration::from_secs(5)).await;
            assert!(reply.starts_with("HTTP/1.1 400"), "{path} {framing:?}: {reply}");
            assert!(reply.contains("\"code\":\"invalid_body\"") && reply.contains("request body required"), "{reply}");
            assert!(reply.contains(&format!("POST {path}")), "the message names the request: {reply}");
        }
    }
    assert_untouched(mux.backend("a")).await;
}

/// An invalid JSON body gets a message in plain words with the byte
/// offset, never simd-json's internal error names.
#[tokio::test]
async fn invalid_json_is_described_in_plain_words_with_its_byte_offset() {
    let mux = mux().model("a").start();
    for (body, words) in [
        ("{\"model\":\"a\",\n \"messages\" []}", "expected `:` at byte 26 (line 2, column 13)"),
        (r#"{"model":"a""#, "EOF while parsing an object: the body ends at byte 12"),
        (r#"{"model":"a"} trailing"#, "trailing characters at byte 14"),
        (r#"{"model":"a\q"}"#, "invalid escape at byte 12"),
    ] {
        let r = http::post(&mux.url(CHAT), body).await;
        check(&r, 400, "invalid_body");
        let message = r.json()["error"]["message"].as_str().unwrap_or("").to_owned();
        assert!(message.contains("not valid JSON") && message.contains(words), "{body}: {message}");
        for internal in ["ExpectedObjectColon", "InternalError", "Syntax", "at character"] {
            assert!(!message.contains(internal), "{body}: {message}");
        }
    }
    assert_untouched(mux.backend("a")).await;
}

#[tokio::test]
async fn an_unknown_model_is_404_model_not_found() {
    let mux = mux().model("a").start();
    let r = http::post(&mux.url(CHAT), &chat("nope")).await;
    check(&r, 404, "model_not_found");
    let e = r.json();
    assert_eq!(e["error"]["param"], "model");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("nope")), "{e}");
    // Names are exact: no case folding, no trimming.
    for name in ["A", "a ", " a"] {
        check(&http::post(&mux.url(CHAT), &chat(name)).await, 404, "model_not_found");
    }
    check(&http::get(&mux.url("/v1/models/nope")).await, 404, "model_not_found");
    assert_untouched(mux.backend("a")).await;
}

#[tokio::test]
async fn errors_return_the_clients_request_id() {
    let mux = mux().model("a").start();
    let cases: [(&str, &str, u16); 3] = [(CHAT, "nope", 400), (CHAT, r#"{"model":"zz"}"#, 404), ("/nope", "", 404)];
    for (path, body, status) in cases {
        let r = http::request(Method::POST, &mux.url(path), &[("x-request-id", "req-abc-123")], body).await;
        assert_eq!(r.status, status);
        assert_eq!(r.header("x-request-id"), Some("req-abc-123"));
    }
}

#[tokio::test]
async fn upgrade_and_websocket_requests_are_501() {
    let mux = mux().model("a").start();
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    conn.write(
        b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Request-Id: ws-1\r\n\r\n",
    )
    .await;
    let r = conn.read_response().await;
    assert_eq!(r.status, 501);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-request-id"), Some("ws-1"));
    let e = r.json();
    assert_eq!(e["error"]["type"], "server_error", "{e}");
    assert_eq!(e["error"]["code"], "upgrade_not_supported", "{e}");

    // Even with a body model, an upgrade is not forwarded (an h2c offer
    // alongside another protocol is a real upgrade: protocol.rs has h2c
    // alone).
    let body = chat("a");
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    let req = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write(req.as_bytes()).await;
    assert_eq!(conn.read_response().await.status, 501);
    assert_untouched(mux.backend("a")).await;
}

#[tokio::test]
async fn a_content_length_over_max_body_bytes_is_413() {
    let mux = mux().model("a").config("max_body_bytes: 1000").start();
    let padded = |len: usize| {
        let body = format!(r#"{{"model":"a","pad":"{}"}}"#, "x".repeat(len - 22));
        assert_eq!(body.len(), len);
        body
    };
    let r = http::post(&mux.url(CHAT), &padded(1001)).await;
    check(&r, 413, "body_too_large");
    assert_untouched(mux.backend("a")).await;
    // Exactly at the limit is fine.
    let r = http::post(&mux.url(CHAT), &padded(1000)).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
    // A lying, huge Content-Length is refused before any body is read.
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    conn.write(format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n{{").as_bytes()).await;
    let r = conn.read_response().await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "body_too_large");
    assert_eq!(stats(mux.backend("a")).await["requests"], 1);
}

#[tokio::test]
async fn a_chunked_body_growing_past_max_body_bytes_is_413() {
    let mux = mux().model("a").config("max_body_bytes: 1000").start();
    // Chunks of 400 bytes, no Content-Length: the fourth one takes it past 1000.
    let mut req =
        format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Request-Id: big-1\r\n\r\n");
    for piece in
        [r#"{"model":"a","pad":""#.to_owned(), "y".repeat(400), "y".repeat(400), "y".repeat(400), r#""}"#.to_owned()]
    {
        req.push_str(&format!("{:x}\r\n{piece}\r\n", piece.len()));
    }
    req.push_str("0\r\n\r\n");
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    conn.write(req.as_bytes()).await;
    let r = conn.try_read_response().await.expect("a response before the connection closed");
    assert_eq!(r.status, 413);
    assert_eq!(r.header("x-request-id"), Some("big-1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let e = r.json();
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["type"].as_str()),
        (Some("body_too_large"), Some("invalid_request_error"))
    );
    // A chunked body under the limit passes.
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    let body = chat("a");
    conn.write(
        format!(
            "POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(conn.read_response().await.status, 200);
    assert_eq!(stats(mux.backend("a")).await["requests"], 1);
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_llmux_and_not_forwarded() {
    let mux = mux().model("a").start();
    let body = chat("a");
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nx-standin-echo: 1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write(head.as_bytes()).await;
    // The body is only sent once llmux asked for it.
    let interim = conn.read_response().await;
    assert_eq!(interim.status, 100);
    conn.write(body.as_bytes()).await;
    let r = conn.read_response().await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    assert_eq!(e["body_fnv64"], crate::support::backend::fnv1a64(body.as_bytes()));
    assert!(crate::support::backend::echoed(&e, "expect").is_empty(), "Expect was forwarded: {e}");
}

#[tokio::test]
async fn expect_100_continue_with_a_too_large_content_length_is_413_without_reading_the_body() {
    let mux = mux().model("a").config("max_body_bytes: 1000").start();
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nX-Request-Id: exp-1\r\nContent-Length: 5000\r\n\r\n"
    );
    conn.write(head.as_bytes()).await;
    // No body is ever sent: the answer must come from the head alone, and
    // must not be `100 Continue`.
    let r = conn.read_response().await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("x-request-id"), Some("exp-1"));
    assert_eq!(r.json()["error"]["code"], "body_too_large");
    assert_untouched(mux.backend("a")).await;
}

#[tokio::test]
async fn a_failed_wake_is_503_model_unavailable_with_retry_after() {
    let mux = mux().model("a").model("b").start();
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!(r.status, 200);
    mux.hooks.set("fail-wake-b");
    let r = http::post(&mux.url(CHAT), &chat("b")).await;
    check(&r, 503, "model_unavailable");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().expect("Retry-After in seconds");
    assert!(retry >= 1, "{retry}");
    mux.hooks.wait_for("wake-fail b").await;
    // While b backs off, it is refused at once, with Retry-After again.
    let started = Instant::now();
    let r = http::post(&mux.url(CHAT), &chat("b")).await;
    check(&r, 503, "model_unavailable");
    assert!(r.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_untouched(mux.backend("b")).await;
}

#[tokio::test]
async fn waiting_past_request_timeout_is_504_model_wait_timeout() {
    let mux = mux().model("a").model("b").policy("request_timeout_secs: 1").start();
    mux.hooks.set("hold-wake-b");
    let started = Instant::now();
    let r = http::post(&mux.url(CHAT), &chat("b")).await;
    let waited = started.elapsed();
    check(&r, 504, "model_wait_timeout");
    assert!(waited >= Duration::from_millis(950), "answered after {waited:?}");
    assert!(waited < Duration::from_secs(10), "answered after {waited:?}");
    assert_untouched(mux.backend("b")).await;
    // Once the wake finishes, b serves.
    mux.hooks.clear("hold-wake-b");
    mux.wait_state("b", "active").await;
    let r = http::post(&mux.url(CHAT), &chat("b")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"));
}

#[tokio::test]
async fn a_backend_reset_before_the_headers_is_502() {
    let mux = mux().model("a").start();
    let r = http::request(Method::POST, &mux.url(CHAT), &[("x-standin-reset", "headers")], chat("a")).await;
    check(&r, 502, "backend_error");
    // The next request goes through.
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"));
}

#[tokio::test]
async fn a_malformed_backend_response_is_502() {
    let mux = mux().model("a").start();
    let r = http::request(Method::POST, &mux.url(CHAT), &[("x-standin-malformed", "1")], chat("a")).await;
    check(&r, 502, "backend_error");
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"));
}

#[tokio::test]
async fn a_backend_port_with_nothing_listening_is_502() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = format!(
        "host: 127.0.0.1\nport: 0\nmodels:\n  ghost:\n    port: {port}\n    wake: \"touch up\"\n    sleep: \"rm -f up\"\n    alive: \"test -f up\"\n"
    );
    let path = dir.path().join("llmux.yaml");
    std::fs::write(&path, config).expect("write config");
    let llmux = start_llmux(&path);
    let url = format!("http://{}{CHAT}", llmux.addr);
    let r = http::post(&url, &chat("ghost")).await;
    check(&r, 502, "backend_error");
    // llmux itself is fine.
    assert_eq!(http::get(&format!("http://{}/health", llmux.addr)).await.status, 200);
}

#[tokio::test]
async fn a_stream_cut_midway_truncates_the_body_and_llmux_keeps_serving() {
    let mux = mux().model("a").model("b").start();
    let (got, failed) = cut_stream(&mux).await;
    let text = String::from_utf8_lossy(&got);
    assert!(failed, "the client should see the response end in an error: {text}");
    assert!(!text.contains("[DONE]"), "{text}");
    // The stand-in resets after two chunks; a reset may also discard what
    // was still unread, so at most two arrive.
    assert!(text.matches("chat.completion.chunk").count() <= 2, "{text}");
    wait_stats(mux.backend("a"), "the backend to finish", |s| s["in_flight"] == 0).await;
    // llmux serves on, and does not count the cut request as in flight: a
    // switch (which drains a first) completes.
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"));
    let r = http::post(&mux.url(CHAT), &chat("b")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"));
    assert_eq!(requests(mux.backend("a")).await.len(), 2);
}

/// Requests a stream the backend resets after two chunks; returns what
/// arrived and whether the client saw an error. The reset can also reach
/// llmux before it has flushed the response head, in which case the client
/// sees its connection close instead of a head: the same cut.
async fn cut_stream(mux: &crate::support::Mux) -> (Vec<u8>, bool) {
    use http_body_util::BodyExt;
    let req = hyper::Request::post(mux.url(CHAT))
        .header("x-standin-reset", "stream")
        .header("x-standin-chunks", "5")
        .body(http_body_util::Full::new(bytes::Bytes::from(chat_stream("a"))))
        .expect("request");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = match tokio::time::timeout(PATIENCE, client.request(req)).await.expect("answer in time") {
        Ok(response) => response,
        Err(_) => return (Vec::new(), true),
    };
    assert_eq!(response.status(), 200, "the head was already sent");
    let mut body = response.into_body();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, body.frame()).await.expect("frame in time") {
            Some(Ok(frame)) => got.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
            Some(Err(_)) => return (got, true),
            None => return (got, false),
        }
    }
}

#[tokio::test]
async fn a_backend_hanging_mid_stream_holds_only_its_own_client() {
    use http_body_util::BodyExt;
    let mux = mux().model("a").start();
    let response = http::send(Method::POST, &mux.url(CHAT), &[("x-standin-hang", "stream")], chat_stream("a")).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.expect("a first frame").expect("frame ok");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    // Everyone else is served meanwhile.
    for _ in 0..3 {
        assert_eq!(http::post(&mux.url(CHAT), &chat("a")).await.status, 200);
    }
    // The hung client gives up: the backend sees the cancellation.
    drop(body);
    wait_stats(mux.backend("a"), "the hung request to be cancelled", |s| s["cancelled"] == 1 && s["in_flight"] == 0)
        .await;
}
