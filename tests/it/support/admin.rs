//! llmux's operator side from the test's: the control API (`/llmux/*`),
//! `/metrics` read with a real Prometheus text parser, the event stream,
//! config rewrites for reloads, and llmux's service over an in-memory pipe
//! for clients that are not on loopback.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Method;
use prometheus_parse::{HistogramCount, Sample, Scrape, Value as Prom};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::http::{self, Reply};
use super::{harness_yaml, Mux, Spec, PATIENCE};

/// `/metrics`'s content type (Prometheus text format 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Mux {
    /// Sends a chat request for `model` that must be served by it.
    pub async fn served(&self, model: &str) {
        let r = http::post(&self.url("/v1/chat/completions"), &http::chat(model)).await;
        assert_eq!((r.status.as_u16(), r.served_by()), (200, model), "{}", r.text());
    }

    /// How many times `hooks.log` has the line `event`.
    pub fn hook_count(&self, event: &str) -> usize {
        self.hooks.events().iter().filter(|e| *e == event).count()
    }

    /// `GET /health` as JSON.
    pub async fn health(&self) -> Value {
        http::get(&self.url("/health")).await.json()
    }

    /// `GET /llmux/status` as JSON, asserting a 200.
    pub async fn status(&self) -> Value {
        let r = http::get(&self.url("/llmux/status")).await;
        assert_eq!(r.status, 200, "/llmux/status: {}", r.text());
        r.json()
    }

    /// `/llmux/status`'s entry for `model`.
    pub async fn status_of(&self, model: &str) -> Value {
        let status = self.status().await;
        let models = status["models"].as_array().cloned().unwrap_or_default();
        models.into_iter().find(|m| m["id"] == model).unwrap_or_else(|| panic!("no {model} in {status}"))
    }

    /// `POST path` with an empty body and `headers`.
    pub async fn admin_post_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        http::request(Method::POST, &self.url(path), headers, Bytes::new()).await
    }

    /// `POST path` with an empty body, e.g. `/llmux/models/a/wake`.
    pub async fn admin_post(&self, path: &str) -> Reply {
        self.admin_post_with(path, &[]).await
    }

    /// `POST /llmux/reload`.
    pub async fn reload(&self) -> Reply {
        self.admin_post("/llmux/reload").await
    }

    /// Rewrites the config file as the harness would write it for
    /// `models` (name, backend port) and `spec`.
    pub fn rewrite_config(&self, models: &[(&str, u16)], spec: &Spec) {
        self.write_config(&harness_yaml(models, spec));
    }

    /// Replaces the config file's text.
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("rewrite the config");
    }

    /// The ids `/v1/models` lists, in order.
    pub async fn model_ids(&self) -> Vec<String> {
        let list = http::get(&self.url("/v1/models")).await.json();
        let data = list["data"].as_array().cloned().unwrap_or_default();
        data.iter().map(|m| m["id"].as_str().expect("model id").to_owned()).collect()
    }

    /// Waits until llmux's log contains `needle`; returns the log.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `/health` shows `n` requests queued for `model`.
    pub async fn wait_queued(&self, model: &str, n: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let health = self.health().await;
            let models = health["models"].as_array().cloned().unwrap_or_default();
            if models.iter().any(|m| m["id"] == model && m["queued"] == n) {
                return;
            }
            assert!(Instant::now() < deadline, "{model} never had {n} queued: {health}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Scrapes `/metrics` with `headers`, asserting a 200 in Prometheus
    /// text format.
    pub async fn metrics_with(&self, headers: &[(&str, &str)]) -> Metrics {
        let r = http::request(Method::GET, &self.url("/metrics"), headers, Bytes::new()).await;
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        assert_eq!(r.header("content-type"), Some(METRICS_CONTENT_TYPE));
        Metrics::parse(&r.text())
    }

    /// Scrapes `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        self.metrics_with(&[]).await
    }

    /// Scrapes `/metrics` until `check` holds (counters an answered
    /// request bumps may land just after its last byte); returns that
    /// scrape.
    pub async fn metrics_until(&self, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
        self.metrics_until_with(&[], what, check).await
    }

    /// [`Mux::metrics_until`], scraping with `headers` (an API key).
    pub async fn metrics_until_with(
        &self,
        headers: &[(&str, &str)],
        what: &str,
        check: impl Fn(&Metrics) -> bool,
    ) -> Metrics {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let m = self.metrics_with(headers).await;
            if check(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "metrics never showed {what}:\n{}", m.text);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One `/metrics` scrape, parsed by `prometheus_parse`.
pub struct Metrics {
    /// Every series; a histogram's buckets are one sample.
    pub samples: Vec<Sample>,
    /// The exposition as served, for failure messages.
    pub text: String,
}

impl Metrics {
    /// Parses Prometheus text format.
    pub fn parse(text: &str) -> Metrics {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format");
        Metrics { samples: scrape.samples, text: text.to_owned() }
    }

    /// The series of family `name` whose labels include every `labels` pair.
    pub fn series(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect()
    }

    /// The one series `name{labels}`, failing the test if there is none
    /// or several.
    pub fn one(&self, name: &str, labels: &[(&str, &str)]) -> &Sample {
        let found = self.series(name, labels);
        assert_eq!(found.len(), 1, "{name}{labels:?}: {} series in\n{}", found.len(), self.text);
        found[0]
    }

    /// The value of the one series `name{labels}` (a histogram's count).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        number(&self.one(name, labels).value)
    }

    /// The sum over every series of `name` with `labels` (0 if none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name, labels).iter().map(|s| number(&s.value)).sum()
    }

    /// The buckets of the one histogram series `name{labels}`.
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<HistogramCount> {
        match &self.one(name, labels).value {
            Prom::Histogram(buckets) => buckets.clone(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    /// The type of family `name` as its samples were typed: `counter`,
    /// `gauge`, `histogram`, `summary` or `untyped`.
    pub fn kind(&self, name: &str) -> &'static str {
        let sample = self.samples.iter().find(|s| s.metric == name);
        match sample.unwrap_or_else(|| panic!("no family {name} in\n{}", self.text)).value {
            Prom::Counter(_) => "counter",
            Prom::Gauge(_) => "gauge",
            Prom::Histogram(_) => "histogram",
            Prom::Summary(_) => "summary",
            Prom::Untyped(_) => "untyped",
        }
    }

    /// Every value label `key` takes in the scrape.
    pub fn label_values(&self, key: &str) -> BTreeSet<String> {
        self.samples.iter().filter_map(|s| s.labels.get(key)).map(str::to_owned).collect()
    }
}

/// A sample's number; a histogram's is its count (the `+Inf` bucket).
fn number(value: &Prom) -> f64 {
    match value {
        Prom::Counter(v) | Prom::Gauge(v) | Prom::Untyped(v) => *v,
        Prom::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than == f64::INFINITY);
            inf.expect("a histogram has a +Inf bucket").count
        }
        Prom::Summary(_) => panic!("llmux exports no summaries"),
    }
}

/// An open `GET /llmux/events` stream.
pub struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

/// One server-sent event: its kind and its JSON data.
pub type Event = (String, Value);

impl Events {
    /// Opens the stream, asserting a 200 `text/event-stream`.
    pub async fn open(mux: &Mux) -> Events {
        let response = http::send(Method::GET, &mux.url("/llmux/events"), &[], Bytes::new()).await;
        assert_eq!(response.status(), 200);
        let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(kind.starts_with("text/event-stream"), "content-type {kind:?}");
        Events { body: response.into_body(), buf: Vec::new() }
    }

    /// The next event, skipping comments (`: keep-alive`); fails the test
    /// if none arrives within `PATIENCE`.
    pub async fn next(&mut self) -> Event {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(event) = parse_event(&String::from_utf8_lossy(&block)) {
                    return event;
                }
                continue;
            }
            let frame = tokio::time::timeout(PATIENCE, self.body.frame()).await.expect("an event in time");
            let frame = frame.expect("the event stream ended").expect("an event frame");
            if let Ok(data) = frame.into_data() {
                self.buf.extend(data.iter().filter(|b| **b != b'\r'));
            }
        }
    }

    /// Reads events until one satisfies `wanted`; returns every event
    /// read, that one last.
    pub async fn until(&mut self, wanted: impl Fn(&str, &Value) -> bool) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let (kind, data) = self.next().await;
            let done = wanted(&kind, &data);
            seen.push((kind, data));
            if done {
                return seen;
            }
        }
    }
}

/// An SSE block's `event:` kind and `data:` JSON; `None` for a comment.
fn parse_event(block: &str) -> Option<Event> {
    let mut kind = None;
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if let Some(k) = line.strip_prefix("event:") {
            kind = Some(k.trim().to_owned());
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    if kind.is_none() && data.is_empty() {
        return None;
    }
    let data = data.join("\n");
    let json = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {block:?}"));
    Some((kind.unwrap_or_else(|| "message".to_owned()), json))
}

/// Serves one raw HTTP/1.1 `request` (which should ask to close the
/// connection) with llmux's service over an in-memory pipe, as if from
/// `peer`; returns the status and the body.
pub async fn ask_as(shared: &Arc<llmux::state::Shared>, peer: SocketAddr, request: &str) -> (u16, Vec<u8>) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let conn = tokio::spawn(llmux::server::serve_io(Arc::clone(shared), server, peer));
    client.write_all(request.as_bytes()).await.expect("write the request");
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, client.read_to_end(&mut out)).await.expect("an answer in time").expect("read");
    let _ = tokio::time::timeout(PATIENCE, conn).await.expect("the connection ends");
    parse_response(&out)
}

/// A whole HTTP/1.1 response's status and (de-chunked) body.
fn parse_response(raw: &[u8]) -> (u16, Vec<u8>) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let status = response.parse(raw).expect("an HTTP response");
    let httparse::Status::Complete(head_len) = status else {
        panic!("partial response: {:?}", String::from_utf8_lossy(raw));
    };
    let code = response.code.expect("status code");
    let chunked = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding") && String::from_utf8_lossy(h.value).contains("chunked")
    });
    let rest = &raw[head_len..];
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    (code, body)
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(httparse::Status::Complete((start, size))) = httparse::parse_chunk_size(rest) {
        let size = usize::try_from(size).expect("chunk size");
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
    body
}
