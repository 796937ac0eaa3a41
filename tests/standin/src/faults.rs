//! The fault-injection headers, `x-standin-*`, read per request (not on
//! `/standin/*`), and the body's `standin_service_ms` (a delay like
//! `x-standin-delay-ms`, which wins). A bad value is the client's error:
//! 400 with code `bad_standin_header`. What each one does is listed in `--help`
//! ([`crate::cli::USAGE`]) and carried out in [`crate::routes`],
//! [`crate::reply`] and [`crate::sse`].

use crate::http::Request;
use crate::responses::BodyInfo;

/// What `x-standin-malformed: 1` answers before closing.
pub const MALFORMED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: nonsense\r\n\r\ngarbage";

const PREFIX: &[u8] = b"x-standin-";
const DEFAULT_CHUNKS: usize = 5;
const MAX_CHUNKS: usize = 1_000_000;

/// When `x-standin-hang` or `x-standin-reset` strikes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Off,
    /// Before the response head.
    Headers,
    /// After the head and the first part of the body.
    Stream,
}

/// What happens after the head and the first part of the body.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum StreamFault {
    None,
    /// Hang after the head and the first part of the body.
    Hang,
    /// Reset after the head and the first part of the body.
    Reset,
}

/// The faults one request asks for.
pub struct Faults {
    pub delay_ms: u64,
    pub chunks: usize,
    pub chunk_ms: u64,
    pub hang: Phase,
    pub reset: Phase,
    pub malformed: bool,
    pub status: Option<u16>,
    pub echo: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            delay_ms: 0,
            chunks: DEFAULT_CHUNKS,
            chunk_ms: 0,
            hang: Phase::Off,
            reset: Phase::Off,
            malformed: false,
            status: None,
            echo: false,
        }
    }
}

impl Faults {
    /// Reads the `x-standin-*` headers of `req` (unknown ones are ignored)
    /// over the body's `standin_service_ms` (`info`). `Err` is the message
    /// of the 400 answer.
    pub fn parse(req: &Request, info: Option<&BodyInfo>) -> Result<Faults, String> {
        let mut f = Faults::default();
        if let Some(ms) = info.map(BodyInfo::service_ms).transpose()?.flatten() {
            f.delay_ms = ms;
        }
        for (name, value) in req.headers() {
            if name.len() <= PREFIX.len() || !name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
                continue;
            }
            let header = String::from_utf8_lossy(name).to_ascii_lowercase();
            let value = std::str::from_utf8(value).map_err(|_| format!("invalid {header} header: not UTF-8"))?;
            f.set(&Field { header: &header, value })?;
        }
        Ok(f)
    }

    fn set(&mut self, field: &Field<'_>) -> Result<(), String> {
        match &field.header[PREFIX.len()..] {
            "delay-ms" => self.delay_ms = field.number()?,
            "chunk-ms" => self.chunk_ms = field.number()?,
            "chunks" => self.chunks = field.chunks()?,
            "hang" => self.hang = field.phase()?,
            "reset" => self.reset = field.phase()?,
            "malformed" => self.malformed = field.flag()?,
            "echo" => self.echo = field.flag()?,
            "status" => self.status = Some(field.status()?),
            _ => {}
        }
        Ok(())
    }

    /// The fault that strikes once the response is under way.
    pub fn stream_fault(&self) -> StreamFault {
        if self.hang == Phase::Stream {
            StreamFault::Hang
        } else if self.reset == Phase::Stream {
            StreamFault::Reset
        } else {
            StreamFault::None
        }
    }
}

/// One `x-standin-*` header: its lower-case name and its value.
struct Field<'a> {
    header: &'a str,
    value: &'a str,
}

impl Field<'_> {
    fn number(&self) -> Result<u64, String> {
        let (h, v) = (self.header, self.value);
        v.parse::<u64>().map_err(|_| format!("invalid {h} header {v:?}: expected a non-negative integer"))
    }

    fn phase(&self) -> Result<Phase, String> {
        let (h, v) = (self.header, self.value);
        match v.to_ascii_lowercase().as_str() {
            "headers" => Ok(Phase::Headers),
            "stream" => Ok(Phase::Stream),
            "" | "0" | "off" | "none" => Ok(Phase::Off),
            _ => Err(format!("invalid {h} header {v:?}: expected \"headers\" or \"stream\"")),
        }
    }

    fn flag(&self) -> Result<bool, String> {
        let (h, v) = (self.header, self.value);
        match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "" | "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(format!("invalid {h} header {v:?}: expected 1 or 0")),
        }
    }

    fn chunks(&self) -> Result<usize, String> {
        usize::try_from(self.number()?)
            .ok()
            .filter(|&n| n <= MAX_CHUNKS)
            .ok_or_else(|| format!("invalid {} header: at most {MAX_CHUNKS}", self.header))
    }

    fn status(&self) -> Result<u16, String> {
        u16::try_from(self.number()?)
            .ok()
            .filter(|s| (200..=599).contains(s))
            .ok_or_else(|| format!("invalid {} header {:?}: expected 200..=599", self.header, self.value))
    }
}
