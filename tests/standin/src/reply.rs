//! Writing a response: the status line and headers every answer carries
//! (`x-standin-model`, the echoed `x-request-id`, `connection`), a
//! fixed-length body in the same write, and the fates a stream fault asks
//! for once the head and half the body are out (hang or reset). Cancelled
//! answers are counted for `/standin/stats`.

use std::io::Write as _;
use std::sync::atomic::Ordering;

use crate::conn::{deadline_after, After, Conn, Waited};
use crate::faults::StreamFault;
use crate::http::Request;
use crate::state::State;

/// How the body's end is signalled.
pub enum BodyLen {
    Fixed(usize),
    /// No body and no Content-Length (204, 304).
    Nothing,
    Chunked,
    /// HTTP/1.0 streaming: the body ends when the connection closes.
    UntilClose,
}

/// Answers one request.
pub struct Responder<'a> {
    pub state: &'a State,
    pub request_id: Option<&'a [u8]>,
    pub close: bool,
    head_only: bool,
    pub http10: bool,
    /// Whether a cancellation counts in /standin/stats.
    pub counted: bool,
    /// What `x-standin-hang`/`x-standin-reset: stream` asked for.
    pub fault: StreamFault,
}

impl<'a> Responder<'a> {
    pub fn new(state: &'a State, req: &'a Request) -> Self {
        Responder {
            state,
            request_id: req.header("x-request-id"),
            close: !req.keep_alive,
            head_only: req.method() == "HEAD",
            http10: req.http10,
            counted: false,
            fault: StreamFault::None,
        }
    }

    /// For a request that could not be read: closes the connection.
    pub fn for_bad_request(state: &'a State) -> Self {
        Responder {
            state,
            request_id: None,
            close: true,
            head_only: false,
            http10: false,
            counted: false,
            fault: StreamFault::None,
        }
    }
}

impl Responder<'_> {
    pub fn cancelled(&self) {
        if self.counted {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The status line and headers, through the blank line.
    pub fn head(&self, status: u16, ctype: &str, len: BodyLen, extra: &str, close: bool) -> Vec<u8> {
        let mut h = Vec::with_capacity(256);
        let _ = write!(h, "HTTP/1.1 {status} {}\r\n", reason(status));
        if !ctype.is_empty() {
            let _ = write!(h, "content-type: {ctype}\r\n");
        }
        match len {
            BodyLen::Fixed(n) => {
                let _ = write!(h, "content-length: {n}\r\n");
            }
            BodyLen::Chunked => h.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            BodyLen::Nothing | BodyLen::UntilClose => {}
        }
        h.extend_from_slice(b"x-standin-model: ");
        h.extend_from_slice(self.state.model.as_bytes());
        h.extend_from_slice(b"\r\n");
        if let Some(id) = self.request_id {
            h.extend_from_slice(b"x-request-id: ");
            h.extend_from_slice(id);
            h.extend_from_slice(b"\r\n");
        }
        h.extend_from_slice(extra.as_bytes());
        if close {
            h.extend_from_slice(b"connection: close\r\n");
        } else if self.http10 {
            h.extend_from_slice(b"connection: keep-alive\r\n");
        }
        h.extend_from_slice(b"\r\n");
        h
    }

    pub fn after(&self) -> After {
        if self.close {
            After::Close
        } else {
            After::KeepAlive
        }
    }

    /// Hangs until the client goes away (or shutdown).
    pub async fn hang(&self, conn: &mut Conn) -> After {
        if let Waited::Gone = conn.wait(None).await {
            self.cancelled();
        }
        After::Close
    }

    /// Waits `ms`; `Some` if the connection is done meanwhile (the client
    /// left, or shutdown).
    pub async fn pause(&self, conn: &mut Conn, ms: u64) -> Option<After> {
        match conn.wait(deadline_after(ms)).await {
            Waited::Elapsed => None,
            Waited::Gone => {
                self.cancelled();
                Some(After::Close)
            }
            Waited::Shutdown => Some(After::Close),
        }
    }

    /// Writes `bytes`; on failure the answer is cancelled and the
    /// connection closed.
    pub async fn write(&self, conn: &mut Conn, bytes: &[u8]) -> Result<(), After> {
        conn.write(bytes).await.map_err(|_| {
            self.cancelled();
            After::Close
        })
    }

    /// A whole response in one write, or, with a stream fault, its head and
    /// half its body before hanging or resetting.
    pub async fn send(&self, conn: &mut Conn, status: u16, ctype: &str, extra: &str, body: &[u8]) -> After {
        let no_body = status == 204 || status == 304;
        let (len, ctype, body) =
            if no_body { (BodyLen::Nothing, "", &[][..]) } else { (BodyLen::Fixed(body.len()), ctype, body) };
        let body = if self.head_only { &[][..] } else { body };
        let mut out = self.head(status, ctype, len, extra, self.close);
        let body = if self.fault == StreamFault::None { body } else { &body[..body.len() / 2] };
        out.extend_from_slice(body);
        if let Err(after) = self.write(conn, &out).await {
            return after;
        }
        match self.fault {
            StreamFault::None => self.after(),
            StreamFault::Hang => self.hang(conn).await,
            StreamFault::Reset => After::Reset,
        }
    }

    pub async fn json(&self, conn: &mut Conn, status: u16, body: &[u8]) -> After {
        self.send(conn, status, "application/json", "", body).await
    }

    /// 405 with `allow`.
    pub async fn method_not_allowed(&self, conn: &mut Conn, allow: &str) -> After {
        let body = crate::responses::method_not_allowed(allow);
        let extra = format!("allow: {allow}\r\n");
        self.send(conn, 405, "application/json", &extra, &body).await
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}
