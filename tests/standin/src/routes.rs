//! One request, from bookkeeping to answer: `/standin/*` first (never
//! counted, no faults), then the request waits for a slot (`--concurrency`)
//! and is counted and recorded (all but `/health`), its fault headers
//! (and body `standin_service_ms`) applied in order (hang, delay, reset,
//! malformed, status), the `--load-ms` window, echo, and finally the
//! endpoint: health, models, completions, embeddings.

use crate::conn::{After, Conn};
use crate::faults::{Faults, Phase, StreamFault, MALFORMED};
use crate::form;
use crate::http::Request;
use crate::reply::Responder;
use crate::responses::{self, BodyInfo, Completion, Kind};
use crate::state::{Recorded, State};

/// Answers `req`; what happens to the connection next.
pub async fn handle(state: &State, conn: &mut Conn, req: &Request) -> After {
    let target = req.target();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut rsp = Responder::new(state, req);
    if path == "/standin" || path.starts_with("/standin/") {
        return standin(conn, &rsp, req.method(), path).await;
    }
    let info = BodyInfo::parse(&req.body);
    // Held until the answer is done: the slot (`--concurrency`) covers the
    // whole service time, delay and streaming included.
    let (_held, _slot, _in_flight) = if path == "/health" {
        (None, None, None)
    } else {
        rsp.counted = true;
        let held = state.hold();
        let slot = state.slot().await;
        (Some(held), slot, Some(state.begin(record(req, path, info.as_ref()))))
    };
    let faults = match Faults::parse(req, info.as_ref()) {
        Ok(f) => f,
        Err(msg) => return rsp.json(conn, 400, &responses::bad_fault_header(&msg)).await,
    };
    if let Some(after) = before_head(conn, &rsp, &faults).await {
        return after;
    }
    rsp.fault = faults.stream_fault();
    Call { state, req, path, query, info, rsp, faults }.answer(conn).await
}

fn record(req: &Request, path: &str, info: Option<&BodyInfo>) -> Recorded {
    Recorded {
        method: req.method().to_owned(),
        path: path.to_owned(),
        model: info.and_then(BodyInfo::model).map(str::to_owned),
        request_id: req.header("x-request-id").map(|id| String::from_utf8_lossy(id).into_owned()),
        body_len: req.body.len(),
    }
}

/// The faults that strike before a response head: `Some` when one did.
async fn before_head(conn: &mut Conn, rsp: &Responder<'_>, faults: &Faults) -> Option<After> {
    if faults.hang == Phase::Headers {
        return Some(rsp.hang(conn).await);
    }
    if faults.delay_ms > 0 {
        if let Some(after) = rsp.pause(conn, faults.delay_ms).await {
            return Some(after);
        }
    }
    if faults.reset == Phase::Headers {
        return Some(After::Reset);
    }
    if faults.malformed {
        let _ = rsp.write(conn, MALFORMED).await;
        return Some(After::Close);
    }
    None
}

fn is_get(method: &str) -> bool {
    method == "GET" || method == "HEAD"
}

/// A counted request past the faults that precede the head.
struct Call<'a> {
    state: &'a State,
    req: &'a Request,
    path: &'a str,
    query: Option<&'a str>,
    info: Option<BodyInfo>,
    rsp: Responder<'a>,
    faults: Faults,
}

impl Call<'_> {
    async fn answer(&self, conn: &mut Conn) -> After {
        let (state, rsp) = (self.state, &self.rsp);
        if let Some(status) = self.faults.status {
            return rsp.json(conn, status, &responses::status_error(status)).await;
        }
        let loading = state.is_loading();
        if loading && self.path != "/health" {
            return rsp.json(conn, 503, &responses::loading(&state.model)).await;
        }
        if self.faults.echo {
            return rsp.json(conn, 200, &responses::echo_json(state, self.req, self.path, self.query)).await;
        }
        match self.path {
            "/health" => self.health(conn, loading).await,
            "/v1/models" => self.get(conn, &state.models_body).await,
            "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" => self.inference(conn).await,
            "/v1/audio/transcriptions" | "/v1/audio/translations" => self.audio(conn).await,
            p if p.starts_with("/v1/models/") => self.model(conn, &p["/v1/models/".len()..]).await,
            p => rsp.json(conn, 404, &responses::unknown_path(p)).await,
        }
    }

    /// 200 with `body` to GET and HEAD, 405 otherwise.
    async fn get(&self, conn: &mut Conn, body: &[u8]) -> After {
        if !is_get(self.req.method()) {
            return self.rsp.method_not_allowed(conn, "GET, HEAD").await;
        }
        self.rsp.json(conn, 200, body).await
    }

    async fn health(&self, conn: &mut Conn, loading: bool) -> After {
        if !loading {
            return self.get(conn, responses::HEALTH_OK).await;
        }
        if !is_get(self.req.method()) {
            return self.rsp.method_not_allowed(conn, "GET, HEAD").await;
        }
        self.rsp.json(conn, 503, responses::HEALTH_LOADING).await
    }

    /// `/v1/models/ID`.
    async fn model(&self, conn: &mut Conn, id: &str) -> After {
        if is_get(self.req.method()) && id != self.state.model {
            return self.rsp.json(conn, 404, &responses::model_not_found(id)).await;
        }
        self.get(conn, &responses::model_json(&self.state.model)).await
    }

    /// A form upload: its fields echoed (names, sizes, text values).
    async fn audio(&self, conn: &mut Conn) -> After {
        let rsp = &self.rsp;
        if self.req.method() != "POST" {
            return rsp.method_not_allowed(conn, "POST").await;
        }
        let fields = match form::parse(self.req) {
            Ok(fields) => fields,
            Err(e) => {
                return rsp.json(conn, 400, &responses::error_json(&e, "invalid_request_error", None, None)).await
            }
        };
        match form::model(&fields) {
            Some(m) if m == self.state.model => {
                rsp.json(conn, 200, &form::echo_json(&self.state.model, &fields, &self.req.body)).await
            }
            Some(m) => rsp.json(conn, 404, &responses::model_not_found(m)).await,
            None => {
                rsp.json(
                    conn,
                    400,
                    &responses::error_json("no model field", "invalid_request_error", Some("model"), None),
                )
                .await
            }
        }
    }

    async fn inference(&self, conn: &mut Conn) -> After {
        let rsp = &self.rsp;
        if self.req.method() != "POST" {
            return rsp.method_not_allowed(conn, "POST").await;
        }
        let info = self.info.as_ref();
        if let Err((status, body)) = responses::check_model(self.state, info) {
            return rsp.json(conn, status, &body).await;
        }
        let kind = match self.path {
            "/v1/embeddings" => {
                return rsp.json(conn, 200, responses::embeddings_json(self.state, self.req).as_bytes()).await
            }
            "/v1/chat/completions" => Kind::Chat,
            _ => Kind::Text,
        };
        let completion = Completion::new(self.state, kind, self.req, info);
        if rsp.fault != StreamFault::None || info.is_some_and(BodyInfo::stream) {
            rsp.sse(conn, &self.faults, &completion).await
        } else {
            rsp.json(conn, 200, completion.json().as_bytes()).await
        }
    }
}

/// `/standin/stats` and `/standin/requests`.
async fn standin(conn: &mut Conn, rsp: &Responder<'_>, method: &str, path: &str) -> After {
    match path {
        "/standin/stats" | "/standin/requests" if !is_get(method) => rsp.method_not_allowed(conn, "GET, HEAD").await,
        "/standin/stats" => rsp.json(conn, 200, &responses::stats_json(rsp.state)).await,
        "/standin/requests" => rsp.json(conn, 200, &responses::requests_json(rsp.state)).await,
        _ => rsp.json(conn, 404, &responses::unknown_path(path)).await,
    }
}
