//! Request bodies in: bounded, buffered once, forwarded as they came.
//!
//! A request body is read whole, because its `model` may be its last key.
//! It is kept as the large chunks hyper read it in ([`RequestBody`]), not
//! joined: the model scan copies them once into its own buffer, and the
//! same chunks are written to the backend with `writev`. From the first
//! chunk under 16 KiB on, the rest of the body is copied into one buffer
//! sized from `Content-Length`, so a body sent in small pieces costs its
//! bytes, not a handle per piece or a doubling buffer.
//! Response bodies are [`crate::response`]'s.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::budget::Reservation;
use crate::error::Error;

/// A request body read whole, kept as the chunks it arrived in: joining
/// them would copy the body once more than the scan already does. Cloning
/// is cheap (a reference count), so a request can be sent again.
#[derive(Clone, Debug, Default)]
pub struct RequestBody {
    chunks: Chunks,
    len: usize,
}

#[derive(Clone, Debug)]
enum Chunks {
    /// The usual case for small bodies: it came in one read.
    One(Bytes),
    Many(Arc<[Bytes]>),
}

impl Default for Chunks {
    fn default() -> Chunks {
        Chunks::One(Bytes::new())
    }
}

impl RequestBody {
    /// The body's chunks, in order; none of them is empty.
    pub fn chunks(&self) -> &[Bytes] {
        match &self.chunks {
            Chunks::One(bytes) if bytes.is_empty() => &[],
            Chunks::One(bytes) => std::slice::from_ref(bytes),
            Chunks::Many(chunks) => chunks,
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A body to send it as.
    pub fn outgoing(self) -> OutgoingBody {
        OutgoingBody { next: 0, body: self }
    }
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> RequestBody {
        RequestBody { len: bytes.len(), chunks: Chunks::One(bytes) }
    }
}

impl From<Vec<Bytes>> for RequestBody {
    fn from(mut chunks: Vec<Bytes>) -> RequestBody {
        chunks.retain(|chunk| !chunk.is_empty());
        let len = chunks.iter().map(Bytes::len).sum();
        match chunks.len() {
            0 | 1 => RequestBody::from(chunks.pop().unwrap_or_default()),
            _ => RequestBody { chunks: Chunks::Many(chunks.into()), len },
        }
    }
}

/// Chunks from this size on are kept as they are; from the first shorter
/// one on, the rest of the body is copied into one buffer, so a body sent
/// in small pieces costs its bytes and not a handle per piece.
const KEEP_CHUNKS_FROM: usize = 16 * 1024;

/// Reads `body` whole, failing with 413 past `limit` bytes. A declared
/// `content_length` sizes the buffer that small chunks are copied into.
///
/// `memory` covers the bytes read: a body whose `Content-Length` was
/// reserved up front never grows it; any other body grows it as its chunks
/// arrive, failing with 503 `server_overloaded` once that would pass
/// `memory_bound` (`limits.max_body_bytes_in_memory`).
pub async fn read_request_body(
    mut body: Incoming,
    content_length: Option<u64>,
    limit: u64,
    memory: &mut Reservation<'_>,
    memory_bound: u64,
) -> Result<RequestBody, Error> {
    let declared = content_length.map(|n| usize::try_from(n.min(limit)).unwrap_or(usize::MAX));
    let mut chunks = Collector::new(declared);
    let mut total: u64 = 0;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| Error::invalid_body(format!("could not read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        total += data.len() as u64;
        if total > limit {
            return Err(Error::body_too_large(limit));
        }
        if total > memory.bytes() && !memory.grow(total - memory.bytes(), memory_bound) {
            return Err(Error::server_overloaded());
        }
        chunks.push(data);
    }
    Ok(chunks.finish())
}

/// Gathers a body's chunks: the first as it is (a body that came in one
/// read is neither copied nor listed), later ones as they are while they
/// are large; from the first small one on, everything is copied into one
/// buffer sized for the rest of the body.
struct Collector {
    first: Option<Bytes>,
    chunks: Vec<Bytes>,
    /// The copied rest of the body, once a small chunk has come.
    rest: Option<BytesMut>,
    /// The body's declared length, if any.
    declared: Option<usize>,
    /// Bytes gathered so far.
    seen: usize,
}

impl Collector {
    fn new(declared: Option<usize>) -> Collector {
        Collector { first: None, chunks: Vec::new(), rest: None, declared, seen: 0 }
    }

    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let before = self.seen;
        self.seen += data.len();
        if before == 0 {
            return self.first = Some(data);
        }
        if let Some(first) = self.first.take() {
            self.chunks.push(first);
        }
        match &mut self.rest {
            Some(rest) => rest.extend_from_slice(&data),
            None if data.len() >= KEEP_CHUNKS_FROM => self.chunks.push(data),
            None => {
                let left = self.declared.map_or(0, |n| n.saturating_sub(before));
                let mut rest = BytesMut::with_capacity(left.max(data.len()));
                rest.extend_from_slice(&data);
                self.rest = Some(rest);
            }
        }
    }

    fn finish(mut self) -> RequestBody {
        if let Some(one) = self.first.take() {
            return RequestBody::from(one);
        }
        if let Some(rest) = self.rest.take() {
            self.chunks.push(rest.freeze());
        }
        RequestBody::from(self.chunks)
    }
}

/// A [`RequestBody`] on its way to a backend, one chunk per frame (hyper
/// writes them with `writev`, uncopied).
#[derive(Debug)]
pub struct OutgoingBody {
    body: RequestBody,
    /// The next chunk to send.
    next: usize,
}

impl Body for OutgoingBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let chunk = this.body.chunks().get(this.next).cloned();
        this.next += 1;
        Poll::Ready(chunk.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.body.chunks().len()
    }

    fn size_hint(&self) -> SizeHint {
        let sent: usize = self.body.chunks().iter().take(self.next).map(Bytes::len).sum();
        SizeHint::with_exact((self.body.len() - sent.min(self.body.len())) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(body: RequestBody) -> (Vec<Bytes>, Vec<u64>) {
        let mut outgoing = body.outgoing();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (mut data, mut hints) = (Vec::new(), vec![outgoing.size_hint().exact().unwrap_or(u64::MAX)]);
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut outgoing).poll_frame(&mut cx) {
            data.push(frame.into_data().unwrap_or_default());
            hints.push(outgoing.size_hint().exact().unwrap_or(u64::MAX));
        }
        assert!(outgoing.is_end_stream());
        (data, hints)
    }

    #[test]
    fn chunks_are_kept_in_order_without_the_empty_ones() {
        let chunks =
            ["{\"a\":", "", "1,", "\"model\":\"m\"}"].map(|s: &'static str| Bytes::from_static(s.as_bytes())).to_vec();
        let body = RequestBody::from(chunks);
        assert_eq!(body.len(), 19);
        assert_eq!(body.chunks().len(), 3);
        let (data, hints) = frames(body);
        assert_eq!(data.concat(), b"{\"a\":1,\"model\":\"m\"}");
        assert_eq!(hints, [19, 14, 12, 0], "the size left after each frame");
    }

    #[test]
    fn one_chunk_or_none_is_held_without_a_list() {
        let one = RequestBody::from(vec![Bytes::new(), Bytes::from_static(b"{}")]);
        assert!(matches!(one.chunks, Chunks::One(_)));
        assert_eq!(frames(one).0, [Bytes::from_static(b"{}")]);
        let none = RequestBody::from(Vec::new());
        assert!(none.is_empty() && none.chunks().is_empty());
        assert_eq!(frames(none), (vec![], vec![0]));
    }

    #[test]
    fn large_chunks_are_kept_and_the_rest_is_copied_from_the_first_small_one() {
        let large = Bytes::from(vec![b'x'; KEEP_CHUNKS_FROM]);
        let declared = 1002 + 3 * KEEP_CHUNKS_FROM;
        let mut chunks = Collector::new(Some(declared));
        for piece in [&b"a"[..], &large, &b"b"[..], &large] {
            chunks.push(Bytes::copy_from_slice(piece));
        }
        for _ in 0..1000 {
            chunks.push(Bytes::from_static(b"d"));
        }
        chunks.push(large.clone());
        // Sized from Content-Length once, never grown.
        assert_eq!(chunks.rest.as_ref().map(BytesMut::capacity), Some(declared - 1 - KEEP_CHUNKS_FROM));
        let body = chunks.finish();
        let lens: Vec<usize> = body.chunks().iter().map(Bytes::len).collect();
        assert_eq!(lens, [1, KEEP_CHUNKS_FROM, 1 + KEEP_CHUNKS_FROM + 1000 + KEEP_CHUNKS_FROM], "{lens:?}");
        assert_eq!(body.chunks().concat(), [&b"a"[..], &large, b"b", &large, &[b'd'; 1000], &large].concat());
    }

    #[test]
    fn a_body_read_in_one_piece_is_not_copied() {
        let large = Bytes::from(vec![b'x'; KEEP_CHUNKS_FROM]);
        let mut one = Collector::new(None);
        one.push(large.clone());
        let one = one.finish();
        assert_eq!(one.chunks()[0].as_ptr(), large.as_ptr());
        assert!(matches!(one.chunks, Chunks::One(_)));
    }

    #[test]
    fn the_copy_of_a_small_chunked_body_is_one_buffer() {
        let mut chunks = Collector::new(None);
        for _ in 0..3000 {
            chunks.push(Bytes::from_static(b"xyz"));
        }
        let body = chunks.finish();
        let lens: Vec<usize> = body.chunks().iter().map(Bytes::len).collect();
        assert_eq!(lens, [3, 8997]);
    }

    #[test]
    fn the_scan_reads_the_chunks_as_one_body() {
        let chunks = ["{\"messages\":[{\"model\":\"no\"}],\"mo", "del\":\"r\\u00", "e9al\"}"]
            .map(|s: &'static str| Bytes::from_static(s.as_bytes()));
        let body = RequestBody::from(chunks.to_vec());
        assert_eq!(crate::model::with_model_in_parts(body.chunks(), str::to_owned).as_deref(), Ok("réal"));
    }
}
