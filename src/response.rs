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

use crate::error::{retry_after_secs, Error};
use crate::proxy::Connection;
use crate::routing::InFlight;

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

enum Kind {
    /// A body llmux made itself (errors, `/health`, `/v1/models`).
    Full(Option<Bytes>),
    /// A backend's body, streamed; the guard keeps the model busy; the
    /// connection goes back to the pool when the body ends. `started` is
    /// the request's arrival: its duration is counted when this drops.
    Upstream { body: Incoming, in_flight: InFlight, conn: Option<Connection>, started: Instant },
    /// A stream llmux writes itself (`/llmux/events`), until the sender
    /// goes away.
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: Bytes) -> ResponseBody {
        ResponseBody { kind: Kind::Full(Some(bytes)) }
    }

    /// A backend's body, holding `in_flight` until it ends or is dropped,
    /// and `conn` until it ends (then it is pooled again); the request that
    /// arrived at `started` is counted in its model's duration histogram
    /// when the body is dropped.
    pub fn upstream(body: Incoming, in_flight: InFlight, conn: Connection, started: Instant) -> ResponseBody {
        ResponseBody { kind: Kind::Upstream { body, in_flight, conn: Some(conn), started } }
    }

    /// A body of the chunks `rx` yields, ending when its sender is dropped.
    pub fn stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> ResponseBody {
        ResponseBody { kind: Kind::Stream(rx) }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Kind::Upstream { in_flight, started, .. } = &self.kind {
            in_flight.incarnation().slot.metrics.duration.observe(started.elapsed());
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

/// A response body's error: the backend's, or a cut by a drain timeout.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { in_flight, .. } if in_flight.incarnation().is_cut() => {
                Poll::Ready(Some(Err("cut: the drain before a model switch timed out".into())))
            }
            Kind::Stream(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, in_flight, conn, .. } => match poll_upstream(body, conn, cx) {
                Poll::Ready(Some(Err(e))) => {
                    // A broken connection is not pooled again.
                    conn.take();
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // hyper stops polling once `is_end_stream` says so.
                    if body.is_end_stream() {
                        release(in_flight, conn);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => {
                    release(in_flight, conn);
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}
