//! API keys: `Authorization: Bearer <key>`, compared in constant time.
//!
//! With `api_keys` configured, every request but `GET /health` must carry
//! one of them; the header is stripped before the request is forwarded, so
//! backends never see client keys. Keys never appear in logs or errors.

use hyper::header::{HeaderMap, AUTHORIZATION};

use crate::error::Error;

/// Checks `headers` against `keys` (no keys: everything passes).
pub fn check(keys: &[String], headers: &HeaderMap) -> Result<(), Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii)
        .unwrap_or_default();
    // Every key is compared, whatever matches: the time does not depend on
    // which key (or how much of it) was right.
    let matched = keys.iter().fold(false, |any, key| any | constant_time_eq(key.as_bytes(), presented));
    if matched && !presented.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid_api_key())
    }
}

/// Equality whose time depends only on the lengths, not on the contents.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with_auth(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn accepts_only_a_configured_bearer_key() {
        let keys = vec!["sk-one".to_owned(), "sk-two".to_owned()];
        assert!(check(&keys, &with_auth("Bearer sk-two")).is_ok());
        assert!(check(&keys, &with_auth("Bearer sk-tw")).is_err());
        assert!(check(&keys, &with_auth("Bearer sk-two2")).is_err());
        assert!(check(&keys, &with_auth("sk-one")).is_err());
        assert!(check(&keys, &with_auth("Bearer ")).is_err());
        assert!(check(&keys, &HeaderMap::new()).is_err());
        assert!(check(&[], &HeaderMap::new()).is_ok());
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
