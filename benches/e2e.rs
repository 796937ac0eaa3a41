//! A request through in-process llmux against the same request straight to
//! the stand-in backend: latency ratio, and allocations per proxied request
//! (the process allocator is wrapped in a counter; the client's own
//! allocations cancel out in the difference).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use hyper::header::{HeaderMap, HeaderValue};

#[path = "support/bodies.rs"]
mod bodies;
#[path = "support/counting.rs"]
mod counting;
#[path = "support/inproc.rs"]
mod inproc;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Allocations per request over `n` requests on one connection.
fn allocations_per_request(rt: &tokio::runtime::Runtime, addr: std::net::SocketAddr, body: &Bytes, n: u64) -> f64 {
    rt.block_on(async {
        let mut sender = inproc::connect(addr).await;
        for _ in 0..200 {
            inproc::post(&mut sender, body.clone()).await;
        }
        let (before, _) = counting::allocations();
        for _ in 0..n {
            inproc::post(&mut sender, body.clone()).await;
        }
        let (after, _) = counting::allocations();
        (after - before) as f64 / n as f64
    })
}

/// Allocations made by llmux's own per-request steps (catalog lookup,
/// scan, admission, header preparation, metrics), outside hyper.
fn own_allocations(shared: &llmux::state::Shared, body: &[u8]) -> f64 {
    let n = 10_000;
    let mut maps: Vec<HeaderMap> = (0..n)
        .map(|_| {
            let mut h = HeaderMap::with_capacity(16);
            h.insert("content-type", HeaderValue::from_static("application/json"));
            h.insert("content-length", HeaderValue::from_static("1024"));
            h.insert("host", HeaderValue::from_static("localhost:3000"));
            h.insert("user-agent", HeaderValue::from_static("OpenAI/Python 1.0"));
            h
        })
        .collect();
    let ip = HeaderValue::from_static("127.0.0.1");
    let id = HeaderValue::from_static("llmux-0000000000000001");
    let _ = llmux::model::with_model(body, |m| shared.catalog().lookup(m));
    let (before, _) = counting::allocations();
    for h in &mut maps {
        let started = std::time::Instant::now();
        let catalog = shared.catalog();
        let model = llmux::model::with_model(body, |m| catalog.lookup(m)).ok().flatten().expect("model");
        let guard = llmux::routing::try_admit(&shared.routing, model).expect("admitted");
        llmux::proxy::prepare_request_headers(h, &ip, &id);
        let metrics = &guard.incarnation().slot.metrics;
        metrics.record_head(hyper::StatusCode::OK, started.elapsed());
        metrics.duration.observe(started.elapsed());
        drop(guard);
    }
    let (after, _) = counting::allocations();
    (after - before) as f64 / n as f64
}

fn e2e(c: &mut Criterion) {
    let rt = runtime();
    let standin = inproc::Standin::start("m");
    let llmux = inproc::InProc::start(&rt, &inproc::config(&[("m", standin.port)], "true"));
    llmux.wait_active(0);
    let direct: std::net::SocketAddr = format!("127.0.0.1:{}", standin.port).parse().expect("addr");
    let body = Bytes::from(bodies::chat_body("m", 1 << 10, false));

    let via = allocations_per_request(&rt, llmux.addr, &body, 2000);
    let straight = allocations_per_request(&rt, direct, &body, 2000);
    let own = own_allocations(&llmux.shared, &body);
    println!("e2e: allocations per 1 KB request: through llmux {via:.1}, direct {straight:.1}, llmux's share {:.1} (its own steps: {own:.2}, the rest is hyper's server and client)", via - straight);

    let ratio = latency_ratio(&rt, llmux.addr, direct, &body);
    println!("e2e: median latency through llmux / direct = {ratio:.2}");

    let mut group = c.benchmark_group("e2e_1KB");
    for (name, addr) in [("direct", direct), ("through_llmux", llmux.addr)] {
        let mut sender = rt.block_on(inproc::connect(addr));
        group.bench_function(name, |b| b.iter(|| rt.block_on(inproc::post(&mut sender, body.clone()))));
    }
    group.finish();
}

/// Interleaved runs of sequential requests; ratio of the medians.
fn latency_ratio(
    rt: &tokio::runtime::Runtime,
    via: std::net::SocketAddr,
    direct: std::net::SocketAddr,
    body: &Bytes,
) -> f64 {
    rt.block_on(async {
        let mut a = inproc::connect(via).await;
        let mut b = inproc::connect(direct).await;
        let (mut through, mut straight) = (Vec::new(), Vec::new());
        for _ in 0..5000 {
            let t = Instant::now();
            inproc::post(&mut a, body.clone()).await;
            through.push(t.elapsed());
            let t = Instant::now();
            inproc::post(&mut b, body.clone()).await;
            straight.push(t.elapsed());
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        median(&mut through).as_secs_f64() / median(&mut straight).as_secs_f64()
    })
}

criterion_group!(benches, e2e);
criterion_main!(benches);
