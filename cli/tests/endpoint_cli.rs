//! The `scifaas endpoint` commands, driven as an admin would.

mod common;

use common::Stack;
use std::time::{Duration, Instant};

fn run_ok(stack: &Stack, args: &[&str]) -> String {
    let out = stack.command().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "scifaas {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn pids_in_group(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = stat.rsplit_once(')')?.1.to_owned();
                    after.split_whitespace().nth(2)?.parse::<i32>().ok()
                })
                == Some(pgid)
        })
        .collect()
}

#[test]
fn configure_start_detached_status_list_and_stop() {
    let stack = Stack::start();
    let out = run_ok(
        &stack,
        &["endpoint", "configure", "laptop", "--service", &stack.url],
    );
    assert!(out.contains("config.yaml"), "{out}");
    let config = std::fs::read_to_string(stack.endpoint_dir("laptop").join("config.yaml")).unwrap();
    assert!(
        config.contains(&format!("service_url: {}", stack.url)),
        "{config}"
    );
    assert!(
        config.contains("provider:"),
        "the commented template: {config}"
    );
    // A second configure does not overwrite the admin's edits.
    let again = stack
        .command()
        .args(["endpoint", "configure", "laptop"])
        .output()
        .unwrap();
    assert!(!again.status.success());

    run_ok(&stack, &["endpoint", "start", "laptop", "--detach"]);
    let pid: i32 = std::fs::read_to_string(stack.endpoint_dir("laptop").join("agent.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    stack.wait_endpoint_ready("laptop");
    let token_mode = std::fs::metadata(stack.endpoint_dir("laptop").join("agent-token")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(token_mode.permissions().mode() & 0o777, 0o600);

    let list = run_ok(&stack, &["endpoint", "list"]);
    assert!(
        list.contains("laptop") && list.contains("running"),
        "{list}"
    );
    let status = run_ok(&stack, &["endpoint", "status", "laptop"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["connected"], true);
    let block_pid: i32 = status["blocks"][0]["job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        !pids_in_group(block_pid).is_empty(),
        "the pilot runs in its own process group"
    );

    let f = stack.register("hello_world", "def hello_world(e):\n    return e\n");
    let out = run_ok(
        &stack,
        &["run", "--endpoint", "laptop", "--function", &f, "[1, 2]"],
    );
    assert_eq!(out.trim(), "[1,2]");

    run_ok(&stack, &["endpoint", "stop", "laptop"]);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "agent gone"
    );
    // Everything the agent started is gone too: the pilot's process group is empty.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids_in_group(block_pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        pids_in_group(block_pid).is_empty(),
        "pilot processes left: {:?}",
        pids_in_group(block_pid)
    );
    let list = run_ok(&stack, &["endpoint", "list"]);
    assert!(list.contains("stopped"), "{list}");
}

#[test]
fn a_bad_config_stops_the_agent_with_file_line_and_key() {
    let stack = Stack::start();
    let dir = stack.endpoint_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        "engine:\n  max_workers_per_node: 2\nprovider:\n  type: local\n  min_blocks: 3\n  max_blocks: 1\n",
    )
    .unwrap();
    let out = stack
        .command()
        .args(["endpoint", "start", "bad"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.yaml:"), "{stderr}");
    assert!(
        stderr.contains("max_blocks") || stderr.contains("min_blocks"),
        "{stderr}"
    );

    std::fs::write(
        dir.join("config.yaml"),
        "engine:\n  max_workers_per_nod: 2\n",
    )
    .unwrap();
    let out = stack
        .command()
        .args(["endpoint", "start", "bad"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("config.yaml:2") && stderr.contains("max_workers_per_nod"),
        "{stderr}"
    );
}
