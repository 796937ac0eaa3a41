//! One request's path through llmux: route it, find its model, admit it,
//! forward it, count it, and turn any error into a response in one place.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response};

use crate::access::{self, Access};
use crate::api;
use crate::auth;
use crate::body::{read_request_body, RequestBody};
use crate::budget::Reservation;
use crate::control;
use crate::error::{Error, Fault};
use crate::proxy::{prepare_request_headers, Forwarded, X_REQUEST_ID};
use crate::queue;
use crate::response::waiting::{self, Outcome, Waiting};
use crate::response::ResponseBody;
use crate::routing::{try_admit, InFlight};
use crate::state::Shared;
use crate::switcher;
use crate::target;

/// What a request handler knows about its connection.
#[derive(Clone)]
pub struct Peer {
    /// The client's IP address, ready for `X-Forwarded-For`.
    pub ip: HeaderValue,
    /// True if the client is on a loopback address (the control API's
    /// default exposure).
    pub loopback: bool,
}

/// Handles one request; never fails (errors become responses).
pub async fn handle(
    shared: Arc<Shared>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let request_id = request_id(&req);
    // Checked before anything is copied for the log: off, `access` is None.
    let mut access = (access::enabled() && shared.catalog().config.access_log).then(|| Access::new(&req, &request_id));
    let mut response = match route(&shared, &peer, req, &request_id, started, &mut access).await {
        Ok(response) => response,
        Err(e) => {
            if let Some(limit) = e.limit() {
                shared.metrics.reject(limit);
            }
            if let Some(reason) = e.rejection() {
                shared.metrics.reject_request(reason);
            }
            log_error(&e, &request_id);
            e.into_response()
        }
    };
    if tracing::enabled!(tracing::Level::DEBUG) {
        let id = request_id.to_str().unwrap_or("-");
        let status = response.status().as_u16();
        tracing::debug!(request_id = id, status, head_ms = started.elapsed().as_millis() as u64, "request");
    }
    // Still here unless a backend's body took it (and logs when dropped).
    if let Some(access) = &access {
        log_answered(&shared, access, &response, started);
    }
    response.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    Ok(response)
}

/// The access-log line of a request llmux answered itself (an error, a
/// local endpoint, the control API): it ends with its head.
fn log_answered(shared: &Shared, access: &Access, response: &Response<ResponseBody>, started: Instant) {
    let catalog = shared.catalog();
    let model = access.model.map_or("-", |m| catalog.name(m));
    let bytes_out = response.body().size_hint().exact().unwrap_or(0);
    access.finish_now(model, response.status().as_u16(), started.elapsed(), bytes_out);
}

async fn route(
    shared: &Arc<Shared>,
    peer: &Peer,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    started: Instant,
    access: &mut Option<Access>,
) -> Result<Response<ResponseBody>, Error> {
    if control::is_control(req.uri().path()) {
        if control::is_dashboard(req.method(), req.uri().path()) {
            auth::check_page(&shared.catalog().config, peer.loopback)?;
            return Ok(control::dashboard());
        }
        auth::check_admin(&shared.catalog().config, req.headers(), peer.loopback)?;
        return control::handle(shared, req).await;
    }
    let local = Local::of(&req);
    {
        let catalog = shared.catalog();
        match local {
            Some(Local::Health) => {}
            Some(Local::Metrics) => auth::check_metrics(&catalog.config, req.headers())?,
            _ => auth::check(&catalog.config.api_keys, req.headers())?,
        }
    }
    if is_upgrade(&req) {
        return Err(Error::upgrade_unsupported());
    }
    match local {
        // The usual case: no body, so no body model; answer at once.
        Some(local) if req.body().is_end_stream() => local.answer(shared, req.uri().path()),
        _ => proxy(shared, peer, req, Forwarding { request_id, local, started, access }).await,
    }
}

/// An endpoint llmux answers itself when the request has no body model.
#[derive(Clone, Copy)]
enum Local {
    Health,
    Metrics,
    Models,
    Model,
}

impl Local {
    fn of(req: &Request<Incoming>) -> Option<Local> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return None;
        }
        match req.uri().path() {
            "/health" => Some(Local::Health),
            "/metrics" => Some(Local::Metrics),
            "/v1/models" => Some(Local::Models),
            path if path.starts_with("/v1/models/") => Some(Local::Model),
            _ => None,
        }
    }

    /// The answer to a request for `path`, which [`Local::of`] matched.
    fn answer(self, shared: &Shared, path: &str) -> Result<Response<ResponseBody>, Error> {
        match self {
            Local::Health => Ok(api::health(shared)),
            Local::Metrics => Ok(api::metrics(shared)),
            Local::Models => Ok(api::list_models(shared)),
            Local::Model => api::one_model(shared, path.strip_prefix("/v1/models/").unwrap_or_default()),
        }
    }
}

/// What [`proxy`] knows of a request besides its head and body.
struct Forwarding<'a> {
    request_id: &'a HeaderValue,
    /// The local endpoint the request is for if its body has no model.
    local: Option<Local>,
    /// Its arrival.
    started: Instant,
    /// Its access-log record, when the log is on.
    access: &'a mut Option<Access>,
}

/// Reads the body, finds its model, waits for it and forwards. A request
/// for a local endpoint (`fwd.local`) is answered here if its body has no
/// model.
async fn proxy(
    shared: &Arc<Shared>,
    peer: &Peer,
    req: Request<Incoming>,
    fwd: Forwarding<'_>,
) -> Result<Response<ResponseBody>, Error> {
    let Forwarding { request_id, local, started, access } = fwd;
    let strip_auth = shared.catalog().config.has_keys();
    let (mut head, body, memory) = read_body(shared, req).await?;
    if let Some(access) = access.as_mut() {
        access.bytes_in = body.len() as u64;
    }
    let (model, body) = match upstream_route(shared, &head.method, &mut head.uri)? {
        // `/upstream/{model}/...`: the path names the model; the body is
        // the backend's business.
        Some(model) => (model, body),
        None => match target_of(shared, body, local, &head)? {
            Target::Model(model, body) => (model, body),
            Target::Local(local) => return local.answer(shared, head.uri.path()),
        },
    };
    if let Some(access) = access.as_mut() {
        access.model = Some(model);
    }
    prepare_request_headers(&mut head.headers, &peer.ip, request_id);
    if strip_auth {
        // Checked above; the backend never sees a client's key.
        head.headers.remove(header::AUTHORIZATION);
    }
    // The hot path: the model is resident. Only a miss looks further.
    let admitted = try_admit(&shared.routing, model);
    let feedback = if admitted.is_none() { feedback_for(shared, model, &body) } else { None };
    let result = match feedback {
        Some(every) => match queue::check_can_wait(shared, model, body.len()) {
            Ok(()) => {
                let memory = memory.into_owned(Arc::clone(shared));
                let request = Waiter { head, body, started, access: access.take(), memory };
                return Ok(wait_with_feedback(shared, model, every, request));
            }
            Err(e) => Err(e),
        },
        None => serve_model(shared, model, admitted, head, body, started, access).await,
    };
    // Released: the response head is here (or the request failed), so the
    // backend has the body and no clone of it is left (queue ticket, resend
    // copy and outgoing body are gone).
    drop(memory);
    if let Err(e) = &result {
        count_failure(shared, model, e, started);
    }
    result
}

/// Counts a request that failed in its model's metrics (no response body
/// will count it).
fn count_failure(shared: &Shared, model: usize, e: &Error, started: Instant) {
    let elapsed = started.elapsed();
    let catalog = shared.catalog();
    let metrics = &catalog.slot(model).metrics;
    metrics.record_head(e.status(), elapsed);
    metrics.duration.observe(elapsed);
    if !e.is_backend() {
        // Never served (a wait timeout, a backoff, shutdown): none of
        // its time is service time.
        metrics.add_queued(elapsed);
    }
}

/// How often a request for `model` that has to wait gets a comment: when
/// feedback is on for the model and the body asks for a stream
/// (`"stream": true`). Called on a miss only: the body is scanned again.
fn feedback_for(shared: &Shared, model: usize, body: &RequestBody) -> Option<Duration> {
    let every = shared.catalog().model(model)?.stream_wait_feedback?;
    crate::model::is_streaming_in_parts(body.chunks()).then_some(every)
}

/// A streaming request that waits for its model with feedback: what the
/// wait needs, owned (it outlives the handler).
struct Waiter {
    head: hyper::http::request::Parts,
    body: RequestBody,
    started: Instant,
    access: Option<Access>,
    memory: crate::budget::OwnedReservation<Arc<Shared>>,
}

/// `200` and `text/event-stream` at once; the body comments every `every`
/// while the request waits for `model`, then carries the backend's stream
/// (or one error event). See [`waiting`].
fn wait_with_feedback(shared: &Arc<Shared>, model: usize, every: Duration, request: Waiter) -> Response<ResponseBody> {
    let wait = Box::pin(wait_and_forward(Arc::clone(shared), model, request));
    let mut response = Response::new(ResponseBody::waiting(Waiting::new(Arc::clone(shared), model, every, wait)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx would otherwise hold the comments back in its buffer.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The wait of a request given feedback: admission, forward, and the
/// outcome its stream carries on with.
async fn wait_and_forward(shared: Arc<Shared>, model: usize, request: Waiter) -> Outcome {
    let Waiter { head, body, started, access, memory } = request;
    let request_id = head.headers.get(&X_REQUEST_ID).cloned().unwrap_or(HeaderValue::from_static("-"));
    let mut line = PendingLine { access, shared: &shared, model, started };
    let result = serve_model(&shared, model, None, head, body, started, &mut line.access).await;
    drop(memory);
    match result {
        Ok(response) if response.status().is_success() => Ok(response.into_body()),
        Ok(response) => Err(waiting::backend_error_event(response).await),
        Err(e) => {
            count_failure(&shared, model, &e, started);
            if let Some(limit) = e.limit() {
                shared.metrics.reject(limit);
            }
            log_error(&e, &request_id);
            line.finish(e.status().as_u16());
            Err(waiting::llmux_error_event(&e))
        }
    }
}

/// The access-log record of a request given feedback until a backend's
/// body takes it: written with the error's status if the wait failed, or
/// with `200` (what the client's head said) if the client left while it
/// waited.
struct PendingLine<'a> {
    access: Option<Access>,
    shared: &'a Shared,
    model: usize,
    started: Instant,
}

impl PendingLine<'_> {
    fn finish(&mut self, status: u16) {
        if let Some(access) = self.access.take() {
            let catalog = self.shared.catalog();
            access.finish_now(catalog.name(self.model), status, self.started.elapsed(), 0);
        }
    }
}

impl Drop for PendingLine<'_> {
    fn drop(&mut self) {
        self.finish(200);
    }
}

/// Reads the body whole, bounded by `max_body_bytes` and, with every
/// other body held, by `limits.max_body_bytes_in_memory`: a declared length
/// is reserved whole before a byte is read (one atomic; refused at once
/// past the bound), any other body as it arrives. The reservation is held
/// by the caller: see `crate::budget` for why that covers every copy of
/// the body llmux keeps.
async fn read_body(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<(hyper::http::request::Parts, RequestBody, Reservation<'_>), Error> {
    let (limit, read_limit, memory_bound) = {
        let config = &shared.catalog().config;
        let limits = &config.limits;
        (config.max_body_bytes, limits.body_read_timeout, limits.max_body_bytes_in_memory)
    };
    let content_length = content_length(&req)?;
    if content_length.is_some_and(|n| n > limit) {
        return Err(Error::body_too_large(limit));
    }
    let mut memory = match content_length {
        Some(n) => shared.body_budget.reserve(n, memory_bound).ok_or_else(Error::server_overloaded)?,
        None => shared.body_budget.empty(),
    };
    let (head, body) = req.into_parts();
    // `timeout` polls the read first: a body that came with its head never
    // touches the timer.
    let read = read_request_body(body, content_length, limit, &mut memory, memory_bound);
    let body = tokio::time::timeout(read_limit, read).await.map_err(|_| Error::body_timeout(read_limit))??;
    Ok((head, body, memory))
}

/// The prefix of the paths that reach a model's backend directly.
const UPSTREAM_PREFIX: &str = "/upstream/";

/// For `/upstream/{model}/{rest}` (the name percent-encoded if it holds a
/// `/`), the model, with `uri` turned into `/{rest}` and the query; `None`
/// for any other path.
fn upstream_route(shared: &Shared, method: &Method, uri: &mut hyper::Uri) -> Result<Option<usize>, Error> {
    let Some(after) = uri.path().strip_prefix(UPSTREAM_PREFIX) else {
        return Ok(None);
    };
    let (name, rest) = after.split_once('/').unwrap_or((after, ""));
    let name = crate::api::percent_decode(name);
    if name.is_empty() {
        return Err(Error::unknown_route(method, uri.path()));
    }
    let model = shared.catalog().lookup(&name).ok_or_else(|| Error::unknown_model(&name))?;
    let target = match uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    *uri = hyper::Uri::try_from(target).map_err(|_| Error::unknown_route(method, uri.path()))?;
    Ok(Some(model))
}

/// Where a request goes: a model (and the body to forward), or an
/// endpoint llmux answers itself.
enum Target {
    Model(usize, RequestBody),
    Local(Local),
}

/// The model the body names (its JSON `model`, or a form's `model`
/// field) with the body to forward it (see [`target::forwarded_body`]),
/// or the local endpoint (`local`) when it names none. One catalog load.
fn target_of(
    shared: &Shared,
    body: RequestBody,
    local: Option<Local>,
    head: &hyper::http::request::Parts,
) -> Result<Target, Error> {
    if body.is_empty() {
        return match local {
            Some(local) => Ok(Target::Local(local)),
            None if takes_a_body(&head.method, head.uri.path()) => {
                Err(Error::body_required(&head.method, head.uri.path()))
            }
            None => Err(Error::unknown_route(&head.method, head.uri.path())),
        };
    }
    let catalog = shared.catalog();
    let content_type = head.headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes);
    let found = match target::form_model(&catalog, content_type, &body) {
        Some(found) => found,
        None => match target::json_model(&catalog, &body) {
            Ok(found) => found,
            Err(e) => target::sniffed_form_model(&catalog, &body, content_type, &e)
                .unwrap_or_else(|| Err(Error::invalid_body(e.to_string()))),
        },
    };
    match (found, local) {
        (Ok((model, at)), _) => Ok(Target::Model(model, target::forwarded_body(&catalog, model, body, &at))),
        // A body without a model on a local endpoint: it answers.
        (Err(e), Some(local)) if e.is_invalid_body() => Ok(Target::Local(local)),
        (Err(e), _) => Err(e),
    }
}

/// The API paths that take a request body naming a model: an empty body
/// there is a client's mistake, not an unknown route.
const BODY_PATHS: [&str; 14] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/audio/speech",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/images/variations",
    "/v1/moderations",
    "/v1/rerank",
    "/v1/score",
    "/v1/messages",
];

/// True for a `POST` to one of [`BODY_PATHS`].
fn takes_a_body(method: &Method, path: &str) -> bool {
    *method == Method::POST && BODY_PATHS.contains(&path)
}

/// Admits a request for `model` (queueing if it is not active) and
/// forwards it; counts its response head in the model's metrics. The
/// access-log record (`access`) notes the admission and moves into the
/// response body, which writes the line when it drops.
async fn serve_model(
    shared: &Shared,
    model: usize,
    admitted: Option<InFlight>,
    head: hyper::http::request::Parts,
    body: RequestBody,
    started: Instant,
    access: &mut Option<Access>,
) -> Result<Response<ResponseBody>, Error> {
    let in_flight = admit(shared, model, admitted, &body, started, access).await?;
    let (response, conn, in_flight) = match in_flight.incarnation().upstream.forward(head, body.clone()).await? {
        Forwarded::Answered(response, conn) => (response, conn, in_flight),
        Forwarded::Refused(head, why) => {
            // The backend died since it was woken: if `alive` agrees, wait
            // for the model to be woken again instead of failing.
            if !switcher::backend_refused(shared, in_flight).await {
                return Err(Error::backend(format!("{why} (its alive hook still passes)")));
            }
            let in_flight = admit(shared, model, None, &body, started, access).await?;
            match in_flight.incarnation().upstream.forward(head, body).await? {
                Forwarded::Answered(response, conn) => (response, conn, in_flight),
                Forwarded::Refused(_, why) => return Err(Error::backend(format!("{why}, after a re-wake"))),
            }
        }
    };
    // One clock read for the metrics and the log.
    let first_byte = started.elapsed();
    in_flight.incarnation().slot.metrics.record_head(response.status(), first_byte);
    let access = access.take().map(|mut access| {
        access.answered(response.status().as_u16(), first_byte);
        access
    });
    Ok(response.map(|body| ResponseBody::upstream(body, in_flight, conn, started, access)))
}

/// [`queue::admit`] (unless the request was `admitted` already), noting
/// the admission in the access-log record.
async fn admit(
    shared: &Shared,
    model: usize,
    admitted: Option<InFlight>,
    body: &RequestBody,
    started: Instant,
    access: &mut Option<Access>,
) -> Result<InFlight, Error> {
    let (in_flight, queued) = match admitted {
        Some(guard) => (guard, false),
        None => queue::admit_noting_wait(shared, model, body.len()).await?,
    };
    if queued {
        // Cold path only: the service time the scheduler sees starts at
        // admission, not arrival.
        in_flight.incarnation().slot.metrics.add_queued(started.elapsed());
    }
    if let Some(access) = access.as_mut() {
        access.admitted(started, queued);
    }
    Ok(in_flight)
}

fn content_length(req: &Request<Incoming>) -> Result<Option<u64>, Error> {
    match req.headers().get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| Error::invalid_body("invalid Content-Length")),
    }
}

/// A real upgrade (WebSocket, any other protocol, `CONNECT`), which llmux
/// refuses. An `Upgrade` that offers only `h2c` (what `curl --http2` sends
/// over `http://`) is not one: a server may ignore the offer (RFC 9110
/// §7.8), so the request is served as HTTP/1.1 and the offer's headers are
/// not forwarded ([`prepare_request_headers`]).
fn is_upgrade(req: &Request<Incoming>) -> bool {
    *req.method() == Method::CONNECT || req.headers().get_all(header::UPGRADE).iter().any(|v| !offers_only_h2c(v))
}

/// True if an `Upgrade` field lists `h2c` and nothing else.
fn offers_only_h2c(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else { return false };
    let mut tokens = value.split(',').map(str::trim).filter(|t| !t.is_empty()).peekable();
    tokens.peek().is_some() && tokens.all(|t| t.eq_ignore_ascii_case("h2c"))
}

/// The client's `X-Request-Id` if it sent a sensible one, else a new one.
fn request_id(req: &Request<Incoming>) -> HeaderValue {
    match req.headers().get(&X_REQUEST_ID) {
        Some(id) if !id.is_empty() && id.len() <= 128 => id.clone(),
        _ => new_request_id(),
    }
}

/// `llmux-` and 16 hex digits: a per-process random start plus a counter.
///
/// Ids are written into a per-thread slab and handed out as slices of it,
/// so a request id costs no allocation of its own (one slab per
/// [`IDS_PER_SLAB`] ids).
fn new_request_id() -> HeaderValue {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        (nanos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id())
    });
    let n = seed.wrapping_add(NEXT.fetch_add(1, Relaxed));
    let mut id = *b"llmux-0000000000000000";
    for (i, slot) in id[6..].iter_mut().enumerate() {
        let nibble = (n >> (60 - 4 * i)) & 0xf;
        *slot = b"0123456789abcdef"[nibble as usize];
    }
    ID_SLAB.with(|slab| {
        let mut slab = slab.borrow_mut();
        if slab.capacity() < id.len() {
            *slab = BytesMut::with_capacity(IDS_PER_SLAB * id.len());
        }
        slab.extend_from_slice(&id);
        let bytes = slab.split_to(id.len()).freeze();
        HeaderValue::from_maybe_shared(bytes).unwrap_or(HeaderValue::from_static("llmux"))
    })
}

/// Request ids carved from one allocation.
const IDS_PER_SLAB: usize = 2048;

thread_local! {
    static ID_SLAB: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

fn log_error(e: &Error, request_id: &HeaderValue) {
    let id = request_id.to_str().unwrap_or("-");
    match e.fault() {
        Fault::Client => tracing::debug!(request_id = id, status = e.status().as_u16(), "{e}"),
        Fault::Backend | Fault::Hook | Fault::Internal => {
            tracing::warn!(request_id = id, status = e.status().as_u16(), "{e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_offer_of_h2c_alone_is_not_an_upgrade() {
        for (value, offer) in [
            ("h2c", true),
            ("H2C", true),
            (" h2c , h2c", true),
            ("h2c,", true),
            ("websocket", false),
            ("h2c, websocket", false),
            ("websocket, h2c", false),
            ("h2", false),
            ("", false),
            (",", false),
        ] {
            assert_eq!(offers_only_h2c(&HeaderValue::from_static(value)), offer, "{value:?}");
        }
        assert!(!offers_only_h2c(&HeaderValue::from_bytes(b"h2c\xff").expect("value")));
    }

    #[test]
    fn generated_ids_are_distinct_and_valid() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(a.to_str().expect("ascii").starts_with("llmux-"));
    }
}
