//! Running the user's wake, sleep and alive hooks.
//!
//! A hook is `sh -c SCRIPT`, run in the config file's directory with
//! `LLMUX_MODEL` and `LLMUX_PORT` set, in a process group of its own. It is
//! done when it exits: its stdout and stderr are read to the end by
//! detached tasks (so a background server it started never gets SIGPIPE),
//! but never waited for. Output goes to the log line by line, tagged with
//! model and hook, with long lines truncated and a rate limit, so a hook
//! that prints megabytes costs bounded memory. A hook past its timeout, or
//! past the shutdown grace, is killed with its whole process group; so is a
//! hook still running when llmux exits (the [`GroupKiller`] drop guard).

use std::fmt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use crate::config::ModelConfig;
use crate::events::Events;
use crate::state::Shutdown;

/// Which of a model's hooks (the discriminant indexes per-hook metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// Makes the backend ready.
    Wake = 0,
    /// Frees the GPU.
    Sleep = 1,
    /// Exits 0 when the backend is up.
    Alive = 2,
}

impl HookKind {
    /// The hook's name in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Wake => "wake",
            HookKind::Sleep => "sleep",
            HookKind::Alive => "alive",
        }
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a hook run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Exited 0.
    Success,
    /// Exited non-zero or was killed by a signal.
    Failed(ExitStatus),
    /// Killed at its timeout.
    TimedOut(Duration),
    /// Killed because the shutdown grace ran out.
    CutByShutdown,
    /// Could not be started.
    SpawnFailed(std::io::Error),
}

/// A finished hook run.
#[derive(Debug)]
pub struct HookRun {
    /// How it ended.
    pub outcome: Outcome,
    /// Just before the spawn.
    pub started: Instant,
    /// From spawn to reap.
    pub duration: Duration,
}

impl HookRun {
    /// True if the hook exited 0.
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, Outcome::Success)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success => f.write_str("succeeded"),
            Outcome::Failed(status) => match status.code() {
                Some(code) => write!(f, "exited with status {code}"),
                None => write!(f, "was killed by a signal ({status})"),
            },
            Outcome::TimedOut(t) => write!(f, "timed out after {}s and was killed", t.as_secs()),
            Outcome::CutByShutdown => f.write_str("was killed at the end of the shutdown grace"),
            Outcome::SpawnFailed(e) => write!(f, "could not be started: {e}"),
        }
    }
}

/// Runs `model`'s `kind` hook in `dir` and waits for it to exit; its
/// output lines go to the log and to `events`.
///
/// Once `shutdown` starts, the hook gets `grace` more time, then its
/// process group is killed.
pub async fn run(
    model: &ModelConfig,
    kind: HookKind,
    dir: &Path,
    shutdown: &Shutdown,
    grace: Duration,
    events: &Events,
) -> HookRun {
    let hook = match kind {
        HookKind::Wake => &model.wake,
        HookKind::Sleep => &model.sleep,
        HookKind::Alive => &model.alive,
    };
    let started = Instant::now();
    let mut child = match spawn(&hook.script, model, dir) {
        Ok(child) => child,
        Err(e) => return HookRun { outcome: Outcome::SpawnFailed(e), started, duration: started.elapsed() },
    };
    let killer = GroupKiller::new(child.id());
    forward_output(&mut child, &model.name, kind, events);
    tracing::debug!(model = %model.name, hook = %kind, "hook started");
    let outcome = wait(&mut child, &killer, hook.timeout, shutdown, grace).await;
    // Exited (or already killed): a server it started in the background lives on.
    killer.disarm();
    let run = HookRun { outcome, started, duration: started.elapsed() };
    log_finished(&model.name, kind, &run);
    run
}

fn spawn(script: &str, model: &ModelConfig, dir: &Path) -> std::io::Result<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("LLMUX_MODEL", &model.name)
        .env("LLMUX_PORT", model.port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
}

async fn wait(
    child: &mut Child,
    killer: &GroupKiller,
    timeout: Duration,
    shutdown: &Shutdown,
    grace: Duration,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::select! {
        status = child.wait() => return exited(status),
        () = tokio::time::sleep_until(deadline) => {
            killer.kill();
            let _ = child.wait().await;
            return Outcome::TimedOut(timeout);
        }
        () = shutdown.started() => {}
    }
    let grace_end = tokio::time::Instant::now() + grace;
    tokio::select! {
        status = child.wait() => exited(status),
        () = tokio::time::sleep_until(deadline.min(grace_end)) => {
            killer.kill();
            let _ = child.wait().await;
            if deadline <= grace_end { Outcome::TimedOut(timeout) } else { Outcome::CutByShutdown }
        }
    }
}

fn exited(status: std::io::Result<ExitStatus>) -> Outcome {
    match status {
        Ok(s) if s.success() => Outcome::Success,
        Ok(s) => Outcome::Failed(s),
        Err(e) => Outcome::SpawnFailed(e),
    }
}

fn log_finished(model: &str, kind: HookKind, run: &HookRun) {
    let ms = run.duration.as_millis() as u64;
    match &run.outcome {
        Outcome::Success => tracing::info!(model, hook = %kind, ms, "hook succeeded"),
        // An alive hook that fails is an answer ("down"), not an error.
        Outcome::Failed(_) if kind == HookKind::Alive => {
            tracing::info!(model, hook = %kind, ms, "alive hook: {}", run.outcome)
        }
        Outcome::CutByShutdown => {
            tracing::warn!(model, hook = %kind, ms, "hook cut short by shutdown: its process group was killed")
        }
        other => tracing::warn!(model, hook = %kind, ms, "hook {other}"),
    }
}

/// Kills a hook's process group when asked, or when dropped while armed.
struct GroupKiller {
    pgid: Option<Pid>,
    armed: AtomicBool,
}

impl GroupKiller {
    fn new(pid: Option<u32>) -> GroupKiller {
        let pgid = pid.and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
        GroupKiller { pgid, armed: AtomicBool::new(true) }
    }

    fn kill(&self) {
        if let Some(pgid) = self.pgid {
            // ESRCH (already gone) is fine.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        self.armed.store(false, Relaxed);
    }

    fn disarm(&self) {
        self.armed.store(false, Relaxed);
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if self.armed.load(Relaxed) {
            self.kill();
        }
    }
}

/// The most bytes of one output line that reach the log.
const MAX_LINE_BYTES: usize = 4096;
/// Lines per hook run logged in a burst before the rate limit applies.
const LINE_BURST: u32 = 200;
/// Lines per second logged after the burst.
const LINES_PER_SEC: u32 = 20;

fn forward_output(child: &mut Child, model: &str, kind: HookKind, events: &Events) {
    if let Some(out) = child.stdout.take() {
        let to = LineSink { model: model.to_owned(), kind, stream: "stdout", events: events.clone() };
        tokio::spawn(log_lines(out, to));
    }
    if let Some(err) = child.stderr.take() {
        let to = LineSink { model: model.to_owned(), kind, stream: "stderr", events: events.clone() };
        tokio::spawn(log_lines(err, to));
    }
}

/// Where one pipe's lines go: the log and the event stream.
struct LineSink {
    model: String,
    kind: HookKind,
    stream: &'static str,
    events: Events,
}

/// Reads `pipe` to EOF, logging each line (rate-limited, truncated).
async fn log_lines(mut pipe: impl AsyncRead + Unpin, to: LineSink) {
    let LineSink { ref model, kind, stream, .. } = to;
    let mut limiter = LineLimiter::new(Instant::now());
    let mut line = Vec::with_capacity(256);
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        for &byte in &buf[..n] {
            if byte == b'\n' {
                emit(&mut limiter, &mut line, &to);
            } else if line.len() < MAX_LINE_BYTES {
                line.push(byte);
            }
        }
    }
    if !line.is_empty() {
        emit(&mut limiter, &mut line, &to);
    }
    if limiter.dropped > 0 {
        tracing::warn!(model, hook = %kind, stream, dropped = limiter.dropped, "hook output rate-limited: lines dropped");
    }
}

fn emit(limiter: &mut LineLimiter, line: &mut Vec<u8>, to: &LineSink) {
    if limiter.allow(Instant::now()) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        let (model, hook, stream) = (to.model.as_str(), to.kind.as_str(), to.stream);
        tracing::info!(model, hook, stream, line = text, "hook output");
        to.events.emit(
            "hook_output",
            || serde_json::json!({ "model": model, "hook": hook, "stream": stream, "line": text }),
        );
    }
    line.clear();
}

/// A token bucket: a burst, then a steady rate; counts what it drops.
struct LineLimiter {
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl LineLimiter {
    fn new(now: Instant) -> LineLimiter {
        LineLimiter { tokens: f64::from(LINE_BURST), last: now, dropped: 0 }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.last).as_secs_f64() * f64::from(LINES_PER_SEC);
        self.tokens = (self.tokens + refill).min(f64::from(LINE_BURST));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Hook;

    /// The kill grace of the test hooks.
    const KILL_GRACE_MS: u64 = 500;

    fn model(wake: &str, timeout_ms: u64) -> ModelConfig {
        let hook = |s: &str| Hook {
            script: s.into(),
            timeout: Duration::from_millis(timeout_ms),
            kill_grace: Duration::from_millis(KILL_GRACE_MS),
        };
        ModelConfig {
            name: "m".into(),
            port: 4242,
            wake: hook(wake),
            sleep: hook("true"),
            alive: hook("true"),
            idle_sleep: None,
            alive_interval: None,
        }
    }

    async fn run_wake(script: &str, timeout_ms: u64) -> HookRun {
        let dir = std::env::temp_dir();
        run(
            &model(script, timeout_ms),
            HookKind::Wake,
            &dir,
            &Shutdown::default(),
            Duration::from_secs(1),
            &Events::default(),
        )
        .await
    }

    #[tokio::test]
    async fn exit_codes_decide() {
        assert!(run_wake("test \"$LLMUX_MODEL:$LLMUX_PORT\" = m:4242", 5000).await.succeeded());
        let failed = run_wake("exit 3", 5000).await;
        assert!(matches!(failed.outcome, Outcome::Failed(s) if s.code() == Some(3)));
    }

    #[tokio::test]
    async fn a_hook_killed_by_a_signal_failed() {
        let run = run_wake("kill -9 $$", 5000).await;
        assert!(matches!(run.outcome, Outcome::Failed(s) if s.code().is_none()), "{:?}", run.outcome);
        assert!(run.outcome.to_string().contains("signal"), "{}", run.outcome);
    }

    #[tokio::test]
    async fn done_when_it_exits_even_if_a_child_holds_its_output() {
        let run = run_wake("sleep 30 & echo started", 20_000).await;
        assert!(run.succeeded());
        assert!(run.duration < Duration::from_secs(10), "{:?}", run.duration);
    }

    #[tokio::test]
    async fn a_hung_hook_is_killed_with_its_children_at_its_timeout() {
        let marker = tempfile::NamedTempFile::new().expect("temp file");
        let path = marker.path().display().to_string();
        let script = format!("(sleep 30; echo late > {path}) & sleep 30");
        let run = run_wake(&script, 300).await;
        assert!(matches!(run.outcome, Outcome::TimedOut(_)), "{:?}", run.outcome);
        // The whole group is gone: nothing is left holding the marker open.
        let out = std::process::Command::new("pgrep").args(["-f", &path]).output().expect("pgrep");
        assert!(out.stdout.is_empty(), "children survived: {}", String::from_utf8_lossy(&out.stdout));
    }

    #[test]
    fn limiter_allows_a_burst_then_a_rate() {
        let t0 = Instant::now();
        let mut l = LineLimiter::new(t0);
        let allowed = (0..1000).filter(|_| l.allow(t0)).count();
        assert_eq!(allowed, LINE_BURST as usize);
        assert!(l.allow(t0 + Duration::from_secs(1)));
        assert_eq!(l.dropped, 800);
    }
}
