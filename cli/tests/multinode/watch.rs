//! What the multi-node tests watch: the endpoint's view of its blocks and their nodes,
//! the service's finished tasks, and the marks tasks leave around their runs.

use crate::common::Stack;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Now, as Unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The service's view of endpoint `name` (`GET /v1/endpoints/NAME`), `null` if none.
pub fn view(stack: &Stack, name: &str) -> Value {
    stack
        .get(&format!("/v1/endpoints/{name}"))
        .unwrap_or_default()
}

/// The endpoint's block `block_id` in `view`.
pub fn block<'a>(view: &'a Value, block_id: &str) -> Option<&'a Value> {
    view["blocks"]
        .as_array()?
        .iter()
        .find(|b| b["block_id"] == block_id)
}

/// The block's nodes that are `state` (`up`, `draining`, `lost`).
pub fn nodes_in(block: &Value, state: &str) -> Vec<String> {
    block["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["state"] == state)
        .map(|n| n["host"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until `block_id` has both its managers up; answers the endpoint view then.
pub fn wait_block_up(stack: &Stack, name: &str, block_id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let view = view(stack, name);
        if block(&view, block_id).is_some_and(|b| nodes_in(b, "up").len() == 2) {
            return view;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(stack.home.path().join(format!("{name}-agent.log")))
                .unwrap_or_default();
            panic!("{block_id} of {name} not up on two nodes within {timeout:?}: {view}\nagent log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every task that finished after `cursor`, in the order the service finished them.
pub fn finished_since(stack: &Stack, cursor: u64, want: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut cursor = cursor;
    let mut tasks = Vec::new();
    while tasks.len() < want && Instant::now() < deadline {
        let page = stack
            .get(&format!("/v1/results?after={cursor}&timeout=5"))
            .unwrap();
        cursor = page["cursor"].as_u64().unwrap();
        tasks.extend(page["tasks"].as_array().unwrap().iter().cloned());
    }
    tasks
}

/// The `.start` and `.end` marks in `dir`, as (task index, node) pairs, one per run.
pub fn marks(dir: &Path, suffix: &str) -> Vec<(u64, String)> {
    let mut runs: Vec<(u64, String)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(suffix)?;
            let mut parts = stem.splitn(3, '-');
            Some((parts.next()?.parse().ok()?, parts.next()?.to_owned()))
        })
        .collect();
    runs.sort();
    runs
}
