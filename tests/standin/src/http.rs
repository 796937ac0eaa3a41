//! HTTP/1.1 request parsing: the head (request line and header fields) with
//! the `httparse` crate, then the rules the stand-in applies to it: the
//! request target's form, keep-alive (`Connection`, HTTP/1.0), body framing
//! (`Content-Length`, `Transfer-Encoding: chunked`) and
//! `Expect: 100-continue`. Also the chunk-size line of a chunked body; the
//! reading itself is in [`crate::conn`].
//!
//! A request keeps its head as one `Bytes` and its parts as ranges into it,
//! so parsing copies nothing.

use std::ops::Range;

use bytes::Bytes;

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Header slots on the stack; a head with more fields is parsed again with
/// one slot per line.
const INLINE_HEADERS: usize = 64;

/// Why a request could not be read.
pub enum ReadErr {
    /// The peer went away (or we are shutting down): close silently.
    Closed,
    /// Answer this status with an error body, then close.
    Bad(u16, &'static str),
}

/// One request: its head, the parts of the head, and its whole body.
pub struct Request {
    head: Bytes,
    method: Range<usize>,
    target: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    pub http10: bool,
    pub keep_alive: bool,
    pub body: Bytes,
}

impl Request {
    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.head[self.method.clone()]).unwrap_or("")
    }

    /// The origin-form target (path and query), also for absolute-form.
    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.head[self.target.clone()]).unwrap_or("")
    }

    /// The header fields in order, values without surrounding whitespace.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers.iter().map(|(n, v)| (&self.head[n.clone()], &self.head[v.clone()]))
    }

    /// The first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }
}

/// How the request body is delimited.
#[derive(Clone, Copy)]
pub enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// A complete, valid request head: where its parts are in the buffer it
/// was parsed from, and how its body follows.
pub struct Head {
    /// Bytes of the head, blank line (and any leading blank lines) included.
    pub len: usize,
    method: Range<usize>,
    target: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    http10: bool,
    keep_alive: bool,
    pub framing: Framing,
    pub expect_continue: bool,
}

impl Head {
    /// The request, given the head's bytes (the first `len` of the buffer
    /// it was parsed from) and no body yet.
    pub fn into_request(self, head: Bytes) -> Request {
        Request {
            head,
            method: self.method,
            target: self.target,
            headers: self.headers,
            http10: self.http10,
            keep_alive: self.keep_alive,
            body: Bytes::new(),
        }
    }
}

/// Parses the request head at the start of `buf` (blank lines before it
/// are skipped); `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ReadErr> {
    let mut inline = [httparse::EMPTY_HEADER; INLINE_HEADERS];
    let mut req = httparse::Request::new(&mut inline);
    match req.parse(buf) {
        Err(httparse::Error::TooManyHeaders) => {}
        parsed => return finish(buf, &req, parsed),
    }
    let lines = buf.iter().filter(|&&b| b == b'\n').count();
    let mut many = vec![httparse::EMPTY_HEADER; lines + 1];
    let mut req = httparse::Request::new(&mut many);
    let parsed = req.parse(buf);
    finish(buf, &req, parsed)
}

fn finish(buf: &[u8], req: &httparse::Request, parsed: httparse::Result<usize>) -> Result<Option<Head>, ReadErr> {
    match parsed {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => head(buf, req, len).map(Some),
        Err(httparse::Error::Version) => Err(version_error(buf)),
        Err(httparse::Error::TooManyHeaders) => Err(ReadErr::Bad(431, "too many header fields")),
        Err(httparse::Error::HeaderName) => Err(header_name_error(buf)),
        Err(httparse::Error::HeaderValue) => Err(ReadErr::Bad(400, "invalid header value")),
        Err(httparse::Error::Token) => Err(token_error(buf)),
        Err(_) => Err(ReadErr::Bad(400, "malformed request head")),
    }
}

/// The request line, or what there is of it, without its line ending.
fn request_line(buf: &[u8]) -> &[u8] {
    let line = buf.split(|&b| b == b'\n').find(|l| !matches!(l, [] | [b'\r'])).unwrap_or_default();
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A method or a request target httparse refused: which one.
fn token_error(buf: &[u8]) -> ReadErr {
    let line = request_line(buf);
    let mut words = line.split(|&b| b == b' ');
    let method = words.next().unwrap_or_default();
    if words.next().is_some_and(<[u8]>::is_empty) {
        ReadErr::Bad(400, "malformed request head")
    } else if method.is_empty() || method.iter().any(|&b| !b.is_ascii_graphic() || b"\"(),/:;<=>?@[\\]{}".contains(&b))
    {
        ReadErr::Bad(400, "invalid method")
    } else {
        ReadErr::Bad(400, "invalid request target")
    }
}

/// A header line starting with whitespace is obsolete line folding.
fn header_name_error(buf: &[u8]) -> ReadErr {
    if buf.windows(2).any(|w| matches!(w, [b'\n', b' ' | b'\t'])) {
        ReadErr::Bad(400, "obsolete header line folding")
    } else {
        ReadErr::Bad(400, "invalid header name")
    }
}

/// 505 for an `HTTP/x.y` other than 1.0 and 1.1, 400 for anything else.
fn version_error(buf: &[u8]) -> ReadErr {
    let version = request_line(buf).rsplit(|&b| b == b' ').next().unwrap_or_default();
    if version.starts_with(b"HTTP/") {
        ReadErr::Bad(505, "HTTP version not supported")
    } else {
        ReadErr::Bad(400, "malformed request head")
    }
}

/// Where `part`, a slice of `buf`, lies in it.
fn span(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

fn head(buf: &[u8], req: &httparse::Request, len: usize) -> Result<Head, ReadErr> {
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(ReadErr::Bad(400, "malformed request head"));
    };
    let http10 = version == 0;
    let target = origin_form(buf, span(buf, target.as_bytes()))?;
    let headers: Vec<_> =
        req.headers.iter().map(|h| (span(buf, h.name.as_bytes()), span(buf, trim_ows(h.value)))).collect();
    let fields = Fields::scan(headers.iter().map(|(n, v)| (&buf[n.clone()], &buf[v.clone()])), http10)?;
    Ok(Head {
        len,
        method: span(buf, method.as_bytes()),
        target,
        headers,
        http10,
        keep_alive: if http10 { fields.keep_alive && !fields.close } else { !fields.close },
        framing: fields.framing()?,
        expect_continue: fields.expect_continue,
    })
}

/// Checks the request target and, for absolute-form, keeps only the path
/// and query.
fn origin_form(buf: &[u8], mut target: Range<usize>) -> Result<Range<usize>, ReadErr> {
    const BAD: ReadErr = ReadErr::Bad(400, "invalid request target");
    let t = &buf[target.clone()];
    if t.is_empty() || std::str::from_utf8(t).is_err() {
        return Err(BAD);
    }
    let lower = t.to_ascii_lowercase();
    if lower.starts_with(b"http://") || lower.starts_with(b"https://") {
        let after_scheme = lower.iter().position(|&b| b == b':').map_or(0, |p| p + 3);
        let slash = t[after_scheme..].iter().position(|&b| b == b'/').ok_or(BAD)?;
        target.start += after_scheme + slash;
    } else if t != b"*" && t[0] != b'/' {
        return Err(BAD);
    }
    Ok(target)
}

/// What the header fields say about the connection and the body.
#[derive(Default)]
struct Fields {
    close: bool,
    keep_alive: bool,
    te_tokens: usize,
    te_chunked_only: bool,
    content_length: Option<u64>,
    expect_continue: bool,
}

impl Fields {
    fn scan<'a>(headers: impl Iterator<Item = (&'a [u8], &'a [u8])>, http10: bool) -> Result<Fields, ReadErr> {
        let mut f = Fields { te_chunked_only: true, ..Fields::default() };
        for (name, value) in headers {
            if name.eq_ignore_ascii_case(b"connection") {
                for tok in tokens(value) {
                    f.close |= tok.eq_ignore_ascii_case(b"close");
                    f.keep_alive |= tok.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                f.transfer_encoding(value)?;
            } else if name.eq_ignore_ascii_case(b"content-length") {
                f.content_length(value)?;
            } else if name.eq_ignore_ascii_case(b"expect") {
                f.expect_continue = !http10 && value.eq_ignore_ascii_case(b"100-continue");
            }
        }
        Ok(f)
    }

    fn transfer_encoding(&mut self, value: &[u8]) -> Result<(), ReadErr> {
        for tok in tokens(value).filter(|t| !t.is_empty()) {
            self.te_tokens += 1;
            self.te_chunked_only &= tok.eq_ignore_ascii_case(b"chunked");
        }
        if self.te_tokens == 0 {
            return Err(ReadErr::Bad(400, "empty Transfer-Encoding"));
        }
        Ok(())
    }

    fn content_length(&mut self, value: &[u8]) -> Result<(), ReadErr> {
        const BAD: ReadErr = ReadErr::Bad(400, "invalid Content-Length");
        for tok in tokens(value) {
            if tok.is_empty() || tok.len() > 19 || !tok.iter().all(u8::is_ascii_digit) {
                return Err(BAD);
            }
            let n: u64 = std::str::from_utf8(tok).ok().and_then(|s| s.parse().ok()).ok_or(BAD)?;
            if self.content_length.is_some_and(|c| c != n) {
                return Err(ReadErr::Bad(400, "conflicting Content-Length"));
            }
            self.content_length = Some(n);
        }
        Ok(())
    }

    fn framing(&self) -> Result<Framing, ReadErr> {
        Ok(match (self.te_tokens > 0, self.content_length) {
            (true, Some(_)) => return Err(ReadErr::Bad(400, "both Transfer-Encoding and Content-Length")),
            (true, None) if self.te_tokens == 1 && self.te_chunked_only => Framing::Chunked,
            (true, None) => return Err(ReadErr::Bad(400, "unsupported Transfer-Encoding")),
            (false, Some(n)) => match usize::try_from(n) {
                Ok(n) if n <= MAX_BODY => Framing::Length(n),
                _ => return Err(ReadErr::Bad(413, "request body too large")),
            },
            (false, None) => Framing::None,
        })
    }
}

/// The comma-separated elements of a field value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

/// `s` without leading and trailing spaces and tabs.
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The size on a chunk-size line (without its `\n`); extensions after `;`
/// are ignored. `None` if it is not 1 to 15 hex digits.
pub fn parse_chunk_size(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let size = match line.iter().position(|&b| b == b';') {
        Some(p) => &line[..p],
        None => line,
    };
    let size = trim_ows(size);
    if size.is_empty() || size.len() > 15 {
        return None;
    }
    let mut n = 0usize;
    for &b in size {
        let d = char::from(b).to_digit(16)?;
        n = n.checked_mul(16)?.checked_add(d as usize)?;
    }
    Some(n)
}
