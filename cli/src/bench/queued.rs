//! `scifaas bench --queued-tasks N`: a deep queue. N tasks with 100-byte payloads are
//! submitted to a local endpoint whose two workers are held by tasks that never end, so
//! every other task waits in the agent's interchange. While they wait, it reports the
//! memory of this process (the service and the agent; the manager and its workers are
//! processes of their own) and the latency of `GET /v1/tasks/{id}` for random tasks: a
//! full queue must leave the service responsive.

use crate::client::Api;
use crate::local_stack::LocalStack;
use crate::stats::summarize;
use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Holds a worker for as long as the benchmark runs (the agent stops it at the end).
const HOLD: &str = "def hold(x):\n    import time\n    time.sleep(3600)\n    return x\n";
/// Tasks per submit request and requests in flight.
const BATCH: usize = 2000;
const IN_FLIGHT: usize = 4;
/// Task queries timed while the queue is full.
const QUERIES: usize = 1000;

/// Runs the benchmark; answers its figures as JSON.
pub async fn run(tasks: usize) -> anyhow::Result<Value> {
    let stack = LocalStack::start(2).await?;
    let outcome = measure(&stack, tasks).await;
    stack.stop().await?;
    outcome
}

async fn measure(stack: &LocalStack, tasks: usize) -> anyhow::Result<Value> {
    let api = &stack.api;
    let endpoint = &stack.endpoint;
    let hold = api.register_function("hold", HOLD).await?;
    let rss_before = memory_kib("VmRSS:");

    // `["....."]`: with the envelope, a 100-byte payload.
    let argument = format!("[\"{}\"]", "x".repeat(100 - 27 - 4));
    let t0 = Instant::now();
    let mut ids: Vec<String> = Vec::with_capacity(tasks);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut sent = 0;
    while sent < tasks || !in_flight.is_empty() {
        while sent < tasks && in_flight.len() < IN_FLIGHT {
            let n = BATCH.min(tasks - sent);
            let mut body = String::with_capacity(n * (argument.len() + 70) + 64);
            body.push_str(&format!("{{\"endpoint\":\"{endpoint}\",\"tasks\":["));
            for k in 0..n {
                if k > 0 {
                    body.push(',');
                }
                body.push_str(&format!(
                    "{{\"function_id\":\"{hold}\",\"args\":{argument}}}"
                ));
            }
            body.push_str("]}");
            sent += n;
            let api = api.clone();
            in_flight.spawn(async move {
                api.send(reqwest::Method::POST, "/v1/tasks", Some(Bytes::from(body)))
                    .await
            });
        }
        let Some(answer) = in_flight.join_next().await else {
            break;
        };
        let (status, _, answer) = answer??;
        if !status.is_success() {
            bail!(
                "submit answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        let answer: Value = serde_json::from_slice(&answer)?;
        for id in answer["task_ids"].as_array().into_iter().flatten() {
            ids.push(id.as_str().unwrap_or_default().to_owned());
        }
    }
    let submit_s = t0.elapsed().as_secs_f64();

    // Queued: the agent reports (every second) how many tasks it holds.
    let queued = wait_for_outstanding(api, endpoint, tasks, Duration::from_secs(600)).await?;
    let queued_s = t0.elapsed().as_secs_f64();
    let rss_queued = memory_kib("VmRSS:");

    // Task views of random tasks, one at a time, while the queue is full.
    let mut latencies = Vec::with_capacity(QUERIES);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..QUERIES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let id = &ids[(state % ids.len() as u64) as usize];
        let started = Instant::now();
        let view = api
            .call(reqwest::Method::GET, &format!("/v1/tasks/{id}"), None)
            .await?;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        if view["task_id"].as_str() != Some(id.as_str()) {
            bail!("GET /v1/tasks/{id} answered {view}");
        }
    }
    let started = Instant::now();
    api.call(
        reqwest::Method::GET,
        &format!("/v1/endpoints/{endpoint}"),
        None,
    )
    .await?;
    let endpoint_view_ms = started.elapsed().as_secs_f64() * 1e3;

    Ok(json!({
        "tasks": tasks,
        "payload_bytes": 100,
        "submit_s": submit_s,
        "submit_rate_per_s": tasks as f64 / submit_s,
        "queued_in_agent": queued,
        "all_queued_after_s": queued_s,
        "process_rss_mib_before": rss_before.map(|kib| kib as f64 / 1024.0),
        "process_rss_mib_queued": rss_queued.map(|kib| kib as f64 / 1024.0),
        "process_peak_rss_mib": memory_kib("VmHWM:").map(|kib| kib as f64 / 1024.0),
        "get_task_ms": summarize(&latencies),
        "get_endpoint_ms": endpoint_view_ms,
    }))
}

/// Waits until the endpoint reports at least `tasks` outstanding; answers the count.
async fn wait_for_outstanding(
    api: &Api,
    endpoint: &str,
    tasks: usize,
    limit: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let view = api
            .call(
                reqwest::Method::GET,
                &format!("/v1/endpoints/{endpoint}"),
                None,
            )
            .await
            .context("reading the endpoint view")?;
        let outstanding = view["outstanding_tasks"].as_u64().unwrap_or(0);
        if outstanding >= tasks as u64 {
            return Ok(outstanding);
        }
        if Instant::now() > deadline {
            bail!("only {outstanding} of {tasks} tasks reached the agent within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A memory figure of this process from /proc/self/status, in KiB.
fn memory_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
