//! `POST /v1/tokens` (admin): a new token for a user, creating the user if new.

use crate::app::App;
use crate::auth::{self, AuthUser};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::store::{StoreError, UserRow};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use scifaas_protocol::time::now_micros;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize)]
pub(super) struct CreateToken {
    user: String,
}

pub(super) async fn create(
    State(app): State<Arc<App>>,
    AuthUser(caller): AuthUser,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !caller.is_admin {
        return Err(ApiError::Forbidden(
            "only the admin may create tokens".into(),
        ));
    }
    check_user_name(&body.user)?;
    if app.registry.user(&body.user).is_none() {
        let created = app
            .store
            .create_user(UserRow {
                name: body.user.clone(),
                is_admin: false,
                created_at: now_micros(),
            })
            .await;
        match created {
            // Created meanwhile by a concurrent request: just as good.
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
        app.registry.add_user(&body.user, false);
    }
    let token = auth::mint_token().map_err(|e| ApiError::Internal(e.to_string()))?;
    auth::add_token(&app.store, &app.registry, &token, &body.user).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"user": body.user, "token": token})),
    ))
}

/// User names: 1 to 64 of letters, digits, `.`, `_`, `-`, `@`.
fn check_user_name(name: &str) -> Result<(), ApiError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "user {name:?} is not a valid name: use 1 to 64 letters, digits, '.', '_', '-' or '@'"
        )))
    }
}
