//! llmux in-process in front of a stand-in backend process, for benches.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use llmux::config::{Config, Format};
use llmux::state::Shared;
use llmux::Server;
use tokio::sync::oneshot;

#[path = "../../tests/standin/locate.rs"]
mod locate;

/// A stand-in backend process, killed on drop.
pub struct Standin {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Standin {
    /// Starts `llmux-standin` for `model` on an ephemeral port.
    pub fn start(model: &str) -> Standin {
        let mut child = Command::new(locate::standin_bin())
            .args(["--port", "0", "--model", model])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stand-in");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
        let port = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        Standin { child, port }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// llmux serving in this process; stops when dropped.
pub struct InProc {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shared state.
    pub shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl InProc {
    /// Starts llmux on `yaml` (listen port 0) inside `rt`.
    pub fn start(rt: &tokio::runtime::Runtime, yaml: &str) -> InProc {
        let config = Config::parse(yaml, Format::Yaml, PathBuf::from(".")).expect("config");
        let server = rt.block_on(Server::bind(config)).expect("bind");
        let addr = server.local_addr().expect("addr");
        let shared = Arc::clone(server.shared());
        let (stop, stopped) = oneshot::channel::<()>();
        rt.spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        InProc { addr, shared, stop: Some(stop) }
    }

    /// Waits until `model` is active.
    pub fn wait_active(&self, model: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.shared.active_model() != Some(model) {
            assert!(Instant::now() < deadline, "model {model} never became active");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A keep-alive HTTP/1.1 connection to `addr`.
pub async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

/// POSTs `body` to `/v1/chat/completions` and reads the whole reply;
/// returns the time to the response head.
pub async fn post(sender: &mut SendRequest<Full<Bytes>>, body: Bytes) -> Duration {
    let start = Instant::now();
    let req = Request::post("/v1/chat/completions")
        .header("host", "bench")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    sender.ready().await.expect("connection ready");
    let response = sender.send_request(req).await.expect("response");
    let head = start.elapsed();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("body");
    head
}

/// A config for `models` (name, port) whose hooks are `true`, listening on
/// an ephemeral loopback port.
pub fn config(models: &[(&str, u16)], alive: &str) -> String {
    let mut yaml = String::from("host: 127.0.0.1\nport: 0\nmodels:\n");
    for (name, port) in models {
        yaml.push_str(&format!(
            "  {name}:\n    port: {port}\n    wake: 'true'\n    sleep: 'true'\n    alive: '{alive}'\n"
        ));
    }
    yaml
}
