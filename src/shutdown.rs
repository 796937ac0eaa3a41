//! The shutdown signal: set once, awaited by queued requests, the switch
//! task, connections in protocol detection and running hooks; and
//! [`Latch`], the same kind of one-way signal for other moments (start-up
//! adoption done).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use tokio::sync::Notify;

/// The shutdown signal: a flag and a notification, set once.
#[derive(Default)]
pub struct Shutdown {
    started: AtomicBool,
    notify: Notify,
    /// Requests and hooks cut short by the shutdown.
    cut: AtomicUsize,
}

impl Shutdown {
    /// Starts the shutdown; wakes everything waiting for it.
    pub fn trigger(&self) {
        self.started.store(true, SeqCst);
        self.notify.notify_waiters();
    }

    /// True once shutdown has started.
    pub fn is_started(&self) -> bool {
        self.started.load(SeqCst)
    }

    /// Resolves once shutdown has started.
    pub async fn started(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_started() {
                return;
            }
            notified.await;
        }
    }

    /// Counts something cut short by the shutdown.
    pub fn record_cut(&self) {
        self.cut.fetch_add(1, SeqCst);
    }

    /// How many things were cut short.
    pub fn cut_count(&self) -> usize {
        self.cut.load(SeqCst)
    }
}

/// A one-way signal: set once, awaited by anyone.
#[derive(Default)]
pub struct Latch {
    set: AtomicBool,
    notify: Notify,
}

impl Latch {
    /// Sets it (again is a no-op); wakes everything waiting.
    pub fn set(&self) {
        if !self.set.swap(true, SeqCst) {
            self.notify.notify_waiters();
        }
    }

    /// True once set.
    pub fn is_set(&self) -> bool {
        self.set.load(SeqCst)
    }

    /// Resolves once set.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}
