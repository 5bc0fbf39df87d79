//! Endpoints whose pilots are real Slurm jobs: `scripts/slurm-up.sh` starts a Slurm on
//! this machine (`scripts/test.sh` does so when run as root). Without one these tests
//! say so and pass, unless SCIFAAS_REQUIRE_SLURM=1 (set by scripts/test.sh as root),
//! which makes a missing Slurm a failure.

mod common;

use common::Stack;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

fn slurm_is_up() -> bool {
    let up = Command::new("sinfo")
        .arg("-h")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !up {
        assert!(
            std::env::var("SCIFAAS_REQUIRE_SLURM").as_deref() != Ok("1"),
            "SCIFAAS_REQUIRE_SLURM=1 but no Slurm answers here"
        );
        eprintln!(
            "slurm_endpoint: SKIPPING: no Slurm here; start one with scripts/slurm-up.sh (as root)"
        );
    }
    up
}

/// An endpoint config with `provider` lines (indented two spaces) under `provider:`.
fn write_config(stack: &Stack, name: &str, workers: u32, provider: &str) {
    let dir = stack.endpoint_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "service_url: {}\nengine:\n  max_workers_per_node: {workers}\n  heartbeat_period: 1s\n  heartbeat_threshold: 5s\n  max_retries_on_system_failure: 1\nprovider:\n{provider}strategy:\n  period: 1s\n  max_idletime: 3s\n",
        stack.url
    );
    std::fs::write(dir.join("config.yaml"), text).unwrap();
}

/// The job ids of the endpoint's blocks, as its status reports them.
fn block_jobs(stack: &Stack, name: &str) -> Vec<String> {
    stack
        .get(&format!("/v1/endpoints/{name}"))
        .map(|view| {
            view["blocks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b["job_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Jobs among `jobs` that squeue still shows pending or running.
fn live_in_squeue(jobs: &BTreeSet<String>) -> Vec<String> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let ids: Vec<&str> = jobs.iter().map(String::as_str).collect();
    let out = Command::new("squeue")
        .args([
            "-h",
            "-t",
            "PENDING,RUNNING,CONFIGURING,COMPLETING",
            "-o",
            "%i",
            "-j",
            &ids.join(","),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn wait_all(stack: &Stack, ids: &[String], timeout: Duration) -> Vec<Value> {
    ids.iter().map(|id| stack.wait_task(id, timeout)).collect()
}

#[test]
fn pilots_scale_out_run_every_task_and_leave_when_idle() {
    if !slurm_is_up() {
        return;
    }
    let stack = Stack::start();
    write_config(
        &stack,
        "cluster",
        4,
        "  type: slurm\n  partition: debug\n  exclusive: false\n  walltime: \"00:10:00\"\n  init_blocks: 0\n  min_blocks: 0\n  max_blocks: 2\n  launcher: {type: srun}\n  status_poll_period: 2s\n",
    );
    let _agent = stack.start_endpoint("cluster");
    // No pilot until work arrives (init_blocks: 0): wait for the link only.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack
        .get("/v1/endpoints/cluster")
        .map(|v| v["connected"] == true)
        != Ok(true)
    {
        assert!(Instant::now() < deadline, "agent did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(block_jobs(&stack, "cluster").is_empty(), "init_blocks: 0");

    let nap = stack.register(
        "nap",
        "def nap(i):\n    import time\n    time.sleep(0.5)\n    return i\n",
    );
    let args: Vec<Value> = (0..200).map(|i| json!([i])).collect();
    let started = Instant::now();
    let ids = stack.submit("cluster", &nap, &args);
    let mut seen = BTreeSet::new();
    let mut most_at_once = 0;
    loop {
        let jobs = block_jobs(&stack, "cluster");
        most_at_once = most_at_once.max(jobs.len());
        seen.extend(jobs);
        let done = stack.post("/v1/tasks/status", &json!({"task_ids": ids})).1["tasks"]
            .as_object()
            .map(|t| t.values().filter(|v| v["state"] == "success").count())
            .unwrap_or(0);
        if done == ids.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{done}/200 done after 240 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = started.elapsed();
    for (i, task) in wait_all(&stack, &ids, Duration::from_secs(10))
        .iter()
        .enumerate()
    {
        assert_eq!(task["result"], json!(i));
    }
    assert!(
        !seen.is_empty() && most_at_once <= 2,
        "max_blocks: 2, saw {seen:?}"
    );
    eprintln!(
        "200 x sleep(0.5) through {} Slurm pilot(s) in {elapsed:.1?}",
        seen.len()
    );

    // Idle past max_idletime: the pilots drain and leave the queue.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !live_in_squeue(&seen).is_empty() {
        assert!(
            Instant::now() < deadline,
            "pilots still in squeue 60 s after the work ended: {:?}",
            live_in_squeue(&seen)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_pilot_cancelled_under_its_tasks_is_replaced_and_its_tasks_rerun() {
    if !slurm_is_up() {
        return;
    }
    let stack = Stack::start();
    write_config(
        &stack,
        "cancelled",
        2,
        "  type: slurm\n  partition: debug\n  exclusive: false\n  walltime: \"00:10:00\"\n  init_blocks: 1\n  min_blocks: 0\n  max_blocks: 1\n  launcher: {type: srun}\n  status_poll_period: 1s\n",
    );
    let _agent = stack.start_endpoint("cancelled");
    stack.wait_endpoint_ready("cancelled");
    let slow = stack.register(
        "slow",
        "def slow(i):\n    import time\n    time.sleep(2)\n    return i\n",
    );
    let ids = stack.submit("cancelled", &slow, &[json!([1]), json!([2])]);
    std::thread::sleep(Duration::from_millis(800));
    let first = block_jobs(&stack, "cancelled");
    assert_eq!(first.len(), 1, "{first:?}");
    let out = Command::new("scancel").arg(&first[0]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // max_retries_on_system_failure: 1, so both tasks run again on a new pilot.
    for (i, task) in wait_all(&stack, &ids, Duration::from_secs(120))
        .iter()
        .enumerate()
    {
        assert_eq!(task["state"], "success", "{task}");
        assert_eq!(task["result"], json!(i + 1));
    }
    let now = block_jobs(&stack, "cancelled");
    assert!(
        !now.contains(&first[0]),
        "the cancelled pilot is gone: {now:?}"
    );
}

#[test]
fn a_bad_partition_reaches_the_endpoint_status_and_the_agent_backs_off() {
    if !slurm_is_up() {
        return;
    }
    let stack = Stack::start();
    write_config(
        &stack,
        "badpart",
        1,
        "  type: slurm\n  partition: no-such-partition\n  init_blocks: 1\n  min_blocks: 0\n  max_blocks: 1\n",
    );
    let mut agent = stack.start_endpoint("badpart");
    let deadline = Instant::now() + Duration::from_secs(30);
    let error = loop {
        let view = stack.get("/v1/endpoints/badpart").unwrap_or_default();
        if let Some(error) = view["submit_error"].as_str() {
            break error.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no submit error reported: {view}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        error.contains("sbatch") && error.contains("partition"),
        "{error}"
    );
    // Tasks wait rather than fail, and the agent stays up.
    let f = stack.register("f", "def f(x):\n    return x\n");
    let ids = stack.submit("badpart", &f, &[json!([1])]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent is still running"
    );
    let task = stack.get(&format!("/v1/tasks/{}", ids[0])).unwrap();
    assert!(
        !["success", "failed"].contains(&task["state"].as_str().unwrap()),
        "{task}"
    );
}

#[test]
fn the_pbs_provider_runs_tasks_through_qsub() {
    if !slurm_is_up() {
        return;
    }
    let stack = Stack::start();
    write_config(
        &stack,
        "pbs",
        2,
        "  type: pbs\n  queue: debug\n  walltime: \"00:10:00\"\n  init_blocks: 1\n  min_blocks: 0\n  max_blocks: 1\n  launcher: {type: single_node}\n  status_poll_period: 2s\n",
    );
    let _agent = stack.start_endpoint("pbs");
    stack.wait_endpoint_ready("pbs");
    let view = stack.get("/v1/endpoints/pbs").unwrap();
    let job = view["blocks"][0]["job_id"].as_str().unwrap().to_owned();
    assert!(
        job.chars().all(|c| c.is_ascii_digit()),
        "qsub's job id: {job}"
    );
    let square = stack.register("square", "def square(x):\n    return x * x\n");
    let args: Vec<Value> = (0..10).map(|i| json!([i])).collect();
    let ids = stack.submit("pbs", &square, &args);
    for (i, task) in wait_all(&stack, &ids, Duration::from_secs(60))
        .iter()
        .enumerate()
    {
        assert_eq!(task["result"], json!(i * i));
    }
}
