//! Response bodies out, and errors turned into responses (in one place).
//!
//! A response body from a backend is streamed frame by frame as the
//! backend writes it, and carries the request's [`InFlight`] guard, so the
//! model counts as busy until the last byte is sent or the client goes
//! away (dropping the body drops the upstream response, which closes that
//! backend connection and so cancels the generation).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::Response;

use crate::access::Access;
use crate::error::{retry_after_secs, Error};
use crate::proxy::Connection;
use crate::routing::InFlight;

pub mod waiting;

impl Error {
    /// OpenAI's error JSON with this error's status (and `Retry-After`).
    pub fn into_response(self) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::full(Bytes::from(self.to_json().to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(after) = self.retry_after() {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(after)));
        }
        response
    }
}

/// The body of every response llmux sends.
pub struct ResponseBody {
    kind: Kind,
}

// `Upstream` is the common case: boxing it would cost an allocation per
// proxied request to save a few hundred bytes on llmux's own answers.
#[allow(clippy::large_enum_variant)]
enum Kind {
    /// A body llmux made itself (errors, `/health`, `/v1/models`).
    Full(Option<Bytes>),
    /// A backend's body, streamed; the guard keeps the model busy; the
    /// connection goes back to the pool when the body ends. `started` is
    /// the request's arrival: its duration is counted when this drops.
    Upstream(Upstream),
    /// A stream llmux writes itself (`/llmux/events`), until the sender
    /// goes away.
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
    /// A streaming request waiting for its model, with feedback: comments,
    /// then the backend's body (see [`waiting`]).
    Waiting(Box<waiting::Waiting>),
}

/// A backend's body and what is counted (and logged) when it drops.
struct Upstream {
    body: Incoming,
    in_flight: InFlight,
    conn: Option<Connection>,
    started: Instant,
    /// Data bytes handed to the connection so far.
    bytes_out: u64,
    /// The access-log record, when the log is on.
    access: Option<Access>,
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: Bytes) -> ResponseBody {
        ResponseBody { kind: Kind::Full(Some(bytes)) }
    }

    /// A backend's body, holding `in_flight` until it ends or is dropped,
    /// and `conn` until it ends (then it is pooled again); the request that
    /// arrived at `started` is counted in its model's duration histogram
    /// when the body is dropped, and writes its `access` line then.
    pub fn upstream(
        body: Incoming,
        in_flight: InFlight,
        conn: Connection,
        started: Instant,
        access: Option<Access>,
    ) -> ResponseBody {
        let upstream = Upstream { body, in_flight, conn: Some(conn), started, bytes_out: 0, access };
        ResponseBody { kind: Kind::Upstream(upstream) }
    }

    /// True if the body is a backend's, which writes its own access-log
    /// line when dropped.
    pub fn is_upstream(&self) -> bool {
        matches!(self.kind, Kind::Upstream(_))
    }

    /// A waiting stream's body ([`waiting`]).
    pub fn waiting(waiting: waiting::Waiting) -> ResponseBody {
        ResponseBody { kind: Kind::Waiting(Box::new(waiting)) }
    }

    /// A body of the chunks `rx` yields, ending when its sender is dropped.
    pub fn stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> ResponseBody {
        ResponseBody { kind: Kind::Stream(rx) }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Kind::Upstream(up) = &self.kind {
            let slot = &up.in_flight.incarnation().slot;
            let duration = up.started.elapsed();
            slot.metrics.duration.observe(duration);
            if let Some(access) = &up.access {
                access.finish(&slot.name, duration, up.bytes_out);
            }
        }
    }
}

/// Pools the connection of a response that has ended.
fn release(in_flight: &InFlight, conn: &mut Option<Connection>) {
    if let Some(conn) = conn.take() {
        in_flight.incarnation().upstream.release(conn);
    }
}

/// Drives the connection's I/O (it has no task of its own), then reads
/// the next frame of the body it feeds.
fn poll_upstream(
    body: &mut Incoming,
    conn: &mut Option<Connection>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
    if let Some(conn) = conn.as_mut() {
        conn.poll_io(cx);
    }
    Pin::new(body).poll_frame(cx)
}

impl Upstream {
    /// The next frame, counting its data bytes; pools the connection at
    /// the end, drops it on an error.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match poll_upstream(&mut self.body, &mut self.conn, cx) {
            Poll::Ready(Some(Err(e))) => {
                // A broken connection is not pooled again.
                self.conn.take();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
                // hyper stops polling once `is_end_stream` says so.
                if self.body.is_end_stream() {
                    release(&self.in_flight, &mut self.conn);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                release(&self.in_flight, &mut self.conn);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A response body's error: the backend's, or a cut by a drain timeout.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(up) if up.in_flight.incarnation().is_cut() => {
                Poll::Ready(Some(Err("cut: the drain before a model switch timed out".into())))
            }
            Kind::Stream(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(up) => up.poll_frame(cx),
            Kind::Waiting(waiting) => waiting.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(up) => up.body.is_end_stream(),
            Kind::Stream(_) => false,
            Kind::Waiting(waiting) => waiting.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(up) => up.body.size_hint(),
            Kind::Stream(_) | Kind::Waiting(_) => SizeHint::default(),
        }
    }
}
