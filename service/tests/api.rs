//! The REST API against a real service: real SQLite file in a temporary directory, real
//! sockets, real HTTP. No agent is connected here (see `agent_link.rs` for that).

mod common;

use common::{start_service, states, Api, TEST_LIMIT};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn health_needs_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let body = reqwest::get(format!("http://{}/v1/health", service.addr))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(body["status"], "ok");
    assert!(body["version"].as_str().is_some());
    service.shutdown().await;
}

#[tokio::test]
async fn requests_without_or_with_a_bad_token_are_401() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let url = format!("http://{}/v1/endpoints", service.addr);
    let answer = reqwest::get(&url).await.unwrap();
    assert_eq!(answer.status(), 401);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    let bad = Api::admin(&service).with_token("0000");
    bad.get("/v1/endpoints")
        .await
        .expect_error(401, "unauthorized");
    bad.post(
        "/v1/functions",
        &json!({"name": "f", "source": "def f(): pass"}),
    )
    .await
    .expect_error(401, "unauthorized");
    // An agent token is not a user token.
    let admin = Api::admin(&service);
    let (_, agent_token) = admin.endpoint("laptop").await;
    admin
        .with_token(&agent_token)
        .get("/v1/endpoints")
        .await
        .expect_error(401, "unauthorized");
    service.shutdown().await;
}

#[tokio::test]
async fn only_the_admin_creates_tokens_and_new_tokens_work() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let admin = Api::admin(&service);
    let alice = admin.new_user("alice").await;
    alice.get("/v1/endpoints").await.expect(200);
    alice
        .post("/v1/tokens", &json!({"user": "mallory"}))
        .await
        .expect_error(403, "forbidden");
    admin
        .post("/v1/tokens", &json!({"user": "no spaces"}))
        .await
        .expect_error(400, "bad-request");
    // A second token for an existing user works alongside the first.
    let alice_again = admin.new_user("alice").await;
    assert_ne!(alice.token, alice_again.token);
    alice_again.get("/v1/endpoints").await.expect(200);
    alice.get("/v1/endpoints").await.expect(200);
    service.shutdown().await;
}

#[tokio::test]
async fn functions_register_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let source = "def double(x):\n    return 2 * x\n";
    let body = api
        .post(
            "/v1/functions",
            &json!({"name": "double", "source": source, "description": "twice"}),
        )
        .await
        .expect(201);
    let id = body["function_id"].as_str().unwrap();
    let function = api.get(&format!("/v1/functions/{id}")).await.expect(200);
    assert_eq!(function["function_id"], id);
    assert_eq!(function["name"], "double");
    assert_eq!(function["source"], source);
    assert_eq!(function["description"], "twice");
    assert!(function["created_at"].as_i64().unwrap() > 1_600_000_000_000_000);

    api.post(
        "/v1/functions",
        &json!({"name": "not-an-identifier", "source": "x"}),
    )
    .await
    .expect_error(400, "bad-request");
    api.post("/v1/functions", &json!({"name": "f", "source": "  \n"}))
        .await
        .expect_error(400, "bad-request");
    api.get("/v1/functions/2b7c9a56-0000-4000-8000-000000000000")
        .await
        .expect_error(404, "not-found");
    service.shutdown().await;
}

#[tokio::test]
async fn functions_may_name_a_container_which_is_checked_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let container = json!({"type": "charliecloud", "image": "/images/sci", "options": "-b /data"});
    let body = api
        .post(
            "/v1/functions",
            &json!({"name": "f", "source": "def f(): pass", "container": container}),
        )
        .await
        .expect(201);
    let id = body["function_id"].as_str().unwrap();
    let function = api.get(&format!("/v1/functions/{id}")).await.expect(200);
    assert_eq!(function["container"], container);
    // Without options, and without a container at all.
    let body = api
        .post(
            "/v1/functions",
            &json!({"name": "g", "source": "def g(): pass",
                    "container": {"type": "docker", "image": "python:3.11"}}),
        )
        .await
        .expect(201);
    let function = api
        .get(&format!(
            "/v1/functions/{}",
            body["function_id"].as_str().unwrap()
        ))
        .await
        .expect(200);
    assert_eq!(
        function["container"],
        json!({"type": "docker", "image": "python:3.11", "options": null})
    );
    let plain = api.register("h", "def h(): pass").await;
    let function = api.get(&format!("/v1/functions/{plain}")).await.expect(200);
    assert_eq!(function["container"], serde_json::Value::Null);

    for (bad, says) in [
        (
            json!({"type": "lxc", "image": "x"}),
            "not a container runtime; known: apptainer",
        ),
        (json!({"type": "bwrap", "image": " "}), "container.image"),
        (json!({"type": "bwrap"}), "image"),
        (json!({"type": "bwrap", "image": "/i", "gpus": 1}), "gpus"),
    ] {
        let error = api
            .post(
                "/v1/functions",
                &json!({"name": "f", "source": "def f(): pass", "container": bad}),
            )
            .await
            .expect_error(400, "bad-request");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(says), "{bad}: {message}");
    }
    service.shutdown().await;
}

#[tokio::test]
async fn endpoints_are_created_listed_and_names_are_unique_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let admin = Api::admin(&service);
    let alice = admin.new_user("alice").await;
    let bob = admin.new_user("bob").await;
    let (id, agent_token) = alice.endpoint("perlmutter").await;
    assert_eq!(agent_token.len(), 64);
    alice
        .post("/v1/endpoints", &json!({"name": "perlmutter"}))
        .await
        .expect_error(409, "conflict");
    // Another user may use the same name.
    bob.endpoint("perlmutter").await;

    for key in ["perlmutter", id.as_str()] {
        let view = alice.get(&format!("/v1/endpoints/{key}")).await.expect(200);
        assert_eq!(view["endpoint_id"], id);
        assert_eq!(view["name"], "perlmutter");
        assert_eq!(view["connected"], false);
        assert_eq!(view["last_seen"], serde_json::Value::Null);
        assert_eq!(view["workers"], json!({"total": 0, "busy": 0, "idle": 0}));
    }
    let list = alice.get("/v1/endpoints").await.expect(200);
    assert_eq!(list["endpoints"].as_array().unwrap().len(), 1);
    bob.get(&format!("/v1/endpoints/{id}"))
        .await
        .expect_error(404, "not-found");
    alice
        .post("/v1/endpoints", &json!({"name": "bad name!"}))
        .await
        .expect_error(400, "bad-request");
    service.shutdown().await;
}

#[tokio::test]
async fn malformed_json_is_a_400_that_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let body = api
        .post("/v1/functions", &json!({"source": "def f(): pass"}))
        .await
        .expect_error(400, "bad-request");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("missing field `name`"), "{message}");

    let body = api
        .post_raw("/v1/endpoints", "{\"name\": ")
        .await
        .expect_error(400, "bad-request");
    assert!(body["message"].as_str().unwrap().contains("EOF"), "{body}");

    let (_, _) = api.endpoint("ep").await;
    let function = api.register("f", "def f(x): return x").await;
    let body = api
        .post(
            "/v1/tasks",
            &json!({"endpoint": "ep", "function_id": function, "args": 3}),
        )
        .await
        .expect_error(400, "bad-request");
    assert!(body["message"].as_str().unwrap().contains("args"), "{body}");
    api.post("/v1/tasks", &json!({"endpoint": "ep"}))
        .await
        .expect_error(400, "bad-request");
    api.post_raw(
        &format!("/v1/endpoints/ep/functions/{function}/invoke"),
        "{oops",
    )
    .await
    .expect_error(400, "bad-request");
    api.get("/v1/tasks/abc?wait=-1")
        .await
        .expect_error(400, "bad-request");
    api.get("/v1/nowhere").await.expect_error(404, "not-found");
    api.get("/v1/tokens")
        .await
        .expect_error(405, "method-not-allowed");
    service.shutdown().await;
}

#[tokio::test]
async fn unknown_endpoint_or_function_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    api.endpoint("ep").await;
    let function = api.register("f", "def f(x): return x").await;
    api.post(
        "/v1/tasks",
        &json!({"endpoint": "nope", "function_id": function}),
    )
    .await
    .expect_error(404, "not-found");
    api.post(
        "/v1/tasks",
        &json!({"endpoint": "ep", "function_id": "0b0e5c3c-0000-4000-8000-000000000000"}),
    )
    .await
    .expect_error(404, "not-found");
    api.post_raw(
        &format!("/v1/endpoints/nope/functions/{function}/invoke"),
        "1",
    )
    .await
    .expect_error(404, "not-found");
    api.post_raw("/v1/endpoints/ep/functions/nope/invoke", "1")
        .await
        .expect_error(404, "not-found");
    api.get("/v1/tasks/not-a-uuid")
        .await
        .expect_error(404, "not-found");
    service.shutdown().await;
}

#[tokio::test]
async fn another_users_function_endpoint_and_task_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let admin = Api::admin(&service);
    let alice = admin.new_user("alice").await;
    let bob = admin.new_user("bob").await;
    let function = alice.register("f", "def f(x): return x").await;
    alice.endpoint("ep").await;
    let task = alice.submit("ep", &function, json!([1])).await;
    alice.task(&task).await;

    bob.get(&format!("/v1/functions/{function}"))
        .await
        .expect_error(404, "not-found");
    bob.get(&format!("/v1/tasks/{task}"))
        .await
        .expect_error(404, "not-found");
    let status = bob
        .post("/v1/tasks/status", &json!({"task_ids": [task]}))
        .await
        .expect(200);
    assert_eq!(status["tasks"], json!({}));
    assert_eq!(status["unknown"], json!([task]));
    // Bob cannot run Alice's function on his own endpoint either.
    bob.endpoint("ep").await;
    bob.post(
        "/v1/tasks",
        &json!({"endpoint": "ep", "function_id": function}),
    )
    .await
    .expect_error(404, "not-found");
    service.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_payload_limit_are_413() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    api.endpoint("ep").await;
    let function = api.register("f", "def f(x): return x").await;
    let big = "x".repeat(TEST_LIMIT + 1);
    api.post(
        "/v1/tasks",
        &json!({"endpoint": "ep", "function_id": function, "args": [big]}),
    )
    .await
    .expect_error(413, "payload-too-large");
    api.post_raw(
        &format!("/v1/endpoints/ep/functions/{function}/invoke"),
        format!("\"{big}\""),
    )
    .await
    .expect_error(413, "payload-too-large");
    // Just under the limit is fine.
    let fits = "x".repeat(TEST_LIMIT - 200);
    api.post(
        "/v1/tasks",
        &json!({"endpoint": "ep", "function_id": function, "args": [fits]}),
    )
    .await
    .expect(202);
    service.shutdown().await;
}

#[tokio::test]
async fn submitted_tasks_are_durable_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let admin_token = service.admin_token.clone();
    let token_path = service.admin_token_path.clone();
    assert_eq!(token_path, dir.path().join("admin-token"));
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&token_path).unwrap().trim(),
        admin_token
    );

    let api = Api::admin(&service);
    let alice = api.new_user("alice").await;
    let (endpoint_id, _) = alice.endpoint("ep").await;
    let f = alice.register("f", "def f(x): return x").await;
    let g = alice.register("g", "def g(x, y=0): return x + y").await;
    let body = alice
        .post(
            "/v1/tasks",
            &json!({"endpoint": endpoint_id, "tasks": [
                {"function_id": f, "args": [1]},
                {"function_id": g, "args": [2], "kwargs": {"y": 3}},
                {"function_id": "g"},
            ]}),
        )
        .await
        .expect(202);
    let ids: Vec<String> = body["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    service.shutdown().await;

    let service = common::start_service(dir.path()).await;
    assert_eq!(
        service.admin_token, admin_token,
        "the admin token file is reused"
    );
    let api = Api::admin(&service);
    api.get("/v1/endpoints").await.expect(200);
    // Alice's token, function and endpoint survived too.
    let alice = Api::new(&service, &alice.token);
    alice.get(&format!("/v1/functions/{f}")).await.expect(200);
    let status = alice
        .post("/v1/tasks/status", &json!({"task_ids": ids}))
        .await
        .expect(200);
    assert_eq!(status["unknown"], json!([]));
    for id in &ids {
        let task = &status["tasks"][id];
        assert_eq!(task["state"], "received");
        assert_eq!(task["endpoint_id"], endpoint_id);
        assert_eq!(states(task), ["received"]);
        assert_eq!(task["transitions"][0]["actor"], "service");
        assert!(task.get("result").is_none());
    }
    assert_eq!(status["tasks"][&ids[1]]["function_id"], g);
    service.shutdown().await;
}

#[tokio::test]
async fn results_without_a_cursor_answer_the_current_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_service(dir.path()).await;
    let api = Api::admin(&service);
    let body = api.get("/v1/results").await.expect(200);
    assert_eq!(body, json!({"cursor": 0, "tasks": []}));
    let started = std::time::Instant::now();
    let body = api.get("/v1/results?after=0&timeout=0.2").await.expect(200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    assert_eq!(body, json!({"cursor": 0, "tasks": []}));
    service.shutdown().await;
}
