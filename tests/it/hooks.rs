//! Orphans of hooks: when llmux is PID 1 (a container without an init) or
//! a child subreaper, a backend a wake hook started with `&` is adopted by
//! llmux once the hook exits, and llmux must reap it when it dies, or the
//! sleep hook's `while kill -0 $PID` loop never ends.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::backend::free_port;
use crate::support::http;
use crate::support::{Process, PATIENCE};

/// The wake hook starts a backend (a `sleep`) in the background and leaves
/// its pid; the sleep hook kills it and waits until it is gone, as a
/// `docker stop` or a CRIU dump waits for its process.
fn write_config(dir: &Path) -> std::path::PathBuf {
    let config = format!(
        r#"host: 127.0.0.1
port: 0
models:
  m:
    port: {port}
    wake: |
      sleep 60 > /dev/null 2>&1 &
      echo $! > backend.pid
    sleep: |
      PID=$(cat backend.pid)
      kill $PID
      while kill -0 $PID 2>/dev/null; do sleep 0.05; done
      rm backend.pid
    alive: test -f backend.pid
policy:
  wake_timeout_secs: 10
  sleep_timeout_secs: 5
  alive_timeout_secs: 5
"#,
        port = free_port()
    );
    let path = dir.join("llmux.yaml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// llmux's stderr goes to `llmux.log` in `dir`.
fn log_to(cmd: &mut Command, dir: &Path) {
    match std::fs::File::create(dir.join("llmux.log")) {
        Ok(file) => cmd.stderr(file),
        Err(_) => cmd.stderr(Stdio::null()),
    };
}

/// `/proc/PID/status` field `name` of a host pid.
fn status_field(pid: i32, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned())
}

/// Host pids of `parent`'s children that are zombies.
fn zombie_children(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| status_field(p, "PPid:").as_deref() == Some(&parent.to_string()))
        .filter(|&p| status_field(p, "State:").is_some_and(|s| s.starts_with('Z')))
        .collect()
}

/// Wakes `m`, then sleeps it: the sleep hook must succeed (its backend,
/// adopted by llmux, was reaped when it died), and llmux (host pid
/// `llmux_pid`) is left with no zombie children.
async fn wake_then_sleep(url: &str, dir: &Path, llmux_pid: i32) {
    let woke = http::post(&format!("{url}/llmux/models/m/wake"), "").await;
    assert_eq!(woke.status, 200, "wake: {}", woke.text());
    let slept = http::post(&format!("{url}/llmux/sleep"), "").await;
    let log = std::fs::read_to_string(dir.join("llmux.log")).unwrap_or_default();
    assert_eq!(slept.status, 200, "the sleep hook waited on a zombie: {}\n{log}", slept.text());
    assert!(!dir.join("backend.pid").exists(), "the sleep hook did not finish");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let zombies = zombie_children(llmux_pid);
        if zombies.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "zombie children of llmux: {zombies:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The host pid of `unshare`'s one child: llmux, PID 1 of its namespace.
fn child_of(pid: i32) -> i32 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace().next().and_then(|p| p.parse().ok()).expect("unshare has a child")
}

/// True if this machine lets us make a PID namespace.
fn can_unshare_pid() -> bool {
    let probe =
        Command::new("unshare").args(["--pid", "--fork", "--kill-child", "true"]).stderr(Stdio::piped()).output();
    match probe {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            println!("skipped: needs root for unshare --pid ({})", String::from_utf8_lossy(&out.stderr).trim());
            false
        }
        Err(e) => {
            println!("skipped: needs root for unshare --pid (no unshare: {e})");
            false
        }
    }
}

/// llmux as PID 1 of a new PID namespace: with `/proc` of the parent
/// namespace (pids translated through `NSpid`) and with its own.
#[tokio::test]
async fn as_pid_1_llmux_reaps_the_backend_a_hook_left_behind() {
    if !can_unshare_pid() {
        return;
    }
    for extra in [&[][..], &["--mount-proc"][..]] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path());
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child"])
            .args(extra)
            .arg(env!("CARGO_BIN_EXE_llmux"))
            .arg("-c")
            .arg(&config);
        cmd.env("RUST_LOG", "llmux=debug");
        log_to(&mut cmd, dir.path());
        // Dropping it SIGKILLs unshare; --kill-child then kills llmux, and
        // the namespace (the backend included) goes with its PID 1.
        let unshare = Process::start(cmd);
        let llmux_pid = child_of(unshare.pid().as_raw());
        let url = format!("http://{}", unshare.addr);
        wake_then_sleep(&url, dir.path(), llmux_pid).await;
        let log = std::fs::read_to_string(dir.path().join("llmux.log")).unwrap_or_default();
        assert!(log.contains("llmux is PID 1: reaping orphaned processes"), "{extra:?}: {log}");
    }
}

/// Kills the backend left in `dir` (if a failed test left one) when dropped.
struct KillBackend<'a>(&'a Path);

impl Drop for KillBackend<'_> {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.0.join("backend.pid")).ok().and_then(|p| p.trim().parse().ok());
        if let Some(pid) = pid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// `--subreaper` makes llmux adopt (and reap) the orphans of its hooks
/// without being PID 1; no root needed.
#[tokio::test]
async fn with_subreaper_llmux_reaps_the_backend_a_hook_left_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _backend = KillBackend(dir.path());
    let config = write_config(dir.path());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmux"));
    cmd.arg("--subreaper").arg("-c").arg(&config).env("RUST_LOG", "llmux=debug");
    log_to(&mut cmd, dir.path());
    let llmux = Process::start(cmd);
    let url = format!("http://{}", llmux.addr);
    wake_then_sleep(&url, dir.path(), llmux.pid().as_raw()).await;
}
