//! Waiting for results: the invoke trigger, `GET /v1/tasks/{id}?wait=S` and the
//! `GET /v1/results` long-poll, against a real service and a scripted test peer playing
//! the agent over a real WebSocket.

mod common;

use common::{run_answering_agent, start_service, success, wait_for_state, Api, ScriptedAgent};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn invoke_answers_the_result_verbatim_or_says_how_the_task_failed() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let (_, agent_token) = api.endpoint("laptop").await;
    let function = api.register("f", "def f(x): return x").await;
    let agent = ScriptedAgent::connect(&service, &agent_token).await;
    let agent = tokio::spawn(run_answering_agent(agent));
    let invoke = format!("/v1/endpoints/laptop/functions/{function}/invoke");

    let answer = api.post_raw(&invoke, "\"ok\"").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    // Verbatim: the number keeps every digit, the spacing is the worker's.
    assert_eq!(
        answer.text,
        "{\"answer\": 42, \"pi\": 3.14159265358979323846264338327950288}"
    );
    assert_eq!(answer.headers["content-type"], "application/json");
    let task_id = answer.headers["x-scifaas-task-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(api.task(&task_id).await["state"], "success");

    // By function name too.
    let answer = api
        .post_raw("/v1/endpoints/laptop/functions/f/invoke", "\"ok\"")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);

    let body = api
        .post_raw(&invoke, "\"raise\"")
        .await
        .expect_error(500, "function-exception");
    assert_eq!(body["type"], "ZeroDivisionError");
    assert_eq!(body["message"], "division by zero");
    assert!(body["traceback"].as_str().unwrap().contains("Traceback"));
    assert_eq!(body["kind"], "function-exception");
    let failed = api.task(body["task_id"].as_str().unwrap()).await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["error"]["type"], "ZeroDivisionError");
    assert_eq!(failed["error"]["kind"], "function-exception");

    let body = api
        .post_raw(&invoke, "\"die\"")
        .await
        .expect_error(502, "task-failed");
    assert_eq!(body["type"], "WorkerDied");
    assert_eq!(body["kind"], "worker-died");
    assert!(body["task_id"].as_str().is_some());

    let body = api
        .post_raw(&invoke, "\"huge\"")
        .await
        .expect_error(502, "task-failed");
    assert_eq!(body["kind"], "too-large");
    let failed = api.task(body["task_id"].as_str().unwrap()).await;
    assert_eq!(failed["state"], "failed");
    assert!(failed.get("result").is_none());

    let started = std::time::Instant::now();
    let answer = api
        .post_raw(&format!("{invoke}?timeout=0.3"), "\"hang\"")
        .await;
    let body = answer.expect_error(504, "timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let task_id = body["task_id"].as_str().unwrap();
    assert_eq!(answer.headers["x-scifaas-task-id"], task_id);
    // The task goes on.
    wait_for_state(&api, task_id, "waiting-for-nodes").await;

    agent.abort();
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invokes_each_get_their_own_result() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let (_, agent_token) = api.endpoint("ep").await;
    let f = api.register("f", "def f(x): return x").await;
    let agent = ScriptedAgent::connect(&service, &agent_token).await;
    let agent = tokio::spawn(run_answering_agent(agent));
    let calls = (0..64).map(|n| {
        let api = api.clone();
        let path = format!("/v1/endpoints/ep/functions/{f}/invoke");
        tokio::spawn(async move { (n, api.post_raw(&path, n.to_string()).await) })
    });
    for call in calls {
        let (n, answer) = call.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.text, n.to_string());
    }
    let body = api.get("/v1/results?after=0&max=100").await.expect(200);
    assert_eq!(body["tasks"].as_array().unwrap().len(), 64);
    let mut seen: Vec<i64> = Vec::new();
    for task in body["tasks"].as_array().unwrap() {
        seen.push(task["result"].as_i64().unwrap());
    }
    seen.sort();
    assert_eq!(seen, (0..64).collect::<Vec<i64>>());
    agent.abort();
    service.shutdown().await;
}

#[tokio::test]
async fn results_long_poll_from_a_cursor_returns_the_callers_finished_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let admin = Api::admin(&service);
    let alice = admin.new_user("alice").await;
    let bob = admin.new_user("bob").await;
    let (_, alice_agent_token) = alice.endpoint("ep").await;
    let (_, bob_agent_token) = bob.endpoint("ep").await;
    let f = alice.register("f", "def f(): pass").await;
    let g = bob.register("g", "def g(): pass").await;
    let mut alice_agent = ScriptedAgent::connect(&service, &alice_agent_token).await;
    let mut bob_agent = ScriptedAgent::connect(&service, &bob_agent_token).await;

    let cursor = alice.get("/v1/results").await.expect(200)["cursor"]
        .as_i64()
        .unwrap();
    let poll = {
        let alice = alice.clone();
        tokio::spawn(async move {
            alice
                .get(&format!("/v1/results?after={cursor}&timeout=10"))
                .await
                .expect(200)
        })
    };
    // Bob's task finishing does not end Alice's poll with Bob's task.
    bob.submit("ep", &g, json!([])).await;
    let bob_tasks = bob_agent.expect_tasks(1).await;
    bob_agent
        .finish(vec![success(bob_tasks[0].task_id, "1")])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !poll.is_finished(),
        "alice's poll must wait for alice's tasks"
    );

    let task = alice.submit("ep", &f, json!([])).await;
    let tasks = alice_agent.expect_tasks(1).await;
    alice_agent
        .finish(vec![success(tasks[0].task_id, "[1, 2]")])
        .await;
    let body = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    let finished = body["tasks"].as_array().unwrap();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["task_id"], task);
    assert_eq!(finished[0]["result"], json!([1, 2]));
    let next = body["cursor"].as_i64().unwrap();
    assert!(next > cursor);

    let body = alice
        .get(&format!("/v1/results?after={next}&timeout=0"))
        .await
        .expect(200);
    assert_eq!(body["tasks"], json!([]));
    assert_eq!(body["cursor"], next);
    // From the start, with max: oldest first.
    let second = alice.submit("ep", &f, json!([])).await;
    let tasks = alice_agent.expect_tasks(1).await;
    alice_agent
        .finish(vec![success(tasks[0].task_id, "3")])
        .await;
    let body = alice.get("/v1/results?after=0&max=1").await.expect(200);
    assert_eq!(body["tasks"][0]["task_id"], task);
    let body = alice
        .get(&format!("/v1/results?after={}", body["cursor"]))
        .await
        .expect(200);
    assert_eq!(body["tasks"][0]["task_id"], second);
    service.shutdown().await;
}

#[tokio::test]
async fn get_task_with_wait_returns_when_the_task_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let (_, agent_token) = api.endpoint("ep").await;
    let f = api.register("f", "def f(): pass").await;
    let mut agent = ScriptedAgent::connect(&service, &agent_token).await;
    let task = api.submit("ep", &f, json!([])).await;
    let tasks = agent.expect_tasks(1).await;

    let unfinished = api
        .get(&format!("/v1/tasks/{task}?wait=0.2"))
        .await
        .expect(200);
    assert_ne!(unfinished["state"], "success");
    let waiting = {
        let api = api.clone();
        let task = task.clone();
        tokio::spawn(async move {
            api.get(&format!("/v1/tasks/{task}?wait=10"))
                .await
                .expect(200)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    agent
        .finish(vec![success(tasks[0].task_id, "\"done\"")])
        .await;
    let view = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view["state"], "success");
    assert_eq!(view["result"], "done");
    service.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_long_waits_and_agent_links_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let (_, agent_token) = api.endpoint("ep").await;
    let f = api.register("f", "def f(x): return x").await;
    let mut agent = ScriptedAgent::connect(&service, &agent_token).await;
    let poll = {
        let api = api.clone();
        tokio::spawn(async move { api.get("/v1/results?after=0&timeout=60").await })
    };
    let invoke = {
        let api = api.clone();
        let path = format!("/v1/endpoints/ep/functions/{f}/invoke?timeout=60");
        tokio::spawn(async move { api.post_raw(&path, "\"hang\"").await })
    };
    agent.expect_tasks(1).await;
    let started = std::time::Instant::now();
    service.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(poll.await.unwrap().expect(200)["tasks"], json!([]));
    let body = invoke.await.unwrap().expect_error(504, "timeout");
    assert!(body["task_id"].as_str().is_some());
    assert!(agent.recv().await.is_none(), "the agent link is closed");

    // The task is still there for the next start.
    let service = start_service(dir.path()).await;
    let mut agent = ScriptedAgent::connect(&service, &agent_token).await;
    agent.expect_tasks(1).await;
    service.shutdown().await;
}
