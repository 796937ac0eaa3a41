//! One client connection: buffered reads of whole requests (head, then a
//! `Content-Length` or chunked body, answering `Expect: 100-continue`),
//! keep-alive, waiting while watching for the client leaving, and the two
//! ways of closing (graceful FIN with a short drain, or RST).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::http::{self, Framing, ReadErr, Request, MAX_BODY, MAX_HEAD};
use crate::reply::Responder;
use crate::responses::error_json;
use crate::state::State;

/// Largest chunk-size line of a chunked request body.
const MAX_CHUNK_LINE: usize = 4096;
/// While a request is delayed, hanging or streaming we keep reading the
/// socket to notice a disconnect; pipelined bytes are buffered up to this.
const MAX_PIPELINED: usize = 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// How long a closing connection is drained so the peer reads our response
/// rather than an RST caused by unread input.
const LINGER: Duration = Duration::from_millis(500);

/// What happens to the connection after a response.
pub enum After {
    KeepAlive,
    Close,
    Reset,
}

/// How a wait ended.
pub enum Waited {
    Elapsed,
    /// The client closed the connection (EOF or error).
    Gone,
    Shutdown,
}

enum Fill {
    Data,
    Closed,
}

/// A client connection and its read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    shutdown: watch::Receiver<bool>,
}

/// Serves requests on `stream` until the client closes it, a response
/// closes or resets it, or shutdown.
pub async fn serve(state: Arc<State>, stream: TcpStream, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn { stream, buf: BytesMut::with_capacity(READ_CHUNK), shutdown };
    loop {
        let after = match conn.read_request().await {
            Ok(req) => crate::routes::handle(&state, &mut conn, &req).await,
            Err(ReadErr::Closed) => return,
            Err(ReadErr::Bad(status, message)) => {
                let body = error_json(message, "invalid_request_error", None, None);
                Responder::for_bad_request(&state).json(&mut conn, status, &body).await;
                After::Close
            }
        };
        match after {
            After::KeepAlive => {}
            After::Close => return conn.close_gracefully().await,
            After::Reset => return conn.reset(),
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `ms` from now; `None` (never) when that is too far to represent.
pub fn deadline_after(ms: u64) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(Duration::from_millis(ms))
}

impl Conn {
    /// Reads more bytes into `buf`.
    async fn fill(&mut self) -> Fill {
        self.buf.reserve(READ_CHUNK);
        tokio::select! {
            r = self.stream.read_buf(&mut self.buf) => match r {
                Ok(n) if n > 0 => Fill::Data,
                _ => Fill::Closed,
            },
            _ = self.shutdown.wait_for(|&down| down) => Fill::Closed,
        }
    }

    /// Reads until `buf` holds at least `n` bytes.
    async fn fill_to(&mut self, n: usize) -> Result<(), ReadErr> {
        while self.buf.len() < n {
            if let Fill::Closed = self.fill().await {
                return Err(ReadErr::Closed);
            }
        }
        Ok(())
    }

    /// Waits until `deadline` (forever if `None`) while watching the socket
    /// for the client going away. Pipelined input is kept in `buf`.
    pub async fn wait(&mut self, deadline: Option<tokio::time::Instant>) -> Waited {
        loop {
            let room = self.buf.len() < MAX_PIPELINED;
            if room {
                self.buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                () = sleep_until_opt(deadline) => return Waited::Elapsed,
                r = self.stream.read_buf(&mut self.buf), if room => match r {
                    Ok(n) if n > 0 => {}
                    _ => return Waited::Gone,
                },
                _ = self.shutdown.wait_for(|&down| down) => return Waited::Shutdown,
            }
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads the next request, head and whole body.
    async fn read_request(&mut self) -> Result<Request, ReadErr> {
        let head = loop {
            if let Some(head) = http::parse_head(&self.buf)? {
                break head;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadErr::Bad(431, "request head too large"));
            }
            if let Fill::Closed = self.fill().await {
                return Err(ReadErr::Closed);
            }
        };
        if head.len > MAX_HEAD {
            return Err(ReadErr::Bad(431, "request head too large"));
        }
        let bytes = self.buf.split_to(head.len).freeze();
        let (framing, expect_continue) = (head.framing, head.expect_continue);
        let mut req = head.into_request(bytes);
        req.body = match framing {
            Framing::None => Bytes::new(),
            Framing::Length(n) => self.read_sized(n, expect_continue).await?,
            Framing::Chunked => {
                if expect_continue && self.buf.is_empty() {
                    self.send_continue().await?;
                }
                self.read_chunked().await?
            }
        };
        Ok(req)
    }

    /// A body of `n` bytes (`Content-Length`).
    async fn read_sized(&mut self, n: usize, expect_continue: bool) -> Result<Bytes, ReadErr> {
        if self.buf.len() < n {
            if expect_continue {
                self.send_continue().await?;
            }
            self.buf.reserve(n - self.buf.len());
        }
        self.fill_to(n).await?;
        Ok(self.buf.split_to(n).freeze())
    }

    async fn send_continue(&mut self) -> Result<(), ReadErr> {
        self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(|_| ReadErr::Closed)
    }

    /// Index of the next `\n` in `buf`, reading more as needed.
    async fn read_line(&mut self, limit: usize) -> Result<usize, ReadErr> {
        let mut from = 0;
        loop {
            if let Some(p) = self.buf[from..].iter().position(|&b| b == b'\n') {
                return Ok(from + p);
            }
            from = self.buf.len();
            if from > limit {
                return Err(ReadErr::Bad(400, "malformed chunked body"));
            }
            if let Fill::Closed = self.fill().await {
                return Err(ReadErr::Closed);
            }
        }
    }

    /// A chunked body, de-chunked; trailers are read and dropped.
    async fn read_chunked(&mut self) -> Result<Bytes, ReadErr> {
        const BAD: ReadErr = ReadErr::Bad(400, "malformed chunked body");
        let mut body = BytesMut::new();
        loop {
            let eol = self.read_line(MAX_CHUNK_LINE).await?;
            let size = http::parse_chunk_size(&self.buf[..eol]).ok_or(BAD)?;
            self.buf.advance(eol + 1);
            if size == 0 {
                self.skip_trailers().await?;
                return Ok(body.freeze());
            }
            if body.len().saturating_add(size) > MAX_BODY {
                return Err(ReadErr::Bad(413, "request body too large"));
            }
            self.fill_to(size + 1).await?;
            body.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size);
            match self.buf.first() {
                Some(b'\n') => self.buf.advance(1),
                Some(b'\r') => {
                    self.fill_to(2).await?;
                    if self.buf.get(1) != Some(&b'\n') {
                        return Err(BAD);
                    }
                    self.buf.advance(2);
                }
                _ => return Err(BAD),
            }
        }
    }

    /// The trailer section after the last chunk, through its blank line.
    async fn skip_trailers(&mut self) -> Result<(), ReadErr> {
        let mut total = 0usize;
        loop {
            let eol = self.read_line(MAX_HEAD).await?;
            let blank = eol == 0 || (eol == 1 && self.buf.first() == Some(&b'\r'));
            total += eol + 1;
            self.buf.advance(eol + 1);
            if blank {
                return Ok(());
            }
            if total > MAX_HEAD {
                return Err(ReadErr::Bad(431, "request trailers too large"));
            }
        }
    }

    /// Sends FIN, then drains input for a little while, so the peer gets our
    /// last response rather than an RST caused by unread input.
    async fn close_gracefully(mut self) {
        let _ = self.stream.shutdown().await;
        let drain = async {
            let mut scratch = [0u8; 4096];
            while let Ok(n) = self.stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Abortive close: SO_LINGER 0 makes the kernel send an RST.
    fn reset(self) {
        #[allow(deprecated)]
        let _ = self.stream.set_linger(Some(Duration::ZERO));
        drop(self);
    }
}
