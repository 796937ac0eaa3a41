//! `llmux simulate` against the real binary (issue 12, the short version
//! of `benches/sim_vs_real.py`): one generated trace of 40 requests for
//! two models, simulated and replayed through real llmux processes in
//! front of `llmux-standin --concurrency 2` backends, with hooks that only
//! cost time (wake 1 s, sleep 0.2 s). Switches and the mean wait must
//! agree under both policies (the scheduler sees service time from
//! admission, as the simulator measures it).
//!
//! Tolerances: switches within 10 % or ±1, whichever is wider (a count
//! near 20 moves by one when a single arrival lands a few milliseconds
//! either side of a publish); the mean wait within 20 % or 0.5 s absolute,
//! whichever is wider (the real wait carries what the simulator leaves
//! out: the hook's spawn and the `alive` confirm, a few ms per switch, and
//! loopback HTTP; and cost_aware re-decides on a 250 ms recheck, so one
//! decision taken a recheck later moves every waiter behind it by up to
//! 250 ms: small against waits of seconds, not against a few hundred ms).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{standin_with, start_llmux, Process};

const MODELS: [&str; 2] = ["a", "b"];
const WAKE: &str = "1";
const SLEEP: &str = "0.2";
const CONCURRENCY: &str = "2";

/// One request of the trace: when (s), which model, service (ms).
#[derive(Debug, Clone, Copy)]
struct Req {
    at_ms: u64,
    model: usize,
    service_ms: u64,
}

/// 40 requests, Poisson at 0.8/s (about 41 s), 55 % for `a`, services of
/// 0.2–1 s: a fixed xorshift, so every run replays the same trace (16
/// switches under fifo, 12 under cost_aware in the simulator: enough for
/// either policy's order to show).
fn trace() -> Vec<Req> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut t = 0.0;
    (0..40)
        .map(|_| {
            t += -(1.0 - uniform()).ln() / 0.8;
            let model = usize::from(uniform() >= 0.55);
            let service_ms = 200 + (uniform() * 800.0) as u64;
            Req { at_ms: (t * 1000.0) as u64, model, service_ms }
        })
        .collect()
}

fn trace_file(reqs: &[Req]) -> String {
    let header: serde_json::Map<String, Value> = MODELS
        .iter()
        .map(|m| {
            let spec = serde_json::json!({
                "wake_secs": WAKE.parse::<f64>().expect("wake"),
                "sleep_secs": SLEEP.parse::<f64>().expect("sleep"),
                "concurrency": CONCURRENCY.parse::<u64>().expect("concurrency"),
            });
            ((*m).to_owned(), spec)
        })
        .collect();
    let mut text = serde_json::json!({ "models": header }).to_string() + "\n";
    for r in reqs {
        let line = serde_json::json!({
            "t": r.at_ms as f64 / 1000.0,
            "model": MODELS[r.model],
            "service_secs": r.service_ms as f64 / 1000.0,
        });
        text += &(line.to_string() + "\n");
    }
    text
}

fn config_yaml(dir: &Path, backends: &[Process], policy: &str) -> String {
    let up = dir.join("up-$LLMUX_MODEL");
    let up = up.display();
    let mut c = String::from("host: 127.0.0.1\nport: 0\nmodels:\n");
    for (m, b) in MODELS.iter().zip(backends) {
        c += &format!(
            "  {m}:\n    port: {}\n    wake: 'sleep {WAKE}; touch {up}'\n    sleep: 'sleep {SLEEP}; rm -f {up}'\n    alive: 'test -f {up}'\n",
            b.port()
        );
    }
    c + &format!("policy:\n  scheduler: {policy}\n  request_timeout_secs: 300\n")
}

/// One blocking HTTP/1.1 exchange on a fresh connection: (status, body).
fn exchange(addr: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(300))).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn post(addr: &str, model: &str, service_ms: u64) -> u16 {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "standin_service_ms": service_ms,
    })
    .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, &request).0
}

fn switches_done(addr: &str) -> u64 {
    let (status, body) = exchange(addr, &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"));
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with("llmux_switches_total{") && l.contains("result=\"done\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What a run gave: switches, mean wait (latency − service, s), served.
#[derive(Debug, Clone, Copy)]
struct Figures {
    switches: u64,
    wait: f64,
    served: u64,
}

/// `llmux simulate --json` on `config` and `trace_path` for `policy`; the
/// wait as latency − service, as the replay measures it.
fn simulated(config: &Path, trace_path: &Path, policy: &str, reqs: &[Req]) -> Figures {
    let out = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .arg("simulate")
        .arg("-c")
        .arg(config)
        .arg("--trace")
        .arg(trace_path)
        .args(["--policy", policy, "--json"])
        .output()
        .expect("run llmux simulate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let models = line["models"].as_object().expect("models");
    let n: f64 = models.values().map(|m| m["n"].as_f64().expect("n")).sum();
    let latency: f64 = models
        .values()
        .map(|m| m["latency"]["mean"].as_f64().expect("mean") * m["n"].as_f64().expect("n"))
        .sum::<f64>()
        / n;
    let service = reqs.iter().map(|r| r.service_ms as f64 / 1000.0).sum::<f64>() / reqs.len() as f64;
    Figures {
        switches: line["switches"].as_u64().expect("switches"),
        wait: latency - service,
        served: line["served"].as_u64().expect("served"),
    }
}

/// The trace through real llmux: each request sent at its trace time.
fn replayed(config: &Path, reqs: &[Req]) -> Figures {
    let llmux = start_llmux(config);
    let addr = llmux.addr.clone();
    let start = Instant::now();
    let results: Vec<(u16, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = reqs
            .iter()
            .map(|r| {
                // Scheduling, not synchronisation: the trace says when.
                let at = start + Duration::from_millis(r.at_ms);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let addr = addr.as_str();
                s.spawn(move || {
                    let sent = Instant::now();
                    let status = post(addr, MODELS[r.model], r.service_ms);
                    (status, sent.elapsed().as_secs_f64() - r.service_ms as f64 / 1000.0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("request thread")).collect()
    });
    let switches = switches_done(&addr);
    drop(llmux);
    let waits: Vec<f64> = results.iter().filter(|(status, _)| *status == 200).map(|&(_, w)| w).collect();
    Figures { switches, wait: waits.iter().sum::<f64>() / waits.len().max(1) as f64, served: waits.len() as u64 }
}

/// Simulates and replays the trace under `policy`, in its own directory
/// with its own stand-ins.
fn compare(policy: &str, reqs: &[Req]) -> (Figures, Figures) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backends: Vec<Process> = MODELS.iter().map(|m| standin_with(m, &["--concurrency", CONCURRENCY])).collect();
    let config = dir.path().join("llmux.yaml");
    std::fs::write(&config, config_yaml(dir.path(), &backends, policy)).expect("write config");
    let trace_path = dir.path().join("trace.jsonl");
    std::fs::write(&trace_path, trace_file(reqs)).expect("write trace");
    let sim = simulated(&config, &trace_path, policy, reqs);
    let real = replayed(&config, reqs);
    (sim, real)
}

/// Simulates and replays the trace under `policy` and checks the
/// tolerances (module docs).
fn agrees(policy: &str) {
    let reqs = trace();
    let (sim, real) = compare(policy, &reqs);
    let n = reqs.len() as u64;
    let switch_slack = (sim.switches as f64 * 0.10).max(1.0);
    let wait_slack = (sim.wait * 0.20).max(0.5);
    let report = format!("{policy}: simulated {sim:?}, real {real:?}");
    eprintln!("{report}");
    let mut failures = Vec::new();
    if sim.served != n || real.served != n {
        failures.push("not every request was served".to_owned());
    }
    if (real.switches as f64 - sim.switches as f64).abs() > switch_slack {
        failures.push(format!("switches differ by more than {switch_slack:.1}"));
    }
    if (real.wait - sim.wait).abs() > wait_slack {
        failures.push(format!("mean wait differs by more than {wait_slack:.3} s"));
    }
    assert!(failures.is_empty(), "{report}: {failures:?}");
}

// The two tests run side by side (each with its own llmux and stand-ins),
// so the pair takes the trace's length once, about 45 s.

#[test]
fn the_simulator_agrees_with_the_real_binary_under_fifo() {
    agrees("fifo");
}

/// This one was out of tolerance (10 real switches against 12 simulated)
/// until the machine counted the waiters a published model takes from its
/// queue as in flight: the simulator answers a publish with their
/// admissions at once, the real executor a moment later, and in between
/// cost_aware saw a model with nobody in flight and left it.
#[test]
fn the_simulator_agrees_with_the_real_binary_under_cost_aware() {
    agrees("cost_aware");
}
