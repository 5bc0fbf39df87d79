//! The emulated Slurm cluster under the multi-node tests: how many nodes it has, a node's
//! slurmd stopped and started again by its pid file, a dead node's manager killed by pid
//! (found through /proc, never by process name), and what `scontrol` says of a job.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The nodes the 3-node tests need.
pub const NODES: usize = 3;

/// The tests of this file use two of the three nodes each, whole (`exclusive`), and one
/// stops a node: they take turns.
static CLUSTER: Mutex<()> = Mutex::new(());

fn required() -> bool {
    std::env::var("SCIFAAS_REQUIRE_SLURM").as_deref() == Ok("1")
}

/// The cluster, for one test at a time, when Slurm answers with at least [`NODES`] nodes;
/// otherwise `None` after saying why (a failure under SCIFAAS_REQUIRE_SLURM=1). Nodes a
/// previous test left down are brought back first.
pub fn three_nodes(test: &str) -> Option<MutexGuard<'static, ()>> {
    let guard = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = match Command::new("sinfo")
        .args(["-h", "-N", "-o", "%N"])
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect::<BTreeSet<_>>(),
        _ => {
            assert!(
                !required(),
                "{test}: SCIFAAS_REQUIRE_SLURM=1 but no Slurm answers here"
            );
            eprintln!("{test}: SKIPPING: no Slurm here; start one with SCIFAAS_SLURM_NODES=3 scripts/slurm-up.sh (as root)");
            return None;
        }
    };
    if nodes.len() < NODES {
        assert!(
            !required(),
            "{test}: SCIFAAS_REQUIRE_SLURM=1 but Slurm has {} node(s) ({nodes:?}), not {NODES}: run SCIFAAS_SLURM_NODES=3 scripts/slurm-up.sh",
            nodes.len()
        );
        eprintln!("{test}: SKIPPING: Slurm has {} node(s), this test needs {NODES}; run SCIFAAS_SLURM_NODES=3 scripts/slurm-up.sh (as root)", nodes.len());
        return None;
    }
    for node in &nodes {
        bring_back(node);
    }
    Some(guard)
}

/// Where scripts/slurm-up.sh keeps its pid files.
fn pid_file(node: &str) -> PathBuf {
    let base =
        std::env::var("SCIFAAS_SLURM_BASE").unwrap_or_else(|_| "/var/tmp/scifaas-slurm".into());
    PathBuf::from(base).join(format!("run/slurmd-{node}.pid"))
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn slurmd_pid(node: &str) -> Option<i32> {
    std::fs::read_to_string(pid_file(node))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| alive(*pid))
}

/// Slurm's state of `node` (`idle`, `allocated`, `down*`, ...).
pub fn node_state(node: &str) -> String {
    let out = Command::new("sinfo")
        .args(["-h", "-N", "-n", node, "-o", "%T"])
        .output()
        .expect("sinfo runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Stops `node`'s slurmd (SIGTERM, by the pid in its pid file) and waits until it is gone.
pub fn stop_slurmd(node: &str) {
    let pid = slurmd_pid(node).unwrap_or_else(|| {
        panic!(
            "no live slurmd for {node} (pid file {})",
            pid_file(node).display()
        )
    });
    crate::common::signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "slurmd {pid} of {node} did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `node`'s slurmd when it is not running and has Slurm take the node back, then
/// waits (bounded) until the node is usable.
pub fn bring_back(node: &str) {
    if slurmd_pid(node).is_none() {
        let status = Command::new("slurmd").args(["-N", node]).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "slurmd -N {node} did not start"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = node_state(node);
        let usable = !state.is_empty()
            && !state.ends_with('*')
            && !["down", "drain", "fail", "unknown"]
                .iter()
                .any(|bad| state.starts_with(bad));
        if usable {
            return;
        }
        if state.starts_with("down") || state.starts_with("drain") {
            // What an admin does once the node is healthy again. ReturnToService=2 does
            // it on its own when slurmd registers; the update then says the state is
            // invalid, which is fine.
            let _ = Command::new("scontrol")
                .args(["update", &format!("nodename={node}"), "state=resume"])
                .output();
        }
        assert!(
            Instant::now() < deadline,
            "node {node} still {state} 60 s after its slurmd started"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Brings a node whose slurmd a test stopped back when dropped, so that a failing test
/// leaves 3 nodes too.
pub struct NodeBack(pub String);

impl Drop for NodeBack {
    fn drop(&mut self) {
        let node = &self.0;
        bring_back(node);
        // The dead node's job stays COMPLETING on it until slurmctld's next attempt to end
        // it there, up to a minute later, and holds the node meanwhile: an admin clears it
        // by taking the node down and back (nothing else of ours runs there).
        if node_state(node).starts_with("comp") {
            let nodename = format!("nodename={node}");
            for change in [
                &["state=down", "reason=scifaas-test-restarted"][..],
                &["state=resume"][..],
            ] {
                let _ = Command::new("scontrol")
                    .args(["update", &nodename])
                    .args(change)
                    .output();
            }
            bring_back(node);
        }
    }
}

/// The `KEY=VALUE` fields of `scontrol show job -o JOB`.
pub fn job_fields(job: &str) -> HashMap<String, String> {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", job])
        .output()
        .expect("scontrol runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The nodes of a Slurm host list (`n[1-2]`).
pub fn hostnames(list: &str) -> BTreeSet<String> {
    let out = Command::new("scontrol")
        .args(["show", "hostnames", list])
        .output()
        .expect("scontrol runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The job's state as squeue reports it, finished jobs included (`RUNNING`, `TIMEOUT`).
pub fn job_state(job: &str) -> String {
    let out = Command::new("squeue")
        .args(["-h", "-t", "all", "-j", job, "-o", "%T"])
        .output()
        .expect("squeue runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// When the job started, as Unix seconds.
pub fn job_start(job: &str) -> u64 {
    let start = job_fields(job)
        .remove("StartTime")
        .expect("the job has a StartTime");
    let out = Command::new("date")
        .args(["+%s", "-d", &start])
        .output()
        .expect("date runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("StartTime {start} is not a date"))
}

/// When `log` (a manager's tracing output, ANSI colours or not) says `what`: the Unix
/// time of each such line, from the timestamp it starts with.
pub fn logged_at(log: &str, what: &str) -> Vec<f64> {
    log.lines()
        .filter(|line| line.contains(what))
        .map(|line| {
            let plain: String = strip_ansi(line);
            let stamp = plain.split_whitespace().next().unwrap_or_default();
            let out = Command::new("date")
                .args(["+%s.%N", "-d", stamp])
                .output()
                .expect("date runs");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("no timestamp at the start of {line:?}"))
        })
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then one final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn proc_text(pid: i32, what: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/{what}"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The pid of the manager that runs on `node` in Slurm job `job`: the process whose
/// argv is `... manager ...` and whose environment names that node and job.
pub fn manager_pid(node: &str, job: &str) -> Option<i32> {
    let want_node = format!("SLURMD_NODENAME={node}");
    let want_job = format!("SLURM_JOB_ID={job}");
    all_pids().into_iter().find(|&pid| {
        let argv = proc_text(pid, "cmdline");
        if argv.get(1).map(String::as_str) != Some("manager") {
            return false;
        }
        let env = proc_text(pid, "environ");
        env.contains(&want_node) && env.contains(&want_job)
    })
}

/// Kills `root` and every process below it at once, as a node that dies takes them: all
/// are stopped first, so that none reacts to the others' deaths, then SIGKILLed.
pub fn kill_tree(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut tree = vec![root];
    let mut at = 0;
    while at < tree.len() {
        let parent = tree[at];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(pid, _)| *pid),
        );
        at += 1;
    }
    for pid in &tree {
        crate::common::signal(*pid, libc::SIGSTOP);
    }
    for pid in &tree {
        crate::common::signal(*pid, libc::SIGKILL);
    }
    tree
}
