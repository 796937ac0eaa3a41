//! Telling HTTP/1.1 from h2c on one port, and the `Upgrade: h2c` offer:
//! a partial HTTP/2 preface that stalls or closes, SIGTERM with many such
//! connections open, bytes read during detection reaching hyper intact,
//! and `curl --http2` over `http://` served as HTTP/1.1.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::support::backend::{echoed, fnv1a64, requests};
use crate::support::http::{chat, frames};
use crate::support::wire::RawConn;
use crate::support::{mux, Mux, PATIENCE};

const CHAT: &str = "/v1/chat/completions";

/// A header timeout far past `PATIENCE`: anything these tests see closing
/// was not closed by the timer.
const LONG_HEADER_TIMEOUT: &str = "limits: {header_read_timeout_secs: 60}";

/// Waits until `/metrics` counts at least `n` open client connections
/// (its own included).
async fn wait_open_connections(mux: &Mux, n: usize) {
    let what = format!("{n} open connections");
    mux.metrics_until(&what, |m| m.value("llmux_open_connections", &[]) >= n as f64).await;
}

/// Reads until EOF (or a reset), failing after `PATIENCE`.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Err(_) => panic!("llmux still held the connection after {PATIENCE:?}"),
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_closing_mid_preface_is_dropped_at_once() {
    let mux = mux().model("a").config(LONG_HEADER_TIMEOUT).start();
    let mut stream = TcpStream::connect(&mux.llmux.addr).await.expect("connect");
    stream.write_all(b"P").await.expect("write");
    // Half-close: the client is done sending (what a closed client looks
    // like to llmux, while the test can still see what llmux does).
    stream.shutdown().await.expect("shutdown");
    let started = Instant::now();
    let got = read_to_close(&mut stream).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(started.elapsed() < Duration::from_secs(10), "closed only after {:?}", started.elapsed());
    // llmux forgot it: only the scrape's own connection is left.
    mux.metrics_until("the connection gone", |m| m.value("llmux_open_connections", &[]) <= 1.0).await;
}

/// How many stalled connections the SIGTERM test opens: 500, or fewer
/// under a low open-files limit (two descriptors each, test and llmux).
fn stalled_count() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1024);
    500.min(soft / 4)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_many_stalled_prefaces_open_exits_once_in_flight_work_is_done() {
    let mut mux = mux().model("a").config(LONG_HEADER_TIMEOUT).start();
    let n = stalled_count();
    let mut stalled = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(&mux.llmux.addr).await.expect("connect");
        stream.write_all(b"P").await.expect("write");
        stalled.push(stream);
    }
    wait_open_connections(&mux, n + 1).await;
    let stream = tokio::spawn(frames(mux.slow_stream("a", 5, 200).await));
    mux.llmux.signal(Signal::SIGTERM);
    let body: Vec<u8> = stream.await.expect("stream").iter().flat_map(|(_, f)| f.to_vec()).collect();
    assert!(body.windows(6).any(|w| w == b"[DONE]"), "the stream was cut: {:?}", String::from_utf8_lossy(&body));
    let done = Instant::now();
    let status = tokio::task::block_in_place(|| mux.llmux.wait_exit());
    let after = done.elapsed();
    assert_eq!(status.code(), Some(0), "exit after {after:?}");
    assert!(after < Duration::from_secs(5), "exited {after:?} after the last in-flight request");
    // The stalled clients were let go.
    let got = read_to_close(&mut stalled[0]).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

/// An IO that claims to write its first `skip` bytes without sending them:
/// the test sent them itself, earlier.
struct SkipFirst {
    inner: TcpStream,
    skip: usize,
}

impl AsyncRead for SkipFirst {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SkipFirst {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            self.skip -= n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_stalled_preface_completed_later_is_served_as_h2c() {
    let mux = mux().model("a").config(LONG_HEADER_TIMEOUT).start();
    let mut stream = TcpStream::connect(&mux.llmux.addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.write_all(b"P").await.expect("write");
    wait_open_connections(&mux, 2).await;
    // The stall itself (what is tested; nothing waits on it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    // hyper's client writes the whole preface; its `P` was sent already.
    let io = TokioIo::new(SkipFirst { inner: stream, skip: 1 });
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let body = chat("a");
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{CHAT}", mux.llmux.addr))
        .header("x-standin-echo", "1")
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let response = tokio::time::timeout(PATIENCE, sender.send_request(req)).await.expect("in time").expect("response");
    assert_eq!((response.version(), response.status().as_u16()), (Version::HTTP_2, 200));
    let echo = response.into_body().collect().await.expect("body").to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&echo).expect("echo JSON");
    assert_eq!(echo["body_fnv64"], fnv1a64(body.as_bytes()), "{echo}");
    drop(sender);
    conn.abort();
}

#[tokio::test]
async fn an_http1_request_sent_one_byte_at_a_time_is_served() {
    let mux = mux().model("a").config(LONG_HEADER_TIMEOUT).start();
    let body = chat("a");
    let req = format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    for (i, byte) in req.as_bytes().iter().enumerate() {
        conn.write(std::slice::from_ref(byte)).await;
        if i < 24 {
            // Paced through what detection reads (the test holds either way).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let r = conn.read_response().await;
    assert_eq!((r.status, r.header("x-standin-model")), (200, Some("a")), "{:?}", String::from_utf8_lossy(&r.body));
    let seen = requests(mux.backend("a")).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["body_len"], body.len(), "{seen:?}");
}

/// What `curl --http2` sends over `http://` (RFC 7540 §3.2).
const H2C_OFFER: &str =
    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n";

#[tokio::test]
async fn an_upgrade_h2c_offer_is_served_as_http1_and_not_forwarded() {
    let mux = mux().model("a").start();
    let body = chat("a");
    let request = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\n{H2C_OFFER}x-standin-echo: 1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    // Twice on one connection: the ignored offer leaves it plain HTTP/1.1.
    for _ in 0..2 {
        conn.write(request.as_bytes()).await;
        let r = conn.read_response().await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("upgrade"), None);
        let e = r.json();
        assert_eq!(e["body_fnv64"], fnv1a64(body.as_bytes()), "{e}");
        for gone in ["upgrade", "http2-settings", "connection"] {
            assert!(echoed(&e, gone).is_empty(), "{gone} was forwarded: {e}");
        }
    }
    // A local endpoint too.
    conn.write(format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{H2C_OFFER}\r\n").as_bytes()).await;
    let r = conn.read_response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"][0]["id"], "a");
    assert_eq!(requests(mux.backend("a")).await.len(), 2);
}

#[tokio::test]
async fn real_upgrades_are_still_501() {
    let mux = mux().model("a").start();
    let body = chat("a");
    for upgrade in ["websocket", "h2c, websocket", "websocket, h2c", "h2"] {
        let mut conn = RawConn::connect(&mux.llmux.addr).await;
        let req = format!(
            "POST {CHAT} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write(req.as_bytes()).await;
        let r = conn.read_response().await;
        assert_eq!(r.status, 501, "Upgrade: {upgrade}");
        assert_eq!(r.json()["error"]["code"], "upgrade_not_supported");
    }
    let mut conn = RawConn::connect(&mux.llmux.addr).await;
    conn.write(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").await;
    assert_eq!(conn.read_response().await.status, 501);
    assert!(requests(mux.backend("a")).await.is_empty());
}

/// Runs curl with `args`; `None` (with a note) if curl is not installed.
async fn curl(args: &[&str]) -> Option<String> {
    let run = tokio::process::Command::new("curl").args(args).kill_on_drop(true).output();
    let output = match tokio::time::timeout(PATIENCE, run).await.expect("curl in time") {
        Ok(output) => output,
        Err(e) => {
            println!("note: curl not run ({e}); the `curl --http2` check is skipped");
            return None;
        }
    };
    assert!(output.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
async fn curl_http2_over_http_gets_200() {
    let mux = mux().model("a").start();
    let body = chat("a");
    let url = mux.url(CHAT);
    let args = [
        "-sS",
        "--http2",
        "-H",
        "content-type: application/json",
        "-d",
        &body,
        "-w",
        "\n%{http_code} %{http_version}",
        &url,
    ];
    let Some(out) = curl(&args).await else { return };
    let (reply, status) = out.rsplit_once('\n').expect("status line");
    assert_eq!(status, "200 1.1", "{out}");
    assert!(reply.contains("chat.completion"), "{reply}");
    let models = mux.url("/v1/models");
    let out =
        curl(&["-sS", "--http2", "-w", "\n%{http_code} %{http_version}", &models]).await.expect("curl ran before");
    assert!(out.ends_with("\n200 1.1"), "{out}");
}

/// llmux's CPU time (user + system) in clock ticks, from `/proc/PID/stat`.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the `(comm)`: state is the 1st, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// A measurement, not a check (run by hand, see docs/faults.md):
/// `cargo test --test it protocol::stalled_prefaces_cpu -- --ignored --nocapture`.
/// Opens 300 connections that send `P` and stall, and prints llmux's CPU
/// over 10 s with them open, then over 10 s after the clients closed.
#[tokio::test]
#[ignore = "a measurement: 20 s, prints CPU figures"]
async fn stalled_prefaces_cpu() {
    let mux = mux().model("a").config(LONG_HEADER_TIMEOUT).env("RUST_LOG", "llmux=info").start();
    let pid = mux.llmux.pid().as_raw();
    let mut stalled = Vec::with_capacity(300);
    for _ in 0..300 {
        let mut stream = TcpStream::connect(&mux.llmux.addr).await.expect("connect");
        stream.write_all(b"P").await.expect("write");
        stalled.push(stream);
    }
    wait_open_connections(&mux, 301).await;
    let window = Duration::from_secs(10);
    let ticks_per_sec = 100.0; // CLK_TCK on Linux
    let measure = |label: &'static str| async move {
        let before = cpu_ticks(pid);
        tokio::time::sleep(window).await;
        let ms = (cpu_ticks(pid) - before) as f64 * 1000.0 / ticks_per_sec;
        println!("{label}: {ms:.0} ms CPU in {window:?} ({:.2}% of a core)", ms / 10.0 / window.as_secs_f64());
    };
    measure("300 stalled `P` connections open").await;
    drop(stalled);
    measure("after the 300 clients closed").await;
}
