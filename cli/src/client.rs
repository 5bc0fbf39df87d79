//! A small client of the service's REST API, shared by the client commands, the demo
//! and the benchmarks.

use crate::ServiceArgs;
use anyhow::Context;
use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// A non-2xx answer, with the service's error code and message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self
            .body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("error");
        let message = self
            .body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("");
        write!(f, "{} {code}: {message}", self.status.as_u16())
    }
}

impl std::error::Error for ApiError {}

impl Api {
    pub fn new(base: &str, token: &str) -> Api {
        Self::with_ca(base, token, None).expect("a client without extra roots always builds")
    }

    /// A client that also trusts the PEM certificate(s) in `ca`, for an `https://`
    /// service whose certificate no public authority signed.
    pub fn with_ca(base: &str, token: &str, ca: Option<&std::path::Path>) -> anyhow::Result<Api> {
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true);
        if let Some(path) = ca {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA file {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} is not a PEM certificate bundle", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Api {
            http: builder.build().context("building the HTTP client")?,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    /// From `--url`/`--token`, falling back to the local service's admin token file.
    pub fn from_args(args: &ServiceArgs) -> anyhow::Result<Api> {
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let path = crate::home::service_dir().join("admin-token");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no token given (--token or SCIFAAS_TOKEN) and cannot read {}",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        let ca = std::env::var_os("SCIFAAS_CA_FILE").map(std::path::PathBuf::from);
        Api::with_ca(&args.url, &token, ca.as_deref())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; answers the status and the raw body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, reqwest::header::HeaderMap, Bytes)> {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the service at {}", self.base))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok((status, headers, body))
    }

    /// A JSON request that must succeed; answers the JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let body = body.map(|b| Bytes::from(serde_json::to_vec(b).expect("JSON encodes")));
        let (status, _, bytes) = self.send(method, path, body).await?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(ApiError {
                status,
                body: value,
            }
            .into());
        }
        Ok(value)
    }

    pub async fn register_function(&self, name: &str, source: &str) -> anyhow::Result<String> {
        let answer = self
            .call(
                reqwest::Method::POST,
                "/v1/functions",
                Some(&json!({"name": name, "source": source})),
            )
            .await?;
        string_field(&answer, "function_id")
    }

    /// Creates an endpoint; answers `(endpoint_id, agent_token)`.
    pub async fn create_endpoint(&self, name: &str) -> anyhow::Result<(String, String)> {
        let answer = self
            .call(
                reqwest::Method::POST,
                "/v1/endpoints",
                Some(&json!({"name": name})),
            )
            .await?;
        Ok((
            string_field(&answer, "endpoint_id")?,
            string_field(&answer, "agent_token")?,
        ))
    }

    pub async fn endpoint(&self, name_or_id: &str) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/endpoints/{name_or_id}"),
            None,
        )
        .await
    }

    /// The HTTP trigger: answers `(status, task id, body)` whatever the status.
    pub async fn invoke(
        &self,
        endpoint: &str,
        function_id: &str,
        document: Bytes,
        timeout_s: u64,
    ) -> anyhow::Result<(StatusCode, Option<String>, Bytes)> {
        let (status, headers, body) = self
            .send(
                reqwest::Method::POST,
                &format!(
                    "/v1/endpoints/{endpoint}/functions/{function_id}/invoke?timeout={timeout_s}"
                ),
                Some(document),
            )
            .await?;
        let task_id = headers
            .get("x-scifaas-task-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((status, task_id, body))
    }

    pub async fn task(&self, task_id: &str, wait_s: Option<u64>) -> anyhow::Result<Value> {
        let path = match wait_s {
            Some(wait) => format!("/v1/tasks/{task_id}?wait={wait}"),
            None => format!("/v1/tasks/{task_id}"),
        };
        self.call(reqwest::Method::GET, &path, None).await
    }

    /// Many tasks' views in one call.
    pub async fn tasks_status(&self, task_ids: &[String]) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/v1/tasks/status",
            Some(&json!({"task_ids": task_ids})),
        )
        .await
    }
}

fn string_field(value: &Value, key: &str) -> anyhow::Result<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("the service's answer has no `{key}`: {value}"))
}
