//! Task submission, shared by `POST /v1/tasks` and the invoke trigger: build each task's
//! payload from the raw JSON of its arguments, store the tasks durably, then hand them to
//! the endpoint's agent.

use crate::app::App;
use crate::error::ApiError;
use crate::registry::Function;
use crate::store::NewTask;
use bytes::Bytes;
use scifaas_protocol::time::now_micros;
use scifaas_protocol::{EndpointId, TaskId, TaskSpec};
use serde_json::value::RawValue;
use std::sync::Arc;

/// A task ready to store: id minted, function resolved, payload built.
pub(crate) struct PreparedTask {
    pub id: TaskId,
    pub function: Arc<Function>,
    pub payload: Bytes,
}

/// The payload `{"args": ARGS, "kwargs": KWARGS}`, made by concatenating the raw JSON
/// the caller sent: arguments are never decoded into a value tree.
pub(crate) fn payload(
    args: Option<&RawValue>,
    kwargs: Option<&RawValue>,
) -> Result<Bytes, ApiError> {
    let args = raw_or(args, "[]");
    let kwargs = raw_or(kwargs, "{}");
    if !args.starts_with('[') {
        return Err(ApiError::BadRequest(format!(
            "args must be a JSON array, not {}",
            preview(args)
        )));
    }
    if !kwargs.starts_with('{') {
        return Err(ApiError::BadRequest(format!(
            "kwargs must be a JSON object, not {}",
            preview(kwargs)
        )));
    }
    Ok(envelope(args.as_bytes(), kwargs.as_bytes()))
}

/// The payload of the invoke trigger: the body is the function's one argument. The body
/// is checked to be JSON (without building a value) and wrapped as-is.
pub(crate) fn single_argument_payload(body: &[u8]) -> Result<Bytes, ApiError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the request body must be one JSON document (the function's argument): {e}"
        ))
    })?;
    let mut args = Vec::with_capacity(body.len() + 2);
    args.push(b'[');
    args.extend_from_slice(body);
    args.push(b']');
    Ok(envelope(&args, b"{}"))
}

fn envelope(args: &[u8], kwargs: &[u8]) -> Bytes {
    const HEAD: &[u8] = b"{\"args\":";
    const MIDDLE: &[u8] = b",\"kwargs\":";
    let mut payload = Vec::with_capacity(HEAD.len() + args.len() + MIDDLE.len() + kwargs.len() + 1);
    payload.extend_from_slice(HEAD);
    payload.extend_from_slice(args);
    payload.extend_from_slice(MIDDLE);
    payload.extend_from_slice(kwargs);
    payload.push(b'}');
    Bytes::from(payload)
}

/// A missing or `null` argument is its default.
fn raw_or<'a>(raw: Option<&'a RawValue>, default: &'a str) -> &'a str {
    match raw.map(RawValue::get) {
        Some("null") | None => default,
        Some(text) => text,
    }
}

fn preview(json: &str) -> String {
    let mut end = json.len().min(40);
    while !json.is_char_boundary(end) {
        end -= 1;
    }
    if end < json.len() {
        format!("{}...", &json[..end])
    } else {
        json.to_owned()
    }
}

/// Stores the tasks (state `received`) and hands them to the endpoint's agent if one is
/// connected (stamping `waiting-for-endpoint`); answers once they are durable. Runs to the
/// end even if the caller hangs up meanwhile, so that a stored task is never left unsent.
///
/// The hand-off does not wait for the commit: the task runs while its row is synced, which
/// takes the fsync off a call's round trip. That is safe because the store's writer
/// applies operations in the order they are queued, and the insert is queued before the
/// agent can hear of the task: its acceptance and its result are applied after the row
/// exists. Should the commit fail, the caller gets an error and a result the agent sends
/// for the task is dropped as one for an unknown task (the function may have run, as it
/// may when a caller times out).
pub(crate) async fn submit(
    app: &Arc<App>,
    owner: Arc<str>,
    endpoint: EndpointId,
    tasks: Vec<PreparedTask>,
) -> Result<(), ApiError> {
    let app = app.clone();
    let work = tokio::spawn(async move {
        let received_at = now_micros();
        let rows = tasks
            .iter()
            .map(|task| NewTask {
                id: task.id,
                owner: owner.clone(),
                endpoint_id: endpoint,
                function_id: task.function.spec.id,
                payload: task.payload.clone(),
                received_at,
            })
            .collect();
        // Queued (eagerly) before the push below.
        let inserted = app.store.insert_tasks(rows);
        let mut sent_at = now_micros();
        let pushed_early = app.hub.push_tasks(endpoint, specs(&tasks));
        let rows = inserted.await?;
        // No agent was connected before the commit. One that connected since then may
        // have read the backlog before this commit, so push again; one that connects
        // later finds the task in the backlog. The agent drops a task it already has.
        let pushed = pushed_early || {
            sent_at = now_micros();
            app.hub.push_tasks(endpoint, specs(&tasks))
        };
        if pushed {
            app.store.mark_sent(vec![rows], sent_at);
        }
        Ok(())
    });
    work.await
        .map_err(|e| ApiError::Internal(format!("task submission failed: {e}")))?
}

fn specs(tasks: &[PreparedTask]) -> Vec<TaskSpec> {
    tasks
        .iter()
        .map(|task| TaskSpec {
            task_id: task.id,
            function: task.function.spec.clone(),
            payload: task.payload.clone(),
            walltime_ms: None,
            retries: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn payload_is_the_raw_arguments_spliced_verbatim() {
        let args = raw("[1, {\"b\": 2.50}]");
        let kwargs = raw("{\"k\": \"v\"}");
        let payload = payload(Some(&args), Some(&kwargs)).unwrap();
        assert_eq!(
            &payload[..],
            b"{\"args\":[1, {\"b\": 2.50}],\"kwargs\":{\"k\": \"v\"}}"
        );
        assert_eq!(
            &super::payload(None, None).unwrap()[..],
            b"{\"args\":[],\"kwargs\":{}}"
        );
        let null = raw("null");
        assert_eq!(
            &super::payload(Some(&null), None).unwrap()[..],
            b"{\"args\":[],\"kwargs\":{}}"
        );
    }

    #[test]
    fn arguments_of_the_wrong_shape_are_refused() {
        let number = raw("3");
        assert!(matches!(
            payload(Some(&number), None),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            payload(None, Some(&number)),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn invoke_body_becomes_the_single_argument() {
        let payload = single_argument_payload(b" {\"x\": 1}\n").unwrap();
        assert_eq!(&payload[..], b"{\"args\":[ {\"x\": 1}\n],\"kwargs\":{}}");
        serde_json::from_slice::<serde_json::Value>(&payload).unwrap();
        assert!(single_argument_payload(b"{\"x\": ").is_err());
        assert!(single_argument_payload(b"").is_err());
        assert!(single_argument_payload(b"1 2").is_err());
    }
}
