//! Finding the top-level `model` of a request body.
//!
//! The body is validated and indexed by simd-json's tape builder, which
//! records every value as a flat node without building a DOM; the scan then
//! steps over the top-level keys only, jumping over nested objects and
//! arrays by their node count, so a `"model"` inside `messages` or `tools`
//! is never taken for the request's model.
//!
//! simd-json decodes strings in place, so the scan works on a padded copy
//! of the body (the only copy: simd-json reads it where it is) held in a
//! per-thread [`Scratch`] that is reused from request to request: the body
//! that is forwarded is the original, byte for byte. The result agrees with
//! `serde_json` (the crate's differential fuzz target checks it): a body is
//! accepted only if serde_json would parse it as an object with exactly one
//! top-level `model` that is a string. That includes rejecting a `\u`
//! escape that is half of a surrogate pair, which simd-json 0.19 does
//! itself while it decodes (earlier versions needed a second pass).

use std::cell::RefCell;
use std::fmt;

use simd_json::{Buffers, Node, Tape};

/// Why a body has no usable model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractError {
    /// Not valid JSON.
    InvalidJson(String),
    /// Valid JSON, but not an object.
    NotAnObject,
    /// No top-level `model` key.
    Missing,
    /// A top-level `model` that is not a string.
    NotAString,
    /// More than one top-level `model` key.
    Duplicate,
}

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtractError::InvalidJson(e) => write!(f, "the request body is not valid JSON: {e}"),
            ExtractError::NotAnObject => f.write_str("the request body must be a JSON object"),
            ExtractError::Missing => f.write_str("the request body has no top-level `model`"),
            ExtractError::NotAString => f.write_str("`model` must be a string"),
            ExtractError::Duplicate => f.write_str("the request body has more than one `model`"),
        }
    }
}

/// Same nesting limit as serde_json, so the two agree on deep bodies.
const MAX_DEPTH: usize = 127;

/// Scratch space kept between scans larger than this is released after use.
const KEEP_SCRATCH_BYTES: usize = 2 * 1024 * 1024;

/// Reusable buffers for one thread's scans.
struct Scratch {
    /// The copy of the body that simd-json rewrites.
    input: Vec<u8>,
    /// simd-json's stage buffers.
    buffers: Buffers,
    /// The tape, emptied between uses.
    tape: Option<Tape<'static>>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch { input: Vec::new(), buffers: Buffers::new(4096), tape: Some(Tape::null()) }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new());
}

/// Finds the body's top-level `model` and hands it to `f`.
///
/// `f` sees the decoded name (JSON escapes resolved) and may return
/// anything that does not borrow from it.
pub fn with_model<R>(body: &[u8], f: impl FnOnce(&str) -> R) -> Result<R, ExtractError> {
    with_model_in_parts(&[body], f)
}

/// [`with_model`] for a body held as consecutive parts (the chunks it
/// arrived in): they are copied, back to back, into the scan's own buffer,
/// which is the one copy the scan needs anyway.
pub fn with_model_in_parts<R>(parts: &[impl AsRef<[u8]>], f: impl FnOnce(&str) -> R) -> Result<R, ExtractError> {
    with_model_at_in_parts(parts, |name, _| f(name))
}

/// [`with_model_in_parts`], also handing `f` where the model's string
/// value starts in the body: the offset of its first byte after the
/// opening quote (see [`value_span`] for its end).
pub fn with_model_at_in_parts<R>(
    parts: &[impl AsRef<[u8]>],
    f: impl FnOnce(&str, usize) -> R,
) -> Result<R, ExtractError> {
    // simd-json decodes a string in place, from the byte after its opening
    // quote: where the decoded name starts in the copy is where its raw
    // value starts in the body.
    with_tape(parts, |nodes, base| find_model(nodes).map(|name| f(name, (name.as_ptr() as usize).wrapping_sub(base))))
}

/// True if the body (as consecutive parts) is a JSON object whose
/// top-level `stream` is `true`, the way OpenAI's API asks for a streamed
/// answer. A second scan of the body: meant for the cold path only (a
/// request that has to wait for its model), never for every request.
pub fn is_streaming_in_parts(parts: &[impl AsRef<[u8]>]) -> bool {
    with_tape(parts, |nodes, _| Ok(top_level_true(nodes, "stream"))).unwrap_or(false)
}

/// Runs `g` on the tape of the body held as `parts`, in this thread's
/// reused scratch, with the address the scan's copy of the body starts at.
fn with_tape<R>(
    parts: &[impl AsRef<[u8]>],
    g: impl FnOnce(&[Node<'_>], usize) -> Result<R, ExtractError>,
) -> Result<R, ExtractError> {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => scan(&mut scratch, parts, g),
        // Only reachable if `g` itself scans a body: use a fresh scratch.
        Err(_) => scan(&mut Scratch::new(), parts, g),
    })
}

/// Returns the body's top-level `model` as an owned string.
pub fn extract(body: &[u8]) -> Result<String, ExtractError> {
    with_model(body, str::to_owned)
}

fn scan<R>(
    scratch: &mut Scratch,
    parts: &[impl AsRef<[u8]>],
    g: impl FnOnce(&[Node<'_>], usize) -> Result<R, ExtractError>,
) -> Result<R, ExtractError> {
    let Scratch { input, buffers, tape } = scratch;
    // The copy carries simd-json's padding itself, so simd-json reads it in
    // place instead of copying the body a second time into its own buffer.
    let len = parts.iter().map(|part| part.as_ref().len()).sum::<usize>();
    input.clear();
    input.reserve(len + simd_json::INPUT_PADDING);
    for part in parts {
        input.extend_from_slice(part.as_ref());
    }
    input.resize(len + simd_json::INPUT_PADDING, b' ');
    let mut nodes = tape.take().unwrap_or_else(Tape::null).reset();
    let base = input.as_ptr() as usize;
    let result = match simd_json::fill_tape_padded(input, len, buffers, &mut nodes) {
        Ok(()) => g(&nodes.0, base),
        Err(_) => Err(ExtractError::InvalidJson(crate::model::describe_invalid(parts))),
    };
    *tape = Some(nodes.reset());
    if input.capacity() > KEEP_SCRATCH_BYTES {
        *scratch = Scratch::new();
    }
    result
}

/// Why `parts` (which simd-json rejected) are not JSON, in plain words
/// with the byte offset: serde_json's account, read on this cold path only
/// (simd-json's error names and positions are its internals).
pub fn describe_invalid(parts: &[impl AsRef<[u8]>]) -> String {
    let joined;
    let body: &[u8] = match parts {
        [one] => one.as_ref(),
        _ => {
            joined = parts.iter().flat_map(|p| p.as_ref().iter().copied()).collect::<Vec<u8>>();
            &joined
        }
    };
    let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) else {
        // serde_json takes what simd-json refused: only numbers at the edge
        // of f64's range come here.
        return "a number is out of range".to_owned();
    };
    let text = e.to_string();
    let what = text.rfind(" at line ").map_or(text.as_str(), |i| &text[..i]);
    let offset = byte_offset(body, e.line(), e.column());
    match offset >= body.len() || e.is_eof() {
        true => format!("{what}: the body ends at byte {}", body.len()),
        false => format!("{what} at byte {offset} (line {}, column {})", e.line(), e.column()),
    }
}

/// The byte offset of serde_json's (1-based) line and column in `body`.
fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        body.iter().enumerate().filter(|(_, &b)| b == b'\n').nth(line - 2).map_or(body.len(), |(i, _)| i + 1)
    };
    (line_start + column.saturating_sub(1)).min(body.len())
}

/// The byte range of the raw string value (between its quotes, escapes
/// as sent) that starts at `start` in the body made of `parts`: its end is
/// the first quote not escaped by a backslash. `None` if there is none.
pub fn value_span(parts: &[impl AsRef<[u8]>], start: usize) -> Option<std::ops::Range<usize>> {
    let mut offset = 0;
    let mut escaped = false;
    for part in parts {
        let part = part.as_ref();
        let from = start.saturating_sub(offset);
        if from < part.len() {
            for (i, &b) in part[from..].iter().enumerate() {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => return Some(start..offset + from + i),
                    _ => {}
                }
            }
        }
        offset += part.len();
    }
    None
}

/// The body made of `parts` with the bytes of `span` replaced by
/// `replacement`: everything else byte for byte, in one allocation.
pub fn splice(parts: &[impl AsRef<[u8]>], span: std::ops::Range<usize>, replacement: &[u8]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.as_ref().len()).sum();
    let (start, end) = (span.start.min(len), span.end.clamp(span.start.min(len), len));
    let mut out = Vec::with_capacity(len - (end - start) + replacement.len());
    let (mut offset, mut inserted) = (0, false);
    for part in parts {
        let part = part.as_ref();
        let (lo, hi) = (offset, offset + part.len());
        let before = start.clamp(lo, hi) - lo;
        out.extend_from_slice(&part[..before]);
        if !inserted && start < hi {
            out.extend_from_slice(replacement);
            inserted = true;
        }
        let after = (end.clamp(lo, hi) - lo).max(before);
        out.extend_from_slice(&part[after..]);
        offset = hi;
    }
    if !inserted {
        out.extend_from_slice(replacement);
    }
    out
}

/// Steps over the top-level object's keys and returns the one `model`.
fn find_model<'t>(nodes: &'t [Node<'_>]) -> Result<&'t str, ExtractError> {
    let Some(&Node::Object { len, .. }) = nodes.first() else {
        return Err(ExtractError::NotAnObject);
    };
    check_depth(nodes)?;
    let mut found = None;
    let mut at = 1;
    for _ in 0..len {
        let key = match nodes.get(at) {
            Some(Node::String(key)) => *key,
            _ => return Err(ExtractError::InvalidJson("malformed object".into())),
        };
        let value = nodes.get(at + 1);
        if key == "model" {
            if found.is_some() {
                return Err(ExtractError::Duplicate);
            }
            match value {
                Some(Node::String(name)) => found = Some(*name),
                _ => return Err(ExtractError::NotAString),
            }
        }
        at += 1 + width(value);
    }
    found.ok_or(ExtractError::Missing)
}

/// True if the top-level object has `key` with the value `true` (the last
/// one, if the key repeats, as serde_json reads it).
fn top_level_true(nodes: &[Node<'_>], key: &str) -> bool {
    let Some(&Node::Object { len, .. }) = nodes.first() else { return false };
    let mut found = false;
    let mut at = 1;
    for _ in 0..len {
        let Some(Node::String(k)) = nodes.get(at) else { return false };
        let value = nodes.get(at + 1);
        if *k == key {
            found = matches!(value, Some(Node::Static(simd_json::StaticNode::Bool(true))));
        }
        at += 1 + width(value);
    }
    found
}

/// How many tape nodes a value takes, nested values included.
fn width(value: Option<&Node<'_>>) -> usize {
    match value {
        Some(Node::Object { count, .. } | Node::Array { count, .. }) => count + 1,
        _ => 1,
    }
}

/// Rejects nesting deeper than serde_json accepts.
fn check_depth(nodes: &[Node<'_>]) -> Result<(), ExtractError> {
    // A body shorter than the limit in nodes cannot be nested past it.
    if nodes.len() <= MAX_DEPTH {
        return Ok(());
    }
    // Ends (exclusive) of the containers open at the current node.
    let mut open: [usize; MAX_DEPTH] = [0; MAX_DEPTH];
    let mut depth = 0;
    for (i, node) in nodes.iter().enumerate() {
        while depth > 0 && open[depth - 1] <= i {
            depth -= 1;
        }
        if let Node::Object { count, .. } | Node::Array { count, .. } = node {
            if depth == MAX_DEPTH {
                return Err(ExtractError::InvalidJson("recursion limit exceeded".into()));
            }
            open[depth] = i + count + 1;
            depth += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json says the model is, under the same rules.
    fn reference(body: &[u8]) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let object = value.as_object()?;
        // serde_json keeps the last duplicate; count the raw top-level keys.
        let mut de = serde_json::Deserializer::from_slice(body);
        let keys = count_model_keys(&mut de)?;
        if keys != 1 {
            return None;
        }
        object.get("model")?.as_str().map(str::to_owned)
    }

    fn count_model_keys(de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>) -> Option<usize> {
        use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = usize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
                let mut n = 0;
                while let Some(key) = map.next_key::<String>()? {
                    n += usize::from(key == "model");
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(n)
            }
        }
        de.deserialize_map(Count).ok()
    }

    fn agree(body: &str) {
        let ours = extract(body.as_bytes()).ok();
        assert_eq!(ours, reference(body.as_bytes()), "body: {body:?}");
    }

    #[test]
    fn agrees_with_serde_json_on_tricky_bodies() {
        let nested = "{\"messages\":[{\"role\":\"user\",\"model\":\"inner\"}],\"model\":\"outer\"}";
        let deep_ok = format!("{{\"model\":\"m\",\"x\":{}1{}}}", "[".repeat(125), "]".repeat(125));
        let deep_bad = format!("{{\"model\":\"m\",\"x\":{}1{}}}", "[".repeat(127), "]".repeat(127));
        let bodies = [
            r#"{"model":"a"}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"model":"last"}"#,
            nested,
            r#"{"tools":[{"function":{"model":"x"}}],"metadata":{"model":"y"},"model":"z"}"#,
            r#"{"model":"caf\u00e9 \"q\" \\ \n"}"#,
            r#"{"\u006dodel":"escaped-key"}"#,
            r#"{"model":"日本語-モデル"}"#,
            r#"{"model":"\ud83d\ude00"}"#,
            r#"{"model":"\ud800"}"#,
            r#"{"model":"a","x":"\ud800x"}"#,
            r#"{"model":"a","x":"\udc00"}"#,
            r#"{"model":"a","x":"\ud800\u0041"}"#,
            r#"{"model":"a","x":"\\ud800"}"#,
            r#"{"model":"a","x":"\\\ud83d\ude00 ok \u00e9 \n"}"#,
            r#"{"model":"a","model":"b"}"#,
            r#"{"model":"a","model":1}"#,
            r#"{"model":1}"#,
            r#"{"model":null}"#,
            r#"{"model":["a"]}"#,
            r#"{"other":"a"}"#,
            r#"{}"#,
            r#"[{"model":"a"}]"#,
            r#""model""#,
            "  \n\t{ \"model\" : \"ws\" }\r\n ",
            r#"{"model":"a",}"#,
            r#"{"model":"a"} {"model":"b"}"#,
            r#"{"model":"a""#,
            r#"{"model":"a","n":1e400}"#,
            r#"{"model":"a","n":18446744073709551616}"#,
            r#"{"model":"a","n":-0.0e-5}"#,
            r#"{"model":"a","n":01}"#,
            r#"{"model":"a\u0000b"}"#,
            "{\"model\":\"tab\there\"}",
            "",
            "null",
            &deep_ok,
            &deep_bad,
        ];
        for body in bodies {
            agree(body);
        }
    }

    #[test]
    fn names_the_reason() {
        assert_eq!(extract(b"[]"), Err(ExtractError::NotAnObject));
        assert_eq!(extract(b"{}"), Err(ExtractError::Missing));
        assert_eq!(extract(br#"{"model":2}"#), Err(ExtractError::NotAString));
        assert_eq!(extract(br#"{"model":"a","model":"a"}"#), Err(ExtractError::Duplicate));
        assert!(matches!(extract(b"{"), Err(ExtractError::InvalidJson(_))));
    }

    /// The span `with_model_at_in_parts` and `value_span` give, as text.
    fn span_of(parts: &[&str]) -> Option<String> {
        let start = with_model_at_in_parts(parts, |_, at| at).ok()?;
        let span = value_span(parts, start)?;
        Some(parts.concat()[span].to_owned())
    }

    #[test]
    fn the_span_is_the_raw_value_between_its_quotes() {
        assert_eq!(span_of(&[r#"{"model":"a"}"#]).as_deref(), Some("a"));
        assert_eq!(span_of(&[r#"{"x":"\"model\"","model" : "b\"\\c\u00e9"}"#]).as_deref(), Some(r#"b\"\\c\u00e9"#));
        assert_eq!(span_of(&[r#"{"model":""}"#]).as_deref(), Some(""));
        assert_eq!(
            span_of(&[r#"{"messages":[{"model":"no"}],"mo"#, r#"del":"ye"#, r#"s\""#, r#""}"#]).as_deref(),
            Some(r#"yes\""#)
        );
    }

    #[test]
    fn splice_replaces_the_span_only() {
        let parts = ["{\"model\":\"", "abc", "\",\"x\":1}"];
        let body = parts.concat();
        for (start, end) in [(0, 0), (10, 13), (9, 14), (5, 20), (body.len(), body.len()), (3, 3)] {
            let want = format!("{}XY{}", &body[..start], &body[end..]);
            assert_eq!(String::from_utf8(splice(&parts, start..end, b"XY")).ok().as_deref(), Some(want.as_str()));
        }
        assert_eq!(splice(&[] as &[&[u8]], 0..0, b"z"), b"z");
    }

    #[test]
    fn invalid_json_is_described_in_words_with_the_byte_offset() {
        for (body, words) in [
            (r#"{"model":"a",}"#, "key must be a string at byte 13"),
            (r#"{"model":"a""#, "EOF while parsing an object: the body ends at byte 12"),
            ("{\n\"model\" \"a\"}", "expected `:` at byte 10 (line 2, column 9)"),
            (r#"{"model":"a"} x"#, "trailing characters at byte 14"),
        ] {
            let Err(ExtractError::InvalidJson(msg)) = extract(body.as_bytes()) else { panic!("{body} was accepted") };
            assert!(msg.contains(words), "{body}: {msg}");
        }
    }

    #[test]
    fn finds_a_top_level_stream_true_only() {
        let yes = [
            r#"{"model":"a","stream":true}"#,
            r#"{"stream":true,"messages":[{"stream":false}],"model":"a"}"#,
            r#"{"stream":false,"stream":true}"#,
        ];
        let no = [
            r#"{"model":"a"}"#,
            r#"{"model":"a","stream":false}"#,
            r#"{"model":"a","stream":"true"}"#,
            r#"{"model":"a","stream":1}"#,
            r#"{"model":"a","x":{"stream":true}}"#,
            r#"{"model":"a","messages":[{"stream":true}]}"#,
            r#"[{"stream":true}]"#,
            r#"{"stream":true"#,
            "",
        ];
        for body in yes {
            assert!(is_streaming_in_parts(&[body.as_bytes()]), "{body}");
        }
        for body in no {
            assert!(!is_streaming_in_parts(&[body.as_bytes()]), "{body}");
        }
        let split = [&br#"{"model":"a","str"#[..], &br#"eam":true}"#[..]];
        assert!(is_streaming_in_parts(&split));
    }

    #[test]
    fn scratch_is_reused_and_large_bodies_work() {
        let big = format!(r#"{{"messages":[{{"content":"{}"}}],"model":"big"}}"#, "x".repeat(3 << 20));
        assert_eq!(extract(big.as_bytes()).as_deref(), Ok("big"));
        assert_eq!(extract(br#"{"model":"small"}"#).as_deref(), Ok("small"));
    }
}
