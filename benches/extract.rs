//! The model scan against serde_json: a whole `Value` parse, and a borrowed
//! struct with only `model` (serde_json still validates the whole body).

use std::borrow::Cow;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "support/bodies.rs"]
mod bodies;

#[derive(serde::Deserialize)]
struct OnlyModel<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
}

fn extract(c: &mut Criterion) {
    for (label, size) in bodies::SIZES {
        let mut group = c.benchmark_group(format!("extract/{label}"));
        for (place, first) in [("first", true), ("last", false)] {
            let body = bodies::chat_body("llama-3-8b", size, first);
            group.throughput(Throughput::Bytes(body.len() as u64));
            assert_eq!(llmux::model::extract(&body).as_deref(), Ok("llama-3-8b"));
            group.bench_with_input(BenchmarkId::new("llmux_simd_scan", place), &body, |b, body| {
                b.iter(|| llmux::model::with_model(black_box(body), |m| m.len()))
            });
            group.bench_with_input(BenchmarkId::new("serde_json_value", place), &body, |b, body| {
                b.iter(|| {
                    let v: serde_json::Value = serde_json::from_slice(black_box(body)).expect("json");
                    v.get("model").and_then(|m| m.as_str()).map(str::len)
                })
            });
            group.bench_with_input(BenchmarkId::new("serde_json_struct", place), &body, |b, body| {
                b.iter(|| serde_json::from_slice::<OnlyModel<'_>>(black_box(body)).expect("json").model.len())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, extract);
criterion_main!(benches);
