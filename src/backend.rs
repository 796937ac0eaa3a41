//! Where a model's backend listens: a `port` on 127.0.0.1, or a `url`
//! (`http://HOST[:PORT][/BASE]`) for a backend on another host, in another
//! container or behind a name.
//!
//! Parsed and checked once, when the config is loaded; the proxy
//! ([`crate::proxy::Upstream`]) connects to what is here, resolving a host
//! name off the request path, and hooks see it as `LLMUX_UPSTREAM`,
//! `LLMUX_PORT`. No I/O here: a name is only resolved by the proxy.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use hyper::Uri;

/// Where a model's backend listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The host: an address, or a name to resolve.
    host: Host,
    /// The port connected to (the URL's, or 80 when it gives none).
    port: u16,
    /// True if the port was written (`port`, or `url` with `:PORT`).
    port_given: bool,
    /// Prefixed to every request's path: empty, or `/` and segments with
    /// no trailing `/`.
    base_path: String,
    /// The forwarded `Host` header: the URL's authority (`127.0.0.1:PORT`
    /// for a `port`).
    authority: String,
}

/// A backend's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IP address: connected to as it is.
    Ip(IpAddr),
    /// A name: resolved when the model is published and after a connection
    /// to it failed, never per request. Lowercase.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl Backend {
    /// The backend on `127.0.0.1:port` (the `port` key).
    pub fn local(port: u16) -> Backend {
        Backend {
            host: Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port,
            port_given: true,
            base_path: String::new(),
            authority: format!("127.0.0.1:{port}"),
        }
    }

    /// The backend at `url`: `http://HOST[:PORT][/BASE]`. Plain HTTP only;
    /// no credentials, query or fragment; a port, if given, is not 0.
    pub fn from_url(url: &str) -> Result<Backend, String> {
        let url = url.trim();
        if url.len() >= 8 && url[..8].eq_ignore_ascii_case("https://") {
            return Err(format!(
                "`{url}`: https is not supported: llmux speaks plain HTTP to its backends (put a TLS-terminating \
                 proxy next to the backend, or reach it over a private network)"
            ));
        }
        if url.contains('#') {
            return Err(format!("`{url}`: a backend URL has no fragment"));
        }
        let uri: Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => {}
            Some(other) => return Err(format!("`{url}`: the scheme must be http, not `{other}`")),
            None => return Err(format!("`{url}`: must start with http://")),
        }
        let Some(authority) = uri.authority() else { return Err(format!("`{url}`: no host")) };
        if authority.as_str().contains('@') {
            return Err(format!("`{url}`: credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(format!("`{url}`: a backend URL has no query string"));
        }
        let host = parse_host(authority.host()).ok_or_else(|| format!("`{url}`: no host"))?;
        // What follows the host: `:PORT`, or nothing.
        let port_text = authority.as_str().get(authority.host().len()..).and_then(|p| p.strip_prefix(':'));
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let (port, port_given) = match port_text.map(|p| (digits(p), p.parse::<u16>())) {
            Some((true, Ok(0))) => return Err(format!("`{url}`: the port must not be 0")),
            Some((true, Ok(port))) => (port, true),
            Some(_) => return Err(format!("`{url}`: the port must be a number from 1 to 65535")),
            None => (80, false),
        };
        Ok(Backend {
            host,
            port,
            port_given,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            authority: authority.as_str().to_ascii_lowercase(),
        })
    }

    /// The host connected to.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port connected to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port, if the config wrote one (`LLMUX_PORT` is empty otherwise).
    pub fn given_port(&self) -> Option<u16> {
        self.port_given.then_some(self.port)
    }

    /// Prefixed to every request's path (empty for none).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// The forwarded `Host` header.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The backend as a URL, `LLMUX_UPSTREAM`: `http://AUTHORITY[/BASE]`
    /// (`http://127.0.0.1:PORT` for a `port`).
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.base_path)
    }

    /// What two models may not share: the host (as written, lowercase) and
    /// the port.
    pub fn endpoint(&self) -> (String, u16) {
        (self.host.to_string(), self.port)
    }
}

/// An IP address (IPv6 in brackets) or a name; `None` if empty.
fn parse_host(host: &str) -> Option<Host> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if bare.is_empty() {
        return None;
    }
    Some(match bare.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(bare.to_ascii_lowercase()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_a_backend_on_loopback() {
        let b = Backend::local(8001);
        assert_eq!((b.host(), b.port(), b.given_port()), (&Host::Ip(Ipv4Addr::LOCALHOST.into()), 8001, Some(8001)));
        assert_eq!((b.authority(), b.base_path()), ("127.0.0.1:8001", ""));
        assert_eq!(b.url(), "http://127.0.0.1:8001");
        assert_eq!(b, Backend::from_url("http://127.0.0.1:8001/").expect("valid"));
    }

    #[test]
    fn urls_give_host_port_base_and_authority() {
        let b = Backend::from_url("http://GPU-Box_2.lan:8000/proxy/llm/").expect("valid");
        assert_eq!(b.host(), &Host::Name("gpu-box_2.lan".into()));
        assert_eq!((b.port(), b.given_port(), b.base_path()), (8000, Some(8000), "/proxy/llm"));
        assert_eq!((b.authority(), b.url().as_str()), ("gpu-box_2.lan:8000", "http://gpu-box_2.lan:8000/proxy/llm"));
        let b = Backend::from_url("HTTP://vllm").expect("valid");
        assert_eq!((b.port(), b.given_port(), b.authority(), b.base_path()), (80, None, "vllm", ""));
        let b = Backend::from_url("http://[::1]:9000/v").expect("valid");
        assert_eq!(b.host(), &Host::Ip("::1".parse().expect("ip")));
        assert_eq!((b.authority(), b.url().as_str()), ("[::1]:9000", "http://[::1]:9000/v"));
        let b = Backend::from_url("http://10.0.0.7:1234").expect("valid");
        assert_eq!(b.endpoint(), ("10.0.0.7".to_owned(), 1234));
    }

    #[test]
    fn what_a_backend_url_may_not_be() {
        let cases = [
            ("https://gpu:8000", "https is not supported"),
            ("HTTPS://gpu", "https is not supported"),
            ("ftp://gpu:21", "scheme must be http"),
            ("gpu:8000", "http"),
            ("/just/a/path", "http://"),
            ("http://gpu:0", "must not be 0"),
            ("http://gpu:99999", "1 to 65535"),
            ("http://gpu:", "1 to 65535"),
            ("http://gpu:+80", "1 to 65535"),
            ("http://user:pw@gpu:8000", "credentials"),
            ("http://gpu:8000/v1?x=1", "query"),
            ("http://gpu:8000/#top", "fragment"),
            ("http://", "not a URL"),
            ("", "not a URL"),
            ("http://gpu 1:80", "not a URL"),
        ];
        for (url, needle) in cases {
            let e = Backend::from_url(url).expect_err(url);
            assert!(e.contains(needle), "{url:?}: {e}");
        }
    }
}
