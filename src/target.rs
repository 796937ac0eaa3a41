//! Which model a request is for, and the body it is forwarded with.
//!
//! A body names its model in its top-level JSON `model` (found by the
//! [`crate::model`] scan). The body goes to the backend byte for byte,
//! unless the model has an `upstream_model`: then only the bytes of that
//! value change ([`forwarded_body`], one allocation, on that path only).

use std::ops::Range;

use bytes::Bytes;

use crate::body::RequestBody;
use crate::catalog::Catalog;
use crate::error::Error;
use crate::model::{self, ExtractError};

/// Where in the body the model's name is, for `upstream_model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameAt {
    /// A JSON string value starting at this offset (after its quote).
    Json(usize),
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
