//! `POST /v1/functions` and `GET /v1/functions/{id}`.

use crate::app::App;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::store::FunctionRow;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use scifaas_protocol::time::now_micros;
use scifaas_protocol::{ContainerSpec, FunctionId};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Deserialize)]
pub(super) struct RegisterFunction {
    name: String,
    source: String,
    description: Option<String>,
    container: Option<ContainerRequest>,
}

/// `container: {type, image, options?}`: the container the function must run in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerRequest {
    #[serde(rename = "type")]
    runtime: String,
    image: String,
    #[serde(default)]
    options: Option<String>,
}

impl ContainerRequest {
    /// The container as stored and sent, or what is wrong with it. Whether an endpoint
    /// accepts it is the endpoint's to say (its `allowed_containers`), when a task is sent.
    fn check(self) -> Result<ContainerSpec, ApiError> {
        if !ContainerSpec::RUNTIMES.contains(&self.runtime.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "container.type {:?} is not a container runtime; known: {}",
                self.runtime,
                ContainerSpec::RUNTIMES.join(", ")
            )));
        }
        let image = &self.image;
        if image.trim().is_empty() || image.trim() != image || image.contains(char::is_control) {
            return Err(ApiError::BadRequest(format!(
                "container.image {image:?} must name an image: not empty, without surrounding \
                 blanks or control characters"
            )));
        }
        if self.options.as_deref().is_some_and(|o| o.contains('\0')) {
            return Err(ApiError::BadRequest(
                "container.options must not contain NUL characters".into(),
            ));
        }
        Ok(ContainerSpec {
            runtime: self.runtime,
            image: self.image,
            options: self.options.filter(|o| !o.trim().is_empty()),
        })
    }
}

pub(super) async fn register(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<RegisterFunction>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !is_python_identifier(&body.name) {
        return Err(ApiError::BadRequest(format!(
            "name {:?} is not a Python identifier: it must name the function the source defines",
            body.name
        )));
    }
    if body.source.trim().is_empty() {
        return Err(ApiError::BadRequest("source is empty".into()));
    }
    let container = body.container.map(ContainerRequest::check).transpose()?;
    let row = FunctionRow {
        id: FunctionId::new(),
        owner: user.name.to_string(),
        hash: function_hash(&body.name, &body.source),
        name: body.name,
        source: body.source,
        description: body.description,
        container,
        created_at: now_micros(),
    };
    app.store.create_function(row.clone()).await?;
    let function = app.registry.add_function(row);
    Ok((
        StatusCode::CREATED,
        Json(json!({"function_id": function.spec.id})),
    ))
}

pub(super) async fn get(
    State(app): State<Arc<App>>,
    AuthUser(user): AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let function = app
        .registry
        .function(&user.name, &id)
        .ok_or_else(|| ApiError::not_found("function", &id))?;
    Ok(Json(json!({
        "function_id": function.spec.id,
        "name": function.spec.name,
        "source": String::from_utf8_lossy(&function.spec.source),
        "description": function.description,
        "container": function.spec.container,
        "created_at": function.created_at,
    })))
}

/// Workers' cache key: hex SHA-256 of the name, a NUL, and the source.
fn function_hash(name: &str, source: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0]);
    hasher.update(source.as_bytes());
    hex::encode(hasher.finalize())
}

/// Python's reserved words, which cannot name a function.
const PYTHON_KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// Whether `name` can name a Python function: a letter or `_`, then letters, digits or
/// `_` (Unicode letters included, as in Python 3), and not a keyword.
fn is_python_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first == '_' || first.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
        && !PYTHON_KEYWORDS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_identifiers() {
        for good in ["f", "_private", "double2", "größe"] {
            assert!(is_python_identifier(good), "{good}");
        }
        for bad in ["", "2x", "a-b", "a b", "def", "None", "f()"] {
            assert!(!is_python_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn hash_depends_on_name_and_source() {
        let h = function_hash("f", "def f(): pass");
        assert_eq!(h.len(), 64);
        assert_eq!(h, function_hash("f", "def f(): pass"));
        assert_ne!(h, function_hash("g", "def f(): pass"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(function_hash("ab", "c"), function_hash("a", "bc"));
    }
}
