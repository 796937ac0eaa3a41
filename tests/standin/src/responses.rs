//! The JSON bodies: completions (chat and text, not streamed; the streamed
//! chunks are in [`crate::sse`]), embeddings, models, health, the
//! `/standin/*` stats and request list, the `x-standin-echo` echo, and
//! OpenAI-style error bodies. Also the few request-body fields looked at.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::Request;
use crate::state::State;

pub const HEALTH_OK: &[u8] = br#"{"status":"ok"}"#;
pub const HEALTH_LOADING: &[u8] = br#"{"status":"loading"}"#;

pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn to_json_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn model_object(model: &str) -> Value {
    json!({"id": model, "object": "model", "created": 0, "owned_by": "llmux-standin"})
}

/// `GET /v1/models`.
pub fn models_json(model: &str) -> Vec<u8> {
    to_json_vec(&json!({"object": "list", "data": [model_object(model)]}))
}

/// `GET /v1/models/ID` of the served model.
pub fn model_json(model: &str) -> Vec<u8> {
    to_json_vec(&model_object(model))
}

// ---------------------------------------------------------------- errors

pub fn error_json(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    to_json_vec(&json!({
        "error": {"message": message, "type": kind, "param": param, "code": code}
    }))
}

/// The body of `x-standin-status: CODE`.
pub fn status_error(status: u16) -> Vec<u8> {
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    error_json(&format!("status {status} injected by x-standin-status"), kind, None, Some("standin_injected"))
}

pub fn method_not_allowed(allow: &str) -> Vec<u8> {
    error_json(&format!("method not allowed; use {allow}"), "invalid_request_error", None, Some("method_not_allowed"))
}

pub fn bad_fault_header(message: &str) -> Vec<u8> {
    error_json(message, "invalid_request_error", None, Some("bad_standin_header"))
}

pub fn loading(model: &str) -> Vec<u8> {
    error_json(&format!("model {model} is still loading"), "server_error", None, Some("model_loading"))
}

pub fn unknown_path(path: &str) -> Vec<u8> {
    error_json(&format!("unknown path {path}"), "invalid_request_error", None, Some("unknown_url"))
}

pub fn model_not_found(model: &str) -> Vec<u8> {
    error_json(
        &format!("model {model} not served here"),
        "invalid_request_error",
        Some("model"),
        Some("model_not_found"),
    )
}

// ---------------------------------------------------------- request body

/// The few request-body fields the stand-in looks at; everything else is
/// skipped without being materialised.
#[derive(Deserialize)]
pub struct BodyInfo {
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    stream: Option<Value>,
    #[serde(default)]
    stream_options: Option<Value>,
    #[serde(default)]
    standin_service_ms: Option<Value>,
}

impl BodyInfo {
    /// `None` unless the body is a JSON object.
    pub fn parse(body: &[u8]) -> Option<BodyInfo> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' {
            return None;
        }
        serde_json::from_slice(body).ok()
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_ref().and_then(Value::as_str)
    }

    pub fn stream(&self) -> bool {
        matches!(self.stream, Some(Value::Bool(true)))
    }

    /// `"standin_service_ms": N`, the body's own `x-standin-delay-ms`;
    /// `Err` (the message of a 400) unless N is a non-negative integer.
    pub fn service_ms(&self) -> Result<Option<u64>, String> {
        match &self.standin_service_ms {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("invalid standin_service_ms {v}: expected a non-negative integer")),
        }
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false)
    }
}

/// The body of an inference request must name the served model.
pub fn check_model(state: &State, info: Option<&BodyInfo>) -> Result<(), (u16, Vec<u8>)> {
    let Some(info) = info else {
        return Err((400, error_json("request body must be a JSON object", "invalid_request_error", None, None)));
    };
    match info.model.as_ref() {
        Some(Value::String(m)) if *m == state.model => Ok(()),
        Some(Value::String(m)) => Err((404, model_not_found(m))),
        _ => Err((
            400,
            error_json("you must provide a model parameter (a string)", "invalid_request_error", Some("model"), None),
        )),
    }
}

// ----------------------------------------------------------- inference

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// One completion, answered whole or streamed.
pub struct Completion<'a> {
    pub state: &'a State,
    pub kind: Kind,
    pub id: u64,
    pub created: u64,
    pub prompt_tokens: u64,
    pub include_usage: bool,
}

impl<'a> Completion<'a> {
    pub fn new(state: &'a State, kind: Kind, req: &Request, info: Option<&BodyInfo>) -> Self {
        Completion {
            state,
            kind,
            id: state.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            created: unix_now(),
            prompt_tokens: prompt_tokens(req),
            include_usage: info.is_some_and(BodyInfo::include_usage),
        }
    }

    /// The whole (not streamed) answer.
    pub fn json(&self) -> String {
        let st = self.state;
        let c = st.completion_tokens;
        let p = self.prompt_tokens;
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion",
                format!(
                    r#"{{"index":0,"message":{{"role":"assistant","content":{}}},"logprobs":null,"finish_reason":"stop"}}"#,
                    st.content_json
                ),
            ),
            Kind::Text => (
                "text_completion",
                format!(r#"{{"index":0,"text":{},"logprobs":null,"finish_reason":"stop"}}"#, st.content_json),
            ),
        };
        format!(
            r#"{{"id":"cmpl-{}","object":"{object}","created":{},"model":{},"choices":[{choice}],"usage":{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{}}}}}"#,
            self.id,
            self.created,
            st.model_json,
            p + c
        )
    }
}

/// A token per four body bytes, at least one.
fn prompt_tokens(req: &Request) -> u64 {
    (req.body.len() as u64 / 4).max(1)
}

/// `POST /v1/embeddings`.
pub fn embeddings_json(state: &State, req: &Request) -> String {
    let p = prompt_tokens(req);
    format!(
        r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3]}}],"model":{},"usage":{{"prompt_tokens":{p},"total_tokens":{p}}}}}"#,
        state.model_json
    )
}

// ------------------------------------------------------ echo and stand-in

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `x-standin-echo: 1`: what arrived.
pub fn echo_json(state: &State, req: &Request, path: &str, query: Option<&str>) -> Vec<u8> {
    let headers: Vec<Value> = req
        .headers()
        .map(|(n, v)| json!([String::from_utf8_lossy(n).to_ascii_lowercase(), String::from_utf8_lossy(v)]))
        .collect();
    to_json_vec(&json!({
        "model": state.model,
        "method": req.method(),
        "path": path,
        "query": query,
        "headers": headers,
        "body_len": req.body.len(),
        "body_fnv64": format!("{:016x}", fnv1a64(&req.body)),
    }))
}

/// `GET /standin/stats`.
pub fn stats_json(state: &State) -> Vec<u8> {
    use std::sync::atomic::Ordering::SeqCst;
    to_json_vec(&json!({
        "requests": state.requests.load(SeqCst),
        "cancelled": state.cancelled.load(SeqCst),
        "in_flight": state.in_flight.load(SeqCst),
        "max_held": state.max_held.load(SeqCst),
        "connections": state.connections.load(SeqCst),
    }))
}

/// `GET /standin/requests`.
pub fn requests_json(state: &State) -> Vec<u8> {
    let items: Vec<Value> = state
        .recent
        .lock()
        .iter()
        .map(|r| {
            json!({
                "method": r.method,
                "path": r.path,
                "model": r.model,
                "request_id": r.request_id,
                "body_len": r.body_len,
            })
        })
        .collect();
    to_json_vec(&Value::Array(items))
}
