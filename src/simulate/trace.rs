//! The trace format: JSON lines.
//!
//! An optional first line `{"models": {"a": {"wake_secs": 30, "sleep_secs":
//! 2, "concurrency": 8}}}` overrides each simulated backend's defaults;
//! every other line is one request, `{"t": 12.5, "model": "a",
//! "service_secs": 2.0}` with an optional `timeout_secs`. Times never
//! decrease. A request for a model the config does not have is counted by
//! name (and reported), never silently dropped. Blank lines are skipped.
//! Every error names its line (1-based).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::clock::Time;

/// Simulated wake time when nothing says otherwise.
pub const DEFAULT_WAKE_SECS: f64 = 10.0;
/// Simulated sleep time when nothing says otherwise.
pub const DEFAULT_SLEEP_SECS: f64 = 2.0;
/// Requests a simulated backend runs at once when nothing says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// How one simulated backend behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backend {
    /// How long its wake hook takes.
    pub wake: Duration,
    /// How long its sleep hook takes.
    pub sleep: Duration,
    /// Requests it runs at once; more wait at the backend.
    pub concurrency: usize,
}

impl Default for Backend {
    fn default() -> Backend {
        Backend {
            wake: Duration::from_secs_f64(DEFAULT_WAKE_SECS),
            sleep: Duration::from_secs_f64(DEFAULT_SLEEP_SECS),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// One request of a workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// When it arrives; for a follow-up, the earliest it could (its
    /// chain's arrivals had nobody waited), used only to order it.
    pub at: Time,
    /// Its model's slot (config order).
    pub model: u32,
    /// How long the backend takes to answer it once it runs.
    pub service: Duration,
    /// Its own queueing timeout (else the config's `request_timeout_secs`).
    pub timeout: Option<Duration>,
    /// A closed loop: it arrives only once request `prev` has ended
    /// (answered, timed out or failed), `think` later, as an agent sends
    /// its next call only after it read the reply.
    pub follows: Option<Follow>,
}

/// What a follow-up request waits for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Follow {
    /// The request (index in the workload) whose end it waits for.
    pub prev: u32,
    /// How long after that end it arrives.
    pub think: Duration,
}

/// A workload: backends per config slot, requests in arrival order, and
/// what the trace named that the config does not have.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Workload {
    /// Per config slot.
    pub backends: Vec<Backend>,
    /// In arrival order.
    pub requests: Vec<Request>,
    /// Requests for models the config does not have, by name.
    pub unknown: BTreeMap<String, u64>,
    /// Things worth a warning (a header naming an unknown model).
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header<'a> {
    #[serde(borrow)]
    models: BTreeMap<Cow<'a, str>, BackendLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendLine {
    wake_secs: Option<f64>,
    sleep_secs: Option<f64>,
    concurrency: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestLine<'a> {
    t: f64,
    #[serde(borrow)]
    model: Cow<'a, str>,
    service_secs: f64,
    timeout_secs: Option<f64>,
}

/// A line of llmux's own JSON log (`--log-format json`): only access
/// lines (`target` `llmux::access`) are read.
#[derive(Deserialize)]
struct LogLine<'a> {
    #[serde(borrow)]
    target: Cow<'a, str>,
    fields: Option<AccessFields<'a>>,
}

#[derive(Deserialize)]
struct AccessFields<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    arrival: Option<f64>,
    service_s: Option<f64>,
}

/// An access-log line as a request: (arrival in Unix seconds, model,
/// service seconds); `None` for other log lines and requests that named
/// no model.
fn access_request(line: &str) -> Result<Option<(f64, String, f64)>, String> {
    let log: LogLine<'_> = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let Some(f) = log.fields.filter(|_| log.target == crate::access::TARGET) else { return Ok(None) };
    match (f.model, f.arrival, f.service_s) {
        (Some(model), Some(at), Some(service)) if model != "-" => {
            Ok(Some((seconds("arrival", at)?, model.into_owned(), seconds("service_s", service)?)))
        }
        _ => Ok(None),
    }
}

/// Parses `text` against the config's model `names` (slot order). Besides
/// trace lines it reads llmux's own JSON log: its access lines become
/// requests (in arrival order, from the first arrival on), every other
/// log line is skipped.
pub fn parse(text: &str, names: &[String]) -> Result<Workload, String> {
    let mut w = Workload { backends: vec![Backend::default(); names.len()], ..Workload::default() };
    let mut last = 0.0_f64;
    let mut first = true;
    let mut logged: Vec<(f64, String, f64)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.contains("\"target\"") && line.contains("\"level\"") {
            logged.extend(access_request(line).map_err(|e| format!("line {n}: {e}"))?);
            first = false;
            continue;
        }
        if std::mem::take(&mut first) && line.contains("\"models\"") {
            let header: Header<'_> = serde_json::from_str(line).map_err(|e| format!("line {n}: {e}"))?;
            apply_header(&mut w, header, names).map_err(|e| format!("line {n}: {e}"))?;
            continue;
        }
        let r: RequestLine<'_> = serde_json::from_str(line).map_err(|e| format!("line {n}: {e}"))?;
        check_request(&r, last).map_err(|e| format!("line {n}: {e}"))?;
        last = r.t;
        match names.iter().position(|m| *m == r.model) {
            Some(slot) => w.requests.push(Request {
                at: Time::from_secs_f64(r.t),
                model: slot as u32,
                service: Duration::from_secs_f64(r.service_secs),
                timeout: r.timeout_secs.map(Duration::from_secs_f64),
                follows: None,
            }),
            None => *w.unknown.entry(r.model.into_owned()).or_default() += 1,
        }
    }
    add_logged(&mut w, logged, names);
    Ok(w)
}

/// Access-log requests, which are written as they finish: sorted by
/// arrival, timed from the first.
fn add_logged(w: &mut Workload, mut logged: Vec<(f64, String, f64)>, names: &[String]) {
    logged.sort_by(|a, b| a.0.total_cmp(&b.0));
    let start = logged.first().map_or(0.0, |r| r.0);
    for (at, model, service) in logged {
        match names.iter().position(|m| *m == model) {
            Some(slot) => w.requests.push(Request {
                at: Time::from_secs_f64(at - start),
                model: slot as u32,
                service: Duration::from_secs_f64(service),
                timeout: None,
                follows: None,
            }),
            None => *w.unknown.entry(model).or_default() += 1,
        }
    }
    w.requests.sort_by_key(|r| r.at);
}

/// A number of seconds a trace may give: finite, not negative, at most a
/// year.
fn seconds(key: &str, v: f64) -> Result<f64, String> {
    if v.is_finite() && (0.0..=365.0 * 86_400.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{key}: must be a number of seconds between 0 and a year, not {v}"))
    }
}

fn check_request(r: &RequestLine<'_>, last: f64) -> Result<(), String> {
    seconds("t", r.t)?;
    seconds("service_secs", r.service_secs)?;
    if let Some(t) = r.timeout_secs {
        seconds("timeout_secs", t)?;
    }
    if r.t < last {
        return Err(format!("t decreases ({} after {last}): a trace is in arrival order", r.t));
    }
    Ok(())
}

fn apply_header(w: &mut Workload, header: Header<'_>, names: &[String]) -> Result<(), String> {
    for (name, b) in header.models {
        let Some(slot) = names.iter().position(|m| *m == name) else {
            w.warnings.push(format!("the trace's header names `{name}`, which the config does not have"));
            continue;
        };
        let backend = &mut w.backends[slot];
        if let Some(s) = b.wake_secs {
            backend.wake = Duration::from_secs_f64(seconds(&format!("models.{name}.wake_secs"), s)?);
        }
        if let Some(s) = b.sleep_secs {
            backend.sleep = Duration::from_secs_f64(seconds(&format!("models.{name}.sleep_secs"), s)?);
        }
        match b.concurrency {
            Some(0) => return Err(format!("models.{name}.concurrency: must be at least 1")),
            Some(c) => backend.concurrency = c,
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["a".to_owned(), "b".to_owned()]
    }

    #[test]
    fn reads_the_header_and_the_requests() {
        let text = "{\"models\": {\"a\": {\"wake_secs\": 30, \"concurrency\": 8}}}\n\n\
                    {\"t\": 1.5, \"model\": \"a\", \"service_secs\": 2}\n\
                    {\"t\": 1.5, \"model\": \"b\", \"service_secs\": 0.5, \"timeout_secs\": 4}\n";
        let w = parse(text, &names()).expect("parses");
        assert_eq!(w.backends[0].wake, Duration::from_secs(30));
        assert_eq!(w.backends[0].concurrency, 8);
        assert_eq!(w.backends[0].sleep, Duration::from_secs(2));
        assert_eq!(w.backends[1], Backend::default());
        assert_eq!(w.requests.len(), 2);
        assert_eq!(w.requests[1].model, 1);
        assert_eq!(w.requests[1].timeout, Some(Duration::from_secs(4)));
        assert_eq!(w.requests[0].at, Time::from_micros(1_500_000));
    }

    #[test]
    fn errors_name_their_line() {
        let bad = |text: &str, needle: &str| {
            let e = parse(text, &names()).expect_err(text);
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
        };
        let ok = "{\"t\": 1, \"model\": \"a\", \"service_secs\": 1}\n";
        bad(&format!("{ok}{ok}{{\"t\": 2, \"model\": \"a\"\n"), "line 3");
        bad(&format!("{ok}\n{{\"t\": 0.5, \"model\": \"a\", \"service_secs\": 1}}\n"), "line 3: t decreases");
        bad(&format!("{ok}{{\"t\": 2, \"model\": \"a\", \"service_secs\": -1}}\n"), "line 2: service_secs");
        bad(&format!("{ok}{{\"t\": 2, \"model\": \"a\", \"service_secs\": 1, \"x\": 1}}\n"), "line 2: unknown field");
        bad("{\"models\": {\"a\": {\"concurrency\": 0}}}\n", "line 1: models.a.concurrency");
        bad(&format!("{ok}{{\"models\": {{}}}}\n"), "line 2");
    }

    #[test]
    fn llmux_access_log_lines_are_read_as_requests_in_arrival_order() {
        let log = concat!(
            r#"{"timestamp":"x","level":"INFO","fields":{"message":"listening"},"target":"llmux"}"#,
            "\n",
            r#"{"timestamp":"x","level":"INFO","fields":{"message":"access","model":"b","arrival":1000.5,"service_s":2.0,"status":200},"target":"llmux::access"}"#,
            "\n",
            r#"{"timestamp":"x","level":"INFO","fields":{"message":"access","model":"a","arrival":1000.0,"service_s":0.5},"target":"llmux::access"}"#,
            "\n",
            r#"{"timestamp":"x","level":"INFO","fields":{"message":"access","model":"-","arrival":1001.0,"service_s":0.0},"target":"llmux::access"}"#,
            "\n",
        );
        let w = parse(log, &names()).expect("a log");
        let got: Vec<(u64, u32, u128)> =
            w.requests.iter().map(|r| (r.at.micros(), r.model, r.service.as_millis())).collect();
        assert_eq!(got, [(0, 0, 500), (500_000, 1, 2000)], "sorted by arrival, from the first");
    }

    #[test]
    fn unknown_models_are_counted_by_name() {
        let text = "{\"models\": {\"zz\": {}}}\n\
                    {\"t\": 1, \"model\": \"x\", \"service_secs\": 1}\n\
                    {\"t\": 2, \"model\": \"x\", \"service_secs\": 1}\n\
                    {\"t\": 3, \"model\": \"a\", \"service_secs\": 1}\n";
        let w = parse(text, &names()).expect("parses");
        assert_eq!(w.requests.len(), 1);
        assert_eq!(w.unknown.get("x"), Some(&2));
        assert_eq!(w.warnings.len(), 1);
    }
}
