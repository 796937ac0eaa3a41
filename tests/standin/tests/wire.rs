//! The stand-in's own wire behaviour, over raw TCP: the `listening on` line,
//! SIGTERM, request framing (chunked bodies split anywhere, keep-alive,
//! pipelining, HTTP/1.0, `Expect: 100-continue`), refused heads, the
//! stats, `--concurrency` and the body's `standin_service_ms`. llmux's suite (tests/it) covers the endpoints and fault headers.
//!
//! Being an integration test of this package, it also makes `cargo test`
//! build `target/<profile>/llmux-standin`, which tests/it then uses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Standin {
    child: Child,
    addr: String,
}

impl Standin {
    fn start() -> Standin {
        Standin::start_with(&[])
    }

    /// Started with `args` besides port and model.
    fn start_with(args: &[&str]) -> Standin {
        let mut child = Command::new(env!("CARGO_BIN_EXE_llmux-standin"))
            .args(["--port", "0", "--model", "m"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("first line");
        let addr = line.trim().strip_prefix("listening on ").expect("listening on ADDR").to_owned();
        Standin { child, addr }
    }

    fn connect(&self) -> BufReader<TcpStream> {
        let s = TcpStream::connect(&self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        BufReader::new(s)
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `pieces` one by one, pausing between them.
fn send(conn: &mut BufReader<TcpStream>, pieces: &[&[u8]]) {
    for piece in pieces {
        conn.get_mut().write_all(piece).expect("write");
        conn.get_mut().flush().expect("flush");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads one response with a Content-Length body: status, lower-case head, body.
fn response(conn: &mut BufReader<TcpStream>) -> (u16, String, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(conn.read_line(&mut line).expect("read") > 0, "EOF in head after {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head[9..12].parse().expect("status");
    let len = head.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |n| n.parse().expect("len"));
    let mut body = vec![0; len];
    conn.read_exact(&mut body).expect("body");
    (status, head, String::from_utf8(body).expect("utf-8"))
}

fn at_eof(conn: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    matches!(conn.read_to_end(&mut rest), Ok(0))
}

const ECHO: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nx-standin-echo: 1\r\n";

#[test]
fn sigterm_exits_cleanly() {
    let mut s = Standin::start();
    let kill = format!("kill -TERM {}", s.child.id());
    let status = Command::new("sh").args(["-c", &kill]).status().expect("sh");
    assert!(status.success());
    assert!(s.child.wait().expect("wait").success());
}

#[test]
fn chunked_bodies_split_anywhere_then_keep_alive() {
    let s = Standin::start();
    let mut c = s.connect();
    let head = [ECHO, b"Transfer-Encoding: chunked\r\n\r\n"].concat();
    send(&mut c, &[&head, b"3\r", b"\nabc\r\n4;ext=1\r\nd", b"efg\r\n0\r", b"\nTrailer: x\r\n\r\n"]);
    let (status, _, body) = response(&mut c);
    assert_eq!(status, 200);
    assert!(body.contains(r#""body_len":7"#), "{body}");
    // Bare LF line endings in the chunk framing are accepted too.
    send(&mut c, &[&head[..head.len() - 2], b"\n2\nhi\n0\n\n"]);
    assert!(response(&mut c).2.contains(r#""body_len":2"#));
    send(&mut c, &[b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"]);
    assert_eq!(response(&mut c).0, 200);
    assert!(at_eof(&mut c));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Standin::start();
    let mut c = s.connect();
    send(&mut c, &[b"\r\nGET /health HTTP/1.1\r\n\r\nGET /v1/models HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n"]);
    assert_eq!(response(&mut c).2, r#"{"status":"ok"}"#);
    assert!(response(&mut c).2.contains(r#""id":"m""#));
    assert_eq!(response(&mut c).0, 404);
}

#[test]
fn http10_keeps_alive_only_when_asked() {
    let s = Standin::start();
    let mut c = s.connect();
    send(&mut c, &[b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"]);
    assert!(response(&mut c).1.contains("connection: keep-alive"));
    send(&mut c, &[b"GET /health HTTP/1.0\r\n\r\n"]);
    assert!(response(&mut c).1.contains("connection: close"));
    assert!(at_eof(&mut c));
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let s = Standin::start();
    let mut c = s.connect();
    send(&mut c, &[ECHO, b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"]);
    let mut line = String::new();
    c.read_line(&mut line).expect("read");
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    c.read_line(&mut line).expect("read");
    send(&mut c, &[b"hello"]);
    assert!(response(&mut c).2.contains(r#""body_len":5"#));
}

#[test]
fn bad_heads_are_refused_and_the_connection_closed() {
    let s = Standin::start();
    let huge = [b"GET / HTTP/1.1\r\nA: ".as_slice(), &[b'a'; 70_000], b"\r\n\r\n"].concat();
    let cases: [(&[u8], u16); 7] = [
        (b"GET /health HTTP/2.0\r\n\r\n", 505),
        (b"GET /health HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400),
        (b"GET health HTTP/1.1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (&huge, 431),
    ];
    for (request, expected) in cases {
        let mut c = s.connect();
        send(&mut c, &[request]);
        let (status, head, _) = response(&mut c);
        assert_eq!(status, expected, "{}", String::from_utf8_lossy(&request[..40.min(request.len())]));
        assert!(head.contains("connection: close"));
    }
}

#[test]
fn stats_count_requests_but_not_health_or_stats() {
    let s = Standin::start();
    let mut c = s.connect();
    send(&mut c, &[b"GET /health HTTP/1.1\r\n\r\nGET /v1/models HTTP/1.1\r\nx-request-id: r1\r\n\r\n"]);
    response(&mut c);
    assert!(response(&mut c).1.contains("x-request-id: r1"));
    send(&mut c, &[b"GET /standin/stats HTTP/1.1\r\n\r\nGET /standin/requests HTTP/1.1\r\n\r\n"]);
    let stats = response(&mut c).2;
    for field in [r#""requests":1"#, r#""cancelled":0"#, r#""in_flight":0"#, r#""connections":1"#] {
        assert!(stats.contains(field), "{stats}");
    }
    let recent = response(&mut c).2;
    assert!(recent.contains(r#""path":"/v1/models""#) && recent.contains(r#""request_id":"r1""#), "{recent}");
}

/// A chat request for `m` with `body_extra` (`,"key":value...`) in its
/// body and `headers` (each ending in CRLF).
fn chat(body_extra: &str, headers: &str) -> Vec<u8> {
    let body = format!(r#"{{"model":"m","messages":[]{body_extra}}}"#);
    format!("POST /v1/chat/completions HTTP/1.1\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// Sends `request` on a new connection; its status and when it was answered.
fn timed(s: &Standin, request: &[u8]) -> (u16, Instant) {
    let mut c = s.connect();
    send(&mut c, &[request]);
    let status = response(&mut c).0;
    (status, Instant::now())
}

#[test]
fn concurrency_1_serves_one_request_at_a_time() {
    let s = Standin::start_with(&["--concurrency", "1"]);
    let request = chat("", "x-standin-delay-ms: 300\r\n");
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| timed(&s, &request));
        let b = scope.spawn(|| timed(&s, &request));
        (a.join().expect("first"), b.join().expect("second"))
    });
    assert_eq!((a.0, b.0), (200, 200));
    let (first, second) = if a.1 <= b.1 { (a.1, b.1) } else { (b.1, a.1) };
    // Sent at once, served one after the other: 300 ms apart, not together.
    let apart = second - first;
    assert!(apart >= Duration::from_millis(250), "finished {apart:?} apart");
}

#[test]
fn the_body_service_time_delays_the_answer_and_the_header_wins() {
    let s = Standin::start();
    let started = Instant::now();
    let (status, at) = timed(&s, &chat(r#","standin_service_ms":300"#, ""));
    assert_eq!(status, 200);
    assert!(at - started >= Duration::from_millis(300), "answered after {:?}", at - started);
    let started = Instant::now();
    let (status, at) = timed(&s, &chat(r#","standin_service_ms":60000"#, "x-standin-delay-ms: 0\r\n"));
    assert_eq!(status, 200);
    assert!(at - started < Duration::from_secs(5), "answered after {:?}", at - started);
    assert_eq!(timed(&s, &chat(r#","standin_service_ms":-1"#, "")).0, 400);
}
