//! `policy.stream_wait_feedback`: a streaming request that has to wait for
//! a switch gets `200` and `text/event-stream` at once, SSE comments while
//! it waits, then the backend's stream unchanged, or one error event.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Response};
use serde_json::Value;

use crate::support::http::{self, chat, chat_stream};
use crate::support::{mux, Mux, PATIENCE};

/// What a client that gives up after `silence` without a byte reads: the
/// whole body, or a panic naming the silence.
async fn read_giving_up_after(response: Response<Incoming>, silence: Duration) -> String {
    let mut body = response.into_body();
    let mut out = Vec::new();
    loop {
        let frame = tokio::time::timeout(silence, body.frame()).await.unwrap_or_else(|_| {
            panic!("{silence:?} without a byte: the client gave up after {:?}", String::from_utf8_lossy(&out))
        });
        match frame {
            None => return String::from_utf8_lossy(&out).into_owned(),
            Some(frame) => {
                if let Ok(data) = frame.expect("a frame").into_data() {
                    out.extend_from_slice(&data);
                }
            }
        }
    }
}

/// The SSE events of a body, split at blank lines.
fn events(text: &str) -> Vec<&str> {
    text.split_terminator("\n\n").collect()
}

/// The events before the first that is not a comment, and the rest.
fn comments_then_data<'a>(events: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let n = events.iter().take_while(|e| e.starts_with(':')).count();
    (events[..n].to_vec(), events[n..].to_vec())
}

/// A streaming chat request for `model`, with `headers`; the response head.
async fn start_stream(mux: &Mux, model: &str, headers: &[(&str, &str)]) -> Response<Incoming> {
    http::send(Method::POST, &mux.url("/v1/chat/completions"), headers, chat_stream(model)).await
}

/// A chunk's JSON without the fields that differ from answer to answer.
fn comparable(event: &str) -> Value {
    let payload = event.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {event:?}"));
    if payload == "[DONE]" {
        return Value::from("[DONE]");
    }
    let mut chunk: Value = serde_json::from_str(payload).unwrap_or_else(|e| panic!("{e}: {payload}"));
    if let Some(object) = chunk.as_object_mut() {
        object.remove("id");
        object.remove("created");
    }
    chunk
}

/// What `model`'s stand-in streams for the same request, asked directly.
async fn straight_from_the_backend(mux: &Mux, model: &str) -> Vec<Value> {
    let url = format!("http://{}/v1/chat/completions", mux.backend(model).addr);
    let reply = http::post(&url, &chat_stream(model)).await;
    assert_eq!(reply.status, 200);
    events(&reply.text()).iter().map(|e| comparable(e)).collect()
}

fn feedback_mux(models: &[&str]) -> crate::support::Builder {
    let mut builder = mux();
    for m in models {
        builder = builder.model(m);
    }
    builder.up_at_start(models[0]).policy("stream_wait_feedback: true").policy("stream_wait_feedback_secs: 1")
}

/// A client that gives up after 2 s of silence streams through a 5 s
/// wake: the head at once, a comment every second, then exactly the
/// stand-in's own events.
#[tokio::test]
async fn a_stream_that_waits_gets_comments_then_the_backend_stream() {
    let mux = feedback_mux(&["a", "b"]).start();
    mux.wait_state("a", "active").await;
    mux.hooks.set_to("delay-wake-b", "5");
    let started = Instant::now();
    let head = tokio::time::timeout(Duration::from_secs(2), start_stream(&mux, "b", &[])).await;
    let response = head.expect("the head within 2 s, before the wake ends");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = read_giving_up_after(response, Duration::from_secs(2)).await;
    assert!(started.elapsed() >= Duration::from_secs(5), "the wake took 5 s, the stream {:?}", started.elapsed());
    let all = events(&text);
    let (comments, data) = comments_then_data(&all);
    assert!(comments.len() >= 4, "a comment a second over 5 s: {comments:?}");
    for c in &comments {
        assert!(c.starts_with(": waiting for model b, position 1, "), "{c:?}");
    }
    let ours: Vec<Value> = data.iter().map(|e| comparable(e)).collect();
    assert_eq!(ours, straight_from_the_backend(&mux, "b").await, "the backend's events, unchanged:\n{text}");
    assert_eq!(ours.last(), Some(&Value::from("[DONE]")));
    assert!(ours.iter().any(|c| c["model"] == "b"), "b's stand-in served it: {ours:?}");
    mux.hooks.wait_for("wake-end b").await;
}

/// The one data event that ends a stream whose wait failed, parsed.
fn the_error_event(text: &str) -> Value {
    let all = events(text);
    let (comments, data) = comments_then_data(&all);
    assert!(comments.iter().all(|c| c.starts_with(": waiting for model b")), "{text}");
    assert_eq!(data.len(), 1, "one error event and the end: {text:?}");
    let error: Value = serde_json::from_str(data[0].strip_prefix("data: ").expect("a data event")).expect("JSON");
    assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    error
}

/// A failed wake ends the stream with one `data:` error event (and no
/// `[DONE]`); while the model backs off, the next streaming request gets
/// the usual 503 at once, not a stream.
#[tokio::test]
async fn a_failed_wake_ends_the_stream_with_one_error_event() {
    let mux = feedback_mux(&["a", "b"]).args(&["--log-format", "json"]).start();
    mux.wait_state("a", "active").await;
    mux.hooks.set("fail-wake-b");
    let response = start_stream(&mux, "b", &[("x-request-id", "failed-wake")]).await;
    assert_eq!(response.status(), 200);
    let error = the_error_event(&read_giving_up_after(response, PATIENCE).await);
    assert_eq!(error["error"]["code"], "model_unavailable", "{error}");
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    let again = http::request(Method::POST, &mux.url("/v1/chat/completions"), &[], chat_stream("b")).await;
    again.assert_error(503, "model_unavailable");
    assert!(again.header("retry-after").is_some());
    let log = mux.log();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["target"] == "llmux::access" && l["fields"]["request_id"] == "failed-wake")
        .unwrap_or_else(|| panic!("no access line:\n{log}"));
    assert_eq!(line["fields"]["status"], 503, "{line}");
    assert_eq!(line["fields"]["model"], "b", "{line}");
}

/// A wait past `request_timeout_secs` and a backend that answers with an
/// error status end the stream with one error event each: llmux's 504,
/// and the backend's own error JSON.
#[tokio::test]
async fn a_timeout_or_a_backend_error_ends_the_stream_with_one_error_event() {
    let mux = feedback_mux(&["a", "b"]).policy("request_timeout_secs: 1").start();
    mux.wait_state("a", "active").await;
    mux.hooks.set_to("delay-wake-b", "3");
    let response = start_stream(&mux, "b", &[]).await;
    assert_eq!(response.status(), 200);
    let error = the_error_event(&read_giving_up_after(response, PATIENCE).await);
    assert_eq!(error["error"]["code"], "model_wait_timeout", "{error}");
    mux.hooks.wait_for("wake-end b").await;
    mux.hooks.clear("delay-wake-b");
    // b is active now; a request for a waits for the switch back.
    let response = start_stream(&mux, "a", &[("x-standin-status", "400")]).await;
    assert_eq!(response.status(), 200);
    let text = read_giving_up_after(response, PATIENCE).await;
    let (_, data) = comments_then_data(&events(&text));
    assert_eq!(data.len(), 1, "{text}");
    let error: Value = serde_json::from_str(&data[0]["data: ".len()..]).expect("JSON");
    assert_eq!(error["error"]["code"], "standin_injected", "the backend's own error: {error}");
}

/// Without `"stream": true`, for a model that is active, and for a model
/// whose own `stream_wait_feedback: false` overrides the policy, nothing
/// changes: JSON stays JSON, and a stream starts with the backend's data.
#[tokio::test]
async fn requests_without_feedback_are_unchanged() {
    let mux = feedback_mux(&["a", "b", "c"]).model_line("c", "stream_wait_feedback: false").start();
    mux.wait_state("a", "active").await;
    let active = start_stream(&mux, "a", &[]).await;
    assert_eq!(active.status(), 200);
    let text = read_giving_up_after(active, PATIENCE).await;
    assert!(text.starts_with("data: "), "served at once, no comment: {text:?}");
    mux.hooks.set_to("delay-wake-b", "2");
    let plain = http::post(&mux.url("/v1/chat/completions"), &chat("b")).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-type"), Some("application/json"));
    assert_eq!(plain.json()["model"], "b");
    assert_eq!(plain.served_by(), "b");
    let off = start_stream(&mux, "c", &[]).await;
    assert_eq!(off.status(), 200);
    assert_eq!(off.headers()["x-standin-model"], "c", "the backend's own head");
    let text = read_giving_up_after(off, PATIENCE).await;
    assert!(text.starts_with("data: "), "c waited silently: {text:?}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text:?}");
}

/// The OpenAI Python SDK streams through a 3 s wait with a 2 s read
/// timeout (which the comments keep from striking) and sees exactly the
/// stand-in's chunks: the comments are invisible to it. Skipped when the
/// `openai` package is not installed (`pip install openai`).
#[tokio::test]
async fn openais_python_sdk_ignores_the_comments() {
    if !python_has_openai() {
        eprintln!("openai SDK test skipped: `python3 -c 'import openai'` failed (pip install openai)");
        return;
    }
    let mux = feedback_mux(&["a", "b"]).start();
    mux.wait_state("a", "active").await;
    mux.hooks.set_to("delay-wake-b", "3");
    let url = mux.url("/v1");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").arg("-c").arg(SDK_SCRIPT).arg(url).arg("b").output()
    });
    let out = tokio::time::timeout(PATIENCE, out).await.expect("python in time").expect("join").expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let sdk: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("a chunk as JSON")).collect();
    let comparable_sdk: Vec<Value> = sdk.into_iter().map(|c| comparable(&format!("data: {c}"))).collect();
    let mut expected = straight_from_the_backend(&mux, "b").await;
    assert_eq!(expected.pop(), Some(Value::from("[DONE]")), "the SDK does not hand [DONE] on");
    assert_eq!(comparable_sdk, expected);
    assert!(mux.hooks.events().iter().any(|e| e == "wake-end b"), "it went through the 3 s wake");
}

fn python_has_openai() -> bool {
    std::process::Command::new("python3").args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success())
}

/// Streams a chat completion with the SDK and prints each chunk it yields
/// as one JSON line (`model_dump` with the fields the server sent).
const SDK_SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=2.0)
stream = client.chat.completions.create(model=sys.argv[2], stream=True, messages=[{"role": "user", "content": "hi"}])
for chunk in stream:
    print(json.dumps(chunk.model_dump(exclude_unset=True)))
"#;
