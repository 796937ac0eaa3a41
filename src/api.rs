//! The endpoints llmux answers itself: `/health`, `/metrics` and
//! `/v1/models` (the control API is [`crate::control`]).

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde_json::{json, Value};

use crate::error::Error;
use crate::response::ResponseBody;
use crate::state::Shared;

/// `GET /health`: the resident models in wake order, and every model's
/// state and queue depth, in config order. `active` (the resident woken
/// last) stays for compatibility; `resident` replaces it.
pub fn health(shared: &Shared) -> Response<ResponseBody> {
    let catalog = shared.catalog();
    let resident: Vec<&str> = shared.resident_models().into_iter().map(|m| catalog.name(m)).collect();
    let active = resident.last().copied();
    let models: Vec<Value> = catalog
        .live()
        .map(|(_, m, s)| json!({ "id": m.name, "state": s.state().as_str(), "queued": s.waiting() }))
        .collect();
    let (status, code) = match (shared.is_switch_task_dead(), shared.shutdown.is_started()) {
        (true, _) => ("switch_task_dead", hyper::StatusCode::SERVICE_UNAVAILABLE),
        (false, true) => ("shutting_down", hyper::StatusCode::OK),
        (false, false) => ("ok", hyper::StatusCode::OK),
    };
    let mut response =
        json_response(&json!({ "status": status, "active": active, "resident": resident, "models": models }));
    *response.status_mut() = code;
    response
}

/// `GET /v1/models`: OpenAI's list shape, in config order, each model
/// followed by its aliases unless `list_aliases` is off.
pub fn list_models(shared: &Shared) -> Response<ResponseBody> {
    let catalog = shared.catalog();
    let aliases = catalog.config.list_aliases;
    let data: Vec<Value> = catalog
        .live()
        .flat_map(|(_, m, _)| {
            let listed = if aliases { m.aliases.as_slice() } else { &[] };
            std::iter::once(&m.name).chain(listed).map(|name| model_object(name))
        })
        .collect();
    json_response(&json!({ "object": "list", "data": data }))
}

/// `GET /v1/models/{id}`: one model, or 404.
pub fn one_model(shared: &Shared, encoded_id: &str) -> Result<Response<ResponseBody>, Error> {
    let id = percent_decode(encoded_id);
    match shared.catalog().lookup(&id) {
        Some(_) => Ok(json_response(&model_object(&id))),
        None => Err(Error::unknown_model(&id)),
    }
}

/// `GET /metrics`: the Prometheus text exposition, format 0.0.4.
pub fn metrics(shared: &Shared) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(crate::exposition::render(shared))));
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

fn model_object(name: &str) -> Value {
    json!({ "id": name, "object": "model", "created": 0, "owned_by": "llmux" })
}

/// `value` as a JSON response.
pub fn json_response(value: &Value) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(value.to_string())));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Decodes `%XX` escapes (model ids may contain `/` or spaces).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_model_ids() {
        assert_eq!(percent_decode("org%2Fmodel%20x"), "org/model x");
        assert_eq!(percent_decode("plain/with/slash"), "plain/with/slash");
        assert_eq!(percent_decode("bad%2"), "bad%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
