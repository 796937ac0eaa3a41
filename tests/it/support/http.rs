//! A small HTTP client for tests: whole replies, streamed replies, and raw
//! bytes over TCP for the edge cases a client library would smooth over.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::PATIENCE;

/// A complete reply.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Which stand-in answered.
    pub fn served_by(&self) -> &str {
        self.header("x-standin-model").unwrap_or("(llmux)")
    }

    /// Asserts an OpenAI error with this status and code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let e = self.json();
        assert_eq!(e["error"]["code"], code, "{e}");
        let kind = if status < 500 { "invalid_request_error" } else { "server_error" };
        assert_eq!(e["error"]["type"], kind, "{e}");
        assert!(e["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        assert!(e["error"].get("param").is_some(), "{e}");
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends a request and returns the response head with its streaming body.
pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Incoming> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    tokio::time::timeout(PATIENCE, client().request(req)).await.expect("response in time").expect("response")
}

/// Sends a request and reads the whole reply.
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    let response = send(method, url, headers, body).await;
    let (head, body) = response.into_parts();
    let body = tokio::time::timeout(PATIENCE, body.collect()).await.expect("body in time").expect("body").to_bytes();
    Reply { status: head.status, headers: head.headers, body }
}

/// `GET url`.
pub async fn get(url: &str) -> Reply {
    request(Method::GET, url, &[], Bytes::new()).await
}

/// `POST url` with a JSON body.
pub async fn post(url: &str, body: &str) -> Reply {
    request(Method::POST, url, &[("content-type", "application/json")], body.to_owned()).await
}

/// A chat completion body for `model`.
pub fn chat(model: &str) -> String {
    format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"model":"{model}"}}"#)
}

/// A streaming chat completion body for `model`.
pub fn chat_stream(model: &str) -> String {
    format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"stream":true,"model":"{model}"}}"#)
}

/// The frames of a streamed body, each with when it arrived.
pub async fn frames(response: Response<Incoming>) -> Vec<(Instant, Bytes)> {
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame()).await.expect("frame in time") {
        if let Ok(data) = frame.expect("frame").into_data() {
            out.push((Instant::now(), data));
        }
    }
    out
}

/// Writes `bytes` to `addr` over a fresh TCP connection and reads until
/// the server closes it or `idle` passes without data.
pub async fn raw(addr: &str, bytes: &[u8], idle: Duration) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(idle, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
