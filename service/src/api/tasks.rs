//! `POST /v1/tasks` (one task or a batch), `GET /v1/tasks/{id}?wait=S`,
//! `POST /v1/tasks/status`.

use super::wait_from_query;
use crate::app::App;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::extract::{parse_json, ApiJson, ApiPath, ApiQuery, RawBody};
use crate::registry::User;
use crate::store::TaskRow;
use crate::submit::{self, PreparedTask};
use crate::views::TaskView;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use scifaas_protocol::{TaskId, TaskState};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The most task ids one status query may name.
const MAX_STATUS_IDS: usize = 10_000;

/// `{endpoint, function_id, args?, kwargs?}` or `{endpoint, tasks: [...]}`. Arguments
/// stay slices of the request body.
#[derive(Deserialize)]
struct SubmitBody<'a> {
    endpoint: String,
    function_id: Option<String>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
    #[serde(borrow, default)]
    kwargs: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tasks: Option<Vec<TaskItem<'a>>>,
}

#[derive(Deserialize)]
struct TaskItem<'a> {
    function_id: String,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
    #[serde(borrow, default)]
    kwargs: Option<&'a RawValue>,
}

pub(super) async fn submit(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: SubmitBody<'_> = parse_json(&body)?;
    let endpoint = app
        .registry
        .endpoint(&user.name, &request.endpoint)
        .ok_or_else(|| ApiError::not_found("endpoint", &request.endpoint))?;
    let items = match (request.function_id, request.tasks) {
        (Some(function_id), None) => vec![TaskItem {
            function_id,
            args: request.args,
            kwargs: request.kwargs,
        }],
        (None, Some(tasks)) if request.args.is_none() && request.kwargs.is_none() => tasks,
        _ => {
            return Err(ApiError::BadRequest(
                "give either function_id (with args and kwargs) or tasks, a list of {function_id, args, kwargs}".into(),
            ))
        }
    };
    if items.is_empty() {
        return Err(ApiError::BadRequest("tasks is empty".into()));
    }
    let mut tasks = Vec::with_capacity(items.len());
    for item in &items {
        let function = app
            .registry
            .function(&user.name, &item.function_id)
            .ok_or_else(|| ApiError::not_found("function", &item.function_id))?;
        tasks.push(PreparedTask {
            id: TaskId::new(),
            function,
            payload: submit::payload(item.args, item.kwargs)?,
        });
    }
    let task_ids: Vec<TaskId> = tasks.iter().map(|task| task.id).collect();
    submit::submit(&app, user.name.clone(), endpoint.id, tasks).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "task_ids": task_ids }))))
}

#[derive(Deserialize)]
pub(super) struct WaitQuery {
    wait: Option<f64>,
}

pub(super) async fn get(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<TaskView>, ApiError> {
    let wait = wait_from_query(query.wait, Duration::ZERO, "wait")?;
    let not_found = || ApiError::not_found("task", &id);
    let task_id: TaskId = id.parse().map_err(|_| not_found())?;
    // Registered before the read, so a result committed in between still wakes us.
    let mut waiter = (!wait.is_zero()).then(|| app.waiters.wait_for(task_id));
    // A result the invoke trigger may already have answered with is read once stored.
    if app.waiters.any_uncommitted([task_id].iter()) {
        app.store.flush().await?;
    }
    let row = own_task(&app, &user, task_id)
        .await?
        .ok_or_else(not_found)?;
    let finished = TaskState::parse(&row.state).is_some_and(TaskState::is_terminal);
    let Some(waiter) = waiter.as_mut().filter(|_| !finished) else {
        return Ok(Json(TaskView::from_row(row)));
    };
    tokio::select! {
        _ = waiter.wait(wait) => {}
        _ = app.stopping() => {}
    }
    let row = own_task(&app, &user, task_id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(TaskView::from_row(row)))
}

async fn own_task(app: &App, user: &User, id: TaskId) -> Result<Option<TaskRow>, ApiError> {
    let row = app.store.task(id).await?;
    Ok(row.filter(|row| row.owner == *user.name))
}

#[derive(Deserialize)]
pub(super) struct StatusQuery {
    task_ids: Vec<String>,
}

pub(super) async fn status(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    ApiJson(query): ApiJson<StatusQuery>,
) -> Result<Json<StatusAnswer>, ApiError> {
    if query.task_ids.len() > MAX_STATUS_IDS {
        return Err(ApiError::BadRequest(format!(
            "{} task ids asked; at most {MAX_STATUS_IDS} per request",
            query.task_ids.len()
        )));
    }
    let ids: Vec<TaskId> = query
        .task_ids
        .iter()
        .filter_map(|id| id.parse().ok())
        .collect();
    if app.waiters.any_uncommitted(ids.iter()) {
        app.store.flush().await?;
    }
    let rows = app.store.tasks(ids).await?;
    let mut tasks: BTreeMap<String, TaskView> = BTreeMap::new();
    for row in rows.into_iter().filter(|row| row.owner == *user.name) {
        tasks.insert(row.id.clone(), TaskView::from_row(row));
    }
    let unknown = query
        .task_ids
        .into_iter()
        .filter(|id| {
            let canonical = id.parse::<TaskId>().ok().map(|id| id.to_string());
            canonical.is_none_or(|id| !tasks.contains_key(&id))
        })
        .collect();
    Ok(Json(StatusAnswer { tasks, unknown }))
}

/// Typed rather than built with `json!`, so that results are written out verbatim, not
/// parsed into a value tree on the way.
#[derive(Serialize)]
pub(super) struct StatusAnswer {
    tasks: BTreeMap<String, TaskView>,
    unknown: Vec<String>,
}
