//! Backends reached by `url` instead of a local `port`: stand-ins bound on
//! other loopback addresses (127.0.0.2, 127.0.0.3), a base path, a host
//! name (`localhost`, and one that never resolves), the forwarded `Host`,
//! what hooks see (`LLMUX_UPSTREAM`, `LLMUX_PORT`), a remote backend that
//! died, and `https://` refused at load.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use nix::sys::signal::Signal;

use crate::support::backend::{assert_untouched, echoed};
use crate::support::http::{self, chat};
use crate::support::{mux, standin_at, start_llmux, Hooks, Mux, HOOK, PATIENCE};

const CHAT: &str = "/v1/chat/completions";
const ECHO: (&str, &str) = ("x-standin-echo", "1");

/// The lines of `hooks.env` (each wake and sleep's `LLMUX_PORT` and
/// `LLMUX_UPSTREAM`).
fn hook_env(hooks: &Hooks) -> Vec<String> {
    let text = std::fs::read_to_string(hooks.path().join("hooks.env")).unwrap_or_default();
    text.lines().map(str::to_owned).collect()
}

/// An echoed chat request for `model` with `query`: status, served by, echo.
async fn echo(mux: &Mux, model: &str, query: &str) -> (u16, String, serde_json::Value) {
    let r = http::request(Method::POST, &mux.url(&format!("{CHAT}{query}")), &[ECHO], chat(model)).await;
    let status = r.status.as_u16();
    assert_eq!(status, 200, "{}", r.text());
    (status, r.served_by().to_owned(), r.json())
}

#[tokio::test]
async fn url_backends_on_other_addresses_get_their_base_path_and_host() {
    let mux = mux().model("a").model("b").remote("a", "127.0.0.2", "127.0.0.2", "/llm/").remote(
        "b",
        "127.0.0.3",
        "127.0.0.3",
        "",
    );
    let mux = mux.start();
    let (port_a, port_b) = (mux.backend("a").port(), mux.backend("b").port());
    assert!(mux.backend("a").addr.starts_with("127.0.0.2:") && mux.backend("b").addr.starts_with("127.0.0.3:"));

    let (_, by, e) = echo(&mux, "a", "?x=1").await;
    assert_eq!(by, "a");
    assert_eq!((e["path"].as_str(), e["query"].as_str()), (Some("/llm/v1/chat/completions"), Some("x=1")), "{e}");
    assert_eq!(echoed(&e, "host"), [format!("127.0.0.2:{port_a}")]);

    // A switch to b, on the other address, without a base path.
    let (_, by, e) = echo(&mux, "b", "").await;
    assert_eq!(by, "b");
    assert_eq!(e["path"].as_str(), Some("/v1/chat/completions"), "{e}");
    assert_eq!(echoed(&e, "host"), [format!("127.0.0.3:{port_b}")]);
    assert_eq!(
        mux.hooks.events(),
        ["wake-start a", "wake-end a", "sleep-start a", "sleep-end a", "wake-start b", "wake-end b"]
    );

    // Hooks see where the backend is; so does /llmux/status.
    assert_eq!(
        hook_env(&mux.hooks),
        [
            format!("wake a port={port_a} upstream=http://127.0.0.2:{port_a}/llm"),
            format!("sleep a port={port_a} upstream=http://127.0.0.2:{port_a}/llm"),
            format!("wake b port={port_b} upstream=http://127.0.0.3:{port_b}"),
        ]
    );
    let status = mux.status_of("a").await;
    assert_eq!(
        (status["port"].as_u64(), status["upstream"].as_str()),
        (Some(u64::from(port_a)), Some(&*format!("http://127.0.0.2:{port_a}/llm"))),
        "{status}"
    );
}

#[tokio::test]
async fn two_models_may_use_one_port_on_two_hosts() {
    // b's stand-in takes a's port number, on another address.
    let a = standin_at("a", "127.0.0.2", 0);
    let b = standin_at("b", "127.0.0.3", a.port());
    let hooks = Hooks::new();
    std::fs::write(hooks.path().join("hook.sh"), HOOK).expect("write hook");
    let model = |name: &str, addr: &str| {
        format!("  {name}:\n    url: http://{addr}\n    wake: sh hook.sh wake\n    sleep: sh hook.sh sleep\n    alive: sh hook.sh alive\n")
    };
    let config = format!("host: 127.0.0.1\nport: 0\nmodels:\n{}{}", model("a", &a.addr), model("b", &b.addr));
    let path = hooks.path().join("llmux.yaml");
    std::fs::write(&path, config).expect("write config");
    let llmux = start_llmux(&path);
    let url = format!("http://{}{CHAT}", llmux.addr);
    for name in ["a", "b", "a"] {
        let r = http::post(&url, &chat(name)).await;
        assert_eq!((r.status.as_u16(), r.served_by()), (200, name), "{}", r.text());
    }
}

#[tokio::test]
async fn a_host_name_is_resolved_and_sent_as_the_host_header() {
    let mux = mux().model("a").remote("a", "127.0.0.1", "localhost", "/v").start();
    let port = mux.backend("a").port();
    for _ in 0..3 {
        let (_, by, e) = echo(&mux, "a", "").await;
        assert_eq!(by, "a");
        assert_eq!(e["path"].as_str(), Some("/v/v1/chat/completions"), "{e}");
        assert_eq!(echoed(&e, "host"), [format!("localhost:{port}")]);
    }
    assert_eq!(hook_env(&mux.hooks), [format!("wake a port={port} upstream=http://localhost:{port}/v")]);
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_a_502_that_names_it() {
    // `.invalid` never resolves (RFC 2606); the model's alive hook passes.
    // A long connect timeout: a slow resolver still ends in "cannot resolve".
    let mux = mux()
        .model("a")
        .remote("a", "127.0.0.1", "no-such-backend.invalid", "")
        .up_at_start("a")
        .config("limits: {upstream_connect_timeout_secs: 30}")
        .start();
    mux.wait_state("a", "active").await;
    let r = http::post(&mux.url(CHAT), &chat("a")).await;
    r.assert_error(502, "backend_error");
    let message = r.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("cannot resolve the backend host `no-such-backend.invalid`"), "{message}");
    assert!(message.contains("its alive hook still passes"), "{message}");
    // Looked up when published (logged), and again by the request: a
    // failed lookup is not kept.
    mux.wait_log("cannot resolve the backend host").await;
    let again = http::post(&mux.url(CHAT), &chat("a")).await;
    again.assert_error(502, "backend_error");
    assert_untouched(mux.backend("a")).await;
    assert_eq!(mux.hook_count("wake-start a"), 0, "adopted, never woken");
}

#[tokio::test]
async fn a_remote_backend_that_died_is_checked_and_woken_again() {
    let mut mux = mux().model("a").remote("a", "127.0.0.2", "127.0.0.2", "").start();
    assert_eq!(http::post(&mux.url(CHAT), &chat("a")).await.served_by(), "a");
    let port = mux.backend("a").port();
    mux.backends[0].signal(Signal::SIGKILL);
    let _ = mux.backends[0].wait_exit();
    mux.hooks.clear("awake-a");
    mux.hooks.set("hold-wake-a");
    let request = mux.spawn_chat("a");
    let deadline = Instant::now() + PATIENCE;
    while mux.hook_count("wake-start a") < 2 {
        assert!(Instant::now() < deadline, "never woken again: {:?}", mux.hooks.events());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The wake hook "restarts" the backend, on the same address.
    mux.backends[0] = standin_at("a", "127.0.0.2", port);
    mux.hooks.clear("hold-wake-a");
    let r = request.await.expect("request");
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
    assert!(mux.log().contains("refused a connection and its alive hook failed"), "{}", mux.log());
}

#[tokio::test]
async fn a_url_without_a_port_leaves_llmux_port_empty() {
    let hooks = Hooks::new();
    std::fs::write(hooks.path().join("hook.sh"), HOOK).expect("write hook");
    let config = "host: 127.0.0.1\nport: 0\nmodels:\n  c:\n    url: http://127.0.0.2/base\n    wake: sh hook.sh wake\n    sleep: sh hook.sh sleep\n    alive: sh hook.sh alive\n";
    let path = hooks.path().join("llmux.yaml");
    std::fs::write(&path, config).expect("write config");
    let llmux = start_llmux(&path);
    let r = http::request(Method::POST, &format!("http://{}/llmux/models/c/wake", llmux.addr), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(hook_env(&hooks), ["wake c port= upstream=http://127.0.0.2/base"]);
}

#[test]
fn an_https_url_is_a_config_error_that_says_so() {
    let hooks = Hooks::new();
    let path = hooks.path().join("llmux.yaml");
    std::fs::write(&path, "models:\n  a:\n    url: https://gpu-1:8443\n    wake: w\n    sleep: s\n    alive: a\n")
        .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .args(["--check", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run llmux --check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("models.a.url: `https://gpu-1:8443`: https is not supported"), "{stderr}");
}

/// A fake Docker Engine API on a unix socket: answers every request 204
/// (`GET .../json`: a running container) and records its request line.
async fn fake_docker_api(path: &std::path::Path) -> Arc<parking_lot::Mutex<Vec<String>>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::UnixListener::bind(path).expect("bind the fake Docker socket");
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let request = line.trim_end().to_owned();
                loop {
                    let mut header = String::new();
                    match reader.read_line(&mut header).await {
                        Ok(n) if n > 2 => continue,
                        _ => break,
                    }
                }
                let answer = if request.starts_with("GET ") {
                    let body = r#"{"State":{"Running":true}}"#;
                    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                } else {
                    "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_owned()
                };
                log.lock().push(request);
                let _ = reader.get_mut().write_all(answer.as_bytes()).await;
            });
        }
    });
    seen
}

/// Runs `hook` from `examples/containers` (as llmux would, in the
/// config's directory) with `env`; its exit status.
async fn run_example_hook(hook: &str, env: &[(&str, &str)]) -> std::process::ExitStatus {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/containers");
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(hook).current_dir(dir).envs(env.iter().copied()).stdin(Stdio::null());
    tokio::time::timeout(PATIENCE, cmd.status()).await.expect("the hook hung").expect("run the hook")
}

#[tokio::test]
async fn the_container_examples_hooks_drive_the_docker_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("docker.sock");
    let seen = fake_docker_api(&socket).await;
    let backend = crate::support::standin("embed");
    let upstream = format!("http://{}", backend.addr);
    let env = [("DOCKER_SOCKET", socket.to_str().expect("utf-8")), ("LLMUX_UPSTREAM", upstream.as_str())];

    let start = run_example_hook("CONTAINER=llmux-embed ./hooks/container-start.sh", &env).await;
    assert!(start.success(), "{start:?}");
    let stop = run_example_hook("CONTAINER=llmux-embed ./hooks/container-stop.sh", &env).await;
    assert!(stop.success(), "{stop:?}");
    assert_eq!(
        *seen.lock(),
        ["POST /containers/llmux-embed/start HTTP/1.1", "POST /containers/llmux-embed/stop?t=30 HTTP/1.1"]
    );
    assert!(run_example_hook("./hooks/http-alive.sh", &env).await.success());
    let gone = format!("http://127.0.0.1:{}", crate::support::backend::free_port());
    let down = run_example_hook("./hooks/http-alive.sh", &[("LLMUX_UPSTREAM", gone.as_str())]).await;
    assert!(!down.success(), "alive passed for a backend that is not there");
    // The example's config is valid as shipped (with the key compose.yaml
    // passes in).
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/containers/config.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .env("LLMUX_API_KEY", "sk-example")
        .arg("--check")
        .arg("-c")
        .arg(&config)
        .output()
        .expect("check");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
