//! A batch system ending a pilot (`scancel`, a preemption) sends SIGTERM to every process
//! of the job, workers and manager alike, in no particular order. A worker killed that
//! way has not failed its task: the task must go down with the manager (the interchange
//! retries it elsewhere), not come back as "worker died (signal 15)". A worker that
//! someone else SIGTERMs while its manager carries on still fails its task.
//!
//! One test in its own binary: it signals this test process, where the manager under
//! test has taken SIGTERM over.

mod common;

use bytes::Bytes;
use common::{config, error, task, Harness};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use scifaas_protocol::{ErrorKind, FunctionId, FunctionSpec, TaskSpec};
use std::path::Path;
use std::time::{Duration, Instant};

const HOLD: &str = r#"
def hold(path, seconds):
    import os, time
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "held"
"#;

fn hold_task(pid_file: &Path) -> TaskSpec {
    let function = FunctionSpec {
        id: FunctionId::new(),
        hash: format!("hold-{}", FunctionId::new()),
        name: "hold".into(),
        source: Bytes::from_static(HOLD.as_bytes()),
        container: None,
    };
    let payload = serde_json::json!({"args": [pid_file, 60], "kwargs": {}});
    task(&function, &payload.to_string())
}

/// The pid of the worker running the `hold` task that writes `pid_file`.
fn worker_pid(pid_file: &Path) -> Pid {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Pid::from_raw(pid);
        }
        assert!(
            Instant::now() < deadline,
            "the worker never started the task"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_sigtermed_with_its_manager_leaves_its_task_unreported_and_alone_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = Harness::start(config(1));

    // Only the worker is signalled: after the grace, its task fails as a worker death.
    let alone = dir.path().join("alone.pid");
    let held = hold_task(&alone);
    harness.send_tasks(vec![held.clone()]);
    kill(worker_pid(&alone), Signal::SIGTERM).unwrap();
    let results = harness.results(1, Duration::from_secs(10));
    assert_eq!(results[0].task_id, held.task_id);
    let failure = error(&results[0]);
    assert_eq!(failure.kind, ErrorKind::WorkerDied, "{failure:?}");
    assert!(failure.message.contains("signal 15"), "{failure:?}");

    // The job ends: the worker's SIGTERM lands first (the race the grace is for), the
    // manager's a moment later. The task is not reported, and the manager exits.
    let with_manager = dir.path().join("with-manager.pid");
    harness.send_tasks(vec![hold_task(&with_manager)]);
    let pid = worker_pid(&with_manager);
    kill(pid, Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    kill(Pid::this(), Signal::SIGTERM).unwrap();
    let reported = harness.results_within(Duration::from_millis(1500));
    assert!(
        reported.is_empty(),
        "a task whose worker died with its pilot was reported: {reported:?}"
    );
    harness
        .join(Duration::from_secs(10))
        .expect("the manager ends cleanly on SIGTERM");
}
