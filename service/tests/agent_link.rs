//! The agent link end to end: a real service, real HTTP, and a scripted test peer playing
//! the agent's side of `protocol/src/link.rs` over a real WebSocket.

mod common;

use common::{start_service, states, success, wait_for_state, Api, ScriptedAgent};
use scifaas_protocol::link::{
    AgentMessage, BlockNode, BlockStatus, EndpointStatus, ManagerStatus, ServiceMessage,
    TaskProgress,
};
use scifaas_protocol::{TaskId, TaskSpec, PROTOCOL_VERSION};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

fn ids(tasks: &[TaskSpec]) -> HashSet<String> {
    tasks.iter().map(|t| t.task_id.to_string()).collect()
}

#[tokio::test]
async fn the_agent_gets_tasks_from_before_and_after_it_connected_and_returns_results() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let (endpoint_id, agent_token) = api.endpoint("laptop").await;
    let source = "def double(x):\n    return 2 * x\n";
    let function = api.register("double", source).await;
    let early = api.submit("laptop", &function, json!([1])).await;

    let mut agent = ScriptedAgent::connect(&service, &agent_token).await;
    assert_eq!(agent.endpoint_id, endpoint_id);
    let backlog = agent.expect_tasks(1).await;
    assert_eq!(backlog[0].task_id.to_string(), early);
    assert_eq!(&backlog[0].payload[..], b"{\"args\":[1],\"kwargs\":{}}");
    assert_eq!(backlog[0].function.name, "double");
    assert_eq!(&backlog[0].function.source[..], source.as_bytes());
    assert_eq!(backlog[0].function.hash.len(), 64);

    // Tasks submitted together while the agent is connected come in one frame.
    let body = api
        .post(
            "/v1/tasks",
            &json!({"endpoint": "laptop", "tasks": [
                {"function_id": function, "args": [2]},
                {"function_id": function, "args": [3]},
                {"function_id": function, "kwargs": {"x": 4}},
            ]}),
        )
        .await
        .expect(202);
    let batch = match agent.recv().await {
        Some(ServiceMessage::Tasks { tasks }) => tasks,
        other => panic!("expected one tasks frame, got {other:?}"),
    };
    assert_eq!(batch.len(), 3);
    let submitted: HashSet<String> = body["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids(&batch), submitted);
    // In submission order; the client sent compact JSON, which is kept as it came.
    assert_eq!(&batch[2].payload[..], b"{\"args\":[],\"kwargs\":{\"x\":4}}");

    agent.accept(&backlog).await;
    wait_for_state(&api, &early, "waiting-for-nodes").await;
    let result = success(backlog[0].task_id, "{\"value\": 2}");
    // The agent's and the interchange's stamps reported early as progress, and again
    // with the result (as after a reconnect): each recorded once.
    let updates = result.transitions[..2]
        .iter()
        .map(|&transition| TaskProgress {
            task_id: backlog[0].task_id,
            transition,
        })
        .collect();
    agent.send(&AgentMessage::Progress { updates }).await;
    wait_for_state(&api, &early, "waiting-for-launch").await;
    agent.finish(vec![result]).await;

    let task = api.task(&early).await;
    assert_eq!(task["state"], "success");
    assert_eq!(task["result"], json!({"value": 2}));
    assert_eq!(task["stdout"], "printed\n");
    assert_eq!(
        states(&task),
        [
            "received",
            "waiting-for-endpoint",
            "waiting-for-nodes",
            "waiting-for-launch",
            "running",
            "success"
        ]
    );
    let actors: Vec<&str> = task["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["actor"].as_str().unwrap())
        .collect();
    assert_eq!(
        actors,
        [
            "service",
            "service",
            "agent",
            "interchange",
            "manager",
            "manager"
        ]
    );
    assert!(task["timing"]["exec_start"].as_i64().unwrap() > 0);
    assert!(task["timing"]["completed"].as_i64().unwrap() >= task["created_at"].as_i64().unwrap());
    assert_eq!(task["completed_at"], task["timing"]["completed"]);
    agent.close().await;
    service.shutdown().await;
}

#[tokio::test]
async fn a_reconnecting_agent_gets_every_unfinished_task_again() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let (_, agent_token) = api.endpoint("ep").await;
    let f = api.register("f", "def f(x): return x").await;
    let mut agent = ScriptedAgent::connect(&service, &agent_token).await;
    let body = api
        .post(
            "/v1/tasks",
            &json!({"endpoint": "ep", "tasks": [
                {"function_id": f, "args": ["a"]},
                {"function_id": f, "args": ["b"]},
                {"function_id": f, "args": ["c"]},
            ]}),
        )
        .await
        .expect(202);
    let submitted: Vec<String> = body["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    let tasks = agent.expect_tasks(3).await;
    let by_id = |id: &str| {
        tasks
            .iter()
            .find(|t| t.task_id.to_string() == id)
            .unwrap()
            .clone()
    };
    let (a, b) = (by_id(&submitted[0]), by_id(&submitted[1]));
    // a and b reach the agent's journal; a finishes; c is never acknowledged.
    agent.accept(&[a.clone(), b.clone()]).await;
    agent.finish(vec![success(a.task_id, "\"a\"")]).await;
    wait_for_state(&api, &submitted[1], "waiting-for-nodes").await;
    agent.close().await;

    // d arrives while no agent is connected.
    let d = api.submit("ep", &f, json!(["d"])).await;
    let view = api.get("/v1/endpoints/ep").await.expect(200);
    assert_eq!(view["connected"], false);
    assert_eq!(api.task(&d).await["state"], "received");

    let mut agent = ScriptedAgent::connect(&service, &agent_token).await;
    let resent = agent.expect_tasks(3).await;
    let expected: HashSet<String> = [submitted[1].clone(), submitted[2].clone(), d.clone()].into();
    assert_eq!(ids(&resent), expected);
    agent.expect_silence(Duration::from_millis(200)).await;
    wait_for_state(&api, &d, "waiting-for-endpoint").await;
    service.shutdown().await;
}

#[tokio::test]
async fn a_new_agent_connection_replaces_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let (_, agent_token) = api.endpoint("ep").await;
    let f = api.register("f", "def f(): pass").await;
    let mut old = ScriptedAgent::connect(&service, &agent_token).await;
    let mut new = ScriptedAgent::connect(&service, &agent_token).await;
    assert!(old.recv().await.is_none(), "the old connection is closed");
    api.submit("ep", &f, json!([])).await;
    new.expect_tasks(1).await;
    assert_eq!(
        api.get("/v1/endpoints/ep").await.expect(200)["connected"],
        true
    );
    service.shutdown().await;
}

#[tokio::test]
async fn an_agent_with_a_bad_token_or_another_protocol_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let (_, agent_token) = api.endpoint("ep").await;
    let error = ScriptedAgent::open(&service, "not-a-token")
        .await
        .err()
        .unwrap();
    assert!(error.contains("401"), "{error}");
    // A user token is not an agent token.
    let error = ScriptedAgent::open(&service, &service.admin_token)
        .await
        .err()
        .unwrap();
    assert!(error.contains("401"), "{error}");

    let socket = ScriptedAgent::open(&service, &agent_token).await.unwrap();
    let mut agent = ScriptedAgent::from_socket(socket);
    agent
        .send(&AgentMessage::Hello {
            protocol_version: PROTOCOL_VERSION + 1,
            agent_version: "future".into(),
        })
        .await;
    match agent.recv().await {
        Some(ServiceMessage::Refused { reason }) => assert!(reason.contains("version"), "{reason}"),
        other => panic!("expected refused, got {other:?}"),
    }
    assert!(agent.recv().await.is_none(), "closed after refusing");

    let socket = ScriptedAgent::open(&service, &agent_token).await.unwrap();
    let mut agent = ScriptedAgent::from_socket(socket);
    agent
        .send(&AgentMessage::TasksAccepted { task_ids: vec![] })
        .await;
    assert!(matches!(
        agent.recv().await,
        Some(ServiceMessage::Refused { .. })
    ));
    assert_eq!(
        api.get("/v1/endpoints/ep").await.expect(200)["connected"],
        false
    );
    service.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_are_dropped_and_the_link_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let (_, agent_token) = api.endpoint("ep").await;
    let f = api.register("f", "def f(): pass").await;
    let mut agent = ScriptedAgent::connect(&service, &agent_token).await;
    agent.send_raw(b"\xff\xff garbage".to_vec()).await;
    agent.send_raw(Vec::new()).await;
    agent.send_raw(b"\x81\xa4type\xa7results".to_vec()).await;
    agent.send_text("hello?").await;
    // A result for a task that does not exist is acknowledged and otherwise ignored.
    agent.finish(vec![success(TaskId::new(), "1")]).await;
    let task = api.submit("ep", &f, json!([])).await;
    let tasks = agent.expect_tasks(1).await;
    assert_eq!(tasks[0].task_id.to_string(), task);
    service.shutdown().await;
}

#[tokio::test]
async fn an_agent_cannot_finish_another_endpoints_task() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    api.endpoint("mine").await;
    let (_, other_token) = api.endpoint("other").await;
    let f = api.register("f", "def f(): pass").await;
    let task = api.submit("mine", &f, json!([])).await;
    let mut intruder = ScriptedAgent::connect(&service, &other_token).await;
    intruder
        .finish(vec![success(task.parse().unwrap(), "\"forged\"")])
        .await;
    let view = api.task(&task).await;
    assert_eq!(view["state"], "received");
    assert!(view.get("result").is_none());
    service.shutdown().await;
}

#[tokio::test]
async fn the_endpoint_view_shows_the_agents_latest_status() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let (_, agent_token) = api.endpoint("ep").await;
    let mut agent = ScriptedAgent::connect(&service, &agent_token).await;
    let manager = |id: &str, busy: u32| ManagerStatus {
        manager_id: id.into(),
        block_id: "block-0".into(),
        host: "node1".into(),
        workers: 4,
        busy_workers: busy,
        idle_workers: 4 - busy,
        outstanding_tasks: busy,
        draining: false,
        container_switches: 0,
    };
    agent
        .send(&AgentMessage::Status(EndpointStatus {
            outstanding_tasks: 7,
            managers: vec![manager("m1", 1), manager("m2", 3)],
            blocks: vec![BlockStatus {
                block_id: "block-0".into(),
                job_id: "12345".into(),
                state: "running".into(),
                managers: 2,
                requested_nodes: 2,
                nodes: vec![BlockNode {
                    host: "n1".into(),
                    manager_id: "m1".into(),
                    job_id: Some("12345".into()),
                    state: "up".into(),
                    workers: 4,
                    busy_workers: 1,
                    idle_workers: 3,
                }],
                message: None,
            }],
            paused: None,
            submit_error: None,
        }))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let view = loop {
        let view = api.get("/v1/endpoints/ep").await.expect(200);
        if view["outstanding_tasks"] == 7 {
            break view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never shown: {view}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(view["connected"], true);
    assert!(view["last_seen"].as_i64().unwrap() > 0);
    assert_eq!(view["workers"], json!({"total": 8, "busy": 4, "idle": 4}));
    assert_eq!(view["managers"].as_array().unwrap().len(), 2);
    assert_eq!(view["blocks"][0]["job_id"], "12345");
    assert_eq!(view["blocks"][0]["nodes"][0]["host"], "n1");
    assert_eq!(view["blocks"][0]["nodes"][0]["workers"], 4);
    assert_eq!(view["paused"], serde_json::Value::Null);

    agent.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while api.get("/v1/endpoints/ep").await.expect(200)["connected"] == true {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still connected after close"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    service.shutdown().await;
}

#[tokio::test]
async fn a_result_sent_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let (_, agent_token) = api.endpoint("ep").await;
    let f = api.register("f", "def f(): pass").await;
    let mut agent = ScriptedAgent::connect(&service, &agent_token).await;
    let task = api.submit("ep", &f, json!([])).await;
    let tasks = agent.expect_tasks(1).await;
    agent
        .finish(vec![success(tasks[0].task_id, "\"first\"")])
        .await;
    // Re-sent (the agent never saw the ack, say): acknowledged again, not stored again.
    agent
        .finish(vec![success(tasks[0].task_id, "\"second\"")])
        .await;
    let view = api.task(&task).await;
    assert_eq!(view["result"], "first");
    assert_eq!(states(&view).iter().filter(|s| *s == "success").count(), 1);
    let body = api.get("/v1/results?after=0").await.expect(200);
    assert_eq!(body["tasks"].as_array().unwrap().len(), 1);
    service.shutdown().await;
}

#[tokio::test]
async fn a_functions_container_travels_with_its_tasks_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let (_, agent_token) = api.endpoint("laptop").await;
    let body = api
        .post(
            "/v1/functions",
            &json!({"name": "f", "source": "def f(x): return x",
                    "container": {"type": "bwrap", "image": "/images/sci"}}),
        )
        .await
        .expect(201);
    let function = body["function_id"].as_str().unwrap().to_owned();
    let expected = Some(scifaas_protocol::ContainerSpec {
        runtime: "bwrap".into(),
        image: "/images/sci".into(),
        options: None,
    });
    api.submit("laptop", &function, json!([1])).await;
    let mut agent = ScriptedAgent::connect(&service, &agent_token).await;
    assert_eq!(agent.expect_tasks(1).await[0].function.container, expected);
    drop(agent);
    service.shutdown().await;

    // Read back from the store by a new service: the container is still there.
    let service = start_service(dir.path()).await;
    let api = Api::new(&service, &api.token);
    api.submit("laptop", &function, json!([2])).await;
    let mut agent = ScriptedAgent::connect(&service, &agent_token).await;
    let tasks = agent.expect_tasks(2).await;
    assert!(tasks.iter().all(|t| t.function.container == expected));
    service.shutdown().await;
}
