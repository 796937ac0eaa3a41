//! systemd integration, by its plain protocols (no libsystemd): socket
//! activation (`sd_listen_fds`) and readiness notification (`sd_notify`).
//!
//! **Socket activation.** When `LISTEN_PID` is llmux's pid and
//! `LISTEN_FDS` is 1, the service manager passed one listening socket at
//! fd 3 ([`LISTEN_FDS_START`]); llmux serves it instead of binding
//! `host:port`. The socket belongs to the service manager and outlives
//! llmux, so connections that arrive while llmux restarts wait in its
//! backlog instead of being refused. Hooks never see the variables (they
//! are removed from every hook's environment, see [`CHILD_UNSET`]) nor the
//! socket (it is made close-on-exec).
//!
//! **Readiness.** With `NOTIFY_SOCKET` set (`Type=notify`), llmux sends
//! `READY=1` once it listens and start-up adoption is done (every model's
//! `alive` has answered), and `STOPPING=1` when shutdown starts: one unix
//! datagram each, to the path (or abstract name, `@...`) it names.
//!
//! Taking ownership of an inherited file descriptor is the one thing in
//! llmux that needs `unsafe` (`OwnedFd::from_raw_fd`: no safe API can vouch
//! that a number is an open descriptor nobody else owns). It is confined to
//! `adopt_fd3`, whose `SAFETY` comment states the contract that makes it
//! sound; the crate denies `unsafe_code` everywhere else.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::stat::{fstat, SFlag};

/// The first descriptor passed by socket activation (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The variables a hook's environment goes without: they describe llmux's
/// own socket activation and notification socket, not the hook's.
pub const CHILD_UNSET: [&str; 4] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"];

/// Set once fd 3 has been adopted: it is never adopted twice.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// The listening socket the service manager passed, if `LISTEN_FDS` and
/// `LISTEN_PID` say llmux was socket-activated; an error if they say so
/// but what was passed cannot be served.
pub fn inherited_listener() -> Result<Option<TcpListener>, String> {
    let Some(count) = std::env::var_os("LISTEN_FDS") else { return Ok(None) };
    let for_us = std::env::var("LISTEN_PID").ok().and_then(|p| p.trim().parse::<u32>().ok());
    if for_us != Some(std::process::id()) {
        // Meant for another process (an ancestor): as sd_listen_fds does.
        return Ok(None);
    }
    match count.to_str().and_then(|c| c.trim().parse::<u32>().ok()) {
        Some(0) => Ok(None),
        Some(1) => adopt_listener().map(Some),
        Some(n) => Err(format!("LISTEN_FDS={n}: llmux serves one socket (give its .socket unit one ListenStream=)")),
        None => Err(format!("LISTEN_FDS={count:?} is not a number")),
    }
}

/// Fd 3 as a listening TCP socket, close-on-exec and non-blocking.
fn adopt_listener() -> Result<TcpListener, String> {
    let stat = fstat(LISTEN_FDS_START).map_err(|e| format!("LISTEN_FDS=1 but fd 3 is not open: {e}"))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err("LISTEN_FDS=1 but fd 3 is not a socket".to_owned());
    }
    if ADOPTED.swap(true, SeqCst) {
        return Err("fd 3 was adopted already".to_owned());
    }
    let listener = TcpListener::from(adopt_fd3());
    // Hooks, and the backends they start, must not hold llmux's socket.
    nix::fcntl::fcntl(LISTEN_FDS_START, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("cannot make fd 3 close-on-exec: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("fd 3 is not a TCP socket: {e}"))?;
    if !getsockopt(&listener, sockopt::AcceptConn).unwrap_or(false) {
        return Err(format!("fd 3 ({addr}) is not listening"));
    }
    listener.set_nonblocking(true).map_err(|e| format!("cannot make fd 3 non-blocking: {e}"))?;
    Ok(listener)
}

/// Takes ownership of fd 3.
#[allow(unsafe_code)]
fn adopt_fd3() -> OwnedFd {
    // SAFETY: `OwnedFd::from_raw_fd` needs an open descriptor that nothing
    // else owns or will close. Only reached when LISTEN_PID is this
    // process's pid and LISTEN_FDS=1: by the sd_listen_fds protocol the
    // service manager opened fd 3 for this process before exec, so no code
    // in this process opened it or holds it (std and tokio open nothing
    // below the descriptors they were given, and a descriptor is never
    // reused while open). `adopt_listener` has just checked that it is
    // open and a socket, and `ADOPTED` makes this run at most once, so
    // there is exactly one owner, which closes it once.
    unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) }
}

/// The service manager's notification socket (`NOTIFY_SOCKET`).
pub struct Notifier {
    socket: UnixDatagram,
    addr: UnixAddr,
}

impl Notifier {
    /// The socket `NOTIFY_SOCKET` names, if it is set (a path, or `@name`
    /// for an abstract socket); `None` otherwise or if it cannot be used
    /// (logged).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let addr = match name.as_encoded_bytes() {
            [b'@', abstract_name @ ..] => {
                use std::os::linux::net::SocketAddrExt;
                UnixAddr::from_abstract_name(abstract_name)
            }
            _ => UnixAddr::from_pathname(&name),
        };
        let socket = UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s));
        match (socket, addr) {
            (Ok(socket), Ok(addr)) => Some(Notifier { socket, addr }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("NOTIFY_SOCKET={name:?} cannot be used: {e}");
                None
            }
        }
    }

    /// Sends `state` (e.g. `READY=1`); a failure is logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!("cannot tell the service manager {state:?}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier {
            socket: UnixDatagram::unbound().expect("socket"),
            addr: UnixAddr::from_pathname(&path).expect("addr"),
        };
        notifier.notify("READY=1");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
