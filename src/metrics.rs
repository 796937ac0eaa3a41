//! Counters, gauges and histograms, and their Prometheus exposition.
//!
//! Everything a request counts is a preallocated atomic in its model's
//! [`ModelMetrics`], which the request reaches through the model's slot
//! (or its incarnation) once: counting itself touches no map, no lock and
//! allocates nothing. Switch statistics per (from, to) and hook statistics
//! are written by the switch task only; they live behind cold-path locks or
//! in the slot. [`render`] writes the text exposition format 0.0.4, with
//! label values taken only from the configuration.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use parking_lot::Mutex;

use crate::hooks::{HookKind, HookRun, Outcome};
use crate::state::{Catalog, ModelState, Shared, SwitchRecord, SwitchResult};

/// Upper bounds of the latency buckets, in seconds: from 5 ms (a cached
/// answer) to an hour (a long generation or a slow wake).
pub const BUCKETS: [f64; 18] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

/// The same bounds in microseconds, for the lookup.
const BUCKET_MICROS: [u64; 18] = {
    let mut out = [0u64; 18];
    let mut i = 0;
    while i < 18 {
        out[i] = (BUCKETS[i] * 1_000_000.0) as u64;
        i += 1;
    }
    out
};

/// A fixed-bucket histogram of durations: one atomic per bucket plus the
/// sum (µs); the count is the buckets' total. Observing is two relaxed
/// atomic adds.
#[derive(Default)]
pub struct Histogram {
    /// Non-cumulative counts; the last is +Inf.
    buckets: [AtomicU64; 19],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKET_MICROS.iter().position(|&b| micros <= b).unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Status classes counted per model: 1xx to 5xx.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// What one model's requests count. Written by its requests, read by
/// [`render`].
#[derive(Default)]
pub struct ModelMetrics {
    /// Requests by status class (index 0 is 1xx).
    by_class: [AtomicU64; 5],
    /// Arrival to response head.
    pub first_byte: Histogram,
    /// Arrival to the response body's end (or the client leaving).
    pub duration: Histogram,
    /// Per hook kind (wake, sleep, alive). Written by the switch task.
    pub hooks: [HookMetrics; 3],
}

impl ModelMetrics {
    /// Counts a response head with `status`, `elapsed` after arrival.
    #[inline]
    pub fn record_head(&self, status: StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Relaxed);
        self.first_byte.observe(elapsed);
    }

    /// Requests answered with a status in `class` (1 to 5).
    pub fn requests_in_class(&self, class: usize) -> u64 {
        self.by_class.get(class.wrapping_sub(1)).map_or(0, |c| c.load(Relaxed))
    }
}

/// One hook's statistics.
#[derive(Default)]
pub struct HookMetrics {
    runs: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    duration: Histogram,
}

impl HookMetrics {
    /// Counts a finished run.
    pub fn record(&self, run: &HookRun) {
        self.runs.fetch_add(1, Relaxed);
        self.duration.observe(run.duration);
        match run.outcome {
            Outcome::Success => {}
            Outcome::TimedOut(_) => {
                self.failures.fetch_add(1, Relaxed);
                self.timeouts.fetch_add(1, Relaxed);
            }
            _ => {
                self.failures.fetch_add(1, Relaxed);
            }
        }
    }
}

/// The limits whose rejections are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Limit {
    /// `max_body_bytes` (413).
    MaxBodyBytes,
    /// `limits.body_read_timeout_secs` (408).
    BodyReadTimeout,
    /// `limits.max_queued_requests` (429).
    MaxQueuedRequests,
    /// `limits.max_queued_body_bytes` (429).
    MaxQueuedBodyBytes,
    /// `limits.header_read_timeout_secs`: a connection that never sent a
    /// request head.
    HeaderReadTimeout,
    /// `limits.max_connections`: a connection that had to wait to be
    /// accepted.
    MaxConnections,
    /// `api_keys` / `admin_api_keys` (401, 403).
    ApiKey,
    /// `limits.max_body_bytes_in_memory` (503).
    MaxBodyBytesInMemory,
}

const LIMITS: [(Limit, &str); 8] = [
    (Limit::MaxBodyBytes, "max_body_bytes"),
    (Limit::BodyReadTimeout, "body_read_timeout"),
    (Limit::MaxQueuedRequests, "max_queued_requests"),
    (Limit::MaxQueuedBodyBytes, "max_queued_body_bytes"),
    (Limit::HeaderReadTimeout, "header_read_timeout"),
    (Limit::MaxConnections, "max_connections"),
    (Limit::ApiKey, "api_key"),
    (Limit::MaxBodyBytesInMemory, "max_body_bytes_in_memory"),
];

/// Statistics of the switches from one model (or nothing) to another.
#[derive(Default)]
pub struct SwitchStats {
    /// Switches by result: done, abandoned, failed.
    results: [u64; 3],
    /// Drain, sleep and wake phase durations.
    phases: [Histogram; 3],
}

/// Process-wide metrics.
#[derive(Default)]
pub struct ProcessMetrics {
    /// Client connections open now. Written by the accept loop.
    pub open_connections: AtomicI64,
    /// Rejections by [`Limit`].
    rejected: [AtomicU64; LIMITS.len()],
    /// Requests cut by a drain timeout. Written by the switch task.
    pub cut_requests: AtomicU64,
    /// Per (from, to) slot indices. Written by the switch task, read by
    /// [`render`].
    switches: Mutex<BTreeMap<(Option<usize>, usize), SwitchStats>>,
}

impl ProcessMetrics {
    /// Counts a rejection by `limit`.
    #[inline]
    pub fn reject(&self, limit: Limit) {
        self.rejected[limit as usize].fetch_add(1, Relaxed);
    }

    /// Counts a finished switch and its phases.
    pub fn record_switch(&self, record: &SwitchRecord) {
        let mut switches = self.switches.lock();
        let stats = switches.entry((record.from, record.to)).or_default();
        stats.results[record.result as usize] += 1;
        if record.from.is_some() {
            stats.phases[0].observe(record.drain);
        }
        if let Some(d) = record.sleep {
            stats.phases[1].observe(d);
        }
        if let Some(d) = record.wake {
            stats.phases[2].observe(d + record.alive);
        }
    }
}

/// Whole milliseconds, for logs, events and the control API.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A monotonic clock in µs since the first call, for timestamps kept in
/// atomics.
pub fn now_micros() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The `/metrics` page.
pub fn render(shared: &Shared) -> String {
    let catalog = shared.catalog.load();
    let mut out = String::with_capacity(16 * 1024);
    let _ = writeln!(out, "# HELP llmux_build_info The running llmux version.\n# TYPE llmux_build_info gauge");
    let _ = writeln!(out, "llmux_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    render_requests(&mut out, &catalog);
    render_models(&mut out, shared, &catalog);
    render_hooks(&mut out, &catalog);
    render_switches(&mut out, shared, &catalog);
    render_process(&mut out, shared);
    out
}

/// A label value, escaped as the format wants.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn render_requests(out: &mut String, catalog: &Catalog) {
    family(out, "llmux_requests_total", "counter", "Requests answered, by model and status class.");
    for (_, m, slot) in catalog.live() {
        let model = escape(&m.name);
        for (class, name) in CLASSES.iter().enumerate() {
            let n = slot.metrics.requests_in_class(class + 1);
            let _ = writeln!(out, "llmux_requests_total{{model=\"{model}\",class=\"{name}\"}} {n}");
        }
    }
    family(out, "llmux_request_first_byte_seconds", "histogram", "Arrival to response head.");
    for (_, m, slot) in catalog.live() {
        let labels = format!("model=\"{}\"", escape(&m.name));
        slot.metrics.first_byte.write(out, "llmux_request_first_byte_seconds", &labels);
    }
    family(out, "llmux_request_duration_seconds", "histogram", "Arrival to the last byte of the response.");
    for (_, m, slot) in catalog.live() {
        let labels = format!("model=\"{}\"", escape(&m.name));
        slot.metrics.duration.write(out, "llmux_request_duration_seconds", &labels);
    }
}

fn render_models(out: &mut String, shared: &Shared, catalog: &Catalog) {
    let routing = shared.routing.load();
    let active = routing.active();
    family(out, "llmux_queue_depth", "gauge", "Requests waiting for the model.");
    for (_, m, slot) in catalog.live() {
        let _ = writeln!(out, "llmux_queue_depth{{model=\"{}\"}} {}", escape(&m.name), slot.waiting());
    }
    family(out, "llmux_in_flight", "gauge", "Requests being served by the model.");
    for (i, m, _) in catalog.live() {
        let n = active.filter(|a| a.model == i).map_or(0, |a| a.in_flight());
        let _ = writeln!(out, "llmux_in_flight{{model=\"{}\"}} {n}", escape(&m.name));
    }
    family(out, "llmux_model_state", "gauge", "1 for the model's current state.");
    for (_, m, slot) in catalog.live() {
        let current = slot.state();
        for state in ModelState::ALL {
            let v = u8::from(state == current);
            let _ = writeln!(out, "llmux_model_state{{model=\"{}\",state=\"{state}\"}} {v}", escape(&m.name));
        }
    }
    family(out, "llmux_model_active_seconds_total", "counter", "Time the model has been active.");
    for (_, m, slot) in catalog.live() {
        let secs = slot.active_time().as_secs_f64();
        let _ = writeln!(out, "llmux_model_active_seconds_total{{model=\"{}\"}} {secs}", escape(&m.name));
    }
}

/// Picks one counter of a hook's statistics.
type HookCounter = fn(&HookMetrics) -> &AtomicU64;

fn render_hooks(out: &mut String, catalog: &Catalog) {
    let kinds = [HookKind::Wake, HookKind::Sleep, HookKind::Alive];
    let counters: [(&str, &str, HookCounter); 3] = [
        ("llmux_hook_runs_total", "Hook runs.", |h| &h.runs),
        ("llmux_hook_failures_total", "Hook runs that failed (timeouts included).", |h| &h.failures),
        ("llmux_hook_timeouts_total", "Hook runs killed at their timeout.", |h| &h.timeouts),
    ];
    for (name, help, field) in counters {
        family(out, name, "counter", help);
        for (_, m, slot) in catalog.live() {
            for (kind, hook) in kinds.iter().zip(&slot.metrics.hooks) {
                let v = field(hook).load(Relaxed);
                let _ = writeln!(out, "{name}{{model=\"{}\",hook=\"{kind}\"}} {v}", escape(&m.name));
            }
        }
    }
    family(out, "llmux_hook_duration_seconds", "histogram", "Hook spawn to reap.");
    for (_, m, slot) in catalog.live() {
        for (kind, hook) in kinds.iter().zip(&slot.metrics.hooks) {
            let labels = format!("model=\"{}\",hook=\"{kind}\"", escape(&m.name));
            hook.duration.write(out, "llmux_hook_duration_seconds", &labels);
        }
    }
}

fn render_switches(out: &mut String, shared: &Shared, catalog: &Catalog) {
    let switches = shared.metrics.switches.lock();
    // Only pairs whose models are both still configured: label values come
    // from the config in force.
    let name = |slot: usize| catalog.model(slot).map(|m| escape(&m.name));
    let pairs: Vec<(String, String, &SwitchStats)> = switches
        .iter()
        .filter_map(|((from, to), stats)| {
            let from = match from {
                Some(f) => name(*f)?,
                None => String::new(),
            };
            Some((from, name(*to)?, stats))
        })
        .collect();
    family(out, "llmux_switches_total", "counter", "Switches by result.");
    for (from, to, stats) in &pairs {
        for (result, n) in SwitchResult::ALL.map(SwitchResult::as_str).iter().zip(stats.results) {
            let _ = writeln!(out, "llmux_switches_total{{from=\"{from}\",to=\"{to}\",result=\"{result}\"}} {n}");
        }
    }
    family(out, "llmux_switch_phase_seconds", "histogram", "Switch phase durations: drain, sleep, wake.");
    for (from, to, stats) in &pairs {
        for (phase, h) in ["drain", "sleep", "wake"].iter().zip(&stats.phases) {
            let labels = format!("from=\"{from}\",to=\"{to}\",phase=\"{phase}\"");
            h.write(out, "llmux_switch_phase_seconds", &labels);
        }
    }
}

fn render_process(out: &mut String, shared: &Shared) {
    let m = &shared.metrics;
    family(out, "llmux_open_connections", "gauge", "Client connections open.");
    let _ = writeln!(out, "llmux_open_connections {}", m.open_connections.load(Relaxed).max(0));
    family(out, "llmux_rejected_total", "counter", "Requests or connections turned away, by limit.");
    for (limit, name) in LIMITS {
        let _ = writeln!(out, "llmux_rejected_total{{limit=\"{name}\"}} {}", m.rejected[limit as usize].load(Relaxed));
    }
    family(out, "llmux_requests_cut_total", "counter", "Requests cut by a drain timeout.");
    let _ = writeln!(out, "llmux_requests_cut_total {}", m.cut_requests.load(Relaxed));
    family(out, "llmux_queued_requests", "gauge", "Requests queued for any model.");
    let _ = writeln!(out, "llmux_queued_requests {}", shared.queued_requests.load(Relaxed));
    family(out, "llmux_body_bytes_in_memory", "gauge", "Request-body bytes held in memory (reserved).");
    let _ = writeln!(out, "llmux_body_bytes_in_memory {}", shared.body_budget.held());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounded() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        h.observe(Duration::from_secs(7200));
        let mut out = String::new();
        h.write(&mut out, "x", "m=\"a\"");
        assert!(out.contains("x_bucket{m=\"a\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"2.5\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"3600\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count{m=\"a\"} 4\n"), "{out}");
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn status_classes() {
        let m = ModelMetrics::default();
        for s in [200, 201, 404, 503, 504, 101] {
            m.record_head(StatusCode::from_u16(s).expect("a status"), Duration::ZERO);
        }
        let counts: Vec<u64> = (1..=5).map(|c| m.requests_in_class(c)).collect();
        assert_eq!(counts, [1, 2, 0, 1, 2]);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}
