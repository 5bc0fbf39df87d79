//! `scifaas demo`: the funcX paper's latency table, measured on a service and a local
//! endpoint started in this process: one cold call, then many warm ones through the
//! HTTP trigger, and the breakdown of a warm call by component from the task's
//! recorded transitions.

use crate::local_stack::LocalStack;
use crate::stats::{summarize, Summary};
use anyhow::{bail, Context};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use std::time::Instant;

/// The function of the funcX paper's latency experiment.
pub const HELLO_WORLD: &str = "def hello_world(event):\n    print(event)\n    return event\n";

#[derive(clap::Args)]
pub struct DemoCmd {
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Warm calls to time.
    #[arg(long, default_value_t = 2000)]
    warm: usize,
    /// Workers on the local endpoint.
    #[arg(long, default_value_t = 2)]
    workers: u32,
}

#[derive(Serialize)]
struct DemoReport {
    function: &'static str,
    workers: u32,
    cold: Summary,
    /// Endpoint start to first result, which includes starting the pilot, the
    /// manager and the worker.
    cold_since_endpoint_start_ms: f64,
    warm: Summary,
    /// Mean and p50 of each component of a warm call, in milliseconds.
    breakdown: Vec<Component>,
}

#[derive(Serialize)]
struct Component {
    name: &'static str,
    mean_ms: f64,
    p50_ms: f64,
}

pub async fn run(cmd: DemoCmd) -> anyhow::Result<()> {
    if cmd.warm == 0 {
        bail!("--warm must be at least 1");
    }
    let stack = LocalStack::start(cmd.workers).await?;
    let outcome = measure(&stack, &cmd).await;
    stack.stop().await?;
    let report = outcome?;
    if cmd.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn measure(stack: &LocalStack, cmd: &DemoCmd) -> anyhow::Result<DemoReport> {
    let api = &stack.api;
    let function_id = api.register_function("hello_world", HELLO_WORLD).await?;
    let document = Bytes::from_static(b"\"hello-world\"");

    let started = Instant::now();
    let (status, _, body) = api
        .invoke(&stack.endpoint, &function_id, document.clone(), 120)
        .await?;
    let cold_ms = started.elapsed().as_secs_f64() * 1e3;
    let cold_since_start_ms = stack.endpoint_started.elapsed().as_secs_f64() * 1e3;
    check_answer(status, &body)?;

    let mut samples = Vec::with_capacity(cmd.warm);
    let mut task_ids = Vec::with_capacity(cmd.warm);
    for _ in 0..cmd.warm {
        let started = Instant::now();
        let (status, task_id, body) = api
            .invoke(&stack.endpoint, &function_id, document.clone(), 60)
            .await?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
        check_answer(status, &body)?;
        task_ids.push(task_id.context("the trigger's answer has no X-Scifaas-Task-Id")?);
    }
    let breakdown = breakdown(api, &task_ids, &samples).await?;
    Ok(DemoReport {
        function: "hello_world",
        workers: cmd.workers,
        cold: summarize(&[cold_ms]),
        cold_since_endpoint_start_ms: cold_since_start_ms,
        warm: summarize(&samples),
        breakdown,
    })
}

fn check_answer(status: reqwest::StatusCode, body: &[u8]) -> anyhow::Result<()> {
    if status.is_success() && body == b"\"hello-world\"" {
        Ok(())
    } else {
        bail!(
            "unexpected answer {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(body)
        )
    }
}

/// Splits each warm call into components from the stamps its hops recorded.
async fn breakdown(
    api: &crate::client::Api,
    task_ids: &[String],
    round_trips_ms: &[f64],
) -> anyhow::Result<Vec<Component>> {
    let names = [
        "service (REST, store, link to agent)",
        "endpoint (agent, journal, interchange)",
        "manager (dispatch to worker, results)",
        "worker execution",
        "HTTP client <-> service",
    ];
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for (chunk_index, chunk) in task_ids.chunks(500).enumerate() {
        let answer = api.tasks_status(chunk).await?;
        for (i, task_id) in chunk.iter().enumerate() {
            let task = &answer["tasks"][task_id];
            let Some(parts) = components(task) else {
                continue;
            };
            let rtt = round_trips_ms[chunk_index * 500 + i];
            let served: f64 = parts.iter().sum();
            for (column, value) in columns.iter_mut().zip(parts) {
                column.push(value);
            }
            columns[4].push((rtt - served).max(0.0));
        }
    }
    Ok(names
        .iter()
        .zip(columns)
        .map(|(name, column)| {
            let s = summarize(&column);
            Component {
                name,
                mean_ms: s.mean_ms,
                p50_ms: s.p50_ms,
            }
        })
        .collect())
}

/// (service, endpoint, manager, worker) in milliseconds, from a task view.
fn components(task: &Value) -> Option<[f64; 4]> {
    let at = |state: &str| -> Option<f64> {
        task["transitions"]
            .as_array()?
            .iter()
            .find(|t| t["state"] == state)?["at"]
            .as_f64()
    };
    let timing = |key: &str| task["timing"][key].as_f64().filter(|v| *v > 0.0);
    let received = at("received")?;
    let queued = at("waiting-for-nodes")?;
    let launched = at("waiting-for-launch")?;
    let exec_start = timing("exec_start")?;
    let exec_end = timing("exec_end")?;
    let manager_sent = timing("manager_sent")?;
    let agent_sent = timing("agent_sent")?;
    let completed = timing("completed")?;
    let ms = |us: f64| us / 1e3;
    Some([
        ms((queued - received) + (completed - agent_sent)),
        ms((launched - queued) + (agent_sent - manager_sent)),
        ms((exec_start - launched) + (manager_sent - exec_end)),
        ms(exec_end - exec_start),
    ])
}

fn print_table(report: &DemoReport) {
    println!(
        "scifaas demo: {}(\"hello-world\") through the HTTP trigger, local endpoint with {} workers",
        report.function, report.workers
    );
    println!();
    println!(
        "{:<22} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "round trip (ms)", "n", "mean", "stdev", "p50", "p99"
    );
    for (label, s) in [("cold", &report.cold), ("warm", &report.warm)] {
        println!(
            "{:<22} {:>6} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            label, s.n, s.mean_ms, s.stdev_ms, s.p50_ms, s.p99_ms
        );
    }
    println!(
        "(cold: first call right after the endpoint started; {:.1} ms from endpoint start to result)",
        report.cold_since_endpoint_start_ms
    );
    println!();
    println!(
        "{:<42} {:>10} {:>10}",
        "warm call breakdown (ms)", "mean", "p50"
    );
    for c in &report.breakdown {
        println!("{:<42} {:>10.3} {:>10.3}", c.name, c.mean_ms, c.p50_ms);
    }
    println!();
    println!(
        "funcX paper, for reference (service on AWS, over the internet): warm 76 ms, cold 2.9 s"
    );
}
