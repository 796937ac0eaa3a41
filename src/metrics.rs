//! Counters, gauges and histograms: the metric primitives.
//!
//! Everything a request counts is a preallocated atomic in its model's
//! [`ModelMetrics`], which the request reaches through the model's slot
//! (or its incarnation) once: counting itself touches no map, no lock and
//! allocates nothing. Switch statistics per (from, to) and hook statistics
//! are written by the switch task only; they live behind cold-path locks or
//! in the slot. [`crate::exposition`] writes them out for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use parking_lot::Mutex;

use crate::machine::SwitchRecord;

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

    /// The sum of the observations.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros.load(Relaxed))
    }

    /// Writes the histogram in the text exposition format.
    pub fn write(&self, out: &mut String, name: &str, labels: &str) {
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
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

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
    /// Time requests spent queued for the model, µs (only requests that
    /// queued add to it: the hot path never touches it). `duration`'s sum
    /// less this is the time the model took to serve them.
    queued_micros: AtomicU64,
    /// Per hook kind (wake, sleep, alive). Written by the switch task.
    pub hooks: [HookMetrics; 3],
    /// Times the model was put to sleep as a switch's victim, to make room
    /// for another. Written by the switch task.
    pub evictions: AtomicU64,
}

impl ModelMetrics {
    /// Counts a response head with `status`, `elapsed` after arrival.
    #[inline]
    pub fn record_head(&self, status: StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Relaxed);
        self.first_byte.observe(elapsed);
    }

    /// Counts `waited` in the queue (a request that queued, at admission).
    pub fn add_queued(&self, waited: Duration) {
        self.queued_micros.fetch_add(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The time its requests took once admitted: their durations less the
    /// time they spent queued (what the scheduler calls service time).
    pub fn served_time(&self) -> Duration {
        self.duration.sum().saturating_sub(Duration::from_micros(self.queued_micros.load(Relaxed)))
    }

    /// Requests answered with a status in `class` (1 to 5).
    pub fn requests_in_class(&self, class: usize) -> u64 {
        self.by_class.get(class.wrapping_sub(1)).map_or(0, |c| c.load(Relaxed))
    }
}

/// One hook's statistics.
#[derive(Default)]
pub struct HookMetrics {
    /// Runs.
    pub runs: AtomicU64,
    /// Runs that failed (timeouts included).
    pub failures: AtomicU64,
    /// Runs killed at their timeout.
    pub timeouts: AtomicU64,
    /// Spawn to reap.
    pub duration: Histogram,
}

impl HookMetrics {
    /// Counts a finished run that took `duration`.
    pub fn record(&self, duration: Duration, failed: bool, timed_out: bool) {
        self.runs.fetch_add(1, Relaxed);
        self.duration.observe(duration);
        self.failures.fetch_add(u64::from(failed || timed_out), Relaxed);
        self.timeouts.fetch_add(u64::from(timed_out), Relaxed);
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

/// Every counted limit with its label value.
pub const LIMITS: [(Limit, &str); 8] = [
    (Limit::MaxBodyBytes, "max_body_bytes"),
    (Limit::BodyReadTimeout, "body_read_timeout"),
    (Limit::MaxQueuedRequests, "max_queued_requests"),
    (Limit::MaxQueuedBodyBytes, "max_queued_body_bytes"),
    (Limit::HeaderReadTimeout, "header_read_timeout"),
    (Limit::MaxConnections, "max_connections"),
    (Limit::ApiKey, "api_key"),
    (Limit::MaxBodyBytesInMemory, "max_body_bytes_in_memory"),
];

/// Why a request was turned away before it reached a model's queue: a
/// fixed set (the label values of `llmux_requests_rejected_total`), so a
/// client's unknown name never makes a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Rejection {
    /// 401: no valid API key.
    Unauthorized,
    /// 403: the control API refused the client.
    Forbidden,
    /// 400: the body names no usable model (empty, not JSON, a malformed
    /// form, no `model`, two of them).
    BadBody,
    /// 404: the body names a model that is not configured.
    UnknownModel,
    /// 404: no body model and a path llmux does not serve.
    UnknownRoute,
    /// 413: over `max_body_bytes`.
    BodyTooLarge,
    /// 408: the body did not arrive within `limits.body_read_timeout_secs`.
    BodyReadTimeout,
    /// 503: request bodies in memory at `limits.max_body_bytes_in_memory`.
    Overloaded,
    /// 501: an upgrade (WebSocket) request.
    Upgrade,
}

/// Every rejection reason with its label value.
pub const REJECTIONS: [(Rejection, &str); 9] = [
    (Rejection::Unauthorized, "unauthorized"),
    (Rejection::Forbidden, "forbidden"),
    (Rejection::BadBody, "bad_body"),
    (Rejection::UnknownModel, "unknown_model"),
    (Rejection::UnknownRoute, "unknown_route"),
    (Rejection::BodyTooLarge, "body_too_large"),
    (Rejection::BodyReadTimeout, "body_read_timeout"),
    (Rejection::Overloaded, "overloaded"),
    (Rejection::Upgrade, "upgrade"),
];

/// Statistics of the switches from one model (or nothing) to another.
#[derive(Default)]
pub struct SwitchStats {
    /// Switches by reason (as [`SWITCH_REASONS`]), then by result: done,
    /// abandoned, failed.
    pub results: [[u64; 3]; SWITCH_REASONS.len()],
    /// Drain, sleep and wake phase durations.
    pub phases: [Histogram; 3],
}

/// Process-wide metrics.
#[derive(Default)]
pub struct ProcessMetrics {
    /// Client connections open now. Written by the accept loop.
    pub open_connections: AtomicI64,
    /// Rejections by [`Limit`]; read with [`ProcessMetrics::rejected`].
    rejected: [AtomicU64; LIMITS.len()],
    /// Requests turned away before a model's queue, by [`Rejection`].
    rejections: [AtomicU64; REJECTIONS.len()],
    /// Requests cut by a drain timeout. Written by the switch task.
    pub cut_requests: AtomicU64,
    /// Per (from, to) slot indices. Written by the switch task, read by
    /// `/metrics`.
    pub switches: Mutex<BTreeMap<(Option<usize>, usize), SwitchStats>>,
    /// Victims put to sleep per (target, victim) slot indices. Written by
    /// the switch task, read by `/metrics`.
    pub victims: Mutex<BTreeMap<(usize, usize), u64>>,
}

impl ProcessMetrics {
    /// Rejections by `limit` so far.
    pub fn rejected(&self, limit: Limit) -> u64 {
        self.rejected[limit as usize].load(Relaxed)
    }

    /// Counts a rejection by `limit`.
    #[inline]
    pub fn reject(&self, limit: Limit) {
        self.rejected[limit as usize].fetch_add(1, Relaxed);
    }

    /// Requests turned away for `reason` so far.
    pub fn rejections(&self, reason: Rejection) -> u64 {
        self.rejections[reason as usize].load(Relaxed)
    }

    /// Counts a request turned away for `reason`.
    pub fn reject_request(&self, reason: Rejection) {
        self.rejections[reason as usize].fetch_add(1, Relaxed);
    }

    /// Counts the victims a switch to `to` put to sleep.
    pub fn record_victims(&self, to: usize, evicted: impl IntoIterator<Item = usize>) {
        let mut victims = self.victims.lock();
        for victim in evicted {
            *victims.entry((to, victim)).or_default() += 1;
        }
    }

    /// Counts a finished switch and its phases.
    pub fn record_switch(&self, record: &SwitchRecord) {
        let mut switches = self.switches.lock();
        let stats = switches.entry((record.from, record.to)).or_default();
        stats.results[reason_label(record.reason)][record.result as usize] += 1;
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

/// Why a switch ran: a small fixed set, the `reason` label values of
/// `llmux_switches_total`. The scheduler's reasons (`fifo`, `value`,
/// `deadline`, `idle_gpu`), then `operator` (a wake or sleep asked through
/// the control API), `idle` (idle sleep), `reload` (a reload removed a
/// model or shrank the capacity) and `other`.
pub const SWITCH_REASONS: [&str; 8] = ["fifo", "value", "deadline", "idle_gpu", "operator", "idle", "reload", "other"];

/// The index in [`SWITCH_REASONS`] of a switch record's reason.
pub fn reason_label(reason: &str) -> usize {
    let label = match reason {
        "asked by an operator" => "operator",
        "removed from the config" | "over the capacity after a reload" => "reload",
        other => other,
    };
    SWITCH_REASONS.iter().position(|r| *r == label).unwrap_or(SWITCH_REASONS.len() - 1)
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
}
