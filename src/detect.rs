//! Protocol detection on a new connection: HTTP/1.1, or h2c (HTTP/2 with
//! prior knowledge) told by the HTTP/2 connection preface.
//!
//! The first bytes are *read* into a small buffer (at most the preface's
//! 24 bytes) and handed back to hyper by [`Rewind`], which serves them
//! before reading the socket again. Reading, unlike peeking, waits for
//! readiness: a client that sends part of the preface and stalls costs
//! nothing until its next bytes come, and a client that closes is seen at
//! once (EOF) and dropped. Detection is bounded by the header read timeout
//! and ends soon after the server starts shutting down: a connection still
//! being detected has not joined hyper's graceful shutdown yet, so it must
//! stop by itself. It is given [`AT_SHUTDOWN`] more first: a client that
//! connected just before the shutdown has its first bytes on the way, and
//! a connection llmux accepted is answered, not closed unread (what makes
//! a restart under socket activation lose no request).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// How long a connection still being detected when shutdown starts has
/// for its first bytes: enough for a client that connected just before
/// (its bytes follow the handshake within a round trip), short enough not
/// to hold the shutdown up for idle connections.
pub const AT_SHUTDOWN: Duration = Duration::from_millis(250);

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The two protocols served on one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (or 1.0).
    Http1,
    /// h2c with prior knowledge.
    Http2,
}

/// How detection on one connection ended.
#[derive(Debug)]
pub enum Detected<T> {
    /// The protocol, and the connection with the bytes read so far put back.
    Ready(Protocol, Rewind<T>),
    /// The client closed (or the read failed) before the protocol was known.
    Closed,
    /// The client did not tell within the header read timeout.
    TimedOut,
    /// The server started shutting down first.
    Shutdown,
}

/// Reads the first bytes of `io` until they tell the protocol, within
/// `timeout` and until `shutdown` resolves, whichever comes first.
pub async fn detect<T>(io: T, timeout: Duration, shutdown: impl Future<Output = ()>) -> Detected<T>
where
    T: AsyncRead + Unpin,
{
    let read = tokio::time::timeout(timeout, read_preface(io));
    tokio::pin!(read);
    // The read first: when the first bytes are already there, neither the
    // timer nor the shutdown signal is registered.
    let read = tokio::select! {
        biased;
        read = &mut read => read,
        () = shutdown => match tokio::time::timeout(AT_SHUTDOWN, read).await {
            Ok(read) => read,
            Err(_) => return Detected::Shutdown,
        },
    };
    match read {
        Ok(Some((protocol, io))) => Detected::Ready(protocol, io),
        Ok(None) => Detected::Closed,
        Err(_) => Detected::TimedOut,
    }
}

/// Reads until the bytes seen tell the protocol; `None` on EOF or error.
async fn read_preface<T>(mut io: T) -> Option<(Protocol, Rewind<T>)>
where
    T: AsyncRead + Unpin,
{
    // Each read takes at most what is missing of the preface: the buffer
    // never grows past its 24 bytes.
    let mut seen = BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        match io.read_buf(&mut seen).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if let Some(protocol) = classify(&seen) {
            return Some((protocol, Rewind::new(io, seen.freeze())));
        }
    }
}

/// The protocol the first bytes `seen` tell, `None` while they are a
/// strict prefix of the HTTP/2 preface (or empty).
pub fn classify(seen: &[u8]) -> Option<Protocol> {
    let n = seen.len().min(H2_PREFACE.len());
    if seen[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// An IO whose reads start with `prefix` (bytes already read from `inner`),
/// then go to `inner`; writes go straight to `inner` (vectored writes
/// included, so hyper keeps its `writev` path).
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// `inner`, whose next reads return `prefix` first.
    pub fn new(inner: T, prefix: Bytes) -> Rewind<T> {
        Rewind { prefix, inner }
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Let go of the detection buffer.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncWriteExt, DuplexStream};

    const LONG: Duration = Duration::from_secs(30);

    /// Detects on a pipe the client writes `parts` to, one at a time,
    /// detection polled after each (and still undecided before the last).
    async fn ready(parts: &[&[u8]]) -> (Protocol, Rewind<DuplexStream>, DuplexStream) {
        let (mut client, server) = duplex(1024);
        let detecting = detect(server, LONG, std::future::pending());
        tokio::pin!(detecting);
        let (last, first) = parts.split_last().expect("parts");
        for part in first {
            client.write_all(part).await.expect("write");
            assert!(poll_once(detecting.as_mut()).await.is_none(), "decided after {part:?}");
        }
        client.write_all(last).await.expect("write");
        match detecting.await {
            Detected::Ready(protocol, io) => (protocol, io, client),
            other => panic!("not detected: {other:?}"),
        }
    }

    #[test]
    fn classify_tells_h2_from_anything_else() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(&H2_PREFACE[..23]), None);
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"POST / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"PRI * HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET"), Some(Protocol::Http1));
        assert_eq!(classify(b"\x16\x03\x01"), Some(Protocol::Http1));
    }

    #[tokio::test]
    async fn a_full_preface_is_h2_and_replayed_byte_exact() {
        let (protocol, mut io, mut client) = ready(&[b"P", b"RI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"]).await;
        assert_eq!(protocol, Protocol::Http2);
        client.write_all(b"frames").await.expect("write");
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, [&H2_PREFACE[..], b"frames"].concat());
    }

    #[tokio::test]
    async fn anything_else_is_h1_and_replayed_across_partial_reads() {
        let (protocol, mut io, mut client) = ready(&[b"P", b"OST /v1 HTTP/1.1\r\n"]).await;
        assert_eq!(protocol, Protocol::Http1);
        client.write_all(b"Host: x\r\n\r\n").await.expect("write");
        drop(client);
        // Read in 3-byte pieces: the prefix is served across several reads.
        let mut all = Vec::new();
        let mut piece = [0u8; 3];
        loop {
            let n = io.read(&mut piece).await.expect("read");
            if n == 0 {
                break;
            }
            all.extend_from_slice(&piece[..n]);
        }
        assert_eq!(all, b"POST /v1 HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    #[tokio::test]
    async fn writes_go_through() {
        let (_, mut io, mut client) = ready(&[b"GET / HTTP/1.1\r\n"]).await;
        let bufs = [IoSlice::new(b"HTTP/1.1 "), IoSlice::new(b"200 OK\r\n")];
        let line = b"HTTP/1.1 200 OK\r\n";
        let n = io.write_vectored(&bufs).await.expect("write");
        assert!(n > 0 && n <= line.len(), "{n}");
        io.write_all(&line[n..]).await.expect("write");
        io.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n");
        assert_eq!(io.is_write_vectored(), io.get_ref().is_write_vectored());
    }

    #[tokio::test]
    async fn a_client_closing_mid_preface_is_closed() {
        let (mut client, server) = duplex(64);
        client.write_all(b"P").await.expect("write");
        drop(client);
        assert!(matches!(detect(server, LONG, std::future::pending()).await, Detected::Closed));
    }

    #[tokio::test]
    async fn a_stalled_preface_times_out_or_ends_at_shutdown() {
        let (mut client, server) = duplex(64);
        client.write_all(b"PRI").await.expect("write");
        let timed_out = detect(server, Duration::from_millis(50), std::future::pending()).await;
        assert!(matches!(timed_out, Detected::TimedOut), "{timed_out:?}");

        let (mut client, server) = duplex(64);
        client.write_all(b"PRI").await.expect("write");
        let shutdown = tokio::sync::Notify::new();
        let detecting = detect(server, LONG, shutdown.notified());
        tokio::pin!(detecting);
        assert!(poll_once(detecting.as_mut()).await.is_none(), "decided on a partial preface");
        shutdown.notify_waiters();
        assert!(matches!(detecting.await, Detected::Shutdown));
        drop(client);
    }

    #[tokio::test]
    async fn first_bytes_arriving_just_after_the_shutdown_are_still_served() {
        let (mut client, server) = duplex(64);
        let shutdown = tokio::sync::Notify::new();
        let detecting = detect(server, LONG, shutdown.notified());
        tokio::pin!(detecting);
        assert!(poll_once(detecting.as_mut()).await.is_none(), "decided on nothing");
        shutdown.notify_waiters();
        assert!(poll_once(detecting.as_mut()).await.is_none(), "gave up at once");
        client.write_all(b"POST / HTTP/1.1\r\n").await.expect("write");
        assert!(matches!(detecting.await, Detected::Ready(Protocol::Http1, _)));
    }

    /// Polls `f` once: its output if it was ready.
    async fn poll_once<F: Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut f).poll(cx) {
                Poll::Ready(out) => Some(out),
                Poll::Pending => None,
            })
        })
        .await
    }
}
