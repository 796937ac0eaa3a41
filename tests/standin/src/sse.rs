//! Streamed completions (`"stream": true`, or any stream fault):
//! server-sent events, one `data:` event per write, as HTTP/1.1 chunks (or
//! until close for HTTP/1.0). `x-standin-chunks` sets how many events carry
//! the text, `x-standin-chunk-ms` paces them, `x-standin-hang: stream` and
//! `x-standin-reset: stream` cut the stream after one and two events; then
//! an optional usage event and `[DONE]`.

use std::fmt::Write as _;
use std::io::Write as _;

use crate::conn::{After, Conn};
use crate::faults::{Faults, StreamFault};
use crate::reply::{BodyLen, Responder};
use crate::responses::{json_string, Completion, Kind};

/// The bytes of the next write and the JSON of its event.
struct Frames {
    chunked: bool,
    payload: String,
    frame: Vec<u8>,
}

impl Frames {
    /// Appends the event whose JSON `fill` writes.
    fn push(&mut self, fill: impl FnOnce(&mut String)) {
        self.payload.clear();
        fill(&mut self.payload);
        push_event(&mut self.frame, self.chunked, &self.payload);
    }
}

/// Appends `data: PAYLOAD\n\n`, as one HTTP chunk when `chunked`.
fn push_event(frame: &mut Vec<u8>, chunked: bool, payload: &str) {
    if chunked {
        let _ = write!(frame, "{:x}\r\n", payload.len() + 8);
    }
    frame.extend_from_slice(b"data: ");
    frame.extend_from_slice(payload.as_bytes());
    frame.extend_from_slice(b"\n\n");
    if chunked {
        frame.extend_from_slice(b"\r\n");
    }
}

impl Responder<'_> {
    /// Streams `completion` with the pacing and faults of `faults`.
    pub async fn sse(&self, conn: &mut Conn, faults: &Faults, completion: &Completion<'_>) -> After {
        let chunked = !self.http10;
        let close = self.close || !chunked;
        let len = if chunked { BodyLen::Chunked } else { BodyLen::UntilClose };
        let head = self.head(200, "text/event-stream", len, "cache-control: no-cache\r\n", close);
        if let Err(after) = self.write(conn, &head).await {
            return after;
        }
        let mut out = Frames { chunked, payload: String::with_capacity(512), frame: Vec::with_capacity(512) };
        if let Some(after) = self.events(conn, faults, completion, &mut out).await {
            return after;
        }
        out.frame.clear();
        if completion.include_usage {
            out.push(|p| completion.usage_chunk(p));
        }
        push_event(&mut out.frame, chunked, "[DONE]");
        if chunked {
            out.frame.extend_from_slice(b"0\r\n\r\n");
        }
        if let Err(after) = self.write(conn, &out.frame).await {
            return after;
        }
        if close {
            After::Close
        } else {
            After::KeepAlive
        }
    }

    /// The text events; `Some` when a fault, the client or shutdown ended
    /// the connection before the last one.
    async fn events(
        &self,
        conn: &mut Conn,
        faults: &Faults,
        completion: &Completion<'_>,
        out: &mut Frames,
    ) -> Option<After> {
        let n = faults.chunks;
        let stop_at = match faults.stream_fault() {
            StreamFault::None => None,
            StreamFault::Hang => Some(n.min(1)),
            StreamFault::Reset => Some(n.min(2)),
        };
        for sent in 0..n {
            if stop_at == Some(sent) {
                return Some(self.stop(conn, faults).await);
            }
            if sent > 0 && faults.chunk_ms > 0 {
                if let Some(after) = self.pause(conn, faults.chunk_ms).await {
                    return Some(after);
                }
            }
            out.frame.clear();
            out.push(|p| completion.chunk(sent, n, p));
            if let Err(after) = self.write(conn, &out.frame).await {
                return Some(after);
            }
        }
        if stop_at == Some(n) {
            return Some(self.stop(conn, faults).await);
        }
        None
    }

    /// Carries out a stream fault.
    async fn stop(&self, conn: &mut Conn, faults: &Faults) -> After {
        match faults.stream_fault() {
            StreamFault::Hang => self.hang(conn).await,
            _ => After::Reset,
        }
    }
}

impl Completion<'_> {
    fn object(&self) -> &'static str {
        match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        }
    }

    /// The JSON of text event `i` of `n`.
    fn chunk(&self, i: usize, n: usize, out: &mut String) {
        let st = self.state;
        let piece = json_string(st.piece(i, n));
        let finish = if i + 1 == n { "\"stop\"" } else { "null" };
        let _ = write!(
            out,
            r#"{{"id":"cmpl-{}","object":"{}","created":{},"model":{},"choices":[{{"index":0,"#,
            self.id,
            self.object(),
            self.created,
            st.model_json
        );
        let _ = match (self.kind, i) {
            (Kind::Chat, 0) => write!(
                out,
                r#""delta":{{"role":"assistant","content":{piece}}},"logprobs":null,"finish_reason":{finish}}}]}}"#
            ),
            (Kind::Chat, _) => {
                write!(out, r#""delta":{{"content":{piece}}},"logprobs":null,"finish_reason":{finish}}}]}}"#)
            }
            (Kind::Text, _) => write!(out, r#""text":{piece},"logprobs":null,"finish_reason":{finish}}}]}}"#),
        };
    }

    /// The JSON of the usage event (`stream_options.include_usage`).
    fn usage_chunk(&self, out: &mut String) {
        let c = self.state.completion_tokens;
        let p = self.prompt_tokens;
        let _ = write!(
            out,
            r#"{{"id":"cmpl-{}","object":"{}","created":{},"model":{},"choices":[],"usage":{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{}}}}}"#,
            self.id,
            self.object(),
            self.created,
            self.state.model_json,
            p + c
        );
    }
}
