//! The one error type llmux answers with, and the one place errors become
//! HTTP responses.
//!
//! Every error knows who is at fault ([`Fault`]): the client (bad input),
//! the backend (refused, reset, malformed), a hook (wake or sleep failed) or
//! llmux itself (shutting down, a bug). [`Error::into_response`] turns it
//! into OpenAI's error JSON with the status of the README's error table.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use hyper::StatusCode;

use crate::metrics::{Limit, Rejection};

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request was bad.
    Client,
    /// The backend misbehaved.
    Backend,
    /// A hook failed, or its model is in backoff after one did.
    Hook,
    /// llmux itself: shutting down, or a bug.
    Internal,
}

/// An error that ends a request.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: Cow<'static, str>,
    retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InvalidBody,
    UnknownModel,
    UnknownRoute,
    BodyTooLarge,
    UpgradeUnsupported,
    ModelUnavailable(Fault),
    WaitTimeout,
    Backend,
    BackendTimeout,
    BodyTimeout,
    /// True: `max_queued_requests`; false: `max_queued_body_bytes`.
    QueueFull(bool),
    /// `max_body_bytes_in_memory`: request bodies hold too much memory.
    Overloaded,
    InvalidApiKey,
    Forbidden,
    InvalidConfig,
}

impl Error {
    fn new(kind: Kind, message: impl Into<Cow<'static, str>>) -> Error {
        Error { kind, message: message.into(), retry_after: None }
    }

    /// The body is not one JSON object with one top-level string `model`.
    pub fn invalid_body(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Kind::InvalidBody, message)
    }

    /// The body names a model that is not configured.
    pub fn unknown_model(name: &str) -> Error {
        Error::new(Kind::UnknownModel, format!("The model `{name}` does not exist"))
    }

    /// An empty body where the API needs one (`POST /v1/chat/completions`).
    pub fn body_required(method: &hyper::Method, path: &str) -> Error {
        let msg = format!("request body required: {method} {path} takes a body naming a `model`");
        Error::new(Kind::InvalidBody, msg)
    }

    /// True for a body that names no usable model (400 `invalid_body`).
    pub fn is_invalid_body(&self) -> bool {
        self.kind == Kind::InvalidBody
    }

    /// A request without a body model on a path llmux does not serve.
    pub fn unknown_route(method: &hyper::Method, path: &str) -> Error {
        Error::new(Kind::UnknownRoute, format!("unknown route: {method} {path}"))
    }

    /// The body is larger than `max_body_bytes`.
    pub fn body_too_large(limit: u64) -> Error {
        let msg = format!("request body exceeds the limit of {limit} bytes (max_body_bytes)");
        Error::new(Kind::BodyTooLarge, msg)
    }

    /// The request body did not arrive within `body_read_timeout_secs`.
    pub fn body_timeout(limit: Duration) -> Error {
        let msg = format!("the request body did not arrive within {}s", limit.as_secs_f64());
        Error::new(Kind::BodyTimeout, msg)
    }

    /// No valid API key was presented.
    pub fn invalid_api_key() -> Error {
        Error::new(Kind::InvalidApiKey, "Incorrect or missing API key: send `Authorization: Bearer <key>`")
    }

    /// The queue for models that are not active is full; `requests`: by
    /// `max_queued_requests`, else by `max_queued_body_bytes`.
    pub fn queue_full(requests: bool) -> Error {
        let which = if requests { "max_queued_requests" } else { "max_queued_body_bytes" };
        let msg = format!("too many requests are waiting for a model ({which}); retry shortly");
        Error::new(Kind::QueueFull(requests), msg).with_retry_after(Duration::from_secs(1))
    }

    /// Request bodies in memory would pass `limits.max_body_bytes_in_memory`
    /// with this one: load shedding, retried shortly by a well-behaved client.
    pub fn server_overloaded() -> Error {
        let msg = "request bodies in memory are at their limit (max_body_bytes_in_memory); retry shortly";
        Error::new(Kind::Overloaded, msg).with_retry_after(Duration::from_secs(1))
    }

    /// The control API refused a client: not loopback, or an ordinary key
    /// where an admin key is needed.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Kind::Forbidden, message)
    }

    /// A reload found the new configuration invalid.
    pub fn invalid_config(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Kind::InvalidConfig, message)
    }

    /// The limit this error enforces, for `llmux_rejected_total`.
    pub fn limit(&self) -> Option<Limit> {
        match self.kind {
            Kind::BodyTooLarge => Some(Limit::MaxBodyBytes),
            Kind::BodyTimeout => Some(Limit::BodyReadTimeout),
            Kind::QueueFull(true) => Some(Limit::MaxQueuedRequests),
            Kind::QueueFull(false) => Some(Limit::MaxQueuedBodyBytes),
            Kind::Overloaded => Some(Limit::MaxBodyBytesInMemory),
            Kind::InvalidApiKey | Kind::Forbidden => Some(Limit::ApiKey),
            _ => None,
        }
    }

    /// Why the request was turned away before a model's queue, for
    /// `llmux_requests_rejected_total`; `None` for every other error.
    pub fn rejection(&self) -> Option<Rejection> {
        match self.kind {
            Kind::InvalidApiKey => Some(Rejection::Unauthorized),
            Kind::Forbidden => Some(Rejection::Forbidden),
            Kind::InvalidBody => Some(Rejection::BadBody),
            Kind::UnknownModel => Some(Rejection::UnknownModel),
            Kind::UnknownRoute => Some(Rejection::UnknownRoute),
            Kind::BodyTooLarge => Some(Rejection::BodyTooLarge),
            Kind::BodyTimeout => Some(Rejection::BodyReadTimeout),
            Kind::Overloaded => Some(Rejection::Overloaded),
            Kind::UpgradeUnsupported => Some(Rejection::Upgrade),
            _ => None,
        }
    }

    /// Upgrade (WebSocket) requests are not proxied.
    pub fn upgrade_unsupported() -> Error {
        Error::new(Kind::UpgradeUnsupported, "connection upgrades (WebSocket) are not supported")
    }

    /// A hook failed (wake, sleep, alive after wake) or the model is in backoff.
    pub fn hook_failed(message: impl Into<Cow<'static, str>>, retry_after: Duration) -> Error {
        Error::new(Kind::ModelUnavailable(Fault::Hook), message).with_retry_after(retry_after)
    }

    /// llmux is shutting down and will not serve this request.
    pub fn shutting_down() -> Error {
        Error::new(Kind::ModelUnavailable(Fault::Internal), "llmux is shutting down")
            .with_retry_after(Duration::from_secs(1))
    }

    /// The switch task died: no model can be switched to until a restart.
    pub fn switch_task_dead() -> Error {
        let msg = "llmux cannot switch models: its switch task stopped (see the log); restart llmux";
        Error::new(Kind::ModelUnavailable(Fault::Internal), msg).with_retry_after(Duration::from_secs(30))
    }

    /// The request waited `request_timeout_secs` for its model.
    pub fn wait_timeout(model: &str, waited: Duration) -> Error {
        let msg = format!("model `{model}` was not ready within {}s", waited.as_secs());
        Error::new(Kind::WaitTimeout, msg)
    }

    /// The backend refused, reset, or answered with malformed HTTP.
    pub fn backend(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Kind::Backend, message)
    }

    /// The backend did not answer in time.
    pub fn backend_timeout(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Kind::BackendTimeout, message)
    }

    fn with_retry_after(mut self, after: Duration) -> Error {
        self.retry_after = Some(after);
        self
    }

    /// Who caused this error.
    pub fn fault(&self) -> Fault {
        match self.kind {
            Kind::InvalidBody
            | Kind::UnknownModel
            | Kind::UnknownRoute
            | Kind::BodyTooLarge
            | Kind::UpgradeUnsupported
            | Kind::WaitTimeout
            | Kind::BodyTimeout
            | Kind::QueueFull(_)
            // The clients' uploads together, like a full queue: logged at
            // debug, counted in `llmux_rejected_total`.
            | Kind::Overloaded
            | Kind::InvalidApiKey
            | Kind::Forbidden
            | Kind::InvalidConfig => Fault::Client,
            Kind::ModelUnavailable(fault) => fault,
            Kind::Backend | Kind::BackendTimeout => Fault::Backend,
        }
    }

    /// True if the client sent a bad request.
    pub fn is_client(&self) -> bool {
        self.fault() == Fault::Client
    }

    /// True if the backend misbehaved.
    pub fn is_backend(&self) -> bool {
        self.fault() == Fault::Backend
    }

    /// True if a hook failed.
    pub fn is_hook(&self) -> bool {
        self.fault() == Fault::Hook
    }

    /// True if the request waited too long for its model.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::WaitTimeout | Kind::BackendTimeout)
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::InvalidBody | Kind::InvalidConfig => StatusCode::BAD_REQUEST,
            Kind::UnknownModel | Kind::UnknownRoute => StatusCode::NOT_FOUND,
            Kind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UpgradeUnsupported => StatusCode::NOT_IMPLEMENTED,
            Kind::ModelUnavailable(_) | Kind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Kind::WaitTimeout | Kind::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Backend => StatusCode::BAD_GATEWAY,
            Kind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            Kind::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
        }
    }

    fn code(&self) -> &'static str {
        match self.kind {
            Kind::InvalidBody => "invalid_body",
            Kind::UnknownModel => "model_not_found",
            Kind::UnknownRoute => "unknown_route",
            Kind::BodyTooLarge => "body_too_large",
            Kind::UpgradeUnsupported => "upgrade_not_supported",
            Kind::ModelUnavailable(_) => "model_unavailable",
            Kind::WaitTimeout => "model_wait_timeout",
            Kind::BackendTimeout => "backend_timeout",
            Kind::Backend => "backend_error",
            Kind::BodyTimeout => "body_read_timeout",
            Kind::QueueFull(_) => "queue_full",
            Kind::Overloaded => "server_overloaded",
            Kind::InvalidApiKey => "invalid_api_key",
            Kind::Forbidden => "forbidden",
            Kind::InvalidConfig => "invalid_config",
        }
    }

    /// OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let kind = if self.status().is_client_error() { "invalid_request_error" } else { "server_error" };
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param(),
                "code": self.code(),
            }
        })
    }

    /// How long the client should wait before trying again, if it should.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    fn param(&self) -> Option<&'static str> {
        match self.kind {
            Kind::InvalidBody | Kind::UnknownModel => Some("model"),
            _ => None,
        }
    }
}

/// Whole seconds for `Retry-After`, rounded up and at least 1.
pub fn retry_after_secs(after: Duration) -> u64 {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    secs.max(1)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_table() {
        let cases = [
            (Error::invalid_body("x"), 400, Fault::Client),
            (Error::unknown_model("m"), 404, Fault::Client),
            (Error::body_too_large(1), 413, Fault::Client),
            (Error::hook_failed("wake", Duration::from_secs(2)), 503, Fault::Hook),
            (Error::shutting_down(), 503, Fault::Internal),
            (Error::wait_timeout("m", Duration::from_secs(1)), 504, Fault::Client),
            (Error::backend("refused"), 502, Fault::Backend),
            (Error::body_timeout(Duration::from_secs(1)), 408, Fault::Client),
            (Error::queue_full(true), 429, Fault::Client),
            (Error::server_overloaded(), 503, Fault::Client),
            (Error::forbidden("x"), 403, Fault::Client),
            (Error::invalid_config("x"), 400, Fault::Client),
            (Error::backend_timeout("slow"), 504, Fault::Backend),
        ];
        for (e, status, fault) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(e.fault(), fault, "{e}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
