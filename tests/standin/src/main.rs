//! `llmux-standin`: a stand-in OpenAI-compatible backend for llmux's tests,
//! benches and the example config.
//!
//! It is a deliberately hand-rolled, minimal HTTP/1.1 server over tokio's
//! `TcpStream` rather than hyper: tests need raw control of the wire to
//! inject faults (hangs, resets, malformed responses, mid-stream failures).
//! It is also the "instant" backend of the benchmarks, so the hot path does
//! little work: buffered reads, one write per response, keep-alive.
//!
//! This binary must not depend on the `llmux` library: it only uses external
//! crates.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::Write as _;
use std::ops::Range;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

const USAGE: &str = "\
llmux-standin: a stand-in OpenAI-compatible backend for llmux's tests and benches

USAGE:
    llmux-standin --port P --model NAME [--host ADDR] [--load-ms N]

OPTIONS:
    --port P       TCP port to listen on (0 picks a free port)
    --model NAME   the one model this backend serves
    --host ADDR    address to bind [default: 127.0.0.1]
    --load-ms N    answer 503 (\"loading\") for N ms after start [default: 0]
    -h, --help     print this help and exit

The first line on stdout is `listening on ADDR:PORT` (the bound address).
SIGTERM and SIGINT stop the server with exit code 0.

ENDPOINTS:
    GET  /health               200 {\"status\":\"ok\"} (503 while loading)
    GET  /v1/models
    POST /v1/chat/completions  (\"stream\": true for SSE)
    POST /v1/completions
    POST /v1/embeddings
    GET  /standin/stats        {\"requests\",\"cancelled\",\"in_flight\",\"connections\"}
    GET  /standin/requests     the last 256 requests

FAULT HEADERS (per request, not on /standin/*):
    x-standin-delay-ms: N          wait N ms before the response head
    x-standin-chunks: N            SSE chunk count [default: 5]
    x-standin-chunk-ms: M          wait M ms between SSE chunks [default: 0]
    x-standin-hang: headers|stream never answer / hang after the first chunk
    x-standin-reset: headers|stream RST at once / RST after two chunks
    x-standin-malformed: 1         answer with invalid HTTP and close
    x-standin-status: CODE         answer CODE with an OpenAI error body
    x-standin-echo: 1              answer with a JSON echo of the request
";

/// Largest request head (request line + headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Largest chunk-size line of a chunked request body.
const MAX_CHUNK_LINE: usize = 4096;
/// While a request is delayed, hanging or streaming we keep reading the
/// socket to notice a disconnect; pipelined bytes are buffered up to this.
const MAX_PIPELINED: usize = 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;
const RECENT_CAP: usize = 256;
const DEFAULT_CHUNKS: usize = 5;
const MAX_CHUNKS: usize = 1_000_000;
/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1000);
/// How long a closing connection is drained so the peer reads our response
/// rather than an RST caused by unread input.
const LINGER: Duration = Duration::from_millis(500);

const MALFORMED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: nonsense\r\n\r\ngarbage";

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

struct Config {
    host: String,
    port: u16,
    model: String,
    load_ms: u64,
}

/// `Ok(None)` means `--help`.
fn parse_args() -> Result<Option<Config>, String> {
    let mut args = pico_args::Arguments::from_env();
    if args.contains(["-h", "--help"]) {
        return Ok(None);
    }
    let port: u16 = args.value_from_str("--port").map_err(|e| arg_error("--port", e))?;
    let host: Option<String> = args.opt_value_from_str("--host").map_err(|e| arg_error("--host", e))?;
    let model: String = args.value_from_str("--model").map_err(|e| arg_error("--model", e))?;
    let load_ms: Option<u64> = args.opt_value_from_str("--load-ms").map_err(|e| arg_error("--load-ms", e))?;
    let rest = args.finish();
    if !rest.is_empty() {
        let rest: Vec<String> = rest.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        return Err(format!("unexpected argument(s): {}", rest.join(" ")));
    }
    if model.is_empty() || model.chars().any(char::is_control) {
        return Err("--model must be non-empty and free of control characters".to_owned());
    }
    Ok(Some(Config {
        host: host.unwrap_or_else(|| "127.0.0.1".to_owned()),
        port,
        model,
        load_ms: load_ms.unwrap_or(0),
    }))
}

fn arg_error(option: &str, e: pico_args::Error) -> String {
    match e {
        pico_args::Error::MissingOption(_) => e.to_string(),
        _ => format!("{option}: {e}"),
    }
}

fn main() -> ExitCode {
    let cfg = match parse_args() {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(USAGE.as_bytes()).and_then(|()| out.flush());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("llmux-standin: error: {e}\nRun `llmux-standin --help` for usage.");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llmux-standin: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(run(cfg));
    // Hung connections are simply dropped.
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn run(cfg: Config) -> ExitCode {
    // Install the handlers before announcing the port, so a test that signals
    // us right after reading the first line still gets a clean exit.
    let (mut sigterm, mut sigint) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("llmux-standin: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind((cfg.host.as_str(), cfg.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("llmux-standin: cannot listen on {}:{}: {e}", cfg.host, cfg.port);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("llmux-standin: cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}").and_then(|()| out.flush());
    }

    let state = Arc::new(State::new(&cfg));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    let state = Arc::clone(&state);
                    let shutdown = shutdown_rx.clone();
                    tokio::spawn(serve_conn(state, stream, shutdown));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    eprintln!("llmux-standin: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = shutdown_tx.send(true);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while state.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

struct Recorded {
    method: String,
    path: String,
    model: Option<String>,
    request_id: Option<String>,
    body_len: usize,
}

struct State {
    model: String,
    /// `model` as a JSON string literal (quoted, escaped).
    model_json: String,
    /// The deterministic completion text, "Hello from NAME".
    content: String,
    content_json: String,
    /// Byte offsets of the char boundaries of `content`, both ends included.
    boundaries: Vec<usize>,
    completion_tokens: u64,
    models_body: Vec<u8>,
    started: Instant,
    load: Duration,
    ready: AtomicBool,
    requests: AtomicU64,
    cancelled: AtomicU64,
    in_flight: AtomicU64,
    connections: AtomicU64,
    next_id: AtomicU64,
    recent: Mutex<VecDeque<Recorded>>,
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn to_json_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl State {
    fn new(cfg: &Config) -> Self {
        let content = format!("Hello from {}", cfg.model);
        let mut boundaries: Vec<usize> = content.char_indices().map(|(i, _)| i).collect();
        boundaries.push(content.len());
        let models_body = to_json_vec(&json!({
            "object": "list",
            "data": [model_object(&cfg.model)],
        }));
        State {
            model: cfg.model.clone(),
            model_json: json_string(&cfg.model),
            content_json: json_string(&content),
            completion_tokens: content.split_whitespace().count() as u64,
            content,
            boundaries,
            models_body,
            started: Instant::now(),
            load: Duration::from_millis(cfg.load_ms),
            ready: AtomicBool::new(cfg.load_ms == 0),
            requests: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CAP)),
        }
    }

    fn is_loading(&self) -> bool {
        if self.ready.load(Ordering::Relaxed) {
            return false;
        }
        if self.started.elapsed() >= self.load {
            self.ready.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn record(&self, rec: Recorded) {
        let mut recent = self.recent.lock();
        if recent.len() >= RECENT_CAP {
            recent.pop_front();
        }
        recent.push_back(rec);
    }

    /// The `content` slice streamed as chunk `i` of `n`.
    fn piece(&self, i: usize, n: usize) -> &str {
        let chars = self.boundaries.len() - 1;
        let from = self.boundaries[i * chars / n];
        let to = self.boundaries[(i + 1) * chars / n];
        self.content.get(from..to).unwrap_or("")
    }
}

fn model_object(model: &str) -> Value {
    json!({"id": model, "object": "model", "created": 0, "owned_by": "llmux-standin"})
}

struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------
// HTTP/1.1 request parsing
// ---------------------------------------------------------------------------

struct Request {
    head: Bytes,
    method: Range<usize>,
    target: Range<usize>,
    http10: bool,
    headers: Vec<(Range<usize>, Range<usize>)>,
    keep_alive: bool,
    body: Bytes,
}

impl Request {
    fn method(&self) -> &str {
        std::str::from_utf8(&self.head[self.method.clone()]).unwrap_or("")
    }

    fn target(&self) -> &str {
        std::str::from_utf8(&self.head[self.target.clone()]).unwrap_or("")
    }

    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers.iter().map(|(n, v)| (&self.head[n.clone()], &self.head[v.clone()]))
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }
}

enum Framing {
    None,
    Length(usize),
    Chunked,
}

struct Head {
    req: Request,
    framing: Framing,
    expect_continue: bool,
}

enum ReadErr {
    /// The peer went away (or we are shutting down): close silently.
    Closed,
    /// Answer this status with an error body, then close.
    Bad(u16, &'static str),
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Index just past the blank line ending a request head, searching for the
/// line feed from `from` on. Accepts CRLF and bare LF line endings.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

fn parse_head(head: Bytes) -> Result<Head, ReadErr> {
    const BAD: ReadErr = ReadErr::Bad(400, "malformed request head");
    let data: &[u8] = &head;
    let mut start = 0;
    let mut request_line: Option<Range<usize>> = None;
    let mut headers: Vec<(Range<usize>, Range<usize>)> = Vec::with_capacity(16);
    while start < data.len() {
        let nl = data[start..].iter().position(|&b| b == b'\n').map_or(data.len(), |p| start + p);
        let mut end = nl;
        if end > start && data[end - 1] == b'\r' {
            end -= 1;
        }
        let line = start..end;
        start = nl + 1;
        if line.is_empty() {
            break;
        }
        if request_line.is_none() {
            request_line = Some(line);
            continue;
        }
        let text = &data[line.clone()];
        if matches!(text.first(), Some(b' ' | b'\t')) {
            return Err(ReadErr::Bad(400, "obsolete header line folding"));
        }
        let colon = text.iter().position(|&b| b == b':').ok_or(BAD)?;
        let name = &text[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ReadErr::Bad(400, "invalid header name"));
        }
        let raw = &text[colon + 1..];
        let value = trim_ows(raw);
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ReadErr::Bad(400, "invalid header value"));
        }
        let lead = raw.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        let vstart = line.start + colon + 1 + lead;
        headers.push((line.start..line.start + colon, vstart..vstart + value.len()));
    }
    let rl = request_line.ok_or(BAD)?;
    let line = &data[rl.clone()];
    let sp1 = line.iter().position(|&b| b == b' ').ok_or(BAD)?;
    let rest = &line[sp1 + 1..];
    let sp2 = rest.iter().position(|&b| b == b' ').ok_or(BAD)?;
    let method = rl.start..rl.start + sp1;
    let mut target = rl.start + sp1 + 1..rl.start + sp1 + 1 + sp2;
    let version = &rest[sp2 + 1..];
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        v if v.starts_with(b"HTTP/") => return Err(ReadErr::Bad(505, "HTTP version not supported")),
        _ => return Err(BAD),
    };
    if method.is_empty() || !data[method.clone()].iter().all(|&b| is_tchar(b)) {
        return Err(ReadErr::Bad(400, "invalid method"));
    }
    let t = &data[target.clone()];
    if t.is_empty() || t.iter().any(|&b| b <= b' ' || b == 0x7f) || std::str::from_utf8(t).is_err() {
        return Err(ReadErr::Bad(400, "invalid request target"));
    }
    // absolute-form: keep only the path and query.
    let lower = t.to_ascii_lowercase();
    if lower.starts_with(b"http://") || lower.starts_with(b"https://") {
        let after_scheme = lower.iter().position(|&b| b == b':').map_or(0, |p| p + 3);
        let slash =
            t[after_scheme..].iter().position(|&b| b == b'/').ok_or(ReadErr::Bad(400, "invalid request target"))?;
        target.start += after_scheme + slash;
    } else if t != b"*" && t[0] != b'/' {
        return Err(ReadErr::Bad(400, "invalid request target"));
    }

    let mut has_close = false;
    let mut has_keep_alive = false;
    let mut te_tokens = 0usize;
    let mut te_chunked_only = true;
    let mut content_length: Option<u64> = None;
    let mut expect_continue = false;
    for (n, v) in &headers {
        let name = &data[n.clone()];
        let value = &data[v.clone()];
        if name.eq_ignore_ascii_case(b"connection") {
            for tok in value.split(|&b| b == b',').map(trim_ows) {
                has_close |= tok.eq_ignore_ascii_case(b"close");
                has_keep_alive |= tok.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for tok in value.split(|&b| b == b',').map(trim_ows) {
                if tok.is_empty() {
                    continue;
                }
                te_tokens += 1;
                te_chunked_only &= tok.eq_ignore_ascii_case(b"chunked");
            }
            if te_tokens == 0 {
                return Err(ReadErr::Bad(400, "empty Transfer-Encoding"));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for tok in value.split(|&b| b == b',').map(trim_ows) {
                if tok.is_empty() || tok.len() > 19 || !tok.iter().all(u8::is_ascii_digit) {
                    return Err(ReadErr::Bad(400, "invalid Content-Length"));
                }
                let n: u64 = std::str::from_utf8(tok)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(ReadErr::Bad(400, "invalid Content-Length"))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(ReadErr::Bad(400, "conflicting Content-Length"));
                }
                content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = !http10 && value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let framing = match (te_tokens > 0, content_length) {
        (true, Some(_)) => return Err(ReadErr::Bad(400, "both Transfer-Encoding and Content-Length")),
        (true, None) if te_tokens == 1 && te_chunked_only => Framing::Chunked,
        (true, None) => return Err(ReadErr::Bad(400, "unsupported Transfer-Encoding")),
        (false, Some(n)) => match usize::try_from(n) {
            Ok(n) if n <= MAX_BODY => Framing::Length(n),
            _ => return Err(ReadErr::Bad(413, "request body too large")),
        },
        (false, None) => Framing::None,
    };
    let keep_alive = if http10 { has_keep_alive && !has_close } else { !has_close };
    Ok(Head {
        req: Request { head, method, target, http10, headers, keep_alive, body: Bytes::new() },
        framing,
        expect_continue,
    })
}

fn parse_chunk_size(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let size = match line.iter().position(|&b| b == b';') {
        Some(p) => &line[..p],
        None => line,
    };
    let size = trim_ows(size);
    if size.is_empty() || size.len() > 15 {
        return None;
    }
    let mut n = 0usize;
    for &b in size {
        let d = char::from(b).to_digit(16)?;
        n = n.checked_mul(16)?.checked_add(d as usize)?;
    }
    Some(n)
}

// ---------------------------------------------------------------------------
// Connection I/O
// ---------------------------------------------------------------------------

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    shutdown: watch::Receiver<bool>,
}

enum Fill {
    Data,
    Closed,
}

enum Waited {
    Elapsed,
    /// The client closed the connection (EOF or error).
    Gone,
    Shutdown,
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `None` (never) when the deadline is too far to represent.
fn deadline_after(ms: u64) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(Duration::from_millis(ms))
}

impl Conn {
    /// Reads more bytes into `buf`.
    async fn fill(&mut self) -> Fill {
        self.buf.reserve(READ_CHUNK);
        tokio::select! {
            r = self.stream.read_buf(&mut self.buf) => match r {
                Ok(n) if n > 0 => Fill::Data,
                _ => Fill::Closed,
            },
            _ = self.shutdown.wait_for(|&down| down) => Fill::Closed,
        }
    }

    /// Waits until `deadline` (forever if `None`) while watching the socket
    /// for the client going away. Pipelined input is kept in `buf`.
    async fn wait(&mut self, deadline: Option<tokio::time::Instant>) -> Waited {
        loop {
            let room = self.buf.len() < MAX_PIPELINED;
            if room {
                self.buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                () = sleep_until_opt(deadline) => return Waited::Elapsed,
                r = self.stream.read_buf(&mut self.buf), if room => match r {
                    Ok(n) if n > 0 => {}
                    _ => return Waited::Gone,
                },
                _ = self.shutdown.wait_for(|&down| down) => return Waited::Shutdown,
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    async fn read_request(&mut self) -> Result<Request, ReadErr> {
        let mut scanned = 0usize;
        let end = loop {
            // Stray CRLFs between requests are ignored (RFC 9112 §2.2).
            let skip = self.buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            if skip > 0 {
                self.buf.advance(skip);
                scanned = 0;
            }
            if let Some(end) = find_head_end(&self.buf, scanned) {
                break end;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadErr::Bad(431, "request head too large"));
            }
            scanned = self.buf.len().saturating_sub(2);
            if let Fill::Closed = self.fill().await {
                return Err(ReadErr::Closed);
            }
        };
        if end > MAX_HEAD {
            return Err(ReadErr::Bad(431, "request head too large"));
        }
        let head = self.buf.split_to(end).freeze();
        let Head { mut req, framing, expect_continue } = parse_head(head)?;
        req.body = match framing {
            Framing::None => Bytes::new(),
            Framing::Length(n) => {
                if self.buf.len() < n {
                    if expect_continue {
                        self.send_continue().await?;
                    }
                    self.buf.reserve(n - self.buf.len());
                }
                while self.buf.len() < n {
                    if let Fill::Closed = self.fill().await {
                        return Err(ReadErr::Closed);
                    }
                }
                self.buf.split_to(n).freeze()
            }
            Framing::Chunked => {
                if expect_continue && self.buf.is_empty() {
                    self.send_continue().await?;
                }
                self.read_chunked().await?
            }
        };
        Ok(req)
    }

    async fn send_continue(&mut self) -> Result<(), ReadErr> {
        self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(|_| ReadErr::Closed)
    }

    /// Index of the next `\n` in `buf`, reading more as needed.
    async fn read_line(&mut self, limit: usize) -> Result<usize, ReadErr> {
        let mut from = 0;
        loop {
            if let Some(p) = self.buf[from..].iter().position(|&b| b == b'\n') {
                return Ok(from + p);
            }
            from = self.buf.len();
            if from > limit {
                return Err(ReadErr::Bad(400, "malformed chunked body"));
            }
            if let Fill::Closed = self.fill().await {
                return Err(ReadErr::Closed);
            }
        }
    }

    async fn fill_to(&mut self, n: usize) -> Result<(), ReadErr> {
        while self.buf.len() < n {
            if let Fill::Closed = self.fill().await {
                return Err(ReadErr::Closed);
            }
        }
        Ok(())
    }

    async fn read_chunked(&mut self) -> Result<Bytes, ReadErr> {
        const BAD: ReadErr = ReadErr::Bad(400, "malformed chunked body");
        let mut body = BytesMut::new();
        loop {
            let eol = self.read_line(MAX_CHUNK_LINE).await?;
            let size = parse_chunk_size(&self.buf[..eol]).ok_or(BAD)?;
            self.buf.advance(eol + 1);
            if size == 0 {
                let mut total = 0usize;
                loop {
                    let eol = self.read_line(MAX_HEAD).await?;
                    let blank = eol == 0 || (eol == 1 && self.buf.first() == Some(&b'\r'));
                    total += eol + 1;
                    self.buf.advance(eol + 1);
                    if blank {
                        return Ok(body.freeze());
                    }
                    if total > MAX_HEAD {
                        return Err(ReadErr::Bad(431, "request trailers too large"));
                    }
                }
            }
            if body.len().saturating_add(size) > MAX_BODY {
                return Err(ReadErr::Bad(413, "request body too large"));
            }
            self.fill_to(size + 1).await?;
            body.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size);
            match self.buf.first() {
                Some(b'\n') => self.buf.advance(1),
                Some(b'\r') => {
                    self.fill_to(2).await?;
                    if self.buf.get(1) != Some(&b'\n') {
                        return Err(BAD);
                    }
                    self.buf.advance(2);
                }
                _ => return Err(BAD),
            }
        }
    }

    /// Sends FIN, then drains input for a little while, so the peer gets our
    /// last response rather than an RST caused by unread input.
    async fn close_gracefully(mut self) {
        let _ = self.stream.shutdown().await;
        let drain = async {
            let mut scratch = [0u8; 4096];
            while let Ok(n) = self.stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Abortive close: SO_LINGER 0 makes the kernel send an RST.
    fn reset(self) {
        #[allow(deprecated)]
        let _ = self.stream.set_linger(Some(Duration::ZERO));
        drop(self);
    }
}

enum After {
    KeepAlive,
    Close,
    Reset,
}

async fn serve_conn(state: Arc<State>, stream: TcpStream, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn { stream, buf: BytesMut::with_capacity(READ_CHUNK), shutdown };
    loop {
        let after = match conn.read_request().await {
            Ok(req) => handle(&state, &mut conn, &req).await,
            Err(ReadErr::Closed) => return,
            Err(ReadErr::Bad(status, message)) => {
                let rsp = Responder {
                    state: &state,
                    request_id: None,
                    close: true,
                    head_only: false,
                    http10: false,
                    counted: false,
                };
                let body = error_json(message, "invalid_request_error", None, None);
                rsp.json(&mut conn, StreamFault::None, status, &body).await;
                After::Close
            }
        };
        match after {
            After::KeepAlive => {}
            After::Close => return conn.close_gracefully().await,
            After::Reset => return conn.reset(),
        }
    }
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

fn error_json(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    to_json_vec(&json!({
        "error": {"message": message, "type": kind, "param": param, "code": code}
    }))
}

fn status_error(status: u16) -> Vec<u8> {
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    error_json(&format!("status {status} injected by x-standin-status"), kind, None, Some("standin_injected"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamFault {
    None,
    /// Hang after the head and the first part of the body.
    Hang,
    /// Reset after the head and the first part of the body.
    Reset,
}

enum BodyLen {
    Fixed(usize),
    /// No body and no Content-Length (204, 304).
    Nothing,
    Chunked,
    /// HTTP/1.0 streaming: the body ends when the connection closes.
    UntilClose,
}

struct Responder<'a> {
    state: &'a State,
    request_id: Option<&'a [u8]>,
    close: bool,
    head_only: bool,
    http10: bool,
    /// Whether a cancellation counts in /standin/stats.
    counted: bool,
}

impl Responder<'_> {
    fn cancelled(&self) {
        if self.counted {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn head(&self, status: u16, ctype: &str, len: BodyLen, extra: &str, close: bool) -> Vec<u8> {
        let mut h = Vec::with_capacity(256);
        let _ = write!(h, "HTTP/1.1 {status} {}\r\n", reason(status));
        if !ctype.is_empty() {
            let _ = write!(h, "content-type: {ctype}\r\n");
        }
        match len {
            BodyLen::Fixed(n) => {
                let _ = write!(h, "content-length: {n}\r\n");
            }
            BodyLen::Chunked => h.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            BodyLen::Nothing | BodyLen::UntilClose => {}
        }
        h.extend_from_slice(b"x-standin-model: ");
        h.extend_from_slice(self.state.model.as_bytes());
        h.extend_from_slice(b"\r\n");
        if let Some(id) = self.request_id {
            h.extend_from_slice(b"x-request-id: ");
            h.extend_from_slice(id);
            h.extend_from_slice(b"\r\n");
        }
        h.extend_from_slice(extra.as_bytes());
        if close {
            h.extend_from_slice(b"connection: close\r\n");
        } else if self.http10 {
            h.extend_from_slice(b"connection: keep-alive\r\n");
        }
        h.extend_from_slice(b"\r\n");
        h
    }

    fn after(&self) -> After {
        if self.close {
            After::Close
        } else {
            After::KeepAlive
        }
    }

    /// Hangs until the client goes away (or shutdown).
    async fn hang(&self, conn: &mut Conn) -> After {
        if let Waited::Gone = conn.wait(None).await {
            self.cancelled();
        }
        After::Close
    }

    async fn send(
        &self,
        conn: &mut Conn,
        fault: StreamFault,
        status: u16,
        ctype: &str,
        extra: &str,
        body: &[u8],
    ) -> After {
        let no_body = status == 204 || status == 304;
        let (len, ctype, body) =
            if no_body { (BodyLen::Nothing, "", &[][..]) } else { (BodyLen::Fixed(body.len()), ctype, body) };
        let body = if self.head_only { &[][..] } else { body };
        let mut out = self.head(status, ctype, len, extra, self.close);
        if fault != StreamFault::None {
            out.extend_from_slice(&body[..body.len() / 2]);
            if conn.write(&out).await.is_err() {
                self.cancelled();
                return After::Close;
            }
            return match fault {
                StreamFault::Hang => self.hang(conn).await,
                _ => After::Reset,
            };
        }
        out.extend_from_slice(body);
        if conn.write(&out).await.is_err() {
            self.cancelled();
            return After::Close;
        }
        self.after()
    }

    async fn json(&self, conn: &mut Conn, fault: StreamFault, status: u16, body: &[u8]) -> After {
        self.send(conn, fault, status, "application/json", "", body).await
    }

    async fn method_not_allowed(&self, conn: &mut Conn, fault: StreamFault, allow: &str) -> After {
        let body = error_json(
            &format!("method not allowed; use {allow}"),
            "invalid_request_error",
            None,
            Some("method_not_allowed"),
        );
        let extra = format!("allow: {allow}\r\n");
        self.send(conn, fault, 405, "application/json", &extra, &body).await
    }

    async fn sse(&self, conn: &mut Conn, faults: &Faults, gen: &SseGen<'_>) -> After {
        let chunked = !self.http10;
        let close = self.close || !chunked;
        let len = if chunked { BodyLen::Chunked } else { BodyLen::UntilClose };
        let head = self.head(200, "text/event-stream", len, "cache-control: no-cache\r\n", close);
        if conn.write(&head).await.is_err() {
            self.cancelled();
            return After::Close;
        }
        let n = faults.chunks;
        let fault = faults.stream_fault();
        let hang_at = (fault == StreamFault::Hang).then_some(n.min(1));
        let reset_at = (fault == StreamFault::Reset).then_some(n.min(2));
        let mut payload = String::with_capacity(512);
        let mut frame = Vec::with_capacity(512);
        let mut sent = 0usize;
        loop {
            if hang_at == Some(sent) {
                return self.hang(conn).await;
            }
            if reset_at == Some(sent) {
                return After::Reset;
            }
            if sent == n {
                break;
            }
            if sent > 0 && faults.chunk_ms > 0 {
                match conn.wait(deadline_after(faults.chunk_ms)).await {
                    Waited::Elapsed => {}
                    Waited::Gone => {
                        self.cancelled();
                        return After::Close;
                    }
                    Waited::Shutdown => return After::Close,
                }
            }
            payload.clear();
            gen.chunk(sent, n, &mut payload);
            frame.clear();
            push_event(&mut frame, chunked, &payload);
            if conn.write(&frame).await.is_err() {
                self.cancelled();
                return After::Close;
            }
            sent += 1;
        }
        frame.clear();
        if gen.include_usage {
            payload.clear();
            gen.usage_chunk(&mut payload);
            push_event(&mut frame, chunked, &payload);
        }
        push_event(&mut frame, chunked, "[DONE]");
        if chunked {
            frame.extend_from_slice(b"0\r\n\r\n");
        }
        if conn.write(&frame).await.is_err() {
            self.cancelled();
            return After::Close;
        }
        if close {
            After::Close
        } else {
            After::KeepAlive
        }
    }
}

/// Appends `data: PAYLOAD\n\n`, as one HTTP chunk when `chunked`.
fn push_event(frame: &mut Vec<u8>, chunked: bool, payload: &str) {
    if chunked {
        let _ = write!(frame, "{:x}\r\n", payload.len() + 8);
    }
    frame.extend_from_slice(b"data: ");
    frame.extend_from_slice(payload.as_bytes());
    frame.extend_from_slice(b"\n\n");
    if chunked {
        frame.extend_from_slice(b"\r\n");
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

struct SseGen<'a> {
    state: &'a State,
    kind: Kind,
    id: u64,
    created: u64,
    prompt_tokens: u64,
    include_usage: bool,
}

impl SseGen<'_> {
    fn object(&self) -> &'static str {
        match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        }
    }

    fn chunk(&self, i: usize, n: usize, out: &mut String) {
        use std::fmt::Write as _;
        let st = self.state;
        let piece = json_string(st.piece(i, n));
        let finish = if i + 1 == n { "\"stop\"" } else { "null" };
        let _ = write!(
            out,
            r#"{{"id":"cmpl-{}","object":"{}","created":{},"model":{},"choices":[{{"index":0,"#,
            self.id,
            self.object(),
            self.created,
            st.model_json
        );
        let _ = match (self.kind, i) {
            (Kind::Chat, 0) => write!(
                out,
                r#""delta":{{"role":"assistant","content":{piece}}},"logprobs":null,"finish_reason":{finish}}}]}}"#
            ),
            (Kind::Chat, _) => {
                write!(out, r#""delta":{{"content":{piece}}},"logprobs":null,"finish_reason":{finish}}}]}}"#)
            }
            (Kind::Text, _) => write!(out, r#""text":{piece},"logprobs":null,"finish_reason":{finish}}}]}}"#),
        };
    }

    fn usage_chunk(&self, out: &mut String) {
        use std::fmt::Write as _;
        let c = self.state.completion_tokens;
        let p = self.prompt_tokens;
        let _ = write!(
            out,
            r#"{{"id":"cmpl-{}","object":"{}","created":{},"model":{},"choices":[],"usage":{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{}}}}}"#,
            self.id,
            self.object(),
            self.created,
            self.state.model_json,
            p + c
        );
    }
}

// ---------------------------------------------------------------------------
// Fault headers
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Off,
    Headers,
    Stream,
}

struct Faults {
    delay_ms: u64,
    chunks: usize,
    chunk_ms: u64,
    hang: Phase,
    reset: Phase,
    malformed: bool,
    status: Option<u16>,
    echo: bool,
}

impl Faults {
    fn parse(req: &Request) -> Result<Faults, String> {
        let mut f = Faults {
            delay_ms: 0,
            chunks: DEFAULT_CHUNKS,
            chunk_ms: 0,
            hang: Phase::Off,
            reset: Phase::Off,
            malformed: false,
            status: None,
            echo: false,
        };
        const PREFIX: &[u8] = b"x-standin-";
        for (name, value) in req.headers() {
            if name.len() <= PREFIX.len() || !name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
                continue;
            }
            let key = name[PREFIX.len()..].to_ascii_lowercase();
            let hname = String::from_utf8_lossy(name).to_ascii_lowercase();
            let v = std::str::from_utf8(value).map_err(|_| format!("invalid {hname} header: not UTF-8"))?;
            let number = || -> Result<u64, String> {
                v.parse::<u64>().map_err(|_| format!("invalid {hname} header {v:?}: expected a non-negative integer"))
            };
            let phase = || -> Result<Phase, String> {
                match v.to_ascii_lowercase().as_str() {
                    "headers" => Ok(Phase::Headers),
                    "stream" => Ok(Phase::Stream),
                    "" | "0" | "off" | "none" => Ok(Phase::Off),
                    _ => Err(format!("invalid {hname} header {v:?}: expected \"headers\" or \"stream\"")),
                }
            };
            let flag = || -> Result<bool, String> {
                match v.to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => Ok(true),
                    "" | "0" | "false" | "no" | "off" => Ok(false),
                    _ => Err(format!("invalid {hname} header {v:?}: expected 1 or 0")),
                }
            };
            match key.as_slice() {
                b"delay-ms" => f.delay_ms = number()?,
                b"chunk-ms" => f.chunk_ms = number()?,
                b"chunks" => {
                    f.chunks = usize::try_from(number()?)
                        .ok()
                        .filter(|&n| n <= MAX_CHUNKS)
                        .ok_or_else(|| format!("invalid {hname} header: at most {MAX_CHUNKS}"))?;
                }
                b"hang" => f.hang = phase()?,
                b"reset" => f.reset = phase()?,
                b"malformed" => f.malformed = flag()?,
                b"echo" => f.echo = flag()?,
                b"status" => {
                    f.status = Some(
                        u16::try_from(number()?)
                            .ok()
                            .filter(|s| (200..=599).contains(s))
                            .ok_or_else(|| format!("invalid {hname} header {v:?}: expected 200..=599"))?,
                    );
                }
                _ => {}
            }
        }
        Ok(f)
    }

    fn stream_fault(&self) -> StreamFault {
        if self.hang == Phase::Stream {
            StreamFault::Hang
        } else if self.reset == Phase::Stream {
            StreamFault::Reset
        } else {
            StreamFault::None
        }
    }
}

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

/// The few request-body fields the stand-in looks at; everything else is
/// skipped without being materialised.
#[derive(Deserialize)]
struct BodyInfo {
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    stream: Option<Value>,
    #[serde(default)]
    stream_options: Option<Value>,
}

impl BodyInfo {
    /// `None` unless the body is a JSON object.
    fn parse(body: &[u8]) -> Option<BodyInfo> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' {
            return None;
        }
        serde_json::from_slice(body).ok()
    }

    fn model(&self) -> Option<&str> {
        self.model.as_ref().and_then(Value::as_str)
    }

    fn stream(&self) -> bool {
        matches!(self.stream, Some(Value::Bool(true)))
    }

    fn include_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false)
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn is_get(method: &str) -> bool {
    method == "GET" || method == "HEAD"
}

async fn handle(state: &State, conn: &mut Conn, req: &Request) -> After {
    let target = req.target();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let method = req.method();
    let mut rsp = Responder {
        state,
        request_id: req.header("x-request-id"),
        close: !req.keep_alive,
        head_only: method == "HEAD",
        http10: req.http10,
        counted: false,
    };
    if path == "/standin" || path.starts_with("/standin/") {
        return standin(state, conn, &rsp, method, path).await;
    }

    let info = BodyInfo::parse(&req.body);
    let _in_flight = if path == "/health" {
        None
    } else {
        rsp.counted = true;
        state.requests.fetch_add(1, Ordering::SeqCst);
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        state.record(Recorded {
            method: method.to_owned(),
            path: path.to_owned(),
            model: info.as_ref().and_then(BodyInfo::model).map(str::to_owned),
            request_id: rsp.request_id.map(|id| String::from_utf8_lossy(id).into_owned()),
            body_len: req.body.len(),
        });
        Some(InFlight(&state.in_flight))
    };

    let faults = match Faults::parse(req) {
        Ok(f) => f,
        Err(msg) => {
            let body = error_json(&msg, "invalid_request_error", None, Some("bad_standin_header"));
            return rsp.json(conn, StreamFault::None, 400, &body).await;
        }
    };
    if faults.hang == Phase::Headers {
        return rsp.hang(conn).await;
    }
    if faults.delay_ms > 0 {
        match conn.wait(deadline_after(faults.delay_ms)).await {
            Waited::Elapsed => {}
            Waited::Gone => {
                rsp.cancelled();
                return After::Close;
            }
            Waited::Shutdown => return After::Close,
        }
    }
    if faults.reset == Phase::Headers {
        return After::Reset;
    }
    if faults.malformed {
        if conn.write(MALFORMED).await.is_err() {
            rsp.cancelled();
        }
        return After::Close;
    }
    let sf = faults.stream_fault();
    if let Some(status) = faults.status {
        return rsp.json(conn, sf, status, &status_error(status)).await;
    }
    let loading = state.is_loading();
    if loading && path != "/health" {
        let body =
            error_json(&format!("model {} is still loading", state.model), "server_error", None, Some("model_loading"));
        return rsp.json(conn, sf, 503, &body).await;
    }
    if faults.echo {
        let body = echo_json(state, req, method, path, query);
        return rsp.json(conn, sf, 200, &body).await;
    }

    match path {
        "/health" => {
            if !is_get(method) {
                return rsp.method_not_allowed(conn, sf, "GET, HEAD").await;
            }
            if loading {
                rsp.json(conn, sf, 503, br#"{"status":"loading"}"#).await
            } else {
                rsp.json(conn, sf, 200, br#"{"status":"ok"}"#).await
            }
        }
        "/v1/models" => {
            if !is_get(method) {
                return rsp.method_not_allowed(conn, sf, "GET, HEAD").await;
            }
            rsp.json(conn, sf, 200, &state.models_body).await
        }
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" => {
            if method != "POST" {
                return rsp.method_not_allowed(conn, sf, "POST").await;
            }
            if let Err((status, body)) = check_model(state, info.as_ref()) {
                return rsp.json(conn, sf, status, &body).await;
            }
            let info = info.as_ref();
            let prompt_tokens = (req.body.len() as u64 / 4).max(1);
            match path {
                "/v1/embeddings" => {
                    let body = format!(
                        r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3]}}],"model":{},"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens}}}}}"#,
                        state.model_json
                    );
                    rsp.json(conn, sf, 200, body.as_bytes()).await
                }
                _ => {
                    let kind = if path == "/v1/chat/completions" { Kind::Chat } else { Kind::Text };
                    let gen = SseGen {
                        state,
                        kind,
                        id: state.next_id.fetch_add(1, Ordering::Relaxed),
                        created: unix_now(),
                        prompt_tokens,
                        include_usage: info.is_some_and(BodyInfo::include_usage),
                    };
                    if sf != StreamFault::None || info.is_some_and(BodyInfo::stream) {
                        rsp.sse(conn, &faults, &gen).await
                    } else {
                        let body = completion_json(&gen);
                        rsp.json(conn, sf, 200, body.as_bytes()).await
                    }
                }
            }
        }
        p if p.starts_with("/v1/models/") => {
            if !is_get(method) {
                return rsp.method_not_allowed(conn, sf, "GET, HEAD").await;
            }
            let id = &p["/v1/models/".len()..];
            if id == state.model {
                let body = to_json_vec(&model_object(&state.model));
                rsp.json(conn, sf, 200, &body).await
            } else {
                let body = error_json(
                    &format!("model {id} not served here"),
                    "invalid_request_error",
                    Some("model"),
                    Some("model_not_found"),
                );
                rsp.json(conn, sf, 404, &body).await
            }
        }
        _ => {
            let body = error_json(&format!("unknown path {path}"), "invalid_request_error", None, Some("unknown_url"));
            rsp.json(conn, sf, 404, &body).await
        }
    }
}

fn check_model(state: &State, info: Option<&BodyInfo>) -> Result<(), (u16, Vec<u8>)> {
    let Some(info) = info else {
        return Err((400, error_json("request body must be a JSON object", "invalid_request_error", None, None)));
    };
    match info.model.as_ref() {
        Some(Value::String(m)) if *m == state.model => Ok(()),
        Some(Value::String(m)) => Err((
            404,
            error_json(
                &format!("model {m} not served here"),
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            ),
        )),
        _ => Err((
            400,
            error_json("you must provide a model parameter (a string)", "invalid_request_error", Some("model"), None),
        )),
    }
}

fn completion_json(gen: &SseGen<'_>) -> String {
    let st = gen.state;
    let c = st.completion_tokens;
    let p = gen.prompt_tokens;
    let choice = match gen.kind {
        Kind::Chat => format!(
            r#"{{"index":0,"message":{{"role":"assistant","content":{}}},"logprobs":null,"finish_reason":"stop"}}"#,
            st.content_json
        ),
        Kind::Text => format!(r#"{{"index":0,"text":{},"logprobs":null,"finish_reason":"stop"}}"#, st.content_json),
    };
    let object = match gen.kind {
        Kind::Chat => "chat.completion",
        Kind::Text => "text_completion",
    };
    format!(
        r#"{{"id":"cmpl-{}","object":"{object}","created":{},"model":{},"choices":[{choice}],"usage":{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{}}}}}"#,
        gen.id,
        gen.created,
        st.model_json,
        p + c
    )
}

fn echo_json(state: &State, req: &Request, method: &str, path: &str, query: Option<&str>) -> Vec<u8> {
    let headers: Vec<Value> = req
        .headers()
        .map(|(n, v)| json!([String::from_utf8_lossy(n).to_ascii_lowercase(), String::from_utf8_lossy(v)]))
        .collect();
    to_json_vec(&json!({
        "model": state.model,
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body_len": req.body.len(),
        "body_fnv64": format!("{:016x}", fnv1a64(&req.body)),
    }))
}

async fn standin(state: &State, conn: &mut Conn, rsp: &Responder<'_>, method: &str, path: &str) -> After {
    let sf = StreamFault::None;
    match path {
        "/standin/stats" | "/standin/requests" if !is_get(method) => {
            rsp.method_not_allowed(conn, sf, "GET, HEAD").await
        }
        "/standin/stats" => {
            let body = to_json_vec(&json!({
                "requests": state.requests.load(Ordering::SeqCst),
                "cancelled": state.cancelled.load(Ordering::SeqCst),
                "in_flight": state.in_flight.load(Ordering::SeqCst),
                "connections": state.connections.load(Ordering::SeqCst),
            }));
            rsp.json(conn, sf, 200, &body).await
        }
        "/standin/requests" => {
            let items: Vec<Value> = state
                .recent
                .lock()
                .iter()
                .map(|r| {
                    json!({
                        "method": r.method,
                        "path": r.path,
                        "model": r.model,
                        "request_id": r.request_id,
                        "body_len": r.body_len,
                    })
                })
                .collect();
            rsp.json(conn, sf, 200, &to_json_vec(&Value::Array(items))).await
        }
        _ => {
            let body = error_json(&format!("unknown path {path}"), "invalid_request_error", None, Some("unknown_url"));
            rsp.json(conn, sf, 404, &body).await
        }
    }
}
