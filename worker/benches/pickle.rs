//! Re-encoding task payloads from JSON into the pickles workers load
//! (`scifaas_worker::pickle`): a no-op task's arguments, 1,000 floats, and a 1 MiB string,
//! the bench's large argument. The Python side of the comparison (what `json.loads` and
//! `pickle.loads` take for the same documents) is in DESIGN.md.
//!
//! `cargo bench -p scifaas-worker --bench pickle`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use scifaas_worker::pickle::json_to_pickle;

fn transcode(c: &mut Criterion) {
    let floats: Vec<String> = (0..1000)
        .map(|i| format!("{}", (i as f64 * 0.618_033_988_749_895).fract()))
        .collect();
    let documents = [
        ("noop", r#"{"args":[0],"kwargs":{}}"#.to_string()),
        (
            "1k-floats",
            format!(r#"{{"args":[[{}]]}}"#, floats.join(",")),
        ),
        (
            "1MiB-string",
            format!(r#"{{"args":["{}"]}}"#, "abcdefgh".repeat(1 << 17)),
        ),
    ];
    let mut group = c.benchmark_group("json_to_pickle");
    let mut out = Vec::new();
    for (name, json) in &documents {
        group.throughput(Throughput::Bytes(json.len() as u64));
        group.bench_function(*name, |b| {
            b.iter(|| assert!(json_to_pickle(black_box(json.as_bytes()), &mut out)))
        });
    }
    group.finish();
}

criterion_group!(benches, transcode);
criterion_main!(benches);
