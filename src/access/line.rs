//! The access line, formatted by llmux itself: the same text and JSON that
//! the `tracing` subscriber writes for any other event (so log shippers,
//! `llmux simulate --trace` and people read one format), at a fraction of
//! its cost. Measured with callgrind over 3,200 requests: through the
//! subscriber the line took about 22,000 instructions a request (field
//! visitors, `Debug` of floats, styling that is then switched off), 45 %
//! of all llmux did for a request; formatted here, a few thousand.
//!
//! The line is built in a buffer reused by each thread (no allocation once
//! it has grown) and handed to `stderr` in one `write(2)`, as the
//! subscriber's own lines are, without taking the `Stderr` lock: lines of
//! up to `PIPE_BUF` bytes written so never interleave.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How the process's log is written, as the subscriber was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// tracing's default text format, without colours.
    Text,
    /// tracing's JSON format.
    Json,
}

/// 0: not set (lines go through `tracing`), 1: text, 2: JSON.
static FORMAT: AtomicU8 = AtomicU8::new(0);

/// Says how the log is written; until this is called, access lines are
/// `tracing` events like any other (tests and benches with a subscriber
/// of their own).
pub fn set_format(format: Format) {
    FORMAT.store(if format == Format::Json { 2 } else { 1 }, Relaxed);
}

/// The format set by [`set_format`], if any.
pub fn format() -> Option<Format> {
    match FORMAT.load(Relaxed) {
        1 => Some(Format::Text),
        2 => Some(Format::Json),
        _ => None,
    }
}

/// One access line's values (the fields are those of the module docs of
/// [`crate::access`]).
pub struct Fields<'a> {
    /// The `x-request-id` answered.
    pub request_id: &'a str,
    /// The model named, `-` if none.
    pub model: &'a str,
    /// The HTTP method.
    pub method: &'a str,
    /// The request path, without the query.
    pub path: &'a str,
    /// The response status.
    pub status: u16,
    /// When the line is written (its timestamp).
    pub now: SystemTime,
    /// Arrival, since the Unix epoch.
    pub arrival: Duration,
    /// Arrival to admission.
    pub queue: Duration,
    /// Arrival to the response head.
    pub first_byte: Duration,
    /// Arrival to the end.
    pub duration: Duration,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// The request queued for its model.
    pub switch: bool,
}

thread_local! {
    static BUF: RefCell<String> = RefCell::new(String::with_capacity(512));
}

/// Formats `f` as `format` says and writes it to stderr.
pub fn write(format: Format, f: &Fields<'_>) {
    BUF.with(|buf| {
        let Ok(mut buf) = buf.try_borrow_mut() else { return };
        buf.clear();
        match format {
            Format::Text => text(&mut buf, f),
            Format::Json => json(&mut buf, f),
        }
        write_all(buf.as_bytes());
    });
}

fn write_all(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match nix::unistd::write(std::io::stderr(), bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            // A log that cannot be written is not a request's failure.
            Err(_) => return,
        }
    }
}

/// tracing's text format: `TIMESTAMP  INFO llmux::access: access k=v ...`,
/// strings quoted as `Debug` quotes them.
pub fn text(out: &mut String, f: &Fields<'_>) {
    timestamp(out, f.now);
    out.push_str("  INFO llmux::access: access");
    for (key, value) in [("request_id", f.request_id), ("model", f.model), ("method", f.method), ("path", f.path)] {
        key_of(out, " ", key, "=");
        quoted(out, value);
    }
    key_of(out, " ", "status", "=");
    digits(out, u64::from(f.status), 1);
    numbers(out, f, " ", "=");
    out.push('\n');
}

/// tracing's JSON format: `{"timestamp":..,"level":"INFO","fields":{..},
/// "target":"llmux::access"}`.
pub fn json(out: &mut String, f: &Fields<'_>) {
    out.push_str("{\"timestamp\":\"");
    timestamp(out, f.now);
    out.push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":\"access\"");
    for (key, value) in [("request_id", f.request_id), ("model", f.model), ("method", f.method), ("path", f.path)] {
        key_of(out, ",\"", key, "\":");
        quoted(out, value);
    }
    key_of(out, ",\"", "status", "\":");
    digits(out, u64::from(f.status), 1);
    numbers(out, f, ",\"", "\":");
    out.push_str("},\"target\":\"llmux::access\"}\n");
}

/// The numeric fields, each as `SEP key ASSIGN value`; seconds with
/// microseconds (`service_s` is `duration_s - queue_s` as written).
fn numbers(out: &mut String, f: &Fields<'_>, sep: &str, assign: &str) {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let service = micros(f.duration).saturating_sub(micros(f.queue));
    for (key, us) in [
        ("arrival", micros(f.arrival)),
        ("queue_s", micros(f.queue)),
        ("ttfb_s", micros(f.first_byte)),
        ("duration_s", micros(f.duration)),
        ("service_s", service),
    ] {
        key_of(out, sep, key, assign);
        digits(out, us / 1_000_000, 1);
        out.push('.');
        digits(out, us % 1_000_000, 6);
    }
    key_of(out, sep, "bytes_in", assign);
    digits(out, f.bytes_in, 1);
    key_of(out, sep, "bytes_out", assign);
    digits(out, f.bytes_out, 1);
    key_of(out, sep, "switch", assign);
    out.push_str(if f.switch { "true" } else { "false" });
}

fn key_of(out: &mut String, sep: &str, key: &str, assign: &str) {
    out.push_str(sep);
    out.push_str(key);
    out.push_str(assign);
}

/// `n` in decimal, zero-padded to at least `width` digits (`core::fmt`
/// with a width costs several times as much): two digits at a time.
fn digits(out: &mut String, mut n: u64, width: usize) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    // The buffer is '0'-filled: padding is moving the start back.
    i = i.min(buf.len().saturating_sub(width));
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

/// `s` in double quotes, with `"`, `\` and control characters escaped (as
/// JSON wants them, and as `Debug` writes the ones a request id or a
/// path can hold).
fn quoted(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 in UTC with microseconds, as tracing writes it:
/// `2026-12-02T17:11:40.565337Z`. The part up to the second is kept per
/// thread and made again only when the second changes.
fn timestamp(out: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.get();
        if cached.0 != secs || cached.1[0] == 0 {
            cached = (secs, second_prefix(secs));
            SECOND.with(|c| c.set(cached));
        }
        out.push_str(std::str::from_utf8(&cached.1).unwrap_or("1970-01-01T00:00:00."));
    });
    digits(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

thread_local! {
    /// The last second formatted, and its `YYYY-MM-DDTHH:MM:SS.`.
    static SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((0, [0; 20])) };
}

/// `YYYY-MM-DDTHH:MM:SS.` of `secs` since the epoch.
fn second_prefix(secs: u64) -> [u8; 20] {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = *b"0000-00-00T00:00:00.";
    // (value, last digit's index): the separators are in place already.
    for (mut n, mut at, width) in
        [(y, 3, 4), (m, 6, 2), (d, 9, 2), (rem / 3600, 12, 2), (rem % 3600 / 60, 15, 2), (rem % 60, 18, 2)]
    {
        for _ in 0..width {
            out[at] = b'0' + (n % 10) as u8;
            n /= 10;
            at = at.saturating_sub(1);
        }
    }
    out
}

/// The (year, month, day) of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for the dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(now: SystemTime) -> Fields<'static> {
        Fields {
            request_id: "id-\"1\"\n",
            model: "a",
            method: "POST",
            path: "/v1/chat/completions",
            status: 200,
            now,
            arrival: Duration::from_micros(1_796_231_500_533_946),
            queue: Duration::from_micros(9_377),
            first_byte: Duration::from_micros(31_160),
            duration: Duration::from_micros(31_388),
            bytes_in: 57,
            bytes_out: 264,
            switch: true,
        }
    }

    #[test]
    fn digits_are_decimal_and_padded() {
        for (n, width, want) in [(0, 1, "0"), (7, 6, "000007"), (42, 1, "42"), (100, 2, "100"), (123_456, 6, "123456")]
        {
            let mut s = String::new();
            digits(&mut s, n, width);
            assert_eq!(s, want);
        }
        let mut s = String::new();
        digits(&mut s, u64::MAX, 1);
        assert_eq!(s, u64::MAX.to_string());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, micros: u64| {
            let mut s = String::new();
            timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros));
            s
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(1_796_231_500, 565_337), "2026-12-02T17:11:40.565337Z");
        assert_eq!(at(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
    }

    #[test]
    fn the_json_line_is_the_subscribers_shape_with_every_field() {
        let mut s = String::new();
        json(&mut s, &fields(UNIX_EPOCH + Duration::from_secs(1_796_231_500)));
        assert!(s.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).expect("JSON");
        assert_eq!(v["target"], "llmux::access");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["timestamp"], "2026-12-02T17:11:40.000000Z");
        let f = &v["fields"];
        assert_eq!(f["message"], "access");
        assert_eq!(f["request_id"], "id-\"1\"\n", "escaped and read back");
        assert_eq!(
            (f["status"].as_u64(), f["bytes_in"].as_u64(), f["bytes_out"].as_u64()),
            (Some(200), Some(57), Some(264))
        );
        assert_eq!(f["arrival"].as_f64(), Some(1_796_231_500.533_946));
        assert_eq!(f["queue_s"].as_f64(), Some(0.009_377));
        assert_eq!(f["service_s"].as_f64(), Some(0.022_011), "31.388 ms less 9.377 ms");
        assert_eq!(f["switch"], true);
    }

    #[test]
    fn the_text_line_quotes_strings_as_debug_does() {
        let mut s = String::new();
        text(&mut s, &fields(UNIX_EPOCH));
        assert_eq!(
            s,
            "1970-01-01T00:00:00.000000Z  INFO llmux::access: access request_id=\"id-\\\"1\\\"\\n\" model=\"a\" \
             method=\"POST\" path=\"/v1/chat/completions\" status=200 arrival=1796231500.533946 queue_s=0.009377 \
             ttfb_s=0.031160 duration_s=0.031388 service_s=0.022011 bytes_in=57 bytes_out=264 switch=true\n"
        );
    }
}
