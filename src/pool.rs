//! A bounded, lock-free LIFO pool: the idle backend connections of an
//! [`crate::proxy::Upstream`].
//!
//! The most recently returned item is handed out first: an idle backend
//! connection used a moment ago is the one least likely to have been
//! closed by the backend (llama-server and uvicorn close idle ones after
//! 5 s), and the older ones stay at the bottom until the idle reaper
//! closes them. (The FIFO queue this replaces handed out the oldest.)
//!
//! # Design, without `unsafe`
//!
//! A lock-free stack of values needs raw pointers (a Treiber stack of
//! boxed nodes, and memory reclamation), which `#![deny(unsafe_code)]`
//! rules out. So the pool is a Treiber stack of *slot indices* instead:
//!
//! - `cells`: one single-item cell per slot, a `crossbeam` `ArrayQueue`
//!   of capacity 1 (a lock-free way to move a value in and out without
//!   `unsafe`); all allocated once, when the pool is made.
//! - two stacks of slot indices, `full` (slots holding an item, the most
//!   recently pushed on top) and `free` (empty slots). Each stack's head
//!   is one `AtomicU64` packing the top index with a tag bumped by every
//!   change, so a compare-and-swap never succeeds on a head that was
//!   popped and pushed back in between (ABA); `next` links each slot to
//!   the one below it on whichever stack holds it (a slot is on at most
//!   one).
//!
//! [`LifoPool::push`] takes a slot off `free`, puts the item in its cell
//! and pushes the slot onto `full`; [`LifoPool::pop`] does the reverse. A
//! slot taken off a stack belongs to the taker alone until it is pushed
//! again, so its cell is never contended. Each is three compare-and-swaps
//! (retried only when another thread changed the same head), no lock and
//! no allocation. [`LifoPool::retain`] (the idle reaper, a cold path) pops
//! everything and pushes back what it keeps, oldest first.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Release};

use crossbeam::queue::ArrayQueue;

/// No slot: the bottom of a stack.
const NIL: u32 = u32::MAX;

/// A bounded pool handing out the most recently returned item first.
pub struct LifoPool<T> {
    /// One single-item cell per slot.
    cells: Box<[ArrayQueue<T>]>,
    /// The slot below each slot on the stack that holds it.
    next: Box<[AtomicU32]>,
    /// Slots holding an item, most recently pushed on top.
    full: IndexStack,
    /// Slots holding nothing.
    free: IndexStack,
}

impl<T> LifoPool<T> {
    /// An empty pool of `capacity` slots (at most `u32::MAX - 1`).
    pub fn new(capacity: usize) -> LifoPool<T> {
        let capacity = u32::try_from(capacity).unwrap_or(NIL).min(NIL - 1);
        let pool = LifoPool {
            cells: (0..capacity).map(|_| ArrayQueue::new(1)).collect(),
            next: (0..capacity).map(|_| AtomicU32::new(NIL)).collect(),
            full: IndexStack::new(),
            free: IndexStack::new(),
        };
        for slot in (0..capacity).rev() {
            pool.free.push(slot, &pool.next);
        }
        pool
    }

    /// Returns `item` to the pool, on top; gives it back if the pool is full.
    #[inline]
    pub fn push(&self, item: T) -> Result<(), T> {
        let Some(slot) = self.free.pop(&self.next) else { return Err(item) };
        match self.cells[slot as usize].push(item) {
            Ok(()) => {
                self.full.push(slot, &self.next);
                Ok(())
            }
            // Cannot happen (a free slot's cell is empty); keep the slot usable.
            Err(item) => {
                self.free.push(slot, &self.next);
                Err(item)
            }
        }
    }

    /// The most recently returned item, if any.
    #[inline]
    pub fn pop(&self) -> Option<T> {
        loop {
            let slot = self.full.pop(&self.next)?;
            let item = self.cells[slot as usize].pop();
            self.free.push(slot, &self.next);
            // An empty cell cannot happen (a full slot's cell holds its
            // item); if it did, the next slot is tried.
            if item.is_some() {
                return item;
            }
        }
    }

    /// Keeps only the items `keep` accepts, in their order; the others are
    /// dropped. Items returned meanwhile by other threads end up below the
    /// kept ones. Allocates: for periodic cleanup, not the hot path.
    pub fn retain(&self, mut keep: impl FnMut(&T) -> bool) {
        let mut kept = Vec::new();
        while let Some(item) = self.pop() {
            if keep(&item) {
                kept.push(item);
            }
        }
        // Oldest first, so the most recent is on top again; a pool filled
        // meanwhile drops the rest.
        for item in kept.into_iter().rev() {
            let _ = self.push(item);
        }
    }
}

/// A Treiber stack of slot indices; the links live in the pool's `next`.
struct IndexStack {
    /// The top slot (low 32 bits, `NIL` when empty) and a tag bumped by
    /// every change (high 32 bits).
    head: AtomicU64,
}

impl IndexStack {
    fn new() -> IndexStack {
        IndexStack { head: AtomicU64::new(pack(NIL, 0)) }
    }

    #[inline]
    fn push(&self, slot: u32, next: &[AtomicU32]) {
        let mut head = self.head.load(Acquire);
        loop {
            next[slot as usize].store(top(head), Release);
            match self.head.compare_exchange_weak(head, pack(slot, tag(head).wrapping_add(1)), AcqRel, Acquire) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    #[inline]
    fn pop(&self, next: &[AtomicU32]) -> Option<u32> {
        let mut head = self.head.load(Acquire);
        loop {
            let slot = top(head);
            if slot == NIL {
                return None;
            }
            // Possibly stale if `slot` was taken meanwhile; the tag then
            // fails the exchange.
            let below = next[slot as usize].load(Acquire);
            match self.head.compare_exchange_weak(head, pack(below, tag(head).wrapping_add(1)), AcqRel, Acquire) {
                Ok(_) => return Some(slot),
                Err(now) => head = now,
            }
        }
    }
}

fn pack(slot: u32, tag: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(slot)
}

fn top(head: u64) -> u32 {
    head as u32
}

fn tag(head: u64) -> u32 {
    (head >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    #[test]
    fn the_most_recently_returned_item_comes_out_first() {
        let pool = LifoPool::new(4);
        assert_eq!(pool.pop(), None);
        for i in 1..=3 {
            assert!(pool.push(i).is_ok());
        }
        assert_eq!(pool.pop(), Some(3));
        assert!(pool.push(4).is_ok());
        let order: Vec<i32> = std::iter::from_fn(|| pool.pop()).collect();
        assert_eq!(order, [4, 2, 1]);
    }

    #[test]
    fn a_full_pool_gives_the_item_back() {
        let pool = LifoPool::new(2);
        assert!(pool.push(1).is_ok() && pool.push(2).is_ok());
        assert_eq!(pool.push(3), Err(3));
        assert_eq!(pool.pop(), Some(2));
        assert!(pool.push(3).is_ok());
        assert_eq!((pool.pop(), pool.pop(), pool.pop()), (Some(3), Some(1), None));
        let none: LifoPool<u8> = LifoPool::new(0);
        assert_eq!(none.push(1), Err(1));
    }

    /// Counts its drops.
    struct Tracked(u32, Arc<AtomicUsize>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.1.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn retain_drops_the_rejected_and_keeps_the_order() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let pool = LifoPool::new(8);
        for i in 1..=5 {
            assert!(pool.push(Tracked(i, Arc::clone(&dropped))).is_ok());
        }
        pool.retain(|t| t.0 % 2 == 1);
        assert_eq!(dropped.load(SeqCst), 2);
        let order: Vec<u32> = std::iter::from_fn(|| pool.pop()).map(|t| t.0).collect();
        assert_eq!(order, [5, 3, 1]);
    }

    #[test]
    fn concurrent_pushes_and_pops_lose_and_duplicate_nothing() {
        let pool = LifoPool::new(8);
        let held: Vec<Vec<u32>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4u32)
                .map(|t| {
                    let pool = &pool;
                    s.spawn(move || {
                        let mut mine: Vec<u32> = (0..4).map(|i| t * 4 + i).collect();
                        for round in 0..50_000u32 {
                            if round % 3 != 2 {
                                if let Some(item) = mine.pop() {
                                    if let Err(item) = pool.push(item) {
                                        mine.push(item);
                                    }
                                }
                            } else if let Some(item) = pool.pop() {
                                mine.push(item);
                            }
                        }
                        mine
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or_default()).collect()
        });
        let mut all: Vec<u32> = held.into_iter().flatten().chain(std::iter::from_fn(|| pool.pop())).collect();
        all.sort_unstable();
        assert_eq!(all, (0..16).collect::<Vec<u32>>());
        // Every slot is free again.
        for i in 0..8 {
            assert!(pool.push(i).is_ok());
        }
        assert_eq!(pool.push(8), Err(8));
    }
}
