//! More than one GPU node: `examples/scale-out/haproxy.cfg`, as shipped, in
//! front of two llmux instances with stand-ins, routing by the body's
//! `model`. Skipped, saying so on the terminal, when `haproxy` is not
//! installed; with `LLMUX_REQUIRE_HAPROXY=1` (CI) that fails instead.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use nix::sys::signal::Signal;

use crate::support::backend::stats;
use crate::support::http::{self, chat};
use crate::support::{mux, Mux, PATIENCE};

const CHAT: &str = "/v1/chat/completions";

/// HAProxy, killed when dropped.
struct Haproxy {
    child: Child,
    addr: String,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy_installed() -> bool {
    Command::new("haproxy").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Starts HAProxy on the example's config with the nodes' addresses. It
/// cannot bind port 0, so a free port is found by binding one and letting
/// it go; if HAProxy exits (another process took the port meanwhile), again.
fn start_haproxy(node_a: &str, node_b: &str) -> Haproxy {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scale-out/haproxy.cfg");
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .env("GATEWAY_BIND", &addr)
            .env("NODE_A", node_a)
            .env("NODE_B", node_b)
            .env("CHECK_INTER", "100ms")
            .stdin(Stdio::null())
            .current_dir(config.parent().expect("the example's directory"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let mut haproxy = Haproxy { child, addr };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if haproxy.child.try_wait().expect("try_wait").is_some() {
                break; // exited: most likely the port was taken; try another
            }
            if std::net::TcpStream::connect(&haproxy.addr).is_ok() {
                return haproxy;
            }
            assert!(Instant::now() < deadline, "haproxy never listened on {}", haproxy.addr);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!("haproxy would not start (5 tries); run `haproxy -c -f {}`", config.display());
}

/// The two nodes of the example: A serves llama-70b and qwen-7b; B serves
/// coder-32b and mistral-7b (taking turns) and qwen-7b (pinned), as in
/// `examples/scale-out/node-*.yaml`, with stand-ins. qwen-7b is preloaded
/// on both, so either can take its share at once.
async fn nodes() -> (Mux, Mux) {
    let a = mux().model("llama-70b").model("qwen-7b").config("capacity: 2").policy("preload: qwen-7b").start();
    let b = mux()
        .model("coder-32b")
        .model("mistral-7b")
        .model("qwen-7b")
        .config("capacity: 2")
        .model_line("qwen-7b", "pinned: true")
        .policy("preload: qwen-7b")
        .start();
    a.wait_state("qwen-7b", "active").await;
    b.wait_state("qwen-7b", "active").await;
    (a, b)
}

async fn requests_seen(mux: &Mux, model: &str) -> u64 {
    stats(mux.backend(model)).await["requests"].as_u64().expect("requests")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_routes_by_model_to_two_nodes_and_fails_the_shared_model_over() {
    if !haproxy_installed() {
        assert!(
            std::env::var_os("LLMUX_REQUIRE_HAPROXY").is_none(),
            "LLMUX_REQUIRE_HAPROXY is set but haproxy is not installed"
        );
        // Past the test harness's capture: a line on the terminal.
        let _ = writeln!(
            std::io::stderr().lock(),
            "scale-out test skipped: haproxy is not installed (apt-get install haproxy)"
        );
        return;
    }
    let (a, b) = nodes().await;
    let gateway = start_haproxy(&a.llmux.addr, &b.llmux.addr);
    let url = |path: &str| format!("http://{}{path}", gateway.addr);

    // The merged model list, answered by HAProxy itself.
    let list = http::get(&url("/v1/models")).await;
    assert_eq!(list.status, 200, "{}", list.text());
    let ids: Vec<String> = list.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ids, ["llama-70b", "qwen-7b", "coder-32b", "mistral-7b"]);

    // Each model reaches the node that serves it.
    for model in ["llama-70b", "coder-32b", "qwen-7b"] {
        let r = http::post(&url(CHAT), &chat(model)).await;
        assert_eq!((r.status.as_u16(), r.served_by()), (200, model), "{}", r.text());
    }
    assert_eq!(a.hook_count("wake-start llama-70b"), 1);
    assert_eq!(b.hook_count("wake-start coder-32b"), 1);
    assert_eq!(a.hook_count("wake-start coder-32b") + b.hook_count("wake-start llama-70b"), 0);
    // /v1/models/{id} too, and an unknown model gets a node's 404.
    let one = http::get(&url("/v1/models/coder-32b")).await;
    assert_eq!((one.status.as_u16(), one.json()["id"].as_str()), (200, Some("coder-32b")));
    http::post(&url(CHAT), &chat("gpt-9")).await.assert_error(404, "model_not_found");
    // The nodes' control API is not reachable through the gateway.
    let control = http::request(Method::POST, &url("/llmux/sleep"), &[], "").await;
    assert_eq!(control.status, 403);

    // A switch on node B (coder-32b out, mistral-7b in, held in its wake)
    // while node A, and B's pinned qwen-7b, keep serving.
    b.hooks.set("hold-wake-mistral-7b");
    let switching = {
        let url = url(CHAT);
        tokio::spawn(async move { http::post(&url, &chat("mistral-7b")).await })
    };
    let deadline = Instant::now() + PATIENCE;
    while b.hook_count("wake-start mistral-7b") == 0 {
        assert!(Instant::now() < deadline, "node B never started the switch: {:?}", b.hooks.events());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..5 {
        for model in ["llama-70b", "qwen-7b"] {
            let r = http::post(&url(CHAT), &chat(model)).await;
            assert_eq!((r.status.as_u16(), r.served_by()), (200, model), "{}", r.text());
        }
    }
    assert!(!switching.is_finished(), "the switch was not held");
    b.hooks.clear("hold-wake-mistral-7b");
    let r = switching.await.expect("request");
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "mistral-7b"), "{}", r.text());
    assert!(b.hooks.events().contains(&"sleep-end coder-32b".to_owned()), "{:?}", b.hooks.events());

    // qwen-7b is balanced over both nodes.
    let before = (requests_seen(&a, "qwen-7b").await, requests_seen(&b, "qwen-7b").await);
    for _ in 0..10 {
        assert_eq!(http::post(&url(CHAT), &chat("qwen-7b")).await.status, 200);
    }
    let after = (requests_seen(&a, "qwen-7b").await, requests_seen(&b, "qwen-7b").await);
    assert_eq!((after.0 - before.0) + (after.1 - before.1), 10);
    assert!(after.0 > before.0 && after.1 > before.1, "not balanced: {before:?} -> {after:?}");

    // Node A stops: qwen-7b fails over to B at once (no request lost), and
    // llama-70b, which only A serves, gets an OpenAI-shaped 503.
    let mut a = a;
    a.llmux.signal(Signal::SIGTERM);
    let status = tokio::task::block_in_place(|| a.llmux.wait_exit());
    assert!(status.success(), "{status:?}");
    let on_b = requests_seen(&b, "qwen-7b").await;
    for _ in 0..10 {
        let r = http::post(&url(CHAT), &chat("qwen-7b")).await;
        assert_eq!((r.status.as_u16(), r.served_by()), (200, "qwen-7b"), "{}", r.text());
    }
    assert_eq!(requests_seen(&b, "qwen-7b").await, on_b + 10);
    http::post(&url(CHAT), &chat("llama-70b")).await.assert_error(503, "model_unavailable");
    drop(gateway);
}

/// The example's files agree: both node configs pass `--check`, every
/// model in `models.map` is in `models.json`, and a model routed to
/// `shared` is configured on both nodes, the others on their own node.
#[test]
fn the_scale_out_example_is_consistent() {
    // The nodes listen on the network, so their configs take a key.
    const KEY: &str = "sk-example";
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scale-out");
    let models_of = |node: &str| -> Vec<String> {
        let path = dir.join(format!("{node}.yaml"));
        let out = Command::new(env!("CARGO_BIN_EXE_llmux"))
            .env("LLMUX_API_KEY", KEY)
            .arg("--check")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("check");
        assert!(out.status.success(), "{node}: {}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&path).expect("read");
        let env = |name: &str| (name == "LLMUX_API_KEY").then(|| KEY.to_owned());
        let config =
            llmux::Config::parse_with_env(&text, llmux::config::Format::Yaml, dir.clone(), &env).expect("load");
        config.models.iter().map(|m| m.name.clone()).collect()
    };
    let (a, b) = (models_of("node-a"), models_of("node-b"));
    let map = std::fs::read_to_string(dir.join("models.map")).expect("models.map");
    let routes: Vec<(String, String)> = map
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut words = l.split_whitespace();
            (words.next().unwrap_or_default().to_owned(), words.next().unwrap_or_default().to_owned())
        })
        .collect();
    let listed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("models.json")).expect("models.json")).expect("JSON");
    let mut ids: Vec<String> =
        listed["data"].as_array().expect("data").iter().map(|m| m["id"].as_str().unwrap_or("").to_owned()).collect();
    let mut mapped: Vec<String> = routes.iter().map(|(m, _)| m.clone()).collect();
    ids.sort();
    mapped.sort();
    assert_eq!(ids, mapped, "models.json and models.map list different models");
    for (model, backend) in &routes {
        let (on_a, on_b) = (a.contains(model), b.contains(model));
        let expected = match backend.as_str() {
            "node-a" => (true, false),
            "node-b" => (false, true),
            "shared" => (true, true),
            other => panic!("{model}: unknown backend {other}"),
        };
        assert_eq!((on_a, on_b), expected, "{model} is routed to {backend}");
    }
}
