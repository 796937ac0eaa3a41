//! Talking to llmux below the client library: a raw HTTP/1.1 connection
//! that reads responses one at a time (interim `100 Continue` included),
//! and an h2c prior-knowledge client.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::Reply;
use super::PATIENCE;

/// One response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// A raw TCP connection speaking HTTP/1.1 by hand.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: &str) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawConn { stream, buf: Vec::new() }
    }

    /// Writes `bytes`.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Writes `bytes` while reading what llmux sends meanwhile, and stops
    /// writing once an answer starts to arrive, the peer closes, or a write
    /// fails: for uploads llmux may refuse before reading them (a blocked
    /// `write` would never see the answer). The write side stays open.
    pub async fn write_unless_answered(&mut self, mut bytes: &[u8]) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let before = self.buf.len();
        let mut chunk = [0u8; 16 * 1024];
        while !bytes.is_empty() && self.buf.len() == before {
            tokio::select! {
                ready = self.stream.readable() => {
                    ready.expect("readable");
                    match self.stream.try_read(&mut chunk) {
                        Ok(0) => return,
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
                ready = self.stream.writable() => {
                    ready.expect("writable");
                    match self.stream.try_write(bytes) {
                        Ok(n) => bytes = &bytes[n..],
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
                () = tokio::time::sleep_until(deadline) => panic!("the upload neither finished nor was answered in time"),
            }
        }
    }

    /// Reads more bytes; false once the peer closed (or reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await.expect("read in time") {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads one response (an interim 1xx counts as one), failing the test
    /// if the connection ends first. A response to HEAD must be read with
    /// [`RawConn::read_head`].
    pub async fn read_response(&mut self) -> RawResponse {
        self.try_read_response().await.unwrap_or_else(|| panic!("connection ended mid-response: {:?}", self.text()))
    }

    /// Like [`RawConn::read_response`], but `None` if the connection ends
    /// before a whole response arrived.
    pub async fn try_read_response(&mut self) -> Option<RawResponse> {
        let mut response = self.try_read_head().await?;
        if response.status < 200 || response.status == 204 || response.status == 304 {
            return Some(response);
        }
        let chunked = response.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length = response.header("content-length").map(|v| v.parse::<usize>().expect("content-length"));
        response.body = if chunked {
            self.read_chunked().await?
        } else if let Some(n) = length {
            self.take(n).await?
        } else {
            while self.fill().await {}
            std::mem::take(&mut self.buf)
        };
        Some(response)
    }

    /// Reads a response head only (for HEAD requests).
    pub async fn read_head(&mut self) -> RawResponse {
        self.try_read_head().await.unwrap_or_else(|| panic!("connection ended mid-head: {:?}", self.text()))
    }

    async fn try_read_head(&mut self) -> Option<RawResponse> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head: Vec<u8> = self.buf.drain(..end).collect();
        let head = String::from_utf8(head).expect("ascii head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        Some(RawResponse { status, headers, body: Vec::new() })
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn read_chunked(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let size_line = self.line().await?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16).expect("chunk size");
            if size == 0 {
                while !self.line().await?.is_empty() {}
                return Some(body);
            }
            body.extend(self.take(size).await?);
            self.take(2).await?;
        }
    }

    /// True if the peer closes the connection (EOF or reset) with no
    /// further bytes; panics if it sends more.
    pub async fn closes(&mut self) -> bool {
        let before = self.buf.len();
        let open = self.fill().await;
        assert_eq!(self.buf.len(), before, "unexpected bytes: {:?}", self.text());
        !open
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// Sends one request over h2c (HTTP/2 with prior knowledge, no TLS).
pub async fn h2c(method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> (Version, Reply) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let response =
        tokio::time::timeout(PATIENCE, client.request(req)).await.expect("response in time").expect("response");
    let version = response.version();
    let (head, body) = response.into_parts();
    let body = tokio::time::timeout(PATIENCE, body.collect()).await.expect("body in time").expect("body").to_bytes();
    (version, Reply { status: head.status, headers: head.headers, body })
}
