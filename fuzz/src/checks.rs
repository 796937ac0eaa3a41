//! The properties behind llmux's fuzz targets, one `check_*` function per
//! target. Each panics when llmux breaks a property, which libFuzzer
//! reports as a crash and `cargo test` as a failure.
//!
//! This file is compiled twice: into the `llmux-fuzz` crate (for
//! `cargo fuzz run`) and, through `#[path]`, into the main crate's
//! integration tests (tests/it/fuzz_corpus.rs), which replay `corpus/` on
//! stable. So it uses only crates the main crate depends on, plus
//! `httparse`, a dev-dependency there.
//!
//! - [`check_extract`]: `llmux::model::extract` agrees with serde_json.
//! - [`check_config`]: `Config::parse` never accepts an invalid config.
//! - [`check_request`]: raw bytes as one HTTP/1.1 connection to llmux's
//!   service, in memory, with a recording upstream behind it.
//! - [`check_rewrite`]: `upstream_model`'s splice changes the model's value
//!   and no other byte.
//! - [`check_multipart`]: `llmux::multipart` against `multer` (a
//!   dev-dependency there).
//!
//! # Bugs found
//!
//! Inputs that broke a property once are kept as `corpus/<target>/seed-fixed-*`
//! regression seeds (see fuzz/README.md).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use llmux::config::{Config, Format};
use llmux::state::Shared;
use parking_lot::Mutex;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::TcpListener;

/// The fuzz targets, for [`generated_cases`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `extract_model`.
    ExtractModel,
    /// `config`.
    Config,
    /// `request`.
    Request,
    /// `rewrite_model`.
    RewriteModel,
    /// `multipart`.
    Multipart,
}

// ---------------------------------------------------------------------------
// extract_model
// ---------------------------------------------------------------------------

/// `llmux::model::extract` against serde_json, both ways: where serde_json
/// parses `data` as an object with exactly one top-level `model` that is a
/// string, extract returns exactly that string; everywhere else (invalid
/// JSON, not an object, `model` missing, not a string or duplicated) it
/// returns an error.
pub fn check_extract(data: &[u8]) {
    let ours = llmux::model::extract(data);
    let reference = reference_model(data);
    match (&ours, &reference) {
        (Ok(got), Some(want)) if got == want => {}
        (Err(_), None) => {}
        // serde_json misjudges numbers at the edge of f64's range.
        (Ok(got), None) if reference_model_max_zeroed(data).as_ref() == Some(got) => {}
        (Err(_), Some(_)) if has_overflowing_number(data) => {}
        _ => panic!(
            "llmux::model::extract and serde_json disagree\n  body: {:?}\n  llmux: {ours:?}\n  serde_json: {reference:?}",
            lossy(data, 2000)
        ),
    }
    // The per-thread scratch must carry nothing from one scan to the next.
    let _ = llmux::model::extract(br#"{"model":"between"}"#);
    let again = llmux::model::with_model(data, str::to_owned);
    assert_eq!(again, ours, "a second scan of the same body differs: {:?}", lossy(data, 2000));
}

// ---------------------------------------------------------------------------
// rewrite_model
// ---------------------------------------------------------------------------

/// Names `upstream_model` may put in place of the client's: plain, with
/// JSON escapes needed, longer and shorter than most.
const UPSTREAM_NAMES: [&str; 4] =
    ["m", "org/Model-7B \"q\" \\ é\n\u{1}", "", "a-much-longer-upstream-model-name-than-the-client-sent"];

/// `upstream_model`'s rewrite of a body, differentially: for every body
/// llmux routes (one top-level string `model`), held in one to three parts
/// split where `data` says, the span the scan gives is the raw value
/// between its quotes (it decodes to the model), and the spliced body has
/// exactly the bytes outside the span unchanged, and parses (serde_json)
/// to the original JSON with only `model` changed.
pub fn check_rewrite(data: &[u8]) {
    let cut = |k: usize| data.len() * k / 3 + usize::from(data.first().copied().unwrap_or(0) % 3 == 0);
    let (a, b) = (cut(1).min(data.len()), cut(2).min(data.len()));
    let parts = [&data[..a], &data[a..b], &data[b..]];
    let Ok((name, start)) = llmux::model::with_model_at_in_parts(&parts, |name, at| (name.to_owned(), at)) else {
        return;
    };
    let span = llmux::model::value_span(&parts, start)
        .unwrap_or_else(|| panic!("no end to the value at {start} in {:?}", lossy(data, 2000)));
    assert!(
        start >= 1 && data[start - 1] == b'"' && data.get(span.end) == Some(&b'"'),
        "span {span:?} is not between quotes: {:?}",
        lossy(data, 2000)
    );
    let decoded: String = serde_json::from_slice(&data[start - 1..=span.end])
        .unwrap_or_else(|e| panic!("span {span:?} is not a JSON string ({e}): {:?}", lossy(data, 2000)));
    assert_eq!(decoded, name, "the span decodes to another name");
    let upstream = UPSTREAM_NAMES[data.len() % UPSTREAM_NAMES.len()];
    let quoted = serde_json::to_string(upstream).expect("a string");
    let replacement = &quoted.as_bytes()[1..quoted.len() - 1];
    let out = llmux::model::splice(&parts, span.clone(), replacement);
    assert_eq!(out.len(), data.len() - span.len() + replacement.len());
    assert_eq!(&out[..start], &data[..start], "bytes before the value changed");
    assert_eq!(&out[start..start + replacement.len()], replacement);
    assert_eq!(&out[start + replacement.len()..], &data[span.end..], "bytes after the value changed");
    // serde_json's verdict on the original (it may misjudge edge floats,
    // see check_extract): where it parses, the rewrite parses to the same
    // with only `model` changed.
    if let Ok(mut want) = serde_json::from_slice::<Value>(data) {
        want["model"] = Value::from(upstream);
        let got: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("the rewrite is not JSON ({e}): {:?}", lossy(&out, 2000)));
        assert_eq!(got, want, "the rewrite changed more than `model`: {:?}", lossy(&out, 2000));
    }
}

// ---------------------------------------------------------------------------
// multipart
// ---------------------------------------------------------------------------

/// `llmux::multipart` against `multer`, on a first line (a Content-Type,
/// or a bare boundary) and a body (the rest), the body held in one to
/// three parts split where `data` says:
///
/// - where multer reads the whole body without an error and finds exactly
///   one field named `model`, with value V, llmux's `model_field` returns
///   V's place; where llmux returns a place, multer agrees so (so llmux
///   accepts nothing multer refuses, and never picks another value);
/// - where llmux takes a boundary from the first line as a Content-Type,
///   multer's `parse_boundary` takes the same one.
pub fn check_multipart(data: &[u8]) {
    let (line, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let boundary: Vec<u8> = match llmux::multipart::form_data_boundary(line) {
        Some(Ok(boundary)) => {
            let text = std::str::from_utf8(line).expect("a Content-Type llmux accepts is ASCII");
            let theirs = multer::parse_boundary(text).unwrap_or_else(|e| {
                panic!("llmux took boundary {:?} from {text:?}; multer refused it: {e}", lossy(boundary, 100))
            });
            assert_eq!(theirs.as_bytes(), boundary, "different boundaries from {text:?}");
            boundary.to_vec()
        }
        _ if !line.is_empty() && line.len() <= llmux::multipart::MAX_BOUNDARY && std::str::from_utf8(line).is_ok() => {
            line.to_vec()
        }
        _ => b"b".to_vec(),
    };
    let (a, b) = (body.len() / 3, body.len() * 2 / 3 + usize::from(data.len() % 2 == 1));
    let (a, b) = (a.min(body.len()), b.min(body.len()));
    let parts = [&body[..a], &body[a..b], &body[b..]];
    let ours = llmux::multipart::model_field(&parts, &boundary);
    let theirs = multer_models(body, &boundary);
    match (&ours, &theirs) {
        (Ok(span), Ok(models)) if models.len() == 1 && body[span.clone()] == models[0][..] => {}
        (Err(_), Err(_)) => {}
        (Err(_), Ok(models)) if models.len() != 1 => {}
        _ => panic!(
            "llmux::multipart and multer disagree\n  boundary: {:?}\n  body: {:?}\n  llmux: {:?}\n  multer: {:?}",
            lossy(&boundary, 200),
            lossy(body, 4000),
            ours.as_ref().map(|span| lossy(&body[span.clone()], 200)),
            theirs.as_ref().map(|models| models.iter().map(|m| lossy(m, 200)).collect::<Vec<_>>()),
        ),
    }
}

/// The values of every field multer finds named `model` in `body` (read
/// whole, as one chunk), or its error.
fn multer_models(body: &[u8], boundary: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let boundary = String::from_utf8(boundary.to_vec()).map_err(|e| e.to_string())?;
    let stream = Full::new(Bytes::copy_from_slice(body)).into_data_stream();
    let runtime = tokio::runtime::Builder::new_current_thread().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let mut form = multer::Multipart::new(stream, boundary);
        let mut models = Vec::new();
        while let Some(field) = form.next_field().await.map_err(|e| e.to_string())? {
            let is_model = field.name() == Some("model");
            let value = field.bytes().await.map_err(|e| e.to_string())?;
            if is_model {
                models.push(value.to_vec());
            }
        }
        Ok(models)
    })
}

/// Large forms: a 6 MB upload with the model first and last, many small
/// fields, a long preamble, a header block of 100 KB.
fn generated_forms() -> Vec<(String, Vec<u8>)> {
    let head = b"multipart/form-data; boundary=----gen7MA4YWxk\n".to_vec();
    let part = |name: &str, value: &[u8]| {
        [
            format!("------gen7MA4YWxk\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            value,
            b"\r\n",
        ]
        .concat()
    };
    let end = b"------gen7MA4YWxk--\r\n".to_vec();
    let noise: Vec<u8> = (0..6u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let many: Vec<u8> = (0..20_000).flat_map(|i| part(&format!("f{i}"), b"v")).collect();
    let long_header = [
        b"------gen7MA4YWxk\r\nX-Long: ".as_slice(),
        &vec![b'h'; 100_000],
        b"\r\nContent-Disposition: form-data; name=model\r\n\r\nm\r\n",
    ]
    .concat();
    let cases = [
        ("6mb-model-last", [part("file", &noise), part("model", b"whisper-1"), end.clone()].concat()),
        ("6mb-model-first", [part("model", b"whisper-1"), part("file", &noise), end.clone()].concat()),
        ("20k-fields-model-last", [many.clone(), part("model", b"m"), end.clone()].concat()),
        ("20k-fields-no-model", [many, end.clone()].concat()),
        ("1mb-preamble", [vec![b'-'; 1 << 20], part("model", b"m"), end.clone()].concat()),
        ("100kb-header", [long_header, end].concat()),
    ];
    cases.into_iter().map(|(name, body)| (name.to_owned(), [head.as_slice(), &body].concat())).collect()
}

/// The model serde_json finds under llmux's rules, or `None` if it finds
/// none (or more than one).
fn reference_model(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    // serde_json's Value keeps only the last duplicate: count the raw keys.
    let mut de = serde_json::Deserializer::from_slice(body);
    let count = de.deserialize_map(CountModelKeys).ok()?;
    if count != 1 {
        return None;
    }
    object.get("model")?.as_str().map(str::to_owned)
}

/// serde_json's float parser (fast, not correctly rounded without its
/// `float_roundtrip` feature) misjudges numbers at the edge of f64's range:
/// it rejects `1.7976931348623158e308`, which rounds to f64::MAX. The
/// model serde_json finds in `body` with every such number (a valid JSON
/// number that Rust's correctly rounded parser reads as ±f64::MAX) made 0.
fn reference_model_max_zeroed(body: &[u8]) -> Option<String> {
    let mut zeroed = Vec::with_capacity(body.len());
    let mut at = 0;
    for (from, to) in numbers(body) {
        let text = std::str::from_utf8(&body[from..to]).unwrap_or("");
        if is_json_number(text) && text.parse::<f64>().is_ok_and(|n| n.abs() == f64::MAX) {
            zeroed.extend_from_slice(&body[at..from]);
            zeroed.push(b'0');
            at = to;
        }
    }
    if at == 0 {
        return None;
    }
    zeroed.extend_from_slice(&body[at..]);
    reference_model(&zeroed)
}

/// True if `body` has a valid JSON number that overflows f64 when rounded
/// correctly, which serde_json may round down to f64::MAX and accept.
fn has_overflowing_number(body: &[u8]) -> bool {
    numbers(body).into_iter().any(|(from, to)| {
        let text = std::str::from_utf8(&body[from..to]).unwrap_or("");
        is_json_number(text) && text.parse::<f64>().is_ok_and(f64::is_infinite)
    })
}

/// RFC 8259's number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let from = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - from
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        i += usize::from(matches!(b.get(i), Some(b'+' | b'-')));
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Where the numbers outside strings are in `body` (a JSON-ish text):
/// `-?digits(.digits)?([eE][+-]?digits)?`.
fn numbers(body: &[u8]) -> Vec<(usize, usize)> {
    let digits = |i: &mut usize| {
        while *i < body.len() && body[*i].is_ascii_digit() {
            *i += 1;
        }
    };
    let mut found = Vec::new();
    let mut i = 0;
    let mut in_string = false;
    while i < body.len() {
        let b = body[i];
        match (in_string, b) {
            (true, b'\\') => i += 2,
            (true, b'"') | (false, b'"') => {
                in_string = !in_string;
                i += 1;
            }
            (false, b'-' | b'0'..=b'9') => {
                let start = i;
                i += usize::from(b == b'-');
                digits(&mut i);
                if body.get(i) == Some(&b'.') {
                    i += 1;
                    digits(&mut i);
                }
                if matches!(body.get(i), Some(b'e' | b'E')) {
                    i += 1;
                    i += usize::from(matches!(body.get(i), Some(b'+' | b'-')));
                    digits(&mut i);
                }
                found.push((start, i.min(body.len())));
            }
            _ => i += 1,
        }
    }
    found
}

/// Counts the top-level keys named `model` (after unescaping).
struct CountModelKeys;

impl<'de> Visitor<'de> for CountModelKeys {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(key) = map.next_key::<String>()? {
            n += usize::from(key == "model");
            map.next_value::<IgnoredAny>()?;
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// config
// ---------------------------------------------------------------------------

/// `data` as UTF-8 text, parsed as YAML and as JSON: never a panic, and
/// every config accepted satisfies what llmux relies on.
pub fn check_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for format in [Format::Yaml, Format::Json] {
        let base_dir = PathBuf::from("/fuzz/base");
        if let Ok(config) = Config::parse(text, format, base_dir.clone()) {
            if let Some(why) = config_problems(&config, &base_dir).first() {
                let text = lossy(data, 2000);
                panic!("Config::parse ({format:?}) accepted an invalid config: {why}\n  text: {text:?}");
            }
        }
    }
}

/// Time llmux may run before a deadline computed from a configured
/// duration is taken: a config whose durations overflow `Instant` within
/// this uptime makes llmux panic at run time.
const UPTIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Everything wrong with an accepted config.
fn config_problems(c: &Config, base_dir: &Path) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    let mut new = |why: String| problems.push(why);
    if c.models.is_empty() {
        new("no models".into());
    }
    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    let mut durations: Vec<(String, Option<Duration>)> = Vec::new();
    for m in &c.models {
        if m.name.trim().is_empty() || m.name.chars().any(char::is_control) {
            new(format!("model name {:?} is empty or has control characters", m.name));
        }
        if !names.insert(m.name.as_str()) {
            new(format!("model name {:?} twice", m.name));
        }
        if m.backend.port() == 0 {
            new(format!("model {:?} on port 0", m.name));
        }
        if !ports.insert(m.backend.endpoint()) {
            new(format!("{:?} used twice", m.backend.endpoint()));
        }
        let b = &m.backend;
        if hyper::header::HeaderValue::from_str(b.authority()).is_err() {
            new(format!("model {:?}: Host {:?} is not a header value", m.name, b.authority()));
        }
        if b.base_path().ends_with('/') || !(b.base_path().is_empty() || b.base_path().starts_with('/')) {
            new(format!("model {:?}: base path {:?}", m.name, b.base_path()));
        }
        if llmux::backend::Backend::from_url(&b.url()).as_ref() != Ok(b) {
            new(format!("model {:?}: its URL {} does not read back as the same backend", m.name, b.url()));
        }
        for (kind, hook) in [("wake", &m.wake), ("sleep", &m.sleep), ("alive", &m.alive)] {
            if hook.script.trim().is_empty() {
                new(format!("model {:?}: empty {kind} hook", m.name));
            }
            if hook.timeout.is_zero() {
                new(format!("model {:?}: {kind} timeout is 0", m.name));
            }
            durations.push((format!("models.{}.{kind} timeout", m.name), Some(hook.timeout)));
        }
    }
    if c.max_body_bytes < 1 {
        new("max_body_bytes is 0".into());
    }
    if c.base_dir != base_dir {
        new(format!("base_dir changed to {:?}", c.base_dir));
    }
    let p = &c.policy;
    durations.extend([
        ("policy.request_timeout".to_owned(), p.request_timeout),
        ("policy.drain_timeout".to_owned(), p.drain_timeout),
        ("policy.min_active".to_owned(), Some(p.min_active)),
        ("upstream_idle_timeout".to_owned(), Some(c.upstream_idle_timeout)),
        ("limits.header_read_timeout".to_owned(), Some(c.limits.header_read_timeout)),
        ("limits.body_read_timeout".to_owned(), Some(c.limits.body_read_timeout)),
        ("limits.upstream_connect_timeout".to_owned(), Some(c.limits.upstream_connect_timeout)),
        ("limits.upstream_first_byte_timeout".to_owned(), c.limits.upstream_first_byte_timeout),
        // The server waits for the switch task grace + 5 s at shutdown.
        (
            "shutdown_grace + 5 s".to_owned(),
            Some(c.shutdown_grace.checked_add(Duration::from_secs(5)).unwrap_or(Duration::MAX)),
        ),
    ]);
    let l = &c.limits;
    for (what, n) in [
        ("limits.max_header_bytes", l.max_header_bytes),
        ("limits.max_headers", l.max_headers),
        ("limits.max_connections", l.max_connections),
        ("limits.h2_max_pending_reset_streams", l.h2_max_pending_reset_streams),
        ("limits.max_queued_requests", l.max_queued_requests),
    ] {
        if n == 0 {
            problems.push(format!("{what} is 0"));
        }
    }
    if l.h2_max_concurrent_streams == 0 || l.h2_max_header_list_bytes == 0 || l.max_queued_body_bytes == 0 {
        problems.push("an h2 or queue limit is 0".into());
    }
    if l.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
        let why = format!("limits.max_connections {} is over tokio's Semaphore::MAX_PERMITS", l.max_connections);
        problems.push(why);
    }
    for (what, d) in durations {
        if let Some(why) = d.and_then(|d| deadline_overflows(&what, d)) {
            problems.push(why);
        }
    }
    problems
}

/// Why `now + d` overflows after [`UPTIME`], if it does.
fn deadline_overflows(what: &str, d: Duration) -> Option<String> {
    let later = Instant::now().checked_add(UPTIME).expect("the check's own margin fits");
    match later.checked_add(d) {
        Some(_) => None,
        None => Some(format!("{what} of {} s overflows a deadline (`Instant::now() + d` panics)", d.as_secs())),
    }
}

// ---------------------------------------------------------------------------
// request
// ---------------------------------------------------------------------------

/// The largest body the request target's llmux accepts; small, so that the
/// fuzzer reaches 413 with small inputs.
pub const REQUEST_MAX_BODY: usize = 64 * 1024;

/// What the in-process upstream answers to every request.
const UPSTREAM_BODY: &[u8] = br#"{"id":"chatcmpl-fuzz","object":"chat.completion","choices":[]}"#;
/// A header only the upstream's responses carry.
const UPSTREAM_MARK: &str = "x-fuzz-upstream";
/// HTTP/2 prior knowledge: llmux serves h2c when a connection starts so.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long llmux may take to answer everything it can or to wait for
/// more input, and then to close after the client's end of input.
const PATIENCE: Duration = Duration::from_secs(5);
/// Scheduler rounds without any activity before the connection counts as
/// waiting for input.
const QUIET_ROUNDS: u32 = 4;

/// `data` as the bytes a client sends on one HTTP/1.1 connection to
/// llmux's service (`llmux::server::serve_io` over an in-memory pipe),
/// whose one model `m` is served by an in-process upstream that records
/// what it receives. Checks:
///
/// - nothing panics, in any task;
/// - llmux answers or waits for more input within [`PATIENCE`], and
///   closes within [`PATIENCE`] of the client's end of input;
/// - the output is a sequence of well-formed HTTP/1.x responses (framed by
///   Content-Length, chunked coding or the close), each carrying exactly
///   one `x-request-id` (hyper's own answers to unparsable requests
///   aside), llmux's errors in OpenAI's shape;
/// - the upstream receives exactly the requests whose responses came from
///   it (counted per `x-request-id`): no request llmux answered with an
///   error was forwarded, and every forwarded one got the upstream's
///   answer; each carried a body whose model is `m`.
pub fn check_request(data: &[u8]) {
    let h = harness();
    let _one_at_a_time = h.lock.lock();
    let panics_before = panics_here();
    let generation = h.generation.fetch_add(1, SeqCst);
    let exchange = h.runtime.block_on(exchange(h, data, generation));
    let panics = panics_here() - panics_before;
    assert_eq!(panics, 0, "a task panicked while llmux served {:?}", lossy(data, 4000));
    let seen: Vec<Seen> =
        std::mem::take(&mut *h.seen.lock()).into_iter().filter(|s| s.generation == generation).collect();
    if std::env::var_os("LLMUX_FUZZ_VERBOSE").is_some() {
        eprintln!(
            "request: settled {}, upstream saw {:?}\n  input: {:?}\n  output: {:?}",
            exchange.settled,
            seen.iter().map(|s| format!("{} {}", s.method, s.target)).collect::<Vec<_>>(),
            lossy(data, 300),
            lossy(&exchange.output, 3000)
        );
    }
    if let Err(why) = verify_exchange(data, &exchange, &seen) {
        panic!(
            "{why}\n  input: {:?}\n  output: {:?}\n  upstream saw: {seen:#?}",
            lossy(data, 4000),
            lossy(&exchange.output, 4000)
        );
    }
    // What llmux forwards is what serde_json reads as a request for `m`.
    for s in &seen {
        let reads_m = |model: Option<String>| model.as_deref() == Some("m");
        if !reads_m(reference_model(&s.body)) && !reads_m(reference_model_max_zeroed(&s.body)) {
            let body = lossy(&s.body, 2000);
            panic!(
                "llmux forwarded a body serde_json does not read as model `m`: {body:?}\n  input: {:?}",
                lossy(data, 4000)
            );
        }
    }
}

thread_local! {
    /// Panics on this thread (tokio catches those of tasks). The harness's
    /// runtime has one thread, the one in `block_on`, so every task of an
    /// exchange panics here; panics of other threads (other tests) do not
    /// count.
    static PANICS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn panics_here() -> usize {
    PANICS.with(std::cell::Cell::get)
}

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.with(|n| n.set(n.get() + 1));
        previous(info);
    }));
}

/// One llmux, its upstream and a runtime, for the whole process.
struct Harness {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    seen: Arc<Mutex<Vec<Seen>>>,
    upstream_busy: Arc<AtomicUsize>,
    generation: AtomicU32,
    lock: Mutex<()>,
}

/// A request as the upstream received it.
#[derive(Debug)]
struct Seen {
    /// Which input's connection sent it (from the last `X-Forwarded-For`).
    generation: u32,
    method: String,
    target: String,
    request_ids: Vec<Vec<u8>>,
    hop_by_hop: Vec<String>,
    body: Bytes,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        count_panics();
        // One thread: the connection, llmux's tasks, the upstream and the
        // client take turns, so "nothing can run" is something we can see.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let upstream_busy = Arc::new(AtomicUsize::new(0));
        let shared = runtime.block_on(start(Arc::clone(&seen), Arc::clone(&upstream_busy)));
        Harness { runtime, shared, seen, upstream_busy, generation: AtomicU32::new(1), lock: Mutex::new(()) }
    })
}

async fn start(seen: Arc<Mutex<Vec<Seen>>>, busy: Arc<AtomicUsize>) -> Arc<Shared> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the upstream");
    let port = listener.local_addr().expect("upstream address").port();
    tokio::spawn(upstream(listener, seen, busy));
    let yaml = format!(
        "models:\n  m:\n    port: {port}\n    wake: 'true'\n    sleep: 'true'\n    alive: 'true'\n\
         policy:\n  request_timeout_secs: 2\n\
         max_body_bytes: {REQUEST_MAX_BODY}\nshutdown_grace_secs: 1\nupstream_idle_timeout_secs: 30\n"
    );
    let config = Config::parse(&yaml, Format::Yaml, std::env::temp_dir()).expect("the harness config");
    let shared = Arc::new(Shared::new(config, None));
    tokio::spawn(llmux::switcher::run(Arc::clone(&shared), Box::new(llmux::machine::policy::Fifo)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while shared.active_model() != Some(0) {
        assert!(Instant::now() < deadline, "model `m` was not adopted (its alive hook is `true`)");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shared
}

/// The upstream: answers every request with 200 and [`UPSTREAM_BODY`],
/// recording it first.
async fn upstream(listener: TcpListener, seen: Arc<Mutex<Vec<Seen>>>, busy: Arc<AtomicUsize>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let (seen, busy) = (Arc::clone(&seen), Arc::clone(&busy));
        let service = service_fn(move |req: Request<Incoming>| {
            let (seen, busy) = (Arc::clone(&seen), Arc::clone(&busy));
            async move {
                busy.fetch_add(1, SeqCst);
                let (head, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let generation = head
                    .headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .next_back()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|ip| ip.trim().parse::<Ipv4Addr>().ok())
                    .map_or(0, generation_of);
                let hop_by_hop = head
                    .headers
                    .keys()
                    .map(|name| name.as_str())
                    .filter(|name| {
                        ["expect", "upgrade", "transfer-encoding", "te", "trailer", "keep-alive", "connection"]
                            .contains(name)
                            || name.starts_with("proxy-")
                    })
                    .map(str::to_owned)
                    .collect();
                seen.lock().push(Seen {
                    generation,
                    method: head.method.to_string(),
                    target: head.uri.to_string(),
                    request_ids: head.headers.get_all("x-request-id").iter().map(|v| v.as_bytes().to_vec()).collect(),
                    hop_by_hop,
                    body,
                });
                busy.fetch_sub(1, SeqCst);
                let response = Response::builder()
                    .header("content-type", "application/json")
                    .header(UPSTREAM_MARK, "1")
                    .body(Full::new(Bytes::from_static(UPSTREAM_BODY)))
                    .expect("a static response");
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        tokio::spawn(async move {
            // Roomier than llmux, so that whatever llmux forwards reaches
            // the service (llmux adds headers of its own).
            let _ = hyper::server::conn::http1::Builder::new()
                .max_headers(10_000)
                .max_buf_size(4 << 20)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The client address of input `generation`: 127.x.y.z, unique per input,
/// so the upstream can tell a late request of an earlier input.
fn client_ip(generation: u32) -> Ipv4Addr {
    let [_, a, b, c] = generation.to_be_bytes();
    Ipv4Addr::new(127, a, b, c)
}

fn generation_of(ip: Ipv4Addr) -> u32 {
    let [_, a, b, c] = ip.octets();
    u32::from_be_bytes([0, a, b, c])
}

/// What happened on one connection.
struct Exchange {
    /// Everything llmux wrote.
    output: Vec<u8>,
    /// llmux answered all it could and waited for more input (rather than
    /// closing the connection itself) before the client's end of input.
    settled: bool,
}

/// The server side of the pipe, watched: how far hyper has read and
/// whether it is waiting for input.
struct Watched {
    inner: DuplexStream,
    state: Arc<IoState>,
}

#[derive(Default)]
struct IoState {
    /// Input bytes hyper has read.
    consumed: AtomicUsize,
    /// The last read found no input.
    read_blocked: AtomicBool,
    /// Calls into the stream, of any kind.
    ops: AtomicU64,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.state.ops.fetch_add(1, SeqCst);
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &poll {
            Poll::Ready(_) => {
                this.state.consumed.fetch_add(buf.filled().len() - before, SeqCst);
                this.state.read_blocked.store(false, SeqCst);
            }
            Poll::Pending => this.state.read_blocked.store(true, SeqCst),
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.state.ops.fetch_add(1, SeqCst);
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.state.ops.fetch_add(1, SeqCst);
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.state.ops.fetch_add(1, SeqCst);
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.state.ops.fetch_add(1, SeqCst);
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// One client step: what a non-blocking write and read did.
enum Step {
    /// Bytes moved.
    Progress,
    /// Nothing could move.
    Idle,
    /// llmux closed the connection.
    Closed,
}

/// Sends `data` and reads what llmux answers until llmux either closes the
/// connection or has answered everything it can and waits for more input;
/// then ends the client's input (half-close) and reads to the end.
///
/// The client must not half-close earlier: hyper (rightly, for a proxy
/// that must notice clients that go away) treats an end of input while a
/// request is being served as a disconnect and drops that request's
/// response. Whether llmux is waiting for input is seen on the one-thread
/// runtime: hyper has read every byte and its last read found nothing, no
/// request is admitted or at the upstream, and nothing touched the stream
/// for a few scheduler rounds.
async fn exchange(h: &Harness, data: &[u8], generation: u32) -> Exchange {
    let (mut client, server) = tokio::io::duplex(256 * 1024);
    let state = Arc::new(IoState::default());
    let server = Watched { inner: server, state: Arc::clone(&state) };
    let addr = SocketAddr::new(client_ip(generation).into(), 1);
    let conn = tokio::spawn(llmux::server::serve_io(Arc::clone(&h.shared), server, addr));

    let mut output = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = 0;
    let mut write_failed = false;
    let mut quiet = 0;
    let mut last_ops = u64::MAX;
    let started = Instant::now();
    let settled = loop {
        let step = poll_fn(|cx| {
            Poll::Ready(client_step(cx, &mut client, data, &mut written, &mut write_failed, &mut output, &mut buf))
        })
        .await;
        match step {
            Step::Closed => break false,
            Step::Progress => quiet = 0,
            Step::Idle => {
                let ops = state.ops.load(SeqCst);
                let waiting = (written == data.len() || write_failed)
                    && state.consumed.load(SeqCst) == written
                    && state.read_blocked.load(SeqCst)
                    && in_flight(&h.shared) == 0
                    && h.upstream_busy.load(SeqCst) == 0
                    && ops == last_ops;
                last_ops = ops;
                quiet = if waiting { quiet + 1 } else { 0 };
                if quiet >= QUIET_ROUNDS {
                    break true;
                }
            }
        }
        assert!(
            started.elapsed() < PATIENCE,
            "llmux neither answered nor waited for more input within {PATIENCE:?}: {:?}",
            lossy(data, 4000)
        );
        tokio::task::yield_now().await;
    };

    // End of input; llmux answers what it still can and closes.
    let finish = async {
        let _ = client.shutdown().await;
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut output).await;
        conn.await
    };
    match tokio::time::timeout(PATIENCE, finish).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("the connection task failed: {e}"),
        Err(_) => panic!(
            "llmux kept the connection open {PATIENCE:?} after the client's end of input: {:?}",
            lossy(data, 4000)
        ),
    }
    Exchange { output, settled }
}

fn client_step(
    cx: &mut Context<'_>,
    client: &mut DuplexStream,
    data: &[u8],
    written: &mut usize,
    write_failed: &mut bool,
    output: &mut Vec<u8>,
    buf: &mut [u8],
) -> Step {
    let mut step = Step::Idle;
    if *written < data.len() && !*write_failed {
        match Pin::new(&mut *client).poll_write(cx, &data[*written..]) {
            Poll::Ready(Ok(n)) => {
                *written += n;
                step = Step::Progress;
            }
            // llmux closed the connection; the read below sees it.
            Poll::Ready(Err(_)) => *write_failed = true,
            Poll::Pending => {}
        }
    }
    let mut read = ReadBuf::new(buf);
    match Pin::new(&mut *client).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) if read.filled().is_empty() => return Step::Closed,
        Poll::Ready(Ok(())) => {
            output.extend_from_slice(read.filled());
            step = Step::Progress;
        }
        Poll::Ready(Err(_)) => return Step::Closed,
        Poll::Pending => {}
    }
    step
}

fn in_flight(shared: &Shared) -> usize {
    shared.routing.load().active().map_or(0, |a| a.in_flight())
}

/// One response read off the output.
#[derive(Debug)]
struct Parsed {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// No body although the head announced one: the answer to a HEAD.
    bodiless: bool,
}

impl Parsed {
    fn all(&self, name: &str) -> impl Iterator<Item = &[u8]> + '_ {
        let name = name.to_owned();
        self.headers.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v.as_slice())
    }

    fn one(&self, name: &str) -> Option<&[u8]> {
        self.all(name).next()
    }
}

fn verify_exchange(input: &[u8], exchange: &Exchange, seen: &[Seen]) -> Result<(), String> {
    for s in seen {
        if s.request_ids.len() != 1 {
            return Err(format!(
                "the upstream got {} x-request-id headers on {} {}",
                s.request_ids.len(),
                s.method,
                s.target
            ));
        }
        if !s.hop_by_hop.is_empty() {
            return Err(format!("the upstream got hop-by-hop headers {:?} on {} {}", s.hop_by_hop, s.method, s.target));
        }
        let model = llmux::model::extract(&s.body);
        if model.as_deref() != Ok("m") {
            return Err(format!("the upstream got a body whose model is {model:?}: {:?}", lossy(&s.body, 400)));
        }
    }
    if input.starts_with(H2_PREFACE) {
        // h2c: the answer is HTTP/2 frames, not checked here.
        return Ok(());
    }
    let responses = parse_responses(&exchange.output, input)?;
    let closing = |r: &Parsed| {
        r.all("connection").any(|v| v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")))
    };
    if let Some(i) = responses.iter().position(closing).filter(|&i| i + 1 < responses.len()) {
        return Err(format!("response {i} says `Connection: close` but {} more follow", responses.len() - i - 1));
    }
    let mut from_upstream: HashMap<&[u8], usize> = HashMap::new();
    for (i, r) in responses.iter().enumerate() {
        check_response(r).map_err(|why| format!("response {i} ({} ...): {why}", r.status))?;
        if r.one(UPSTREAM_MARK).is_some() {
            if let Some(id) = r.one("x-request-id") {
                *from_upstream.entry(id).or_default() += 1;
            }
        }
    }
    let mut forwarded: HashMap<&[u8], usize> = HashMap::new();
    for s in seen {
        *forwarded.entry(&s.request_ids[0]).or_default() += 1;
    }
    for (id, &n) in &forwarded {
        let answered = from_upstream.get(id).copied().unwrap_or(0);
        // An unsettled exchange (llmux closed first) may have cut a
        // forwarded request's answer; otherwise each one is in the output.
        if n > answered && exchange.settled {
            return Err(format!(
                "the upstream got {n} request(s) with x-request-id {:?} but the client saw {answered} upstream answer(s) \
                 with it (an error answered for a forwarded request?)",
                lossy(id, 200)
            ));
        }
    }
    for (id, &n) in &from_upstream {
        let got = forwarded.get(id).copied().unwrap_or(0);
        if n > got {
            return Err(format!(
                "{n} upstream answer(s) with x-request-id {:?} but the upstream recorded {got} such request(s)",
                lossy(id, 200)
            ));
        }
    }
    Ok(())
}

/// Walks `output` as consecutive HTTP/1.x responses.
fn parse_responses(output: &[u8], input: &[u8]) -> Result<Vec<Parsed>, String> {
    let mut responses = Vec::new();
    let mut at = 0;
    let input_has_head = input.windows(5).any(|w| w.eq_ignore_ascii_case(b"HEAD "));
    while at < output.len() {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&output[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Err(format!("response {} ends inside its head", responses.len())),
            Err(e) => return Err(format!("response {} has a malformed head: {e}", responses.len())),
        };
        let status = response.code.unwrap_or(0);
        if response.version != Some(1) && response.version != Some(0) {
            return Err(format!("response {} is not HTTP/1.x", responses.len()));
        }
        if !(100..=599).contains(&status) {
            return Err(format!("response {} has status {status}", responses.len()));
        }
        let headers: Vec<(String, Vec<u8>)> =
            response.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
        at += head_len;
        let rest = &output[at..];
        let lengths: Vec<&[u8]> =
            headers.iter().filter(|(n, _)| n == "content-length").map(|(_, v)| v.as_slice()).collect();
        let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"));
        if chunked && !lengths.is_empty() {
            return Err(format!("response {} has both Content-Length and chunked coding", responses.len()));
        }
        let length = match lengths.as_slice() {
            [] => None,
            [first, others @ ..] => {
                if others.iter().any(|o| o != first) {
                    return Err(format!("response {} has conflicting Content-Length headers", responses.len()));
                }
                let text = std::str::from_utf8(first).unwrap_or("");
                Some(
                    text.parse::<usize>()
                        .map_err(|_| format!("response {} has Content-Length {text:?}", responses.len()))?,
                )
            }
        };
        let no_body = (100..200).contains(&status) || status == 204 || status == 304;
        // A HEAD's answer announces a body it does not carry. Every body
        // here is JSON, so one that starts like a status line is not one.
        let announces = chunked || length.is_some_and(|n| n > 0);
        let bodiless = !no_body && announces && (rest.starts_with(b"HTTP/") || (rest.is_empty() && input_has_head));
        let body = if no_body || bodiless {
            Vec::new()
        } else if chunked {
            let (body, used) = dechunk(rest).map_err(|why| format!("response {}: {why}", responses.len()))?;
            at += used;
            body
        } else if let Some(n) = length {
            if rest.len() < n {
                return Err(format!(
                    "response {} announces {n} body bytes but the connection ends after {}",
                    responses.len(),
                    rest.len()
                ));
            }
            at += n;
            rest[..n].to_vec()
        } else {
            // Delimited by the close: the last response.
            at = output.len();
            rest.to_vec()
        };
        responses.push(Parsed { status, headers, body, bodiless });
    }
    Ok(responses)
}

/// Decodes a chunked body at the start of `rest`; returns it and the bytes
/// its coding took.
fn dechunk(rest: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (start, size) = match httparse::parse_chunk_size(&rest[at..]) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Err("the chunked body is cut inside a chunk size".into()),
            Err(_) => return Err("a malformed chunk size".into()),
        };
        at += start;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let line_end = find_crlf(&rest[at..]).ok_or("the chunked body is cut in its trailers")?;
                at += line_end + 2;
                if line_end == 0 {
                    return Ok((body, at));
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| "a chunk larger than memory")?;
        let end =
            at.checked_add(size).filter(|&e| e + 2 <= rest.len()).ok_or("the chunked body is cut inside a chunk")?;
        body.extend_from_slice(&rest[at..end]);
        if &rest[end..end + 2] != b"\r\n" {
            return Err("a chunk is not followed by CRLF".into());
        }
        at = end + 2;
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

fn check_response(r: &Parsed) -> Result<(), String> {
    if (100..200).contains(&r.status) {
        // Only `100 Continue` (llmux never upgrades a connection).
        return if r.status == 100 { Ok(()) } else { Err("an interim response other than 100".into()) };
    }
    let ids: Vec<&[u8]> = r.all("x-request-id").collect();
    match ids.len() {
        1 if !ids[0].is_empty() => {}
        // hyper's own answer to a request it could not parse never reaches
        // llmux's service: an empty error.
        0 if r.status >= 400 && r.body.is_empty() => return Ok(()),
        n => return Err(format!("{n} x-request-id headers ({ids:?})")),
    }
    let json = |what: &str| -> Result<Option<Value>, String> {
        if r.bodiless {
            return Ok(None);
        }
        if r.one("content-type") != Some(b"application/json".as_slice()) {
            return Err(format!("{what} without Content-Type: application/json"));
        }
        serde_json::from_slice(&r.body)
            .map(Some)
            .map_err(|e| format!("{what} whose body is not JSON ({e}): {:?}", lossy(&r.body, 400)))
    };
    if r.one(UPSTREAM_MARK).is_some() {
        if r.status != 200 || (!r.bodiless && r.body != UPSTREAM_BODY) {
            return Err(format!("the upstream's answer was altered: {:?}", lossy(&r.body, 400)));
        }
        return Ok(());
    }
    if r.status < 400 {
        // /health or /v1/models, answered by llmux.
        return json("a local answer").map(drop);
    }
    let Some(e) = json("an llmux error")? else { return Ok(()) };
    let kind = if r.status < 500 { "invalid_request_error" } else { "server_error" };
    let error = &e["error"];
    if error["message"].as_str().is_none_or(|m| m.is_empty())
        || error["type"] != kind
        || !error["code"].is_string()
        || error.get("param").is_none()
    {
        return Err(format!("an error not in OpenAI's shape: {e}"));
    }
    if r.status == 503 && r.one("retry-after").is_none() {
        return Err("503 without Retry-After".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Generated cases: too large to commit
// ---------------------------------------------------------------------------

/// Cases generated at test time, for inputs too large to keep in the
/// corpus: (name, bytes).
pub fn generated_cases(target: Target) -> Vec<(String, Vec<u8>)> {
    match target {
        Target::ExtractModel => generated_bodies(),
        Target::Config => generated_configs(),
        Target::Request => generated_requests(),
        Target::RewriteModel => generated_bodies(),
        Target::Multipart => generated_forms(),
    }
}

fn generated_bodies() -> Vec<(String, Vec<u8>)> {
    let prompt = "Summarize the following text. ".repeat(110_000); // 3.3 MB
    let escaped = "caf\\u00e9 \\\"quoted\\\" \\\\ \\n\\t \\ud83d\\ude00 日本語 ".repeat(60_000);
    let deep = |levels: usize| format!("{{\"model\":\"m\",\"x\":{}1{}}}", "[".repeat(levels), "]".repeat(levels));
    let deep_objects = |levels: usize| format!("{}\"model\":\"m\"{}", "{\"a\":".repeat(levels), "}".repeat(levels));
    let many_keys: String = (0..100_000).map(|i| format!("\"k{i}\":{i},")).collect();
    let mut cases = vec![
        (
            "chat-3mb-prompt-model-last",
            format!(r#"{{"messages":[{{"role":"user","content":"{prompt}"}}],"model":"gpt-4o"}}"#),
        ),
        (
            "chat-3mb-prompt-model-first",
            format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{prompt}"}}]}}"#),
        ),
        ("escapes-3mb", format!(r#"{{"messages":[{{"role":"user","content":"{escaped}"}}],"model":"m\u00e9"}}"#)),
        (
            "duplicate-model-3mb-apart",
            format!(r#"{{"model":"a","messages":[{{"role":"user","content":"{prompt}"}}],"model":"b"}}"#),
        ),
        ("nested-model-3mb", format!(r#"{{"messages":[{{"model":"inner","content":"{prompt}"}}]}}"#)),
        ("100k-keys-model-last", format!("{{{many_keys}\"model\":\"m\"}}")),
        ("100k-keys-no-model", format!("{{{many_keys}\"x\":0}}")),
        (
            "embeddings-100k-token-array",
            format!(r#"{{"input":[{}],"model":"text-embedding-3-small"}}"#, vec!["1234"; 100_000].join(",")),
        ),
        ("deep-100000", deep(100_000)),
        ("deep-objects-100000", deep_objects(100_000)),
    ];
    for levels in [125, 126, 127, 128] {
        cases.push(("deep-arrays", deep(levels)));
        cases.push(("deep-objects", deep_objects(levels)));
    }
    cases.into_iter().map(|(name, body)| (name.to_owned(), body.into_bytes())).collect()
}

fn generated_configs() -> Vec<(String, Vec<u8>)> {
    let model = |i: usize| format!("  model-{i}:\n    port: {}\n    wake: w\n    sleep: s\n    alive: a\n", 1000 + i);
    let many: String = (0..2000).map(model).collect();
    let script = "echo waking; ".repeat(100_000);
    vec![
        ("2000-models".into(), format!("models:\n{many}").into_bytes()),
        (
            "2000-models-one-port-twice".into(),
            format!("models:\n{many}{}", model(1999).replace("model-1999", "again")).into_bytes(),
        ),
        (
            "1mb-hook".into(),
            format!("models:\n  a:\n    port: 1\n    wake: '{script}'\n    sleep: s\n    alive: a\n").into_bytes(),
        ),
    ]
}

fn generated_requests() -> Vec<(String, Vec<u8>)> {
    let post = |body: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: l\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let padded = |total: usize| {
        let frame = r#"{"model":"m","messages":[{"role":"user","content":""}]}"#;
        let fill = "x".repeat(total - frame.len());
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{fill}"}}]}}"#)
    };
    let chunked_over: String = {
        let body = padded(REQUEST_MAX_BODY + 1);
        let chunks: String = body
            .as_bytes()
            .chunks(1000)
            .map(|c| format!("{:x}\r\n{}\r\n", c.len(), String::from_utf8_lossy(c)))
            .collect();
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: l\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n")
    };
    let pipelined: String = (0..200)
        .map(|i| match i % 4 {
            0 => post(r#"{"model":"m","messages":[]}"#),
            1 => post(r#"{"model":"nope"}"#),
            2 => "GET /health HTTP/1.1\r\nHost: l\r\n\r\n".to_owned(),
            _ => format!("GET /v1/models HTTP/1.1\r\nHost: l\r\nX-Request-Id: same-{}\r\n\r\n", i % 8),
        })
        .collect();
    let huge_header = format!("GET /health HTTP/1.1\r\nHost: l\r\nX-Big: {}\r\n\r\n", "a".repeat(600_000));
    let many_headers: String = (0..5000).map(|i| format!("X-H{i}: v\r\n")).collect();
    vec![
        ("body-at-limit".into(), post(&padded(REQUEST_MAX_BODY)).into_bytes()),
        ("body-over-limit".into(), post(&padded(REQUEST_MAX_BODY + 1)).into_bytes()),
        ("chunked-over-limit".into(), chunked_over.into_bytes()),
        ("200-pipelined".into(), pipelined.into_bytes()),
        ("600kb-header".into(), huge_header.into_bytes()),
        ("5000-headers".into(), format!("GET /health HTTP/1.1\r\nHost: l\r\n{many_headers}\r\n").into_bytes()),
    ]
}

/// Text for a message: lossy UTF-8, at most `max` bytes of it.
fn lossy(bytes: &[u8], max: usize) -> String {
    let shown = &bytes[..bytes.len().min(max)];
    let mut text = String::from_utf8_lossy(shown).into_owned();
    if bytes.len() > max {
        text.push_str(&format!("... ({} bytes in all)", bytes.len()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_task_is_counted() {
        let h = harness();
        let _one_at_a_time = h.lock.lock();
        let before = panics_here();
        let joined = h.runtime.block_on(async { tokio::spawn(async { panic!("a task panics on purpose") }).await });
        assert!(joined.is_err());
        assert_eq!(panics_here(), before + 1);
    }

    #[test]
    fn the_response_walk_rejects_bad_framing() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 100 Continue\r\n\r\n\
                   HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\n{\r\n1;x=y\r\n}\r\n0\r\nt: v\r\n\r\n";
        let parsed = parse_responses(ok, b"").expect("well-formed");
        assert_eq!(parsed.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 100, 200]);
        assert_eq!(parsed[2].body, b"{}");
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-len",
            b"HTTP/2 200\r\n\r\n",
        ] {
            assert!(parse_responses(bad, b"").is_err(), "{:?}", lossy(bad, 200));
        }
        // A HEAD's answer: a length and no body.
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nHTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_responses(head, b"HEAD / HTTP/1.1\r\n\r\n").expect("bodiless").len(), 2);
    }

    #[test]
    fn only_numbers_at_the_edge_of_f64_excuse_serde_json() {
        let spans =
            |body: &str| numbers(body.as_bytes()).into_iter().map(|(a, b)| body[a..b].to_owned()).collect::<Vec<_>>();
        assert_eq!(spans(r#"{"a":[-1.5e3,0],"s":"12 \"3","b":7}"#), ["-1.5e3", "0", "7"]);
        for (text, valid) in [("0", true), ("-0.5e-3", true), ("01", false), ("1.", false), ("-", false), ("1e", false)]
        {
            assert_eq!(is_json_number(text), valid, "{text}");
        }
        let model = |body: &str| reference_model_max_zeroed(body.as_bytes());
        assert_eq!(model(r#"{"model":"a","n":-1.7976931348623158e308}"#).as_deref(), Some("a"));
        assert_eq!(model(r#"{"model":"a","n":1e400}"#), None);
        assert_eq!(model(r#"{"model":"a","n":1.7976931348623158e308,"x":01}"#), None);
        assert!(has_overflowing_number(br#"{"n":1.7976931348623159e308}"#));
        assert!(!has_overflowing_number(br#"{"n":1.7976931348623158e308}"#));
    }
}
