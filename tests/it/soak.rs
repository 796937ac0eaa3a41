//! A soak run in bounded time: llmux in-process in front of three
//! stand-ins, thousands of mixed-model requests from many connections,
//! streaming and not, clients leaving at random points, switches all the
//! way through. At the end nothing is lost or leaked.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use llmux::config::{Config, Format};
use tokio::io::AsyncWriteExt;

use crate::support::http::chat_stream;
use crate::support::{standin, Hooks, HOOK};

const MODELS: [&str; 3] = ["a", "b", "c"];
const CLIENTS: usize = 48;
const REQUESTS_PER_CLIENT: usize = 50;

/// A tiny deterministic generator (xorshift64*), so runs are repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    aborted: AtomicUsize,
    wrong: AtomicUsize,
}

/// Open TCP sockets (any process, this network namespace) with an end on
/// one of `ports`, listeners excluded. Unlike this process's fd count, it
/// is not moved by the tests running beside this one.
fn open_sockets(ports: &[u16]) -> usize {
    let tables = ["/proc/net/tcp", "/proc/net/tcp6"].map(|t| std::fs::read_to_string(t).unwrap_or_default());
    let port_of = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    tables
        .iter()
        .flat_map(|t| t.lines().skip(1))
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local, remote, state ("0A": listen), ..., inode (0: no fd).
            let (Some(local), Some(remote), Some(state), Some(inode)) = (f.get(1), f.get(2), f.get(3), f.get(9)) else {
                return false;
            };
            let ours = [port_of(local), port_of(remote)].iter().flatten().any(|p| ports.contains(p));
            ours && *state != "0A" && *inode != "0"
        })
        .count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn soak_mixed_models_with_random_disconnects() {
    let hooks = Hooks::new();
    std::fs::write(hooks.path().join("hook.sh"), HOOK).expect("hook");
    let backends: Vec<_> = MODELS.iter().map(|m| standin(m)).collect();
    let mut yaml = String::from("host: 127.0.0.1\nport: 0\nmodels:\n");
    for (m, b) in MODELS.iter().zip(&backends) {
        yaml.push_str(&format!(
            "  {m}:\n    port: {}\n    wake: sh hook.sh wake\n    sleep: sh hook.sh sleep\n    alive: sh hook.sh alive\n",
            b.port()
        ));
    }
    let config = Config::parse(&yaml, Format::Yaml, hooks.path().to_path_buf()).expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");

    let rss_before = rss_kib();
    let backend_ports: Vec<u16> = backends.iter().map(|b| b.port()).collect();
    let tasks_before = rt.metrics().num_alive_tasks();
    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let (shared, llmux_port) = rt.block_on(run_soak(config, Arc::clone(&tally)));

    let answered = tally.answered.load(Relaxed);
    let aborted = tally.aborted.load(Relaxed);
    assert_eq!(answered + aborted, CLIENTS * REQUESTS_PER_CLIENT, "requests went missing");
    assert_eq!(tally.wrong.load(Relaxed), 0, "some requests got an error or the wrong model");
    let in_flight = shared.routing.load().active().map_or(0, |i| i.in_flight());
    assert_eq!(in_flight, 0);
    assert_eq!(shared.queued_requests.load(Relaxed), 0);
    wait_until("live tasks back to their start value", || rt.metrics().num_alive_tasks() <= tasks_before);
    let ports: Vec<u16> = backend_ports.iter().copied().chain([llmux_port]).collect();
    wait_until("every socket to llmux and from it to the backends closed", || open_sockets(&ports) == 0);
    hooks.assert_never_two_awake();
    let switches = hooks.events().iter().filter(|e| e.starts_with("wake-end")).count();
    let rss_after = rss_kib();
    eprintln!(
        "soak: {answered} answered, {aborted} aborted by the client, {switches} switches in {:?}; RSS {rss_before} KiB -> {rss_after} KiB",
        started.elapsed()
    );
    assert!(switches >= 3, "the soak should switch models");
    assert!(rss_after < rss_before + 64 * 1024, "RSS grew by more than 64 MiB");
}

/// Serves llmux until every client is done, then shuts it down.
async fn run_soak(config: Config, tally: Arc<Tally>) -> (Arc<llmux::state::Shared>, u16) {
    let server = llmux::Server::bind(config).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let shared = Arc::clone(server.shared());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(addr, Rng(0x9E37_79B9 + i as u64 * 7919), Arc::clone(&tally))))
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    let _ = stop.send(());
    let exit = tokio::time::timeout(Duration::from_secs(60), serving).await.expect("shutdown").expect("join");
    assert!(exit.clean, "llmux shut down uncleanly");
    (shared, addr.port())
}

/// One client: a keep-alive connection, reopened after every abort.
async fn client(addr: std::net::SocketAddr, mut rng: Rng, tally: Arc<Tally>) {
    let mut sender = None;
    for _ in 0..REQUESTS_PER_CLIENT {
        let model = MODELS[rng.below(3) as usize];
        let how = rng.below(20);
        if how == 0 {
            abort_mid_body(addr, model).await;
            tally.aborted.fetch_add(1, Relaxed);
            continue;
        }
        let s = match sender.take() {
            Some(s) => s,
            None => connect(addr).await,
        };
        let stream = how % 3 == 0;
        match one(s, model, stream, how, &mut rng).await {
            Outcome::Answered(s, ok) => {
                tally.answered.fetch_add(1, Relaxed);
                if !ok {
                    tally.wrong.fetch_add(1, Relaxed);
                }
                sender = s;
            }
            Outcome::Aborted => {
                tally.aborted.fetch_add(1, Relaxed);
            }
        }
    }
}

enum Outcome {
    Answered(Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>, bool),
    Aborted,
}

async fn one(
    mut sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    model: &str,
    stream: bool,
    how: u64,
    rng: &mut Rng,
) -> Outcome {
    let body = if stream { chat_stream(model) } else { crate::support::http::chat(model) };
    let req = Request::post("/v1/chat/completions")
        .header("host", "soak")
        .header("x-standin-chunks", "4")
        .header("x-standin-chunk-ms", "5")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    if sender.ready().await.is_err() {
        return Outcome::Aborted;
    }
    let response = sender.send_request(req);
    // Some clients give up while queued or waiting for the head.
    if how == 1 {
        let patience = Duration::from_millis(rng.below(30));
        return match tokio::time::timeout(patience, response).await {
            Ok(Ok(r)) => finish(sender, r, model).await,
            _ => Outcome::Aborted,
        };
    }
    let Ok(response) = response.await else { return Outcome::Aborted };
    // Some leave mid-stream.
    if stream && how == 3 {
        let mut body = response.into_body();
        let _ = body.frame().await;
        return Outcome::Aborted;
    }
    finish(sender, response, model).await
}

async fn finish(
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    response: hyper::Response<hyper::body::Incoming>,
    model: &str,
) -> Outcome {
    let status = response.status();
    let served_by = response.headers().get("x-standin-model").and_then(|v| v.to_str().ok()).map(str::to_owned);
    match response.into_body().collect().await {
        Ok(_) => Outcome::Answered(Some(sender), status == 200 && served_by.as_deref() == Some(model)),
        Err(_) => Outcome::Answered(None, false),
    }
}

async fn connect(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

/// Sends a head promising 400 bytes, 20 of them, and hangs up.
async fn abort_mid_body(addr: std::net::SocketAddr, model: &str) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ncontent-length: 400\r\n\r\n{{\"model\":\"{model}\","
    );
    let _ = stream.write_all(head.as_bytes()).await;
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
