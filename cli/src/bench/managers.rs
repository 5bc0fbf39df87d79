//! `scifaas bench --simulated-managers N --workers-per-manager W`: one real interchange
//! and N simulated managers that speak the real manager protocol over ZeroMQ (register
//! with the endpoint secret, take task batches, answer every task at once: zero-work
//! workers). It measures how long the managers take to register and how many tasks per
//! second pass through the interchange (queued -> dispatched -> result back), with no
//! Python, service or network in the way.
//!
//! The managers are spread over a few threads, each polling its share of DEALER sockets,
//! so that a thousand of them fit in one process.

use anyhow::{bail, Context};
use bytes::Bytes;
use scifaas_agent::interchange::{self, InterchangeConfig, InterchangeEvent};
use scifaas_protocol::interchange::{InterchangeMessage, ManagerMessage, Registration};
use scifaas_protocol::time::now_micros;
use scifaas_protocol::{
    decode_message, encode, BlockId, FunctionId, FunctionSpec, ManagerId, Outcome, ResultTiming,
    TaskId, TaskResult, TaskSpec, PROTOCOL_VERSION,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to simulate.
pub struct Simulation {
    pub managers: usize,
    pub workers_per_manager: u32,
    /// Tasks pushed through the interchange.
    pub tasks: usize,
    /// Threads the simulated managers share.
    pub threads: usize,
    /// `engine.prefetch_capacity` of the interchange.
    pub prefetch: u32,
}

const SECRET: &str = "simulated-managers-secret";

/// Runs the simulation; answers its figures as JSON.
pub async fn run(sim: Simulation) -> anyhow::Result<Value> {
    anyhow::ensure!(
        sim.managers > 0 && sim.workers_per_manager > 0,
        "nothing to simulate"
    );
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let config = InterchangeConfig {
        bind_address: "127.0.0.1".into(),
        port_range: None,
        secret: SECRET.into(),
        // Long enough that no simulated manager needs to heartbeat during the run.
        heartbeat_period: Duration::from_secs(60),
        heartbeat_threshold: Duration::from_secs(600),
        prefetch: scifaas_agent::prefetch::Prefetch::Fixed(sim.prefetch),
        max_retries_on_system_failure: 0,
        local_socket: None,
    };
    let handle = interchange::start(config, events_tx)?;
    let url = handle.url.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let registered = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let threads = sim.threads.clamp(1, sim.managers);
    let started = Instant::now();
    let mut workers = Vec::new();
    for t in 0..threads {
        let ids: Vec<usize> = (t..sim.managers).step_by(threads).collect();
        let shared = (stop.clone(), registered.clone(), answered.clone());
        let url = url.clone();
        let per_manager = sim.workers_per_manager;
        workers.push(
            std::thread::Builder::new()
                .name(format!("sim-managers-{t}"))
                .spawn(move || simulate(&url, &ids, per_manager, shared))?,
        );
    }

    // Registration: every manager answered `Registered`, and the agent side heard of it.
    let mut heard = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while heard < sim.managers || registered.load(Ordering::Acquire) < sim.managers {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} managers registered within 120 s",
                registered.load(Ordering::Acquire),
                sim.managers
            );
        }
        match tokio::time::timeout(Duration::from_millis(50), events.recv()).await {
            Ok(Some(InterchangeEvent::ManagerRegistered { .. })) => heard += 1,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => bail!("the interchange stopped"),
        }
    }
    let registration_s = started.elapsed().as_secs_f64();

    // Throughput: every task queued at once, as an agent does with a full backlog.
    let function = FunctionSpec {
        id: FunctionId::new(),
        hash: "0".repeat(64),
        name: "noop".into(),
        source: Bytes::from_static(b"def noop(x):\n    return x\n"),
        container: None,
    };
    let payload = Bytes::from_static(b"{\"args\":[0],\"kwargs\":{}}");
    let tasks: Vec<TaskSpec> = (0..sim.tasks)
        .map(|_| TaskSpec {
            task_id: TaskId::new(),
            function: function.clone(),
            payload: payload.clone(),
            walltime_ms: None,
            retries: 0,
        })
        .collect();
    let t0 = Instant::now();
    handle.submit(tasks, now_micros());
    let mut done = 0usize;
    let mut failed = 0usize;
    let budget = Duration::from_secs(300);
    while done < sim.tasks {
        let left = budget.saturating_sub(t0.elapsed());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(InterchangeEvent::Results(results))) => {
                done += results.len();
                failed += results.iter().filter(|r| !r.is_success()).count();
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let total_s = t0.elapsed().as_secs_f64();
    let managers_used = answered.load(Ordering::Acquire);

    stop.store(true, Ordering::Release);
    tokio::task::block_in_place(|| handle.shutdown());
    for worker in workers {
        let _ = worker.join();
    }
    Ok(json!({
        "managers": sim.managers,
        "workers_per_manager": sim.workers_per_manager,
        "workers": sim.managers * sim.workers_per_manager as usize,
        "threads": threads,
        "prefetch": sim.prefetch,
        "registration_s": registration_s,
        "tasks": sim.tasks,
        "completed": done,
        "failed": failed,
        "managers_dispatched_to": managers_used,
        "total_s": total_s,
        "tasks_per_s": done as f64 / total_s,
    }))
}

/// One simulated manager: its socket and whether it has had work yet.
struct Simulated {
    socket: zmq::Socket,
    registered: bool,
    had_work: bool,
}

/// A thread's managers: connect, register, then answer every task batch at once until
/// told to stop.
fn simulate(
    url: &str,
    ids: &[usize],
    workers: u32,
    (stop, registered, answered): (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>),
) -> anyhow::Result<()> {
    let context = zmq::Context::new();
    let mut managers = Vec::with_capacity(ids.len());
    let pid = std::process::id();
    for &i in ids {
        let socket = context.socket(zmq::DEALER)?;
        let manager_id = ManagerId(format!("sim-{pid}-{i}"));
        socket.set_identity(manager_id.0.as_bytes())?;
        socket.set_linger(0)?;
        socket
            .connect(url)
            .with_context(|| format!("connecting to {url}"))?;
        let registration = Registration {
            protocol_version: PROTOCOL_VERSION,
            manager_id,
            block_id: BlockId(format!("sim-block-{}", i / 16)),
            job_id: None,
            host: format!("sim-node-{i}"),
            workers,
            cores: workers,
            memory_bytes: 0,
            secret: SECRET.into(),
            accepts_until: None,
        };
        socket.send(encode(&ManagerMessage::Register(registration)), 0)?;
        managers.push(Simulated {
            socket,
            registered: false,
            had_work: false,
        });
    }
    while !stop.load(Ordering::Acquire) {
        let mut items: Vec<zmq::PollItem<'_>> = managers
            .iter()
            .map(|m| m.socket.as_poll_item(zmq::POLLIN))
            .collect();
        zmq::poll(&mut items, 20)?;
        let ready: Vec<bool> = items.iter().map(|item| item.is_readable()).collect();
        drop(items);
        for (manager, ready) in managers.iter_mut().zip(ready) {
            if !ready {
                continue;
            }
            while let Ok(frame) = manager.socket.recv_msg(zmq::DONTWAIT) {
                match decode_message::<InterchangeMessage>(&frame) {
                    Ok(InterchangeMessage::Registered { .. }) if !manager.registered => {
                        manager.registered = true;
                        registered.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(InterchangeMessage::Tasks { tasks }) => {
                        if !manager.had_work {
                            manager.had_work = true;
                            answered.fetch_add(1, Ordering::AcqRel);
                        }
                        let now = now_micros();
                        let results = tasks
                            .into_iter()
                            .map(|task| TaskResult {
                                task_id: task.task_id,
                                outcome: Outcome::Success(Bytes::from_static(b"0")),
                                stdout: String::new(),
                                stderr: String::new(),
                                transitions: Vec::new(),
                                timing: ResultTiming {
                                    exec_start: now,
                                    exec_end: now,
                                    manager_sent: now,
                                    agent_sent: 0,
                                },
                            })
                            .collect();
                        let message = ManagerMessage::Results { results };
                        manager.socket.send(encode(&message), 0)?;
                    }
                    Ok(InterchangeMessage::Rejected { reason }) => {
                        bail!("the interchange rejected a simulated manager: {reason}")
                    }
                    Ok(InterchangeMessage::Shutdown) => return Ok(()),
                    Ok(_) => {}
                    Err(err) => bail!("a simulated manager got a malformed frame: {err}"),
                }
            }
        }
    }
    Ok(())
}
