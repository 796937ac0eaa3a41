//! Resolving a backend's host name, off the request path.
//!
//! A model whose `url` names its host by name (`http://gpu-1:8000`, a
//! container's service name) has a [`Resolver`] in its upstream, new with
//! each incarnation. The name is looked up when the switch task publishes
//! the model ([`Resolver::refresh`], spawned then), and again after a
//! connection to the addresses found failed ([`Resolver::retry`]): a
//! container that came back with another address is found again. Never
//! per request: a request that opens a connection reads the addresses with
//! one `ArcSwap` load. Only when none are known (the first lookup has not
//! finished, or the last one failed or was forgotten) does it wait for a
//! lookup, and requests waiting together share one: a flag says one runs,
//! and a `Notify` wakes those waiting for it when it ends (on that cold
//! path only; no lock).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

/// The addresses one host name resolves to, looked up off the request path.
pub struct Resolver {
    name: Box<str>,
    port: u16,
    /// The last lookup's outcome.
    state: ArcSwap<Lookup>,
    /// A lookup is running: others wait for it instead of starting theirs.
    looking_up: AtomicBool,
    /// Raised when a lookup ends (or is abandoned).
    looked_up: Notify,
}

/// A lookup's outcome, numbered.
struct Lookup {
    /// Bumped by every lookup and every forget.
    generation: u64,
    known: Known,
}

enum Known {
    /// Not looked up yet, or forgotten after a failed connection.
    Nothing,
    /// The addresses found, in the resolver's order.
    Found(Box<[SocketAddr]>),
    /// Why the lookup failed.
    Failed(String),
}

/// Addresses a lookup found: what a connection tries, in order.
pub struct Addresses(Arc<Lookup>);

impl Addresses {
    /// The addresses, in the order to try them.
    pub fn as_slice(&self) -> &[SocketAddr] {
        match &self.0.known {
            Known::Found(addrs) => addrs,
            Known::Nothing | Known::Failed(_) => &[],
        }
    }
}

impl Resolver {
    /// A resolver for `name`, port `port`; nothing looked up yet.
    pub fn new(name: &str, port: u16) -> Resolver {
        Resolver {
            name: name.into(),
            port,
            state: ArcSwap::from_pointee(Lookup { generation: 0, known: Known::Nothing }),
            looking_up: AtomicBool::new(false),
            looked_up: Notify::new(),
        }
    }

    /// The addresses: the ones known, else those of a lookup made now (or
    /// of one that ended while this call waited for it); the error says
    /// why the name did not resolve.
    pub async fn addresses(&self) -> Result<Addresses, String> {
        let first = self.state.load().generation;
        loop {
            let ended = self.looked_up.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let now = self.state.load_full();
            match &now.known {
                Known::Found(_) => return Ok(Addresses(now)),
                // A lookup ended while this call waited for it: its outcome.
                Known::Failed(why) if now.generation != first => return Err(why.clone()),
                Known::Nothing | Known::Failed(_) => {}
            }
            if let Some(_running) = self.start_lookup() {
                return self.look_up(now.generation).await;
            }
            ended.await;
        }
    }

    /// A lookup to spawn (when the model is published): it looks the name
    /// up unless another lookup or a forget happened since this was called,
    /// or one is running.
    pub fn refresh(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let seen = self.state.load().generation;
        let this = Arc::clone(self);
        async move {
            let Some(_running) = this.start_lookup() else { return };
            if this.state.load().generation == seen {
                if let Err(why) = this.look_up(seen).await {
                    tracing::warn!(host = %this.name, "{why}");
                }
            }
        }
    }

    /// Marks a lookup as running, unless one is; the guard ends it (even
    /// if the lookup's future is dropped, at a connect timeout) and wakes
    /// those waiting for it.
    fn start_lookup(&self) -> Option<Running<'_>> {
        (!self.looking_up.swap(true, SeqCst)).then_some(Running(self))
    }

    /// A connection to `used` failed: forgets them (unless a newer lookup
    /// replaced them already) and looks the name up again in the
    /// background. `None`: forget whatever is known (a connect timed out).
    pub fn retry(self: &Arc<Self>, used: Option<&Addresses>) {
        let now = self.state.load_full();
        let current = match used {
            Some(used) => Arc::ptr_eq(&now, &used.0),
            None => matches!(now.known, Known::Found(_)),
        };
        if current {
            self.state.store(Arc::new(Lookup { generation: now.generation + 1, known: Known::Nothing }));
            tokio::spawn(self.refresh());
        }
    }

    /// Looks the name up and keeps the outcome (called holding [`Running`]).
    async fn look_up(&self, generation: u64) -> Result<Addresses, String> {
        let known = match tokio::net::lookup_host((&*self.name, self.port)).await {
            Ok(found) => {
                let addrs: Box<[SocketAddr]> = found.collect();
                if addrs.is_empty() {
                    Known::Failed(format!("cannot resolve the backend host `{}`: no address", self.name))
                } else {
                    tracing::debug!(host = %self.name, ?addrs, "resolved the backend host");
                    Known::Found(addrs)
                }
            }
            Err(e) => Known::Failed(format!("cannot resolve the backend host `{}`: {e}", self.name)),
        };
        let lookup = Arc::new(Lookup { generation: generation + 1, known });
        self.state.store(Arc::clone(&lookup));
        match &lookup.known {
            Known::Failed(why) => Err(why.clone()),
            Known::Found(_) | Known::Nothing => Ok(Addresses(lookup)),
        }
    }
}

/// A running lookup; ends it when dropped.
struct Running<'a>(&'a Resolver);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.looking_up.store(false, SeqCst);
        self.0.looked_up.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_resolves_and_is_kept_until_a_failure() {
        let r = Arc::new(Resolver::new("localhost", 8123));
        let first = r.addresses().await.expect("localhost resolves");
        assert!(!first.as_slice().is_empty());
        assert!(first.as_slice().iter().all(|a| a.ip().is_loopback() && a.port() == 8123), "{:?}", first.as_slice());
        // Kept: the same lookup again, not a new one.
        let again = r.addresses().await.expect("known");
        assert!(Arc::ptr_eq(&first.0, &again.0));
        // A failed connection forgets them; the next call looks up anew.
        r.retry(Some(&first));
        let fresh = r.addresses().await.expect("resolves again");
        assert!(!Arc::ptr_eq(&first.0, &fresh.0));
        assert!(fresh.0.generation > first.0.generation);
        // A failure reported against addresses already replaced changes nothing.
        r.retry(Some(&first));
        tokio::task::yield_now().await;
        assert!(Arc::ptr_eq(&r.state.load_full(), &fresh.0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_waiting_together_share_one_lookup() {
        let r = Arc::new(Resolver::new("localhost", 80));
        let refresh = tokio::spawn(r.refresh());
        let waiters: Vec<_> = (0..16)
            .map(|_| {
                let r = Arc::clone(&r);
                tokio::spawn(async move { r.addresses().await.map(|a| a.0.generation) })
            })
            .collect();
        for w in waiters {
            assert_eq!(w.await.expect("task").expect("resolves"), 1, "a second lookup ran");
        }
        refresh.await.expect("refresh");
        assert_eq!(r.state.load().generation, 1);
        assert!(!r.looking_up.load(SeqCst));
    }

    #[tokio::test]
    async fn an_unresolvable_name_says_so_and_is_tried_again() {
        // `.invalid` never resolves (RFC 2606).
        let r = Resolver::new("no-such-backend.invalid", 80);
        let why = r.addresses().await.err().expect("does not resolve");
        assert!(why.contains("cannot resolve the backend host `no-such-backend.invalid`"), "{why}");
        // A failed lookup is not kept as an answer: the next call tries again.
        let generation = r.state.load().generation;
        assert!(r.addresses().await.is_err());
        assert!(r.state.load().generation > generation);
    }
}
