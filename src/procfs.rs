//! The little of `/proc` llmux reads: a process's state, parent and
//! process group, its children, and its pid in llmux's own PID namespace.
//!
//! `/proc` shows pids as seen from the PID namespace it was mounted in.
//! In a container that is llmux's own; under `unshare --pid --fork`
//! without `--mount-proc` it is the parent namespace's, where llmux's pid
//! is not the one `getpid()` returns. [`View`] tells the two apart and
//! translates a `/proc` pid into a pid llmux can pass to `waitpid` (from
//! the `NSpid` line of `/proc/PID/status`).

use std::fs;

/// One line of `/proc/PID/stat`, the fields llmux reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z`, ...
    pub state: char,
    /// Parent pid, in the `/proc` view.
    pub ppid: i32,
    /// Process group id, in the `/proc` view.
    pub pgrp: i32,
}

impl Stat {
    /// Parses `/proc/PID/stat` text: `pid (comm) state ppid pgrp ...`,
    /// where `comm` may hold spaces and parentheses.
    pub fn parse(text: &str) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        let mut fields = rest.split_ascii_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some(Stat { state, ppid, pgrp })
    }

    /// True for a process that has exited and waits to be reaped.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Reads `/proc/PID/stat`; `None` if the process is gone.
pub fn stat(pid: i32) -> Option<Stat> {
    Stat::parse(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every pid `/proc` lists.
pub fn pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// How `/proc` relates to llmux's PID namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// llmux's own pid as `/proc` shows it.
    pub self_pid: i32,
    /// How many PID namespaces deep llmux is below `/proc`'s (1: the same).
    depth: usize,
}

impl View {
    /// Reads `/proc/self`; `None` if `/proc` is missing or belongs to a
    /// namespace llmux is not in.
    pub fn current() -> Option<View> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let self_pid = field(&status, "Pid:")?.split_ascii_whitespace().next()?.parse().ok()?;
        let depth = field(&status, "NSpid:").map_or(1, |l| l.split_ascii_whitespace().count());
        Some(View { self_pid, depth })
    }

    /// True if `/proc` pids are llmux's pids.
    pub fn is_own(&self) -> bool {
        self.depth == 1
    }

    /// The pid in llmux's namespace of the process `/proc` calls `pid`.
    pub fn own_pid(&self, pid: i32) -> Option<i32> {
        if self.is_own() {
            return Some(pid);
        }
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        field(&status, "NSpid:")?.split_ascii_whitespace().nth(self.depth - 1)?.parse().ok()
    }

    /// llmux's children as `/proc` pids, from `/proc/self/task/*/children`
    /// (an orphan is adopted by any of llmux's threads), or by scanning
    /// every process's parent where the kernel lacks those files.
    pub fn children(&self) -> Vec<i32> {
        let mut found = false;
        let mut children = Vec::new();
        for task in fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                found = true;
                children.extend(text.split_ascii_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
        if !found {
            children = pids().into_iter().filter(|&p| stat(p).is_some_and(|s| s.ppid == self.self_pid)).collect();
        }
        children
    }
}

/// The rest of the line of `text` that starts with `name`.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(name))
}

/// Whether a process of group `pgid` (an llmux pid) is still alive: not
/// exited, or exited but not a zombie yet. `None` when `/proc` cannot tell
/// (missing, or another namespace's view).
pub fn group_has_live_members(pgid: i32) -> Option<bool> {
    if !View::current()?.is_own() {
        return None;
    }
    Some(pids().into_iter().filter_map(stat).any(|s| s.pgrp == pgid && !s.is_zombie() && s.state != 'X'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_an_awkward_name() {
        let s = Stat::parse("42 (a) b (c) Z 7 42 1 0 -1").expect("parses");
        assert_eq!(s, Stat { state: 'Z', ppid: 7, pgrp: 42 });
        assert!(s.is_zombie());
        assert_eq!(Stat::parse("42 (x"), None);
    }

    #[test]
    fn reads_this_process() {
        let view = View::current().expect("/proc");
        let me = i32::try_from(std::process::id()).expect("pid");
        if view.is_own() {
            assert_eq!(view.self_pid, me);
            assert_eq!(view.own_pid(me), Some(me));
        }
        let s = stat(view.self_pid).expect("own stat");
        assert_ne!(s.state, 'Z');
    }

    #[test]
    fn lists_a_child() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let view = View::current().expect("/proc");
        let listed = view.children().into_iter().filter_map(|p| view.own_pid(p)).any(|p| p == pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(listed, "child {pid} not listed");
    }
}
