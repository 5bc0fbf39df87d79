//! The JSON shapes users see: the task view, the endpoint view, and the stored forms of a
//! task's error and timing (written by the store, embedded verbatim in task views).

use crate::hub::LiveEndpoint;
use crate::registry::Endpoint;
use crate::store::TaskRow;
use scifaas_protocol::link::{BlockStatus, ManagerStatus};
use scifaas_protocol::time::Micros;
use scifaas_protocol::{ErrorKind, ResultTiming, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A failed task's error: `{kind, type, message, traceback}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ErrorView {
    pub kind: ErrorKind,
    #[serde(rename = "type")]
    pub type_name: String,
    pub message: String,
    pub traceback: Option<String>,
}

impl From<&TaskError> for ErrorView {
    fn from(e: &TaskError) -> Self {
        Self {
            kind: e.kind,
            type_name: e.type_name.clone(),
            message: e.message.clone(),
            traceback: e.traceback.clone(),
        }
    }
}

/// A task's return-path stamps plus when the service stored its result; zero where a
/// hop did not stamp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TimingView {
    pub exec_start: Micros,
    pub exec_end: Micros,
    pub manager_sent: Micros,
    pub agent_sent: Micros,
    pub completed: Micros,
}

impl TimingView {
    pub(crate) fn new(timing: &ResultTiming, completed: Micros) -> Self {
        Self {
            exec_start: timing.exec_start,
            exec_end: timing.exec_end,
            manager_sent: timing.manager_sent,
            agent_sent: timing.agent_sent,
            completed,
        }
    }
}

/// `{task_id, endpoint_id, function_id, state, result?, error?, stdout, stderr,
/// transitions, timing, created_at, completed_at}`.
#[derive(Debug, Serialize)]
pub(crate) struct TaskView {
    task_id: String,
    endpoint_id: String,
    function_id: String,
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Box<RawValue>>,
    stdout: String,
    stderr: String,
    transitions: Box<RawValue>,
    timing: Box<RawValue>,
    created_at: Micros,
    completed_at: Option<Micros>,
}

impl TaskView {
    pub(crate) fn from_row(row: TaskRow) -> Self {
        let timing = row
            .timing
            .and_then(|t| RawValue::from_string(t).ok())
            .unwrap_or_else(|| json_raw(&TimingView::default()));
        Self {
            task_id: row.id,
            endpoint_id: row.endpoint_id,
            function_id: row.function_id,
            state: row.state,
            result: row.result.map(result_json),
            error: row.error.and_then(|e| RawValue::from_string(e).ok()),
            stdout: row.stdout,
            stderr: row.stderr,
            transitions: RawValue::from_string(row.transitions)
                .unwrap_or_else(|_| json_raw(&[(); 0])),
            timing,
            created_at: row.created_at,
            completed_at: row.completed_at,
        }
    }
}

/// A stored result as JSON: verbatim when it is a JSON document (what workers send),
/// else, so that the view stays valid JSON, as a string of its text.
fn result_json(bytes: Vec<u8>) -> Box<RawValue> {
    match String::from_utf8(bytes) {
        Ok(text) => match RawValue::from_string(text) {
            Ok(raw) => raw,
            Err(_) => {
                tracing::warn!("a stored result is not JSON; showing it as a string");
                json_raw(&"<result is not valid JSON>")
            }
        },
        Err(e) => json_raw(&String::from_utf8_lossy(e.as_bytes())),
    }
}

/// Our own value as raw JSON.
fn json_raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value)
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"))
}

/// Worker counts summed over an endpoint's managers.
#[derive(Debug, Default, Serialize)]
pub(crate) struct WorkerCounts {
    total: u64,
    busy: u64,
    idle: u64,
}

/// `{endpoint_id, name, connected, last_seen, outstanding_tasks, managers, workers:
/// {total, busy, idle}, blocks, paused, created_at}`, from what the agent last reported.
#[derive(Debug, Serialize)]
pub(crate) struct EndpointView {
    endpoint_id: String,
    name: String,
    connected: bool,
    last_seen: Option<Micros>,
    outstanding_tasks: u64,
    managers: Vec<ManagerStatus>,
    workers: WorkerCounts,
    blocks: Vec<BlockStatus>,
    paused: Option<String>,
    submit_error: Option<String>,
    created_at: Micros,
}

impl EndpointView {
    pub(crate) fn new(endpoint: &Endpoint, live: LiveEndpoint) -> Self {
        let status = live.status.unwrap_or_default();
        let mut workers = WorkerCounts::default();
        for manager in &status.managers {
            workers.total += u64::from(manager.workers);
            workers.busy += u64::from(manager.busy_workers);
            workers.idle += u64::from(manager.idle_workers);
        }
        Self {
            endpoint_id: endpoint.id.to_string(),
            name: endpoint.name.clone(),
            connected: live.connected,
            last_seen: live.last_seen,
            outstanding_tasks: status.outstanding_tasks,
            managers: status.managers,
            workers,
            blocks: status.blocks,
            paused: status.paused,
            submit_error: status.submit_error,
            created_at: endpoint.created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(result: Option<&[u8]>) -> TaskRow {
        TaskRow {
            id: "t".into(),
            owner: "u".into(),
            endpoint_id: "e".into(),
            function_id: "f".into(),
            state: "success".into(),
            result: result.map(<[u8]>::to_vec),
            error: None,
            stdout: String::new(),
            stderr: String::new(),
            transitions: "[]".into(),
            timing: None,
            created_at: 1,
            completed_at: None,
            done_seq: None,
        }
    }

    #[test]
    fn result_is_embedded_verbatim_and_garbage_stays_valid_json() {
        let view =
            serde_json::to_string(&TaskView::from_row(row(Some(b"{\"a\": [1, 2]}")))).unwrap();
        assert!(view.contains("\"result\":{\"a\": [1, 2]}"), "{view}");
        let view = serde_json::to_string(&TaskView::from_row(row(Some(b"{not json")))).unwrap();
        serde_json::from_str::<serde_json::Value>(&view).unwrap();
        let view = serde_json::to_string(&TaskView::from_row(row(None))).unwrap();
        assert!(!view.contains("\"result\""));
        assert!(view.contains("\"timing\":{\"exec_start\":0"), "{view}");
    }
}
