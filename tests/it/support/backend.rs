//! Looking at a stand-in from the test's side: its counters, the requests
//! it saw, its echo replies, and waiting for a condition with a deadline.

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{http, Process, PATIENCE};

/// FNV-1a 64 of `bytes` as 16 lowercase hex digits, the stand-in's
/// `body_fnv64`.
pub fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The stand-in's `/standin/stats`: `requests`, `cancelled`, `in_flight`,
/// `connections`.
pub async fn stats(backend: &Process) -> Value {
    http::get(&format!("http://{}/standin/stats", backend.addr)).await.json()
}

/// The stand-in's `/standin/requests`: the last requests it saw.
pub async fn requests(backend: &Process) -> Vec<Value> {
    let v = http::get(&format!("http://{}/standin/requests", backend.addr)).await.json();
    v.as_array().cloned().expect("a list of requests")
}

/// Asserts that no request reached `backend` (its own endpoints aside).
pub async fn assert_untouched(backend: &Process) {
    let s = stats(backend).await;
    assert_eq!(s["requests"], 0, "the backend saw requests: {s} {:?}", requests(backend).await);
}

/// Polls `check` until it returns true, failing after `PATIENCE`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the stand-in's stats satisfy `check`; returns them.
pub async fn wait_stats(backend: &Process, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = stats(backend).await;
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; stats: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every value the echo reply `echo` shows for header `name` (lowercase),
/// one per field line, in order.
pub fn echoed(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("echo headers")
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().expect("header value").to_owned())
        .collect()
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
