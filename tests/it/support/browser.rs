//! A real headless Chromium driven over the DevTools protocol, for the
//! dashboard's tests.
//!
//! The protocol runs over a pipe (`--remote-debugging-pipe`: JSON messages
//! ending in NUL on file descriptors 3 and 4), which `sh` connects to two
//! FIFOs, so no WebSocket client is needed. Chromium runs in a process
//! group of its own, with `HOME` and its profile in a temporary directory;
//! dropping the [`Browser`] kills the group and then any process whose
//! command line names that directory (the crash handlers Chromium starts
//! in sessions of their own), and waits until none is left.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tempfile::TempDir;

use super::PATIENCE;

/// A running headless Chromium.
pub struct Browser {
    child: Child,
    to_browser: File,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    dir: TempDir,
}

/// One page (a target the browser is attached to).
pub struct Page {
    session: String,
}

/// The Chromium binary: `$LLMUX_CHROMIUM`, else `chromium`,
/// `chromium-browser` or `google-chrome` on the `PATH`.
pub fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LLMUX_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    let names = ["chromium", "chromium-browser", "google-chrome"];
    std::env::split_paths(&path).flat_map(|dir| names.map(|n| dir.join(n))).find(|p| p.is_file())
}

impl Browser {
    /// Starts Chromium headless; `None` when it is not installed.
    pub fn start() -> Option<Browser> {
        let bin = chromium()?;
        let dir = tempfile::tempdir().expect("tempdir");
        for fifo in ["to-browser", "from-browser"] {
            let made = Command::new("mkfifo").arg(dir.path().join(fifo)).status().expect("mkfifo");
            assert!(made.success(), "mkfifo failed");
        }
        let profile = format!("--user-data-dir={}", dir.path().join("profile").display());
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"exec "$@" 3<"$DIR/to-browser" 4>"$DIR/from-browser""#)
            .arg("sh")
            .arg(&bin)
            .args(FLAGS)
            .arg(profile)
            .arg("about:blank")
            .env("DIR", dir.path())
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("chromium.log")).expect("log file"))
            .process_group(0);
        let child = cmd.spawn().expect("spawn chromium");
        // The same order as the shell's redirections: no deadlock.
        let to_browser = File::options().write(true).open(dir.path().join("to-browser")).expect("open the pipe in");
        let from_browser = File::open(dir.path().join("from-browser")).expect("open the pipe out");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || read_messages(from_browser, &tx));
        Some(Browser { child, to_browser, from_browser: rx, next_id: 0, dir })
    }

    /// Calls `method` (on `page`'s session, or the browser's) and returns
    /// its result; fails the test on an error or after `PATIENCE`.
    pub fn call(&mut self, page: Option<&Page>, method: &str, params: Value) -> Value {
        let reply = self.send(page, method, params);
        assert!(reply.get("error").is_none(), "{method} failed: {reply}");
        reply["result"].clone()
    }

    /// Calls `method` and returns the whole reply (`result` or `error`).
    fn send(&mut self, page: Option<&Page>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(page) = page {
            message["sessionId"] = Value::from(page.session.as_str());
        }
        let mut bytes = serde_json::to_vec(&message).expect("JSON");
        bytes.push(0);
        self.to_browser.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {method} from chromium; its log:\n{}", self.log()));
            if reply["id"] == id {
                return reply;
            }
        }
    }

    /// Opens a page of `width` × `height` CSS pixels at `url`.
    pub fn open(&mut self, url: &str, width: u32, height: u32) -> Page {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let attached =
            self.call(None, "Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }));
        let page = Page { session: attached["sessionId"].as_str().expect("a session").to_owned() };
        let metrics = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        self.call(Some(&page), "Emulation.setDeviceMetricsOverride", metrics);
        self.call(Some(&page), "Page.navigate", json!({ "url": url }));
        page
    }

    /// The value of the JavaScript `expression` in `page` (awaited if it
    /// is a promise).
    pub fn eval(&mut self, page: &Page, expression: &str) -> Value {
        self.try_eval(page, expression).unwrap_or_else(|e| panic!("{expression} failed: {e}"))
    }

    /// [`Browser::eval`], or what went wrong (it threw, or the page was
    /// being replaced by a navigation).
    fn try_eval(&mut self, page: &Page, expression: &str) -> Result<Value, Value> {
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let reply = self.send(Some(page), "Runtime.evaluate", params);
        match reply.get("error") {
            Some(e) => Err(e.clone()),
            None if reply["result"].get("exceptionDetails").is_some() => Err(reply["result"].clone()),
            None => Ok(reply["result"]["result"]["value"].clone()),
        }
    }

    /// Evaluates `expression` until it is `true`, failing the test with
    /// `what` and the page's text after `PATIENCE`.
    pub fn wait_until(&mut self, page: &Page, what: &str, expression: &str) {
        let deadline = Instant::now() + PATIENCE;
        // Errors count as "not yet": the page may be loading.
        while self.try_eval(page, expression).ok() != Some(Value::Bool(true)) {
            if Instant::now() > deadline {
                let last = self.try_eval(page, expression);
                let text = self.try_eval(page, "document.body ? document.body.innerText : ''").unwrap_or_default();
                panic!(
                    "the page never showed {what} ({expression}: {last:?}); it shows:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of what `page` shows, written to `path`.
    pub fn screenshot(&mut self, page: &Page, path: &Path) {
        let shot = self.call(Some(page), "Page.captureScreenshot", json!({ "format": "png" }));
        let png = decode_base64(shot["data"].as_str().expect("base64 data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// What Chromium wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromium.log")).unwrap_or_default()
    }

    /// The processes whose command line names this browser's directory.
    fn strays(&self) -> Vec<Pid> {
        let marker = self.dir.path().to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
            .filter(|pid| is_alive(*pid))
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains(&marker)
            })
            .map(Pid::from_raw)
            .collect()
    }
}

/// Flags for a quiet, self-contained headless run.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--remote-debugging-pipe",
];

impl Drop for Browser {
    fn drop(&mut self) {
        let group = Pid::from_raw(-(self.child.id() as i32));
        let _ = kill(group, Signal::SIGKILL);
        let _ = self.child.wait();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let strays = self.strays();
            let group_left = kill(group, None).is_ok() && group_has_live_member(self.child.id() as i32);
            if strays.is_empty() && !group_left {
                return;
            }
            for pid in strays {
                let _ = kill(pid, Signal::SIGKILL);
            }
            let _ = kill(group, Signal::SIGKILL);
            if Instant::now() > deadline {
                // Not a panic in a drop: say so loudly instead.
                eprintln!("chromium processes outlived the test: {:?}", self.strays());
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// True unless the process is gone or a zombie (dead, waiting to be reaped
/// by its parent).
fn is_alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name's closing parenthesis.
    match stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) {
        Some(state) => state != "Z" && state != "X",
        None => false,
    }
}

/// True if a live (not zombie) process is in process group `pgid`.
fn group_has_live_member(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())).any(|pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        // Fields after the name: state, ppid, pgrp.
        fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && is_alive(pid)
    })
}

/// Reads NUL-terminated JSON messages until the pipe closes.
fn read_messages(from_browser: File, tx: &mpsc::Sender<Value>) {
    let mut reader = BufReader::new(from_browser);
    let mut message = Vec::new();
    loop {
        message.clear();
        match reader.read_until(0, &mut message) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if message.last() == Some(&0) {
                    message.pop();
                }
                if let Ok(value) = serde_json::from_slice(&message) {
                    if tx.send(value).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Standard base64 (what `Page.captureScreenshot` returns).
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(decode_base64("aGVsbG8="), b"hello");
    assert_eq!(decode_base64("aGk="), b"hi");
    assert_eq!(decode_base64("aGV5"), b"hey");
}
