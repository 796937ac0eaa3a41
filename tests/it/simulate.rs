//! `llmux simulate`: the real binary on a small trace, its JSON output
//! checked figure by figure, and its errors.

use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_llmux");

const CONFIG: &str = "\
models:
  a:
    port: 9101
    wake: 'exit 1'
    sleep: 'exit 1'
    alive: 'exit 1'
  b:
    port: 9102
    wake: 'exit 1'
    sleep: 'exit 1'
    alive: 'exit 1'
";

/// Writes the config and `trace` in a fresh directory and runs
/// `llmux simulate -c CONFIG --trace TRACE ARGS`.
fn simulate(name: &str, trace: &str, args: &[&str]) -> Output {
    let dir = std::env::temp_dir().join(format!("llmux-simulate-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("c.yaml"), CONFIG).expect("write config");
    std::fs::write(dir.join("t.jsonl"), trace).expect("write trace");
    let out = Command::new(BIN)
        .arg("simulate")
        .arg("-c")
        .arg(dir.join("c.yaml"))
        .arg("--trace")
        .arg(dir.join("t.jsonl"))
        .args(args)
        .output()
        .expect("run llmux simulate");
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn a_small_trace_gives_the_expected_json() {
    let trace = "{\"models\": {\"b\": {\"wake_secs\": 20, \"sleep_secs\": 1}}}\n\
                 {\"t\": 0, \"model\": \"a\", \"service_secs\": 1}\n\
                 {\"t\": 0, \"model\": \"b\", \"service_secs\": 2}\n\
                 {\"t\": 0.5, \"model\": \"b\", \"service_secs\": 1, \"timeout_secs\": 3}\n\
                 {\"t\": 1, \"model\": \"ghost\", \"service_secs\": 1}\n";
    let out = simulate("json", trace, &["--json", "--policy", "fifo", "--policy", "cost_aware", "--slo", "30"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("ghost"), "the unknown model is warned about: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let fifo = &lines[0];
    assert_eq!(fifo["policy"], "fifo");
    assert_eq!(
        (fifo["requests"].as_u64(), fifo["served"].as_u64(), fifo["timed_out"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    // a: woken 0..10 (default wake), served 10..11; b: a sleeps 11..13
    // (default sleep), b wakes 13..33, served 33..35.
    assert_eq!(fifo["switches"], 2);
    assert_eq!(fifo["switching_secs"], 33.0);
    assert_eq!(fifo["models"]["a"]["wait"]["max"], 10.0);
    assert_eq!(fifo["models"]["b"]["wait"]["max"], 33.0);
    assert_eq!(fifo["models"]["b"]["latency"]["max"], 35.0);
    assert_eq!(fifo["goodput"], 1, "b's 35 s is past the 30 s SLO");
    assert_eq!(fifo["unknown_models"]["ghost"], 1);
    assert_eq!(lines[1]["policy"], "cost_aware");
    let again = simulate("again", trace, &["--json", "--policy", "fifo", "--policy", "cost_aware", "--slo", "30"]);
    assert_eq!(again.stdout, out.stdout, "the same input prints the same bytes");
}

#[test]
fn a_malformed_trace_is_an_error_naming_its_line() {
    let trace = "{\"t\": 0, \"model\": \"a\", \"service_secs\": 1}\n{\"t\": 0, \"model\": \"a\"}\n";
    let out = simulate("bad", trace, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
}
