//! A stand-in interchange for driving a real manager (real workers, real containers) in
//! tests: a ZeroMQ ROUTER on loopback that registers the manager, sends it tasks and
//! collects its results and heartbeats.

#![allow(dead_code)]

#[path = "../../../worker/tests/common/images.rs"]
pub mod images;

use bytes::Bytes;
use scifaas_manager::ManagerConfig;
use scifaas_protocol::interchange::{InterchangeMessage, ManagerMessage, Registration};
use scifaas_protocol::{
    decode, encode, BlockId, ContainerSpec, FunctionId, FunctionSpec, Outcome, TaskError, TaskId,
    TaskResult, TaskSpec,
};
use scifaas_worker::WorkerCommand;
use serde::Deserialize;
use std::collections::HashMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the manager under test sends heartbeats.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(100);

/// A heartbeat as an interchange that knows `container_switches` reads it.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Heartbeat {
    Heartbeat {
        busy_workers: u32,
        #[serde(default)]
        container_switches: u64,
    },
}

/// A manager under test and the interchange it talks to.
pub struct Harness {
    _context: zmq::Context,
    router: zmq::Socket,
    identity: Vec<u8>,
    pub registration: Registration,
    manager: Option<JoinHandle<anyhow::Result<()>>>,
    /// The container switches of the latest heartbeat.
    pub switches: Option<u64>,
}

/// A manager config for the harness: `workers` workers of the test interpreter.
pub fn config(workers: u32) -> ManagerConfig {
    let mut config = ManagerConfig::new("", BlockId("test-block".into()), "secret");
    config.workers = workers;
    config.worker = WorkerCommand::new(
        std::env::var("SCIFAAS_TEST_PYTHON").unwrap_or_else(|_| "python3".into()),
    );
    config.register_timeout = Duration::from_secs(10);
    config
}

impl Harness {
    /// Starts a manager with `config` (its interchange address is filled in) and
    /// registers it.
    pub fn start(mut config: ManagerConfig) -> Harness {
        let context = zmq::Context::new();
        let router = context.socket(zmq::ROUTER).unwrap();
        router.set_linger(0).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        config.interchange = router.get_last_endpoint().unwrap().unwrap();
        let manager = std::thread::spawn(move || scifaas_manager::run(config));
        let (identity, message) = receive(&router, Duration::from_secs(10)).expect("registration");
        let ManagerMessage::Register(registration) = message else {
            panic!("expected a registration, got {message:?}")
        };
        let mut harness = Harness {
            _context: context,
            router,
            identity,
            registration,
            manager: Some(manager),
            switches: None,
        };
        harness.send(&InterchangeMessage::Registered {
            heartbeat_period_ms: HEARTBEAT_PERIOD.as_millis() as u64,
            heartbeat_threshold_ms: 60_000,
        });
        harness
    }

    pub fn send(&mut self, message: &InterchangeMessage) {
        self.router
            .send_multipart([self.identity.clone(), encode(message)], 0)
            .unwrap();
    }

    pub fn send_tasks(&mut self, tasks: Vec<TaskSpec>) {
        self.send(&InterchangeMessage::Tasks { tasks });
    }

    /// Waits for `n` results (heartbeats are noted on the way).
    pub fn results(&mut self, n: usize, timeout: Duration) -> Vec<TaskResult> {
        let deadline = Instant::now() + timeout;
        let mut results = Vec::new();
        while results.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(frame) = self.receive_frame(left) else {
                panic!("{} of {n} results within {timeout:?}", results.len());
            };
            if let Ok(ManagerMessage::Results { results: batch }) = decode(&frame) {
                results.extend(batch);
            }
        }
        results
    }

    /// Runs `tasks` and answers their results in the order of `tasks`.
    pub fn run(&mut self, tasks: Vec<TaskSpec>) -> Vec<TaskResult> {
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
        self.send_tasks(tasks);
        let mut by_id: HashMap<TaskId, TaskResult> = self
            .results(ids.len(), Duration::from_secs(60))
            .into_iter()
            .map(|r| (r.task_id, r))
            .collect();
        ids.iter().map(|id| by_id.remove(id).unwrap()).collect()
    }

    /// The container switches reported by the next heartbeat.
    pub fn next_heartbeat_switches(&mut self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.receive_frame(left).expect("a heartbeat");
            if let Ok(Heartbeat::Heartbeat {
                container_switches, ..
            }) = decode::<Heartbeat>(&frame)
            {
                return container_switches;
            }
        }
    }

    /// The next message `want` accepts, within `timeout` (others are skipped).
    pub fn message(
        &mut self,
        want: impl Fn(&ManagerMessage) -> bool,
        timeout: Duration,
    ) -> ManagerMessage {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self
                .receive_frame(left)
                .unwrap_or_else(|| panic!("no such message within {timeout:?}"));
            if let Ok(message) = decode::<ManagerMessage>(&frame) {
                if want(&message) {
                    return message;
                }
            }
        }
    }

    /// Waits (bounded) for the manager's thread to end; answers how it ended.
    pub fn join(mut self, timeout: Duration) -> anyhow::Result<()> {
        let manager = self.manager.take().unwrap();
        let deadline = Instant::now() + timeout;
        while !manager.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the manager still runs after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        manager.join().unwrap()
    }

    /// Frames until `quiet` passes without one; answers how many were results.
    pub fn results_within(&mut self, quiet: Duration) -> Vec<TaskResult> {
        let mut results = Vec::new();
        while let Some(frame) = self.receive_frame(quiet) {
            if let Ok(ManagerMessage::Results { results: batch }) = decode(&frame) {
                results.extend(batch);
            }
        }
        results
    }

    fn receive_frame(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let (identity, frame) = receive_raw(&self.router, timeout)?;
        assert_eq!(identity, self.identity);
        if let Ok(Heartbeat::Heartbeat {
            container_switches,
            busy_workers: _,
        }) = decode::<Heartbeat>(&frame)
        {
            self.switches = Some(container_switches);
        }
        Some(frame)
    }

    /// Tells the manager to shut down and waits for it to exit cleanly.
    pub fn shutdown(mut self) {
        self.send(&InterchangeMessage::Shutdown);
        let manager = self.manager.take().unwrap();
        manager.join().unwrap().expect("the manager exits cleanly");
    }

    /// Whether the manager is still running.
    pub fn manager_running(&self) -> bool {
        self.manager.as_ref().is_some_and(|m| !m.is_finished())
    }
}

fn receive_raw(router: &zmq::Socket, timeout: Duration) -> Option<(Vec<u8>, Vec<u8>)> {
    if router
        .poll(zmq::POLLIN, timeout.as_millis() as i64)
        .unwrap()
        == 0
    {
        return None;
    }
    let mut parts = router.recv_multipart(0).unwrap();
    let frame = parts.pop().unwrap();
    Some((parts.remove(0), frame))
}

fn receive(router: &zmq::Socket, timeout: Duration) -> Option<(Vec<u8>, ManagerMessage)> {
    let (identity, frame) = receive_raw(router, timeout)?;
    Some((identity, decode(&frame).unwrap()))
}

/// Reports which worker ran it (a token drawn once per worker process), what the image
/// marker says (None outside the test images), and the accelerator variables.
pub const WHOAMI: &str = r#"
import builtins, os, time, uuid

def whoami(sleep=0):
    token = getattr(builtins, "_scifaas_test_token", None)
    if token is None:
        token = builtins._scifaas_test_token = uuid.uuid4().hex
    try:
        marker = open("/scifaas-test-image").read().strip()
    except OSError:
        marker = None
    time.sleep(sleep)
    names = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")
    return {"token": token, "marker": marker, "env": [os.environ.get(n) for n in names]}
"#;

/// The `whoami` function, registered with `container`.
pub fn whoami(container: Option<ContainerSpec>) -> FunctionSpec {
    FunctionSpec {
        id: FunctionId::new(),
        hash: format!("whoami-{}", FunctionId::new()),
        name: "whoami".into(),
        source: Bytes::from_static(WHOAMI.as_bytes()),
        container,
    }
}

pub fn task(function: &FunctionSpec, payload: &str) -> TaskSpec {
    TaskSpec {
        task_id: TaskId::new(),
        function: function.clone(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        walltime_ms: None,
        retries: 0,
    }
}

pub fn container(runtime: &str, image: String) -> ContainerSpec {
    ContainerSpec {
        runtime: runtime.into(),
        image,
        options: None,
    }
}

/// The result's JSON document; panics with the error if the task failed.
pub fn value(result: &TaskResult) -> serde_json::Value {
    match &result.outcome {
        Outcome::Success(body) => serde_json::from_slice(body).unwrap(),
        Outcome::Failure(error) => panic!("task failed: {error:?}"),
    }
}

/// The result's error; panics if the task succeeded.
pub fn error(result: &TaskResult) -> &TaskError {
    match &result.outcome {
        Outcome::Failure(error) => error,
        Outcome::Success(body) => panic!("task succeeded: {body:?}"),
    }
}
