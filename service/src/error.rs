//! The one error type of the REST API and how it becomes a response:
//! `{"error": CODE, "message": TEXT}` with a 4xx/5xx status, `CODE` a stable kebab-case
//! word. A failed task adds `type`, `traceback`, `kind` and `task_id`; a timeout adds
//! `task_id`.

use crate::store::StoreError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use scifaas_protocol::{ErrorKind, TaskError, TaskId};
use serde::Serialize;
use std::time::Duration;

/// The header naming the task an invoke created, on every answer that has one.
pub(crate) const TASK_ID_HEADER: &str = "x-scifaas-task-id";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// Missing, or belonging to another user: the two are not told apart.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The invoke trigger got no result in time; the task goes on.
    #[error("no result within {} s; the task goes on: fetch it later with GET /v1/tasks/{task_id}", waited.as_secs_f64())]
    Timeout { task_id: TaskId, waited: Duration },
    /// The invoked task failed: the function raised (500) or the system failed it (502).
    #[error("{}", error.message)]
    TaskFailed { task_id: TaskId, error: TaskError },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn not_found(what: &str, key: &str) -> Self {
        Self::NotFound(format!("no {what} {key:?}"))
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            Self::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Self::TaskFailed { error, .. } if is_users_fault(error.kind) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "function-exception")
            }
            Self::TaskFailed { .. } => (StatusCode::BAD_GATEWAY, "task-failed"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// Whether a failure comes from the function itself (it raised, does not compile, or
/// returned something that is not JSON) rather than from the system running it.
fn is_users_fault(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::FunctionException | ErrorKind::FunctionDefinition | ErrorKind::Serialization
    )
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<ErrorKind>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    type_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceback: Option<Option<&'a str>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() && !matches!(self, Self::TaskFailed { .. }) {
            tracing::error!("{code}: {self}");
        }
        let mut body = ErrorBody {
            error: code,
            message: self.to_string(),
            task_id: None,
            kind: None,
            type_name: None,
            traceback: None,
        };
        let task_id = match &self {
            Self::Timeout { task_id, .. } => Some(*task_id),
            Self::TaskFailed { task_id, error } => {
                body.kind = Some(error.kind);
                body.type_name = Some(&error.type_name);
                body.traceback = Some(error.traceback.as_deref());
                Some(*task_id)
            }
            _ => None,
        };
        body.task_id = task_id.map(|id| id.to_string());
        let mut response = (status, Json(&body)).into_response();
        if let Some(id) = task_id.and_then(|id| HeaderValue::from_str(&id.to_string()).ok()) {
            response.headers_mut().insert(TASK_ID_HEADER, id);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(message) => Self::Conflict(message),
            other => Self::Internal(format!("the task store failed: {other}")),
        }
    }
}
