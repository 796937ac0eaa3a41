//! Forwarding a request to a backend on 127.0.0.1 and preparing headers.
//!
//! Each [`Upstream`] is a pooled hyper-util client for one backend port,
//! created when its model is published (so no connection survives a
//! sleep/wake) with a short idle timeout: llama-server and uvicorn close
//! idle connections after 5 s, and the pool must drop them first. A request
//! that meets a dead pooled connection before any byte was written is
//! retried once by the client (`retry_canceled_requests`, on by default).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::error::Error;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1);
/// every `Proxy-*` header is dropped as well.
const HOP_BY_HOP: [HeaderName; 5] =
    [header::CONNECTION, HeaderName::from_static("keep-alive"), header::TE, header::TRAILER, header::TRANSFER_ENCODING];

/// A pooled HTTP/1.1 client for one backend port.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    authority: Authority,
    host: HeaderValue,
    first_byte_timeout: Option<Duration>,
}

/// How an [`Upstream`] connects and waits.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamOptions {
    /// Idle pooled connections are closed after this.
    pub idle_timeout: Duration,
    /// Connecting may take this long.
    pub connect_timeout: Duration,
    /// The response head must arrive within this, if set.
    pub first_byte_timeout: Option<Duration>,
}

impl UpstreamOptions {
    /// Options with the given idle timeout and the default limits.
    pub fn with_idle_timeout(idle_timeout: Duration) -> UpstreamOptions {
        UpstreamOptions { idle_timeout, connect_timeout: Duration::from_secs(5), first_byte_timeout: None }
    }
}

impl Upstream {
    /// A new pool for the backend on `127.0.0.1:port`.
    pub fn new(port: u16, options: UpstreamOptions) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(options.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(options.idle_timeout)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let authority_text = format!("127.0.0.1:{port}");
        let host = HeaderValue::from_str(&authority_text).unwrap_or(HeaderValue::from_static("127.0.0.1"));
        let authority =
            Authority::from_maybe_shared(Bytes::from(authority_text)).unwrap_or(Authority::from_static("127.0.0.1"));
        Upstream { client, authority, host, first_byte_timeout: options.first_byte_timeout }
    }

    /// Sends `head` and `body` to the backend and returns its response head.
    ///
    /// `head` is expected to be cleaned by [`prepare_request_headers`].
    pub async fn forward(
        &self,
        mut head: hyper::http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Incoming>, Error> {
        head.uri = self.uri_for(&head.uri);
        head.version = Version::HTTP_11;
        head.headers.insert(header::HOST, self.host.clone());
        let request = Request::from_parts(head, Full::new(body));
        let response = self.client.request(request);
        let result = match self.first_byte_timeout {
            None => response.await,
            Some(limit) => match tokio::time::timeout(limit, response).await {
                Ok(result) => result,
                Err(_) => {
                    let secs = limit.as_secs();
                    return Err(Error::backend_timeout(format!("backend sent no response within {secs}s")));
                }
            },
        };
        match result {
            Ok(mut response) => {
                strip_hop_by_hop(response.headers_mut());
                Ok(response)
            }
            Err(e) if e.is_connect() => Err(Error::backend(format!("cannot connect to the backend: {}", chain(&e)))),
            Err(e) => Err(Error::backend(format!("backend error: {}", chain(&e)))),
        }
    }

    fn uri_for(&self, original: &Uri) -> Uri {
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query =
            Some(original.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
        Uri::from_parts(parts).unwrap_or_else(|_| original.clone())
    }
}

/// The error and its sources, joined, for a 502's message.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Cleans a client's request headers for the backend: drops hop-by-hop
/// headers (and those the client named in `Connection`), `Expect` (llmux
/// answered it) and `Content-Length` (the client sets it from the body),
/// appends the client address to `X-Forwarded-For` and sets `X-Request-Id`.
pub fn prepare_request_headers(headers: &mut HeaderMap, client_ip: &HeaderValue, request_id: &HeaderValue) {
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::UPGRADE);
    // A second field line is the same as appending to the list (RFC 9110 §5.3).
    headers.append(X_FORWARDED_FOR.clone(), client_ip.clone());
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(named) = connection_named_headers(headers) {
        for name in named {
            headers.remove(&name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    // `Proxy-Connection`, `Proxy-Authorization`, `Proxy-Authenticate`, ...
    if headers.keys().any(is_proxy_header) {
        let named: Vec<HeaderName> = headers.keys().filter(|n| is_proxy_header(n)).cloned().collect();
        for name in named {
            headers.remove(&name);
        }
    }
}

fn is_proxy_header(name: &HeaderName) -> bool {
    name.as_str().starts_with("proxy-")
}

/// Extra headers named by `Connection`, if it names any besides the usual
/// `keep-alive` and `close` (allocates only then).
fn connection_named_headers(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let is_usual = |t: &str| t.is_empty() || t.eq_ignore_ascii_case("keep-alive") || t.eq_ignore_ascii_case("close");
    let tokens = || {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
    };
    if tokens().all(is_usual) {
        return None;
    }
    Some(tokens().filter(|t| !is_usual(t)).filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("proxy-foo", HeaderValue::from_static("1"));
        h.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static("10.0.0.1"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        prepare_request_headers(&mut h, &HeaderValue::from_static("127.0.0.1"), &HeaderValue::from_static("id-1"));
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "transfer-encoding",
            "expect",
            "proxy-authorization",
            "proxy-connection",
            "proxy-foo",
        ] {
            assert!(!h.contains_key(gone), "{gone} survived");
        }
        let xff: Vec<_> = h.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(xff, ["10.0.0.1", "127.0.0.1"]);
        assert_eq!(h[&X_REQUEST_ID], "id-1");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn uri_keeps_path_and_query() {
        let up = Upstream::new(8123, UpstreamOptions::with_idle_timeout(Duration::from_secs(1)));
        let uri: Uri = "/v1/chat/completions?x=1&y=%20".parse().expect("uri");
        assert_eq!(up.uri_for(&uri).to_string(), "http://127.0.0.1:8123/v1/chat/completions?x=1&y=%20");
    }
}
