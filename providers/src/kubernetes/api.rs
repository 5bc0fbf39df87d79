//! The few Kubernetes REST calls the provider makes, and the API's errors as
//! [`ProviderError`]s.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::Value;

use super::credentials::{error_chain, Credentials};
use crate::error::ProviderError;

/// A connection to one API server, with its credentials.
pub(crate) struct Api {
    credentials: Credentials,
    timeout: Duration,
    /// Built at the first request, not at construction: the provider may be made inside
    /// the agent's async runtime, where reqwest's blocking client panics when built.
    client: Mutex<Option<Client>>,
}

/// A Kubernetes `Status` object, the body of every API error.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Status {
    kind: String,
    message: Option<String>,
    reason: Option<String>,
    code: Option<u16>,
}

impl Api {
    pub(crate) fn new(credentials: Credentials, timeout: Duration) -> Self {
        Self {
            credentials,
            timeout,
            client: Mutex::new(None),
        }
    }

    pub(crate) fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The URL of `path` (which starts with `/`) on the server, with `query` pairs.
    pub(crate) fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, ProviderError> {
        let text = format!("{}{path}", self.credentials.server());
        let mut url = Url::parse(&text).map_err(|e| ProviderError::Credentials {
            origin: self.credentials.origin().to_owned(),
            message: format!("server URL `{text}`: {e}"),
        })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    fn client(&self) -> Result<Client, ProviderError> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        let client = self.credentials.http_client(self.timeout)?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Sends `method url` with `body` as JSON; answers the JSON of a 2xx answer, or the
    /// API's refusal as [`ProviderError::Api`] carrying the `Status` message.
    ///
    /// The request runs on a thread of its own: reqwest's blocking client panics (in
    /// debug builds) on a thread that is inside an async runtime, and a caller may be one
    /// (the agent calls providers from its runtime's threads). A thread per API call costs
    /// microseconds, and the calls are rare.
    pub(crate) fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| self.call_here(method, url, body))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn call_here(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        let request_name = format!("{method} {url}");
        let mut request = self
            .client()?
            .request(method, url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = self.credentials.bearer_token()? {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().map_err(|e| ProviderError::Api {
            request: request_name.clone(),
            code: None,
            reason: None,
            message: error_chain(&e),
        })?;
        let code = response.status().as_u16();
        let bytes = response.bytes().map_err(|e| ProviderError::Api {
            request: request_name.clone(),
            code: Some(code),
            reason: None,
            message: format!("reading the answer: {}", error_chain(&e)),
        })?;
        if !(200..300).contains(&code) {
            return Err(api_error(request_name, code, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::Api {
            request: request_name,
            code: Some(code),
            reason: None,
            message: format!("the answer is not JSON: {e}"),
        })
    }
}

/// The error for an API answer with status `code` and `body`: the `Status` object's
/// message and reason (`Forbidden`, `NotFound`, `AlreadyExists`, `Invalid`, ...) where the
/// body is one, else the start of the body (a proxy's HTML page, say).
pub fn api_error(request: impl Into<String>, code: u16, body: &[u8]) -> ProviderError {
    let request = request.into();
    match serde_json::from_slice::<Status>(body) {
        Ok(status) if status.kind == "Status" => ProviderError::Api {
            request,
            code: Some(status.code.unwrap_or(code)),
            reason: status.reason.filter(|r| !r.is_empty()),
            message: status
                .message
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "(the server gave no message)".to_owned()),
        },
        _ => {
            let text = String::from_utf8_lossy(body);
            let mut text: String = text.trim().chars().take(300).collect();
            if text.is_empty() {
                text = "(empty answer)".to_owned();
            }
            ProviderError::Api {
                request,
                code: Some(code),
                reason: None,
                message: text,
            }
        }
    }
}
