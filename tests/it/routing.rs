//! Routing by the body's `model`, forwarding (body, path, query, headers),
//! the endpoints llmux answers itself, streaming, h2c and cancellation.

use std::time::{Duration, Instant};

use hyper::{Method, Version};
use serde_json::Value;

use crate::support::backend::{assert_untouched, echoed, fnv1a64, requests, stats, wait_stats};
use crate::support::http::{self, chat, chat_stream};
use crate::support::wire::{h2c, RawConn};
use crate::support::{mux, Mux};

const ECHO: (&str, &str) = ("x-standin-echo", "1");

/// Sends `body` with echo on and checks the backend saw it byte for byte.
async fn echo(mux: &Mux, method: Method, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (String, Value) {
    let mut all = vec![ECHO];
    all.extend_from_slice(headers);
    let r = http::request(method.clone(), &mux.url(path), &all, body.to_vec()).await;
    assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
    let e = r.json();
    assert_eq!(e["method"], method.as_str(), "{e}");
    assert_eq!(e["body_len"], body.len(), "{e}");
    assert_eq!(e["body_fnv64"], fnv1a64(body), "the body changed on the way: {e}");
    (r.served_by().to_owned(), e)
}

#[tokio::test]
async fn the_body_path_query_and_method_reach_the_backend_unchanged() {
    let mux = mux().model("a").start();
    // Odd spacing, escapes, non-ASCII and number forms must survive as sent.
    let body = "{ \"messages\" : [ {\"role\":\"user\",\"content\":\"h\u{e9}llo \\u00e9 \\n \\\"q\\\"\"} ],\n\t\"n\": 1.50e0, \"model\":\"a\" }  ";
    let (by, e) = echo(&mux, Method::POST, "/v1/chat/completions?x=1&y=%20z&x=2", &[], body.as_bytes()).await;
    assert_eq!(by, "a");
    assert_eq!(e["path"], "/v1/chat/completions");
    assert_eq!(e["query"], "x=1&y=%20z&x=2");

    // Any method and any path, as long as the body names a model.
    for (method, path) in
        [(Method::PUT, "/custom/any/path"), (Method::PATCH, "/v2/x"), (Method::DELETE, "/v1/files/f-1")]
    {
        let (by, e) = echo(&mux, method.clone(), &format!("{path}?k=v"), &[], br#"{"model":"a","id":7}"#).await;
        assert_eq!(by, "a");
        assert_eq!((e["path"].as_str(), e["query"].as_str()), (Some(path), Some("k=v")), "{method}");
    }
    // A GET with a body model is forwarded too.
    let (by, e) = echo(&mux, Method::GET, "/v1/whatever", &[], br#"{"model":"a"}"#).await;
    assert_eq!((by.as_str(), e["path"].as_str()), ("a", Some("/v1/whatever")));
    assert_eq!(stats(mux.backend("a")).await["requests"], 5);
}

#[tokio::test]
async fn a_one_megabyte_body_arrives_intact() {
    let mux = mux().model("a").start();
    // Pseudo-random printable text, so a dropped or moved byte shows.
    let mut x: u32 = 0x1234_5678;
    let content: String = (0..1_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let body = format!(r#"{{"messages":[{{"role":"user","content":"{content}"}}],"model":"a"}}"#);
    assert!(body.len() > 1_000_000);
    let (by, _) = echo(&mux, Method::POST, "/v1/chat/completions", &[], body.as_bytes()).await;
    assert_eq!(by, "a");
    // And without echo the stand-in's own model check agrees.
    let r = http::post(&mux.url("/v1/chat/completions"), &body).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
    let seen = requests(mux.backend("a")).await;
    assert!(seen.iter().all(|s| s["body_len"] == body.len()), "{seen:?}");
}

#[tokio::test]
async fn the_model_is_found_whatever_the_content_type_and_wherever_the_key_is() {
    let mux = mux().model("zeta").model("alpha").start();
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 6] = [
        (&[("content-type", "text/plain")], r#"{"model":"alpha","messages":[]}"#, "alpha"),
        (&[], r#"{"messages":[{"role":"user","content":"hi"}],"n":1,"model":"zeta"}"#, "zeta"),
        (&[("content-type", "application/x-www-form-urlencoded")], r#"{"model":"\u0061lpha"}"#, "alpha"),
        (&[("content-type", "application/octet-stream")], r#"{"x":{"y":[1,{}]},"model":"z\u0065t\u0061"}"#, "zeta"),
        (&[("content-type", "application/json")], r#"{"\u006dodel":"alpha","x":1}"#, "alpha"),
        (&[("content-type", "application/json; charset=utf-8")], "\n {\n \"model\" :\t\"zeta\" \n}\n", "zeta"),
    ];
    for (headers, body, expected) in cases {
        let (by, _) = echo(&mux, Method::POST, "/v1/chat/completions", headers, body.as_bytes()).await;
        assert_eq!(by, expected, "body {body}");
    }
}

#[tokio::test]
async fn a_nested_model_is_never_taken_for_the_request_model() {
    let mux = mux().model("zeta").model("alpha").start();
    let body = r#"{"messages":[{"role":"user","content":"hi","model":"zeta"}],
        "tools":[{"type":"function","function":{"name":"f","model":"zeta","parameters":{"model":"zeta"}}}],
        "metadata":{"model":"zeta"},"model":"alpha","extra":[[{"model":"zeta"}]]}"#;
    let (by, _) = echo(&mux, Method::POST, "/v1/chat/completions", &[], body.as_bytes()).await;
    assert_eq!(by, "alpha");
    // Only nested models: no usable model at all.
    let body = r#"{"messages":[{"model":"zeta"}],"metadata":{"model":"zeta"}}"#;
    let r = http::post(&mux.url("/v1/chat/completions"), body).await;
    r.assert_error(400, "invalid_body");
    assert_untouched(mux.backend("zeta")).await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_forwarding_headers_are_set() {
    let mux = mux().model("a").start();
    let port = mux.backend("a").port();
    let body = chat("a");
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    let head = format!(
        "POST /v1/chat/completions?q=1 HTTP/1.1\r\n\
         Host: llmux.example:8080\r\n\
         Connection: keep-alive, X-Secret, x-other-secret\r\n\
         Keep-Alive: timeout=5\r\n\
         X-Secret: hidden\r\n\
         X-Other-Secret: hidden too\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Proxy-Connection: keep-alive\r\n\
         Proxy-Authenticate: Basic\r\n\
         Proxy-Foo: bar\r\n\
         X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\
         X-Request-Id: client-id-42\r\n\
         X-Kept: yes\r\n\
         Authorization: Bearer sk-test\r\n\
         x-standin-echo: 1\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write(head.as_bytes()).await;
    let r = conn.read_response().await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-request-id"), Some("client-id-42"));
    let e = r.json();
    for gone in [
        "connection",
        "keep-alive",
        "x-secret",
        "x-other-secret",
        "te",
        "trailer",
        "transfer-encoding",
        "proxy-authorization",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-foo",
        "expect",
    ] {
        assert!(echoed(&e, gone).is_empty(), "{gone} was forwarded: {e}");
    }
    assert_eq!(echoed(&e, "host"), [format!("127.0.0.1:{port}")]);
    assert_eq!(echoed(&e, "x-forwarded-for").join(", "), "10.0.0.1, 10.0.0.2, 127.0.0.1");
    assert_eq!(echoed(&e, "x-request-id"), ["client-id-42"]);
    assert_eq!(echoed(&e, "x-kept"), ["yes"]);
    assert_eq!(echoed(&e, "authorization"), ["Bearer sk-test"]);
    assert_eq!(echoed(&e, "content-type"), ["application/json"]);
    assert_eq!(echoed(&e, "content-length"), [body.len().to_string()]);
    assert_eq!(e["body_fnv64"], fnv1a64(body.as_bytes()));

    // Second request on the same connection: a chunked body, no id, no XFF.
    let (first, second) = body.split_at(10);
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nx-standin-echo: 1\r\n\r\n\
         {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    conn.write(chunked.as_bytes()).await;
    let r = conn.read_response().await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    assert!(echoed(&e, "transfer-encoding").is_empty(), "{e}");
    assert_eq!(echoed(&e, "content-length"), [body.len().to_string()]);
    assert_eq!(e["body_fnv64"], fnv1a64(body.as_bytes()));
    assert_eq!(echoed(&e, "x-forwarded-for"), ["127.0.0.1"]);
    let id = r.header("x-request-id").expect("a generated x-request-id").to_owned();
    assert!(!id.is_empty() && id != "client-id-42", "{id}");
    assert_eq!(echoed(&e, "x-request-id"), std::slice::from_ref(&id));
    // The backend's log agrees.
    let seen = requests(mux.backend("a")).await;
    let ids: Vec<_> = seen.iter().map(|s| s["request_id"].as_str().unwrap_or("")).collect();
    assert_eq!(ids, ["client-id-42", id.as_str()]);
}

#[tokio::test]
async fn a_large_body_in_many_chunks_reaches_the_backend_byte_for_byte() {
    // 3 MB with escapes and unicode, `model` last, sent once as 151 chunks
    // of 20 KB (llmux keeps them as they came and writes them on, more than
    // hyper queues for one `writev`) and once as 7-byte chunks (which llmux
    // copies together).
    let piece =
        "{\"role\":\"user\",\"content\":\"line\\n \\\"q\\\" \\u00e9 日本語 ".to_owned() + &"x".repeat(20_000) + "\"},";
    let body =
        format!("{{\"messages\":[{}{{\"role\":\"user\",\"content\":\"end\"}}],\"model\":\"a\"}}", piece.repeat(150));
    let mux = mux().model("a").start();
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    for size in [piece.len(), 7] {
        let head =
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nx-standin-echo: 1\r\n\r\n";
        conn.write(head.as_bytes()).await;
        conn.write(&chunked(body.as_bytes(), size)).await;
        let r = conn.read_response().await;
        assert_eq!(r.status, 200, "chunks of {size}: {:?}", String::from_utf8_lossy(&r.body));
        let e = r.json();
        assert_eq!(e["body_len"], body.len(), "chunks of {size}: {e}");
        assert_eq!(echoed(&e, "content-length"), [body.len().to_string()]);
        assert_eq!(e["body_fnv64"], fnv1a64(body.as_bytes()), "chunks of {size}: the body changed on the way");
    }
}

/// `body` in chunked transfer coding, in chunks of `size` bytes.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut framed = Vec::new();
    for part in body.chunks(size) {
        framed.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        framed.extend_from_slice(part);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    framed
}

#[tokio::test]
async fn request_ids_are_generated_distinct_and_returned() {
    let mux = mux().model("a").start();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = http::post(&mux.url("/v1/chat/completions"), &chat("a")).await;
        assert_eq!(r.status, 200);
        ids.push(r.header("x-request-id").expect("x-request-id").to_owned());
    }
    // Local answers carry one too.
    let r = http::get(&mux.url("/v1/models")).await;
    ids.push(r.header("x-request-id").expect("x-request-id on /v1/models").to_owned());
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    let seen: Vec<String> =
        requests(mux.backend("a")).await.iter().map(|s| s["request_id"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(seen, ids[..3]);
}

#[tokio::test]
async fn backend_statuses_and_bodies_pass_through() {
    let mux = mux().model("a").start();
    let r =
        http::request(Method::POST, &mux.url("/v1/chat/completions"), &[("x-standin-status", "429")], chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (429, "a"), "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test]
async fn models_are_listed_in_config_order_without_waking_anything() {
    let mux = mux().model("zeta").model("alpha").model("mid").start();
    let r = http::get(&mux.url("/v1/models")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let list = r.json();
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().expect("data");
    let ids: Vec<_> = data.iter().map(|m| m["id"].as_str().expect("id")).collect();
    assert_eq!(ids, ["zeta", "alpha", "mid"]);
    assert!(data.iter().all(|m| m["object"] == "model"), "{list}");

    let r = http::get(&mux.url("/v1/models/alpha")).await;
    assert_eq!(r.status, 200);
    let m = r.json();
    assert_eq!((m["id"].as_str(), m["object"].as_str()), (Some("alpha"), Some("model")));

    let r = http::get(&mux.url("/v1/models/nope")).await;
    r.assert_error(404, "model_not_found");

    // HEAD: as GET, without a body.
    for path in ["/v1/models", "/v1/models/zeta", "/health"] {
        let r = http::request(Method::HEAD, &mux.url(path), &[], Vec::new()).await;
        assert_eq!(r.status, 200, "HEAD {path}");
        assert!(r.body.is_empty(), "HEAD {path} had a body");
        assert!(r.header("x-request-id").is_some());
    }
    let r = http::request(Method::HEAD, &mux.url("/v1/models/nope"), &[], Vec::new()).await;
    assert_eq!(r.status, 404);

    for m in ["zeta", "alpha", "mid"] {
        assert_untouched(mux.backend(m)).await;
        assert_eq!(mux.state(m).await, "asleep");
    }
    assert!(mux.hooks.events().is_empty(), "{:?}", mux.hooks.events());
}

#[tokio::test]
async fn model_ids_may_be_percent_encoded() {
    let mux = mux().model("org/m x").model("b").start();
    for path in ["/v1/models/org%2Fm%20x", "/v1/models/org/m%20x", "/v1/models/org%2fm x"] {
        let r = http::get(&mux.url(&path.replace(' ', "%20"))).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["id"], "org/m x", "{path}");
    }
    http::get(&mux.url("/v1/models/org%2Fm")).await.assert_error(404, "model_not_found");
}

#[tokio::test]
async fn a_body_model_is_forwarded_even_on_a_local_path() {
    let mux = mux().model("a").model("b").start();
    // Local endpoints answer requests without a body model...
    let r = http::request(Method::GET, &mux.url("/health"), &[], r#"{"probe":true}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    assert_untouched(mux.backend("a")).await;
    // ...but a body model is forwarded, wherever it goes.
    let (by, e) = echo(&mux, Method::GET, "/v1/models", &[], br#"{"model":"b"}"#).await;
    assert_eq!((by.as_str(), e["path"].as_str()), ("b", Some("/v1/models")));
    let r = http::request(Method::GET, &mux.url("/v1/models"), &[], r#"{"model":"a"}"#).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"));
    assert_eq!(r.json()["data"][0]["owned_by"], "llmux-standin", "the backend's own list");
}

#[tokio::test]
async fn health_reports_the_active_model_and_every_state() {
    let mux = mux().model("zeta").model("alpha").model("omega").start();
    let h = http::get(&mux.url("/health")).await;
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["active"], Value::Null, "{h}");
    let ids: Vec<_> = h["models"].as_array().expect("models").iter().map(|m| m["id"].as_str().expect("id")).collect();
    assert_eq!(ids, ["zeta", "alpha", "omega"]);
    assert!(h["models"].as_array().expect("models").iter().all(|m| m["state"] == "asleep"), "{h}");

    let r = http::post(&mux.url("/v1/chat/completions"), &chat("zeta")).await;
    assert_eq!(r.status, 200);
    let h = http::get(&mux.url("/health")).await.json();
    assert_eq!(h["active"], "zeta", "{h}");
    assert_eq!(mux.state("zeta").await, "active");

    // draining: zeta has a request in flight while alpha waits.
    let url = mux.url("/v1/chat/completions");
    let streaming = http::send(
        Method::POST,
        &url,
        &[("x-standin-chunks", "1000"), ("x-standin-chunk-ms", "20")],
        chat_stream("zeta"),
    )
    .await;
    mux.hooks.set("hold-sleep-zeta");
    mux.hooks.set("hold-wake-alpha");
    let to_alpha = {
        let url = url.clone();
        tokio::spawn(async move { http::post(&url, &chat("alpha")).await })
    };
    mux.wait_state("zeta", "draining").await;
    drop(streaming);
    // sleeping: its sleep hook is held.
    mux.wait_state("zeta", "sleeping").await;
    mux.hooks.wait_for("sleep-start zeta").await;
    let h = http::get(&mux.url("/health")).await.json();
    assert_eq!(h["active"], Value::Null, "nothing is active while switching: {h}");
    mux.hooks.clear("hold-sleep-zeta");
    // waking: alpha's wake hook is held.
    mux.wait_state("alpha", "waking").await;
    assert_eq!(mux.state("zeta").await, "asleep");
    let h = http::get(&mux.url("/health")).await.json();
    let alpha = h["models"].as_array().expect("models").iter().find(|m| m["id"] == "alpha").cloned();
    assert_eq!(alpha.map(|m| m["queued"].clone()), Some(1.into()), "one request waits for alpha: {h}");
    mux.hooks.clear("hold-wake-alpha");
    let r = to_alpha.await.expect("join");
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "alpha"));
    let h = http::get(&mux.url("/health")).await.json();
    assert_eq!(h["active"], "alpha", "{h}");

    // failed: omega's wake fails.
    mux.hooks.set("fail-wake-omega");
    let r = http::post(&url, &chat("omega")).await;
    r.assert_error(503, "model_unavailable");
    // (It is `sleeping` for a moment while its sleep hook cleans up.)
    mux.wait_state("omega", "failed").await;
    assert_eq!(h["status"], "ok");
}

#[tokio::test]
async fn sse_streams_through_frame_by_frame() {
    let mux = mux().model("a").start();
    let started = Instant::now();
    let response = http::send(
        Method::POST,
        &mux.url("/v1/chat/completions"),
        &[("x-standin-chunks", "5"), ("x-standin-chunk-ms", "100")],
        chat_stream("a"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-standin-model"], "a");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    assert!(response.headers().contains_key("x-request-id"));
    let frames = http::frames(response).await;
    let text: String = frames.iter().map(|(_, b)| String::from_utf8_lossy(b)).collect();
    assert_eq!(text.matches("chat.completion.chunk").count(), 5, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let content: Vec<Instant> = frames
        .iter()
        .filter(|(_, b)| String::from_utf8_lossy(b).contains("chat.completion.chunk"))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(content.len(), 5, "each chunk should arrive as its own frame: {frames:?}");
    let gaps: Vec<Duration> = content.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g >= Duration::from_millis(50)), "chunks bunched together: {gaps:?}");
    // The first chunk came long before the stream ended (not buffered).
    let (last, _) = frames.last().expect("frames");
    assert!(*last - content[0] >= Duration::from_millis(350), "{:?}", *last - content[0]);
    assert!(content[0] - started < *last - started - Duration::from_millis(300));
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let mux = mux().model("a").start();
    let url = mux.url("/v1/chat/completions?via=h2");
    let (version, r) = h2c(Method::POST, &url, &[ECHO], chat("a")).await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
    let e = r.json();
    assert_eq!((e["path"].as_str(), e["query"].as_str()), (Some("/v1/chat/completions"), Some("via=h2")));
    assert_eq!(e["body_fnv64"], fnv1a64(chat("a").as_bytes()));
    assert_eq!(echoed(&e, "host"), [format!("127.0.0.1:{}", mux.backend("a").port())]);
    assert!(r.header("x-request-id").is_some());

    let (_, r) = h2c(Method::POST, &mux.url("/v1/chat/completions"), &[], chat_stream("a")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().matches("chat.completion.chunk").count(), 5, "{}", r.text());
    assert!(r.text().contains("data: [DONE]"));

    let (_, r) = h2c(Method::GET, &mux.url("/v1/models"), &[], Vec::new()).await;
    assert_eq!(r.json()["data"][0]["id"], "a");
    let (_, r) = h2c(Method::POST, &mux.url("/v1/chat/completions"), &[], "nope").await;
    r.assert_error(400, "invalid_body");
}

#[tokio::test]
async fn a_client_leaving_mid_stream_cancels_the_backend_request() {
    let mux = mux().model("a").model("b").start();
    let url = mux.url("/v1/chat/completions");
    let response =
        http::send(Method::POST, &url, &[("x-standin-chunks", "1000"), ("x-standin-chunk-ms", "50")], chat_stream("a"))
            .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(crate::support::PATIENCE, http_body_util::BodyExt::frame(&mut body))
        .await
        .expect("first frame in time");
    assert!(first.is_some());
    let backend = mux.backend("a");
    assert_eq!(stats(backend).await["in_flight"], 1);
    drop(body);
    let s = wait_stats(backend, "the backend to see the cancel", |s| s["cancelled"] == 1 && s["in_flight"] == 0).await;
    assert_eq!(s["requests"], 1, "{s}");
    // llmux let go of it too: a switch (which drains `a` first) completes.
    let r = http::post(&url, &chat("b")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"));
    let r = http::post(&url, &chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"));
}
