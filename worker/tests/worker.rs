//! Behaviour of real `python3` workers driven through `scifaas_worker::Worker`.
//!
//! The interpreter is `python3` from PATH, or `SCIFAAS_TEST_PYTHON`.

use bytes::Bytes;
use scifaas_protocol::{ErrorKind, FunctionId, FunctionSpec, Outcome, TaskError, TaskId, TaskSpec};
use scifaas_worker::{Worker, WorkerCommand, WorkerError, WorkerExit, WorkerOptions, WorkerReply};
use std::thread;
use std::time::{Duration, Instant};

fn python() -> WorkerCommand {
    WorkerCommand::new(std::env::var("SCIFAAS_TEST_PYTHON").unwrap_or_else(|_| "python3".into()))
}

fn spawn() -> Worker {
    Worker::spawn(&python()).expect("python3 worker starts")
}

fn function(name: &str, source: &str) -> FunctionSpec {
    FunctionSpec {
        id: FunctionId::new(),
        hash: format!("{name}-{}", FunctionId::new()),
        name: name.into(),
        source: Bytes::copy_from_slice(source.as_bytes()),
        container: None,
    }
}

fn task(function: &FunctionSpec, payload: &str) -> TaskSpec {
    TaskSpec {
        task_id: TaskId::new(),
        function: function.clone(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        walltime_ms: None,
        retries: 0,
    }
}

fn success(reply: &WorkerReply) -> &[u8] {
    match &reply.outcome {
        Outcome::Success(body) => body,
        Outcome::Failure(error) => panic!("task failed: {error:?}"),
    }
}

fn failure(reply: &WorkerReply) -> &TaskError {
    match &reply.outcome {
        Outcome::Failure(error) => error,
        Outcome::Success(body) => panic!("task succeeded: {body:?}"),
    }
}

const IDENTITY: &str = "def identity(x):\n    return x\n";

#[test]
fn a_function_returns_its_input() {
    let mut worker = spawn();
    assert!(worker.python_version().starts_with('3'));
    let identity = function("identity", IDENTITY);
    let task = task(
        &identity,
        r#"{"args": [{"a": [1, 2.5, null], "s": "h\u00e9"}]}"#,
    );
    let reply = worker.run(&task).unwrap();
    assert_eq!(reply.task_id, task.task_id);
    assert_eq!(
        success(&reply),
        "{\"a\":[1,2.5,null],\"s\":\"hé\"}".as_bytes()
    );
    let result = reply.into_task_result();
    assert!(result.is_success());
    assert!(result.timing.exec_start > 1_600_000_000_000_000);
    assert!(result.timing.exec_start <= result.timing.exec_end);
}

#[test]
fn a_warm_call_does_not_resend_the_source() {
    let mut worker = spawn();
    let source = "import itertools\n_calls = itertools.count(1)\n\
                  def counted():\n    return next(_calls)\n";
    let counted = function("counted", source);
    assert!(!worker.has_function(&counted.hash));
    assert_eq!(success(&worker.run(&task(&counted, "{}")).unwrap()), b"1");
    assert!(worker.has_function(&counted.hash));

    // Same hash, no source at all: only the worker's cache can answer this, and the
    // module state carried over shows the source was not executed again.
    let mut sourceless = counted.clone();
    sourceless.source = Bytes::new();
    assert_eq!(
        success(&worker.run(&task(&sourceless, "{}")).unwrap()),
        b"2"
    );
}

#[test]
fn a_worker_that_lost_a_function_gets_its_source_again() {
    let mut worker = spawn();
    let identity = function("identity", IDENTITY);
    assert_eq!(
        success(&worker.run(&task(&identity, r#"{"args": [1]}"#)).unwrap()),
        b"1"
    );
    // Empties the worker's cache behind the manager's back.
    let forget = function(
        "forget",
        "import gc\ndef forget():\n    for o in gc.get_objects():\n        \
         if type(o).__name__ == 'FunctionCache':\n            o._functions.clear()\n",
    );
    success(&worker.run(&task(&forget, "{}")).unwrap());
    assert!(worker.has_function(&identity.hash));
    assert_eq!(
        success(&worker.run(&task(&identity, r#"{"args": [2]}"#)).unwrap()),
        b"2"
    );
}

/// What the function was given, by type and repr, as Python sees it.
const DESCRIBE: &str = "def describe(*args, **kwargs):\n    \
                        seen = lambda v: [type(v).__name__, repr(v)]\n    \
                        return [[seen(a) for a in args], {k: seen(v) for k, v in kwargs.items()}]\n";

#[test]
fn arguments_arrive_as_json_loads_reads_them_pickled_or_not() {
    let mut worker = spawn();
    let describe = function("describe", DESCRIBE);
    // The manager sends most payloads as pickles, and some as JSON (integers beyond 64
    // bits, -0, lone surrogates): the function sees the same values either way.
    let big = "x".repeat(300_000);
    for (payload, expected) in [
        (
            format!(r#"{{"args": [1.5, "{big}"], "kwargs": {{"n": -3, "z": null}}}}"#),
            format!(
                r#"[[["float","1.5"],["str","'{big}'"]],{{"n":["int","-3"],"z":["NoneType","None"]}}]"#
            ),
        ),
        (
            r#"{"args": [18446744073709551616, -0, "\ud800", 1e400]}"#.to_string(),
            r#"[[["int","18446744073709551616"],["int","0"],["str","'\\ud800'"],["float","inf"]],{}]"#
                .to_string(),
        ),
        (
            r#"{"args": [[true, {"k": 2, "k": 3}], 0.1]}"#.to_string(),
            r#"[[["list","[True, {'k': 3}]"],["float","0.1"]],{}]"#.to_string(),
        ),
    ] {
        let reply = worker.run(&task(&describe, &payload)).unwrap();
        assert_eq!(String::from_utf8_lossy(success(&reply)), expected);
    }
}

#[test]
fn prints_even_on_fd_1_do_not_corrupt_the_stream_and_stdout_is_returned() {
    let mut worker = spawn();
    let source = r#"
import os, sys
def noisy(n):
    for i in range(n):
        print("line", i)
    print("warning!", file=sys.stderr)
    os.write(1, b"straight to fd 1, as C code would\n" * 20000)
    os.system("echo from a child process; echo on its stderr >&2")
    return n
"#;
    let noisy = function("noisy", source);
    let reply = worker.run(&task(&noisy, r#"{"args": [5000]}"#)).unwrap();
    assert_eq!(success(&reply), b"5000");
    assert!(reply.stdout.starts_with("line 0\nline 1\n"));
    assert!(reply.stdout.ends_with("line 4999\n"));
    assert_eq!(reply.stderr, "warning!\n");
    // Still in step for the next task.
    let reply = worker.run(&task(&noisy, r#"{"args": [1]}"#)).unwrap();
    assert_eq!(success(&reply), b"1");
}

#[test]
fn an_exception_comes_back_with_its_traceback() {
    let mut worker = spawn();
    let source =
        "def divide(a, b):\n    return inner(a, b)\n\ndef inner(a, b):\n    return a / b\n";
    let divide = function("divide", source);
    let reply = worker.run(&task(&divide, r#"{"args": [1, 0]}"#)).unwrap();
    let error = failure(&reply);
    assert_eq!(error.kind, ErrorKind::FunctionException);
    assert_eq!(error.type_name, "ZeroDivisionError");
    assert_eq!(error.message, "division by zero");
    let traceback = error.traceback.as_deref().unwrap();
    assert!(
        traceback.contains("in inner\n    return a / b"),
        "{traceback}"
    );
    assert!(!traceback.contains("scifaas_worker"), "{traceback}");
    assert!(worker.is_usable());
}

#[test]
fn source_that_does_not_define_the_name_is_a_definition_error() {
    let mut worker = spawn();
    let foo = function("foo", "def bar():\n    return 1\n");
    let reply = worker.run(&task(&foo, "{}")).unwrap();
    let error = failure(&reply);
    assert_eq!(error.kind, ErrorKind::FunctionDefinition);
    assert_eq!(
        error.message,
        "source does not define a function named 'foo'"
    );
    assert!(!worker.has_function(&foo.hash));

    let broken = function("broken", "def broken(:\n");
    let error = failure(&worker.run(&task(&broken, "{}")).unwrap()).clone();
    assert_eq!(error.kind, ErrorKind::FunctionDefinition);
    assert_eq!(error.type_name, "SyntaxError");
}

#[test]
fn a_result_that_is_not_json_is_a_serialization_error() {
    let mut worker = spawn();
    let make_set = function("make_set", "def make_set():\n    return {1, 2}\n");
    let reply = worker.run(&task(&make_set, "{}")).unwrap();
    let error = failure(&reply);
    assert_eq!(error.kind, ErrorKind::Serialization);
    assert!(error.message.contains("set"), "{}", error.message);

    let identity = function("identity", IDENTITY);
    let reply = worker.run(&task(&identity, "{not json")).unwrap();
    assert_eq!(failure(&reply).kind, ErrorKind::Serialization);
}

#[test]
fn a_worker_killed_mid_task_reports_signal_9() {
    let mut worker = spawn();
    let sleepy = function(
        "sleepy",
        "import sys, time\ndef sleepy():\n    sys.__stderr__.write('going to sleep\\n')\n    time.sleep(60)\n",
    );
    let killer = worker.killer();
    let watchdog = thread::spawn(move || {
        thread::sleep(Duration::from_millis(500));
        killer.kill()
    });
    let started = Instant::now();
    let error = worker.run(&task(&sleepy, "{}")).unwrap_err();
    assert!(watchdog.join().unwrap(), "the kill was sent");
    assert!(started.elapsed() < Duration::from_secs(20));
    let WorkerError::Died {
        exit,
        killed,
        ref stderr,
    } = error
    else {
        panic!("not a death: {error}")
    };
    assert_eq!(exit, WorkerExit::Signal(9));
    assert!(killed);
    assert!(stderr.contains("going to sleep"), "{stderr}");
    assert!(
        error.to_string().starts_with("worker died (signal 9)"),
        "{error}"
    );
    assert_eq!(error.to_task_error().kind, ErrorKind::WorkerDied);

    assert!(!worker.is_usable());
    let identity = function("identity", IDENTITY);
    assert!(matches!(
        worker.run(&task(&identity, "{}")),
        Err(WorkerError::Unusable(_))
    ));
    assert!(!worker.killer().kill(), "a reaped worker is not signalled");
}

#[test]
fn a_task_written_ahead_starts_as_the_one_before_it_ends() {
    let mut worker = spawn();
    let stamp = function(
        "stamp",
        "import time\ndef stamp(x):\n    time.sleep(0.05)\n    return [x, time.time()]\n",
    );
    let (first, second, third) = (
        task(&stamp, r#"{"args": [1]}"#),
        task(&stamp, r#"{"args": [2]}"#),
        task(&stamp, r#"{"args": [3]}"#),
    );
    // The first carries the source and the second, written ahead, carries it too (the
    // worker has not answered yet): both define nothing twice.
    let (reply, sent) = worker.run_and_send_ahead(&first, [&second]);
    assert_eq!(sent, 1);
    let reply = reply.unwrap();
    assert_eq!(reply.task_id, first.task_id);
    // The second runs while nobody asks for it.
    thread::sleep(Duration::from_millis(200));
    let asked_at = scifaas_protocol::time::now_micros();
    let (reply2, sent) = worker.run_and_send_ahead(&second, [&third]);
    assert_eq!(sent, 1);
    let reply2 = reply2.unwrap();
    assert_eq!(reply2.task_id, second.task_id);
    assert!(reply.exec_end <= reply2.exec_start && reply2.exec_end < asked_at);
    let value: serde_json::Value = serde_json::from_slice(success(&reply2)).unwrap();
    assert_eq!(value[0], 2);
    let (reply3, sent) = worker.run_and_send_ahead(&third, &[]);
    assert_eq!(sent, 0);
    assert_eq!(reply3.unwrap().task_id, third.task_id);
    // A task other than the one written ahead is refused and the worker replaced.
    let (_, sent) = worker.run_and_send_ahead(&first, [&second]);
    assert_eq!(sent, 1);
    let (error, _) = worker.run_and_send_ahead(&third, &[]);
    assert!(matches!(error, Err(WorkerError::Protocol(_))), "{error:?}");
    assert!(!worker.is_usable());
}

#[test]
fn several_tasks_written_ahead_run_in_order_each_as_the_one_before_ends() {
    let mut worker = spawn();
    let stamp = function(
        "stamp",
        "import time\ndef stamp(x):\n    time.sleep(0.02)\n    return [x, time.time()]\n",
    );
    let tasks: Vec<_> = (0..5)
        .map(|i| task(&stamp, &format!(r#"{{"args": [{i}]}}"#)))
        .collect();
    let (reply, sent) = worker.run_and_send_ahead(&tasks[0], &tasks[1..]);
    assert_eq!(sent, 4);
    let mut last = reply.unwrap();
    // The others ran while nobody asked for them, back to back, in the order written.
    thread::sleep(Duration::from_millis(300));
    let asked_at = scifaas_protocol::time::now_micros();
    for (i, task) in tasks.iter().enumerate().skip(1) {
        let (reply, sent) = worker.run_and_send_ahead(task, &[]);
        assert_eq!(sent, 0);
        let reply = reply.unwrap();
        assert_eq!(reply.task_id, task.task_id);
        assert!(last.exec_end <= reply.exec_start && reply.exec_end < asked_at);
        let value: serde_json::Value = serde_json::from_slice(success(&reply)).unwrap();
        assert_eq!(value[0], i);
        last = reply;
    }
    // Tasks are taken in the order they were written, and only then.
    let (_, sent) = worker.run_and_send_ahead(&tasks[0], &tasks[1..3]);
    assert_eq!(sent, 2);
    let (error, _) = worker.run_and_send_ahead(&tasks[2], &[]);
    assert!(matches!(error, Err(WorkerError::Protocol(_))), "{error:?}");
}

#[test]
fn a_large_task_is_not_written_ahead() {
    let mut worker = spawn();
    let identity = function("identity", IDENTITY);
    let small = task(&identity, r#"{"args": [1]}"#);
    let big = task(
        &identity,
        &format!(r#"{{"args": ["{}"]}}"#, "x".repeat(8 << 20)),
    );
    let (reply, sent) = worker.run_and_send_ahead(&small, [&big]);
    assert_eq!(sent, 0, "an 8 MiB frame may not fit the pipe");
    reply.unwrap();
    let (reply, _) = worker.run_and_send_ahead(&big, &[]);
    assert_eq!(success(&reply.unwrap()).len(), (8 << 20) + 2);
}

#[test]
fn a_task_written_by_another_thread_to_an_idle_worker_is_run_and_read_by_its_owner() {
    let mut worker = spawn();
    let input = worker.input();
    let dir = tempfile::tempdir().unwrap();
    let mark = function(
        "mark",
        "def mark(path):\n    open(path, 'w').close()\n    return 1\n",
    );
    let marker = dir.path().join("ran");
    let first = task(&mark, &serde_json::json!({"args": [marker]}).to_string());
    let writer = {
        let (input, first) = (input.clone(), first.clone());
        thread::spawn(move || input.write_if_idle(&first))
    };
    assert!(writer.join().unwrap(), "an idle worker takes the task");
    // The worker runs it with no help from its owner.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the task written from outside never ran"
        );
        thread::sleep(Duration::from_millis(5));
    }
    // Written and not answered: the worker is not idle, and nothing more goes in.
    let identity = function("identity", IDENTITY);
    let second = task(&identity, r#"{"args": [2]}"#);
    assert!(!input.write_if_idle(&second));
    // The owner reads the first task's result without writing it again (a second copy
    // would come back as the answer to the next task and break the exchange).
    let (reply, sent) = worker.run_and_send_ahead(&first, [&second]);
    assert_eq!(sent, 1);
    assert_eq!(success(&reply.unwrap()), b"1");
    assert!(worker.has_function(&mark.hash));
    assert!(!input.write_if_idle(&task(&identity, r#"{"args": [3]}"#)));
    assert_eq!(success(&worker.run(&second).unwrap()), b"2");
    // Idle again: written from outside once more, now without the source.
    let third = task(&identity, r#"{"args": [3]}"#);
    assert!(input.write_if_idle(&third));
    assert_eq!(success(&worker.run(&third).unwrap()), b"3");
    // A frame over half the pipe is left to the owner, who may wait for the worker.
    let big = task(
        &identity,
        &format!(r#"{{"args": ["{}"]}}"#, "x".repeat(8 << 20)),
    );
    assert!(!input.write_if_idle(&big));
    assert_eq!(success(&worker.run(&big).unwrap()).len(), (8 << 20) + 2);
    // A stopped worker takes nothing.
    worker.shutdown(Duration::from_secs(2));
    assert!(!input.write_if_idle(&task(&identity, r#"{"args": [4]}"#)));
}

#[test]
fn a_worker_that_exits_mid_task_reports_its_status_and_last_words() {
    let mut worker = spawn();
    let quit = function(
        "quit",
        "import os\ndef quit():\n    os.write(2, b'about to leave\\n')\n    os._exit(3)\n",
    );
    let error = worker.run(&task(&quit, "{}")).unwrap_err();
    assert!(
        matches!(
            error,
            WorkerError::Died {
                exit: WorkerExit::Code(3),
                killed: false,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with("worker exited with status 3"),
        "{message}"
    );
    assert!(message.contains("about to leave"), "{message}");
}

#[test]
fn a_missing_python_is_a_clear_spawn_error() {
    let error = Worker::spawn(&WorkerCommand::new("/nonexistent/python3")).unwrap_err();
    assert!(matches!(error, WorkerError::Spawn { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("/nonexistent/python3"), "{message}");
    assert!(message.contains("No such file"), "{message}");
}

#[test]
fn a_missing_python_behind_a_prefix_names_the_command_and_its_stderr() {
    let mut command = WorkerCommand::new("/nonexistent/python3");
    command.prefix = vec!["env".into()];
    let error = Worker::spawn(&command).unwrap_err();
    let WorkerError::NotReady {
        ref reason,
        ref stderr,
        ref command,
    } = error
    else {
        panic!("not a start failure: {error:?}")
    };
    assert_eq!(reason, "worker exited with status 127");
    assert!(stderr.contains("/nonexistent/python3"), "{stderr}");
    assert!(
        command.starts_with("env /nonexistent/python3 -u -c"),
        "{command}"
    );
}

#[test]
fn a_worker_that_never_gets_ready_is_killed_after_the_timeout() {
    let mut command = python();
    command.prefix = ["sh", "-c", "sleep 60", "sh"].map(String::from).to_vec();
    let options = WorkerOptions {
        ready_timeout: Duration::from_millis(300),
        ..WorkerOptions::default()
    };
    let started = Instant::now();
    let error = Worker::spawn_with(&command, options).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        error.to_string().contains("no \"ready\" within 300ms"),
        "{error}"
    );
}

#[test]
fn output_before_the_worker_starts_is_a_clear_start_error() {
    let mut command = python();
    command.prefix = [
        "sh",
        "-c",
        "echo hello from a login script; exec \"$@\"",
        "sh",
    ]
    .map(String::from)
    .to_vec();
    let error = Worker::spawn(&command).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("print to stdout before Python starts"),
        "{error}"
    );
}

#[test]
fn a_result_over_the_limit_fails_its_task_and_keeps_the_worker() {
    let options = WorkerOptions {
        max_result_bytes: 1000,
        ..WorkerOptions::default()
    };
    let mut worker = Worker::spawn_with(&python(), options).unwrap();
    let big = function(
        "big",
        "def big(n):\n    print('made it')\n    return 'x' * n\n",
    );
    let reply = worker.run(&task(&big, r#"{"args": [5000]}"#)).unwrap();
    let error = failure(&reply);
    assert_eq!(error.kind, ErrorKind::TooLarge);
    assert!(error.message.contains("5002 bytes"), "{}", error.message);
    assert_eq!(reply.stdout, "made it\n");
    let reply = worker.run(&task(&big, r#"{"args": [3]}"#)).unwrap();
    assert_eq!(success(&reply), b"\"xxx\"");
}

#[test]
fn the_environment_reaches_the_worker() {
    let mut command = python();
    command.env = vec![("SCIFAAS_TEST_VALUE".into(), "forty-two".into())];
    let mut worker = Worker::spawn(&command).unwrap();
    let read = function(
        "read",
        "import os\ndef read():\n    return os.environ['SCIFAAS_TEST_VALUE']\n",
    );
    assert_eq!(
        success(&worker.run(&task(&read, "{}")).unwrap()),
        b"\"forty-two\""
    );
}

#[test]
fn shutdown_lets_the_worker_exit_cleanly() {
    let worker = spawn();
    assert_eq!(
        worker.shutdown(Duration::from_secs(10)),
        WorkerExit::Code(0)
    );
}

#[test]
fn dropping_a_worker_kills_what_its_functions_started() {
    let mut worker = spawn();
    let start = function(
        "start",
        "import subprocess\ndef start():\n    return subprocess.Popen(['sleep', '60']).pid\n",
    );
    let body = success(&worker.run(&task(&start, "{}")).unwrap()).to_vec();
    let pid: u32 = String::from_utf8(body).unwrap().parse().unwrap();
    assert!(is_running(pid));
    drop(worker);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_running(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !is_running(pid),
        "the function's subprocess outlived its worker"
    );
}

/// Whether `pid` exists and is not a zombie (which an init that does not reap may leave).
fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Not a timed assertion: prints the mean warm round trip so it can be watched
/// (`cargo test -p scifaas-worker --test worker -- --nocapture warm_round_trip`).
#[test]
fn warm_round_trip_micro_measure() {
    const CALLS: u32 = 2000;
    let mut worker = spawn();
    let identity = function("identity", IDENTITY);
    let tasks: Vec<TaskSpec> = (0..CALLS)
        .map(|i| task(&identity, &format!(r#"{{"args": [{i}]}}"#)))
        .collect();
    success(&worker.run(&task(&identity, r#"{"args": [0]}"#)).unwrap());
    let started = Instant::now();
    let mut in_function = 0;
    for task in &tasks {
        let reply = worker.run(task).unwrap();
        success(&reply);
        in_function += reply.exec_end - reply.exec_start;
    }
    let mean = started.elapsed() / CALLS;
    println!(
        "warm round trip over {CALLS} calls: mean {mean:?} (of which in the function: {:.1} µs)",
        in_function as f64 / f64::from(CALLS)
    );
}

#[test]
fn large_arguments_spliced_into_the_pipe_arrive_intact_while_the_next_ones_are_encoded() {
    // Arguments of 160 KiB go into the pipe by reference to their pages, not copied: the
    // manager must leave that memory alone until the worker has read it. Three are
    // written behind a task that sleeps, each encoded while the ones before it wait in
    // the pipe; then each of the rest behind the one before. Reusing an encoding buffer
    // too early would change what the worker reads. Pickled strings, then JSON the
    // pickle declines (an integer of 65 bits), which is spliced as it came.
    let mut worker = spawn();
    let echo = function(
        "echo",
        "import time\ndef echo(s, n=None):\n    time.sleep(0.02 if n is not None else 0.3)\n    return [s, n]\n",
    );
    let argument = |i: u64| {
        let mut x = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (0..160 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect::<String>()
    };
    let tasks: Vec<(TaskSpec, String, String)> = (0..8u64)
        .map(|i| {
            let s = argument(i);
            let n = if i < 5 {
                i.to_string()
            } else {
                ((1u128 << 64) + u128::from(i)).to_string()
            };
            let payload = format!(r#"{{"args": ["{s}", {n}]}}"#);
            (task(&echo, &payload), s, n)
        })
        .collect();
    let sleeper = task(&echo, r#"{"args": ["first"]}"#);
    let (reply, sent) = worker.run_and_send_ahead(&sleeper, tasks[..3].iter().map(|t| &t.0));
    assert_eq!(sent, 3, "three written behind the sleeping task");
    assert_eq!(success(&reply.unwrap()), br#"["first",null]"#);
    let mut unwritten = 3;
    for (i, (task, s, n)) in tasks.iter().enumerate() {
        if unwritten == i {
            unwritten += 1;
        }
        let behind = tasks[unwritten..].iter().map(|t| &t.0);
        let (reply, sent) = worker.run_and_send_ahead(task, behind);
        unwritten += sent;
        let reply = reply.unwrap();
        assert_eq!(reply.task_id, task.task_id);
        let body = success(&reply);
        let expected = format!(r#"["{s}",{n}]"#);
        assert!(
            body == expected.as_bytes(),
            "task {i}: its arguments changed on the way (result of {} bytes, ends {:?})",
            body.len(),
            String::from_utf8_lossy(&body[body.len().saturating_sub(40)..])
        );
    }
}
