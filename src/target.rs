//! Which model a request is for, and the body it is forwarded with.
//!
//! A body names its model in its top-level JSON `model` (found by the
//! [`crate::model`] scan), or, sent as `multipart/form-data` (an audio
//! upload), in its `model` form field ([`crate::multipart`]). The body
//! goes to the backend byte for byte, unless the model has an
//! `upstream_model`: then only the bytes of that value change
//! ([`forwarded_body`], one allocation, on that path only).

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;

use crate::body::RequestBody;
use crate::catalog::Catalog;
use crate::error::Error;
use crate::model::{self, ExtractError};
use crate::multipart;

/// Where in the body the model's name is, for `upstream_model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameAt {
    /// A JSON string value starting at this offset (after its quote).
    Json(usize),
    /// A form field's value: these bytes.
    Form(Range<usize>),
}

/// The model a `multipart/form-data` body names in its `model` field;
/// `None` if `content_type` is another type.
pub fn form_model(
    catalog: &Catalog,
    content_type: Option<&[u8]>,
    body: &RequestBody,
) -> Option<Result<(usize, NameAt), Error>> {
    match multipart::form_data_boundary(content_type?)? {
        Ok(boundary) => Some(named_in_form(catalog, body, boundary)),
        Err(e) => Some(Err(Error::invalid_body(e.to_string()))),
    }
}

/// A body that is not JSON (`why`) but starts with what looks like a
/// multipart boundary line, sent without a multipart `Content-Type`: it is
/// routed by its `model` field if it has one; else the error says what the
/// body looks like. `None` if it does not look like multipart.
pub fn sniffed_form_model(
    catalog: &Catalog,
    body: &RequestBody,
    content_type: Option<&[u8]>,
    why: &ExtractError,
) -> Option<Result<(usize, NameAt), Error>> {
    let first = body.chunks().first()?;
    let line = first.strip_prefix(b"--")?;
    let eol = line.iter().take(multipart::MAX_BOUNDARY + 3).position(|&b| b == b'\r')?;
    let boundary = line[..eol].trim_ascii_end();
    if boundary.is_empty() || line.get(eol + 1) != Some(&b'\n') {
        return None;
    }
    Some(named_in_form(catalog, body, boundary).map_err(|e| {
        if !e.is_invalid_body() {
            // A form naming an unknown model: 404 as for JSON.
            return e;
        }
        let sent = content_type.map_or(Cow::Borrowed("none"), String::from_utf8_lossy);
        Error::invalid_body(format!(
            "the request body looks like multipart/form-data, not JSON ({why}), but its Content-Type is {sent}: \
             send `Content-Type: multipart/form-data; boundary=...` with a `model` field ({e})"
        ))
    }))
}

/// The model named by the `model` field of a form with `boundary`.
fn named_in_form(catalog: &Catalog, body: &RequestBody, boundary: &[u8]) -> Result<(usize, NameAt), Error> {
    let span = multipart::model_field(body.chunks(), boundary).map_err(|e| Error::invalid_body(e.to_string()))?;
    let bytes = bytes_of(body, span.clone());
    let name =
        std::str::from_utf8(&bytes).map_err(|_| Error::invalid_body("the `model` form field is not UTF-8 text"))?;
    catalog.lookup(name).map(|slot| (slot, NameAt::Form(span))).ok_or_else(|| Error::unknown_model(name))
}

/// The bytes of `span` in `body`: borrowed when one chunk holds them.
fn bytes_of(body: &RequestBody, span: Range<usize>) -> Cow<'_, [u8]> {
    let mut offset = 0;
    for chunk in body.chunks() {
        if span.start >= offset && span.end <= offset + chunk.len() {
            return Cow::Borrowed(&chunk[span.start - offset..span.end - offset]);
        }
        offset += chunk.len();
    }
    let joined: Vec<u8> = body.chunks().iter().flat_map(|c| c.iter().copied()).collect();
    Cow::Owned(joined.get(span).unwrap_or_default().to_vec())
}

/// The model a JSON body names, with where its name is; the scan's own
/// error if it names none. An unknown name is 404 (and grows no table).
pub fn json_model(catalog: &Catalog, body: &RequestBody) -> Result<Result<(usize, NameAt), Error>, ExtractError> {
    model::with_model_at_in_parts(body.chunks(), |name, at| {
        catalog.lookup(name).map(|slot| (slot, NameAt::Json(at))).ok_or_else(|| Error::unknown_model(name))
    })
}

/// The body to forward for `model`: `body` itself, or with the name
/// replaced by the model's `upstream_model`.
pub fn forwarded_body(catalog: &Catalog, model: usize, body: RequestBody, at: &NameAt) -> RequestBody {
    let Some(upstream) = catalog.model(model).and_then(|m| m.upstream_model.as_ref()) else {
        return body;
    };
    let (span, replacement): (Option<Range<usize>>, &[u8]) = match at {
        NameAt::Json(start) => (model::value_span(body.chunks(), *start), upstream.json.as_bytes()),
        NameAt::Form(span) => (Some(span.clone()), upstream.name.as_bytes()),
    };
    match span {
        Some(span) => RequestBody::from(Bytes::from(model::splice(body.chunks(), span, replacement))),
        None => {
            // The scan found the value there: never reached.
            tracing::warn!(model = %catalog.name(model), "upstream_model: the name's place was not found; forwarded as sent");
            body
        }
    }
}
