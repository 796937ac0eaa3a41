//! Running the user's wake, sleep and alive hooks.
//!
//! A hook is `sh -c SCRIPT`, run in its model's `dir` (by default the
//! config file's directory) with the model's `env` and `LLMUX_MODEL`,
//! `LLMUX_PORT` and `LLMUX_UPSTREAM` set, in a process group of its own.
//! It is
//! done when it exits: its stdout and stderr are read to the end by
//! detached tasks (so a background server it started never gets SIGPIPE),
//! but never waited for. Output goes to the log line by line, tagged with
//! model and hook, with long lines truncated and a rate limit, so a hook
//! that prints megabytes costs bounded memory; what a background process
//! writes to those pipes after the hook exited is logged as `background
//! output` (`started_by` the hook), never as the hook's.
//!
//! A hook past its timeout, or past the shutdown grace, is stopped: SIGTERM
//! to its whole process group, then SIGKILL to whatever of the group is
//! still alive after the hook's `kill_grace`; the wait after the SIGKILL is
//! bounded by [`KILL_WAIT`]. A hook still running when llmux exits (its
//! task dropped) gets SIGKILL at once from the [`GroupKiller`] drop guard,
//! which cannot wait. A hook's pid is registered with [`crate::reaper`]
//! from its spawn until it has been waited for, so the orphan reaper
//! never takes its exit status.

use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::config::{Hook, ModelConfig};
use crate::events::Events;
use crate::reaper::{self, HookPid};
use crate::shutdown::Shutdown;

pub use crate::config::HookKind;

mod tail;

pub use tail::{StderrTail, TAIL_BYTES, TAIL_LINES};

/// How long a failed hook's runner waits for the last of its stderr (what
/// the hook wrote is in the pipe when it exits: read at once).
const TAIL_PATIENCE: Duration = Duration::from_millis(500);

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
    /// A failed run's last stderr lines (bounded; empty on success).
    pub stderr: Vec<String>,
}

impl HookRun {
    /// Counts this run in `metrics`.
    pub fn count_in(&self, metrics: &crate::metrics::HookMetrics) {
        let timed_out = matches!(self.outcome, Outcome::TimedOut(_));
        metrics.record(self.duration, !self.succeeded() && !timed_out, timed_out);
    }

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
            Outcome::TimedOut(t) => write!(f, "timed out after {}s and was stopped", t.as_secs_f64()),
            Outcome::CutByShutdown => f.write_str("was stopped at the end of the shutdown grace"),
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
    // `_registered` lives until the hook has been waited for (or its run
    // is dropped): the orphan reaper leaves its exit status to tokio.
    let (mut child, _registered) = match spawn(&hook.script, model, dir) {
        Ok(spawned) => spawned,
        Err(e) => {
            return HookRun {
                outcome: Outcome::SpawnFailed(e),
                started,
                duration: started.elapsed(),
                stderr: Vec::new(),
            }
        }
    };
    let group = GroupKiller::new(child.id());
    let tail = StderrTail::default();
    let exited = forward_output(&mut child, &model.name, kind, events, &tail);
    tracing::debug!(model = %model.name, hook = %kind, "hook started");
    let (outcome, stopped) = wait(&mut child, &group, hook, shutdown, grace).await;
    // Exited (or already stopped): a server it started in the background lives on.
    group.disarm();
    exited.send_replace(true);
    let duration = started.elapsed();
    let stderr = match outcome {
        Outcome::Success => Vec::new(),
        _ => tail.lines(TAIL_PATIENCE).await,
    };
    let run = HookRun { outcome, started, duration, stderr };
    log_finished(&model.name, kind, &run, stopped);
    run
}

/// Spawns the hook, its pid registered with the reaper until the returned
/// [`HookPid`] is dropped.
fn spawn(script: &str, model: &ModelConfig, dir: &Path) -> std::io::Result<(Child, Option<HookPid>)> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .current_dir(dir)
        .envs(model.env.iter().map(|(k, v)| (k, v)))
        .env("LLMUX_MODEL", &model.name)
        .env("LLMUX_PORT", model.backend.given_port().map_or_else(String::new, |p| p.to_string()))
        .env("LLMUX_UPSTREAM", model.backend.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // llmux's own socket activation and notification socket.
    for var in crate::systemd::CHILD_UNSET {
        cmd.env_remove(var);
    }
    reaper::spawn_hook(&mut cmd)
}

/// Waits for the hook to exit; past its timeout, or past the shutdown
/// grace, stops its process group (and says how it ended).
async fn wait(
    child: &mut Child,
    group: &GroupKiller,
    hook: &Hook,
    shutdown: &Shutdown,
    grace: Duration,
) -> (Outcome, Option<Stopped>) {
    let deadline = tokio::time::Instant::now() + hook.timeout;
    tokio::select! {
        status = child.wait() => return (exited(status), None),
        () = tokio::time::sleep_until(deadline) => {
            let stopped = stop(child, group, hook.kill_grace).await;
            return (Outcome::TimedOut(hook.timeout), Some(stopped));
        }
        () = shutdown.started() => {}
    }
    let grace_end = tokio::time::Instant::now() + grace;
    tokio::select! {
        status = child.wait() => (exited(status), None),
        () = tokio::time::sleep_until(deadline.min(grace_end)) => {
            let stopped = stop(child, group, hook.kill_grace).await;
            let outcome = if deadline <= grace_end { Outcome::TimedOut(hook.timeout) } else { Outcome::CutByShutdown };
            (outcome, Some(stopped))
        }
    }
}

/// How long llmux waits, after a SIGKILL, for a hook to be reaped and its
/// process group to empty (a process stuck in uninterruptible sleep, say
/// on a hung NFS mount or GPU driver, cannot die; llmux does not hang on it).
pub const KILL_WAIT: Duration = Duration::from_secs(2);

/// How often a stopped hook's process group is checked for survivors.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// How a hook that was told to stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// Its process group was gone within the kill grace after SIGTERM.
    ByTerm,
    /// Something in its group outlived the kill grace and got SIGKILL.
    ByKill,
    /// SIGKILL was sent but the hook was not reaped, or its group not
    /// empty, within [`KILL_WAIT`]; llmux gave up waiting.
    NotReaped,
}

impl Stopped {
    /// The signal that ended the hook.
    fn signal(self) -> &'static str {
        match self {
            Stopped::ByTerm => "SIGTERM",
            Stopped::ByKill | Stopped::NotReaped => "SIGKILL",
        }
    }
}

/// The longest [`stop`] takes: the kill grace, then [`KILL_WAIT`].
pub fn stop_bound(kill_grace: Duration) -> Duration {
    kill_grace + KILL_WAIT
}

/// Stops a hook's process group: SIGTERM, then SIGKILL to whatever of the
/// group is left after `kill_grace`, then at most [`KILL_WAIT`] more.
async fn stop(child: &mut Child, group: &GroupKiller, kill_grace: Duration) -> Stopped {
    group.signal(Signal::SIGTERM);
    if tokio::time::timeout(kill_grace, gone(child, group)).await.is_ok() {
        return Stopped::ByTerm;
    }
    group.signal(Signal::SIGKILL);
    match tokio::time::timeout(KILL_WAIT, gone(child, group)).await {
        Ok(()) => Stopped::ByKill,
        Err(_) => Stopped::NotReaped,
    }
}

/// Resolves once the hook has been reaped and nothing is left alive in
/// its process group.
async fn gone(child: &mut Child, group: &GroupKiller) {
    let _ = child.wait().await;
    while group.exists() {
        tokio::time::sleep(GROUP_POLL).await;
    }
}

fn exited(status: std::io::Result<ExitStatus>) -> Outcome {
    match status {
        Ok(s) if s.success() => Outcome::Success,
        Ok(s) => Outcome::Failed(s),
        Err(e) => Outcome::SpawnFailed(e),
    }
}

fn log_finished(model: &str, kind: HookKind, run: &HookRun, stopped: Option<Stopped>) {
    let ms = run.duration.as_millis() as u64;
    if let Some(stopped) = stopped {
        return log_stopped(model, kind, run, ms, stopped);
    }
    match &run.outcome {
        // An alive check is a probe: what it found is reported by the
        // switch task (down, adopted, failed), not each run.
        Outcome::Success if kind == HookKind::Alive => tracing::debug!(model, hook = %kind, ms, "hook succeeded"),
        Outcome::Success => tracing::info!(model, hook = %kind, ms, "hook succeeded"),
        // An alive hook that fails is an answer ("down"), not an error:
        // the switch task reports what it means.
        Outcome::Failed(_) if kind == HookKind::Alive => {
            tracing::debug!(model, hook = %kind, ms, "alive hook: {}", run.outcome)
        }
        Outcome::CutByShutdown => {
            tracing::warn!(model, hook = %kind, ms, "hook cut short by shutdown: its process group was killed")
        }
        other => tracing::warn!(model, hook = %kind, ms, "hook {other}"),
    }
}

/// Logs a hook that was stopped, with the signal that ended it.
fn log_stopped(model: &str, kind: HookKind, run: &HookRun, ms: u64, stopped: Stopped) {
    let signal = stopped.signal();
    match (&run.outcome, stopped) {
        (_, Stopped::NotReaped) => tracing::warn!(
            model, hook = %kind, ms, signal,
            "hook {}; after SIGKILL it was still not reaped (or its process group not empty) within {}s, llmux gave up waiting",
            run.outcome, KILL_WAIT.as_secs()
        ),
        (Outcome::CutByShutdown, _) => tracing::warn!(
            model, hook = %kind, ms, signal,
            "hook cut short by shutdown: its process group was stopped, ended by {signal}"
        ),
        (other, _) => tracing::warn!(model, hook = %kind, ms, signal, "hook {other}, ended by {signal}"),
    }
}

/// Signals a hook's process group when asked; SIGKILLs it when dropped
/// while armed (a drop cannot wait for a SIGTERM to take effect: that is
/// a hook still running when llmux exits or its task is dropped).
struct GroupKiller {
    pgid: Option<Pid>,
    armed: AtomicBool,
}

impl GroupKiller {
    fn new(pid: Option<u32>) -> GroupKiller {
        let pgid = pid.and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
        GroupKiller { pgid, armed: AtomicBool::new(true) }
    }

    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            // ESRCH (already gone) is fine.
            let _ = killpg(pgid, signal);
        }
    }

    /// True while a process of the group is alive. An exited member not
    /// yet reaped (a zombie, until its parent or init reaps it) does not
    /// count when `/proc` can tell; otherwise it does.
    fn exists(&self) -> bool {
        let Some(pgid) = self.pgid else { return false };
        // EPERM (a member we may not signal) still means it exists.
        if killpg(pgid, None) == Err(nix::errno::Errno::ESRCH) {
            return false;
        }
        crate::procfs::group_has_live_members(pgid.as_raw()).unwrap_or(true)
    }

    fn disarm(&self) {
        self.armed.store(false, Relaxed);
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if self.armed.load(Relaxed) {
            self.signal(Signal::SIGKILL);
        }
    }
}

/// The most bytes of one output line that reach the log.
const MAX_LINE_BYTES: usize = 4096;
/// Lines per hook run logged in a burst before the rate limit applies.
const LINE_BURST: u32 = 200;
/// Lines per second logged after the burst.
const LINES_PER_SEC: u32 = 20;
/// The most bytes read straight from a pipe when its hook exits (the
/// hook's last output); the rest is read, and tagged, as it comes.
const MAX_EXIT_DRAIN: usize = 1 << 20;

/// Starts reading the hook's stdout and stderr; returns the sender that
/// tells the readers the hook has exited (dropping it says the same).
fn forward_output(
    child: &mut Child,
    model: &str,
    kind: HookKind,
    events: &Events,
    tail: &StderrTail,
) -> watch::Sender<bool> {
    let (exited, rx) = watch::channel(false);
    let sink = |stream, tail| LineSink { model: model.to_owned(), kind, stream, events: events.clone(), tail };
    if let Some(out) = child.stdout.take() {
        tokio::spawn(log_lines(out, rx.clone(), sink("stdout", None)));
    }
    match child.stderr.take() {
        Some(err) => drop(tokio::spawn(log_lines(err, rx, sink("stderr", Some(tail.clone()))))),
        None => tail.complete(),
    }
    exited
}

/// Where one pipe's lines go: the log and the event stream.
struct LineSink {
    model: String,
    kind: HookKind,
    stream: &'static str,
    events: Events,
    /// Where the hook's own stderr lines are kept (stderr only).
    tail: Option<StderrTail>,
}

/// Reads `pipe` to EOF, logging each line (rate-limited, truncated).
///
/// Lines are the hook's until it exits. Then what is already in the pipe
/// (everything the hook wrote: a write to a pipe is complete before its
/// writer can exit) is read at once, straight from the file descriptor
/// since tokio's readiness may lag, and is the hook's too; anything after
/// that comes from a background process that inherited the pipe, and is
/// logged as `background output`.
async fn log_lines(mut pipe: impl AsyncRead + AsRawFd + Unpin, mut exited: watch::Receiver<bool>, to: LineSink) {
    let mut lines = LineSplitter::new(to);
    let mut buf = [0u8; 8192];
    loop {
        tokio::select! {
            biased;
            read = pipe.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => lines.feed(&buf[..n]),
            },
            // Err: the sender is gone, so the hook is too.
            _ = exited.wait_for(|e| *e), if !lines.late => {
                let at_eof = drain_ready(pipe.as_raw_fd(), &mut lines);
                lines.hook_exited();
                if at_eof {
                    break;
                }
            }
        }
    }
    lines.finish();
}

/// Reads what `fd` (non-blocking, as tokio's pipes are) holds right now
/// into `lines`; true at EOF.
fn drain_ready(fd: RawFd, lines: &mut LineSplitter) -> bool {
    let mut buf = [0u8; 8192];
    let mut total = 0;
    while total < MAX_EXIT_DRAIN {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                lines.feed(&buf[..n]);
                total += n;
            }
            Err(nix::errno::Errno::EINTR) => {}
            // EAGAIN: nothing more for now; anything else: tokio's read will see it.
            Err(_) => return false,
        }
    }
    false
}

/// Splits a pipe's bytes into lines and sends them on, tagged as the
/// hook's or, once the hook has exited, as a background process's.
struct LineSplitter {
    to: LineSink,
    limiter: LineLimiter,
    line: Vec<u8>,
    /// The hook has exited: lines from now on are not its own.
    late: bool,
}

impl LineSplitter {
    fn new(to: LineSink) -> LineSplitter {
        LineSplitter { to, limiter: LineLimiter::new(Instant::now()), line: Vec::with_capacity(256), late: false }
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LINE_BYTES {
                self.line.push(byte);
            }
        }
    }

    /// The hook's output ends here: an unfinished line is its last.
    fn hook_exited(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
        self.late = true;
        if let Some(tail) = &self.to.tail {
            tail.complete();
        }
    }

    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
        if let Some(tail) = &self.to.tail {
            tail.complete();
        }
        if self.limiter.dropped > 0 {
            let LineSink { ref model, kind, stream, .. } = self.to;
            tracing::warn!(model, hook = %kind, stream, dropped = self.limiter.dropped, "hook output rate-limited: lines dropped");
        }
    }

    fn emit(&mut self) {
        // The tail keeps the hook's last lines, rate limit or not.
        if let Some(tail) = self.to.tail.as_ref().filter(|_| !self.late) {
            tail.push(String::from_utf8_lossy(&self.line).trim_end_matches('\r'));
        }
        if self.limiter.allow(Instant::now()) {
            let text = String::from_utf8_lossy(&self.line);
            let text = text.trim_end_matches('\r');
            let (model, hook, stream) = (self.to.model.as_str(), self.to.kind.as_str(), self.to.stream);
            if self.late {
                // Not the hook's: no `hook` field, no `hook_output` event.
                tracing::info!(model, started_by = hook, stream, line = text, "background output");
            } else {
                if self.to.kind == HookKind::Alive {
                    // A probe's output (curl's "connection refused") is
                    // its answer's detail, not news: debug only.
                    tracing::debug!(model, hook, stream, line = text, "hook output");
                } else {
                    tracing::info!(model, hook, stream, line = text, "hook output");
                }
                self.to.events.emit(
                    "hook_output",
                    || serde_json::json!({ "model": model, "hook": hook, "stream": stream, "line": text }),
                );
            }
        }
        self.line.clear();
    }
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
            backend: crate::backend::Backend::local(4242),
            wake: hook(wake),
            sleep: hook("true"),
            alive: hook("true"),
            idle_sleep: None,
            alive_interval: None,
            size: 1.0,
            pinned: false,
            weight: 1.0,
            max_wait: Duration::from_secs(120),
            stream_wait_feedback: None,
            env: Vec::new(),
            dir: std::path::PathBuf::from("."),
            aliases: Vec::new(),
            upstream_model: None,
            max_in_flight: None,
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
        assert!(run_wake("test \"$LLMUX_MODEL:$LLMUX_PORT:$LLMUX_UPSTREAM\" = m:4242:http://127.0.0.1:4242", 5000)
            .await
            .succeeded());
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

    /// A temp file's path, for a hook to write a marker to.
    fn marker() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("marker").display().to_string();
        (dir, path)
    }

    fn read(path: &str) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Waits (at most 5 s) for `cond`.
    async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    #[tokio::test]
    async fn a_hook_that_traps_term_ends_by_sigterm() {
        let (_dir, path) = marker();
        let run = run_wake(&format!("trap 'echo term > {path}; exit 0' TERM; sleep 30 & wait"), 300).await;
        assert!(matches!(run.outcome, Outcome::TimedOut(_)), "{:?}", run.outcome);
        assert_eq!(read(&path), "term\n", "the TERM trap did not run");
        // It ended well before the grace ran out: no SIGKILL was needed.
        assert!(run.duration < Duration::from_millis(300 + KILL_GRACE_MS), "{:?}", run.duration);
    }

    #[tokio::test]
    async fn a_hook_that_ignores_term_is_killed_after_the_grace() {
        let run = run_wake("trap '' TERM; sleep 30", 300).await;
        assert!(matches!(run.outcome, Outcome::TimedOut(_)), "{:?}", run.outcome);
        let grace_end = Duration::from_millis(300 + KILL_GRACE_MS);
        assert!(run.duration >= grace_end, "killed before the grace ran out: {:?}", run.duration);
        assert!(run.duration < grace_end + Duration::from_secs(2), "the wait was not bounded: {:?}", run.duration);
    }

    #[tokio::test]
    async fn the_whole_group_gets_sigterm() {
        let (_dir, path) = marker();
        let script =
            format!("(trap 'echo child > {path}; exit 0' TERM; sleep 30 & wait) & trap 'exit 0' TERM; sleep 30 & wait");
        let run = run_wake(&script, 300).await;
        assert!(matches!(run.outcome, Outcome::TimedOut(_)), "{:?}", run.outcome);
        // The child's trap has run by the time the hook is reported done.
        assert_eq!(read(&path), "child\n", "the child in the group got no SIGTERM");
    }

    #[tokio::test]
    async fn a_group_member_that_ignores_term_is_killed_after_the_grace() {
        let (_dir, path) = marker();
        // The hook itself leaves at SIGTERM; its child ignores it.
        let script = format!("(trap '' TERM; sleep 30; echo late > {path}) & trap 'exit 0' TERM; sleep 30 & wait");
        let run = run_wake(&script, 300).await;
        assert!(matches!(run.outcome, Outcome::TimedOut(_)), "{:?}", run.outcome);
        assert!(run.duration >= Duration::from_millis(300 + KILL_GRACE_MS), "{:?}", run.duration);
        let gone = eventually(|| {
            let out = std::process::Command::new("pgrep").args(["-f", &path]).output().expect("pgrep");
            out.stdout.is_empty()
        });
        assert!(gone.await, "the child that ignored SIGTERM survived");
    }

    /// Log lines written while `f` runs, as text.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock()).into_owned()
        }

        fn line_with(&self, needle: &str) -> Option<String> {
            self.text().lines().find(|l| l.contains(needle)).map(str::to_owned)
        }
    }

    #[tokio::test]
    async fn output_after_the_hook_exited_is_not_the_hooks() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let events = Events::default();
        let mut rx = events.subscribe();
        let dir = std::env::temp_dir();
        let model = model("echo early-line; (sleep 0.3; echo late-line) &", 5000);
        let run = run(&model, HookKind::Wake, &dir, &Shutdown::default(), Duration::from_secs(1), &events).await;
        assert!(run.succeeded(), "{:?}", run.outcome);
        assert!(eventually(|| log.line_with("late-line").is_some()).await, "no late line in {}", log.text());
        let early = log.line_with("early-line").unwrap_or_default();
        assert!(early.contains("hook output") && early.contains("hook=\"wake\""), "{early}");
        let late = log.line_with("late-line").unwrap_or_default();
        assert!(!late.contains("hook output") && !late.contains("hook="), "late line attributed to the hook: {late}");
        assert!(late.contains("background output") && late.contains("started_by=\"wake\""), "{late}");
        let mut hook_output = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            hook_output.push(String::from_utf8_lossy(&frame).into_owned());
        }
        assert!(hook_output.iter().any(|e| e.contains("early-line")), "{hook_output:?}");
        assert!(!hook_output.iter().any(|e| e.contains("late-line")), "{hook_output:?}");
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
