//! systemd's protocols, played by the test: socket activation (the test
//! binds and holds the listening socket, and starts llmux with it at fd 3,
//! `LISTEN_FDS=1` and `LISTEN_PID` its pid, as systemd does) and readiness
//! (`NOTIFY_SOCKET`: `READY=1` after adoption, `STOPPING=1` at shutdown).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::http::{self, chat};
use crate::support::{standin, Hooks, Process, HOOK, PATIENCE};

/// Writes `hook.sh` and a config for model `a` on `backend_port` into
/// `hooks`; its wake hook also records its environment (`wake.env`) and
/// whether it holds an fd 3 (`wake.fd3`). Returns the config's path.
fn config(hooks: &Hooks, backend_port: u16, alive: &str) -> std::path::PathBuf {
    std::fs::write(hooks.path().join("hook.sh"), HOOK).expect("write hook");
    let wake =
        "env > wake.env; if [ -e /proc/self/fd/3 ]; then echo open; else echo closed; fi > wake.fd3; sh hook.sh wake";
    let text = format!(
        "host: 127.0.0.1\nport: 0\nmodels:\n  a:\n    port: {backend_port}\n    wake: '{wake}'\n    sleep: sh hook.sh sleep\n    alive: '{alive}'\npolicy:\n  wake_timeout_secs: 10\n  alive_timeout_secs: 5\n"
    );
    let path = hooks.path().join("llmux.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// llmux started as systemd starts a socket-activated service: `listener`
/// at fd 3 (handed to `sh` as its stdin, moved to 3 there), `LISTEN_FDS`
/// as given and `LISTEN_PID` the pid llmux will have (`exec` keeps the
/// shell's). Its log goes to `log` in the config's directory.
fn activated_command(config: &Path, listener: &TcpListener, fds: &str, log: &str) -> (Command, Stdio) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec 3<&0 0</dev/null; LISTEN_FDS=$2; LISTEN_PID=$$; export LISTEN_FDS LISTEN_PID; exec "$0" -c "$1""#)
        .arg(env!("CARGO_BIN_EXE_llmux"))
        .arg(config)
        .arg(fds)
        .env("RUST_LOG", "llmux=debug")
        .stderr(std::fs::File::create(config.with_file_name(log)).expect("create the log"));
    let socket = OwnedFd::from(listener.try_clone().expect("dup the listening socket"));
    (cmd, Stdio::from(socket))
}

fn activated(config: &Path, listener: &TcpListener, log: &str) -> Process {
    let (cmd, stdin) = activated_command(config, listener, "1", log);
    Process::start_with_stdin(cmd, stdin)
}

/// One chat request for `a` on a connection of its own (`Connection:
/// close`, so no keep-alive connection is caught by a restart): its status,
/// or what went wrong.
async fn chat_once(addr: SocketAddr) -> Result<u16, String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let body = chat("a");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: llmux\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    match tokio::time::timeout(PATIENCE, stream.read_to_end(&mut reply)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("read: {e} after {:?}", String::from_utf8_lossy(&reply))),
        Err(_) => return Err("no answer".to_owned()),
    }
    let text = String::from_utf8_lossy(&reply);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))
}

/// Clients sending requests one after another, each on a new connection,
/// until stopped; what they saw.
struct Load {
    stop: Arc<AtomicBool>,
    started: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let (stop, started, served) = (Arc::default(), Arc::default(), Arc::default());
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, started, served, failures): (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>, _) =
                    (Arc::clone(&stop), Arc::clone(&started), Arc::clone(&served), Arc::clone(&failures));
                tokio::spawn(async move {
                    while !stop.load(SeqCst) {
                        started.fetch_add(1, SeqCst);
                        match chat_once(addr).await {
                            Ok(200) => served.fetch_add(1, SeqCst),
                            Ok(status) => {
                                failures.lock().push(format!("status {status}"));
                                0
                            }
                            Err(e) => {
                                failures.lock().push(e);
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        Load { stop, started, served, failures, tasks }
    }

    /// Requests sent and not answered yet.
    fn waiting(&self) -> usize {
        // Answered first: a request is started before it is answered.
        let answered = self.served.load(SeqCst) + self.failures.lock().len();
        self.started.load(SeqCst).saturating_sub(answered)
    }

    async fn until(&self, what: &str, check: impl Fn(&Load) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !check(self) {
            assert!(self.failures.lock().is_empty(), "requests failed: {:?}", self.failures.lock());
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, SeqCst);
        for task in self.tasks {
            task.await.expect("client task");
        }
        let failures = self.failures.lock().clone();
        (self.served.load(SeqCst), failures)
    }
}

async fn wait_exit(mut process: Process) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || process.wait_exit()).await.expect("wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_on_the_same_socket_refuses_nothing_loses_nothing_and_adopts_the_model() {
    let hooks = Hooks::new();
    let backend = standin("a");
    let config = config(&hooks, backend.port(), "sh hook.sh alive");
    // The socket systemd would hold: bound once, for both llmux processes.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");

    let first = activated(&config, &listener, "llmux-1.log");
    assert_eq!(first.addr, addr.to_string(), "serves the inherited socket, not the config's port 0");
    assert_eq!(chat_once(addr).await, Ok(200));
    assert_eq!(hooks.events(), ["wake-start a", "wake-end a"]);

    let load = Load::start(addr, 4);
    load.until("requests served by the first llmux", |l| l.served.load(SeqCst) >= 20).await;
    first.signal(Signal::SIGTERM);
    let status = wait_exit(first).await;
    assert!(status.success(), "the first llmux did not shut down cleanly: {status:?}");
    // The gap: nothing serves, yet every client got its connection (the
    // socket is still listening) and waits in the backlog.
    load.until("every client waiting in the backlog", |l| l.waiting() == 4).await;
    let served_in_gap = load.served.load(SeqCst);

    let second = activated(&config, &listener, "llmux-2.log");
    assert_eq!(second.addr, addr.to_string());
    load.until("requests served by the second llmux", |l| l.served.load(SeqCst) >= served_in_gap + 20).await;
    let (served, failures) = load.stop().await;
    assert!(failures.is_empty(), "requests failed across the restart: {failures:?}");
    assert!(served >= served_in_gap + 20);

    // The running model was adopted, not woken again.
    assert_eq!(hooks.events(), ["wake-start a", "wake-end a"], "woken again");
    let log = std::fs::read_to_string(hooks.path().join("llmux-2.log")).unwrap_or_default();
    assert!(log.contains("adopted a: already running"), "{log}");
    assert!(log.contains("socket passed by the service manager"), "{log}");
    // The hook got neither the activation variables nor the socket.
    let env = std::fs::read_to_string(hooks.path().join("wake.env")).expect("wake.env");
    assert!(env.contains("LLMUX_MODEL=a"), "{env}");
    for var in ["LISTEN_FDS", "LISTEN_PID"] {
        assert!(!env.lines().any(|l| l.starts_with(&format!("{var}="))), "{var} reached the hook: {env}");
    }
    assert_eq!(std::fs::read_to_string(hooks.path().join("wake.fd3")).expect("wake.fd3").trim(), "closed");
    drop(second);
}

#[tokio::test]
async fn activation_variables_for_another_process_are_ignored_and_two_sockets_refused() {
    let hooks = Hooks::new();
    let backend = standin("a");
    let config = config(&hooks, backend.port(), "sh hook.sh alive");
    // LISTEN_PID names another process: llmux binds the config's address.
    let mut cmd = crate::support::llmux_command(&config, &[], &[]);
    cmd.env("LISTEN_FDS", "1").env("LISTEN_PID", "1");
    let llmux = Process::start(cmd);
    assert!(llmux.addr.starts_with("127.0.0.1:") && llmux.port() != 0, "{}", llmux.addr);
    assert_eq!(http::post(&format!("http://{}/v1/chat/completions", llmux.addr), &chat("a")).await.status, 200);

    // LISTEN_FDS=2: llmux serves one socket, and says so.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (mut cmd, stdin) = activated_command(&config, &listener, "2", "llmux-2.log");
    let status = cmd.stdin(stdin).stdout(Stdio::null()).status().expect("run llmux");
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(hooks.path().join("llmux-2.log")).unwrap_or_default();
    assert!(log.contains("LISTEN_FDS=2: llmux serves one socket"), "{log}");
}

#[tokio::test]
async fn ready_is_notified_after_adoption_and_stopping_at_shutdown() {
    let hooks = Hooks::new();
    let backend = standin("a");
    // Model a is up, but its alive hook answers only once `hold-alive` is
    // removed: start-up adoption waits for it.
    hooks.set("up-a");
    hooks.set("hold-alive");
    let alive = "while [ -f hold-alive ]; do sleep 0.01; done; sh hook.sh alive";
    let config = config(&hooks, backend.port(), alive);
    let notify_path = hooks.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let mut cmd = crate::support::llmux_command(&config, &[], &[]);
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let llmux = Process::start(cmd);
    let mut buf = [0u8; 256];
    // Listening, but not ready: adoption has not happened.
    assert!(notify.recv(&mut buf).is_err(), "notified before adoption: {:?}", String::from_utf8_lossy(&buf));
    hooks.clear("hold-alive");
    notify.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let n = notify.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    let health = http::get(&format!("http://{}/health", llmux.addr)).await.json();
    assert_eq!(health["resident"], serde_json::json!(["a"]), "ready before adoption: {health}");

    llmux.signal(Signal::SIGTERM);
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(wait_exit(llmux).await.success());
    assert!(hooks.events().is_empty(), "adopted, so never woken: {:?}", hooks.events());
}
