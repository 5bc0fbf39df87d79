//! End to end on a local endpoint: the real service, the real agent with the local
//! provider, real managers and python3 workers, talking over loopback.

mod common;

use common::Stack;
use serde_json::{json, Value};
use std::time::Duration;

const HELLO: &str = "def hello_world(event):\n    print(event)\n    return event\n";

#[test]
fn hello_world_round_trip_with_transitions_and_output() {
    let stack = Stack::start();
    stack.write_endpoint_config("ep", 2, "");
    let _agent = stack.start_endpoint("ep");
    stack.wait_endpoint_ready("ep");
    let f = stack.register("hello_world", HELLO);

    let (status, body, task_id) = stack.invoke("ep", &f, "\"hello-world\"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!("hello-world"));

    let task = stack.get(&format!("/v1/tasks/{task_id}")).unwrap();
    assert_eq!(task["state"], "success");
    assert_eq!(task["result"], json!("hello-world"));
    assert_eq!(task["stdout"], "hello-world\n");
    let states: Vec<&str> = task["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    for expected in [
        "received",
        "waiting-for-nodes",
        "waiting-for-launch",
        "running",
        "success",
    ] {
        assert!(
            states.contains(&expected),
            "{expected} missing from {states:?}"
        );
    }
    let at: Vec<i64> = task["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["at"].as_i64().unwrap())
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] <= w[1]),
        "transitions out of order: {}",
        task["transitions"]
    );
    let timing = &task["timing"];
    assert!(timing["exec_start"].as_i64().unwrap() <= timing["exec_end"].as_i64().unwrap());

    // Read right after its answer, a task is finished: the invoke trigger answers when
    // the result arrives, and a read of a task whose result is not committed yet waits
    // for the commit.
    for _ in 0..50 {
        let (status, body, task_id) = stack.invoke("ep", &f, "\"again\"");
        assert_eq!(status, 200, "{body}");
        let task = stack.get(&format!("/v1/tasks/{task_id}")).unwrap();
        assert_eq!(task["state"], "success", "{task}");
        assert_eq!(task["result"], json!("again"));
    }

    // The endpoint view shows the manager and its workers.
    let view = stack.get("/v1/endpoints/ep").unwrap();
    assert_eq!(view["connected"], true);
    assert_eq!(view["managers"].as_array().unwrap().len(), 1);
    assert_eq!(view["workers"]["total"], 2);
}

#[test]
fn errors_reach_the_caller_and_other_tasks_are_unaffected() {
    let stack = Stack::start();
    stack.write_endpoint_config("ep", 2, "");
    let _agent = stack.start_endpoint("ep");
    stack.wait_endpoint_ready("ep");
    let ok = stack.register("hello_world", HELLO);

    let raises = stack.register("div", "def div(x):\n    return 1 / x\n");
    let (status, body, _) = stack.invoke("ep", &raises, "0");
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["type"], "ZeroDivisionError");
    assert!(
        body["traceback"].as_str().unwrap().contains("return 1 / x"),
        "{body}"
    );

    let undefined = stack.register("missing", "def something_else():\n    pass\n");
    let (status, body, _) = stack.invoke("ep", &undefined, "1");
    assert!(status >= 400, "{status} {body}");
    assert!(
        body["message"].as_str().unwrap().contains("missing"),
        "{body}"
    );

    let not_json = stack.register("make_set", "def make_set(x):\n    return {1, 2}\n");
    let (status, body, _) = stack.invoke("ep", &not_json, "1");
    assert!(status >= 400, "{status} {body}");
    assert!(body["message"].as_str().unwrap().contains("set"), "{body}");

    // The worker kills itself mid-task with SIGKILL: that task fails clearly, the
    // next one runs on a fresh worker.
    let dies = stack.register(
        "die",
        "def die(x):\n    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    );
    let (status, body, _) = stack.invoke("ep", &dies, "1");
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("signal 9"),
        "{body}"
    );

    let (status, body, _) = stack.invoke(
        "ep",
        &stack.register("bad_json_ok", "def bad_json_ok(x):\n    return x\n"),
        "{\"a\": [1, 2]}",
    );
    assert_eq!((status, body), (200, json!({"a": [1, 2]})));

    let (status, body, _) = stack.invoke("ep", &ok, "{not json");
    assert_eq!(status, 400, "{body}");
    for _ in 0..5 {
        let (status, body, _) = stack.invoke("ep", &ok, "\"again\"");
        assert_eq!((status, body), (200, json!("again")));
    }
}

#[test]
fn a_task_past_its_walltime_is_killed_and_the_endpoint_goes_on() {
    let stack = Stack::start();
    stack.write_endpoint_config("ep", 1, "  task_walltime: 1s\n");
    let _agent = stack.start_endpoint("ep");
    stack.wait_endpoint_ready("ep");
    let sleepy = stack.register(
        "sleepy",
        "def sleepy(s):\n    import time\n    time.sleep(s)\n    return s\n",
    );
    let started = std::time::Instant::now();
    let (status, body, _) = stack.invoke("ep", &sleepy, "30");
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("walltime"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let (status, body, _) = stack.invoke("ep", &sleepy, "0.1");
    assert_eq!((status, body), (200, json!(0.1)));
}

#[test]
fn batches_run_to_completion_and_results_stream_by_cursor() {
    let stack = Stack::start();
    stack.write_endpoint_config("ep", 2, "");
    let _agent = stack.start_endpoint("ep");
    stack.wait_endpoint_ready("ep");
    let square = stack.register("square", "def square(x):\n    return x * x\n");
    let cursor = stack.get("/v1/results").unwrap()["cursor"]
        .as_u64()
        .unwrap();
    let args: Vec<Value> = (0..200).map(|i| json!([i])).collect();
    let ids = stack.submit("ep", &square, &args);
    assert_eq!(ids.len(), 200);
    let mut seen = std::collections::HashMap::new();
    let mut cursor = cursor;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 200 && std::time::Instant::now() < deadline {
        let page = stack
            .get(&format!("/v1/results?after={cursor}&timeout=5"))
            .unwrap();
        cursor = page["cursor"].as_u64().unwrap();
        for task in page["tasks"].as_array().unwrap() {
            seen.insert(
                task["task_id"].as_str().unwrap().to_owned(),
                task["result"].clone(),
            );
        }
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(seen.get(id), Some(&json!(i * i)), "task {i}");
    }
}

/// Tasks accepted, the agent SIGKILLed while they are queued, the agent started again:
/// every task completes exactly once.
#[test]
fn tasks_survive_an_agent_crash() {
    let stack = Stack::start();
    stack.write_endpoint_config("ep", 2, "");
    let mut agent = stack.start_endpoint("ep");
    stack.wait_endpoint_ready("ep");
    let slow = stack.register(
        "slow",
        "def slow(i):\n    import time\n    time.sleep(0.2)\n    return i\n",
    );
    let args: Vec<Value> = (0..30).map(|i| json!([i])).collect();
    let ids = stack.submit("ep", &slow, &args);
    // Let some run, then crash the agent while most are still queued.
    std::thread::sleep(Duration::from_millis(800));
    agent.kill9();
    drop(agent);
    let _agent = stack.start_endpoint("ep");
    for (i, id) in ids.iter().enumerate() {
        let task = stack.wait_task(id, Duration::from_secs(90));
        assert_eq!(task["state"], "success", "{task}");
        assert_eq!(task["result"], json!(i));
        let finals = task["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "success")
            .count();
        assert_eq!(finals, 1, "one result per task: {task}");
    }
}

/// The service restarted (SIGKILL) while tasks are outstanding: nothing accepted is lost.
#[test]
fn tasks_survive_a_service_crash() {
    let mut stack = Stack::start();
    stack.write_endpoint_config("ep", 2, "");
    let _agent = stack.start_endpoint("ep");
    stack.wait_endpoint_ready("ep");
    let slow = stack.register(
        "slow",
        "def slow(i):\n    import time\n    time.sleep(0.1)\n    return i\n",
    );
    let args: Vec<Value> = (0..30).map(|i| json!([i])).collect();
    let ids = stack.submit("ep", &slow, &args);
    stack.restart_service(true);
    for (i, id) in ids.iter().enumerate() {
        let task = stack.wait_task(id, Duration::from_secs(90));
        assert_eq!(task["state"], "success", "{task}");
        assert_eq!(task["result"], json!(i));
    }
}

#[test]
fn users_see_only_their_own_tasks_and_tokens_are_checked() {
    let stack = Stack::start();
    stack.write_endpoint_config("ep", 1, "");
    let _agent = stack.start_endpoint("ep");
    stack.wait_endpoint_ready("ep");
    let f = stack.register("hello_world", HELLO);
    let (_, _, task_id) = stack.invoke("ep", &f, "1");

    let (status, _, _) = stack.request(
        reqwest::Method::GET,
        &format!("/v1/tasks/{task_id}"),
        None,
        "not-a-token",
    );
    assert_eq!(status, 401);
    let out = stack
        .command()
        .args(["token", "create", "--user", "alice"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alice = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (status, _, _) = stack.request(
        reqwest::Method::GET,
        &format!("/v1/tasks/{task_id}"),
        None,
        &alice,
    );
    assert_eq!(status, 404);
    let (status, _, _) = stack.request(reqwest::Method::GET, "/v1/endpoints/ep", None, &alice);
    assert_eq!(status, 404);
    let (status, _, _) = stack.request(
        reqwest::Method::GET,
        &format!("/v1/functions/{f}"),
        None,
        &alice,
    );
    assert_eq!(status, 404);
}

#[test]
fn a_container_the_endpoint_does_not_allow_fails_before_it_is_queued() {
    let stack = Stack::start();
    stack.write_endpoint_config(
        "ep",
        1,
        "  allowed_containers:\n    - {type: bwrap, image: \"/site/images/*\"}\n",
    );
    let _agent = stack.start_endpoint("ep");
    stack.wait_endpoint_ready("ep");
    let register = |container: Value| {
        let (status, answer) = stack.post(
            "/v1/functions",
            &json!({"name": "f", "source": "def f(x):\n    return x\n", "container": container}),
        );
        assert_eq!(status, 201, "{answer}");
        answer["function_id"].as_str().unwrap().to_owned()
    };
    let elsewhere = register(json!({"type": "charliecloud", "image": "/tmp/img"}));
    let (status, body, _) = stack.invoke("ep", &elsewhere, "1");
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("not allowed"),
        "{body}"
    );
    let with_options =
        register(json!({"type": "bwrap", "image": "/site/images/a", "options": "--bind / /host"}));
    let (status, body, _) = stack.invoke("ep", &with_options, "1");
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("options"),
        "{body}"
    );
    // Plain functions still run.
    let plain = stack.register("hello_world", HELLO);
    let (status, body, _) = stack.invoke("ep", &plain, "2");
    assert_eq!((status, body), (200, json!(2)));
}
