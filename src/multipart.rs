//! `multipart/form-data` bodies (RFC 7578): the boundary from
//! `Content-Type`, and where the `model` field's value is in a body.
//!
//! The body is the one already read (bounded by `max_body_bytes`), kept as
//! the chunks it arrived in: the parser searches across them and copies
//! nothing but a part's header block when it straddles two chunks. Each
//! search runs forward from where the last one ended (a first-byte scan,
//! then a comparison as long as the delimiter, at most 74 bytes), so the
//! work is linear in the body.
//!
//! What it accepts follows `multer` (the parser most Rust servers use; a
//! fuzz target checks the two agree): anything before the first
//! `--BOUNDARY` is preamble; a delimiter line may end in spaces or tabs
//! before its CRLF; a part's headers end at the first blank line and are
//! read as HTTP headers (at most 32; the last `Content-Disposition` wins);
//! its `name` parameter names the field; `--BOUNDARY--` ends the body and
//! what follows is epilogue. A part's value runs to the next
//! `CRLF--BOUNDARY`.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// Why a multipart body or its `Content-Type` was refused, in plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartError(String);

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MultipartError {}

fn malformed(what: impl fmt::Display) -> MultipartError {
    MultipartError(format!("malformed multipart/form-data body: {what}"))
}

/// The most header fields a part may have (as multer).
const MAX_PART_HEADERS: usize = 32;
/// The longest header name (as the `http` crate).
const MAX_HEADER_NAME: usize = (1 << 16) - 1;
/// The longest boundary (RFC 2046).
pub const MAX_BOUNDARY: usize = 70;

/// The boundary of a `multipart/form-data` `Content-Type`; `None` if the
/// type is another (or is written with white space around it).
///
/// Strict, as the `mime` crate multer uses is: parameters are `;`, any
/// spaces, `name=value`, with no white space around `=` or after a bare
/// value; a value is a token or a quoted string of visible ASCII without
/// escapes. What
/// clients send (`multipart/form-data; boundary=----abc`) passes.
pub fn form_data_boundary(content_type: &[u8]) -> Option<Result<&[u8], MultipartError>> {
    let (media, mut params) = match content_type.iter().position(|&b| b == b';') {
        Some(i) => (&content_type[..i], Some(&content_type[i + 1..])),
        None => (content_type, None),
    };
    if !media.eq_ignore_ascii_case(b"multipart/form-data") {
        return None;
    }
    let mut boundary = None;
    while let Some(rest) = params {
        let rest = skip_spaces(rest);
        if rest.is_empty() {
            break;
        }
        let Some((name, value, next)) = param(rest) else {
            return Some(Err(MultipartError("malformed parameter in Content-Type".into())));
        };
        if name.eq_ignore_ascii_case(b"boundary") && boundary.replace(value).is_some() {
            return Some(Err(MultipartError("Content-Type names two boundaries".into())));
        }
        params = next;
    }
    Some(match boundary {
        None => Err(MultipartError("multipart/form-data without a boundary in Content-Type".into())),
        Some(b) if b.is_empty() || b.len() > MAX_BOUNDARY || b.ends_with(b" ") || !b.iter().all(|&c| is_bchar(c)) => {
            Err(MultipartError("the boundary in Content-Type is not 1 to 70 allowed characters".into()))
        }
        Some(b) => Ok(b),
    })
}

/// A `Content-Type` parameter: its name, its value, and what follows its
/// `;` (`None` at the end).
type Param<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>);

/// The `name=value` parameter at the start of `s`.
fn param(s: &[u8]) -> Option<Param<'_>> {
    let eq = s.iter().position(|&b| b == b'=')?;
    let name = &s[..eq];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let rest = &s[eq + 1..];
    let (value, after) = match rest.strip_prefix(b"\"") {
        Some(quoted) => {
            let end = quoted.iter().position(|&b| b == b'"')?;
            if !quoted[..end].iter().all(|&b| (b' '..=b'~').contains(&b) && b != b'\\') {
                return None;
            }
            (&quoted[..end], skip_spaces(&quoted[end + 1..]))
        }
        None => {
            let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
            if end == 0 || !rest[..end].iter().all(|&b| is_tchar(b)) {
                return None;
            }
            (&rest[..end], &rest[end..])
        }
    };
    match after.split_first() {
        None => Some((name, value, None)),
        Some((b';', next)) => Some((name, value, Some(next))),
        Some(_) => None,
    }
}

/// `s` after its leading spaces.
fn skip_spaces(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ').unwrap_or(s.len());
    &s[start..]
}

/// A token character (RFC 9110).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A character a boundary may hold (RFC 2046 `bchars`).
fn is_bchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b)
}

/// Where the value of the one field named `model` is in the body made of
/// `parts`, with `boundary` from `Content-Type` (not empty). An error if
/// the body is malformed, or has no `model` field or more than one.
pub fn model_field(parts: &[impl AsRef<[u8]>], boundary: &[u8]) -> Result<Range<usize>, MultipartError> {
    let body = Joined::new(parts);
    let dash_boundary = [b"--", boundary].concat();
    let delimiter = [b"\r\n--", boundary].concat();
    let mut at = body.find(&dash_boundary, 0).ok_or_else(|| {
        MultipartError(format!("the body has no `--{}` line (the boundary from Content-Type)", lossy(boundary)))
    })?;
    let mut found = None;
    loop {
        at += dash_boundary.len();
        if body.matches(at, b"--") {
            break;
        }
        at = after_delimiter_line(&body, at)?;
        let headers_end = body
            .find(b"\r\n\r\n", at)
            .ok_or_else(|| malformed(format_args!("the part at byte {at} has no blank line after its headers")))?
            + 4;
        let named_model = part_name(&body.slice(at..headers_end))
            .map_err(|e| malformed(format_args!("{e} in the part at byte {at}")))?
            .is_some_and(|name| name == "model");
        let value_end = body.find(&delimiter, headers_end).ok_or_else(|| {
            malformed(format_args!("the part at byte {at} is not closed by a boundary (the body ends early)"))
        })?;
        if named_model && found.replace(headers_end..value_end).is_some() {
            return Err(MultipartError("the multipart body has more than one `model` field".into()));
        }
        at = value_end + 2;
    }
    found.ok_or_else(|| MultipartError("the multipart body has no `model` field".into()))
}

/// Past the rest of a delimiter line at `at` (spaces and tabs, then CRLF).
fn after_delimiter_line(body: &Joined<'_>, mut at: usize) -> Result<usize, MultipartError> {
    if body.len < at + 2 {
        return Err(malformed("the body ends inside a boundary line"));
    }
    while matches!(body.byte(at), Some(b' ' | b'\t')) {
        at += 1;
    }
    match body.matches(at, b"\r\n") {
        true => Ok(at + 2),
        false => Err(malformed(format_args!("no CRLF after the boundary at byte {at}"))),
    }
}

/// The `name` of a part from its header block (which ends in a blank
/// line), read as HTTP headers are: a malformed line is an error.
fn part_name(block: &[u8]) -> Result<Option<Cow<'_, str>>, &'static str> {
    let mut at = 0;
    let mut count = 0;
    let mut disposition = None;
    loop {
        match block.get(at) {
            Some(b'\r') if block.get(at + 1) == Some(&b'\n') => break,
            Some(b'\n') => break,
            None | Some(b'\r') => return Err("a malformed header line"),
            Some(_) => {}
        }
        let (name, value, next) = header_line(block, at)?;
        count += 1;
        if count > MAX_PART_HEADERS {
            return Err("more than 32 headers");
        }
        if name.eq_ignore_ascii_case(b"content-disposition") {
            disposition = Some(value);
        }
        at = next;
    }
    Ok(disposition.and_then(disposition_name))
}

/// The header line at `at`: its name, its value (white space around it
/// trimmed) and where the next line starts.
fn header_line(block: &[u8], at: usize) -> Result<(&[u8], &[u8], usize), &'static str> {
    let name_len = block[at..].iter().position(|&b| !is_tchar(b)).unwrap_or(block.len() - at);
    if name_len == 0 || name_len > MAX_HEADER_NAME || block.get(at + name_len) != Some(&b':') {
        return Err("a malformed header name");
    }
    let mut from = at + name_len + 1;
    while matches!(block.get(from), Some(b' ' | b'\t')) {
        from += 1;
    }
    let len = block[from..].iter().position(|&b| !is_value_byte(b)).unwrap_or(block.len() - from);
    let end = from + len;
    let next = match (block.get(end), block.get(end + 1)) {
        (Some(b'\r'), Some(b'\n')) => end + 2,
        (Some(b'\n'), _) => end + 1,
        _ => return Err("a malformed header value"),
    };
    let value = &block[from..end];
    let trimmed = value.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(0, |i| i + 1);
    Ok((&block[at..at + name_len], &value[..trimmed], next))
}

/// A byte a header value may hold: tab, visible ASCII, space, obs-text.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// The `name` parameter of a `Content-Disposition` value, read as multer
/// reads it: the first `name` at the start or after white space or `;`,
/// then `=`; a quoted value ends at the first `"` not after a backslash
/// (`\"` becomes `"`), a bare one at `;` or a space. Not UTF-8: no name.
fn disposition_name(mut header: &[u8]) -> Option<Cow<'_, str>> {
    while let Some(i) = find_in(header, b"name") {
        let suffix = &header[i + 4..];
        if i > 0 && !(header[i - 1].is_ascii_whitespace() || header[i - 1] == b';') {
            header = suffix;
            continue;
        }
        let rest = skip_ws_then(suffix, b'=')?;
        let (bytes, escaped) = match skip_ws_then(rest, b'"') {
            Some(quoted) => {
                let mut end = quoted.iter().position(|&b| b == b'"')?;
                let mut escaped = false;
                while end > 0 && quoted[end - 1] == b'\\' {
                    escaped = true;
                    end = end + 1 + quoted[end + 1..].iter().position(|&b| b == b'"')?;
                }
                (&quoted[..end], escaped)
            }
            None => {
                let rest = rest.trim_ascii_start();
                let end = rest.iter().position(|&b| b == b';' || b == b' ').unwrap_or(rest.len());
                (&rest[..end], false)
            }
        };
        let name = std::str::from_utf8(bytes).ok()?;
        return Some(if escaped { Cow::Owned(name.replace("\\\"", "\"")) } else { Cow::Borrowed(name) });
    }
    None
}

/// `bytes` after leading ASCII white space and then `first`, if it is there.
fn skip_ws_then(bytes: &[u8], first: u8) -> Option<&[u8]> {
    bytes.trim_ascii_start().strip_prefix(&[first])
}

/// The first place `needle` (not empty) occurs in `hay`.
fn find_in(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// A body held as chunks, read as one run of bytes.
struct Joined<'a> {
    /// The non-empty chunks.
    parts: Vec<&'a [u8]>,
    /// Where each chunk starts in the body.
    starts: Vec<usize>,
    len: usize,
}

impl<'a> Joined<'a> {
    fn new(parts: &'a [impl AsRef<[u8]>]) -> Joined<'a> {
        let parts: Vec<&[u8]> = parts.iter().map(AsRef::as_ref).filter(|p| !p.is_empty()).collect();
        let mut starts = Vec::with_capacity(parts.len());
        let mut len = 0;
        for part in &parts {
            starts.push(len);
            len += part.len();
        }
        Joined { parts, starts, len }
    }

    /// The chunk holding byte `at` (< len) and the offset in it.
    fn locate(&self, at: usize) -> (usize, usize) {
        let part = self.starts.partition_point(|&start| start <= at).saturating_sub(1);
        (part, at - self.starts[part])
    }

    fn byte(&self, at: usize) -> Option<u8> {
        (at < self.len).then(|| {
            let (part, offset) = self.locate(at);
            self.parts[part][offset]
        })
    }

    /// True if the bytes at `at` are `needle`.
    fn matches(&self, at: usize, needle: &[u8]) -> bool {
        if at + needle.len() > self.len {
            return false;
        }
        let mut rest = needle;
        let mut at = at;
        while !rest.is_empty() {
            let (part, offset) = self.locate(at);
            let chunk = &self.parts[part][offset..];
            let n = chunk.len().min(rest.len());
            if chunk[..n] != rest[..n] {
                return false;
            }
            rest = &rest[n..];
            at += n;
        }
        true
    }

    /// The first place `needle` (not empty) occurs at or after `from`.
    fn find(&self, needle: &[u8], from: usize) -> Option<usize> {
        let first = needle[0];
        let mut at = from;
        while at + needle.len() <= self.len {
            let (part, offset) = self.locate(at);
            let chunk = self.parts[part];
            match chunk[offset..].iter().position(|&b| b == first) {
                None => at = self.starts[part] + chunk.len(),
                Some(i) if self.matches(at + i, needle) => return Some(at + i),
                Some(i) => at += i + 1,
            }
        }
        None
    }

    /// The bytes of `range` (< len): borrowed when one chunk holds them.
    fn slice(&self, range: Range<usize>) -> Cow<'a, [u8]> {
        if range.is_empty() {
            return Cow::Borrowed(&[]);
        }
        let (part, offset) = self.locate(range.start);
        let chunk = self.parts[part];
        if offset + range.len() <= chunk.len() {
            return Cow::Borrowed(&chunk[offset..offset + range.len()]);
        }
        let mut out = Vec::with_capacity(range.len());
        let mut at = range.start;
        while at < range.end {
            let (part, offset) = self.locate(at);
            let chunk = &self.parts[part][offset..];
            let n = chunk.len().min(range.end - at);
            out.extend_from_slice(&chunk[..n]);
            at += n;
        }
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &[u8] = b"xYz";

    fn form(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, value) in fields {
            body.extend_from_slice(
                format!("--xYz\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
            );
        }
        body.extend_from_slice(b"--xYz--\r\n");
        body
    }

    fn model_in(body: &[u8]) -> Result<String, MultipartError> {
        model_field(&[body], B).map(|span| String::from_utf8_lossy(&body[span]).into_owned())
    }

    #[test]
    fn finds_the_model_field_wherever_it_is() {
        assert_eq!(model_in(&form(&[("model", "whisper-1")])).as_deref(), Ok("whisper-1"));
        assert_eq!(
            model_in(&form(&[("file", "RIFF\r\n--xY"), ("language", "en"), ("model", "m")])).as_deref(),
            Ok("m")
        );
        assert_eq!(model_in(&form(&[("model", "")])).as_deref(), Ok(""));
        let unusual = b"preamble--xYz \t\r\ncontent-disposition: form-data; name=model\nX-Other:  v \r\n\r\nm1\r\n--xYz--epilogue";
        assert_eq!(model_in(unusual).as_deref(), Ok("m1"));
    }

    #[test]
    fn every_chunking_gives_the_same_span() {
        let body = form(&[("file", &"\r\n-x".repeat(40)), ("model", "split-me"), ("n", "1")]);
        let want = model_field(&[&body], B).expect("whole");
        for a in 0..body.len() {
            let b = (a + 7).min(body.len());
            let parts = [&body[..a], &body[a..b], &body[b..]];
            assert_eq!(model_field(&parts, B), Ok(want.clone()), "cut at {a} and {b}");
        }
    }

    #[test]
    fn refuses_what_is_malformed_or_ambiguous() {
        for (body, words) in [
            (&b""[..], "no `--xYz` line"),
            (b"--xYz\r\nContent-Disposition: form-data; name=model\r\n\r\nm\r\n", "not closed by a boundary"),
            (b"--xYz\r\nContent-Disposition: form-data; name=model\r\n", "no blank line"),
            (b"--xYz", "ends inside a boundary line"),
            (b"--xYzq\r\n", "no CRLF after the boundary"),
            (b"--xYz\r\nBad Header: x\r\n\r\nm\r\n--xYz--", "malformed header name"),
            (b"--xYz\r\nA: \x01\r\n\r\nm\r\n--xYz--", "malformed header value"),
            (b"--xYz--\r\n", "no `model` field"),
        ] {
            let e = model_in(body).expect_err(&String::from_utf8_lossy(body)).to_string();
            assert!(e.contains(words), "{:?}: {e}", String::from_utf8_lossy(body));
        }
        let e = model_in(&form(&[("model", "a"), ("model", "b")])).expect_err("two");
        assert!(e.to_string().contains("more than one `model`"), "{e}");
        let many: String = (0..33).map(|i| format!("X-{i}: v\r\n")).collect();
        let body = format!("--xYz\r\n{many}Content-Disposition: form-data; name=model\r\n\r\nm\r\n--xYz--");
        assert!(model_in(body.as_bytes()).expect_err("33 headers").to_string().contains("more than 32"));
    }

    #[test]
    fn the_last_disposition_and_the_first_name_parameter_count() {
        let body = b"--xYz\r\nContent-Disposition: form-data; name=model\r\ncontent-disposition: form-data; name=\"other\"\r\n\r\nv\r\n--xYz--";
        assert!(model_in(body).is_err(), "the last Content-Disposition names `other`");
        assert_eq!(disposition_name(b"form-data; filename=\"x\"; name=\"model\"").as_deref(), Some("model"));
        assert_eq!(disposition_name(br#"form-data; name="a\"b""#).as_deref(), Some("a\"b"));
        assert_eq!(disposition_name(b"form-data; name=model; x=y").as_deref(), Some("model"));
        assert_eq!(disposition_name(b"form-data; name; name=model"), None);
        assert_eq!(disposition_name(b"form-data; filename=x"), None);
    }

    #[test]
    fn the_boundary_comes_from_a_form_data_content_type() {
        assert_eq!(form_data_boundary(b"multipart/form-data; boundary=abc-1"), Some(Ok(&b"abc-1"[..])));
        assert_eq!(
            form_data_boundary(b"Multipart/Form-Data;boundary=\"a b:c\" ; charset=utf-8"),
            Some(Ok(&b"a b:c"[..]))
        );
        assert_eq!(form_data_boundary(b"application/json"), None);
        assert_eq!(form_data_boundary(b"multipart/mixed; boundary=x"), None);
        for bad in [
            &b"multipart/form-data"[..],
            b"multipart/form-data; boundary=",
            b"multipart/form-data; boundary=\"\"",
            b"multipart/form-data; boundary=a; boundary=b",
            b"multipart/form-data; boundary=\"a\\\"b\"",
            b"multipart/form-data; boundary=\"trailing \"",
            b"multipart/form-data; boundary=a/b",
            b"multipart/form-data; boundary",
            b"multipart/form-data; boundary=abc\r",
            b"multipart/form-data;\t boundary=abc",
            b"multipart/form-data; boundary=abc; charset=\"\xe9\"",
            b"multipart/form-data; boundary =abc",
            b"multipart/form-data; boundary=abc ",
            b"multipart/form-data; boundary=abc; ;",
        ] {
            assert!(matches!(form_data_boundary(bad), Some(Err(_))), "{}", String::from_utf8_lossy(bad));
        }
        let long = format!("multipart/form-data; boundary={}", "a".repeat(71));
        assert!(matches!(form_data_boundary(long.as_bytes()), Some(Err(_))));
    }
}
