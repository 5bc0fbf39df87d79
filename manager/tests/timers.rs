//! Workers run with a timer slack of 1 ns, so that a function's sleeps and timeouts end
//! when they are due rather than up to Linux's default 50 us late.

mod common;

use bytes::Bytes;
use common::{config, task, value, Harness};
use scifaas_protocol::{FunctionId, FunctionSpec};

#[test]
fn workers_wake_on_time() {
    let mut harness = Harness::start(config(1));
    let slack = FunctionSpec {
        id: FunctionId::new(),
        hash: format!("slack-{}", FunctionId::new()),
        name: "slack".into(),
        source: Bytes::from_static(
            b"def slack():\n    return int(open('/proc/self/timerslack_ns').read())\n",
        ),
        container: None,
    };
    let results = harness.run(vec![task(&slack, r#"{"args":[],"kwargs":{}}"#)]);
    assert_eq!(value(&results[0]), 1);
    harness.shutdown();
}
