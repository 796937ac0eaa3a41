//! The control API under `/llmux/`: status, waking and sleeping by hand,
//! the live event stream, reloading the config, and the dashboard page
//! (`GET /llmux/ui`, `src/ui/index.html`, embedded) that draws them.
//!
//! Every action goes through the switch task and the same drain rules as a
//! switch: a wake joins the model's queue like a request, a sleep is a
//! [`Command`] the switch task carries out. Who may call it is decided by
//! [`crate::auth::check_admin`] before anything here runs (the page, which
//! holds no state, by [`crate::auth::check_page`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::api::json_response;
use crate::catalog::{Catalog, Changes};
use crate::config::Config;
use crate::error::Error;
use crate::events;
use crate::inbox::Input;
use crate::metrics::millis;
use crate::queue;
use crate::response::ResponseBody;
use crate::state::Shared;

/// True for a path of the control API.
pub fn is_control(path: &str) -> bool {
    path == "/llmux" || path.starts_with("/llmux/")
}

/// The dashboard, one self-contained page (HTML, CSS and JavaScript, no
/// external asset), embedded in the binary.
const DASHBOARD: &str = include_str!("ui/index.html");

/// True for a request for the dashboard page, `GET /llmux/ui`.
pub fn is_dashboard(method: &Method, path: &str) -> bool {
    matches!(*method, Method::GET | Method::HEAD) && (path == "/llmux/ui" || path == "/llmux/ui/")
}

/// The dashboard page (see [`crate::auth::check_page`] for who gets it).
pub fn dashboard() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(DASHBOARD.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Everything is inline; it talks to this origin only.
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// Answers a control request (already authorised).
pub async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<ResponseBody>, Error> {
    let path = req.uri().path();
    let wait = !has_query(&req, "wait=false");
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/llmux/status") => Ok(json_response(&status(shared))),
        (&Method::GET, "/llmux/events") => Ok(event_stream(shared)),
        (&Method::POST, "/llmux/sleep") => sleep(shared, None, has_query(&req, "all=true")).await,
        (&Method::POST, "/llmux/reload") => reload(shared).await.map(|changes| json_response(&changes_json(&changes))),
        (&Method::POST, _) => match model_action(path) {
            Some((name, "wake")) => wake(shared, &name, wait).await,
            Some((name, "sleep")) => {
                let model = shared.catalog().lookup(&name).ok_or_else(|| Error::unknown_model(&name))?;
                sleep(shared, Some(model), false).await
            }
            _ => Err(Error::unknown_route(req.method(), path)),
        },
        _ => Err(Error::unknown_route(req.method(), path)),
    }
}

/// `/llmux/models/{name}/{action}` → (name, action), the name decoded.
fn model_action(path: &str) -> Option<(String, &str)> {
    let rest = path.strip_prefix("/llmux/models/")?;
    let (name, action) = rest.rsplit_once('/')?;
    Some((crate::api::percent_decode(name), action))
}

/// `GET /llmux/status`.
fn status(shared: &Shared) -> Value {
    let catalog = shared.catalog();
    let name = |slot: usize| catalog.name(slot).to_owned();
    let resident: Vec<String> = shared.resident_models().into_iter().map(name).collect();
    let last_hook_error = shared.last_hook_error.lock().as_ref().map(|e| {
        let ago = Duration::from_micros(crate::metrics::now_micros().saturating_sub(e.at_micros));
        json!({ "model": &*e.model, "hook": e.hook, "error": e.error, "stderr": e.stderr, "secs_ago": ago.as_secs() })
    });
    let mut costs: Vec<((Option<usize>, usize), Duration)> =
        shared.switch_costs.lock().iter().map(|(k, v)| (*k, *v)).collect();
    costs.sort();
    let switch_costs: Vec<Value> =
        costs.into_iter().map(|((f, t), c)| json!({ "from": f.map(name), "to": name(t), "ms": millis(c) })).collect();
    json!({
        "switch_task": if shared.is_switch_task_dead() { "dead" } else { "running" },
        "active": resident.last(),
        "resident": resident,
        "capacity": catalog.config.capacity,
        "used": shared.capacity_used(),
        "models": models_status(shared, &catalog),
        "last_switch": last_switch(shared, &catalog),
        "last_hook_error": last_hook_error,
        "switch_costs": switch_costs,
        "scheduler": scheduler_status(shared, &catalog),
        "history": history(shared, &catalog),
    })
}

/// The recent past (see [`crate::history`]): state changes, switches with
/// their phase times and hook errors, oldest first, times in Unix
/// milliseconds; `now_ms` is the server's now on the same clock.
fn history(shared: &Shared, catalog: &Catalog) -> Value {
    let name = |slot: usize| catalog.name(slot).to_owned();
    let h = shared.history.lock();
    let at = |t| h.unix_ms(t);
    let states: Vec<Value> =
        h.states().map(|c| json!({ "at_ms": at(c.at), "model": name(c.model), "state": c.state.as_str() })).collect();
    let switches: Vec<Value> = h
        .switches()
        .map(|r| {
            json!({
                "from": r.from.map(name),
                "to": name(r.to),
                "victims": r.victims.iter().map(|&v| name(v)).collect::<Vec<_>>(),
                "reason": r.reason,
                "result": r.result.as_str(),
                "miss_ms": at(r.miss),
                "started_ms": at(r.started),
                "drain_ms": millis(r.drain),
                "sleep_ms": r.sleep.map(millis),
                "wake_started_ms": r.wake_started.map(at),
                "wake_ms": r.wake.map(millis),
                "alive_ms": millis(r.alive),
                "published_ms": r.published.map(at),
            })
        })
        .collect();
    let hook_errors: Vec<Value> = h
        .hook_errors()
        .map(|e| json!({ "at_ms": at(e.at), "model": name(e.model), "hook": e.hook, "error": e.error }))
        .collect();
    let now_ms = h.unix_ms(shared.clock.now());
    json!({ "now_ms": now_ms, "states": states, "switches": switches, "hook_errors": hook_errors })
}

/// What the scheduler works with: its name, each model's bound, weight,
/// measured service time and concurrency, and the bounds found infeasible.
fn scheduler_status(shared: &Shared, catalog: &Catalog) -> Value {
    let estimates = shared.estimates.lock().clone();
    let models: Vec<Value> = catalog
        .live()
        .map(|(i, m, _)| {
            let (service, concurrency) = estimates.get(i).copied().unwrap_or_default();
            json!({
                "id": m.name,
                "max_wait_secs": m.max_wait.as_secs_f64(),
                "weight": m.weight,
                "service_ms": service.map(millis),
                "concurrency": concurrency,
            })
        })
        .collect();
    let infeasible: Vec<Value> = shared
        .infeasible
        .lock()
        .iter()
        .map(|&(m, bound, cycle)| {
            json!({ "model": catalog.name(m), "max_wait_secs": bound.as_secs_f64(), "cycle_secs": cycle.as_secs_f64() })
        })
        .collect();
    let name = match catalog.config.policy.scheduler {
        crate::config::Scheduler::CostAware => "cost_aware",
        crate::config::Scheduler::Fifo => "fifo",
    };
    json!({ "policy": name, "models": models, "infeasible": infeasible })
}

/// Each configured model's entry in `/llmux/status`, in config order.
fn models_status(shared: &Shared, catalog: &Catalog) -> Vec<Value> {
    let routing = shared.routing.load();
    catalog
        .live()
        .map(|(i, m, slot)| {
            let queue = *slot.queue.lock();
            json!({
                "id": m.name,
                "state": slot.state().as_str(),
                "queued": queue.waiting,
                "oldest_wait_ms": queue.since.map(|s| millis(s.elapsed())),
                "in_flight": routing.resident(i).map_or(0, |r| r.in_flight()),
                "state_secs": slot.time_in_state().as_secs_f64(),
                "port": m.backend.given_port(),
                "upstream": m.backend.url(),
                "size": m.size,
                "pinned": m.pinned,
            })
        })
        .collect()
}

/// The last switch: its phases (drain and sleep are the switch's, all its
/// victims at once), its victims and, for each one put to sleep, its own
/// sleep hook's time.
fn last_switch(shared: &Shared, catalog: &Catalog) -> Option<Value> {
    let name = |slot: usize| catalog.name(slot).to_owned();
    // `last_switch` first: the switch task writes both while holding it.
    let record = shared.last_switch.lock();
    let evicted: Vec<Value> = shared
        .last_evicted
        .lock()
        .iter()
        .map(|e| json!({ "model": name(e.model), "sleep_ms": millis(e.sleep) }))
        .collect();
    record.as_ref().map(|r| {
        json!({
            "from": r.from.map(name),
            "to": name(r.to),
            "result": r.result.as_str(),
            "victims": r.victims.iter().map(|&v| name(v)).collect::<Vec<_>>(),
            "evicted": evicted,
            "drain_ms": millis(r.drain),
            "reason": r.reason,
            "sleep_ms": millis(r.sleep.unwrap_or_default()),
            "wake_ms": millis(r.wake.unwrap_or_default()),
            "alive_ms": millis(r.alive),
            "total_ms": millis(r.published.map_or(r.cost(), |p| p.since(r.miss))),
        })
    })
}

/// `POST /llmux/models/{name}/wake[?wait=false]`.
async fn wake(shared: &Arc<Shared>, name: &str, wait: bool) -> Result<Response<ResponseBody>, Error> {
    let model = shared.catalog().lookup(name).ok_or_else(|| Error::unknown_model(name))?;
    if !wait {
        let position = queue::position_of(shared, model);
        queue::wake_in_background(shared, model);
        let state = shared.catalog().slot(model).state().as_str();
        let mut response = json_response(&json!({ "model": name, "state": state, "position": position }));
        *response.status_mut() = StatusCode::ACCEPTED;
        return Ok(response);
    }
    let woken = queue::wake_by_hand(shared, model).await?;
    let state = shared.catalog().slot(model).state().as_str();
    Ok(json_response(&json!({
        "model": name,
        "state": state,
        "position": woken.position,
        "waited_ms": millis(woken.waited),
    })))
}

/// `POST /llmux/sleep` (`model` None) and `POST /llmux/models/{name}/sleep`.
async fn sleep(shared: &Shared, model: Option<usize>, all: bool) -> Result<Response<ResponseBody>, Error> {
    let (done, answer) = oneshot::channel();
    shared.inbox.push(Input::Sleep { model, all, answer: done });
    let slept = tokio::select! {
        answer = answer => answer.map_err(|_| Error::shutting_down())?,
        () = shared.shutdown.started() => return Err(Error::shutting_down()),
    };
    let slept = slept.map_err(|reason| Error::hook_failed(reason, Duration::from_secs(1)))?;
    let catalog = shared.catalog();
    Ok(json_response(&match model {
        Some(m) => json!({ "model": catalog.name(m), "state": catalog.slot(m).state().as_str() }),
        // `slept`: the first model put to sleep (one at a time without a
        // capacity); `models`: every one.
        None => json!({
            "slept": slept.first().map(|&m| catalog.name(m)),
            "models": slept.iter().map(|&m| catalog.name(m)).collect::<Vec<_>>(),
        }),
    }))
}

/// True if the query string has `pair` (e.g. `all=true`).
fn has_query(req: &Request<Incoming>, pair: &str) -> bool {
    req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == pair))
}

/// `GET /llmux/events`: a `hello` with the resident models, then every event
/// as it happens, with a keep-alive comment every 15 s. Ends at shutdown.
fn event_stream(shared: &Arc<Shared>) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let events = shared.events.subscribe();
    let catalog = shared.catalog();
    let resident: Vec<&str> = shared.resident_models().into_iter().map(|m| catalog.name(m)).collect();
    let hello = events::frame("hello", &json!({ "active": resident.last(), "resident": resident }));
    drop(catalog);
    tokio::spawn(pump_events(Arc::clone(shared), events, tx, hello));
    let mut response = Response::new(ResponseBody::stream(rx));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Copies events to one client until it goes away or llmux shuts down.
async fn pump_events(
    shared: Arc<Shared>,
    mut events: broadcast::Receiver<Bytes>,
    tx: mpsc::Sender<Bytes>,
    hello: Bytes,
) {
    if tx.send(hello).await.is_err() {
        return;
    }
    let mut keep_alive = tokio::time::interval(Duration::from_secs(15));
    keep_alive.tick().await;
    loop {
        let frame = tokio::select! {
            event = events.recv() => match event {
                Ok(frame) => frame,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    events::frame("lagged", &json!({ "dropped": n }))
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
            () = tx.closed() => return,
            () = shared.shutdown.started() => return,
        };
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}

/// `POST /llmux/reload` and `SIGHUP`: rereads the config file. An invalid
/// file changes nothing; the error says why.
///
/// The file is read and parsed on tokio's blocking pool, never on a runtime
/// worker (a slow or hung file system would stall every request on that
/// worker). The whole reload (read, parse, swap) runs there under
/// `reload_lock`, so reloads still happen one at a time and the lock is
/// never held across an await.
pub async fn reload(shared: &Arc<Shared>) -> Result<Changes, Error> {
    let shared = Arc::clone(shared);
    match tokio::task::spawn_blocking(move || reload_now(&shared)).await {
        Ok(result) => result,
        // Only at shutdown: the runtime dropped the task before it ran.
        Err(e) if e.is_cancelled() => Err(Error::shutting_down()),
        Err(e) => Err(Error::invalid_config(format!("the reload failed unexpectedly: {e}"))),
    }
}

/// The reload itself, on a thread that may block.
fn reload_now(shared: &Shared) -> Result<Changes, Error> {
    let _one_at_a_time = shared.reload_lock.lock();
    let Some(file) = &shared.config_file else {
        return Err(Error::invalid_config("llmux was not started from a config file"));
    };
    let mut config = Config::load(&file.path).map_err(|e| {
        tracing::error!("config reload failed, the old config stays in force: {e}");
        Error::invalid_config(e.to_string())
    })?;
    if let Some(port) = file.port {
        config.port = port;
    }
    let (catalog, changes) = shared.catalog.load().reload(config);
    shared.catalog.store(Arc::new(catalog));
    // Requests queued for a removed model get 404; a removed active model
    // is put to sleep by the switch task.
    let catalog = shared.catalog();
    for slot in catalog.slots.iter().enumerate().filter(|(i, _)| catalog.is_removed(*i)).map(|(_, s)| s) {
        slot.ready.notify_waiters();
    }
    shared.inbox.push(Input::Reload);
    log_reload(shared, &changes);
    Ok(changes)
}

fn log_reload(shared: &Shared, changes: &Changes) {
    tracing::info!(
        added = ?changes.added,
        removed = ?changes.removed,
        changed = ?changes.changed,
        settings = ?changes.settings,
        "config reloaded"
    );
    if !changes.restart_needed.is_empty() {
        // Compared with the config llmux started with: said at every
        // reload until the restart.
        tracing::warn!(settings = ?changes.restart_needed, "changed settings need a restart to apply");
    }
    shared.events.emit("reloaded", || changes_json(changes));
}

fn changes_json(changes: &Changes) -> Value {
    json!({
        "added": changes.added,
        "removed": changes.removed,
        "changed": changes.changed,
        "settings": changes.settings,
        "restart_needed": changes.restart_needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_actions_are_parsed_and_decoded() {
        assert_eq!(model_action("/llmux/models/a/wake"), Some(("a".to_owned(), "wake")));
        assert_eq!(model_action("/llmux/models/org%2Fm/sleep"), Some(("org/m".to_owned(), "sleep")));
        assert_eq!(model_action("/llmux/models/"), None);
        assert_eq!(model_action("/llmux/status"), None);
        assert!(is_control("/llmux/status") && is_control("/llmux") && !is_control("/llmuxx"));
    }

    /// The config file is a FIFO whose writer waits for the runtime's only
    /// thread to run something else while the reload waits on the file: a
    /// reload that read it on that thread would block it, and the writer
    /// would give up after 5 s.
    #[tokio::test(flavor = "current_thread")]
    async fn a_reload_reads_the_file_off_the_runtime_thread() {
        use crate::config::Format;
        use crate::state::ConfigFile;
        use std::future::Future;
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("llmux.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success());
        let one = "models:\n  a: {port: 1, wake: w, sleep: s, alive: a}\n";
        let config = Config::parse(one, Format::Yaml, dir.path().to_path_buf()).expect("valid");
        let shared = Arc::new(Shared::new(config, Some(ConfigFile { path: fifo.clone(), port: None })));
        let (ran, got) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let in_time = got.recv_timeout(Duration::from_secs(5)).is_ok();
            let two =
                "models:\n  a: {port: 1, wake: w, sleep: s, alive: a}\n  b: {port: 2, wake: w, sleep: s, alive: a}\n";
            std::fs::write(&fifo, two).expect("write the FIFO");
            in_time
        });
        let mut reloading = std::pin::pin!(reload(&shared));
        // Started: the reload now waits for the FIFO's writer.
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(reloading.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        // This runs on the runtime's thread while the reload waits.
        let _ = ran.send(());
        let changes = reloading.await.expect("a valid config");
        assert!(writer.join().expect("writer"), "the reload blocked the runtime's thread");
        assert_eq!(changes.added, ["b"]);
        assert!(shared.catalog().lookup("b").is_some());
    }
}
