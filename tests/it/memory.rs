//! `limits.max_body_bytes_in_memory`: request bodies held by llmux (read,
//! queued or on their way to a backend) are bounded all together, not just
//! one by one. Past the bound a request gets 503 `server_overloaded` with
//! `Retry-After`; the `llmux_body_bytes_in_memory` gauge never passes the
//! bound and returns to 0.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use crate::support::backend::{requests, stats};
use crate::support::wire::{RawConn, RawResponse};
use crate::support::{mux, Mux};

const CHAT: &str = "/v1/chat/completions";
const MIB: usize = 1 << 20;
const GAUGE: &str = "llmux_body_bytes_in_memory";
const LIMIT: [(&str, &str); 1] = [("limit", "max_body_bytes_in_memory")];

/// llmux with 1 MiB bodies at most and 4 MiB of them in memory, `a` awake.
async fn four_mib_mux() -> Mux {
    let mux = mux()
        .model("a")
        .config(&format!("max_body_bytes: {MIB}"))
        .config(&format!("limits: {{max_body_bytes_in_memory: {}}}", 4 * MIB))
        .start();
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    conn.write(&upload_request(&body(100), false, "")).await;
    assert_eq!(conn.read_response().await.status, 200, "waking a");
    mux
}

/// A chat body for `a` of exactly `len` bytes.
fn body(len: usize) -> Vec<u8> {
    let body = format!(r#"{{"model":"a","pad":"{}"}}"#, "x".repeat(len - 22));
    assert_eq!(body.len(), len);
    body.into_bytes()
}

/// A whole request carrying `body`, with `Content-Length` or chunked in
/// 64 KiB chunks, with `extra` header lines (each ending in CRLF).
fn upload_request(body: &[u8], chunked: bool, extra: &str) -> Vec<u8> {
    let framing =
        if chunked { "Transfer-Encoding: chunked".to_owned() } else { format!("Content-Length: {}", body.len()) };
    let mut req = format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\n{extra}{framing}\r\n\r\n").into_bytes();
    if !chunked {
        req.extend_from_slice(body);
        return req;
    }
    for piece in body.chunks(64 * 1024) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

/// Starts an upload of a 1 MiB body; the connection, once it is written
/// or answered.
async fn start_upload(mux: &Mux, chunked: bool, extra: &str) -> RawConn {
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    conn.write_unless_answered(&upload_request(&body(MIB), chunked, extra)).await;
    conn
}

/// Asserts llmux's 503 `server_overloaded` with `Retry-After`.
fn assert_overloaded(r: &RawResponse) {
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let e = r.json();
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["type"].as_str()),
        (Some("server_overloaded"), Some("server_error"))
    );
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("max_body_bytes_in_memory")), "{e}");
    let retry = r.header("retry-after").and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| s >= 1), "Retry-After: {retry:?}");
    assert!(r.header("x-request-id").is_some());
}

/// The gauge now.
async fn held(mux: &Mux) -> usize {
    mux.metrics().await.value(GAUGE, &[]) as usize
}

/// Waits until the gauge reads `bytes`.
async fn wait_held(mux: &Mux, bytes: usize) {
    mux.metrics_until(&format!("{GAUGE} = {bytes}"), |m| m.value(GAUGE, &[]) as usize == bytes).await;
}

#[tokio::test]
async fn concurrent_large_uploads_past_max_body_bytes_in_memory_get_503_and_none_is_lost() {
    let mux = Arc::new(four_mib_mux().await);
    assert_eq!(mux.metrics().await.kind(GAUGE), "gauge");
    // Scrape the gauge all along.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (mux, done) = (Arc::clone(&mux), Arc::clone(&done));
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(SeqCst) {
                most = most.max(held(&mux).await);
                // Pacing only: the scrapes are samples, not a wait.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            most
        })
    };
    // The backend holds each response head 2 s, so the bodies stay held.
    let uploads: Vec<_> = (0..20)
        .map(|_| {
            let mux = Arc::clone(&mux);
            tokio::spawn(async move {
                let mut conn = start_upload(&mux, false, "x-standin-delay-ms: 2000\r\n").await;
                conn.try_read_response().await
            })
        })
        .collect();
    let (mut served, mut refused) = (0, 0);
    for upload in uploads {
        let r = upload.await.expect("join").expect("every upload is answered");
        match r.status {
            200 => served += 1,
            _ => {
                assert_overloaded(&r);
                refused += 1;
            }
        }
    }
    done.store(true, SeqCst);
    let most = sampler.await.expect("join");
    assert_eq!(served + refused, 20);
    assert!(served >= 1 && refused >= 1, "served {served}, refused {refused}");
    assert!(most <= 4 * MIB, "{GAUGE} reached {most}");
    assert!(most >= MIB, "{GAUGE} never showed a held body (most {most})");
    // Every body that was served reached the backend whole; no refused one did.
    let seen = requests(mux.backend("a")).await;
    let big: Vec<_> = seen.iter().filter(|s| s["body_len"] == MIB).collect();
    assert_eq!(big.len(), served, "{seen:?}");
    assert_eq!(stats(mux.backend("a")).await["requests"], served as u64 + 1);
    wait_held(&mux, 0).await;
    let m = mux.metrics().await;
    assert_eq!(m.value("llmux_rejected_total", &LIMIT), refused as f64);
}

#[tokio::test]
async fn chunked_uploads_reserve_as_they_arrive_and_are_refused_mid_body_past_the_bound() {
    let mux = four_mib_mux().await;
    // Four chunked uploads whose backend never answers: each holds 1 MiB.
    let mut held_conns = Vec::new();
    for i in 1..=4 {
        held_conns.push(start_upload(&mux, true, "x-standin-hang: headers\r\n").await);
        wait_held(&mux, i * MIB).await;
    }
    // The bound is reached: the next ones are refused on their first
    // chunks, with or without a Content-Length.
    for chunked in [true, false, true] {
        let mut conn = start_upload(&mux, chunked, "").await;
        let r = conn.try_read_response().await.expect("an answer before the connection closed");
        assert_overloaded(&r);
        assert_eq!(held(&mux).await, 4 * MIB, "a refused upload holds nothing");
    }
    assert_eq!(mux.metrics().await.value("llmux_rejected_total", &LIMIT), 3.0);
    // The clients leave: their bodies are released.
    drop(held_conns);
    wait_held(&mux, 0).await;
    // Room again: a chunked upload is served, its body whole.
    let mut conn = start_upload(&mux, true, "x-standin-echo: 1\r\n").await;
    let r = conn.read_response().await;
    assert_eq!((r.status, r.header("x-standin-model")), (200, Some("a")), "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["body_len"], MIB);
    wait_held(&mux, 0).await;
}
