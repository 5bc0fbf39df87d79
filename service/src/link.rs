//! The agent link, `GET /v1/agent/ws`: the service side of `protocol/src/link.rs`.
//!
//! The agent authenticates with its endpoint's agent token and says `Hello`; the service
//! answers `Welcome` and then sends every unfinished task of the endpoint — those that
//! arrived while no agent was connected, and those an earlier connection's agent accepted
//! but never finished (the agent recognises a task it already has by id, so losing its
//! disk loses nothing). New tasks are pushed as they are stored. Results are stored,
//! handed to waiters, and acknowledged with `ResultsStored`.
//!
//! Each connection has a writer task fed by a channel (the submit path only sends on it)
//! and a reader loop here. A malformed frame is logged and dropped.

use crate::app::App;
use crate::auth::{bearer_token, token_hash};
use crate::error::ApiError;
use crate::hub::{LinkSender, Outgoing};
use crate::registry::Endpoint;
use crate::store::{ResultFate, RowRange};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use scifaas_protocol::link::{AgentMessage, ServiceMessage};
use scifaas_protocol::time::now_micros;
use scifaas_protocol::{
    decode, decode_shared, encode, encode_into, EndpointId, ErrorKind, Outcome, TaskError,
    TaskResult, TaskSpec, TaskState, PROTOCOL_VERSION,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a new connection has to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the service pings an agent, so that a dead peer is noticed by the socket.
const PING_PERIOD: Duration = Duration::from_secs(20);

/// Tasks per page when re-sending an endpoint's backlog.
const BACKLOG_PAGE: usize = 1000;

/// Limits of one `Tasks` frame: queued pushes are merged up to these, and a larger batch
/// is split, so that no frame grows past what an agent accepts.
const MAX_TASKS_PER_FRAME: usize = 1000;
const MAX_TASK_BYTES_PER_FRAME: usize = 8 << 20;

/// The largest frame the service accepts from an agent: room for a batch of results at
/// the result limit, with a floor for batches of many small ones.
fn max_frame_bytes(max_result_bytes: usize) -> usize {
    max_result_bytes
        .saturating_mul(2)
        .saturating_add(1 << 20)
        .max(64 << 20)
}

/// `GET /v1/agent/ws`.
pub(crate) async fn upgrade(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let token = bearer_token(&headers)?;
    let endpoint = app
        .registry
        .endpoint_by_agent_token(&token_hash(token))
        .ok_or_else(|| ApiError::Unauthorized("invalid agent token".into()))?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::BadRequest(format!(
            "the agent link is a WebSocket: {}",
            rejection.body_text()
        ))
    })?;
    let limit = max_frame_bytes(app.config.max_result_bytes);
    Ok(upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| serve_agent(app, endpoint, socket)))
}

async fn serve_agent(app: Arc<App>, endpoint: Arc<Endpoint>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let agent_version = match await_hello(&mut stream).await {
        Ok(version) => version,
        Err(reason) => {
            tracing::warn!(endpoint = endpoint.name, "refusing an agent: {reason}");
            let refused = ServiceMessage::Refused { reason };
            let _ = sink.send(Message::Binary(encode(&refused).into())).await;
            let _ = sink.send(close(close_code::POLICY, "refused")).await;
            return;
        }
    };
    tracing::info!(endpoint = endpoint.name, agent_version, "agent connected");

    let (sender, outgoing) = mpsc::unbounded_channel();
    // Queued first, so that it precedes any task pushed once the hub knows this link.
    let _ = sender.send(Outgoing::Message(ServiceMessage::Welcome {
        protocol_version: PROTOCOL_VERSION,
        endpoint_id: endpoint.id,
        endpoint_name: endpoint.name.clone(),
    }));
    let mut writer = tokio::spawn(write_frames(sink, outgoing));
    // Attach first, then take the store's horizon: a task the submit path did not push
    // here was handed off before the attach, so it was committed before it, and lies
    // within the horizon; a task past the horizon is pushed here. The backlog therefore
    // misses nothing and, but for a narrow race, repeats nothing (the agent dedups a
    // repeat by id anyway).
    let link = app.hub.on_agent_connected(endpoint.id, sender.clone());
    let horizon = app.store.task_horizon();
    let backlog = tokio::spawn(resend_backlog(
        app.clone(),
        endpoint.id,
        horizon,
        sender.clone(),
    ));

    let stopping = app.stopping();
    tokio::pin!(stopping);
    let mut writer_done = false;
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Binary(bytes))) => on_frame(&app, &endpoint, &sender, &bytes),
                Some(Ok(Message::Text(_))) => {
                    tracing::warn!(endpoint = endpoint.name, "dropping a text frame: the link speaks binary frames");
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => app.hub.on_agent_seen(endpoint.id),
                Some(Err(e)) => {
                    tracing::info!(endpoint = endpoint.name, "agent connection failed: {e}");
                    break;
                }
            },
            _ = &mut writer => {
                writer_done = true;
                break;
            }
            _ = &mut stopping => break,
        }
    }
    app.hub.on_agent_disconnected(endpoint.id, link);
    backlog.abort();
    if !writer_done {
        let _ = sender.send(Outgoing::Close("goodbye"));
        drop(sender);
        if tokio::time::timeout(Duration::from_secs(2), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
    tracing::info!(endpoint = endpoint.name, "agent disconnected");
}

/// Waits for the first frame and checks that it is a `Hello` in our protocol version;
/// answers the agent's version, or why the connection is refused.
async fn await_hello(stream: &mut SplitStream<WebSocket>) -> Result<String, String> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Binary(bytes))) => return Some(bytes),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await;
    let bytes = match first {
        Err(_) => return Err(format!("no hello within {} s", HELLO_TIMEOUT.as_secs())),
        Ok(None) => return Err("the first frame must be a binary hello".into()),
        Ok(Some(bytes)) => bytes,
    };
    match decode::<AgentMessage>(&bytes) {
        Ok(AgentMessage::Hello {
            protocol_version,
            agent_version,
        }) if protocol_version == PROTOCOL_VERSION => Ok(agent_version),
        Ok(AgentMessage::Hello {
            protocol_version, ..
        }) => Err(format!(
            "the agent speaks protocol version {protocol_version}; this service speaks version {PROTOCOL_VERSION}"
        )),
        Ok(_) => Err("the first frame must be hello".into()),
        Err(e) => Err(format!("the first frame is not a hello: {e}")),
    }
}

fn on_frame(app: &Arc<App>, endpoint: &Endpoint, sender: &LinkSender, frame: &Bytes) {
    app.hub.on_agent_seen(endpoint.id);
    // Results share the frame's memory rather than each being copied out of it.
    let message = match decode_shared::<AgentMessage>(frame) {
        Ok(message) => message,
        Err(e) => {
            tracing::warn!(endpoint = endpoint.name, "dropping a frame: {e}");
            return;
        }
    };
    match message {
        AgentMessage::Hello { .. } => {
            tracing::warn!(endpoint = endpoint.name, "ignoring a second hello");
        }
        AgentMessage::TasksAccepted { task_ids } if !task_ids.is_empty() => {
            app.store.mark_accepted(endpoint.id, task_ids);
        }
        AgentMessage::Progress { updates } if !updates.is_empty() => {
            app.store.progress(endpoint.id, updates);
        }
        AgentMessage::Results { results } if !results.is_empty() => {
            on_results(app, endpoint.id, sender, results);
        }
        AgentMessage::Status(status) => app.hub.on_status(endpoint.id, status),
        AgentMessage::TasksAccepted { .. }
        | AgentMessage::Progress { .. }
        | AgentMessage::Results { .. } => {}
    }
}

/// Stores a batch of results; once committed, wakes their waiters and acknowledges the
/// batch. The write is queued here, in frame order; the wait for its commit is not done
/// here, so the reader goes on with the next frame meanwhile.
fn on_results(app: &Arc<App>, endpoint: EndpointId, sender: &LinkSender, results: Vec<TaskResult>) {
    let limit = app.config.max_result_bytes;
    let results: Vec<Arc<TaskResult>> = results
        .into_iter()
        .map(|result| Arc::new(within_limits(result, limit)))
        .collect();
    // Queued for the store first, so that a read which finds one of them uncommitted
    // and waits for the store's next commit waits for this one.
    let stored = app
        .store
        .store_results(endpoint, results.clone(), now_micros());
    // The invoke trigger's callers answer with the result itself: they need not wait for
    // the commit.
    app.waiters.on_results_arrived(endpoint, &results);
    let app = app.clone();
    let sender = sender.clone();
    tokio::spawn(async move {
        let stored = stored.await;
        app.waiters
            .on_results_settled(results.iter().map(|result| result.task_id));
        let fates = match stored {
            Ok(fates) => fates,
            Err(e) => {
                // Not acknowledged: the agent keeps them and sends them again.
                tracing::error!(%endpoint, "could not store {} results: {e}", results.len());
                return;
            }
        };
        let mut last_done_seq = None;
        for (result, fate) in results.iter().zip(&fates) {
            match fate {
                ResultFate::Stored { done_seq } => {
                    app.waiters.on_task_finished(result);
                    last_done_seq = Some(*done_seq);
                }
                ResultFate::AlreadyFinished => {
                    tracing::debug!(task_id = %result.task_id, "a re-sent result; already stored");
                }
                ResultFate::Unknown => {
                    tracing::warn!(task_id = %result.task_id, %endpoint, "a result for a task this endpoint does not have");
                }
            }
        }
        if let Some(done_seq) = last_done_seq {
            app.waiters.on_committed_up_to(done_seq);
        }
        let task_ids = results.iter().map(|result| result.task_id).collect();
        let _ = sender.send(Outgoing::Message(ServiceMessage::ResultsStored {
            task_ids,
        }));
    });
}

/// Applies the result size limit: a larger result becomes a `too-large` failure, and
/// captured output is cut to the same limit.
fn within_limits(mut result: TaskResult, limit: usize) -> TaskResult {
    if let Outcome::Success(value) = &result.outcome {
        if value.len() > limit {
            result.outcome = Outcome::Failure(TaskError::system(
                ErrorKind::TooLarge,
                "ResultTooLarge",
                format!(
                    "the result is {} bytes, over the service's limit of {limit} bytes",
                    value.len()
                ),
            ));
        }
    }
    truncate(&mut result.stdout, limit);
    truncate(&mut result.stderr, limit);
    result
}

fn truncate(text: &mut String, limit: usize) {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("\n[output cut at the service's result limit]");
    }
}

/// Sends the endpoint's unfinished tasks up to `horizon` (a task rowid), oldest first,
/// and stamps `waiting-for-endpoint` on those that had not been sent yet.
async fn resend_backlog(app: Arc<App>, endpoint: EndpointId, horizon: i64, sender: LinkSender) {
    let mut resent = 0usize;
    let mut after = 0;
    loop {
        let page = match app
            .store
            .pending_page(endpoint, (after, horizon), BACKLOG_PAGE)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(%endpoint, "cannot read the backlog: {e}");
                return;
            }
        };
        let Some(last) = page.last() else { break };
        after = last.rowid;
        let full_page = page.len() == BACKLOG_PAGE;
        let mut tasks = Vec::with_capacity(page.len());
        let mut unsent = Vec::new();
        for task in page {
            match app.registry.function_by_id(task.function_id) {
                Some(function) => {
                    if task.state == Some(TaskState::Received) {
                        unsent.push(task.rowid);
                    }
                    tasks.push(TaskSpec {
                        task_id: task.id,
                        function: function.spec.clone(),
                        payload: task.payload,
                        walltime_ms: None,
                        retries: 0,
                    })
                }
                None => {
                    tracing::error!(task_id = %task.id, "task names an unknown function; not sent")
                }
            }
        }
        resent += tasks.len();
        if sender
            .send(Outgoing::Message(ServiceMessage::Tasks { tasks }))
            .is_err()
        {
            return;
        }
        if !unsent.is_empty() {
            app.store.mark_sent(RowRange::runs(unsent), now_micros());
        }
        if !full_page {
            break;
        }
    }
    if resent > 0 {
        tracing::info!(%endpoint, resent, "sent the endpoint's backlog");
    }
}

/// The connection's writer: encodes what the channel brings, one message per binary
/// frame, merging queued task pushes into fewer frames. Ends on `Close`, when every
/// sender is gone, or when the socket fails.
async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_PERIOD, PING_PERIOD);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held: Option<Outgoing> = None;
    loop {
        let next = match held.take() {
            Some(next) => Some(next),
            None => tokio::select! {
                next = outgoing.recv() => next,
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                        return;
                    }
                    continue;
                }
            },
        };
        let sent = match next {
            None => {
                let _ = sink.send(close(close_code::NORMAL, "goodbye")).await;
                return;
            }
            Some(Outgoing::Close(reason)) => {
                let _ = sink.send(close(close_code::NORMAL, reason)).await;
                return;
            }
            Some(Outgoing::Message(ServiceMessage::Tasks { mut tasks })) => {
                while tasks.len() < MAX_TASKS_PER_FRAME {
                    match outgoing.try_recv() {
                        Ok(Outgoing::Message(ServiceMessage::Tasks { tasks: more })) => {
                            tasks.extend(more)
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                send_tasks(&mut sink, tasks).await
            }
            Some(Outgoing::Message(message)) => {
                sink.send(Message::Binary(encode(&message).into())).await
            }
        };
        if let Err(e) = sent {
            tracing::info!("cannot write to an agent: {e}");
            return;
        }
    }
}

/// Sends tasks in frames within the per-frame limits, flushing once at the end.
async fn send_tasks(
    sink: &mut SplitSink<WebSocket, Message>,
    tasks: Vec<TaskSpec>,
) -> Result<(), axum::Error> {
    let mut frame: Vec<TaskSpec> = Vec::new();
    let mut frame_bytes = 0;
    for task in tasks {
        let size = task.payload.len() + task.function.source.len();
        if !frame.is_empty()
            && (frame.len() >= MAX_TASKS_PER_FRAME || frame_bytes + size > MAX_TASK_BYTES_PER_FRAME)
        {
            let tasks = std::mem::take(&mut frame);
            sink.feed(tasks_frame(tasks, frame_bytes)).await?;
            frame_bytes = 0;
        }
        frame_bytes += size;
        frame.push(task);
    }
    if !frame.is_empty() {
        sink.feed(tasks_frame(frame, frame_bytes)).await?;
    }
    sink.flush().await
}

/// One `Tasks` frame, encoded into a buffer sized for it up front (`bytes`: the tasks'
/// payloads and sources; the rest is a few hundred bytes per task), so that a batch of
/// large payloads is not copied again each time a growing buffer doubles.
fn tasks_frame(tasks: Vec<TaskSpec>, bytes: usize) -> Message {
    let mut buf = Vec::with_capacity(bytes + tasks.len() * 512 + 64);
    encode_into(&mut buf, &ServiceMessage::Tasks { tasks });
    Message::Binary(buf.into())
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use scifaas_protocol::TaskId;

    #[test]
    fn an_oversized_result_becomes_a_too_large_failure() {
        let mut result = TaskResult::failed(
            TaskId::new(),
            TaskError::system(ErrorKind::WorkerDied, "x", "y"),
        );
        result.outcome = Outcome::Success(Bytes::from(vec![b'1'; 11]));
        result.stdout = "é".repeat(10);
        let limited = within_limits(result.clone(), 10);
        match limited.outcome {
            Outcome::Failure(e) => assert_eq!(e.kind, ErrorKind::TooLarge),
            other => panic!("{other:?}"),
        }
        assert!(limited.stdout.starts_with("ééééé\n[output cut"));
        let kept = within_limits(result, 11);
        assert!(kept.is_success());
    }
}
