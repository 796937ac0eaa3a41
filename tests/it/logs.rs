//! `--log-format`: JSON lines a log shipper can read, with one summary per
//! switch and hook output tagged by model and hook; text stays the default.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::backend::free_port;
use crate::support::http::{self, chat, chat_stream, Reply};
use crate::support::{mux, standin, Mux, PATIENCE};

const CHAT: &str = "/v1/chat/completions";

/// Every log line as JSON, failing the test on one that is not an object.
fn json_lines(log: &str) -> Vec<Value> {
    let parse = |l: &str| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    let lines: Vec<Value> = log.lines().filter(|l| !l.trim().is_empty()).map(parse).collect();
    for line in &lines {
        assert!(line.is_object(), "not an object: {line}");
    }
    lines
}

/// Field `name` of a JSON log line: the event's own, else its spans'.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    let spans = line["spans"].as_array().into_iter().flatten();
    [&line["fields"], &line["span"]].into_iter().chain(spans).map(|s| &s[name]).find(|v| !v.is_null())
}

/// A field as text, whether logged as a string (`%`) or debug-quoted (`?`).
fn text(line: &Value, name: &str) -> String {
    let v = field(line, name).unwrap_or_else(|| panic!("no field {name} in {line}"));
    v.as_str().map_or_else(|| v.to_string(), |s| s.trim_matches('"').to_owned())
}

/// True if field `name` holds a whole number of milliseconds.
fn is_ms(line: &Value, name: &str) -> bool {
    field(line, name).is_some_and(|v| v.is_u64() || v.as_str().is_some_and(|s| s.parse::<u64>().is_ok()))
}

/// Waits until some JSON log line satisfies `check`; returns every line.
async fn wait_json_line(mux: &Mux, what: &str, check: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = json_lines(&mux.log());
        if lines.iter().any(&check) {
            return lines;
        }
        assert!(Instant::now() < deadline, "no log line for {what}:\n{}", mux.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With `--log-format json` every line is a JSON object with timestamp,
/// level, target and message, and each switch logs one `switch done` line
/// with its endpoints and phase timings.
#[tokio::test]
async fn json_logs_are_objects_with_one_summary_per_switch() {
    let mux = mux().model("a").model("b").args(&["--log-format", "json"]).start();
    for model in ["a", "b"] {
        assert_eq!(http::post(&mux.url(CHAT), &chat(model)).await.served_by(), model);
    }
    let done = |l: &Value| l["fields"]["message"] == "switch done";
    let lines = wait_json_line(&mux, "the switch a -> b", |l| done(l) && text(l, "to") == "b").await;
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line[key].is_string(), "no {key} in {line}");
        }
        assert!(line["fields"]["message"].is_string(), "no message in {line}");
    }
    let switches: Vec<&Value> = lines.iter().filter(|l| done(l)).collect();
    assert_eq!(switches.len(), 2, "{switches:?}");
    let a_to_b = switches.iter().find(|l| text(l, "to") == "b").expect("the switch to b");
    assert_eq!(text(a_to_b, "from"), "a", "{a_to_b}");
    for key in ["drain_ms", "sleep_ms", "wake_ms"] {
        assert!(is_ms(a_to_b, key), "{key} in {a_to_b}");
    }
}

/// Hook output is logged line by line at info level, tagged with its model
/// and hook.
#[tokio::test]
async fn hook_output_is_logged_with_its_model_and_hook() {
    let mux = mux().model("a").args(&["--log-format", "json"]).start();
    assert_eq!(http::post(&mux.url(CHAT), &chat("a")).await.served_by(), "a");
    let output = |l: &Value| l["fields"]["message"] == "hook output" && text(l, "hook") == "wake";
    let lines = wait_json_line(&mux, "the wake hook's output", output).await;
    let line = lines.iter().find(|l| output(l)).expect("hook output line");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!((text(line, "model"), text(line, "line")), ("a".to_owned(), "running wake for a".to_owned()));
}

/// Text is the default format (and may be named); an unknown format is a
/// usage error: exit code 2 and nothing served.
#[tokio::test]
async fn text_is_the_default_log_format_and_unknown_ones_exit_2() {
    let mux = mux().model("a").args(&["--log-format", "text"]).start();
    assert_eq!(http::post(&mux.url(CHAT), &chat("a")).await.served_by(), "a");
    let log = mux.wait_log("listening").await;
    assert!(log.lines().all(|l| serde_json::from_str::<Value>(l).is_err()), "JSON in a text log:\n{log}");
    let config = mux.config_path.with_file_name("other.yaml");
    let text = format!(
        "host: 127.0.0.1\nport: 0\nmodels:\n  a:\n    port: {}\n    wake: w\n    sleep: s\n    alive: a\n",
        free_port()
    );
    std::fs::write(&config, text).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .arg("--log-format")
        .arg("xml")
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn llmux");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("llmux ran with --log-format xml");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.code(), Some(2));
}

/// Per-request lines are at debug level: none at the default `info`, and
/// with `RUST_LOG=llmux=debug` one per request, carrying its request id
/// and status.
#[tokio::test]
async fn per_request_lines_are_debug_only() {
    let quiet = mux().model("a").env("RUST_LOG", "info").args(&["--log-format", "json"]).start();
    let loud = mux().model("a").args(&["--log-format", "json"]).start();
    for mux in [&quiet, &loud] {
        let r = http::post(&mux.url(CHAT), &chat("a")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let id = http::post(&loud.url(CHAT), &chat("a")).await.header("x-request-id").expect("an id").to_owned();
    let is_request = |l: &Value| text(l, "message") == "request";
    let lines = wait_json_line(&loud, "a request", |l| is_request(l) && text(l, "request_id") == id).await;
    let line = lines.iter().find(|l| is_request(l) && text(l, "request_id") == id).expect("the line");
    assert_eq!(text(line, "status"), "200", "{line}");
    // The quiet llmux logged its switch at info, but no request line.
    wait_json_line(&quiet, "the switch", |l| text(l, "message") == "switch done").await;
    assert!(!json_lines(&quiet.log()).iter().any(is_request), "{}", quiet.log());
}

/// The access-log lines (target `llmux::access`) of request `id`.
fn access_lines(log: &str, id: &str) -> Vec<Value> {
    json_lines(log).into_iter().filter(|l| l["target"] == "llmux::access" && text(l, "request_id") == id).collect()
}

/// Waits for request `id`'s access line and returns it, failing the test
/// unless there is exactly one.
async fn access_line(mux: &Mux, id: &str) -> Value {
    let is_it = |l: &Value| l["target"] == "llmux::access" && text(l, "request_id") == id;
    wait_json_line(mux, id, is_it).await;
    let mut lines = access_lines(&mux.log(), id);
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines.remove(0)
}

/// A numeric field of a JSON log line.
fn number(line: &Value, name: &str) -> f64 {
    field(line, name).and_then(Value::as_f64).unwrap_or_else(|| panic!("no number {name} in {line}"))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs_f64()
}

/// Asserts the fields every access line of a served chat request has.
fn assert_served_line(line: &Value, model: &str, body: &str, bytes_out: usize) {
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(field(line, "status"), Some(&Value::from(200)), "{line}");
    for (key, value) in [("model", model), ("method", "POST"), ("path", CHAT)] {
        assert_eq!(text(line, key), value, "{line}");
    }
    assert_eq!(number(line, "bytes_in"), body.len() as f64, "{line}");
    assert_eq!(number(line, "bytes_out"), bytes_out as f64, "{line}");
    let (queue, ttfb, duration) = (number(line, "queue_s"), number(line, "ttfb_s"), number(line, "duration_s"));
    assert!(0.0 <= queue && queue <= ttfb && ttfb <= duration, "{line}");
    assert!((number(line, "service_s") - (duration - queue)).abs() < 1e-6, "{line}");
}

/// A plain request that waited for its model's wake and a streamed one
/// served at once each log exactly one access line when they finish:
/// status, model, bytes in and out, the wait for the switch (the time
/// the wake was held, or about nothing), and the stream's whole duration.
#[tokio::test]
async fn each_request_logs_one_access_line_when_it_finishes() {
    let mux = mux().model("a").args(&["--log-format", "json"]).start();
    let before = unix_now();
    mux.hooks.set("hold-wake-a");
    let body = chat("a");
    let headers = [("x-request-id", "queued-1"), ("content-type", "application/json")];
    // The request arrives before the wake starts and is admitted after
    // the hold ends: it waits at least as long as the wake is held.
    let release = async {
        mux.hooks.wait_for("wake-start a").await;
        let held = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        mux.hooks.clear("hold-wake-a");
        held.elapsed().as_secs_f64()
    };
    let url = mux.url(CHAT);
    let (reply, held) = tokio::join!(http::request(hyper::Method::POST, &url, &headers, body.clone()), release);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let line = access_line(&mux, "queued-1").await;
    assert_served_line(&line, "a", &body, reply.body.len());
    assert_eq!(field(&line, "switch"), Some(&Value::Bool(true)), "{line}");
    assert!(number(&line, "queue_s") >= held, "held {held}: {line}");
    let arrival = number(&line, "arrival");
    assert!(before - 1.0 <= arrival && arrival <= unix_now(), "{line}");

    let stream = chat_stream("a");
    let headers = [("x-request-id", "stream-1"), ("x-standin-chunks", "4"), ("x-standin-chunk-ms", "100")];
    let response = http::send(hyper::Method::POST, &mux.url(CHAT), &headers, stream.clone()).await;
    let received: usize = http::frames(response).await.iter().map(|(_, data)| data.len()).sum();
    let line = access_line(&mux, "stream-1").await;
    assert_served_line(&line, "a", &stream, received);
    assert_eq!(field(&line, "switch"), Some(&Value::Bool(false)), "{line}");
    assert!(number(&line, "queue_s") < 0.1, "{line}");
    // Three pauses between chunks: the line came when the stream ended.
    assert!(number(&line, "duration_s") >= 0.29, "{line}");
    assert!(number(&line, "ttfb_s") < number(&line, "duration_s") - 0.2, "{line}");
}

/// An error llmux answers itself logs one access line with its status
/// (no configured model: `-`); `access_log: false` logs none, and a reload
/// turns the log back on.
#[tokio::test]
async fn errors_are_logged_and_access_log_false_logs_nothing() {
    let mux = mux().model("a").config("access_log: false").args(&["--log-format", "json"]).start();
    assert_eq!(send(&mux, "quiet-200", "a").await.status, 200);
    assert_eq!(send(&mux, "quiet-404", "nope").await.status, 404);
    let config = std::fs::read_to_string(&mux.config_path).expect("config");
    mux.write_config(&config.replace("access_log: false", "access_log: true"));
    assert_eq!(mux.reload().await.status, 200);
    let reply = send(&mux, "loud-404", "nope").await;
    reply.assert_error(404, "model_not_found");
    let line = access_line(&mux, "loud-404").await;
    assert_eq!(field(&line, "status"), Some(&Value::from(404)), "{line}");
    assert_eq!(text(&line, "model"), "-", "{line}");
    assert_eq!(number(&line, "bytes_out"), reply.body.len() as f64, "{line}");
    assert_eq!(field(&line, "switch"), Some(&Value::Bool(false)), "{line}");
    // Both earlier requests had finished before the reload.
    let log = mux.log();
    for id in ["quiet-200", "quiet-404"] {
        assert!(access_lines(&log, id).is_empty(), "{id} logged:\n{log}");
    }
}

/// A chat request for `model` with request id `id`.
async fn send(mux: &Mux, id: &str, model: &str) -> Reply {
    let headers = [("x-request-id", id), ("content-type", "application/json")];
    http::request(hyper::Method::POST, &mux.url(CHAT), &headers, chat(model)).await
}

/// llmux in `dir` on `models` (name, backend port, up at start), whose
/// alive hooks print to stderr as curl does, logging JSON at `info`.
fn start_at_info(dir: &std::path::Path, models: &[(&str, u16, bool)], extra: &str) -> crate::support::Process {
    let mut config = format!("host: 127.0.0.1\nport: 0\n{extra}models:\n");
    for (m, port, up) in models {
        if *up {
            std::fs::write(dir.join(format!("up-{m}")), "").expect("up");
        }
        config.push_str(&format!(
            "  {m}:\n    port: {port}\n    wake: touch up-{m}\n    sleep: rm -f up-{m}\n    alive: 'test -f up-{m} || {{ echo ''curl: (7) Failed to connect to 127.0.0.1 port {port}'' >&2; exit 7; }}'\n"
        ));
    }
    let path = dir.join("llmux.yaml");
    std::fs::write(&path, config).expect("config");
    let env = [("RUST_LOG".to_owned(), "info".to_owned())];
    crate::support::start_llmux_with(&path, &env, &["--log-format", "json"])
}

/// The messages of the info (and louder) lines llmux logged in `dir`, in
/// order, once start-up has ended (the adoption line is there).
async fn start_up_messages(dir: &std::path::Path) -> Vec<(String, String)> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = std::fs::read_to_string(dir.join("llmux.log")).unwrap_or_default();
        let lines = json_lines(&log);
        let ended = |l: &Value| {
            let m = text(l, "message");
            m.starts_with("adopted ") || m.starts_with("no model is running")
        };
        if lines.iter().any(ended) {
            let level = |l: &Value| l["level"].as_str().unwrap_or_default().to_owned();
            return lines.iter().map(|l| (level(l), text(l, "message"))).collect();
        }
        assert!(Instant::now() < deadline, "start-up never ended:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Start-up at the default level: each model whose `alive` failed is one
/// info line, "model X is down" (its hook's stderr is not there), then one
/// line names every model adopted (two here, with a capacity of 2).
#[tokio::test]
async fn start_up_says_which_models_are_down_and_which_were_adopted() {
    let (a, b, c) = (standin("a"), standin("b"), standin("c"));
    let dir = tempfile::tempdir().expect("tempdir");
    let models = [("a", a.port(), true), ("b", b.port(), false), ("c", c.port(), true)];
    let _llmux = start_at_info(dir.path(), &models, "capacity: 2\n");
    let messages = start_up_messages(dir.path()).await;
    let expected = [
        ("INFO", "listening"),
        ("INFO", "model b is down"),
        ("INFO", "adopted a, c: already running, active without a wake"),
    ];
    let got: Vec<(&str, &str)> = messages.iter().map(|(l, m)| (l.as_str(), m.as_str())).collect();
    assert_eq!(got, expected);
}

/// With nothing running, one line says none is active and llmux waits.
#[tokio::test]
async fn start_up_with_nothing_running_says_so_once() {
    let (a, b) = (standin("a"), standin("b"));
    let dir = tempfile::tempdir().expect("tempdir");
    let llmux = start_at_info(dir.path(), &[("a", a.port(), false), ("b", b.port(), false)], "");
    let messages = start_up_messages(dir.path()).await;
    let got: Vec<&str> = messages.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        got,
        [
            "listening",
            "model a is down",
            "model b is down",
            "no model is running: none is active, llmux waits for requests"
        ]
    );
    assert!(messages.iter().all(|(level, _)| level == "INFO"), "{messages:?}");
    // The first request wakes its model as usual.
    let r = http::post(&format!("http://{}{CHAT}", llmux.addr), &chat("b")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"), "{}", r.text());
}
