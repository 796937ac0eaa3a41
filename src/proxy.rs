//! Forwarding a request to a backend and preparing headers.
//!
//! Each [`Upstream`] owns the keep-alive HTTP/1.1 connections to one
//! backend (a port on 127.0.0.1, or a model's `url`: an address, or a name
//! resolved off the request path by [`crate::resolve`]; a base path, if
//! any, prefixed to each request's path; `Host` the backend's authority):
//! hyper's client connections (`client::conn::http1`) in a
//! lock-free LIFO pool ([`crate::pool`]: the connection used last, the one
//! least likely closed by the backend, is reused first). It is created
//! when its model is published, so no
//! connection survives a sleep/wake. A [`Connection`] has no task of its
//! own: the request using it drives its I/O, while waiting for the
//! response head and then from the response body's `poll_frame`, so a
//! request (and each chunk of a stream) costs no hop between tasks. A
//! connection goes back to the queue when its response body has been read
//! to the end (see [`crate::response::ResponseBody`]); one dropped early is
//! closed, which cancels the generation. Idle connections older than the idle
//! timeout are dropped when next taken or by the periodic reaper
//! (llama-server and uvicorn close idle connections after 5 s, so the
//! default is 4). A request that finds
//! a pooled connection dead before any byte was written is retried once on
//! a new connection.
//!
//! A connection the backend refuses (nothing listens), or cannot reach (no
//! route to its host, its name does not resolve), is [`Forwarded::Refused`]:
//! the caller has the switch task check the model. The connect timeout
//! covers the name's lookup as well.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::backend::{Backend, Host};
use crate::body::{OutgoingBody, RequestBody};
use crate::error::Error;
use crate::pool::LifoPool;
use crate::resolve::{Addresses, Resolver};

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// `HTTP2-Settings`, sent with an `Upgrade: h2c` offer (RFC 7540 §3.2.1).
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1);
/// every `Proxy-*` header is dropped as well.
const HOP_BY_HOP: [HeaderName; 5] =
    [header::CONNECTION, HeaderName::from_static("keep-alive"), header::TE, header::TRAILER, header::TRANSFER_ENCODING];

/// Idle connections kept per backend; more are closed when released.
const MAX_IDLE: usize = 256;

/// What became of a forwarded request.
pub enum Forwarded {
    /// The backend answered: its response head, and the connection to
    /// release when the body ends.
    Answered(Response<Incoming>, Connection),
    /// The backend refused the connection (or could not be reached, or
    /// its name did not resolve) before anything was sent; here is the
    /// request head back, to send again once the model is re-woken, and
    /// what happened.
    Refused(hyper::http::request::Parts, String),
}

/// hyper's connection future: reads and writes the socket.
type Driver = http1::Connection<TokioIo<tokio::net::TcpStream>, OutgoingBody>;

/// A connection to a backend: hyper's request handle and the future that
/// does the connection's I/O, polled by whichever request holds it.
pub struct Connection {
    sender: SendRequest<OutgoingBody>,
    driver: Pin<Box<Driver>>,
    /// The driver has finished: the connection is closed.
    closed: bool,
}

impl Connection {
    /// Drives the connection's I/O; true once the connection is over.
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> bool {
        poll_driver(&mut self.driver, &mut self.closed, cx)
    }

    /// Sends `request`, driving the connection until the response head.
    async fn send(
        &mut self,
        request: Request<OutgoingBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<OutgoingBody>>> {
        let response = self.sender.try_send_request(request);
        tokio::pin!(response);
        let (driver, closed) = (&mut self.driver, &mut self.closed);
        std::future::poll_fn(|cx| {
            poll_driver(driver, closed, cx);
            response.as_mut().poll(cx)
        })
        .await
    }

    /// Drives a pooled connection until it can take a request; false if it
    /// closed meanwhile.
    async fn ready(&mut self) -> bool {
        let (sender, driver, closed) = (&mut self.sender, &mut self.driver, &mut self.closed);
        std::future::poll_fn(|cx| {
            let over = poll_driver(driver, closed, cx);
            match sender.poll_ready(cx) {
                Poll::Ready(result) => Poll::Ready(result.is_ok() && !over),
                Poll::Pending if over => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

fn poll_driver(driver: &mut Pin<Box<Driver>>, closed: &mut bool, cx: &mut Context<'_>) -> bool {
    if !*closed {
        if let Poll::Ready(result) = driver.as_mut().poll(cx) {
            if let Err(e) = result {
                tracing::debug!("backend connection ended: {e}");
            }
            *closed = true;
        }
    }
    *closed
}

/// The keep-alive connections to one backend.
pub struct Upstream {
    target: Target,
    /// The `Host` header: the backend's authority.
    host: HeaderValue,
    /// Prefixed to each request's path (a `url`'s base path), if any.
    base_path: Option<Box<str>>,
    /// Idle connections and when they were released, the latest on top.
    idle: LifoPool<(Connection, Instant)>,
    options: UpstreamOptions,
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

/// Where an upstream connects.
enum Target {
    /// An address, connected to as it is.
    Addr(SocketAddr),
    /// A host name, resolved off the request path.
    Name(Arc<Resolver>),
}

impl Upstream {
    /// A new, empty pool for the backend on `127.0.0.1:port`.
    pub fn new(port: u16, options: UpstreamOptions) -> Upstream {
        Upstream::to(&Backend::local(port), options)
    }

    /// A new, empty pool for `backend`. A host name is not looked up
    /// until [`Upstream::prefetch`] or the first connection.
    pub fn to(backend: &Backend, options: UpstreamOptions) -> Upstream {
        let target = match backend.host() {
            Host::Ip(ip) => Target::Addr(SocketAddr::new(*ip, backend.port())),
            Host::Name(name) => Target::Name(Arc::new(Resolver::new(name, backend.port()))),
        };
        let host = HeaderValue::from_str(backend.authority()).unwrap_or(HeaderValue::from_static("localhost"));
        let base_path = Some(backend.base_path()).filter(|b| !b.is_empty()).map(Box::from);
        Upstream { target, host, base_path, idle: LifoPool::new(MAX_IDLE), options }
    }

    /// Looks the backend's host name up in the background (the switch
    /// task calls this when it publishes the model), so the first request
    /// finds its addresses; nothing for an address.
    pub fn prefetch(&self) {
        if let Target::Name(resolver) = &self.target {
            tokio::spawn(resolver.refresh());
        }
    }

    /// Sends `head` and `body` to the backend; returns its response head and
    /// the connection, to [`release`](Upstream::release) once the response
    /// body has ended.
    ///
    /// `head` is expected to be cleaned by [`prepare_request_headers`].
    pub async fn forward(&self, mut head: hyper::http::request::Parts, body: RequestBody) -> Result<Forwarded, Error> {
        if head.uri.authority().is_some() {
            head.uri = origin_form(&head.uri);
        }
        // The client's target, to hand back with a refused request (sent
        // again later, it is prefixed again).
        let unprefixed = match &self.base_path {
            Some(base) => {
                let target = with_base_path(base, &head.uri)?;
                Some(std::mem::replace(&mut head.uri, target))
            }
            None => None,
        };
        head.version = Version::HTTP_11;
        head.headers.insert(header::HOST, self.host.clone());
        let request = Request::from_parts(head, body.outgoing());
        let send = self.send(request);
        let result = match self.options.first_byte_timeout {
            None => send.await,
            Some(limit) => tokio::time::timeout(limit, send).await.unwrap_or_else(|_| {
                Err(Error::backend_timeout(format!("backend sent no response within {}s", limit.as_secs_f64())))
            }),
        };
        Ok(match result? {
            Forwarded::Answered(mut response, conn) => {
                strip_hop_by_hop(response.headers_mut());
                Forwarded::Answered(response, conn)
            }
            Forwarded::Refused(mut head, why) => {
                if let Some(uri) = unprefixed {
                    head.uri = uri;
                }
                Forwarded::Refused(head, why)
            }
        })
    }

    /// Sends on a pooled connection, or a new one; a pooled connection that
    /// turns out dead before the request was written is replaced once.
    async fn send(&self, request: Request<OutgoingBody>) -> Result<Forwarded, Error> {
        let (mut conn, reused) = match self.take_idle().await {
            Some(conn) => (conn, true),
            None => match self.connect().await? {
                Ok(conn) => (conn, false),
                Err(why) => return Ok(Forwarded::Refused(request.into_parts().0, why)),
            },
        };
        match conn.send(request).await {
            Ok(response) => Ok(Forwarded::Answered(response, conn)),
            Err(mut e) => match e.take_message() {
                Some(request) if reused => {
                    let mut fresh = match self.connect().await? {
                        Ok(fresh) => fresh,
                        Err(why) => return Ok(Forwarded::Refused(request.into_parts().0, why)),
                    };
                    let response = fresh.send(request).await.map_err(|e| backend_error(e.into_error()))?;
                    Ok(Forwarded::Answered(response, fresh))
                }
                _ => Err(backend_error(e.into_error())),
            },
        }
    }

    /// The most recently released pooled connection that is still open and
    /// not past the idle timeout (the ones past it are closed on the way).
    async fn take_idle(&self) -> Option<Connection> {
        while let Some((mut conn, since)) = self.idle.pop() {
            if conn.closed || since.elapsed() >= self.options.idle_timeout {
                continue;
            }
            // Nobody drove it while it was pooled: this reads a close the
            // backend sent meanwhile, and finishes the last response.
            if conn.ready().await {
                return Some(conn);
            }
        }
        None
    }

    /// A new connection (TCP_NODELAY); `Err(why)` if the backend refused
    /// it (nothing listens on its port), could not be reached, or its name
    /// did not resolve. The connect timeout covers the lookup too.
    async fn connect(&self) -> Result<Result<Connection, String>, Error> {
        let limit = self.options.connect_timeout;
        let stream = match tokio::time::timeout(limit, self.open()).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(Opening::Refused(why))) => return Ok(Err(why)),
            Ok(Err(Opening::Failed(e))) => {
                return Err(Error::backend(format!("cannot connect to the backend at {}: {e}", self.authority())))
            }
            Err(_) => {
                if let Target::Name(resolver) = &self.target {
                    resolver.retry(None);
                }
                return Err(Error::backend(format!(
                    "connecting to the backend at {} took over {}s",
                    self.authority(),
                    limit.as_secs()
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await.map_err(backend_error)?;
        Ok(Ok(Connection { sender, driver: Box::pin(driver), closed: false }))
    }

    /// Opens a TCP connection to the backend: its address, or the
    /// addresses its name resolves to (tried in order); after a failed
    /// connection to those, the name is looked up again.
    async fn open(&self) -> Result<tokio::net::TcpStream, Opening> {
        match &self.target {
            Target::Addr(addr) => tokio::net::TcpStream::connect(*addr).await.map_err(|e| self.opening(e)),
            Target::Name(resolver) => {
                let addrs: Addresses = resolver.addresses().await.map_err(Opening::Refused)?;
                tokio::net::TcpStream::connect(addrs.as_slice()).await.map_err(|e| {
                    resolver.retry(Some(&addrs));
                    self.opening(e)
                })
            }
        }
    }

    /// What a failed connect means: refused and unreachable go to the
    /// switch task's check; anything else is a 502.
    fn opening(&self, e: std::io::Error) -> Opening {
        use std::io::ErrorKind::{ConnectionRefused, HostUnreachable, NetworkUnreachable};
        match e.kind() {
            ConnectionRefused => {
                Opening::Refused(format!("the backend at {} refused the connection", self.authority()))
            }
            HostUnreachable | NetworkUnreachable => {
                Opening::Refused(format!("the backend at {} cannot be reached: {e}", self.authority()))
            }
            _ => Opening::Failed(e),
        }
    }

    /// The backend's authority, for messages.
    fn authority(&self) -> &str {
        self.host.to_str().unwrap_or("?")
    }

    /// Closes pooled connections idle past the idle timeout; run
    /// periodically by the incarnation's reaper (see `switcher::publish`).
    pub fn reap_idle(&self) {
        let timeout = self.options.idle_timeout;
        self.idle.retain(|(conn, since)| !conn.closed && since.elapsed() < timeout);
    }

    /// How long a pooled connection may stay idle.
    pub fn idle_timeout(&self) -> Duration {
        self.options.idle_timeout
    }

    /// Returns a connection whose response has ended to the pool.
    pub fn release(&self, conn: Connection) {
        // A full pool drops the connection, which closes it.
        let _ = self.idle.push((conn, Instant::now()));
    }
}

/// Why a connection could not be opened.
enum Opening {
    /// Refused, unreachable, or the name did not resolve: the switch task
    /// checks the model.
    Refused(String),
    /// Any other error: a 502.
    Failed(std::io::Error),
}

/// `base` (a `url`'s base path) before the request's origin-form target:
/// `/llm` and `/v1/models?x` give `/llm/v1/models?x`.
fn with_base_path(base: &str, uri: &Uri) -> Result<Uri, Error> {
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Uri::try_from(format!("{base}{target}"))
        .map_err(|e| Error::backend(format!("cannot put the base path `{base}` before `{target}`: {e}")))
}

fn backend_error(e: hyper::Error) -> Error {
    Error::backend(format!("backend error: {}", chain(&e)))
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
/// answered it), `Content-Length` (the client sets it from the body) and
/// an ignored `Upgrade: h2c` offer with its `HTTP2-Settings`, appends the client address to `X-Forwarded-For` and sets `X-Request-Id`.
pub fn prepare_request_headers(headers: &mut HeaderMap, client_ip: &HeaderValue, request_id: &HeaderValue) {
    // Before `Connection` is read: it may name `Upgrade` too.
    if headers.remove(header::UPGRADE).is_some() {
        // An ignored `h2c` offer's settings (hop-by-hop even when the
        // client did not name them in `Connection`).
        headers.remove(&HTTP2_SETTINGS);
    }
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    headers.remove(header::CONTENT_LENGTH);
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

/// The origin-form of an absolute URI (`http://host/p?q` → `/p?q`), as
/// HTTP/1.1 wants it: HTTP/2 requests and absolute-form HTTP/1.1 requests
/// carry one. An empty path becomes `/` (RFC 9112 §3.2.1), so
/// `http://host?q` and `http://host#frag` never go out as an empty target.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        // An empty path reads as "/" here but would be written as "".
        Some(pq) if pq.as_str() == "/" => Uri::from_static("/"),
        Some(pq) if pq.as_str().starts_with('/') => Uri::from(pq.clone()),
        Some(pq) => match pq.query() {
            Some(query) => Uri::try_from(format!("/?{query}")).unwrap_or_else(|_| Uri::from_static("/")),
            None => Uri::from_static("/"),
        },
        None => Uri::from_static("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_uris_become_origin_form_with_a_path() {
        let cases = [
            ("http://h:1/v1/chat/completions?q=1", "/v1/chat/completions?q=1"),
            ("http://example#.com:9556/v1/x", "/"),
            ("http://h?q=1", "/?q=1"),
            ("http://h", "/"),
            ("/already/origin", "/already/origin"),
        ];
        for (absolute, origin) in cases {
            let uri: Uri = absolute.parse().expect("a test URI");
            assert_eq!(origin_form(&uri).to_string(), origin, "for {absolute}");
        }
    }

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

    /// Answers the one request that arrives on `a` or `b`; which one it was.
    async fn answer_on(a: &mut tokio::net::TcpStream, b: &mut tokio::net::TcpStream) -> u8 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut buf_a, mut buf_b) = ([0u8; 1024], [0u8; 1024]);
        let (which, stream) = tokio::select! {
            n = a.read(&mut buf_a) => (1, n.map(|_| a)),
            n = b.read(&mut buf_b) => (2, n.map(|_| b)),
        };
        let stream = stream.expect("a request");
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.expect("answer");
        which
    }

    /// Reads `stream` until the peer closes it, failing after 10 s.
    async fn closed(stream: &mut tokio::net::TcpStream) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "the connection is still open: {read:?}");
    }

    #[tokio::test]
    async fn the_last_released_connection_is_reused_first_and_the_reaper_closes_idle_ones() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Upstream::new(port, UpstreamOptions::with_idle_timeout(Duration::from_millis(200)));
        let older = up.connect().await.expect("connect").expect("not refused");
        let (mut older_peer, _) = listener.accept().await.expect("accept");
        let newer = up.connect().await.expect("connect").expect("not refused");
        let (mut newer_peer, _) = listener.accept().await.expect("accept");
        up.release(older);
        up.release(newer);
        // The one released last carries the next request.
        let mut conn = up.take_idle().await.expect("a pooled connection");
        let request = Request::get("/").body(RequestBody::default().outgoing()).expect("request");
        let (response, which) = tokio::join!(conn.send(request), answer_on(&mut older_peer, &mut newer_peer));
        assert_eq!(response.expect("response").status(), 200);
        assert_eq!(which, 2, "the older connection was reused first");
        up.release(conn);
        // Both idle past the timeout (the timeout is what is under test):
        // the reaper closes them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        up.reap_idle();
        closed(&mut older_peer).await;
        closed(&mut newer_peer).await;
        assert!(up.take_idle().await.is_none());
    }

    #[test]
    fn an_h2c_offer_is_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade, HTTP2-Settings"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(HTTP2_SETTINGS.clone(), HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        let mut unnamed = h.clone();
        unnamed.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        for mut h in [h, unnamed] {
            prepare_request_headers(&mut h, &HeaderValue::from_static("127.0.0.1"), &HeaderValue::from_static("id"));
            for gone in ["connection", "upgrade", "http2-settings"] {
                assert!(!h.contains_key(gone), "{gone} survived");
            }
            assert_eq!(h["x-kept"], "yes");
        }
    }

    #[test]
    fn host_names_the_backend() {
        let up = Upstream::new(8123, UpstreamOptions::with_idle_timeout(Duration::from_secs(1)));
        assert_eq!(up.host, "127.0.0.1:8123");
    }
}
