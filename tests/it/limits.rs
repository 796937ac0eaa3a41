//! The `limits:` section, each limit against a real llmux: slow and
//! oversized request heads, slow bodies, the connection cap, idle
//! keep-alive, a slow backend, the queue bounds and HTTP/2 streams; then
//! request smuggling over raw TCP. Every case checks both sides: what the
//! client got and what reached the backend.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::backend::{assert_untouched, echoed, eventually, fnv1a64, requests, stats, wait_stats};
use crate::support::http::{self, chat};
use crate::support::wire::{RawConn, RawResponse};
use crate::support::{mux, Mux, PATIENCE};

const CHAT: &str = "/v1/chat/completions";

/// A complete `POST /v1/chat/completions` for `model`, with `extra` header
/// lines (each ending in CRLF) before its `Content-Length`.
fn raw_chat(model: &str, extra: &str) -> String {
    let body = chat(model);
    format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {}\r\n\r\n{body}", body.len())
}

/// Asserts that `r` is llmux's OpenAI error with this status and code.
fn assert_raw_error(r: &RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let e = r.json();
    assert_eq!(e["error"]["code"], code, "{e}");
    assert_eq!(e["error"]["type"], if status < 500 { "invalid_request_error" } else { "server_error" }, "{e}");
}

/// Reads `stream` until the peer closes it (EOF or reset), failing the
/// test after `limit`; returns what arrived before the close.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("the connection was still open after {limit:?}; got {:?}", String::from_utf8_lossy(&got)),
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// `/health`'s `queued` for `model`.
async fn queued(mux: &Mux, model: &str) -> u64 {
    let h = http::get(&mux.url("/health")).await.json();
    let models = h["models"].as_array().cloned().unwrap_or_default();
    models.iter().find(|m| m["id"] == model).and_then(|m| m["queued"].as_u64()).expect("queued in /health")
}

// ---------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_slowloris_head_is_cut_after_header_read_timeout() {
    let mux = mux().model("a").config("limits: {header_read_timeout_secs: 1}").start();
    let stream = TcpStream::connect(&mux.llmux.addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut rd, mut wr) = stream.into_split();
    // One byte every 200 ms: the head would take minutes to complete.
    let head = format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nX-Pad: {}", "p".repeat(1000));
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let trickle = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            for byte in head.as_bytes() {
                if wr.write_all(std::slice::from_ref(byte)).await.is_err() {
                    return;
                }
                sent.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // Meanwhile llmux serves others.
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());

    let got = read_until_closed(&mut rd, Duration::from_secs(10)).await;
    let closed_after = started.elapsed();
    let bytes_sent = sent.load(SeqCst);
    trickle.abort();
    // hyper closes without an answer (no automatic 408 on a head timeout).
    assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&got));
    assert!(closed_after >= Duration::from_millis(950), "closed after only {closed_after:?}");
    assert!(bytes_sent < 100, "the client was still trickling: {bytes_sent} bytes sent");

    // The slow request never reached the backend; llmux still serves.
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
    let seen = requests(mux.backend("a")).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s["path"] == CHAT && s["body_len"] == chat("a").len()), "{seen:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_header_read_timeout() {
    let mux = mux().model("a").config("limits: {header_read_timeout_secs: 1}").start();
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    // Requests 400 ms apart keep the connection: the timer covers the wait
    // for each head, not the connection's life (four requests take > 1 s).
    let started = Instant::now();
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        conn.write(raw_chat("a", "").as_bytes()).await;
        let r = conn.read_response().await;
        assert_eq!((r.status, r.header("x-standin-model")), (200, Some("a")), "request {i}");
    }
    assert!(started.elapsed() > Duration::from_secs(1));
    // Then idle: llmux closes it.
    let idle_from = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closes())
        .await
        .expect("llmux should close an idle keep-alive connection within 10 s");
    let idle = idle_from.elapsed();
    assert!(closed);
    assert!(idle >= Duration::from_millis(900), "closed after only {idle:?} idle");
    assert_eq!(stats(mux.backend("a")).await["requests"], 4);
}

/// A client that connects and never sends a byte would hold a
/// `max_connections` slot forever if only hyper's header timer guarded it:
/// llmux detects the protocol itself, within `header_read_timeout`.
#[tokio::test]
async fn a_silent_connection_is_closed_after_header_read_timeout() {
    let mux = mux().model("a").config("limits: {header_read_timeout_secs: 1}").start();
    let mut stream = TcpStream::connect(&mux.llmux.addr).await.expect("connect");
    let got = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn a_request_head_over_max_header_bytes_is_431_and_never_forwarded() {
    let mux = mux().model("a").config("limits: {max_header_bytes: 8192}").start();
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    let pad = "h".repeat(20 * 1024);
    conn.write(raw_chat("a", &format!("X-Pad: {pad}\r\n")).as_bytes()).await;
    let r = conn.read_response().await;
    assert_eq!(r.status, 431, "{r:?}");
    assert!(conn.closes().await, "the connection should close after a 431");
    assert_untouched(mux.backend("a")).await;
    // A head well under the limit passes.
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    let pad = "h".repeat(6 * 1024);
    conn.write(raw_chat("a", &format!("X-Pad: {pad}\r\n")).as_bytes()).await;
    let r = conn.read_response().await;
    assert_eq!((r.status, r.header("x-standin-model")), (200, Some("a")));
    assert_eq!(stats(mux.backend("a")).await["requests"], 1);
}

#[tokio::test]
async fn a_head_just_under_a_large_max_header_bytes_fits_the_read_buffer() {
    // hyper's read buffer is sized from the limit, not from its default: a
    // 75 KB head under a 128 KiB limit is read whole and forwarded. (The
    // stand-in takes heads up to 64 KiB, so it is the one that answers 431.)
    let mux = mux().model("a").config("limits: {max_header_bytes: 131072}").start();
    let pads = |n: usize| -> String { (0..n).map(|i| format!("X-Pad-{i}: {}\r\n", "h".repeat(25 * 1024))).collect() };
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    conn.write(raw_chat("a", &pads(3)).as_bytes()).await;
    let r = conn.read_response().await;
    assert_eq!((r.status, r.header("x-standin-model")), (431, Some("a")), "llmux did not forward it: {r:?}");
    // Over llmux's own limit, llmux answers.
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    conn.write(raw_chat("a", &pads(6)).as_bytes()).await;
    let r = conn.read_response().await;
    assert_eq!((r.status, r.header("x-standin-model")), (431, None), "{r:?}");
}

#[tokio::test]
async fn a_request_with_more_than_max_headers_is_431_and_never_forwarded() {
    let mux = mux().model("a").config("limits: {max_headers: 10}").start();
    // `raw_chat` sends Host and Content-Length; `extra` adds the rest.
    let extra = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    for total in [20, 11] {
        let mut conn = RawConn::connect(&mux.llmux.addr).await;
        conn.write(raw_chat("a", &extra(total - 2)).as_bytes()).await;
        let r = conn.read_response().await;
        assert_eq!(r.status, 431, "{total} headers: {r:?}");
        assert!(conn.closes().await, "the connection should close after a 431");
    }
    assert_untouched(mux.backend("a")).await;
    // Exactly max_headers is fine.
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    conn.write(raw_chat("a", &extra(8)).as_bytes()).await;
    let r = conn.read_response().await;
    assert_eq!((r.status, r.header("x-standin-model")), (200, Some("a")));
    assert_eq!(stats(mux.backend("a")).await["requests"], 1);
}

// ---------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_body_that_stops_arriving_is_408_body_read_timeout() {
    let mux = mux().model("a").config("limits: {body_read_timeout_secs: 1}").start();
    let body = chat("a");
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    let started = Instant::now();
    conn.write(
        format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nX-Request-Id: slow-1\r\nContent-Length: 100\r\n\r\n").as_bytes(),
    )
    .await;
    conn.write(&body.as_bytes()[..10]).await;
    let r = conn.read_response().await;
    let waited = started.elapsed();
    assert_raw_error(&r, 408, "body_read_timeout");
    assert_eq!(r.header("x-request-id"), Some("slow-1"));
    assert!(waited >= Duration::from_millis(950), "answered after only {waited:?}");
    assert!(waited < Duration::from_secs(10), "answered after {waited:?}");
    // The rest of the body can never be taken for a new request.
    assert!(conn.closes().await, "the connection should close after a 408 mid-body");
    assert_untouched(mux.backend("a")).await;

    // A body that arrives in pieces, all within the limit, is served.
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    conn.write(format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).await;
    conn.write(&body.as_bytes()[..10]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.write(&body.as_bytes()[10..]).await;
    let r = conn.read_response().await;
    assert_eq!((r.status, r.header("x-standin-model")), (200, Some("a")));
    let seen = requests(mux.backend("a")).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["body_len"], body.len());
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

#[tokio::test]
async fn past_max_connections_new_connections_wait_until_one_closes() {
    let mux = mux().model("a").config("limits: {max_connections: 1}").start();
    let health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let health_close = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut a = RawConn::connect(&mux.llmux.addr).await;
    a.write(health).await;
    assert_eq!(a.read_response().await.status, 200);
    // A stays open. B and C connect (the kernel completes the handshake)
    // and send their requests, but llmux does not take them yet.
    let mut b = RawConn::connect(&mux.llmux.addr).await;
    b.write(health_close).await;
    let mut c = RawConn::connect(&mux.llmux.addr).await;
    c.write(health_close).await;
    let early = tokio::time::timeout(Duration::from_millis(500), b.try_read_response()).await;
    assert!(early.is_err(), "B was answered while A held the only slot: {early:?}");
    // A still works meanwhile.
    a.write(health).await;
    assert_eq!(a.read_response().await.status, 200);
    // A closes: B is taken and answered; once B closes, C is.
    drop(a);
    let r = b.read_response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    assert!(b.closes().await);
    assert_eq!(c.read_response().await.status, 200);
    assert!(c.closes().await);
    drop((b, c));
    // llmux is fine: a proxied request on a new connection succeeds.
    let mut d = RawConn::connect(&mux.llmux.addr).await;
    d.write(raw_chat("a", "Connection: close\r\n").as_bytes()).await;
    let r = d.read_response().await;
    assert_eq!((r.status, r.header("x-standin-model")), (200, Some("a")));
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_backend_slower_than_upstream_first_byte_timeout_is_504() {
    let mux = mux().model("a").config("limits: {upstream_first_byte_timeout_secs: 1}").start();
    // Wake `a` first so only the backend's delay is timed.
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"));
    let started = Instant::now();
    let r = http::request(Method::POST, &mux.url(CHAT), &[("x-standin-delay-ms", "5000")], chat("a")).await;
    let waited = started.elapsed();
    r.assert_error(504, "backend_timeout");
    assert!(r.header("x-request-id").is_some());
    assert!(waited >= Duration::from_millis(950), "answered after only {waited:?}");
    assert!(waited < Duration::from_secs(4), "answered after {waited:?}");
    // The backend got it, and llmux hung up on it (cancelling the work).
    let s = wait_stats(mux.backend("a"), "the backend to see the cancel", |s| s["in_flight"] == 0).await;
    assert_eq!((s["requests"].as_u64(), s["cancelled"].as_u64()), (Some(2), Some(1)), "{s}");
    // A backend within the limit is served.
    let r = http::request(Method::POST, &mux.url(CHAT), &[("x-standin-delay-ms", "200")], chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
}

// ---------------------------------------------------------------------------
// The queue
// ---------------------------------------------------------------------------

#[tokio::test]
async fn past_max_queued_requests_a_request_is_429_queue_full() {
    let mux = mux().model("b").config("limits: {max_queued_requests: 2}").start();
    mux.hooks.set("hold-wake-b");
    let url = mux.url(CHAT);
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { http::post(&url, &chat("b")).await })
        })
        .collect();
    mux.hooks.wait_for("wake-start b").await;
    eventually("two requests queued for b", || async { queued(&mux, "b").await == 2 }).await;
    let started = Instant::now();
    let r = http::post(&url, &chat("b")).await;
    r.assert_error(429, "queue_full");
    assert!(started.elapsed() < Duration::from_secs(5), "a full queue answers at once");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().expect("Retry-After in seconds");
    assert!(retry >= 1);
    assert!(r.json()["error"]["message"].as_str().is_some_and(|m| m.contains("max_queued_requests")), "{}", r.text());
    assert!(r.header("x-request-id").is_some());
    // The refused request left no trace in the queue.
    assert_eq!(queued(&mux, "b").await, 2);
    mux.hooks.clear("hold-wake-b");
    for w in waiting {
        let r = w.await.expect("join");
        assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"), "{}", r.text());
    }
    assert_eq!(stats(mux.backend("b")).await["requests"], 2);
    // With the queue empty again, requests are admitted as usual.
    let r = http::post(&url, &chat("b")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"));
}

#[tokio::test]
async fn past_max_queued_body_bytes_a_request_is_429_queue_full() {
    let mux = mux().model("b").config("limits: {max_queued_body_bytes: 2000}").start();
    mux.hooks.set("hold-wake-b");
    let url = mux.url(CHAT);
    let padded = |len: usize| {
        let body = format!(r#"{{"model":"b","pad":"{}"}}"#, "x".repeat(len - 22));
        assert_eq!(body.len(), len);
        body
    };
    let first = {
        let (url, body) = (url.clone(), padded(1500));
        tokio::spawn(async move { http::post(&url, &body).await })
    };
    mux.hooks.wait_for("wake-start b").await;
    eventually("the first request queued for b", || async { queued(&mux, "b").await == 1 }).await;
    // 1500 + 1500 > 2000: refused.
    let r = http::post(&url, &padded(1500)).await;
    r.assert_error(429, "queue_full");
    assert!(r.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1));
    assert!(r.json()["error"]["message"].as_str().is_some_and(|m| m.contains("max_queued_body_bytes")), "{}", r.text());
    // 1500 + 400 fits: it is bytes that are bounded, not requests.
    let second = {
        let (url, body) = (url.clone(), padded(400));
        tokio::spawn(async move { http::post(&url, &body).await })
    };
    eventually("the small request queued for b", || async { queued(&mux, "b").await == 2 }).await;
    mux.hooks.clear("hold-wake-b");
    for (w, len) in [(first, 1500), (second, 400)] {
        let r = w.await.expect("join");
        assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"), "{len}: {}", r.text());
    }
    let mut lens: Vec<u64> =
        requests(mux.backend("b")).await.iter().map(|s| s["body_len"].as_u64().expect("body_len")).collect();
    lens.sort_unstable();
    assert_eq!(lens, [400, 1500]);
}

// ---------------------------------------------------------------------------
// HTTP/2
// ---------------------------------------------------------------------------

/// The server's SETTINGS over a raw h2c connection: (identifier, value).
async fn h2_server_settings(addr: &str) -> Vec<(u16, u32)> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("preface");
    // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.expect("settings");
    let mut head = [0u8; 9];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut head)).await.expect("a frame in time").expect("frame head");
    assert_eq!((head[3], head[4] & 1), (4, 0), "the server's first frame should be SETTINGS: {head:?}");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut payload)).await.expect("payload in time").expect("payload");
    payload
        .chunks_exact(6)
        .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
        .collect()
}

#[tokio::test]
async fn h2_limits_are_advertised_in_settings() {
    let mux =
        mux().model("a").config("limits: {h2_max_concurrent_streams: 2, h2_max_header_list_bytes: 16384}").start();
    let settings = h2_server_settings(&mux.llmux.addr).await;
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    let get = |id: u16| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(get(MAX_CONCURRENT_STREAMS), Some(2), "{settings:?}");
    assert_eq!(get(MAX_HEADER_LIST_SIZE), Some(16384), "{settings:?}");
}

#[tokio::test]
async fn h2_streams_beyond_max_concurrent_streams_wait_their_turn_and_all_complete() {
    let mux = mux().model("a").config("limits: {h2_max_concurrent_streams: 2}").start();
    let tcp = TcpStream::connect(&mux.llmux.addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2c handshake");
    tokio::spawn(conn);
    let url = mux.url(CHAT);
    let send = |sender: &hyper::client::conn::http2::SendRequest<Full<Bytes>>, delay: Option<&'static str>| {
        let mut sender = sender.clone();
        let mut req = Request::post(&url);
        if let Some(ms) = delay {
            req = req.header("x-standin-delay-ms", ms);
        }
        let req = req.body(Full::new(Bytes::from(chat("a")))).expect("request");
        async move {
            let response = tokio::time::timeout(PATIENCE, sender.send_request(req))
                .await
                .expect("answer in time")
                .expect("answer");
            let status = response.status().as_u16();
            let served_by = response.headers().get("x-standin-model").cloned();
            let body = tokio::time::timeout(PATIENCE, response.into_body().collect()).await.expect("body in time");
            assert!(body.is_ok(), "{body:?}");
            (status, served_by)
        }
    };
    // One request first: it wakes `a`, and the SETTINGS exchange is done.
    let (status, by) = send(&sender, None).await;
    assert_eq!((status, by.as_ref().and_then(|v| v.to_str().ok())), (200, Some("a")));

    // Sample the backend's in-flight count while five slow streams run.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, addr) = (Arc::clone(&done), mux.backend("a").addr.clone());
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(SeqCst) {
                let s = http::get(&format!("http://{addr}/standin/stats")).await.json();
                most = most.max(s["in_flight"].as_u64().expect("in_flight"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            most
        })
    };
    let started = Instant::now();
    let streams: Vec<_> = (0..5).map(|_| tokio::spawn(send(&sender, Some("300")))).collect();
    for s in streams {
        let (status, by) = s.await.expect("join");
        assert_eq!((status, by.as_ref().and_then(|v| v.to_str().ok())), (200, Some("a")));
    }
    let took = started.elapsed();
    done.store(true, SeqCst);
    let most = sampler.await.expect("join");
    // At most two streams at a time: five take at least three rounds.
    assert!(took >= Duration::from_millis(850), "five 300 ms streams took only {took:?}");
    assert_eq!(most, 2, "the backend should see two requests at once, never more");
    assert_eq!(stats(mux.backend("a")).await["requests"], 6);
}

// ---------------------------------------------------------------------------
// Request smuggling
// ---------------------------------------------------------------------------

/// Sends `bytes` on a fresh connection; returns the response, if one came,
/// and whether the connection closed after it.
async fn send_raw(mux: &Mux, bytes: &[u8]) -> (Option<RawResponse>, bool) {
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    conn.write(bytes).await;
    match conn.try_read_response().await {
        Some(r) => (Some(r), conn.closes().await),
        None => (None, true),
    }
}

#[tokio::test]
async fn two_differing_content_lengths_are_400_and_never_forwarded() {
    let mux = mux().model("a").start();
    let body = chat("a");
    let req =
        format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nContent-Length: 5\r\n\r\n{body}", body.len());
    let (r, closed) = send_raw(&mux, req.as_bytes()).await;
    assert_eq!(r.map(|r| r.status), Some(400));
    assert!(closed);
    // Also as one comma-separated field.
    let req = format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: {}, 5\r\n\r\n{body}", body.len());
    let (r, closed) = send_raw(&mux, req.as_bytes()).await;
    assert_eq!(r.map(|r| r.status), Some(400));
    assert!(closed);
    assert_untouched(mux.backend("a")).await;
}

#[tokio::test]
async fn an_obs_fold_header_is_400_and_never_forwarded() {
    let mux = mux().model("a").start();
    let body = chat("a");
    for fold in ["X-Folded: one\r\n two\r\n", "X-Folded: one\r\n\tTransfer-Encoding: chunked\r\n"] {
        let req = format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\n{fold}Content-Length: {}\r\n\r\n{body}", body.len());
        let (r, closed) = send_raw(&mux, req.as_bytes()).await;
        assert_eq!(r.map(|r| r.status), Some(400), "{fold:?}");
        assert!(closed, "{fold:?}");
    }
    assert_untouched(mux.backend("a")).await;
}

#[tokio::test]
async fn a_bad_chunk_size_is_400_and_never_forwarded() {
    let mux = mux().model("a").start();
    let body = chat("a");
    let req = format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{body}\r\n0\r\n\r\n");
    let (r, closed) = send_raw(&mux, req.as_bytes()).await;
    let r = r.expect("a 400 before the connection closed");
    assert_raw_error(&r, 400, "invalid_body");
    assert!(closed, "the connection should close after a broken chunked body");
    // A bad size after a good chunk.
    let (head, tail) = body.split_at(10);
    let req = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{head}\r\n-1\r\n{tail}\r\n0\r\n\r\n",
        head.len()
    );
    let (r, closed) = send_raw(&mux, req.as_bytes()).await;
    assert_raw_error(&r.expect("a 400 before the connection closed"), 400, "invalid_body");
    assert!(closed);
    assert_untouched(mux.backend("a")).await;
}

#[tokio::test]
async fn with_content_length_and_chunked_the_chunks_win_and_the_connection_closes() {
    let mux = mux().model("a").start();
    let body = chat("a");
    let (p1, p2) = body.split_at(7);
    let chunked = format!("{:x}\r\n{p1}\r\n{:x}\r\n{p2}\r\n0\r\n\r\n", p1.len(), p2.len());
    // What a server trusting Content-Length would take for a second request.
    let smuggled_body = chat("a");
    let smuggled =
        format!("POST /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled_body}", smuggled_body.len());
    // Both orders; a Content-Length that would cut the body, and one that
    // would swallow the smuggled request.
    let framings = [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n".to_owned(),
        format!("Transfer-Encoding: chunked\r\nContent-Length: {}\r\n", chunked.len() + smuggled.len()),
    ];
    for (i, framing) in framings.iter().enumerate() {
        let req = format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nx-standin-echo: 1\r\n{framing}\r\n{chunked}{smuggled}");
        let mut conn = RawConn::connect(&mux.llmux.addr).await;
        conn.write(req.as_bytes()).await;
        let r = conn.read_response().await;
        assert_eq!(r.status, 200, "{framing:?}: {:?}", String::from_utf8_lossy(&r.body));
        // hyper marks such a request not keep-alive (RFC 9112 §6.1) and says so.
        assert_eq!(r.header("connection"), Some("close"), "{framing:?}");
        let e = r.json();
        assert_eq!(e["path"], CHAT, "{e}");
        assert_eq!(e["body_len"], body.len(), "{framing:?}: {e}");
        assert_eq!(e["body_fnv64"], fnv1a64(body.as_bytes()), "{framing:?}: {e}");
        // Framed by llmux's own Content-Length.
        assert_eq!(echoed(&e, "content-length"), [body.len().to_string()], "{framing:?}: {e}");
        assert!(echoed(&e, "transfer-encoding").is_empty(), "{framing:?}: {e}");
        // The bytes after the last chunk are never read as a request.
        assert!(conn.closes().await, "{framing:?}: llmux should close the connection");
        let seen = requests(mux.backend("a")).await;
        assert_eq!(seen.len(), i + 1, "{seen:?}");
        assert!(seen.iter().all(|s| s["path"] == CHAT), "the smuggled request reached the backend: {seen:?}");
    }
}

/// A "rapid reset" flood: streams opened and reset at once, faster than
/// llmux accepts them. Past `h2_max_pending_reset_streams` the connection
/// gets GOAWAY (ENHANCE_YOUR_CALM) and is closed; llmux serves on.
#[tokio::test]
async fn an_h2_reset_flood_is_cut_off_with_goaway() {
    let mux = mux().model("a").config("limits: {h2_max_pending_reset_streams: 5}").start();
    let mut s = TcpStream::connect(&mux.llmux.addr).await.expect("connect");
    let mut burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    burst.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    // :method GET, :scheme http, :path /, :authority "a" (not indexed).
    let block = [0x82, 0x86, 0x84, 0x01, 0x01, b'a'];
    for i in 0..200u32 {
        let id = (2 * i + 1).to_be_bytes();
        burst.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x4, id[0], id[1], id[2], id[3]]);
        burst.extend_from_slice(&block);
        burst.extend_from_slice(&[0, 0, 4, 3, 0, id[0], id[1], id[2], id[3], 0, 0, 0, 8]);
    }
    s.write_all(&burst).await.expect("burst");
    let mut goaway = None;
    let mut head = [0u8; 9];
    while tokio::time::timeout(PATIENCE, s.read_exact(&mut head)).await.expect("frames in time").is_ok() {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            break;
        }
        if head[3] == 7 && payload.len() >= 8 {
            goaway = Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
        }
    }
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    assert_eq!(http::post(&mux.url("/v1/chat/completions"), &chat("a")).await.status, 200);
}
