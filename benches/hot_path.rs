//! The per-request routing step: snapshot load, in-flight guard in and
//! out. Against a `Mutex` baseline (what a lock-based router does), single
//! threaded and contended, and with allocations counted: the step must
//! make none.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use hyper::StatusCode;
use llmux::catalog::ModelSlot;
use llmux::proxy::{Upstream, UpstreamOptions};
use llmux::routing::{try_admit, Incarnation, Routing};

#[path = "support/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

fn routing() -> ArcSwap<Routing> {
    residents(1)
}

/// A routing snapshot with `n` resident models in slots 0..n (several
/// models resident within a capacity budget).
fn residents(n: usize) -> ArcSwap<Routing> {
    let incarnations = (0..n).map(|i| {
        let upstream = Upstream::new(9 + i as u16, UpstreamOptions::with_idle_timeout(Duration::from_secs(4)));
        Arc::new(Incarnation::new(i, Arc::new(ModelSlot::new(&format!("m{i}"))), upstream))
    });
    ArcSwap::from_pointee(Routing::with_residents(incarnations))
}

/// A snapshot whose one resident has `max_in_flight: limit`.
fn limited(limit: usize) -> ArcSwap<Routing> {
    let upstream = Upstream::new(9, UpstreamOptions::with_idle_timeout(Duration::from_secs(4)));
    let inc = Incarnation::new(0, Arc::new(ModelSlot::new("m0")), upstream).with_max_in_flight(limit);
    ArcSwap::from_pointee(Routing::with_active(Arc::new(inc)))
}

/// The routing step plus what a request counts in its model's metrics:
/// its arrival, its status and first-byte time, its duration.
fn admit_counted(r: &ArcSwap<Routing>) {
    let started = Instant::now();
    if let Some(guard) = try_admit(r, 0) {
        let metrics = &guard.incarnation().slot.metrics;
        metrics.record_head(StatusCode::OK, started.elapsed());
        metrics.duration.observe(started.elapsed());
        drop(black_box(guard));
    }
}

/// What a lock-based router does per request: lock, check, count; and
/// lock again to uncount.
#[allow(clippy::disallowed_types)]
struct MutexRouter(std::sync::Mutex<(Option<usize>, usize, bool)>);

#[allow(clippy::disallowed_types)]
impl MutexRouter {
    fn new() -> MutexRouter {
        MutexRouter(std::sync::Mutex::new((Some(0), 0, false)))
    }

    fn admit(&self, model: usize) -> bool {
        let Ok(mut s) = self.0.lock() else { return false };
        if s.0 == Some(model) && !s.2 {
            s.1 += 1;
            true
        } else {
            false
        }
    }

    fn release(&self) {
        if let Ok(mut s) = self.0.lock() {
            s.1 -= 1;
        }
    }
}

/// Runs `op` `iters` times split over `threads` threads; wall time of the
/// slowest thread, divided back per operation by criterion.
fn contended(threads: usize, iters: u64, op: impl Fn() + Sync) -> Duration {
    let barrier = Barrier::new(threads);
    let per_thread = iters.div_ceil(threads as u64);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..per_thread {
                        op();
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).max().unwrap_or_default()
    })
}

fn assert_no_allocations() {
    let r = routing();
    let _warm = try_admit(&r, 0);
    let (before, _) = counting::allocations();
    for _ in 0..100_000 {
        drop(black_box(try_admit(&r, 0)));
        drop(black_box(try_admit(&r, 1)));
        admit_counted(&r);
    }
    let (after, _) = counting::allocations();
    println!("hot_path: allocations in 300000 admissions (a third counted in metrics): {}", after - before);
    assert_eq!(after, before, "the hot path allocated");
    let eight = residents(8);
    let (before, _) = counting::allocations();
    for i in 0..100_000 {
        drop(black_box(try_admit(&eight, i % 8)));
    }
    let (after, _) = counting::allocations();
    println!("hot_path: allocations in 100000 admissions over 8 residents: {}", after - before);
    assert_eq!(after, before, "the hot path allocated with 8 residents");
    // With `max_in_flight: 2`: the first two are admitted, a third at once
    // is turned away (it would queue), each release frees a place.
    let two = limited(2);
    drop(try_admit(&two, 0));
    let (before, _) = counting::allocations();
    for _ in 0..100_000 {
        let first = black_box(try_admit(&two, 0));
        let second = black_box(try_admit(&two, 0));
        assert!(first.is_some() && second.is_some(), "the first two were not admitted");
        assert!(black_box(try_admit(&two, 0)).is_none(), "a third was admitted past max_in_flight");
        drop((first, second));
    }
    let (after, _) = counting::allocations();
    println!("hot_path: allocations in 300000 admissions with max_in_flight: 2 (a third refused): {}", after - before);
    assert_eq!(after, before, "the hot path allocated with max_in_flight");
}

fn hot_path(c: &mut Criterion) {
    assert_no_allocations();
    let r = routing();
    let m = MutexRouter::new();
    let mut group = c.benchmark_group("hot_path");
    group.bench_function("arcswap_admit_release/1_thread", |b| b.iter(|| drop(black_box(try_admit(&r, 0)))));
    group.bench_function("arcswap_admit_release_with_metrics/1_thread", |b| b.iter(|| admit_counted(&r)));
    // With a `max_in_flight` (never reached here): one more load and a
    // `notify_one` with nobody waiting at release.
    let two = limited(2);
    group.bench_function("arcswap_admit_release_max_in_flight/1_thread", |b| {
        b.iter(|| drop(black_box(try_admit(&two, 0))))
    });
    // The same admission with 8 residents, for the first and the last slot:
    // indexed by slot, the cost does not grow with the number of residents.
    let eight = residents(8);
    for slot in [0, 7] {
        group.bench_function(format!("arcswap_admit_release/8_residents_slot_{slot}"), |b| {
            b.iter(|| drop(black_box(try_admit(&eight, black_box(slot)))))
        });
    }
    group.bench_function("mutex_admit_release/1_thread", |b| {
        b.iter(|| {
            if m.admit(black_box(0)) {
                m.release();
            }
        })
    });
    for threads in [2, 4] {
        let admit = || drop(black_box(try_admit(&r, 0)));
        group.bench_function(format!("arcswap_admit_release/{threads}_threads"), |b| {
            b.iter_custom(|iters| contended(threads, iters, admit))
        });
        group.bench_function(format!("arcswap_admit_release_with_metrics/{threads}_threads"), |b| {
            b.iter_custom(|iters| contended(threads, iters, || admit_counted(&r)))
        });
        let mutex = || {
            if m.admit(black_box(0)) {
                m.release();
            }
        };
        group.bench_function(format!("mutex_admit_release/{threads}_threads"), |b| {
            b.iter_custom(|iters| contended(threads, iters, mutex))
        });
    }
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
