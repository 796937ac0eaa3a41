//! The access log: one info-level `tracing` event per request, target
//! `llmux::access`, written when the request finishes (its response body
//! is dropped, or it failed before one existed).
//!
//! Once the process's log is set up ([`line::set_format`]), the line is
//! formatted by [`line`] in the subscriber's own text or JSON shape and
//! written straight to stderr; before (tests, benches with a subscriber of
//! their own) it is a `tracing` event.
//!
//! A request carries an [`Access`] record only while the log is on (config
//! `access_log`, and the `llmux::access` target enabled at info): checked
//! once per request with [`enabled`], before anything is copied. Off, the
//! record is `None` and no clock is read, nothing cloned, nothing
//! formatted. On, the record holds refcounted clones (request id, method,
//! URI: no copy of their bytes) and plain numbers; the event's own fields
//! are numbers and borrowed strings, so the only formatting is what the
//! subscriber does when it writes the line.
//!
//! # Fields
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `request_id` | string | the `x-request-id` answered |
//! | `model` | string | the configured model the request named; `-` if none |
//! | `method` | string | the HTTP method |
//! | `path` | string | the request path (the query is not logged) |
//! | `status` | number | the response status |
//! | `arrival` | number | arrival time, Unix seconds with fractions (UTC) |
//! | `queue_s` | number | seconds from arrival to admission (body read, queue and switch included) |
//! | `ttfb_s` | number | seconds from arrival to the response head |
//! | `duration_s` | number | seconds from arrival to the end (last byte, the client leaving, or the error) |
//! | `service_s` | number | `duration_s - queue_s`: the time the model spent on it |
//! | `bytes_in` | number | request body bytes |
//! | `bytes_out` | number | response body bytes handed to the connection |
//! | `switch` | bool | the request queued for its model (waited for a switch) |

pub mod line;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::header::HeaderValue;
use hyper::{Method, Request, Uri};

/// The `tracing` target of access-log lines.
pub const TARGET: &str = "llmux::access";

/// True if the subscriber would write an access-log line (a cached
/// check of the `llmux::access` callsite); config `access_log` is the
/// caller's to check after it.
#[inline]
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// What a request's access-log line needs, gathered along its path.
#[derive(Debug)]
pub struct Access {
    request_id: HeaderValue,
    method: Method,
    uri: Uri,
    /// The model's slot, once the body named a configured model.
    pub model: Option<usize>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Arrival to admission (zero until admitted).
    queue: Duration,
    /// Arrival to the response head (zero until it arrives).
    first_byte: Duration,
    /// The request queued for its model.
    switch: bool,
    /// The response status (for a line written when the body drops).
    status: u16,
}

impl Access {
    /// A record for `req`, answered with `request_id`.
    pub fn new<B>(req: &Request<B>, request_id: &HeaderValue) -> Access {
        Access {
            request_id: request_id.clone(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            model: None,
            bytes_in: 0,
            queue: Duration::ZERO,
            first_byte: Duration::ZERO,
            switch: false,
            status: 0,
        }
    }

    /// The request was admitted now (one clock read); `queued`: it waited
    /// in its model's queue. A second admission (after a refused
    /// connection) moves the time on and keeps `switch` if either queued.
    pub fn admitted(&mut self, started: Instant, queued: bool) {
        self.queue = started.elapsed();
        self.switch |= queued;
    }

    /// The response head arrived `first_byte` after arrival with `status`.
    pub fn answered(&mut self, status: u16, first_byte: Duration) {
        self.status = status;
        self.first_byte = first_byte;
    }

    /// Writes the line of a request whose response body is done:
    /// `duration` after arrival, `bytes_out` sent, for `model`.
    pub fn finish(&self, model: &str, duration: Duration, bytes_out: u64) {
        self.write(&Line { model, status: self.status, first_byte: self.first_byte, duration, bytes_out });
    }

    /// Writes the line of a request answered by llmux itself (an error, a
    /// local endpoint): the end is the head, `duration` after arrival.
    pub fn finish_now(&self, model: &str, status: u16, duration: Duration, bytes_out: u64) {
        // A HEAD answer's body is never sent.
        let bytes_out = if self.method == Method::HEAD { 0 } else { bytes_out };
        self.write(&Line { model, status, first_byte: duration, duration, bytes_out });
    }

    fn write(&self, line: &Line<'_>) {
        if let Some(format) = self::line::format() {
            let now = SystemTime::now();
            let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            let fields = self::line::Fields {
                request_id: self.request_id.to_str().unwrap_or("-"),
                model: line.model,
                method: self.method.as_str(),
                path: self.uri.path(),
                status: line.status,
                now,
                arrival: since.saturating_sub(line.duration),
                queue: self.queue,
                first_byte: line.first_byte,
                duration: line.duration,
                bytes_in: self.bytes_in,
                bytes_out: line.bytes_out,
                switch: self.switch,
            };
            return self::line::write(format, &fields);
        }
        let duration_s = line.duration.as_secs_f64();
        let queue_s = self.queue.as_secs_f64();
        tracing::info!(
            target: TARGET,
            request_id = self.request_id.to_str().unwrap_or("-"),
            model = line.model,
            method = self.method.as_str(),
            path = self.uri.path(),
            status = line.status,
            arrival = arrival(line.duration),
            queue_s,
            ttfb_s = line.first_byte.as_secs_f64(),
            duration_s,
            service_s = (duration_s - queue_s).max(0.0),
            bytes_in = self.bytes_in,
            bytes_out = line.bytes_out,
            switch = self.switch,
            "access"
        );
    }
}

/// The end of one request, as its line reports it.
struct Line<'a> {
    model: &'a str,
    status: u16,
    first_byte: Duration,
    duration: Duration,
    bytes_out: u64,
}

/// The arrival of a request that took `duration` until now, as Unix
/// seconds: one wall-clock read, made only for a line being written.
fn arrival(duration: Duration) -> f64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    now.saturating_sub(duration).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_is_now_minus_the_duration() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64();
        let at = arrival(Duration::from_secs(10));
        assert!((now - 10.0 - at).abs() < 1.0, "{now} {at}");
    }

    #[test]
    fn a_second_admission_keeps_the_switch() {
        let req = Request::builder().uri("/v1/chat/completions?x=1").body(()).expect("request");
        let mut access = Access::new(&req, &HeaderValue::from_static("id"));
        let started = Instant::now();
        access.admitted(started, true);
        access.admitted(started, false);
        assert!(access.switch);
        assert_eq!(access.uri.path(), "/v1/chat/completions");
    }
}
