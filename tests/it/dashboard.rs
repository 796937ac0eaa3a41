//! The dashboard (`GET /llmux/ui`) and the history `/llmux/status` keeps
//! for it; the page itself is checked in a real headless Chromium.

use std::net::SocketAddr;

use hyper::Method;
use llmux::config::{Config, Format};
use serde_json::{json, Value};

use crate::support::admin::ask_as;
use crate::support::backend::free_port;
use crate::support::browser::{self, Browser};
use crate::support::http::{self, chat};
use crate::support::mux;

const CHAT: &str = "/v1/chat/completions";

/// The state changes of `model` in `status`'s history, oldest first.
fn states_of(status: &Value, model: &str) -> Vec<String> {
    let states = status["history"]["states"].as_array().expect("history.states");
    states.iter().filter(|c| c["model"] == model).map(|c| c["state"].as_str().expect("state").to_owned()).collect()
}

/// Status keeps the recent past: each model's state changes, every switch
/// with its phases in order on one clock, and the failed hooks.
#[tokio::test]
async fn status_keeps_recent_states_switches_and_hook_errors() {
    let mux = mux().model("a").model("b").model("c").up_at_start("a").start();
    mux.wait_state("a", "active").await;
    mux.hooks.set_to("delay-sleep-a", "0.3");
    mux.hooks.set_to("delay-wake-b", "0.3");
    mux.served("b").await;
    mux.hooks.set("fail-wake-c");
    http::post(&mux.url(CHAT), &chat("c")).await.assert_error(503, "model_unavailable");
    let status = mux.status().await;
    let history = &status["history"];
    assert_eq!(states_of(&status, "a"), ["active", "draining", "sleeping", "asleep"], "{history}");
    assert_eq!(states_of(&status, "b")[..2], ["waking", "active"], "{history}");
    let switches = history["switches"].as_array().expect("switches");
    let to_b = switches.iter().find(|s| s["to"] == "b").unwrap_or_else(|| panic!("{history}"));
    assert_eq!((&to_b["from"], &to_b["result"], &to_b["victims"]), (&json!("a"), &json!("done"), &json!(["a"])));
    let n = |k: &str| to_b[k].as_u64().unwrap_or_else(|| panic!("{k} in {to_b}"));
    assert!(n("sleep_ms") >= 300 && n("wake_ms") >= 300, "the hooks took 0.3 s each: {to_b}");
    assert!(n("miss_ms") <= n("started_ms"), "{to_b}");
    assert!(n("started_ms") + n("drain_ms") + n("sleep_ms") <= n("wake_started_ms") + 5, "{to_b}");
    assert!(n("wake_started_ms") + n("wake_ms") <= n("published_ms") + 5, "{to_b}");
    assert!(n("published_ms") <= history["now_ms"].as_u64().expect("now_ms"), "{history}");
    let to_c = switches.last().expect("a switch");
    assert_eq!((&to_c["to"], &to_c["result"]), (&json!("c"), &json!("failed")), "{history}");
    let errors = history["hook_errors"].as_array().expect("hook_errors");
    assert!(errors.iter().any(|e| e["model"] == "c" && e["hook"] == "wake"), "{history}");
}

/// `GET /llmux/ui` is one page that loads nothing from elsewhere; `HEAD`
/// works; any other method or path under it is the control API's.
#[tokio::test]
async fn the_dashboard_is_one_self_contained_page() {
    let mux = mux().model("a").start();
    let page = http::get(&mux.url("/llmux/ui")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text();
    assert!(html.starts_with("<!doctype html>") && html.contains("/llmux/events") && html.contains("/llmux/status"));
    for external in ["http://", "https://", "<link", " src=", "@import", "url("] {
        assert!(!html.contains(external), "the page loads something from elsewhere: {external}");
    }
    let head = http::request(Method::HEAD, &mux.url("/llmux/ui"), &[], "").await;
    assert_eq!((head.status.as_u16(), head.body.len()), (200, 0));
    let post = http::request(Method::POST, &mux.url("/llmux/ui"), &[], "").await;
    post.assert_error(404, "unknown_route");
}

/// A request for the page from `peer` (over a pipe); its status.
async fn page_as(server: &llmux::Server, peer: &str, path: &str) -> u16 {
    let peer: SocketAddr = peer.parse().expect("peer address");
    let get = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    ask_as(server.shared(), peer, &get).await.0
}

/// The page follows the control API's exposure but needs no key (it holds
/// no state): loopback only without `admin_api_keys`; from anywhere with
/// them, while what it reads still needs the admin key.
#[tokio::test]
async fn the_dashboard_follows_the_control_apis_exposure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = format!("models:\n  a: {{port: {}, wake: 'true', sleep: 'true', alive: 'false'}}\n", free_port());
    let bind = |extra: &str| {
        let yaml = format!("host: 127.0.0.1\nport: 0\n{model}{extra}");
        let config = Config::parse(&yaml, Format::Yaml, dir.path().to_path_buf()).expect("config");
        llmux::Server::bind(config)
    };
    let open = bind("").await.expect("bind");
    assert_eq!(page_as(&open, "10.1.2.3:5555", "/llmux/ui").await, 403);
    assert_eq!(page_as(&open, "127.0.0.1:5555", "/llmux/ui").await, 200);
    let keyed = bind("api_keys: [user]\nadmin_api_keys: [root]\n").await.expect("bind");
    assert_eq!(page_as(&keyed, "10.1.2.3:5555", "/llmux/ui").await, 200);
    assert_eq!(page_as(&keyed, "10.1.2.3:5555", "/llmux/status").await, 401);
}

/// Chromium, or a message saying why the test is skipped.
fn browser_or_skip() -> Option<Browser> {
    if browser::chromium().is_none() {
        eprintln!("dashboard browser test skipped: no chromium on the PATH (apt-get install chromium)");
        return None;
    }
    Browser::start()
}

/// The text of the active model on the page, and whether the timeline
/// shows a switch from `from` to `to` with its drain, sleep and wake.
fn shows_switch(from: &str, to: &str) -> String {
    format!(
        r#"(() => {{
            const s = document.querySelector('#switches .switch[data-from="{from}"][data-to="{to}"][data-result="done"]');
            if (!s) return false;
            const phases = [...s.querySelectorAll('.phase')].map((p) => p.dataset.phase).join(",");
            return phases === "drain,sleep,wake";
        }})()"#
    )
}

/// In a real browser: the page opened while `a` is active shows the switch
/// to `b` live (active model, lanes, the switch and its phases on the
/// timeline, the events that came over the stream), and a page opened
/// afterwards shows the same switch from the status history. Leaves a
/// screenshot of the live page (its path is printed; docs/ui.png is one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_switch_live_in_a_real_browser() {
    let Some(mut chrome) = browser_or_skip() else { return };
    let mux = mux().model("a").model("b").model("c").up_at_start("a").start();
    mux.wait_state("a", "active").await;
    let page = chrome.open(&mux.url("/llmux/ui"), 1280, 900);
    chrome.wait_until(&page, "a active", "document.getElementById('active').textContent === 'a'");
    chrome.wait_until(&page, "the event stream", "document.getElementById('conn').textContent === 'live'");
    mux.hooks.set_to("delay-sleep-a", "0.4");
    mux.hooks.set_to("delay-wake-b", "0.8");
    // A stream in flight on a: the switch drains it first.
    let stream = mux.slow_stream("a", 6, 150).await;
    let streaming = tokio::spawn(http::frames(stream));
    mux.served("b").await;
    assert_eq!(streaming.await.expect("the stream").len(), 7, "six chunks and [DONE], drained whole");
    chrome.wait_until(&page, "b active", "document.getElementById('active').textContent === 'b'");
    chrome.wait_until(&page, "the switch a → b with its phases", &shows_switch("a", "b"));
    let lane = r#"!!document.querySelector('#lanes .seg[data-model="b"][data-state="active"]')
        && !!document.querySelector('#lanes .seg[data-model="a"][data-state="draining"]')"#;
    chrome.wait_until(&page, "b's and a's lanes", lane);
    let streamed =
        "[...document.querySelectorAll('#events li.activated')].some((li) => li.textContent.includes('\"b\"'))";
    chrome.wait_until(&page, "the activated event from the stream", streamed);
    let row = r#"document.querySelector('#models tr[data-model="b"] .state').textContent === 'active'"#;
    chrome.wait_until(&page, "b's row", row);
    // More history for the picture: back to a, and a wake that fails.
    mux.served("a").await;
    mux.hooks.set("fail-wake-c");
    http::post(&mux.url(CHAT), &chat("c")).await.assert_error(503, "model_unavailable");
    mux.served("b").await;
    let later = chrome.open(&mux.url("/llmux/ui"), 1280, 900);
    chrome.wait_until(&later, "the earlier switch, from history", &shows_switch("a", "b"));
    chrome.wait_until(&later, "the switch back", &shows_switch("b", "a"));
    let failed = "!!document.querySelector('#switches .switch[data-to=\"c\"][data-result=\"failed\"]')";
    chrome.wait_until(&later, "the failed switch", failed);
    chrome.wait_until(
        &later,
        "c's wake error",
        "document.getElementById('hookerrors').textContent.includes('wake hook')",
    );
    // The live page saw all of it too (and its events): the picture.
    chrome.wait_until(&page, "the failed switch, live", failed);
    chrome.wait_until(&page, "b active again", &shows_switch("c", "b"));
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("llmux-ui.png");
    chrome.screenshot(&page, &shot);
    println!("dashboard screenshot: {}", shot.display());
}

/// The wake and sleep buttons work through the control API with the key
/// entered on the page (kept in sessionStorage, sent as a bearer token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_buttons_wake_and_sleep_with_the_admin_key() {
    let Some(mut chrome) = browser_or_skip() else { return };
    let mux = mux().model("a").model("b").up_at_start("a").config("admin_api_keys: [root-key]").start();
    mux.wait_state("a", "active").await;
    let page = chrome.open(&mux.url("/llmux/ui"), 1280, 900);
    chrome.wait_until(&page, "the key notice", "document.getElementById('notice').textContent.includes('admin key')");
    chrome.eval(&page, "document.getElementById('key').value = 'root-key'; document.getElementById('savekey').click()");
    chrome.wait_until(&page, "a active, with the key", "document.getElementById('active').textContent === 'a'");
    let click = |model: &str, action: &str| {
        format!(r#"document.querySelector('#models tr[data-model="{model}"] button[data-action="{action}"]').click()"#)
    };
    chrome.eval(&page, &click("b", "wake"));
    mux.wait_state("b", "active").await;
    chrome.wait_until(&page, "b active", "document.getElementById('active').textContent === 'b'");
    chrome.eval(&page, &click("b", "sleep"));
    mux.wait_state("b", "asleep").await;
    chrome.wait_until(&page, "nothing active", "document.getElementById('active').textContent === 'none'");
    let asked =
        http::request(Method::GET, &mux.url("/llmux/status"), &[("authorization", "Bearer root-key")], "").await;
    assert_eq!(asked.status, 200);
    assert_eq!(asked.json()["active"], Value::Null);
}
