//! Reaping orphans when llmux is PID 1 or a child subreaper.
//!
//! A hook that starts its backend with `&` and exits leaves the backend an
//! orphan. The kernel gives orphans to the nearest child subreaper, or to
//! PID 1 of their PID namespace. In a container started without `--init`,
//! that is llmux; with `--subreaper` (`PR_SET_CHILD_SUBREAPER`) it is llmux
//! too. Whoever adopts an orphan must reap it when it exits, or it stays a
//! zombie: the process table fills up, and a sleep hook that waits with
//! `while kill -0 $PID` for its backend to exit waits forever.
//!
//! [`start`] runs a task only in those two cases. On each SIGCHLD, and
//! every [`PERIOD`] in case signals were merged or missed, it lists llmux's
//! children that are zombies (`/proc/self/task/*/children`, see
//! [`crate::procfs`]) and reaps each with `waitpid(pid, WNOHANG)`, never
//! `waitpid(-1)`: tokio reaps the hooks themselves by pid, and taking a
//! hook's exit status would make its run fail. So every hook pid is in a
//! registry from its spawn until its wait completes ([`spawn_hook`],
//! [`HookPid`]), and the reaper skips registered pids. Spawning and
//! registering happen under the registry's lock, and the reaper checks the
//! registry and calls `waitpid` under the same lock: a hook that exits
//! before its spawn call has even returned is still never taken.

use std::io;
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, Pid};
use parking_lot::Mutex;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::procfs::{self, View};

/// How often the reaper looks for zombies without a SIGCHLD.
pub const PERIOD: Duration = Duration::from_secs(5);

/// Pids of hooks whose wait has not completed: not the reaper's to take.
static HOOK_PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// A hook's pid, registered until this is dropped (after tokio's wait for
/// the hook completed, or when its run is abandoned).
#[derive(Debug)]
pub struct HookPid(i32);

impl Drop for HookPid {
    fn drop(&mut self) {
        let mut pids = HOOK_PIDS.lock();
        if let Some(i) = pids.iter().position(|p| *p == self.0) {
            pids.swap_remove(i);
        }
    }
}

/// Spawns `cmd` (a hook) and registers its pid before the lock the
/// reaper takes is released.
pub fn spawn_hook(cmd: &mut Command) -> io::Result<(Child, Option<HookPid>)> {
    let mut pids = HOOK_PIDS.lock();
    let child = cmd.spawn()?;
    let registered = child.id().and_then(|p| i32::try_from(p).ok()).map(|pid| {
        pids.push(pid);
        HookPid(pid)
    });
    Ok((child, registered))
}

/// Why llmux adopts orphans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// PID 1 of its PID namespace (a container without an init).
    Pid1,
    /// A child subreaper (`PR_SET_CHILD_SUBREAPER`, `--subreaper`).
    Subreaper,
}

impl Role {
    /// llmux's role, if orphans are given to it.
    pub fn current() -> Option<Role> {
        if getpid().as_raw() == 1 {
            Some(Role::Pid1)
        } else if nix::sys::prctl::get_child_subreaper().unwrap_or(false) {
            Some(Role::Subreaper)
        } else {
            None
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Role::Pid1 => "PID 1",
            Role::Subreaper => "a child subreaper",
        }
    }
}

/// Starts the reaper task if llmux is PID 1 or a child subreaper; call it
/// inside the runtime. Returns its handle, or `None` when orphans go to
/// someone else.
pub fn start() -> Option<JoinHandle<()>> {
    let role = Role::current()?;
    let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child());
    if let Err(e) = &sigchld {
        tracing::warn!("cannot listen for SIGCHLD ({e}); reaping orphans every {}s only", PERIOD.as_secs());
    }
    tracing::info!("llmux is {}: reaping orphaned processes", role.as_str());
    Some(tokio::spawn(run(sigchld.ok())))
}

async fn run(mut sigchld: Option<tokio::signal::unix::Signal>) {
    loop {
        reap_orphans();
        match sigchld.as_mut() {
            Some(signal) => {
                let _ = tokio::time::timeout(PERIOD, signal.recv()).await;
            }
            None => tokio::time::sleep(PERIOD).await,
        }
    }
}

/// Reaps llmux's zombie children that are not hooks; returns how many.
pub fn reap_orphans() -> usize {
    reap_unless_hooks(zombie_children())
}

/// llmux's children that are zombies, as llmux's pids.
fn zombie_children() -> Vec<i32> {
    let Some(view) = View::current() else { return Vec::new() };
    view.children()
        .into_iter()
        .filter(|&p| procfs::stat(p).is_some_and(|s| s.is_zombie()))
        .filter_map(|p| view.own_pid(p))
        .collect()
}

/// Reaps those of `zombies` that are not registered hooks.
fn reap_unless_hooks(zombies: Vec<i32>) -> usize {
    if zombies.is_empty() {
        return 0;
    }
    let hooks = HOOK_PIDS.lock();
    zombies.into_iter().filter(|pid| !hooks.contains(pid)).filter(|&pid| reap(pid)).count()
}

/// `waitpid(pid, WNOHANG)`; true if it reaped something.
fn reap(pid: i32) -> bool {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) | Err(_) => false,
        Ok(status) => {
            tracing::debug!(pid, ?status, "reaped an orphaned process");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // These tests reap only the pids they name: a full pass would take
    // other tests' children.

    /// Waits (at most 5 s) until `pid` is a zombie.
    async fn until_zombie(pid: i32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !procfs::stat(pid).is_some_and(|s| s.is_zombie()) {
            assert!(std::time::Instant::now() < deadline, "{pid} never became a zombie");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_registered_hook_is_left_to_tokio_and_deregistered_when_dropped() {
        let (mut child, registered) = spawn_hook(Command::new("true").kill_on_drop(true)).expect("spawn");
        let pid = registered.as_ref().map(|r| r.0).expect("a pid");
        assert!(HOOK_PIDS.lock().contains(&pid));
        until_zombie(pid).await;
        assert!(zombie_children().contains(&pid), "the zombie is not listed");
        assert_eq!(reap_unless_hooks(vec![pid]), 0, "a hook's exit status was taken");
        let status = child.wait().await.expect("tokio still reaps its hook");
        assert!(status.success());
        drop(registered);
        assert!(!HOOK_PIDS.lock().contains(&pid));
    }

    #[tokio::test]
    async fn an_unregistered_zombie_child_is_reaped() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = i32::try_from(child.id()).expect("pid");
        until_zombie(pid).await;
        assert_eq!(reap_unless_hooks(vec![pid]), 1);
        assert!(procfs::stat(pid).is_none(), "still in the process table");
        // Its exit status is gone: the reaper took it.
        assert!(child.wait().is_err(), "the zombie was not reaped");
    }
}
