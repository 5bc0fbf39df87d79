//! Tasks a manager holds beyond its workers (the interchange's prefetch) are lined up
//! behind busy workers and run back to back, and keep the manager's guarantees: each
//! runs once, a walltime still kills, and a worker lost on the way is replaced.

mod common;

use common::{config, error, task, value, whoami, Harness};
use scifaas_protocol::{ErrorKind, FunctionSpec, TaskId, TaskResult, TaskSpec};
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[test]
fn tasks_held_beyond_the_workers_all_run_once_on_the_warm_workers() {
    let mut harness = Harness::start(config(2));
    let f = whoami(None);
    let tasks: Vec<_> = (0..40)
        .map(|_| task(&f, r#"{"args":[0.01],"kwargs":{}}"#))
        .collect();
    let ids: HashSet<TaskId> = tasks.iter().map(|t| t.task_id).collect();
    let results = harness.run(tasks);
    assert_eq!(
        results.iter().map(|r| r.task_id).collect::<HashSet<_>>(),
        ids
    );
    // Both workers took part, and no other worker was started.
    let workers: HashSet<String> = results
        .iter()
        .map(|r| value(r)["token"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
    harness.shutdown();
}

#[test]
fn a_lined_up_task_keeps_its_walltime_and_the_one_behind_it_still_runs() {
    let mut harness = Harness::start(config(1));
    let f = whoami(None);
    // A first call makes the function known to run short, so that the tasks below are
    // each written to the worker behind the one before (and the one behind the stuck
    // task dies with its worker without having run).
    assert!(harness.run(vec![task(&f, r#"{"args":[],"kwargs":{}}"#)])[0].is_success());
    let first = task(&f, r#"{"args":[0.01],"kwargs":{}}"#);
    let mut stuck = task(&f, r#"{"args":[30],"kwargs":{}}"#);
    stuck.walltime_ms = Some(300);
    let last = task(&f, r#"{"args":[],"kwargs":{}}"#);
    // One worker, three tasks at once: the second waits behind the first, the third
    // behind the second.
    let started = Instant::now();
    let results = harness.run(vec![first, stuck, last]);
    assert!(results[0].is_success());
    assert_eq!(error(&results[1]).kind, ErrorKind::Walltime);
    assert!(results[2].is_success(), "the task behind a killed one runs");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the stuck task was killed at its walltime, not left to run: {:?}",
        started.elapsed()
    );
    // The killed worker was replaced, and the task written behind the stuck one ran on
    // the new worker.
    assert_ne!(value(&results[0])["token"], value(&results[2])["token"]);
    harness.shutdown();
}

/// Sends a 3 s task followed by `quick` no-op ones, and checks that all the quick ones
/// (and the `also` results still due) come back well before the long one ends. Answers
/// the results that came back early.
fn quick_tasks_pass_a_long_one(
    harness: &mut Harness,
    f: &FunctionSpec,
    quick: usize,
    also: usize,
) -> (Vec<TaskResult>, TaskSpec) {
    let long = task(f, r#"{"args":[3],"kwargs":{}}"#);
    let mut tasks = vec![long.clone()];
    tasks.extend((0..quick).map(|_| task(f, r#"{"args":[],"kwargs":{}}"#)));
    let sent = Instant::now();
    harness.send_tasks(tasks);
    let early = harness.results(quick + also, Duration::from_secs(10));
    assert!(
        sent.elapsed() < Duration::from_millis(2500),
        "quick results took {:?}",
        sent.elapsed()
    );
    assert!(early.iter().all(|r| r.task_id != long.task_id));
    (early, long)
}

#[test]
fn results_held_for_company_still_go_out_while_a_long_task_runs() {
    let mut harness = Harness::start(config(2));
    let f = whoami(None);
    // While the long task runs, each quick result may wait a little for others, but not
    // for the long task.
    let (early, long) = quick_tasks_pass_a_long_one(&mut harness, &f, 20, 0);
    assert_eq!(
        early
            .iter()
            .map(|r| r.task_id)
            .collect::<HashSet<_>>()
            .len(),
        20
    );
    let last = harness.results(1, Duration::from_secs(10));
    assert_eq!(last[0].task_id, long.task_id);
    harness.shutdown();
}

#[test]
fn no_task_is_written_behind_a_function_known_to_run_long() {
    let mut harness = Harness::start(config(2));
    let f = whoami(None);
    // Both workers see the function take 0.3 s: long enough not to have a task written
    // behind it. While they are busy, a long task and quick ones line up; the worker
    // that frees first takes the long one and must not take a quick one along.
    let busy: Vec<_> = (0..2)
        .map(|_| task(&f, r#"{"args":[0.3],"kwargs":{}}"#))
        .collect();
    harness.send_tasks(busy);
    std::thread::sleep(Duration::from_millis(100));
    // Every quick task runs on the other worker, none waits behind the long one.
    quick_tasks_pass_a_long_one(&mut harness, &f, 10, 2);
    harness.shutdown();
}
