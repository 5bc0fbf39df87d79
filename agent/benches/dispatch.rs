//! The interchange's dispatch: tasks queued, sent to managers by capacity, results back,
//! through the real interchange thread and real ZeroMQ sockets. Sixteen managers of 128
//! workers each answer every task at once (they run on threads of this process), so the
//! figure is the interchange's own cost per task. `scifaas bench --simulated-managers`
//! measures the same at scale (a thousand managers).
//!
//! `cargo bench -p scifaas-agent --bench dispatch`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scifaas_agent::interchange::{self, InterchangeConfig, InterchangeEvent};
use scifaas_protocol::interchange::{InterchangeMessage, ManagerMessage, Registration};
use scifaas_protocol::time::now_micros;
use scifaas_protocol::{
    decode_message, encode, BlockId, FunctionId, FunctionSpec, ManagerId, TaskId, TaskResult,
    TaskSpec, PROTOCOL_VERSION,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MANAGERS: usize = 16;
const WORKERS: u32 = 128;
const TASKS: usize = 20_000;
const SECRET: &str = "bench-secret";

/// A manager that registers, then answers every task at once until `stop`.
fn manager(url: String, i: usize, stop: Arc<AtomicBool>) {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::DEALER).unwrap();
    let id = ManagerId(format!("bench-{i}"));
    socket.set_identity(id.0.as_bytes()).unwrap();
    socket.set_linger(0).unwrap();
    socket.connect(&url).unwrap();
    let registration = Registration {
        protocol_version: PROTOCOL_VERSION,
        manager_id: id,
        block_id: BlockId("bench".into()),
        job_id: None,
        host: format!("node-{i}"),
        workers: WORKERS,
        cores: WORKERS,
        memory_bytes: 0,
        secret: SECRET.into(),
        accepts_until: None,
    };
    socket
        .send(encode(&ManagerMessage::Register(registration)), 0)
        .unwrap();
    while !stop.load(Ordering::Acquire) {
        if socket.poll(zmq::POLLIN, 20).unwrap() == 0 {
            continue;
        }
        while let Ok(frame) = socket.recv_msg(zmq::DONTWAIT) {
            if let Ok(InterchangeMessage::Tasks { tasks }) = decode_message(&frame) {
                let results = tasks
                    .into_iter()
                    .map(|task| TaskResult::success(task.task_id, Bytes::from_static(b"0")))
                    .collect();
                socket
                    .send(encode(&ManagerMessage::Results { results }), 0)
                    .unwrap();
            }
        }
    }
}

fn dispatch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let handle = interchange::start(
        InterchangeConfig {
            bind_address: "127.0.0.1".into(),
            port_range: None,
            secret: SECRET.into(),
            heartbeat_period: Duration::from_secs(60),
            heartbeat_threshold: Duration::from_secs(600),
            prefetch: scifaas_agent::prefetch::Prefetch::Fixed(0),
            max_retries_on_system_failure: 0,
            local_socket: None,
        },
        events_tx,
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let managers: Vec<_> = (0..MANAGERS)
        .map(|i| {
            let (url, stop) = (handle.url.clone(), stop.clone());
            std::thread::spawn(move || manager(url, i, stop))
        })
        .collect();
    runtime.block_on(async {
        let mut registered = 0;
        while registered < MANAGERS {
            if let Some(InterchangeEvent::ManagerRegistered { .. }) = events.recv().await {
                registered += 1;
            }
        }
    });
    let function = FunctionSpec {
        id: FunctionId::new(),
        hash: "0".repeat(64),
        name: "noop".into(),
        source: Bytes::from_static(b"def noop(x):\n    return x\n"),
        container: None,
    };

    let mut group = c.benchmark_group("interchange");
    group.throughput(Throughput::Elements(TASKS as u64));
    group.sample_size(20);
    group.bench_function("queue, dispatch and collect 20k tasks", |b| {
        b.iter_batched(
            || {
                (0..TASKS)
                    .map(|_| TaskSpec {
                        task_id: TaskId::new(),
                        function: function.clone(),
                        payload: Bytes::from_static(b"{\"args\":[0],\"kwargs\":{}}"),
                        walltime_ms: None,
                        retries: 0,
                    })
                    .collect::<Vec<_>>()
            },
            |tasks| {
                handle.submit(tasks, now_micros());
                runtime.block_on(async {
                    let mut done = 0;
                    while done < TASKS {
                        if let Some(InterchangeEvent::Results(results)) = events.recv().await {
                            done += results.len();
                        }
                    }
                });
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();

    stop.store(true, Ordering::Release);
    handle.shutdown();
    for manager in managers {
        let _ = manager.join();
    }
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
