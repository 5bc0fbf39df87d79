//! `POST /v1/endpoints`, `GET /v1/endpoints`, `GET /v1/endpoints/{name_or_id}`.

use crate::app::App;
use crate::auth::{self, AuthUser};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::store::EndpointRow;
use crate::views::EndpointView;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use scifaas_protocol::time::now_micros;
use scifaas_protocol::EndpointId;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize)]
pub(super) struct CreateEndpoint {
    name: String,
}

pub(super) async fn create(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<CreateEndpoint>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_endpoint_name(&body.name)?;
    let conflict = || {
        ApiError::Conflict(format!(
            "you already have an endpoint named {:?}",
            body.name
        ))
    };
    if app.registry.has_endpoint_named(&user.name, &body.name) {
        return Err(conflict());
    }
    let agent_token = auth::mint_token().map_err(|e| ApiError::Internal(e.to_string()))?;
    let hash = auth::token_hash(&agent_token);
    let row = EndpointRow {
        id: EndpointId::new(),
        owner: user.name.to_string(),
        name: body.name.clone(),
        agent_token_hash: hex::encode(hash),
        created_at: now_micros(),
    };
    // The store's uniqueness rule settles a race between two creations of one name.
    app.store.create_endpoint(row.clone()).await?;
    let endpoint = app.registry.add_endpoint(row, hash);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "endpoint_id": endpoint.id,
            "name": endpoint.name,
            "agent_token": agent_token,
        })),
    ))
}

pub(super) async fn list(State(app): State<Arc<App>>, AuthUser(user): AuthUser) -> Json<Value> {
    let views: Vec<EndpointView> = app
        .registry
        .endpoints_of(&user.name)
        .iter()
        .map(|endpoint| EndpointView::new(endpoint, app.hub.live(endpoint.id)))
        .collect();
    Json(json!({ "endpoints": views }))
}

pub(super) async fn get(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let endpoint = app
        .registry
        .endpoint(&user.name, &key)
        .ok_or_else(|| ApiError::not_found("endpoint", &key))?;
    Ok(Json(EndpointView::new(
        &endpoint,
        app.hub.live(endpoint.id),
    )))
}

/// Endpoint names: 1 to 64 of letters, digits, `.`, `_`, `-`, and not a UUID (an
/// endpoint is addressed by name or by id, so the two must not be confused).
fn check_endpoint_name(name: &str) -> Result<(), ApiError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.parse::<EndpointId>().is_err();
    if valid {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "endpoint name {name:?} is not valid: use 1 to 64 letters, digits, '.', '_' or '-' (and not a UUID)"
        )))
    }
}
