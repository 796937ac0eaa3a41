//! What a run came to: counts, switching, goodput and per-model wait and
//! latency percentiles, as a table, a JSON line or policies side by side.
//!
//! Everything is computed from the run's tracks in request order and
//! printed with fixed precision: the same run prints the same bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::trace::Request;
use super::world::{Fate, Outcome};

/// Mean, p50, p99 and max of a set of durations, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// How many.
    pub n: usize,
    /// Their mean.
    pub mean: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// The largest.
    pub max: f64,
}

impl Stats {
    /// The statistics of `micros` (sorted here).
    fn of(micros: &mut [u64]) -> Stats {
        if micros.is_empty() {
            return Stats::default();
        }
        micros.sort_unstable();
        let secs = |us: u64| us as f64 / 1e6;
        let rank = |q: f64| micros[((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len()) - 1];
        let sum: u128 = micros.iter().map(|&u| u128::from(u)).sum();
        Stats {
            n: micros.len(),
            mean: sum as f64 / micros.len() as f64 / 1e6,
            p50: secs(rank(0.5)),
            p99: secs(rank(0.99)),
            max: secs(micros[micros.len() - 1]),
        }
    }

    fn json(&self) -> Value {
        json!({ "mean": round(self.mean), "p50": round(self.p50), "p99": round(self.p99), "max": round(self.max) })
    }
}

/// Milliseconds are what a simulation can claim: JSON numbers rounded so.
fn round(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// One model's share of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// Its name.
    pub name: String,
    /// Its requests.
    pub n: usize,
    /// Arrival to admission, of those admitted.
    pub wait: Stats,
    /// Arrival to the last byte, of those served.
    pub latency: Stats,
}

/// One policy's run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The policy's name.
    pub policy: String,
    /// Requests for configured models.
    pub requests: usize,
    /// Answered in full.
    pub served: usize,
    /// Timed out while queued.
    pub timed_out: usize,
    /// Answered 503.
    pub failed: usize,
    /// Cut by a drain timeout.
    pub cut: usize,
    /// Still queued when nothing more could happen.
    pub unserved: usize,
    /// Switches that published their target.
    pub switches: u64,
    /// Switches that failed or were abandoned.
    pub failed_switches: u64,
    /// Abandoned switches.
    pub abandoned_switches: u64,
    /// Seconds spent switching (the switches' measured costs).
    pub switching_secs: f64,
    /// Served within the SLO.
    pub goodput: usize,
    /// The SLO, seconds.
    pub slo_secs: f64,
    /// Requests for models the config lacks, by name.
    pub unknown: BTreeMap<String, u64>,
    /// Per model, config order.
    pub models: Vec<ModelSummary>,
}

/// Sums up `outcome` of `requests` under `policy`.
pub fn summarize(
    policy: &str,
    outcome: &Outcome,
    requests: &[Request],
    names: &[String],
    unknown: &BTreeMap<String, u64>,
    slo_secs: f64,
) -> Summary {
    let slo_us = (slo_secs * 1e6) as u64;
    let count = |f: Fate| outcome.tracks.iter().filter(|t| t.fate == f).count();
    let goodput = outcome
        .tracks
        .iter()
        .zip(requests)
        .filter(|(t, _)| t.fate == Fate::Done && t.finished.micros() - t.arrived.micros() <= slo_us)
        .count();
    let models = names.iter().enumerate().map(|(i, name)| model_summary(i, name, outcome, requests)).collect();
    Summary {
        policy: policy.to_owned(),
        requests: requests.len(),
        served: count(Fate::Done),
        timed_out: count(Fate::TimedOut),
        failed: count(Fate::Failed),
        cut: count(Fate::Cut),
        unserved: count(Fate::Waiting) + count(Fate::Running),
        switches: outcome.switches,
        failed_switches: outcome.failed_switches,
        abandoned_switches: outcome.abandoned_switches,
        switching_secs: outcome.switching.as_secs_f64(),
        goodput,
        slo_secs,
        unknown: unknown.clone(),
        models,
    }
}

fn model_summary(model: usize, name: &str, outcome: &Outcome, requests: &[Request]) -> ModelSummary {
    let mine = || outcome.tracks.iter().zip(requests).filter(move |(_, r)| r.model as usize == model);
    let admitted = |f: Fate| matches!(f, Fate::Done | Fate::Cut | Fate::Running);
    let mut waits: Vec<u64> =
        mine().filter(|(t, _)| admitted(t.fate)).map(|(t, _)| t.admitted.micros() - t.arrived.micros()).collect();
    let mut latencies: Vec<u64> =
        mine().filter(|(t, _)| t.fate == Fate::Done).map(|(t, _)| t.finished.micros() - t.arrived.micros()).collect();
    ModelSummary {
        name: name.to_owned(),
        n: mine().count(),
        wait: Stats::of(&mut waits),
        latency: Stats::of(&mut latencies),
    }
}

/// Share of `part` in `whole`, in percent.
fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The table of one policy's run.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "policy {}", s.policy);
    for (label, value) in headline(s) {
        let _ = writeln!(out, "  {label:<22} {value}");
    }
    let _ = writeln!(
        out,
        "  {:<12} {:>7} {:>9} {:>9} {:>9} {:>9}   {:>9} {:>9} {:>9} {:>9}",
        "model", "n", "wait mean", "p50", "p99", "max", "lat mean", "p50", "p99", "max"
    );
    for m in &s.models {
        let (w, l) = (m.wait, m.latency);
        let _ = writeln!(
            out,
            "  {:<12} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3}   {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            m.name, m.n, w.mean, w.p50, w.p99, w.max, l.mean, l.p50, l.p99, l.max
        );
    }
    out
}

/// The headline figures, label and value, in print order.
fn headline(s: &Summary) -> Vec<(String, String)> {
    let mut rows = vec![
        ("requests".to_owned(), s.requests.to_string()),
        ("served".to_owned(), s.served.to_string()),
        ("timed out".to_owned(), s.timed_out.to_string()),
        ("failed".to_owned(), s.failed.to_string()),
        ("cut".to_owned(), s.cut.to_string()),
        ("unserved".to_owned(), s.unserved.to_string()),
        ("switches".to_owned(), s.switches.to_string()),
        ("failed/abandoned".to_owned(), format!("{}/{}", s.failed_switches, s.abandoned_switches)),
        ("switching (s)".to_owned(), format!("{:.3}", s.switching_secs)),
        (
            format!("goodput (<= {:.1} s)", s.slo_secs),
            format!("{} ({:.1}%)", s.goodput, percent(s.goodput, s.requests)),
        ),
    ];
    for (name, n) in &s.unknown {
        rows.push((format!("unknown model {name}"), n.to_string()));
    }
    rows
}

/// Policies side by side: one column each.
pub fn compare(summaries: &[Summary]) -> String {
    let Some(first) = summaries.first() else { return String::new() };
    let mut rows: Vec<(String, Vec<String>)> = vec![("policy".to_owned(), Vec::new())];
    for (label, _) in headline(first) {
        rows.push((label, Vec::new()));
    }
    for m in &first.models {
        for what in ["wait", "latency"] {
            for stat in ["mean", "p99"] {
                rows.push((format!("{} {what} {stat}", m.name), Vec::new()));
            }
        }
    }
    for s in summaries {
        let mut values = vec![s.policy.clone()];
        values.extend(headline(s).into_iter().map(|(_, v)| v));
        for m in &s.models {
            for st in [m.wait, m.latency] {
                values.push(format!("{:.3}", st.mean));
                values.push(format!("{:.3}", st.p99));
            }
        }
        for (row, v) in rows.iter_mut().zip(values) {
            row.1.push(v);
        }
    }
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (label, values) in rows {
        let _ = write!(out, "{label:<width$}");
        for v in values {
            let _ = write!(out, " {v:>16}");
        }
        out.push('\n');
    }
    out
}

/// One JSON object (a line, without its newline).
pub fn json_line(s: &Summary) -> String {
    let models: serde_json::Map<String, Value> = s
        .models
        .iter()
        .map(|m| (m.name.clone(), json!({ "n": m.n, "wait": m.wait.json(), "latency": m.latency.json() })))
        .collect();
    json!({
        "policy": s.policy,
        "requests": s.requests,
        "served": s.served,
        "timed_out": s.timed_out,
        "failed": s.failed,
        "cut": s.cut,
        "unserved": s.unserved,
        "switches": s.switches,
        "failed_switches": s.failed_switches,
        "abandoned_switches": s.abandoned_switches,
        "switching_secs": round(s.switching_secs),
        "goodput": s.goodput,
        "slo_secs": round(s.slo_secs),
        "unknown_models": s.unknown,
        "models": models,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).map(|s| s * 1_000_000).collect();
        let s = Stats::of(&mut v);
        assert_eq!((s.n, s.p50, s.p99, s.max), (100, 50.0, 99.0, 100.0));
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert_eq!(Stats::of(&mut []), Stats::default());
    }
}
