//! End to end against a real model server: llmux in front of two
//! llama-server instances (two aliases of one small GGUF), switched by the
//! hooks users copy from `examples/llama-cpp/`.
//!
//! A second llmux then runs three aliases with `capacity: 2`: two stay
//! resident together, and a third evicts the idle one while the busy one
//! keeps streaming.
//!
//! Needs `tests/real/install.sh`. Without it the suite says it skipped (a
//! line on the terminal, not silence); with `LLMUX_REQUIRE_REAL=1` (CI,
//! `tests/real/run.sh`) a missing install fails instead. Everything runs in
//! one test, in sequence: the servers share the machine's two cores.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};

use crate::support::http::{self, Reply};
use crate::support::{start_llmux_with_env, Hooks, Process};

const MODELS: [&str; 2] = ["gemma-a", "gemma-b"];

/// The capacity case's models, each of size 1 in a capacity of 2.
const THREE: [&str; 3] = ["gemma-a", "gemma-b", "gemma-c"];

/// Writes to the terminal even though libtest captures test output.
fn say(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// `LLAMA_SERVER` and `LLMUX_REAL_MODEL` from the installer's env file.
fn installed() -> Option<Vec<(String, String)>> {
    let cache = std::env::var_os("LLMUX_REAL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/llmux-real")))?;
    let text = std::fs::read_to_string(cache.join("env")).ok()?;
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect();
    let present = |k: &str| vars.iter().any(|(name, v)| name == k && Path::new(v).exists());
    (present("LLAMA_SERVER") && present("LLMUX_REAL_MODEL")).then_some(vars)
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Wraps each example hook so every run is logged with nanosecond stamps
/// (and, as the harness's hooks do, to `hooks.times` for
/// `Hooks::assert_within_capacity`).
const WRAP: &str = r#"#!/bin/sh
kind="$1"; m="$LLMUX_MODEL"
log() { t="$(date +%s.%N)"; echo "$1 $m $(echo "$t" | tr -d .)" >> hooks.log; echo "$t $1 $m" >> hooks.times; }
log "$kind-start"
"$EXAMPLE_HOOKS/$kind.sh"; rc=$?
if [ $rc -eq 0 ]; then log "$kind-end"; else log "$kind-fail"; fi
exit $rc
"#;

/// The llmux set-up under test; stops every llama-server on drop.
struct Real {
    llmux: Process,
    hooks: Hooks,
    models: Vec<&'static str>,
    ports: Vec<u16>,
    env: Vec<(String, String)>,
    example_hooks: PathBuf,
}

impl Real {
    fn start(env: Vec<(String, String)>) -> Real {
        Real::start_with(env, &MODELS, "")
    }

    /// llmux in front of `models`, with `extra` top-level config lines.
    fn start_with(env: Vec<(String, String)>, models: &[&'static str], extra: &str) -> Real {
        let hooks = Hooks::new();
        let dir = hooks.path().to_path_buf();
        let example_hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/llama-cpp/hooks");
        std::fs::write(dir.join("wrap.sh"), WRAP).expect("wrap");
        let ports: Vec<u16> = models.iter().map(|_| free_port()).collect();
        // FIFO: the suite's switch sequences (measure_switches alternates
        // from the model the concurrent load ended on) assume it.
        let mut config = format!(
            "host: 127.0.0.1\nport: 0\n{extra}policy:\n  request_timeout_secs: 120\n  scheduler: fifo\nmodels:\n"
        );
        // Each model's llama-server flags come from its `env`, as in the
        // example's config. No prompt cache: answers through llmux are
        // compared with the same request sent to the server directly, and
        // a cached prompt could make the second one differ in its last bits.
        // One thread each: two or three servers share the machine's two
        // cores with the tests, and llama.cpp's threads spin while they wait.
        for (m, port) in models.iter().zip(&ports) {
            config.push_str(&format!(
                "  {m}:\n    port: {port}\n    wake: sh wrap.sh wake\n    sleep: sh wrap.sh sleep\n    alive: {}/alive.sh\n    env: {{LLAMA_SERVER_ARGS: \"--no-cache-prompt -c 2048\", LLAMA_THREADS: 1}}\n",
                example_hooks.display()
            ));
        }
        let config_path = dir.join("llmux.yaml");
        std::fs::write(&config_path, config).expect("config");
        let mut extra = env.clone();
        extra.push(("EXAMPLE_HOOKS".into(), example_hooks.display().to_string()));
        extra.push(("LLMUX_STATE_DIR".into(), dir.join("state").display().to_string()));
        let llmux = start_llmux_with_env(&config_path, &extra);
        Real { llmux, hooks, models: models.to_vec(), ports, env: extra, example_hooks }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.llmux.addr)
    }

    fn backend_url(&self, model: &str, path: &str) -> String {
        let i = self.models.iter().position(|m| *m == model).expect("model");
        format!("http://127.0.0.1:{}{path}", self.ports[i])
    }
}

impl Drop for Real {
    fn drop(&mut self) {
        // llama-server runs in its own session: stop it with the sleep hook.
        for (m, port) in self.models.iter().zip(&self.ports) {
            let _ = Command::new(self.example_hooks.join("sleep.sh"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("LLMUX_MODEL", m)
                .env("LLMUX_PORT", port.to_string())
                .status();
        }
    }
}

fn completion_body(model: &str, stream: bool, max_tokens: u32) -> String {
    json!({"model": model, "prompt": "The capital of France is", "max_tokens": max_tokens, "temperature": 0, "stream": stream})
        .to_string()
}

fn chat_body(model: &str, stream: bool, max_tokens: u32) -> String {
    json!({
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "max_tokens": max_tokens, "temperature": 0, "stream": stream, "model": model,
    })
    .to_string()
}

async fn post_ok(url: &str, body: &str) -> Value {
    let r: Reply = http::post(url, body).await;
    assert_eq!(r.status, 200, "{url}: {}", r.text());
    r.json()
}

/// The text and the frame arrival times of an SSE response.
async fn stream(url: &str, body: &str) -> (String, Vec<Instant>) {
    let response = http::send(Method::POST, url, &[("content-type", "application/json")], body.to_owned()).await;
    assert_eq!(response.status(), 200);
    let frames = http::frames(response).await;
    let mut text = String::new();
    for (_, data) in &frames {
        for line in String::from_utf8_lossy(data).lines() {
            let Some(payload) = line.strip_prefix("data: ") else { continue };
            if let Ok(event) = serde_json::from_str::<Value>(payload) {
                let choice = &event["choices"][0];
                text.push_str(choice["delta"]["content"].as_str().or(choice["text"].as_str()).unwrap_or(""));
            }
        }
    }
    (text, frames.iter().map(|(t, _)| *t).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn real_backend_suite() {
    let Some(env) = installed() else {
        let required = std::env::var_os("LLMUX_REQUIRE_REAL").is_some();
        assert!(!required, "LLMUX_REQUIRE_REAL is set but the real backend is not installed");
        say("real-backend suite skipped: llama-server not installed (run tests/real/run.sh)");
        return;
    };
    let real = Real::start(env);
    answers_match_the_backend(&real).await;
    models_are_listed(&real).await;
    a_disconnect_cancels_the_generation(&real).await;
    switches_under_concurrent_load_answer_everything(&real).await;
    measure_switches(&real, 10).await;
    real.hooks.assert_never_two_awake();
    drop(real);
    let budget = Real::start_with(installed().expect("still installed"), &THREE, "capacity: 2\n");
    two_resident_and_a_third_evicts_the_idle_one(&budget).await;
}

async fn answers_match_the_backend(real: &Real) {
    let m = "gemma-a";
    let via = post_ok(&real.url("/v1/chat/completions"), &chat_body(m, false, 16)).await;
    let direct = post_ok(&real.backend_url(m, "/v1/chat/completions"), &chat_body(m, false, 16)).await;
    let content = |v: &Value| v["choices"][0]["message"]["content"].as_str().map(str::to_owned);
    assert!(content(&via).is_some_and(|c| !c.is_empty()), "{via}");
    assert_eq!(content(&via), content(&direct));
    assert_eq!(via["usage"]["completion_tokens"], direct["usage"]["completion_tokens"]);
    assert_eq!(via["choices"][0]["finish_reason"], direct["choices"][0]["finish_reason"]);
    assert_eq!(via["model"], m);

    let via = post_ok(&real.url("/v1/completions"), &completion_body(m, false, 8)).await;
    let direct = post_ok(&real.backend_url(m, "/v1/completions"), &completion_body(m, false, 8)).await;
    assert_eq!(via["choices"][0]["text"], direct["choices"][0]["text"]);
    assert_eq!(via["usage"]["completion_tokens"], 8);

    let (streamed, times) = stream(&real.url("/v1/chat/completions"), &chat_body(m, true, 16)).await;
    let (direct_streamed, _) = stream(&real.backend_url(m, "/v1/chat/completions"), &chat_body(m, true, 16)).await;
    assert_eq!(streamed, direct_streamed);
    assert_eq!(Some(streamed), content(&post_ok(&real.url("/v1/chat/completions"), &chat_body(m, false, 16)).await));
    // Incremental: many frames, spread over the generation.
    assert!(times.len() >= 8, "only {} frames", times.len());
    let spread = *times.last().expect("frames") - times[0];
    assert!(spread > Duration::from_millis(20), "frames arrived together ({spread:?})");
}

async fn models_are_listed(real: &Real) {
    let list = http::get(&real.url("/v1/models")).await.json();
    let ids: Vec<_> = list["data"].as_array().expect("data").iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids, MODELS.map(Value::from));
}

async fn a_disconnect_cancels_the_generation(real: &Real) {
    let m = "gemma-a";
    let body = chat_body(m, true, 1500);
    let response = http::send(Method::POST, &real.url("/v1/chat/completions"), &[], body).await;
    let mut body = response.into_body();
    for _ in 0..3 {
        body.frame().await.expect("a frame").expect("frame ok");
    }
    assert!(slot_busy(real, m).await, "the generation should be running");
    drop(body);
    let dropped = Instant::now();
    while slot_busy(real, m).await {
        assert!(dropped.elapsed() < Duration::from_secs(2), "generation still running 2 s after the disconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say(&format!("real: generation cancelled {:?} after the client disconnected", dropped.elapsed()));
}

async fn slot_busy(real: &Real, model: &str) -> bool {
    let slots = http::get(&real.backend_url(model, "/slots")).await.json();
    slots.as_array().expect("slots").iter().any(|s| s["is_processing"] == true)
}

async fn switches_under_concurrent_load_answer_everything(real: &Real) {
    let mut tasks = Vec::new();
    for i in 0..12 {
        let m = MODELS[(i / 2) % 2];
        let (url, body) = (real.url("/v1/chat/completions"), chat_body(m, i % 3 == 0, 4));
        tasks.push(tokio::spawn(async move { (m, http::post(&url, &body).await) }));
    }
    for task in tasks {
        let (m, reply) = task.await.expect("task");
        assert_eq!(reply.status, 200, "{m}: {}", reply.text());
        assert!(reply.text().contains(m), "{m} answered by someone else: {}", reply.text());
    }
    let switches = real.hooks.events().iter().filter(|e| e.starts_with("wake-end")).count();
    assert!(switches >= 2, "{:?}", real.hooks.events());
}

/// Switch time end to end (request for the sleeping model until its first
/// byte), split into the hooks' share and the rest.
async fn measure_switches(real: &Real, n: usize) {
    let mut totals = Vec::new();
    let mut hooks = Vec::new();
    let mut sleeps = Vec::new();
    let mut first_token = Vec::new();
    for i in 0..n {
        let m = MODELS[(i + 1) % 2];
        let before = real.hooks.events().len();
        let started = Instant::now();
        let (_, times) = stream(&real.url("/v1/completions"), &completion_body(m, true, 1)).await;
        let total = times[0] - started;
        let events = real.hooks.events();
        let stamp = |prefix: &str| -> Option<u64> {
            events[before..]
                .iter()
                .find(|e| e.starts_with(prefix))
                .and_then(|e| e.split_whitespace().nth(2)?.parse().ok())
        };
        let other = MODELS[i % 2];
        let (Some(s0), Some(s1), Some(w0), Some(w1)) = (
            stamp(&format!("sleep-start {other}")),
            stamp(&format!("sleep-end {other}")),
            stamp(&format!("wake-start {m}")),
            stamp(&format!("wake-end {m}")),
        ) else {
            panic!("switch {i} to {m} did not run both hooks: {:?}", &events[before..]);
        };
        // Time to first byte of the same request on the now-warm backend.
        let warm_start = Instant::now();
        let (_, warm) = stream(&real.backend_url(m, "/v1/completions"), &completion_body(m, true, 1)).await;
        totals.push(total);
        hooks.push(Duration::from_nanos((s1 - s0) + (w1 - w0)));
        sleeps.push(Duration::from_nanos(s1 - s0));
        first_token.push(warm[0] - warm_start);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (total, hook, ttft) = (median(&mut totals), median(&mut hooks), median(&mut first_token));
    let sleep = median(&mut sleeps);
    let rest = total.saturating_sub(hook).saturating_sub(ttft);
    say(&format!(
        "real: {n} switches, medians: end to end {total:?} = hooks {hook:?} (sleep {sleep:?}) + backend first token {ttft:?} + llmux and hook spawn {rest:?}"
    ));
    assert!(hook < total);
}

/// A completion that runs `tokens` tokens whatever the model would say
/// (`ignore_eos`), so a stream lasts long enough to overlap a switch.
fn long_completion_body(model: &str, tokens: u32) -> String {
    json!({"model": model, "prompt": "Once upon a time", "max_tokens": tokens, "temperature": 0,
           "stream": true, "ignore_eos": true})
    .to_string()
}

/// An SSE response's text, each data event's arrival in nanoseconds since
/// the epoch (the hook log's clock), and the last `finish_reason` seen.
async fn stream_on_the_wall_clock(url: &str, body: &str) -> (String, Vec<u128>, Option<String>) {
    let response = http::send(Method::POST, url, &[("content-type", "application/json")], body.to_owned()).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let (mut text, mut times, mut finish) = (String::new(), Vec::new(), None);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.expect("a frame").into_data() else { continue };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
        for line in String::from_utf8_lossy(&data).lines() {
            let Some(payload) = line.strip_prefix("data: ") else { continue };
            if let Ok(event) = serde_json::from_str::<Value>(payload) {
                text.push_str(event["choices"][0]["text"].as_str().unwrap_or(""));
                if let Some(reason) = event["choices"][0]["finish_reason"].as_str() {
                    finish = Some(reason.to_owned());
                }
                times.push(now);
            }
        }
    }
    (text, times, finish)
}

/// The chat answer of `model` through llmux, checked against the same
/// request sent to its llama-server directly.
async fn answers_like_its_backend(real: &Real, model: &str) {
    let via = post_ok(&real.url("/v1/chat/completions"), &chat_body(model, false, 12)).await;
    let direct = post_ok(&real.backend_url(model, "/v1/chat/completions"), &chat_body(model, false, 12)).await;
    let content = |v: &Value| v["choices"][0]["message"]["content"].as_str().map(str::to_owned);
    assert!(content(&via).is_some_and(|c| !c.is_empty()), "{model}: {via}");
    assert_eq!((content(&via), &via["model"]), (content(&direct), &json!(model)), "{model}");
}

/// `capacity: 2`, every size 1: gemma-a and gemma-b are woken side by side
/// (no sleep at all) and both answer as their servers do; then, while
/// gemma-a streams, a request for gemma-c evicts the idle gemma-b (its
/// sleep ends before gemma-c's wake starts), gemma-a's stream keeps flowing
/// while gemma-c wakes, and afterwards gemma-a and gemma-c both answer
/// correctly. The hook log never holds more than two servers.
async fn two_resident_and_a_third_evicts_the_idle_one(real: &Real) {
    let sizes = THREE.map(|m| (m, 1.0));
    answers_like_its_backend(real, "gemma-a").await;
    answers_like_its_backend(real, "gemma-b").await;
    answers_like_its_backend(real, "gemma-a").await;
    let words = |events: Vec<String>| -> Vec<String> {
        events.iter().map(|e| e.split_whitespace().take(2).collect::<Vec<_>>().join(" ")).collect()
    };
    assert_eq!(
        words(real.hooks.events()),
        ["wake-start gemma-a", "wake-end gemma-a", "wake-start gemma-b", "wake-end gemma-b"],
        "two models that fit: nothing slept"
    );
    let health = http::get(&real.url("/health")).await.json();
    let state = |h: &Value, m: &str| {
        h["models"].as_array().expect("models").iter().find(|e| e["id"] == m).expect("listed")["state"].clone()
    };
    assert_eq!([state(&health, "gemma-a"), state(&health, "gemma-b")], [json!("active"), json!("active")]);

    // gemma-a busy with a long stream; gemma-c asked for meanwhile.
    let body = long_completion_body("gemma-a", 200);
    let url = real.url("/v1/completions");
    let streaming = tokio::spawn(async move { stream_on_the_wall_clock(&url, &body).await });
    let busy = Instant::now();
    while !slot_busy(real, "gemma-a").await {
        assert!(busy.elapsed() < Duration::from_secs(20), "gemma-a never started generating");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    answers_like_its_backend(real, "gemma-c").await;
    let (text, times, finish) = streaming.await.expect("stream task");
    assert_eq!(finish.as_deref(), Some("length"), "gemma-a's stream was cut after {} events: {text:?}", times.len());
    assert!(times.len() >= 100, "only {} events", times.len());
    let (direct, _, _) = stream_on_the_wall_clock(
        &real.backend_url("gemma-a", "/v1/completions"),
        &long_completion_body("gemma-a", 200),
    )
    .await;
    assert_eq!(text, direct, "gemma-a's stream differs from its server's");

    let events = real.hooks.events();
    assert_eq!(
        words(events.clone())[4..],
        ["sleep-start gemma-b", "sleep-end gemma-b", "wake-start gemma-c", "wake-end gemma-c"],
        "the idle gemma-b is the one evicted"
    );
    let stamp = |event: &str| -> u128 {
        let line = events.iter().find(|e| e.starts_with(event)).unwrap_or_else(|| panic!("no {event}: {events:?}"));
        line.split_whitespace().nth(2).and_then(|t| t.parse().ok()).expect("a stamp")
    };
    let (woke, woken) = (stamp("wake-start gemma-c"), stamp("wake-end gemma-c"));
    let during = times.iter().filter(|&&t| t > woke && t < woken).count();
    assert!(during > 0, "no token of gemma-a arrived while gemma-c woke ({} ms)", (woken - woke) / 1_000_000);
    answers_like_its_backend(real, "gemma-a").await;
    answers_like_its_backend(real, "gemma-c").await;
    let health = http::get(&real.url("/health")).await.json();
    assert_eq!(THREE.map(|m| state(&health, m)), [json!("active"), json!("asleep"), json!("active")], "{health}");
    assert_eq!(real.hooks.assert_within_capacity(&sizes, 2.0), 2.0);
    say(&format!(
        "real: capacity 2: gemma-b evicted for gemma-c; {during} of gemma-a's {} stream events arrived during gemma-c's {} ms wake",
        times.len(),
        (woken - woke) / 1_000_000
    ));
}
