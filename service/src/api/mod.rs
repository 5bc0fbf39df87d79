//! The REST API, `/v1`: routes and the helpers its handlers share.

mod endpoints;
mod functions;
mod invoke;
mod results;
mod tasks;
mod tokens;

use crate::app::{App, MAX_WAIT};
use crate::error::ApiError;
use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Every route of the service.
pub(crate) fn router(app: Arc<App>) -> Router {
    let body_limit = app.config.max_payload_bytes;
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/tokens", post(tokens::create))
        .route("/v1/functions", post(functions::register))
        .route("/v1/functions/{id}", get(functions::get))
        .route(
            "/v1/endpoints",
            post(endpoints::create).get(endpoints::list),
        )
        .route("/v1/endpoints/{endpoint}", get(endpoints::get))
        .route(
            "/v1/endpoints/{endpoint}/functions/{function}/invoke",
            post(invoke::invoke),
        )
        .route("/v1/tasks", post(tasks::submit))
        .route("/v1/tasks/status", post(tasks::status))
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v1/results", get(results::poll))
        .route("/v1/agent/ws", get(crate::link::upgrade))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// `GET /v1/health`: no token needed.
async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route {}", uri.path()))
}

async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not take this method", uri.path()))
}

/// A wait in seconds from a query parameter: `default` when absent, at most
/// [`MAX_WAIT`].
pub(crate) fn wait_from_query(
    seconds: Option<f64>,
    default: Duration,
    name: &str,
) -> Result<Duration, ApiError> {
    match seconds {
        None => Ok(default.min(MAX_WAIT)),
        Some(s) if s.is_finite() && s >= 0.0 => {
            Ok(Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64())))
        }
        Some(s) => Err(ApiError::BadRequest(format!(
            "{name}={s} is not a number of seconds (0 or more)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_bounded_and_validated() {
        assert_eq!(
            wait_from_query(None, Duration::from_secs(30), "t").unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            wait_from_query(Some(0.5), Duration::ZERO, "t").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            wait_from_query(Some(1e12), Duration::ZERO, "t").unwrap(),
            MAX_WAIT
        );
        assert!(wait_from_query(Some(-1.0), Duration::ZERO, "t").is_err());
        assert!(wait_from_query(Some(f64::NAN), Duration::ZERO, "t").is_err());
    }
}
