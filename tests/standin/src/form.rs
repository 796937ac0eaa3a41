//! `multipart/form-data` request bodies, for the audio endpoints
//! (`/v1/audio/transcriptions`, `/v1/audio/translations`): the stand-in
//! answers with what it received, field by field.

use serde_json::{json, Value};

use crate::http::Request;
use crate::responses::fnv1a64;

/// One form field as received.
pub struct Field {
    pub name: String,
    pub filename: Option<String>,
    pub size: usize,
    /// The value of a text field (no filename, UTF-8).
    pub value: Option<String>,
}

/// The fields of `req`'s multipart body, or why it is not one. The
/// boundary is `Content-Type`'s, or else the body's first line (a client
/// that sent a form as JSON).
pub fn parse(req: &Request) -> Result<Vec<Field>, String> {
    let content_type = String::from_utf8_lossy(req.header("content-type").unwrap_or_default());
    let body = &req.body[..];
    let first_line = body.strip_prefix(b"--").and_then(|b| b.split(|&c| c == b'\r').next()).unwrap_or_default();
    let boundary = match content_type.split_once("boundary=") {
        Some((_, b)) => b.split(';').next().unwrap_or("").trim().trim_matches('"').to_owned(),
        None => String::from_utf8_lossy(first_line).into_owned(),
    };
    if boundary.is_empty() {
        return Err("no boundary".into());
    }
    let dash = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    let mut at = find(body, dash.as_bytes(), 0).ok_or("no first boundary")? + dash.len();
    let mut fields = Vec::new();
    while !body[at..].starts_with(b"--") {
        at += body[at..].starts_with(b"\r\n").then_some(2).ok_or("no CRLF after a boundary")?;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let (len, headers) = match httparse::parse_headers(&body[at..], &mut headers) {
            Ok(httparse::Status::Complete(done)) => done,
            _ => return Err("malformed part headers".into()),
        };
        let disposition = headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-disposition"));
        let disposition = disposition.map(|h| String::from_utf8_lossy(h.value).into_owned()).unwrap_or_default();
        let start = at + len;
        let end = find(body, delimiter.as_bytes(), start).ok_or("a part is not closed")?;
        let filename = param(&disposition, "filename");
        let value =
            (filename.is_none()).then(|| std::str::from_utf8(&body[start..end]).ok().map(str::to_owned)).flatten();
        fields.push(Field {
            name: param(&disposition, "name").unwrap_or_default(),
            filename,
            size: end - start,
            value,
        });
        at = end + delimiter.len();
    }
    Ok(fields)
}

/// `name="value"` (or unquoted) in a `Content-Disposition` value.
fn param(disposition: &str, name: &str) -> Option<String> {
    disposition.split(';').map(str::trim).find_map(|p| {
        let (key, value) = p.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"').to_owned())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

/// The value of the `model` field.
pub fn model(fields: &[Field]) -> Option<&str> {
    fields.iter().find(|f| f.name == "model").and_then(|f| f.value.as_deref())
}

/// The echo of a form: each field's name, filename, size and (text) value,
/// and the whole body's length and FNV-1a hash.
pub fn echo_json(model: &str, fields: &[Field], body: &[u8]) -> Vec<u8> {
    let fields: Vec<Value> = fields
        .iter()
        .map(|f| json!({"name": f.name, "filename": f.filename, "size": f.size, "value": f.value}))
        .collect();
    let echo = json!({
        "model": model,
        "fields": fields,
        "body_len": body.len(),
        "body_fnv64": format!("{:016x}", fnv1a64(body)),
    });
    serde_json::to_vec(&echo).unwrap_or_default()
}
