//! `multipart/form-data` requests (audio uploads): routed by their `model`
//! form field and forwarded byte for byte; malformed or ambiguous forms
//! are refused with 400 and never forwarded.

use std::time::Duration;

use hyper::Method;

use crate::support::backend::{assert_untouched, fnv1a64};
use crate::support::http::{self, chat};
use crate::support::mux;

const BOUNDARY: &str = "----llmuxFormBoundary7MA4YWxkTrZu0gW";
const TRANSCRIBE: &str = "/v1/audio/transcriptions";

/// A form with these text fields and one file part of `file` bytes.
fn form(fields: &[(&str, &str)], file: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"speech.wav\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes());
    body.extend_from_slice(file);
    for (name, value) in fields {
        body.extend_from_slice(
            format!("\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}").as_bytes(),
        );
    }
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Audio-like bytes: a WAV header, then noise with CRs, LFs and dashes.
fn audio(len: usize) -> Vec<u8> {
    let mut bytes = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
    let mut x: u32 = 12345;
    while bytes.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        bytes.push((x >> 16) as u8);
    }
    bytes
}

fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// A 6 MB upload for `b` while `a` is active: `a` is put to sleep, `b`
/// woken, and `b`'s stand-in receives the form whole: the same fields and
/// sizes, the same bytes.
#[tokio::test]
async fn a_six_megabyte_upload_switches_models_and_arrives_whole() {
    let mux = mux().model("a").model("b").start();
    let r = http::post(&mux.url("/v1/chat/completions"), &chat("a")).await;
    assert_eq!(r.served_by(), "a");
    let file = audio(6 << 20);
    let body = form(&[("model", "b"), ("language", "en"), ("response_format", "json")], &file);
    let ct = content_type();
    let r = http::request(Method::POST, &mux.url(TRANSCRIBE), &[("content-type", ct.as_str())], body.clone()).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "b"), "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(echo["body_fnv64"], fnv1a64(&body), "the form was not forwarded byte for byte");
    let fields: Vec<(String, u64, Option<String>)> = echo["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap_or("").to_owned(),
                f["size"].as_u64().unwrap_or(0),
                f["value"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            ("file".to_owned(), file.len() as u64, None),
            ("model".to_owned(), 1, Some("b".to_owned())),
            ("language".to_owned(), 2, Some("en".to_owned())),
            ("response_format".to_owned(), 4, Some("json".to_owned())),
        ]
    );
    let events = mux.hooks.events();
    let at = |e: &str| events.iter().position(|x| x == e).unwrap_or_else(|| panic!("no {e} in {events:?}"));
    assert!(at("sleep-end a") < at("wake-start b"), "{events:?}");
}

/// The raw request for a form `body` on `path`, with `content_type`.
fn raw_form(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    [head.as_bytes(), body].concat()
}

/// Forms that are malformed, have no `model` field or two, or carry a bad
/// boundary get 400 `invalid_body` in OpenAI's shape, saying what is
/// wrong, and reach no backend.
#[tokio::test]
async fn malformed_or_ambiguous_forms_are_refused_and_never_forwarded() {
    let mux = mux().model("a").up_at_start("a").start();
    mux.wait_state("a", "active").await;
    let ct = content_type();
    let unclosed = {
        let mut body = form(&[("model", "a")], b"x");
        body.truncate(body.len() - (BOUNDARY.len() + 8));
        body
    };
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (ct.clone(), form(&[("language", "en")], b"x"), "no `model` field"),
        (ct.clone(), form(&[("model", "a"), ("model", "a")], b"x"), "more than one `model` field"),
        (ct.clone(), unclosed, "not closed by a boundary"),
        (ct.clone(), b"no boundary here".to_vec(), "has no `--"),
        (ct.clone(), format!("--{BOUNDARY}\r\nBad Header\r\n\r\nx\r\n--{BOUNDARY}--").into_bytes(), "malformed header"),
        ("multipart/form-data".to_owned(), form(&[("model", "a")], b"x"), "without a boundary"),
        ("multipart/form-data; boundary=\"\"".to_owned(), form(&[("model", "a")], b"x"), "boundary"),
    ];
    for (content_type, body, words) in cases {
        let reply =
            http::raw(&mux.llmux.addr, &raw_form(TRANSCRIBE, &content_type, &body), Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{words}: {reply}");
        let json = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let e: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|_| panic!("not JSON: {reply}"));
        assert_eq!(
            (e["error"]["code"].as_str(), e["error"]["type"].as_str()),
            (Some("invalid_body"), Some("invalid_request_error")),
            "{reply}"
        );
        let message = e["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(words), "{words}: {message}");
    }
    // An unknown model in the form: 404, as for JSON.
    let r = http::request(
        Method::POST,
        &mux.url(TRANSCRIBE),
        &[("content-type", ct.as_str())],
        form(&[("model", "zz")], b"x"),
    )
    .await;
    r.assert_error(404, "model_not_found");
    assert_untouched(mux.backend("a")).await;
}

/// A form sent as JSON (a client that forgot its Content-Type) is routed
/// by its `model` field if it has one; without one, the 400 says the body
/// looks like multipart/form-data.
#[tokio::test]
async fn a_form_sent_as_json_is_routed_or_named_for_what_it_is() {
    let mux = mux().model("a").start();
    let body = form(&[("model", "a")], b"audio");
    let r =
        http::request(Method::POST, &mux.url(TRANSCRIBE), &[("content-type", "application/json")], body.clone()).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
    let r = http::request(
        Method::POST,
        &mux.url("/v1/chat/completions"),
        &[("content-type", "application/json")],
        form(&[("x", "1")], b"audio"),
    )
    .await;
    r.assert_error(400, "invalid_body");
    let message = r.json()["error"]["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains("looks like multipart/form-data") && message.contains("application/json"), "{message}");
    // One naming an unknown model is 404, as a JSON body would be.
    let r = http::request(
        Method::POST,
        &mux.url(TRANSCRIBE),
        &[("content-type", "application/json")],
        form(&[("model", "zz")], b"audio"),
    )
    .await;
    r.assert_error(404, "model_not_found");
}
