//! `POST /v1/endpoints/{endpoint}/functions/{function}/invoke?timeout=S`: the synchronous
//! HTTP trigger. The body is the function's one argument; the answer is its result,
//! verbatim.
//!
//! This is the latency-critical path: the caller is authenticated and the endpoint and
//! function resolved in memory, the task is stored in one group-committed write, and the
//! result comes back through the waiter registry without a read from disk.

use super::wait_from_query;
use crate::app::App;
use crate::auth::AuthUser;
use crate::error::{ApiError, TASK_ID_HEADER};
use crate::extract::{ApiPath, ApiQuery, RawBody};
use crate::submit::{self, PreparedTask};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use scifaas_protocol::{Outcome, TaskId};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// How long the trigger waits for a result when the caller does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
pub(super) struct InvokeQuery {
    timeout: Option<f64>,
}

pub(super) async fn invoke(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    ApiPath((endpoint, function)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<InvokeQuery>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let timeout = wait_from_query(query.timeout, DEFAULT_TIMEOUT, "timeout")?;
    let endpoint = app
        .registry
        .endpoint(&user.name, &endpoint)
        .ok_or_else(|| ApiError::not_found("endpoint", &endpoint))?;
    let function = app
        .registry
        .function(&user.name, &function)
        .ok_or_else(|| ApiError::not_found("function", &function))?;
    let payload = submit::single_argument_payload(&body)?;
    let task_id = TaskId::new();
    // Registered before the task can reach the agent, so its result cannot slip past.
    let mut waiter = app.waiters.wait_for_arrival(task_id, endpoint.id);
    let task = PreparedTask {
        id: task_id,
        function,
        payload,
    };
    submit::submit(&app, user.name.clone(), endpoint.id, vec![task]).await?;
    let result = tokio::select! {
        result = waiter.wait(timeout) => result,
        _ = app.stopping() => None,
    };
    let Some(result) = result else {
        return Err(ApiError::Timeout {
            task_id,
            waited: timeout,
        });
    };
    match &result.outcome {
        Outcome::Success(value) => {
            let mut response = value.clone().into_response();
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Ok(id) = HeaderValue::from_str(&task_id.to_string()) {
                headers.insert(TASK_ID_HEADER, id);
            }
            Ok(response)
        }
        Outcome::Failure(error) => Err(ApiError::TaskFailed {
            task_id,
            error: error.clone(),
        }),
    }
}
