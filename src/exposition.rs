//! The `/metrics` page: the Prometheus text exposition format 0.0.4 of
//! every model's and the process's metrics, with label values taken only
//! from the configuration in force.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::catalog::Catalog;
use crate::config::HookKind;
use crate::machine::{ModelState, SwitchResult};
use crate::metrics::{HookMetrics, SwitchStats, CLASSES, LIMITS, REJECTIONS, SWITCH_REASONS};
use crate::state::Shared;

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
    render_capacity(&mut out, shared, &catalog);
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
    family(out, "llmux_queue_depth", "gauge", "Requests waiting for the model.");
    for (_, m, slot) in catalog.live() {
        let _ = writeln!(out, "llmux_queue_depth{{model=\"{}\"}} {}", escape(&m.name), slot.waiting());
    }
    family(out, "llmux_in_flight", "gauge", "Requests being served by the model.");
    for (i, m, _) in catalog.live() {
        let n = routing.resident(i).map_or(0, |r| r.in_flight());
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
    family(out, "llmux_switches_total", "counter", "Switches by reason and result.");
    for (from, to, stats) in &pairs {
        // A reason no switch of this pair had is left out (absent, not 0).
        for (reason, results) in SWITCH_REASONS.iter().zip(&stats.results).filter(|(_, r)| r.iter().any(|&n| n > 0)) {
            for (result, n) in SwitchResult::ALL.map(SwitchResult::as_str).iter().zip(results) {
                let _ = writeln!(
                    out,
                    "llmux_switches_total{{from=\"{from}\",to=\"{to}\",reason=\"{reason}\",result=\"{result}\"}} {n}"
                );
            }
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

/// The budget and what is loaded of it, evictions per model and per
/// (target, victim). `llmux_capacity` only when `capacity` is set.
fn render_capacity(out: &mut String, shared: &Shared, catalog: &Catalog) {
    if let Some(capacity) = catalog.config.capacity {
        family(out, "llmux_capacity", "gauge", "The capacity budget (the config's `capacity`).");
        let _ = writeln!(out, "llmux_capacity {capacity}");
    }
    family(out, "llmux_capacity_used", "gauge", "Sizes of the loaded models (each 1 without a capacity).");
    let _ = writeln!(out, "llmux_capacity_used {}", shared.capacity_used());
    family(out, "llmux_evictions_total", "counter", "Times the model was put to sleep to make room for another.");
    for (_, m, slot) in catalog.live() {
        let n = slot.metrics.evictions.load(Relaxed);
        let _ = writeln!(out, "llmux_evictions_total{{model=\"{}\"}} {n}", escape(&m.name));
    }
    family(out, "llmux_switch_victims_total", "counter", "Victims put to sleep by switches to a target.");
    let name = |slot: usize| catalog.model(slot).map(|m| escape(&m.name));
    for (&(to, victim), n) in shared.metrics.victims.lock().iter() {
        // Only pairs whose models are both still configured.
        if let (Some(to), Some(victim)) = (name(to), name(victim)) {
            let _ = writeln!(out, "llmux_switch_victims_total{{to=\"{to}\",victim=\"{victim}\"}} {n}");
        }
    }
}

fn render_process(out: &mut String, shared: &Shared) {
    let m = &shared.metrics;
    family(out, "llmux_open_connections", "gauge", "Client connections open.");
    let _ = writeln!(out, "llmux_open_connections {}", m.open_connections.load(Relaxed).max(0));
    family(out, "llmux_rejected_total", "counter", "Requests or connections turned away, by limit.");
    for (limit, name) in LIMITS {
        let _ = writeln!(out, "llmux_rejected_total{{limit=\"{name}\"}} {}", m.rejected(limit));
    }
    family(out, "llmux_requests_rejected_total", "counter", "Requests turned away before a model's queue, by reason.");
    for (reason, name) in REJECTIONS {
        let _ = writeln!(out, "llmux_requests_rejected_total{{reason=\"{name}\"}} {}", m.rejections(reason));
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
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}
