//! API keys: `Authorization: Bearer <key>`, compared in constant time.
//!
//! With `api_keys` configured, every request but `GET /health` (and
//! `/metrics` with `metrics_public`) must carry one of them; the header is
//! stripped before the request is forwarded, so backends never see client
//! keys. The control API (`/llmux/*`) has its own rule, [`check_admin`].
//! Keys never appear in logs or errors.

use hyper::header::{HeaderMap, AUTHORIZATION};

use crate::config::Config;
use crate::error::Error;

/// Who may use the control API: with `admin_api_keys`, a client presenting
/// one of them (an ordinary key gets 403); without, loopback clients only,
/// and `api_keys` apply to them as to every path.
pub fn check_admin(config: &Config, headers: &HeaderMap, loopback: bool) -> Result<(), Error> {
    if !config.admin_api_keys.is_empty() {
        if check(&config.admin_api_keys, headers).is_ok() {
            return Ok(());
        }
        if !config.api_keys.is_empty() && check(&config.api_keys, headers).is_ok() {
            return Err(Error::forbidden("the control API needs an admin key (admin_api_keys)"));
        }
        return Err(Error::invalid_api_key());
    }
    if !loopback {
        return Err(Error::forbidden(
            "the control API answers only loopback clients unless admin_api_keys is configured",
        ));
    }
    check(&config.api_keys, headers)
}

/// The dashboard page (`GET /llmux/ui`): static, it holds no state, so it
/// needs no key (a browser opening a page cannot send one). Who may load
/// it follows the control API's exposure: loopback clients only without
/// `admin_api_keys`, any address with them. Everything the page shows it
/// reads from the control API, with the key entered on the page, under
/// [`check_admin`].
pub fn check_page(config: &Config, loopback: bool) -> Result<(), Error> {
    if config.admin_api_keys.is_empty() && !loopback {
        return Err(Error::forbidden(
            "the dashboard answers only loopback clients unless admin_api_keys is configured",
        ));
    }
    Ok(())
}

/// `/metrics`: open with `metrics_public`, else like any path (an admin
/// key is accepted too).
pub fn check_metrics(config: &Config, headers: &HeaderMap) -> Result<(), Error> {
    if config.metrics_public || check(&config.api_keys, headers).is_ok() {
        return Ok(());
    }
    match config.admin_api_keys.is_empty() {
        true => Err(Error::invalid_api_key()),
        false => check(&config.admin_api_keys, headers),
    }
}

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

    fn config(extra: &str) -> Config {
        let text = format!("models:\n  a: {{port: 1, wake: w, sleep: s, alive: a}}\n{extra}");
        Config::parse(&text, crate::config::Format::Yaml, ".".into()).expect("a test config")
    }

    fn status(r: Result<(), Error>) -> u16 {
        r.err().map_or(200, |e| e.status().as_u16())
    }

    #[test]
    fn the_control_api_is_loopback_only_without_admin_keys() {
        let open = config("");
        assert_eq!(status(check_admin(&open, &HeaderMap::new(), true)), 200);
        assert_eq!(status(check_admin(&open, &HeaderMap::new(), false)), 403);
        let keyed = config("api_keys: [user]\n");
        assert_eq!(status(check_admin(&keyed, &HeaderMap::new(), true)), 401);
        assert_eq!(status(check_admin(&keyed, &with_auth("Bearer user"), true)), 200);
    }

    #[test]
    fn admin_keys_open_the_control_api_to_any_address_and_only_to_them() {
        let c = config("api_keys: [user]\nadmin_api_keys: [root]\n");
        assert_eq!(status(check_admin(&c, &with_auth("Bearer root"), false)), 200);
        assert_eq!(status(check_admin(&c, &with_auth("Bearer user"), true)), 403);
        assert_eq!(status(check_admin(&c, &with_auth("Bearer nope"), true)), 401);
        assert_eq!(status(check_admin(&c, &HeaderMap::new(), true)), 401);
    }

    #[test]
    fn the_page_follows_the_control_apis_exposure_without_a_key() {
        assert_eq!(status(check_page(&config(""), true)), 200);
        assert_eq!(status(check_page(&config(""), false)), 403);
        assert_eq!(status(check_page(&config("api_keys: [user]\n"), true)), 200);
        assert_eq!(status(check_page(&config("api_keys: [user]\n"), false)), 403);
        assert_eq!(status(check_page(&config("admin_api_keys: [root]\n"), false)), 200);
    }

    #[test]
    fn metrics_need_a_key_unless_public() {
        let c = config("api_keys: [user]\nadmin_api_keys: [root]\n");
        assert_eq!(status(check_metrics(&c, &HeaderMap::new())), 401);
        assert_eq!(status(check_metrics(&c, &with_auth("Bearer user"))), 200);
        assert_eq!(status(check_metrics(&c, &with_auth("Bearer root"))), 200);
        let public = config("api_keys: [user]\nmetrics_public: true\n");
        assert_eq!(status(check_metrics(&public, &HeaderMap::new())), 200);
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
