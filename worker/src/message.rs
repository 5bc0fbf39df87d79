//! The JSON headers of the manager<->worker frames, and the reply a task gets.

use bytes::Bytes;
use scifaas_protocol::time::Micros;
use scifaas_protocol::{ErrorKind, Outcome, ResultTiming, TaskError, TaskId, TaskResult};
use serde::{Deserialize, Serialize};

/// Header of a manager -> worker task frame. The body is `source_len` bytes of source
/// followed by the payload: its JSON, or with `payload_format` [`PAYLOAD_PICKLE`] the
/// same values as a pickle (see [`crate::pickle`]).
#[derive(Debug, Serialize)]
pub struct TaskHeader<'a> {
    pub op: &'static str,
    pub task_id: TaskId,
    pub fn_hash: &'a str,
    pub fn_name: &'a str,
    pub source_len: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_format: Option<&'static str>,
}

/// The `payload_format` of a payload re-encoded as a pickle.
pub const PAYLOAD_PICKLE: &str = "pickle";

/// A worker -> manager header.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum WorkerMessage {
    /// Sent once, when the worker is ready for tasks.
    Ready {
        /// The worker's pid as it sees it (inside a container, not the host's).
        pid: u32,
        python: String,
    },
    /// The answer to one task; the frame's body is the result JSON.
    Result(ResultHeader),
}

/// Header of a result frame.
#[derive(Debug, Deserialize)]
pub struct ResultHeader {
    pub task_id: TaskId,
    pub ok: bool,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    pub exec_start: Micros,
    pub exec_end: Micros,
    pub error: Option<WireError>,
}

/// The `error` of a result header.
#[derive(Debug, Deserialize)]
pub struct WireError {
    pub kind: ErrorKind,
    #[serde(rename = "type")]
    pub type_name: String,
    pub message: String,
    pub traceback: Option<String>,
}

impl From<WireError> for TaskError {
    fn from(e: WireError) -> Self {
        TaskError {
            kind: e.kind,
            type_name: e.type_name,
            message: e.message,
            traceback: e.traceback,
        }
    }
}

/// What a worker answered for one task.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerReply {
    pub task_id: TaskId,
    /// On success, the result JSON exactly as the worker encoded it.
    pub outcome: Outcome,
    /// What the function printed, as captured by the worker (capped at 1 MiB each).
    pub stdout: String,
    pub stderr: String,
    /// When the function started and ended, by the worker's clock.
    pub exec_start: Micros,
    pub exec_end: Micros,
}

impl WorkerReply {
    /// Builds the reply from a result header and its body; `None` if the header says the
    /// task failed but carries no error.
    pub(crate) fn from_header(header: ResultHeader, body: Bytes) -> Option<Self> {
        let outcome = match (header.ok, header.error) {
            (true, _) => Outcome::Success(body),
            (false, Some(error)) => Outcome::Failure(error.into()),
            (false, None) => return None,
        };
        Some(Self {
            task_id: header.task_id,
            outcome,
            stdout: header.stdout,
            stderr: header.stderr,
            exec_start: header.exec_start,
            exec_end: header.exec_end,
        })
    }

    /// Whether the function ran and returned a result.
    pub fn is_success(&self) -> bool {
        matches!(self.outcome, Outcome::Success(_))
    }

    /// The error kind, if the task failed.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        match &self.outcome {
            Outcome::Success(_) => None,
            Outcome::Failure(error) => Some(error.kind),
        }
    }

    /// The protocol's result, with the execution stamps filled and no transitions yet.
    pub fn into_task_result(self) -> TaskResult {
        TaskResult {
            task_id: self.task_id,
            outcome: self.outcome,
            stdout: self.stdout,
            stderr: self.stderr,
            transitions: Vec::new(),
            timing: ResultTiming {
                exec_start: self.exec_start,
                exec_end: self.exec_end,
                ..ResultTiming::default()
            },
        }
    }
}

impl From<WorkerReply> for TaskResult {
    fn from(reply: WorkerReply) -> Self {
        reply.into_task_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_header_has_the_documented_fields() {
        let task_id = TaskId::new();
        let mut header = TaskHeader {
            op: "task",
            task_id,
            fn_hash: "abc",
            fn_name: "f",
            source_len: 12,
            payload_format: None,
        };
        let json: serde_json::Value = serde_json::to_value(&header).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"op": "task", "task_id": task_id.to_string(), "fn_hash": "abc",
                "fn_name": "f", "source_len": 12})
        );
        header.payload_format = Some(PAYLOAD_PICKLE);
        let json: serde_json::Value = serde_json::to_value(&header).unwrap();
        assert_eq!(json["payload_format"], "pickle");
    }

    #[test]
    fn a_failed_result_header_becomes_a_failure_with_its_timing() {
        let task_id = TaskId::new();
        let header = format!(
            r#"{{"op":"result","task_id":"{task_id}","ok":false,"stdout":"hi\n","stderr":"",
            "exec_start":10,"exec_end":12,"error":{{"kind":"function-exception",
            "type":"ZeroDivisionError","message":"division by zero","traceback":"tb"}}}}"#
        );
        let WorkerMessage::Result(header) = serde_json::from_str(&header).unwrap() else {
            panic!("not a result")
        };
        let reply = WorkerReply::from_header(header, Bytes::new()).unwrap();
        assert_eq!(reply.error_kind(), Some(ErrorKind::FunctionException));
        let result = reply.into_task_result();
        assert_eq!(result.stdout, "hi\n");
        assert_eq!((result.timing.exec_start, result.timing.exec_end), (10, 12));
        let Outcome::Failure(error) = result.outcome else {
            panic!("not a failure")
        };
        assert_eq!(error.type_name, "ZeroDivisionError");
        assert_eq!(error.traceback.as_deref(), Some("tb"));
    }

    #[test]
    fn a_success_keeps_the_body_bytes_as_sent() {
        let task_id = TaskId::new();
        let header = format!(
            r#"{{"op":"result","task_id":"{task_id}","ok":true,"exec_start":1,"exec_end":2}}"#
        );
        let WorkerMessage::Result(header) = serde_json::from_str(&header).unwrap() else {
            panic!("not a result")
        };
        let body = Bytes::from_static(b"{\"b\":1, \"a\":2.50}");
        let reply = WorkerReply::from_header(header, body.clone()).unwrap();
        assert_eq!(reply.outcome, Outcome::Success(body));
    }

    #[test]
    fn a_failure_without_an_error_is_refused() {
        let header = ResultHeader {
            task_id: TaskId::new(),
            ok: false,
            stdout: String::new(),
            stderr: String::new(),
            exec_start: 0,
            exec_end: 0,
            error: None,
        };
        assert!(WorkerReply::from_header(header, Bytes::new()).is_none());
    }

    #[test]
    fn a_ready_header_parses() {
        let ready: WorkerMessage =
            serde_json::from_str(r#"{"op":"ready","pid":42,"python":"3.11.7"}"#).unwrap();
        assert!(
            matches!(ready, WorkerMessage::Ready { pid: 42, ref python } if python == "3.11.7")
        );
    }
}
