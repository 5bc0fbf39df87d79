//! `scifaas bench`: throughput and latency on the full stack (HTTP -> service -> agent
//! -> interchange -> manager -> worker and back), on a service and a local endpoint
//! started in this process. `--peer-protocol` speaks the protocol of
//! `shared/peers/bench_peers.py` (`BENCH_PARAMS` in, `BENCH_OUT` out), so scifaas is
//! measured in the same run as its peers.

mod hops;
mod managers;
mod queued;

use crate::client::Api;
use crate::demo::HELLO_WORLD;
use crate::local_stack::LocalStack;
use crate::stats::summarize;
use anyhow::{bail, Context};
use bytes::Bytes;
use scifaas_protocol::time::now_micros;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchCmd {
    /// Read parameters from $BENCH_PARAMS and write figures to $BENCH_OUT, as
    /// shared/peers/bench_peers.py expects of an `--extra` command.
    #[arg(long)]
    peer_protocol: bool,
    /// Workers on the local endpoint.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Sequential round trips to time.
    #[arg(long, default_value_t = 2000)]
    latency_n: usize,
    /// No-op tasks for the throughput run.
    #[arg(long, default_value_t = 20000)]
    noop_n: usize,
    /// Instead: simulate this many managers (real manager protocol, zero-work workers)
    /// against one real interchange, and measure registration and tasks/s through it.
    #[arg(long)]
    simulated_managers: Option<usize>,
    /// Workers each simulated manager advertises.
    #[arg(long, default_value_t = 128)]
    workers_per_manager: u32,
    /// Tasks pushed through the interchange by `--simulated-managers`.
    #[arg(long, default_value_t = 1_000_000)]
    tasks: usize,
    /// Threads the simulated managers share.
    #[arg(long, default_value_t = 2)]
    manager_threads: usize,
    /// The interchange's `prefetch_capacity` for `--simulated-managers`.
    #[arg(long, default_value_t = 0)]
    prefetch: u32,
    /// Instead: queue this many tasks (100-byte payloads) on an endpoint whose workers
    /// never free up, and report the process's memory and the latency of task queries
    /// while they wait.
    #[arg(long)]
    queued_tasks: Option<usize>,
}

const NOOP: &str = "def noop(x):\n    return x\n";
const SLEEP: &str = "def sleep10ms(x):\n    import time\n    time.sleep(0.01)\n    return x\n";
const PAYLOAD_LEN: &str = "def payload_len(data):\n    return len(data)\n";

/// Parameters of a run, as bench_peers.py names them.
struct Params {
    workers: u32,
    lat_n: usize,
    lat_warmup: usize,
    noop_n: usize,
    sleep_n: usize,
    payload_n: usize,
    payload_bytes: usize,
    max_measure: Duration,
    settle: Duration,
}

impl Params {
    fn from_env() -> anyhow::Result<Params> {
        let text = std::env::var("BENCH_PARAMS").context("BENCH_PARAMS is not set")?;
        let p: Value = serde_json::from_str(&text).context("BENCH_PARAMS is not JSON")?;
        let int = |key: &str, default: u64| p[key].as_u64().unwrap_or(default);
        let secs = |key: &str, default: f64| {
            Duration::from_secs_f64(p[key].as_f64().unwrap_or(default).max(0.0))
        };
        Ok(Params {
            workers: int("workers", 2) as u32,
            lat_n: int("lat_n", 2000) as usize,
            lat_warmup: int("lat_warmup", 50) as usize,
            noop_n: int("noop_n", 20000) as usize,
            sleep_n: int("sleep_n", 1000) as usize,
            payload_n: int("payload_n", 100) as usize,
            payload_bytes: int("payload_bytes", 1 << 20) as usize,
            max_measure: secs("max_measure_s", 120.0),
            settle: secs("settle_s", 0.5),
        })
    }
}

pub async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    if let Some(managers) = cmd.simulated_managers {
        let figures = managers::run(managers::Simulation {
            managers,
            workers_per_manager: cmd.workers_per_manager,
            tasks: cmd.tasks,
            threads: cmd.manager_threads,
            prefetch: cmd.prefetch,
        })
        .await?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    if let Some(tasks) = cmd.queued_tasks {
        let figures = queued::run(tasks).await?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    if cmd.peer_protocol {
        let out_path = std::env::var("BENCH_OUT").context("BENCH_OUT is not set")?;
        let params = Params::from_env()?;
        let mut out = json!({"versions": {"scifaas": env!("CARGO_PKG_VERSION")}, "error": null});
        if let Err(err) = peer_run(&params, &mut out).await {
            out["error"] = json!(format!("{err:#}"));
        }
        std::fs::write(&out_path, serde_json::to_vec_pretty(&out)?)?;
        return Ok(());
    }
    let params = Params {
        workers: cmd.workers,
        lat_n: cmd.latency_n,
        lat_warmup: 50,
        noop_n: cmd.noop_n,
        sleep_n: 0,
        payload_n: 0,
        payload_bytes: 0,
        max_measure: Duration::from_secs(300),
        settle: Duration::from_millis(200),
    };
    let mut out = json!({});
    peer_run(&params, &mut out).await?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn peer_run(p: &Params, out: &mut Value) -> anyhow::Result<()> {
    let started = Instant::now();
    let stack = LocalStack::start(p.workers).await?;
    let outcome = measure_all(&stack, p, out, started).await;
    let stopping = Instant::now();
    stack.stop().await?;
    out["shutdown_s"] = json!(stopping.elapsed().as_secs_f64());
    outcome
}

async fn measure_all(
    stack: &LocalStack,
    p: &Params,
    out: &mut Value,
    started: Instant,
) -> anyhow::Result<()> {
    let api = &stack.api;
    let ep = &stack.endpoint;
    let hello = api.register_function("hello_world", HELLO_WORLD).await?;
    let hello_doc = Bytes::from_static(b"\"hello-world\"");
    let (status, _, body) = api.invoke(ep, &hello, hello_doc.clone(), 120).await?;
    if !status.is_success() || &body[..] != b"\"hello-world\"" {
        bail!(
            "cold call answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    out["cold_start"] = json!({"cold_start_s": started.elapsed().as_secs_f64()});

    if p.lat_n > 0 {
        for _ in 0..p.lat_warmup {
            api.invoke(ep, &hello, hello_doc.clone(), 60).await?;
        }
        let mut samples = Vec::with_capacity(p.lat_n);
        let mut task_ids = Vec::with_capacity(p.lat_n);
        let deadline = Instant::now() + p.max_measure;
        for _ in 0..p.lat_n {
            let t0 = Instant::now();
            let sent = now_micros();
            let (status, task_id, body) = api.invoke(ep, &hello, hello_doc.clone(), 60).await?;
            let answered = now_micros();
            samples.push(t0.elapsed().as_secs_f64() * 1e3);
            if !status.is_success() || &body[..] != b"\"hello-world\"" {
                bail!("warm call answered {status}");
            }
            task_ids.extend(task_id.map(|id| (id, sent, answered)));
            if Instant::now() > deadline {
                break;
            }
        }
        out["latency"] = serde_json::to_value(summarize(&samples))?;
        out["latency"]["warmup"] = json!(p.lat_warmup);
        // Where a round trip's time goes, from the stamps of (at most) 200 of the calls,
        // read after the timing so the reads do not disturb it.
        let mut hops = hops::Hops::default();
        let step = (task_ids.len() / 200).max(1);
        for (id, sent, answered) in task_ids.iter().step_by(step) {
            let (status, _, body) = api
                .send(reqwest::Method::GET, &format!("/v1/tasks/{id}"), None)
                .await?;
            if !status.is_success() {
                bail!("/v1/tasks/{id} answered {status}");
            }
            let stamps: hops::TaskStamps<'_> =
                serde_json::from_slice(&body).context("a malformed task view")?;
            hops.add_call(&stamps, *sent, *answered);
        }
        out["latency"]["hops"] = hops.summary();
    }

    if p.noop_n > 0 {
        tokio::time::sleep(p.settle).await;
        let noop = api.register_function("noop", NOOP).await?;
        let args: Vec<String> = (0..p.noop_n).map(|i| format!("[{i}]")).collect();
        let mut figures = throughput(api, ep, &noop, &args, p.max_measure).await?;
        // Every argument came back once: the results are 0..n in some order.
        let mut seen: Vec<u64> = figures["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str()?.parse().ok())
            .collect();
        seen.sort_unstable();
        let all_back =
            seen.len() == p.noop_n && seen.iter().enumerate().all(|(i, &r)| r == i as u64);
        figures["correct"] = json!(figures["correct"].as_bool() == Some(true) && all_back);
        figures.as_object_mut().map(|o| o.remove("results"));
        out["noop"] = figures;
    }

    if p.sleep_n > 0 {
        tokio::time::sleep(p.settle).await;
        let sleep = api.register_function("sleep10ms", SLEEP).await?;
        let args: Vec<String> = (0..p.sleep_n).map(|i| format!("[{i}]")).collect();
        let mut figures = throughput(api, ep, &sleep, &args, p.max_measure).await?;
        let ideal = p.sleep_n as f64 * 0.01 / f64::from(p.workers);
        let total = figures["total_s"].as_f64().unwrap_or(f64::NAN);
        figures["ideal_s"] = json!(ideal);
        figures["efficiency"] = json!(ideal / total);
        figures.as_object_mut().map(|o| o.remove("results"));
        out["sleep"] = figures;
    }

    if p.payload_n > 0 {
        tokio::time::sleep(p.settle).await;
        let len = api.register_function("payload_len", PAYLOAD_LEN).await?;
        // Distinct printable payloads: JSON carries them as strings of exactly
        // payload_bytes bytes.
        let args: Vec<String> = (0..p.payload_n)
            .map(|i| {
                let mut s = String::with_capacity(p.payload_bytes + 4);
                s.push_str("[\"");
                let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                for _ in 0..p.payload_bytes {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    s.push((b'a' + (x % 26) as u8) as char);
                }
                s.push_str("\"]");
                s
            })
            .collect();
        let mut figures = throughput(api, ep, &len, &args, p.max_measure).await?;
        let total = figures["total_s"].as_f64().unwrap_or(f64::NAN);
        let completed = figures["completed"].as_f64().unwrap_or(0.0);
        figures["payload_bytes"] = json!(p.payload_bytes);
        figures["mb_per_s"] = json!(completed * p.payload_bytes as f64 / (1 << 20) as f64 / total);
        let expected = p.payload_bytes.to_string();
        figures["correct"] = json!(figures["results"]
            .as_array()
            .map(|r| r.iter().all(|v| v.as_str() == Some(expected.as_str())))
            .unwrap_or(false));
        figures.as_object_mut().map(|o| o.remove("results"));
        out["payload"] = figures;
    }
    Ok(())
}

/// Batch requests the throughput runs keep in flight at once.
const SUBMIT_IN_FLIGHT: usize = 4;

/// `POST /v1/tasks` bodies of at most 2000 tasks or about 2 MiB each, each built when it
/// is asked for, so that the first request leaves before the last body is made. Large
/// arguments go two to a request: the service starts on the first ones sooner, and the
/// bodies' buffers stay small enough to be reused (with 8 MiB bodies the same run took
/// 5 % more CPU).
struct Batches<'a> {
    head: String,
    item: String,
    rest: &'a [String],
}

impl<'a> Batches<'a> {
    fn new(endpoint: &str, function_id: &str, args: &'a [String]) -> Self {
        Batches {
            head: format!("{{\"endpoint\":\"{endpoint}\",\"tasks\":["),
            item: format!("{{\"function_id\":\"{function_id}\",\"args\":"),
            rest: args,
        }
    }
}

impl Iterator for Batches<'_> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        const MAX_BATCH_BYTES: usize = 2 << 20;
        const MAX_BATCH_TASKS: usize = 2000;
        if self.rest.is_empty() {
            return None;
        }
        // As many tasks as fit, at least one.
        let (head, item, rest) = (&self.head, &self.item, self.rest);
        let mut n = 0;
        let mut size = head.len() + 2;
        while n < rest.len()
            && n < MAX_BATCH_TASKS
            && (n == 0 || size + item.len() + rest[n].len() + 2 <= MAX_BATCH_BYTES)
        {
            size += item.len() + rest[n].len() + 2;
            n += 1;
        }
        let (batch, later) = rest.split_at(n);
        let mut body = String::with_capacity(size);
        body.push_str(head);
        for (k, args) in batch.iter().enumerate() {
            if k > 0 {
                body.push(',');
            }
            body.push_str(item);
            body.push_str(args);
            body.push('}');
        }
        body.push_str("]}");
        self.rest = later;
        Some(Bytes::from(body))
    }
}

/// A page of `GET /v1/results`, the fields the benchmark reads.
#[derive(serde::Deserialize)]
struct ResultsPage<'a> {
    cursor: Option<u64>,
    #[serde(borrow, default)]
    tasks: Vec<FinishedTask<'a>>,
}

#[derive(serde::Deserialize)]
struct FinishedTask<'a> {
    task_id: &'a str,
    state: &'a str,
    #[serde(borrow, default)]
    result: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    transitions: Vec<hops::StateAt<'a>>,
    #[serde(default)]
    timing: hops::Timing,
}

/// Submits one task per element of `args` (each a JSON array of arguments) through the
/// batch API, and collects every result through the results stream.
async fn throughput(
    api: &Api,
    endpoint: &str,
    function_id: &str,
    args: &[String],
    budget: Duration,
) -> anyhow::Result<Value> {
    let start = api.call(reqwest::Method::GET, "/v1/results", None).await?;
    let mut cursor = start["cursor"]
        .as_u64()
        .context("no cursor in /v1/results")?;
    let t0 = Instant::now();
    let deadline = t0 + budget;

    // Submit in batches, a few requests in flight (as a client with many tasks would),
    // concurrently with collecting.
    let submit = async {
        let mut ids = Vec::with_capacity(args.len());
        let mut in_flight = tokio::task::JoinSet::new();
        let mut bodies = Batches::new(endpoint, function_id, args);
        loop {
            while in_flight.len() < SUBMIT_IN_FLIGHT {
                let Some(body) = bodies.next() else { break };
                let api = api.clone();
                in_flight.spawn(async move {
                    api.send(reqwest::Method::POST, "/v1/tasks", Some(body))
                        .await
                });
            }
            let Some(answer) = in_flight.join_next().await else {
                break;
            };
            let (status, _, answer) = answer??;
            if !status.is_success() {
                bail!(
                    "batch submit answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
            let answer: Value = serde_json::from_slice(&answer)?;
            for id in answer["task_ids"].as_array().into_iter().flatten() {
                ids.push(id.as_str().unwrap_or_default().to_owned());
            }
        }
        Ok::<_, anyhow::Error>((ids, Instant::now()))
    };

    let collect = async {
        let mut done = HashSet::with_capacity(args.len());
        let mut results = Vec::with_capacity(args.len());
        let mut failed = 0usize;
        let mut hops = hops::Hops::default();
        while done.len() < args.len() && Instant::now() < deadline {
            let (status, _, body) = api
                .send(
                    reqwest::Method::GET,
                    &format!("/v1/results?after={cursor}&timeout=5&max=10000"),
                    None,
                )
                .await?;
            if !status.is_success() {
                bail!(
                    "/v1/results answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            // Decoded into borrowed fields: the client's share of the run stays small.
            let page: ResultsPage<'_> =
                serde_json::from_slice(&body).context("a malformed /v1/results page")?;
            cursor = page.cursor.unwrap_or(cursor);
            for task in &page.tasks {
                if done.insert(task.task_id.to_owned()) {
                    hops.add_parts(&task.transitions, &task.timing);
                    if task.state == "success" {
                        // A JSON null result reads as no result.
                        results.push(task.result.map_or("null", |r| r.get()).to_owned());
                    } else {
                        failed += 1;
                    }
                }
            }
        }
        Ok::<_, anyhow::Error>((done, results, failed, hops))
    };
    let (submitted, collected) = tokio::join!(submit, collect);
    let (done, results, failed, hops) = collected?;
    let total = t0.elapsed().as_secs_f64();
    let (ids, submitted_at) = submitted?;
    let submit_s = submitted_at.duration_since(t0).as_secs_f64();
    let all_ours = ids.iter().all(|id| done.contains(id));
    Ok(json!({
        "n": args.len(),
        "submitted": ids.len(),
        "completed": done.len(),
        "failed": failed,
        "timed_out": done.len() < args.len(),
        "submit_s": submit_s,
        "total_s": total,
        "submit_rate_per_s": ids.len() as f64 / submit_s,
        "tasks_per_s": done.len() as f64 / total,
        "correct": failed == 0 && all_ours,
        "hops": hops.summary(),
        "results": results,
    }))
}
