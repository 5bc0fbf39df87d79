//! The interchange over real ZeroMQ sockets on loopback, with test managers speaking
//! the manager protocol from a DEALER.

use super::*;
use bytes::Bytes;
use scifaas_protocol::{decode, BlockId, FunctionId, FunctionSpec, ManagerId, Outcome};

fn config() -> InterchangeConfig {
    InterchangeConfig {
        bind_address: "127.0.0.1".into(),
        port_range: None,
        secret: "s3cret".into(),
        heartbeat_period: Duration::from_millis(100),
        heartbeat_threshold: Duration::from_millis(600),
        prefetch: Prefetch::Fixed(0),
        max_retries_on_system_failure: 0,
        local_socket: None,
    }
}

fn task(walltime_ms: Option<u64>) -> TaskSpec {
    TaskSpec {
        task_id: TaskId::new(),
        function: FunctionSpec {
            id: FunctionId::new(),
            hash: "h".into(),
            name: "f".into(),
            source: Bytes::from_static(b"def f(): pass"),
            container: None,
        },
        payload: Bytes::from_static(b"{\"args\":[],\"kwargs\":{}}"),
        walltime_ms,
        retries: 0,
    }
}

struct TestManager {
    socket: zmq::Socket,
    _context: zmq::Context,
}

impl TestManager {
    fn connect(
        url: &str,
        secret: &str,
        workers: u32,
        accepts_until: Option<Micros>,
    ) -> TestManager {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::DEALER).unwrap();
        socket
            .set_identity(format!("m-{}", TaskId::new()).as_bytes())
            .unwrap();
        socket.connect(url).unwrap();
        let manager = TestManager {
            socket,
            _context: context,
        };
        manager.send(&ManagerMessage::Register(Registration {
            protocol_version: PROTOCOL_VERSION,
            manager_id: ManagerId("m".into()),
            block_id: BlockId("block-0".into()),
            job_id: None,
            host: "h".into(),
            workers,
            cores: 1,
            memory_bytes: 0,
            secret: secret.into(),
            accepts_until,
        }));
        manager
    }

    fn send(&self, message: &ManagerMessage) {
        self.socket.send(encode(message), 0).unwrap();
    }

    /// The next message other than a heartbeat, within 5 s.
    fn recv(&self) -> InterchangeMessage {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no message from the interchange within 5 s"
            );
            if self
                .socket
                .poll(zmq::POLLIN, left.as_millis() as i64)
                .unwrap()
                == 0
            {
                continue;
            }
            let message = decode(&self.socket.recv_bytes(0).unwrap()).unwrap();
            if message != InterchangeMessage::Heartbeat {
                return message;
            }
        }
    }
}

fn next_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<InterchangeEvent>,
    want: impl Fn(&InterchangeEvent) -> bool,
) -> InterchangeEvent {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match events.try_recv() {
            Ok(event) if want(&event) => return event,
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    panic!("no such event within 5 s");
}

#[test]
fn a_manager_with_the_wrong_secret_is_rejected() {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let interchange = start(config(), tx).unwrap();
    let manager = TestManager::connect(&interchange.url, "wrong", 1, None);
    match manager.recv() {
        InterchangeMessage::Rejected { reason } => assert!(reason.contains("secret"), "{reason}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    interchange.shutdown();
}

#[test]
fn tasks_go_out_by_capacity_and_results_come_back_with_stamps() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let interchange = start(config(), tx).unwrap();
    let manager = TestManager::connect(&interchange.url, "s3cret", 2, None);
    assert!(matches!(
        manager.recv(),
        InterchangeMessage::Registered { .. }
    ));
    let tasks: Vec<TaskSpec> = (0..3).map(|_| task(None)).collect();
    interchange.submit(tasks.clone(), now_micros());
    let InterchangeMessage::Tasks { tasks: first } = manager.recv() else {
        panic!("expected tasks")
    };
    assert_eq!(first.len(), 2, "two workers, no prefetch");
    manager.send(&ManagerMessage::Results {
        results: vec![TaskResult::success(
            first[0].task_id,
            Bytes::from_static(b"1"),
        )],
    });
    let InterchangeEvent::Results(results) =
        next_event(&mut rx, |e| matches!(e, InterchangeEvent::Results(_)))
    else {
        unreachable!()
    };
    let states: Vec<TaskState> = results[0].transitions.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [TaskState::WaitingForNodes, TaskState::WaitingForLaunch]
    );
    // A slot came free: the third task follows.
    let InterchangeMessage::Tasks { tasks: second } = manager.recv() else {
        panic!("expected tasks")
    };
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].task_id, tasks[2].task_id);
    interchange.shutdown();
}

#[test]
fn managers_on_this_host_work_over_the_unix_socket_and_others_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("interchange.sock");
    // Left by an agent that crashed: it is replaced.
    std::fs::write(&socket, b"").unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let interchange = start(
        InterchangeConfig {
            local_socket: Some(socket.clone()),
            ..config()
        },
        tx,
    )
    .unwrap();
    let local_url = interchange
        .local_url
        .clone()
        .expect("listening on the socket");
    assert_eq!(local_url, format!("ipc://{}", socket.display()));
    assert!(interchange.url.starts_with("tcp://"));
    let local = TestManager::connect(&local_url, "s3cret", 1, None);
    let remote = TestManager::connect(&interchange.url, "s3cret", 1, None);
    for manager in [&local, &remote] {
        assert!(matches!(
            manager.recv(),
            InterchangeMessage::Registered { .. }
        ));
    }
    // One task each (one worker each, no prefetch): both links carry tasks and results.
    let tasks: Vec<TaskSpec> = (0..2).map(|_| task(None)).collect();
    interchange.submit(tasks.clone(), now_micros());
    let mut done = Vec::new();
    for manager in [&local, &remote] {
        let InterchangeMessage::Tasks { tasks: got } = manager.recv() else {
            panic!("expected tasks")
        };
        assert_eq!(got.len(), 1);
        manager.send(&ManagerMessage::Results {
            results: vec![TaskResult::success(
                got[0].task_id,
                Bytes::from_static(b"1"),
            )],
        });
        done.push(got[0].task_id);
    }
    let mut back = Vec::new();
    while back.len() < 2 {
        let InterchangeEvent::Results(results) =
            next_event(&mut rx, |e| matches!(e, InterchangeEvent::Results(_)))
        else {
            unreachable!()
        };
        back.extend(results.iter().map(|r| r.task_id));
    }
    back.sort();
    done.sort();
    assert_eq!(back, done);
    interchange.shutdown();
    // The socket file goes with the interchange.
    assert!(!socket.exists());
}

#[test]
fn a_state_directory_too_deep_for_a_unix_socket_leaves_managers_on_tcp() {
    let deep = std::path::PathBuf::from("/tmp")
        .join("d".repeat(120))
        .join("interchange.sock");
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let interchange = start(
        InterchangeConfig {
            local_socket: Some(deep),
            ..config()
        },
        tx,
    )
    .unwrap();
    assert_eq!(interchange.local_url, None);
    assert!(interchange.url.starts_with("tcp://"));
    interchange.shutdown();
}

#[test]
fn a_burst_fills_idle_workers_everywhere_before_any_manager_prefetches() {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let interchange = start(
        InterchangeConfig {
            prefetch: Prefetch::Fixed(2),
            ..config()
        },
        tx,
    )
    .unwrap();
    let managers: Vec<TestManager> = (0..2)
        .map(|_| TestManager::connect(&interchange.url, "s3cret", 2, None))
        .collect();
    for manager in &managers {
        assert!(matches!(
            manager.recv(),
            InterchangeMessage::Registered { .. }
        ));
    }
    // Six tasks, two managers of two workers and a prefetch of two each: every worker
    // gets one, and the two left are held one per manager, not both by one.
    interchange.submit((0..6).map(|_| task(None)).collect(), now_micros());
    for manager in &managers {
        let InterchangeMessage::Tasks { tasks } = manager.recv() else {
            panic!("expected tasks")
        };
        assert_eq!(tasks.len(), 3);
    }
    interchange.shutdown();
}

#[test]
fn a_silent_manager_is_lost_and_its_tasks_fail_with_the_reason() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let interchange = start(config(), tx).unwrap();
    let manager = TestManager::connect(&interchange.url, "s3cret", 1, None);
    assert!(matches!(
        manager.recv(),
        InterchangeMessage::Registered { .. }
    ));
    interchange.submit(vec![task(None)], now_micros());
    assert!(matches!(manager.recv(), InterchangeMessage::Tasks { .. }));
    // Say nothing past the 600 ms threshold.
    let InterchangeEvent::Results(results) =
        next_event(&mut rx, |e| matches!(e, InterchangeEvent::Results(_)))
    else {
        unreachable!()
    };
    let Outcome::Failure(error) = &results[0].outcome else {
        panic!("expected a failure")
    };
    assert_eq!(error.kind, ErrorKind::ManagerLost);
    assert!(error.message.contains("no heartbeat"), "{}", error.message);
    interchange.shutdown();
}

#[test]
fn tasks_that_cannot_finish_before_the_pilot_ends_are_not_sent_to_it() {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let interchange = start(config(), tx).unwrap();
    let until = now_micros() + 60_000_000;
    let manager = TestManager::connect(&interchange.url, "s3cret", 2, Some(until));
    assert!(matches!(
        manager.recv(),
        InterchangeMessage::Registered { .. }
    ));
    let long = task(Some(3_600_000));
    let short = task(Some(1_000));
    interchange.submit(vec![long, short.clone()], now_micros());
    let InterchangeMessage::Tasks { tasks } = manager.recv() else {
        panic!("expected tasks")
    };
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        tasks[0].task_id, short.task_id,
        "the hour-long task waits for another pilot"
    );
    interchange.shutdown();
}

#[test]
fn a_task_goes_to_the_manager_with_a_warm_worker_for_its_container() {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let interchange = start(config(), tx).unwrap();
    let first = TestManager::connect(&interchange.url, "s3cret", 1, None);
    assert!(matches!(
        first.recv(),
        InterchangeMessage::Registered { .. }
    ));
    let in_container = |image: &str| {
        let mut t = task(None);
        t.function.container = Some(ContainerSpec {
            runtime: "bwrap".into(),
            image: image.into(),
            options: None,
        });
        t
    };
    // The first manager warms image `a`.
    interchange.submit(vec![in_container("/img/a")], now_micros());
    let InterchangeMessage::Tasks { tasks } = first.recv() else {
        panic!("expected tasks")
    };
    let done = |t: &TaskSpec| ManagerMessage::Results {
        results: vec![TaskResult::success(t.task_id, Bytes::from_static(b"1"))],
    };
    first.send(&done(&tasks[0]));
    // A second manager with more free capacity arrives; both are idle now.
    let second = TestManager::connect(&interchange.url, "s3cret", 4, None);
    assert!(matches!(
        second.recv(),
        InterchangeMessage::Registered { .. }
    ));
    std::thread::sleep(Duration::from_millis(100));
    interchange.submit(vec![in_container("/img/a")], now_micros());
    let InterchangeMessage::Tasks { tasks } = first.recv() else {
        panic!("expected the warm manager to get the task")
    };
    assert_eq!(tasks.len(), 1);
    // A task for an image nobody has warm goes by capacity: to the second manager.
    interchange.submit(vec![in_container("/img/b")], now_micros());
    assert!(matches!(second.recv(), InterchangeMessage::Tasks { .. }));
    interchange.shutdown();
}

#[test]
fn auto_prefetch_holds_many_short_tasks_but_only_a_few_mebibytes_of_arguments() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let interchange = start(
        InterchangeConfig {
            prefetch: Prefetch::Auto,
            ..config()
        },
        tx,
    )
    .unwrap();
    let manager = TestManager::connect(&interchange.url, "s3cret", 1, None);
    assert!(matches!(
        manager.recv(),
        InterchangeMessage::Registered { .. }
    ));
    // Answers `tasks` as 5 us calls, and waits until the interchange has their results.
    let mut finish = |tasks: &[TaskSpec]| {
        let results = tasks
            .iter()
            .map(|t| {
                let mut result = TaskResult::success(t.task_id, Bytes::from_static(b"0"));
                result.timing.exec_start = 1_000;
                result.timing.exec_end = 1_005;
                result
            })
            .collect();
        manager.send(&ManagerMessage::Results { results });
        next_event(&mut rx, |e| matches!(e, InterchangeEvent::Results(_)));
    };
    let take = || {
        let InterchangeMessage::Tasks { tasks } = manager.recv() else {
            panic!("expected tasks")
        };
        tasks
    };
    // Run times are known once a task finished: then short tasks are held deep.
    interchange.submit(vec![task(None)], now_micros());
    finish(&take());
    interchange.submit((0..100).map(|_| task(None)).collect(), now_micros());
    let small = take();
    assert_eq!(small.len(), 1 + 64, "one for the worker, 64 held ahead");
    finish(&small);
    let rest = take();
    assert_eq!(rest.len(), 100 - 65);
    finish(&rest);
    // Tasks with 2 MiB arguments, as short: 8 MiB held per worker (by the moving mean
    // of payload sizes, which 60 of them bring to 1.9 MiB).
    let big = Bytes::from(vec![b' '; 2 << 20]);
    let large: Vec<TaskSpec> = (0..60)
        .map(|_| TaskSpec {
            payload: big.clone(),
            ..task(None)
        })
        .collect();
    interchange.submit(large, now_micros());
    assert_eq!(
        take().len(),
        1 + 4,
        "one for the worker, four of 2 MiB held ahead"
    );
    interchange.shutdown();
}
