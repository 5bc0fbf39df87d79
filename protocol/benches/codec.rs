//! The wire codec: encoding and decoding the busiest messages, a batch of 128 small
//! tasks and one task with a 1 MiB argument, by the direct path (`decode_message`) and by
//! serde's derived decoder (`decode`), which buffers tagged enums first.
//!
//! `cargo bench -p scifaas-protocol --bench codec`

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use scifaas_protocol::interchange::{InterchangeMessage, ManagerMessage};
use scifaas_protocol::{
    decode, decode_message, encode, FunctionId, FunctionSpec, TaskId, TaskResult, TaskSpec,
};

fn task(payload: Bytes) -> TaskSpec {
    TaskSpec {
        task_id: TaskId::new(),
        function: FunctionSpec {
            id: FunctionId::new(),
            hash: "0".repeat(64),
            name: "noop".into(),
            source: Bytes::from_static(b"def noop(x):\n    return x\n"),
            container: None,
        },
        payload,
        walltime_ms: None,
        retries: 0,
    }
}

fn result() -> TaskResult {
    TaskResult::success(TaskId::new(), Bytes::from_static(b"0"))
}

fn codec(c: &mut Criterion) {
    let small = InterchangeMessage::Tasks {
        tasks: (0..128)
            .map(|_| task(Bytes::from_static(b"{\"args\":[0],\"kwargs\":{}}")))
            .collect(),
    };
    let large = InterchangeMessage::Tasks {
        tasks: vec![task(Bytes::from(vec![b'7'; 1 << 20]))],
    };
    let results = ManagerMessage::Results {
        results: (0..128).map(|_| result()).collect(),
    };

    let mut group = c.benchmark_group("tasks x128");
    group.throughput(Throughput::Elements(128));
    let frame = encode(&small);
    group.bench_function("encode", |b| b.iter(|| encode(black_box(&small))));
    group.bench_function("decode_message", |b| {
        b.iter(|| decode_message::<InterchangeMessage>(black_box(&frame)).unwrap())
    });
    group.bench_function("decode (derived)", |b| {
        b.iter(|| decode::<InterchangeMessage>(black_box(&frame)).unwrap())
    });
    group.finish();

    let mut group = c.benchmark_group("results x128");
    group.throughput(Throughput::Elements(128));
    let frame = encode(&results);
    group.bench_function("encode", |b| b.iter(|| encode(black_box(&results))));
    group.bench_function("decode_message", |b| {
        b.iter(|| decode_message::<ManagerMessage>(black_box(&frame)).unwrap())
    });
    group.finish();

    let mut group = c.benchmark_group("1 MiB task");
    group.throughput(Throughput::Bytes(1 << 20));
    let frame = encode(&large);
    group.bench_function("encode", |b| b.iter(|| encode(black_box(&large))));
    group.bench_function("decode_message", |b| {
        b.iter(|| decode_message::<InterchangeMessage>(black_box(&frame)).unwrap())
    });
    group.bench_function("decode (derived)", |b| {
        b.iter(|| decode::<InterchangeMessage>(black_box(&frame)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
