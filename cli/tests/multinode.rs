//! Multi-node pilots on a real Slurm whose nodes n1..n3 are emulated on this machine, each
//! its own slurmd (`SCIFAAS_SLURM_NODES=3 scripts/slurm-up.sh`, which `scripts/test.sh`
//! runs as root). Blocks of two nodes with the srun launcher: one manager per node, both
//! used; scaling that counts nodes; a node that dies under its tasks; a block that
//! reaches its walltime. Without Slurm, or with fewer than three nodes, these tests say so
//! and pass, unless SCIFAAS_REQUIRE_SLURM=1 makes that a failure.
//!
//! The tests take turns (each holds two of the three nodes whole), and put back any node
//! they stopped, also when they fail.

#[path = "multinode/cluster.rs"]
mod cluster;
mod common;
#[path = "multinode/watch.rs"]
mod watch;

use cluster::NodeBack;
use common::Stack;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};
use watch::{block, finished_since, marks, nodes_in, unix_now, view, wait_block_up};

/// Heartbeats of every endpoint here: a silent manager is lost 3 s after it was last heard.
const HEARTBEAT_PERIOD_S: u64 = 1;
const HEARTBEAT_THRESHOLD_S: u64 = 3;

/// A two-node-block Slurm endpoint: `workers` per node, `retries` of a task lost with its
/// manager, `provider` lines (indented two spaces) added under `provider:`.
fn write_config(stack: &Stack, name: &str, workers: u32, retries: u32, provider: &str) {
    let dir = stack.endpoint_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "service_url: {url}
engine:
  max_workers_per_node: {workers}
  heartbeat_period: {HEARTBEAT_PERIOD_S}s
  heartbeat_threshold: {HEARTBEAT_THRESHOLD_S}s
  max_retries_on_system_failure: {retries}
provider:
  type: slurm
  partition: debug
  exclusive: true
  nodes_per_block: 2
  launcher: {{type: srun}}
  min_blocks: 0
  max_blocks: 1
  status_poll_period: 2s
{provider}strategy:
  period: 1s
  max_idletime: 120s
",
        url = stack.url
    );
    std::fs::write(dir.join("config.yaml"), text).unwrap();
}

/// Where a task ran: its node and Slurm job, with marks `I-NODE-PID.start` and `.end` in
/// `marks` around its nap, so that a run cut short shows.
const WHERE: &str = "def where(i, nap, marks):
    import os, time
    node = os.environ.get('SLURMD_NODENAME', '?')
    tag = os.path.join(marks, '%s-%s-%d' % (i, node, os.getpid()))
    open(tag + '.start', 'w').close()
    time.sleep(nap)
    open(tag + '.end', 'w').close()
    return {'i': i, 'node': node, 'job': os.environ.get('SLURM_JOB_ID', '?')}
";

#[test]
fn a_two_node_block_runs_one_manager_per_node_and_uses_both() {
    let Some(_cluster) = cluster::three_nodes("multinode") else {
        return;
    };
    let stack = Stack::start();
    write_config(
        &stack,
        "pair",
        2,
        1,
        "  walltime: \"00:10:00\"\n  init_blocks: 1\n",
    );
    let _agent = stack.start_endpoint("pair");
    wait_block_up(&stack, "pair", "block-0", Duration::from_secs(120));
    // Node workers come from the interchange's periodic snapshot, which may lag the
    // registration by up to one status period: wait (bounded) for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let view = loop {
        let view = wait_block_up(&stack, "pair", "block-0", Duration::from_secs(10));
        let reported = block(&view, "block-0").unwrap()["nodes"]
            .as_array()
            .is_some_and(|nodes| nodes.iter().all(|n| n["workers"] != 0));
        if reported || std::time::Instant::now() > deadline {
            break view;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let block0 = block(&view, "block-0").unwrap();
    let job = block0["job_id"].as_str().unwrap().to_owned();
    let hosts: BTreeSet<String> = nodes_in(block0, "up").into_iter().collect();
    assert_eq!(hosts.len(), 2, "one manager per node: {view}");
    // The nodes the managers name are the ones Slurm gave the job, and each manager
    // reports the block's job.
    let allocated = cluster::hostnames(&cluster::job_fields(&job)["NodeList"]);
    assert_eq!(hosts, allocated, "{view}");
    for node in block0["nodes"].as_array().unwrap() {
        assert_eq!(node["job_id"], job.as_str(), "{node}");
        assert_eq!(node["workers"], 2, "{node}");
    }
    assert_eq!(block0["requested_nodes"], 2);
    assert_eq!(view["managers"].as_array().unwrap().len(), 2);

    let marks_dir = stack.home.path().join("marks");
    std::fs::create_dir_all(&marks_dir).unwrap();
    let f = stack.register("where", WHERE);
    let args: Vec<Value> = (0..8).map(|i| json!([i, 1.0, marks_dir])).collect();
    let ids = stack.submit("pair", &f, &args);
    let mut used = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        let task = stack.wait_task(id, Duration::from_secs(60));
        assert_eq!(task["state"], "success", "{task}");
        assert_eq!(task["result"]["i"], i);
        assert_eq!(task["result"]["job"], job.as_str());
        used.insert(task["result"]["node"].as_str().unwrap().to_owned());
    }
    assert_eq!(used, hosts, "both nodes ran tasks");

    // `scifaas endpoint status` shows the block with both nodes and their workers.
    let out = stack
        .command()
        .args(["endpoint", "status", "pair"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown_block = block(&shown, "block-0").expect("block-0 shown");
    let shown_nodes: BTreeSet<String> = shown_block["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["workers"], 2, "{n}");
            assert_eq!(
                n["busy_workers"].as_u64().unwrap() + n["idle_workers"].as_u64().unwrap(),
                2
            );
            n["host"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(shown_nodes, hosts, "{shown}");
    assert_eq!(shown["workers"]["total"], 4, "{shown}");
}

#[test]
fn scaling_counts_nodes_and_asks_for_no_block_slurm_cannot_place() {
    let Some(_cluster) = cluster::three_nodes("multinode") else {
        return;
    };
    let stack = Stack::start();
    // One two-node block fits the three nodes; the tasks want ten.
    write_config(
        &stack,
        "scale",
        2,
        1,
        "  walltime: \"00:10:00\"\n  init_blocks: 0\n",
    );
    let _agent = stack.start_endpoint("scale");
    let deadline = Instant::now() + Duration::from_secs(30);
    while view(&stack, "scale")["connected"] != true {
        assert!(Instant::now() < deadline, "agent did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }
    let marks_dir = stack.home.path().join("marks");
    std::fs::create_dir_all(&marks_dir).unwrap();
    let f = stack.register("where", WHERE);
    let args: Vec<Value> = (0..40).map(|i| json!([i, 0.3, marks_dir])).collect();
    let ids = stack.submit("scale", &f, &args);
    let mut jobs_seen = BTreeSet::new();
    let mut registered_seen = BTreeSet::new();
    let started = Instant::now();
    loop {
        let view = view(&stack, "scale");
        let blocks = view["blocks"].as_array().cloned().unwrap_or_default();
        assert!(blocks.len() <= 1, "max_blocks: 1, yet {view}");
        for b in &blocks {
            jobs_seen.insert(b["job_id"].as_str().unwrap().to_owned());
            registered_seen.insert(b["managers"].as_u64().unwrap());
        }
        let done = stack.post("/v1/tasks/status", &json!({"task_ids": ids})).1["tasks"]
            .as_object()
            .map(|t| t.values().filter(|v| v["state"] == "success").count())
            .unwrap_or(0);
        if done == ids.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{done}/40 done after 180 s: {view}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let dirs: Vec<String> = std::fs::read_dir(stack.endpoint_dir("scale").join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(dirs, vec!["block-0"], "one sbatch in all");
    assert_eq!(jobs_seen.len(), 1, "{jobs_seen:?}");
    let job = jobs_seen.first().unwrap();
    assert_eq!(cluster::job_fields(job)["NumNodes"], "2");
    let nodes: BTreeSet<String> = marks(&marks_dir, ".end")
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(nodes.len(), 2, "both nodes worked: {nodes:?}");
    eprintln!(
        "40 tasks on one 2-node block in {:.1?}; registered managers seen: {registered_seen:?}",
        started.elapsed()
    );
}

/// Kills one node of a running two-node block under its tasks; `retries` is
/// `max_retries_on_system_failure`.
fn a_node_dies_under_its_tasks(retries: u32) {
    let test = format!("multinode (node failure, {retries} retries)");
    let Some(_cluster) = cluster::three_nodes(&test) else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("SCIFAAS_REQUIRE_SLURM").as_deref() != Ok("1"),
            "{test}: stopping a slurmd needs root"
        );
        eprintln!("{test}: SKIPPING: stopping a slurmd needs root");
        return;
    }
    let stack = Stack::start();
    let name = format!("fail{retries}");
    write_config(
        &stack,
        &name,
        2,
        retries,
        "  walltime: \"00:10:00\"\n  init_blocks: 1\n",
    );
    let _agent = stack.start_endpoint(&name);
    let view0 = wait_block_up(&stack, &name, "block-0", Duration::from_secs(120));
    let job = block(&view0, "block-0").unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The node that does not run the job script dies: the job lives on, half-dead.
    let batch_host = cluster::job_fields(&job)["BatchHost"].clone();
    let hosts = nodes_in(block(&view0, "block-0").unwrap(), "up");
    let victim = hosts.iter().find(|h| **h != batch_host).unwrap().clone();
    let survivor = batch_host;

    let marks_dir = stack.home.path().join("marks");
    std::fs::create_dir_all(&marks_dir).unwrap();
    let f = stack.register("where", WHERE);
    let cursor = stack.get("/v1/results").unwrap()["cursor"]
        .as_u64()
        .unwrap();
    // Two workers per node, no prefetch: two tasks run on each node.
    let args: Vec<Value> = (0..4).map(|i| json!([i, 6.0, marks_dir])).collect();
    let ids = stack.submit(&name, &f, &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while marks(&marks_dir, ".start").len() < 4 {
        assert!(
            Instant::now() < deadline,
            "4 tasks not running: {:?}",
            marks(&marks_dir, ".start")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let on_victim: BTreeSet<u64> = marks(&marks_dir, ".start")
        .into_iter()
        .filter(|(_, n)| *n == victim)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(on_victim.len(), 2, "{:?}", marks(&marks_dir, ".start"));

    // The node dies: its slurmd, then its manager and workers, at once.
    let _back = NodeBack(victim.clone());
    let manager = cluster::manager_pid(&victim, &job).expect("the victim's manager");
    cluster::stop_slurmd(&victim);
    let killed = cluster::kill_tree(manager);
    let died = Instant::now();
    let died_at = unix_now();
    eprintln!(
        "{test}: {victim} died (slurmd stopped, manager {manager} and {} more killed)",
        killed.len() - 1
    );

    // Detection: the interchange declares the manager lost after the heartbeat threshold.
    let detected = loop {
        let v = view(&stack, &name);
        if let Some(b) = block(&v, "block-0") {
            if nodes_in(b, "lost") == vec![victim.clone()] {
                assert_eq!(b["state"], "draining", "{b}");
                let message = b["message"].as_str().unwrap_or_default();
                assert!(message.contains(&format!("node {victim} lost")), "{b}");
                break died.elapsed();
            }
        }
        assert!(
            died.elapsed() < Duration::from_secs(30),
            "not detected: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // New work from now on needs a new block: the survivor takes none.
    let after = stack
        .submit(&name, &f, &[json!([9, 0.1, marks_dir])])
        .remove(0);

    // Watch recovery: the half-dead job leaves RUNNING once its survivor is gone (it is
    // cancelled, never under a task), a new block comes up on two live nodes, and every
    // task ends.
    let mut all = ids.clone();
    all.push(after.clone());
    let deadline = Instant::now() + Duration::from_secs(240);
    let (mut cancelled_at, mut replaced_at, mut finished_at) = (None, None, None);
    while cancelled_at.is_none() || replaced_at.is_none() || finished_at.is_none() {
        let state = cluster::job_state(&job);
        if cancelled_at.is_none() && !["RUNNING", "PENDING"].contains(&state.as_str()) {
            cancelled_at = Some(died.elapsed());
        }
        let v = view(&stack, &name);
        if let Some(b) = block(&v, "block-1").filter(|b| nodes_in(b, "up").len() == 2) {
            if replaced_at.is_none() {
                replaced_at = Some(died.elapsed());
                assert!(
                    !nodes_in(b, "up").contains(&victim),
                    "placed on the dead node: {v}"
                );
            }
        }
        let terminal = stack.post("/v1/tasks/status", &json!({"task_ids": all})).1["tasks"]
            .as_object()
            .map(|t| {
                t.values()
                    .filter(|v| ["success", "failed"].contains(&v["state"].as_str().unwrap_or("")))
                    .count()
            })
            .unwrap_or(0);
        if finished_at.is_none() && terminal == all.len() {
            finished_at = Some(died.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "old job {job} {state}, replacement {:?}, {terminal}/5 tasks ended: {v}",
            block(&v, "block-1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every task ended once: the victim's retried (or failed as lost), the survivor's
    // finished where they ran.
    let finished = finished_since(&stack, cursor, 5, Duration::from_secs(30));
    let mut once: HashMap<&str, usize> = HashMap::new();
    for task in &finished {
        *once.entry(task["task_id"].as_str().unwrap()).or_default() += 1;
    }
    assert_eq!(once.len(), 5, "{finished:?}");
    assert!(
        once.values().all(|n| *n == 1),
        "a task finished twice: {once:?}"
    );
    for (i, id) in ids.iter().enumerate() {
        let task = stack.wait_task(id, Duration::from_secs(5));
        let i = i as u64;
        if !on_victim.contains(&i) {
            assert_eq!(task["state"], "success", "{task}");
            assert_eq!(task["result"]["node"], survivor.as_str(), "{task}");
        } else if retries > 0 {
            assert_eq!(task["state"], "success", "{task}");
            assert_ne!(task["result"]["node"], victim.as_str(), "{task}");
        } else {
            assert_eq!(task["state"], "failed", "{task}");
            let message = task["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("manager lost (node {victim}, block block-0")),
                "{task}"
            );
        }
    }
    // Nothing on the survivor was cut short: each of its runs started once and ended.
    let survivor_runs = |suffix| {
        marks(&marks_dir, suffix)
            .into_iter()
            .filter(|(i, n)| *i < 4 && *n == survivor && !on_victim.contains(i))
            .collect::<Vec<_>>()
    };
    assert_eq!(survivor_runs(".start").len(), 2);
    assert_eq!(survivor_runs(".start"), survivor_runs(".end"));
    let task = stack.wait_task(&after, Duration::from_secs(5));
    assert_eq!(task["state"], "success", "{task}");
    assert_ne!(task["result"]["job"], job.as_str(), "{task}");
    // The agent's own account: when the interchange declared the manager lost, and when
    // the agent cancelled the drained block.
    let log = std::fs::read_to_string(stack.home.path().join(format!("{name}-agent.log"))).unwrap();
    let lost = cluster::logged_at(&log, "manager lost:");
    assert_eq!(lost.len(), 1, "one manager lost:\n{log}");
    let lost_after = lost[0] - died_at;
    assert!(
        lost_after >= HEARTBEAT_THRESHOLD_S as f64 - HEARTBEAT_PERIOD_S as f64 - 0.5,
        "lost {lost_after:.1} s after the death: before the threshold?\n{log}"
    );
    let cancelled = cluster::logged_at(&log, "drained: cancelling the block's job");
    assert_eq!(cancelled.len(), 1, "{log}");
    assert!(
        !block(&view(&stack, &name), "block-0").is_some_and(|b| b["state"] == "running"),
        "block-0 is not counted as running"
    );
    eprintln!(
        "{test}: heartbeat {HEARTBEAT_PERIOD_S}s/{HEARTBEAT_THRESHOLD_S}s; after the node died: manager declared lost at {lost_after:.1} s (endpoint view {detected:.1?}); survivor drained and block cancelled at {:.1} s; half-dead job {job} off RUNNING at {:.1?}; replacement up on two nodes at {:.1?}; every task (and one sent after the loss) ended at {:.1?}",
        cancelled[0] - died_at,
        cancelled_at.unwrap(),
        replaced_at.unwrap(),
        finished_at.unwrap()
    );
}

#[test]
fn a_dead_nodes_tasks_are_retried_and_its_block_replaced() {
    a_node_dies_under_its_tasks(1);
}

#[test]
fn a_dead_nodes_tasks_fail_as_manager_lost_without_retries() {
    a_node_dies_under_its_tasks(0);
}

/// Runs once past the pilot's walltime (its first run sleeps until Slurm ends the job),
/// then answers where it ran.
const LINGER: &str = "def linger(marker):
    import os, time
    if not os.path.exists(marker):
        open(marker, 'w').close()
        time.sleep(600)
    return {'node': os.environ.get('SLURMD_NODENAME', '?'), 'job': os.environ.get('SLURM_JOB_ID', '?')}
";

#[test]
fn every_manager_of_a_block_drains_before_its_walltime_and_it_ends_as_timeout() {
    let Some(_cluster) = cluster::three_nodes("multinode (walltime)") else {
        return;
    };
    let stack = Stack::start();
    // Slurm's shortest walltime: the managers stop taking work 5 s before it ends.
    write_config(
        &stack,
        "wall",
        1,
        1,
        "  walltime: \"00:01:00\"\n  init_blocks: 1\n",
    );
    let _agent = stack.start_endpoint("wall");
    let view0 = wait_block_up(&stack, "wall", "block-0", Duration::from_secs(120));
    let job = block(&view0, "block-0").unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ends_at = cluster::job_start(&job) + 60;
    let linger = stack.register("linger", LINGER);
    let marker = stack.home.path().join("linger-ran");
    let long = stack.submit("wall", &linger, &[json!([marker])]).remove(0);

    // Watch both managers in the endpoint view: each stops taking work (the idle one
    // then leaves at once) while the job still runs; neither is lost.
    let mut drained = BTreeSet::new();
    let mut left = BTreeSet::new();
    while drained.len() + left.len() < 2 {
        let v = view(&stack, "wall");
        let b = block(&v, "block-0").cloned().unwrap_or_default();
        assert!(nodes_in(&b, "lost").is_empty(), "{v}");
        for m in v["managers"].as_array().into_iter().flatten() {
            if m["block_id"] == "block-0" && m["draining"] == true {
                drained.insert(m["host"].as_str().unwrap().to_owned());
            }
        }
        let up: BTreeSet<String> = ["up", "draining"]
            .iter()
            .flat_map(|s| nodes_in(&b, s))
            .collect();
        for node in nodes_in(block(&view0, "block-0").unwrap(), "up") {
            if !up.contains(&node) && !drained.contains(&node) {
                left.insert(node);
            }
        }
        let state = cluster::job_state(&job);
        assert_eq!(state, "RUNNING", "drained {drained:?}, left {left:?}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Work that arrives now waits for a new block rather than go to a draining manager.
    let where_ = stack.register("where", WHERE);
    let late_marks = stack.home.path().join("late");
    std::fs::create_dir_all(&late_marks).unwrap();
    let late = stack
        .submit("wall", &where_, &[json!([0, 0.1, late_marks])])
        .remove(0);

    // Slurm ends the job at its walltime (it checks every 30 s): TIMEOUT, not a failure.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let state = cluster::job_state(&job);
        if state == "TIMEOUT" {
            break;
        }
        assert!(
            ["RUNNING", "COMPLETING"].contains(&state.as_str()),
            "job {job} ended {state}, not TIMEOUT"
        );
        assert!(Instant::now() < deadline, "job {job} still {state}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The task the walltime cut short ran again on a new block, as did the late one.
    for id in [&long, &late] {
        let task = stack.wait_task(id, Duration::from_secs(150));
        assert_eq!(task["state"], "success", "{task}");
        assert_ne!(task["result"]["job"], job.as_str(), "{task}");
    }
    let v = view(&stack, "wall");
    assert!(v["submit_error"].is_null() && v["paused"].is_null(), "{v}");
    // When each manager stopped taking work, by its own log: before the walltime.
    let log = std::fs::read_to_string(stack.endpoint_dir("wall").join("blocks/block-0/stderr"))
        .unwrap_or_default()
        + &std::fs::read_to_string(stack.endpoint_dir("wall").join("blocks/block-0/stdout"))
            .unwrap_or_default();
    let drains = cluster::logged_at(&log, "walltime is near");
    assert_eq!(
        drains.len(),
        2,
        "both managers drained on their own:\n{log}"
    );
    let margins: Vec<String> = drains
        .iter()
        .map(|at| {
            assert!(
                *at < ends_at as f64,
                "drained at {at}, walltime ends at {ends_at}:\n{log}"
            );
            format!("{:.1} s", ends_at as f64 - at)
        })
        .collect();
    eprintln!(
        "walltime: the managers of job {job} stopped taking work {margins:?} before its walltime; one left, one held a task until Slurm ended the job as TIMEOUT; drained {drained:?}, left {left:?}"
    );
}
