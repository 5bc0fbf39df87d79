//! What a task carries on its way out (a [`TaskSpec`]) and on its way back (a
//! [`TaskResult`]).

use crate::ids::{FunctionId, TaskId};
use crate::state::Transition;
use crate::time::Micros;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A function as workers need it. Immutable once registered, so workers cache the
/// compiled function by `hash` and the manager sends `source` to a worker only once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub id: FunctionId,
    /// Content hash of name and source (hex), the workers' cache key.
    pub hash: String,
    /// The name the source defines, called with the task's arguments.
    pub name: String,
    /// Python source text; opaque bytes to every Rust component.
    pub source: Bytes,
    /// The container the function must run in; `None`: the endpoint's default
    /// (`engine.container`), or no container.
    #[serde(default)]
    pub container: Option<ContainerSpec>,
}

/// A container image and the runtime that starts it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The runtime: `apptainer`, `singularity`, `charliecloud`, `docker`, `podman`,
    /// `shifter` or `bwrap`.
    #[serde(rename = "type")]
    pub runtime: String,
    /// The image: a path (`.sif`, a directory tree) or a registry reference.
    pub image: String,
    /// Extra runtime options, as a shell-like string (`-B /scratch`).
    #[serde(default)]
    pub options: Option<String>,
}

impl ContainerSpec {
    /// The runtimes a container may name as its `type` (each has a command-line template
    /// in `templates/containers/`).
    pub const RUNTIMES: &'static [&'static str] = &[
        "apptainer",
        "singularity",
        "charliecloud",
        "docker",
        "podman",
        "shifter",
        "bwrap",
    ];
}

/// One task on its way from the service to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: TaskId,
    pub function: FunctionSpec,
    /// The arguments as a JSON document `{"args": [...], "kwargs": {...}}`; opaque.
    #[serde(deserialize_with = "crate::shared::bytes")]
    pub payload: Bytes,
    /// Task walltime in milliseconds: a task running longer is killed and fails.
    pub walltime_ms: Option<u64>,
    /// How many times this task was already started and lost to a system failure
    /// (a manager or node lost); bounded by `max_retries_on_system_failure`.
    #[serde(default)]
    pub retries: u32,
}

/// Why a task failed. `FunctionException` is the user's own error; the others are the
/// system's, and say which part failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The function raised; `type_name`, `message` and `traceback` are Python's.
    FunctionException,
    /// The source could not be compiled or does not define the named function.
    FunctionDefinition,
    /// The arguments could not be decoded or the result could not be encoded as JSON.
    Serialization,
    /// The payload or result exceeded a configured size limit.
    TooLarge,
    /// The task ran past its walltime and its worker was killed.
    Walltime,
    /// The worker process died while running the task.
    WorkerDied,
    /// The manager (or the node under it) was lost while it held the task.
    ManagerLost,
    /// The endpoint refused or could not run the task (configuration, capacity).
    Endpoint,
    /// Cancelled on request.
    Cancelled,
}

/// A failed task's error, as the researcher sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    pub kind: ErrorKind,
    /// Python exception type (`ZeroDivisionError`) or a system error name.
    pub type_name: String,
    pub message: String,
    pub traceback: Option<String>,
}

impl TaskError {
    pub fn system(kind: ErrorKind, type_name: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            type_name: type_name.to_owned(),
            message: message.into(),
            traceback: None,
        }
    }
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The function's return value as a JSON document; opaque.
    Success(#[serde(deserialize_with = "crate::shared::bytes")] Bytes),
    Failure(TaskError),
}

/// Stamps of the return path that are not state changes: when the worker started and
/// ended the function, and when the manager and the agent sent the result on. Zero
/// where a hop did not stamp (a task failed before it reached a worker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultTiming {
    pub exec_start: Micros,
    pub exec_end: Micros,
    pub manager_sent: Micros,
    pub agent_sent: Micros,
}

/// One task on its way back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: TaskId,
    pub outcome: Outcome,
    /// What the function printed, captured by the worker.
    pub stdout: String,
    pub stderr: String,
    /// Transitions stamped after the task left the service (agent, interchange, manager).
    pub transitions: Vec<Transition>,
    pub timing: ResultTiming,
}

impl TaskResult {
    /// A successful result, `value` its JSON document, without output or stamps.
    pub fn success(task_id: TaskId, value: impl Into<Bytes>) -> Self {
        Self {
            task_id,
            outcome: Outcome::Success(value.into()),
            stdout: String::new(),
            stderr: String::new(),
            transitions: Vec::new(),
            timing: ResultTiming::default(),
        }
    }

    /// A result for a task that failed before (or outside) a worker.
    pub fn failed(task_id: TaskId, error: TaskError) -> Self {
        Self {
            task_id,
            outcome: Outcome::Failure(error),
            stdout: String::new(),
            stderr: String::new(),
            transitions: Vec::new(),
            timing: ResultTiming::default(),
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self.outcome, Outcome::Success(_))
    }
}

/// A task of a one-line function, for the protocol's own tests.
#[cfg(test)]
pub(crate) fn test_task(payload: impl Into<Bytes>) -> TaskSpec {
    TaskSpec {
        task_id: TaskId::new(),
        function: FunctionSpec {
            id: crate::ids::FunctionId::new(),
            hash: "h".into(),
            name: "f".into(),
            source: Bytes::from_static(b"def f(x): return x"),
            container: None,
        },
        payload: payload.into(),
        walltime_ms: None,
        retries: 0,
    }
}
