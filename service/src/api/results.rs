//! `GET /v1/results?after=CURSOR&timeout=S&max=N`: the caller's tasks that finished after
//! the cursor, oldest first, long-polling up to S seconds for the first.
//!
//! The cursor is the service-wide `done_seq`. When nothing of the caller's finished, the
//! answer still moves the cursor up to the last `done_seq` committed before the query
//! ran, so a client polling an idle account does not rescan others' work.

use super::wait_from_query;
use crate::app::App;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::views::TaskView;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Tasks per answer when the caller does not say, and the most it may ask for.
const DEFAULT_MAX: usize = 1000;
const LIMIT_MAX: usize = 10_000;

#[derive(Deserialize)]
pub(super) struct ResultsQuery {
    after: Option<i64>,
    timeout: Option<f64>,
    max: Option<usize>,
}

#[derive(Serialize)]
pub(super) struct ResultsAnswer {
    cursor: i64,
    tasks: Vec<TaskView>,
}

pub(super) async fn poll(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    ApiQuery(query): ApiQuery<ResultsQuery>,
) -> Result<Json<ResultsAnswer>, ApiError> {
    let mut finished = app.waiters.finished();
    let Some(after) = query.after else {
        let cursor = *finished.borrow();
        return Ok(Json(ResultsAnswer {
            cursor,
            tasks: Vec::new(),
        }));
    };
    let max = query.max.unwrap_or(DEFAULT_MAX).clamp(1, LIMIT_MAX);
    let deadline = Instant::now() + wait_from_query(query.timeout, Duration::ZERO, "timeout")?;
    loop {
        // Read before the query: every task up to `committed` is visible to it.
        let committed = *finished.borrow_and_update();
        let rows = app
            .store
            .finished_after(user.name.clone(), after, max)
            .await?;
        if let Some(last) = rows.last() {
            let cursor = last.done_seq.unwrap_or(after);
            let tasks = rows.into_iter().map(TaskView::from_row).collect();
            return Ok(Json(ResultsAnswer { cursor, tasks }));
        }
        let idle = Json(ResultsAnswer {
            cursor: after.max(committed),
            tasks: Vec::new(),
        });
        tokio::select! {
            changed = tokio::time::timeout_at(deadline, finished.changed()) => {
                if !matches!(changed, Ok(Ok(()))) {
                    return Ok(idle);
                }
            }
            _ = app.stopping() => return Ok(idle),
        }
    }
}
