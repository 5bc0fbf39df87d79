//! What the service's integration tests share: a real service on 127.0.0.1 port 0 with
//! its SQLite file in a temporary directory, an HTTP client, and a scripted test peer
//! that plays the agent's side of `protocol/src/link.rs` over a real WebSocket.

#![allow(dead_code)] // each test binary uses a different part of this module

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use scifaas_protocol::link::{AgentMessage, ServiceMessage};
use scifaas_protocol::{
    decode, encode, Actor, ErrorKind, Outcome, ResultTiming, TaskError, TaskId, TaskResult,
    TaskSpec, TaskState, Transition, PROTOCOL_VERSION,
};
use scifaas_service::{start, RunningService, ServiceConfig};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The payload and result limit of test services: small, so the 413 and too-large paths
/// are cheap to reach.
pub const TEST_LIMIT: usize = 64 * 1024;

/// Starts a service on a free port with its data in `dir`.
pub async fn start_service(dir: &Path) -> RunningService {
    start(ServiceConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        max_payload_bytes: TEST_LIMIT,
        max_result_bytes: TEST_LIMIT,
        tls: None,
    })
    .await
    .expect("the service starts")
}

/// An HTTP client of the REST API holding one token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

/// A response: status, headers, and the body as text.
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        self.json()
    }

    /// Asserts an error answer of the API's shape and returns it.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        let body = self.expect(status);
        assert_eq!(body["error"], code, "body: {}", self.text);
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "body: {}",
            self.text
        );
        body
    }
}

impl Api {
    pub fn new(service: &RunningService, token: &str) -> Self {
        Self {
            base: format!("http://{}", service.addr),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub fn admin(service: &RunningService) -> Self {
        Self::new(service, &service.admin_token)
    }

    /// The same service, another token.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("the service answers");
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            text: response.text().await.expect("a body"),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.post_raw(path, serde_json::to_vec(body).unwrap()).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Answer {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// A new user with its own token (as the admin).
    pub async fn new_user(&self, name: &str) -> Api {
        let body = self
            .post("/v1/tokens", &json!({"user": name}))
            .await
            .expect(201);
        self.with_token(body["token"].as_str().unwrap())
    }

    /// Registers `def NAME(...)` and returns its id.
    pub async fn register(&self, name: &str, source: &str) -> String {
        let body = self
            .post("/v1/functions", &json!({"name": name, "source": source}))
            .await
            .expect(201);
        body["function_id"].as_str().unwrap().to_owned()
    }

    /// Creates an endpoint; returns (id, agent token).
    pub async fn endpoint(&self, name: &str) -> (String, String) {
        let body = self
            .post("/v1/endpoints", &json!({"name": name}))
            .await
            .expect(201);
        (
            body["endpoint_id"].as_str().unwrap().to_owned(),
            body["agent_token"].as_str().unwrap().to_owned(),
        )
    }

    /// Submits one task; returns its id.
    pub async fn submit(&self, endpoint: &str, function_id: &str, args: Value) -> String {
        let body = self
            .post(
                "/v1/tasks",
                &json!({"endpoint": endpoint, "function_id": function_id, "args": args}),
            )
            .await
            .expect(202);
        body["task_ids"][0].as_str().unwrap().to_owned()
    }

    pub async fn task(&self, id: &str) -> Value {
        self.get(&format!("/v1/tasks/{id}")).await.expect(200)
    }
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A scripted test peer playing the agent: it connects with an agent token, says
/// `Hello`, and then does exactly what each test tells it to.
pub struct ScriptedAgent {
    socket: Socket,
    pub endpoint_id: String,
}

/// How long the scripted agent waits for a message the test expects.
const PEER_WAIT: Duration = Duration::from_secs(10);

impl ScriptedAgent {
    /// Opens the WebSocket with `token`, without saying anything yet.
    pub async fn open(service: &RunningService, token: &str) -> Result<Socket, String> {
        let mut request = format!("ws://{}/v1/agent/ws", service.addr)
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        // Nagle off, as a real agent has it: the peer sends small frames back to back.
        match tokio_tungstenite::connect_async_with_config(request, None, true).await {
            Ok((socket, _)) => Ok(socket),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Connects, says `Hello` and expects `Welcome`.
    pub async fn connect(service: &RunningService, token: &str) -> Self {
        let socket = Self::open(service, token)
            .await
            .expect("the agent link opens");
        let mut agent = Self {
            socket,
            endpoint_id: String::new(),
        };
        agent
            .send(&AgentMessage::Hello {
                protocol_version: PROTOCOL_VERSION,
                agent_version: "scripted-test-peer".into(),
            })
            .await;
        match agent.recv().await {
            Some(ServiceMessage::Welcome {
                protocol_version,
                endpoint_id,
                ..
            }) => {
                assert_eq!(protocol_version, PROTOCOL_VERSION);
                agent.endpoint_id = endpoint_id.to_string();
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        agent
    }

    /// Wraps a socket opened with [`Self::open`].
    pub fn from_socket(socket: Socket) -> Self {
        Self {
            socket,
            endpoint_id: String::new(),
        }
    }

    pub async fn send(&mut self, message: &AgentMessage) {
        self.send_raw(encode(message)).await;
    }

    pub async fn send_raw(&mut self, frame: Vec<u8>) {
        self.socket
            .send(Message::Binary(Bytes::from(frame)))
            .await
            .expect("the agent link takes a frame");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text))
            .await
            .expect("the agent link takes a frame");
    }

    /// The next message from the service; `None` when the link closed (or nothing came
    /// within the peer's patience).
    pub async fn recv(&mut self) -> Option<ServiceMessage> {
        self.recv_within(PEER_WAIT).await
    }

    pub async fn recv_within(&mut self, wait: Duration) -> Option<ServiceMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match frame {
                Ok(Message::Binary(bytes)) => {
                    return Some(decode(&bytes).expect("the service sends valid frames"))
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Receives `Tasks` frames until `count` tasks came; panics on anything else.
    pub async fn expect_tasks(&mut self, count: usize) -> Vec<TaskSpec> {
        let mut tasks = Vec::new();
        while tasks.len() < count {
            match self.recv().await {
                Some(ServiceMessage::Tasks { tasks: more }) => tasks.extend(more),
                other => panic!(
                    "expected tasks ({} of {count} so far), got {other:?}",
                    tasks.len()
                ),
            }
        }
        assert_eq!(tasks.len(), count, "more tasks than expected");
        tasks
    }

    /// Asserts that nothing arrives for a while.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(message) = self.recv_within(wait).await {
            panic!("expected nothing, got {message:?}");
        }
    }

    pub async fn accept(&mut self, tasks: &[TaskSpec]) {
        let task_ids = tasks.iter().map(|t| t.task_id).collect();
        self.send(&AgentMessage::TasksAccepted { task_ids }).await;
    }

    /// Sends results and expects their acknowledgement.
    pub async fn finish(&mut self, results: Vec<TaskResult>) {
        let ids: Vec<TaskId> = results.iter().map(|r| r.task_id).collect();
        self.send(&AgentMessage::Results { results }).await;
        match self.recv().await {
            Some(ServiceMessage::ResultsStored { task_ids }) => assert_eq!(task_ids, ids),
            other => panic!("expected results-stored, got {other:?}"),
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// A successful result whose value is `json` verbatim, stamped as the real agent stamps
/// it: the agent's and the interchange's transitions, then the manager's.
pub fn success(task_id: TaskId, json: &str) -> TaskResult {
    let now = scifaas_protocol::time::now_micros();
    let stamp = |state, at, actor| Transition { state, at, actor };
    TaskResult {
        task_id,
        outcome: Outcome::Success(Bytes::copy_from_slice(json.as_bytes())),
        stdout: "printed\n".into(),
        stderr: String::new(),
        transitions: vec![
            stamp(TaskState::WaitingForNodes, now - 40, Actor::Agent),
            stamp(TaskState::WaitingForLaunch, now - 30, Actor::Interchange),
            stamp(TaskState::Running, now, Actor::Manager),
            stamp(TaskState::Success, now + 20, Actor::Manager),
        ],
        timing: ResultTiming {
            exec_start: now,
            exec_end: now + 10,
            manager_sent: now + 20,
            agent_sent: now + 30,
        },
    }
}

/// A failed result.
pub fn failure(task_id: TaskId, kind: ErrorKind, type_name: &str, message: &str) -> TaskResult {
    TaskResult::failed(
        task_id,
        TaskError {
            kind,
            type_name: type_name.into(),
            message: message.into(),
            traceback: Some(format!(
                "Traceback (most recent call last):\n{type_name}: {message}"
            )),
        },
    )
}

/// The states of a task view's transitions, in order.
pub fn states(task: &Value) -> Vec<String> {
    task["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["state"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls a task until it is in `state` (deferred state hints take a few milliseconds).
pub async fn wait_for_state(api: &Api, id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let task = api.task(id).await;
        if task["state"] == state {
            return task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task never reached {state}: {task}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A scripted agent that answers each task by its first argument: "ok" succeeds,
/// "raise" fails with a Python exception, "die" with a dead worker, "huge" returns a
/// result over the limit, a number is echoed back, anything else is never answered.
pub async fn run_answering_agent(mut agent: ScriptedAgent) {
    while let Some(message) = agent.recv_within(Duration::from_secs(30)).await {
        let ServiceMessage::Tasks { tasks } = message else {
            continue;
        };
        agent.accept(&tasks).await;
        let mut results = Vec::new();
        for task in tasks {
            let payload: serde_json::Value = serde_json::from_slice(&task.payload).unwrap();
            match payload["args"][0].as_str() {
                Some("ok") => results.push(success(
                    task.task_id,
                    "{\"answer\": 42, \"pi\": 3.14159265358979323846264338327950288}",
                )),
                Some("raise") => results.push(failure(
                    task.task_id,
                    ErrorKind::FunctionException,
                    "ZeroDivisionError",
                    "division by zero",
                )),
                Some("die") => results.push(failure(
                    task.task_id,
                    ErrorKind::WorkerDied,
                    "WorkerDied",
                    "the worker exited with signal 9",
                )),
                Some("huge") => results.push(success(
                    task.task_id,
                    &format!("\"{}\"", "x".repeat(TEST_LIMIT + 1)),
                )),
                None if payload["args"][0].is_number() => {
                    results.push(success(task.task_id, &payload["args"][0].to_string()))
                }
                _ => {}
            }
        }
        if !results.is_empty() {
            agent.send(&AgentMessage::Results { results }).await;
        }
    }
}
