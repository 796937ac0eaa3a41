//! The body of a streaming request that waits for its model with
//! feedback (`policy.stream_wait_feedback`).
//!
//! The request's `200` and `text/event-stream` head has gone out already.
//! Until its model is ready the body sends an SSE comment every
//! `stream_wait_feedback_secs` (the first at once), which every SSE client
//! ignores but which keeps proxies and clients with a read timeout from
//! giving up on a silent connection. Then the backend's own stream body
//! follows, frame by frame as it would without the wait. If the wait or
//! the forward fails (wake failed, timeout, the backend answered an error
//! status), the body ends with one `data:` event holding OpenAI's error
//! JSON, which OpenAI's SDKs raise as an error.
//!
//! The wait itself (queue, admission, forwarding) is a future the request
//! handler built: polling it is what waits, dropping the body (the client
//! went away) drops it and so leaves the queue, as a disconnect does for
//! any waiting request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::Response;
use serde_json::{json, Value};

use super::{BoxError, ResponseBody};
use crate::error::Error;
use crate::queue;
use crate::state::Shared;

/// How the wait ended: the backend's body to stream on, or the one error
/// event that ends the stream.
pub type Outcome = Result<ResponseBody, Bytes>;

/// The wait, admission and forward of a request, as the handler built it.
pub type Wait = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A waiting stream: comments while `wait` runs, then what it gave.
pub struct Waiting {
    shared: Arc<Shared>,
    model: usize,
    since: Instant,
    tick: tokio::time::Interval,
    stage: Stage,
}

// The whole `Waiting` is boxed once per waiting stream: boxing the
// backend's body again would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Stage {
    Waiting(Wait),
    Streaming(ResponseBody),
    Done,
}

impl Waiting {
    /// Comments about `model` every `every` while `wait` runs.
    pub fn new(shared: Arc<Shared>, model: usize, every: Duration, wait: Wait) -> Waiting {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Waiting { shared, model, since: Instant::now(), tick, stage: Stage::Waiting(wait) }
    }

    pub(super) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            match &mut self.stage {
                Stage::Waiting(wait) => match wait.as_mut().poll(cx) {
                    Poll::Ready(Ok(body)) => self.stage = Stage::Streaming(body),
                    Poll::Ready(Err(event)) => {
                        self.stage = Stage::Done;
                        return Poll::Ready(Some(Ok(Frame::data(event))));
                    }
                    Poll::Pending => {
                        return self.tick.poll_tick(cx).map(|_| Some(Ok(Frame::data(self.comment()))));
                    }
                },
                Stage::Streaming(body) => return Pin::new(body).poll_frame(cx),
                Stage::Done => return Poll::Ready(None),
            }
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        match &self.stage {
            Stage::Streaming(body) => body.is_end_stream(),
            Stage::Done => true,
            Stage::Waiting(_) => false,
        }
    }

    /// `: waiting for model b, position 2, 4 s`: the model, its place
    /// among the queued models (1: next) and the time waited so far.
    fn comment(&self) -> Bytes {
        let position = queue::position_of(&self.shared, self.model).max(1);
        let catalog = self.shared.catalog();
        let waited = self.since.elapsed().as_secs();
        Bytes::from(format!(": waiting for model {}, position {position}, {waited} s\n\n", catalog.name(self.model)))
    }
}

/// `data: JSON`, one SSE event that ends the stream.
pub fn error_event(error: &Value) -> Bytes {
    Bytes::from(format!("data: {error}\n\n"))
}

/// [`error_event`] of one of llmux's own errors.
pub fn llmux_error_event(e: &Error) -> Bytes {
    error_event(&e.to_json())
}

/// Most of a backend's error body read into the event.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The event for a backend that answered with an error status: its own
/// error JSON if it sent OpenAI's shape (`{"error": ...}`), else one that
/// names the status and starts with what it sent.
pub async fn backend_error_event(response: Response<ResponseBody>) -> Bytes {
    let status = response.status();
    let limited = http_body_util::Limited::new(response.into_body(), MAX_ERROR_BODY);
    let bytes = limited.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
        if value.get("error").is_some() {
            return error_event(&value);
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let start: String = text.chars().take(200).collect();
    let kind = if status.is_client_error() { "invalid_request_error" } else { "server_error" };
    let message = format!("the backend answered {status}: {}", start.trim());
    error_event(&json!({
        "error": { "message": message, "type": kind, "param": null, "code": "backend_error" }
    }))
}
