//! llmux's own share of a switch, with `true` hooks: the time from the miss
//! to the first byte forwarded, minus each hook's spawn-to-reap time (sleep,
//! wake, and the alive check that confirms the wake).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};

#[path = "support/bodies.rs"]
mod bodies;
#[path = "support/inproc.rs"]
mod inproc;

/// One switch to `model`; returns (llmux's share end to end, miss to wake
/// spawn minus the sleep hook, wake exit to first byte minus the alive
/// hook that confirms the wake).
async fn one_switch(
    llmux: &inproc::InProc,
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
    body: Bytes,
) -> (Duration, Duration, Duration) {
    let sent = Instant::now();
    let head = inproc::post(sender, body).await;
    let first_byte = sent + head;
    let record = llmux.shared.last_switch.lock().clone().expect("a switch ran");
    let clock = llmux.shared.clock;
    let wake = record.wake.expect("wake ran");
    let wake_start = record.wake_started.and_then(|t| clock.instant(t)).expect("wake ran");
    let miss = clock.instant(record.miss).expect("a miss");
    let sleep = record.sleep.unwrap_or_default();
    let total = first_byte.saturating_duration_since(sent);
    let share = total.saturating_sub(sleep + wake + record.alive);
    let to_spawn = wake_start.saturating_duration_since(miss).saturating_sub(sleep);
    let after_wake = first_byte.saturating_duration_since(wake_start + wake).saturating_sub(record.alive);
    (share, to_spawn, after_wake)
}

fn switch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let a = inproc::Standin::start("a");
    let b = inproc::Standin::start("b");
    let llmux = inproc::InProc::start(&rt, &inproc::config(&[("a", a.port), ("b", b.port)], "true"));
    let bodies =
        [Bytes::from(bodies::chat_body("a", 1 << 10, false)), Bytes::from(bodies::chat_body("b", 1 << 10, false))];
    llmux.wait_active(0);
    let mut sender = rt.block_on(inproc::connect(llmux.addr));
    // `a` was adopted at start: every request below is a miss.
    let mut next = 1;

    let (mut shares, mut spawns, mut afters) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..101 {
        let (s, p, a) = rt.block_on(one_switch(&llmux, &mut sender, bodies[next].clone()));
        next = 1 - next;
        shares.push(s);
        spawns.push(p);
        afters.push(a);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "switch: llmux's share over 101 switches with `true` hooks, median {:?} (miss to wake spawn, less the sleep hook: {:?}; wake exit to first byte: {:?})",
        median(&mut shares),
        median(&mut spawns),
        median(&mut afters)
    );

    c.bench_function("switch/llmux_share", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(one_switch(&llmux, &mut sender, bodies[next].clone())).0;
                next = 1 - next;
            }
            total
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(10));
    targets = switch
}
criterion_main!(benches);
