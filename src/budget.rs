//! The global bound on request-body bytes held in memory
//! (`limits.max_body_bytes_in_memory`).
//!
//! `max_body_bytes` bounds one body; without this, bodies being read or
//! forwarded could reach `max_body_bytes` × connections × HTTP/2 streams.
//! [`BodyBudget`] is one atomic counter of the bytes reserved; a request
//! holds a [`Reservation`] (an RAII guard) for its body's bytes.
//!
//! # Who reserves, and when it is released
//!
//! - With `Content-Length`, the handler reserves the whole length before
//!   reading a byte ([`crate::service`]), so a request past the bound is
//!   refused at once (503 `server_overloaded`) without reading its body.
//! - A body without one (chunked, or HTTP/2 without the header) grows its
//!   reservation as its chunks arrive ([`crate::body::read_request_body`]).
//! - The guard lives in the request handler's future for as long as llmux
//!   holds the body's bytes there: while it is read and scanned, while it
//!   waits in a model's queue (where it also counts against
//!   `max_queued_body_bytes`), while the [`crate::body::RequestBody`]
//!   clone kept for a resend after a refused connection lives, and while
//!   the outgoing copy is written to the backend. It is released when the
//!   backend's response head has arrived (the handler returns the
//!   response; by then the backend has read the body and hyper dropped the
//!   outgoing copy), or when the request fails, or when the client goes
//!   away (the handler's future is dropped).
//!
//! Not counted: hyper's per-connection read buffer (bounded by
//! `limits.max_header_bytes` and `limits.max_connections`) and HTTP/2
//! flow-control windows; and the unsent rest of a body whose backend
//! answered before reading all of it, which stays with that backend
//! connection until its response ends.
//!
//! # Cost
//!
//! The hot path stays lock-free and allocation-free: a request with a
//! `Content-Length` body does one compare-and-swap to reserve (it retries
//! only when another request changed the counter in between) and one
//! `fetch_sub` when the guard drops; a request without a body does
//! nothing. A chunked body does one compare-and-swap per chunk.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Request-body bytes held in memory, process-wide, against a bound given
/// at each reservation (the config in force, so a reload applies at once).
#[derive(Debug, Default)]
pub struct BodyBudget {
    /// Padded: written by every request with a body, on every core.
    held: crossbeam::utils::CachePadded<AtomicU64>,
}

impl BodyBudget {
    /// Bytes reserved now (the `llmux_body_bytes_in_memory` gauge); never
    /// more than the bound in force when they were reserved.
    pub fn held(&self) -> u64 {
        self.held.load(Relaxed)
    }

    /// An empty reservation, grown with [`Reservation::grow`].
    pub fn empty(&self) -> Reservation<'_> {
        Reservation { budget: self, bytes: 0 }
    }

    /// Reserves `bytes` if that keeps the total within `bound`; `None`
    /// (and nothing reserved) otherwise.
    #[inline]
    pub fn reserve(&self, bytes: u64, bound: u64) -> Option<Reservation<'_>> {
        let mut reservation = self.empty();
        reservation.grow(bytes, bound).then_some(reservation)
    }

    /// Adds `bytes` to the total unless that would pass `bound`.
    #[inline]
    fn try_add(&self, bytes: u64, bound: u64) -> bool {
        // A compare-and-swap, not a `fetch_add` and an undo: the counter
        // never passes the bound, even for a moment, so a concurrent
        // request is never refused for bytes that were never held.
        self.held.fetch_update(Relaxed, Relaxed, |held| held.checked_add(bytes).filter(|total| *total <= bound)).is_ok()
    }
}

/// Bytes of one request body reserved in a [`BodyBudget`]; released when
/// dropped.
#[derive(Debug)]
#[must_use = "the bytes are released when the reservation is dropped"]
pub struct Reservation<'a> {
    budget: &'a BodyBudget,
    bytes: u64,
}

impl Reservation<'_> {
    /// Reserves `bytes` more if the total stays within `bound`; false (and
    /// nothing more reserved) otherwise.
    #[inline]
    pub fn grow(&mut self, bytes: u64, bound: u64) -> bool {
        if bytes == 0 {
            return true;
        }
        let ok = self.budget.try_add(bytes, bound);
        if ok {
            self.bytes += bytes;
        }
        ok
    }

    /// The bytes this reservation holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Reservation<'_> {
    /// The same bytes, held by a reservation that owns `holder` (an `Arc`
    /// of the state that holds this budget) instead of borrowing it, for a
    /// body that outlives the request handler (a streaming request given
    /// feedback while it waits, `policy.stream_wait_feedback`). Nothing is
    /// released or reserved in between.
    pub fn into_owned<H: Budgeted>(mut self, holder: H) -> OwnedReservation<H> {
        debug_assert!(std::ptr::eq(holder.budget(), self.budget), "the holder must hold this reservation's budget");
        let bytes = std::mem::take(&mut self.bytes);
        OwnedReservation { holder, bytes }
    }
}

/// What holds a [`BodyBudget`] (the shared state, through an `Arc`).
pub trait Budgeted {
    /// The budget.
    fn budget(&self) -> &BodyBudget;
}

/// A [`Reservation`] that owns what holds its budget; released when
/// dropped.
#[must_use = "the bytes are released when the reservation is dropped"]
pub struct OwnedReservation<H: Budgeted> {
    holder: H,
    bytes: u64,
}

impl<H: Budgeted> Drop for OwnedReservation<H> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.holder.budget().held.fetch_sub(self.bytes, Relaxed);
        }
    }
}

impl Drop for Reservation<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.held.fetch_sub(self.bytes, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_released_on_drop() {
        let budget = BodyBudget::default();
        let a = budget.reserve(600, 1000).expect("fits");
        assert_eq!(budget.held(), 600);
        assert!(budget.reserve(401, 1000).is_none(), "600 + 401 > 1000");
        assert_eq!(budget.held(), 600, "a refused reservation holds nothing");
        let b = budget.reserve(400, 1000).expect("600 + 400 fits exactly");
        assert_eq!((budget.held(), b.bytes()), (1000, 400));
        drop(a);
        assert_eq!(budget.held(), 400);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_reservation_grows_chunk_by_chunk_until_the_bound() {
        let budget = BodyBudget::default();
        let mut r = budget.empty();
        assert!(r.grow(0, 0), "nothing always fits");
        for _ in 0..3 {
            assert!(r.grow(300, 1000));
        }
        assert!(!r.grow(101, 1000), "900 + 101 > 1000");
        assert_eq!((budget.held(), r.bytes()), (900, 900));
        // A lower bound (a reload) refuses more without touching what is held.
        assert!(!r.grow(1, 500));
        drop(r);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn an_owned_reservation_keeps_the_bytes_until_it_drops() {
        struct Holder(std::sync::Arc<BodyBudget>);
        impl Budgeted for Holder {
            fn budget(&self) -> &BodyBudget {
                &self.0
            }
        }
        let budget = std::sync::Arc::new(BodyBudget::default());
        let owned = budget.reserve(300, 1000).expect("fits").into_owned(Holder(std::sync::Arc::clone(&budget)));
        assert_eq!(budget.held(), 300, "moved, not released");
        assert!(budget.reserve(701, 1000).is_none());
        drop(owned);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn an_overflowing_reservation_is_refused() {
        let budget = BodyBudget::default();
        let _a = budget.reserve(10, u64::MAX).expect("fits");
        assert!(budget.reserve(u64::MAX, u64::MAX).is_none());
        assert_eq!(budget.held(), 10);
    }

    #[test]
    fn concurrent_reservations_never_pass_the_bound_and_all_return() {
        let budget = BodyBudget::default();
        let most = AtomicU64::new(0);
        let granted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..20_000u64 {
                        let bytes = 1 + i % 7;
                        if let Some(r) = budget.reserve(bytes, 10) {
                            granted.fetch_add(1, Relaxed);
                            most.fetch_max(budget.held(), Relaxed);
                            drop(r);
                        }
                    }
                });
            }
        });
        assert!(most.load(Relaxed) <= 10, "held {} > 10", most.load(Relaxed));
        assert!(granted.load(Relaxed) > 0);
        assert_eq!(budget.held(), 0);
    }
}
