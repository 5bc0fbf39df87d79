//! A manager in a pilot with a walltime stops taking work before the walltime ends, tells
//! the interchange, finishes what it holds and leaves.

mod common;

use common::{config, task, whoami, Harness};
use scifaas_protocol::interchange::ManagerMessage;
use scifaas_protocol::time::now_micros;
use std::time::Duration;

#[test]
fn a_manager_drains_ahead_of_its_pilots_walltime_and_leaves() {
    let mut config = config(1);
    // The margin is at least 5 s: this manager takes work for about 1 s.
    config.walltime = Some(Duration::from_secs(6));
    assert_eq!(
        scifaas_manager::drain_margin(Duration::from_secs(6)),
        Duration::from_secs(5)
    );
    let mut harness = Harness::start(config);
    let until = harness
        .registration
        .accepts_until
        .expect("the registration says until when the manager takes work");
    let left = until - now_micros();
    assert!((0..=1_100_000).contains(&left), "{left} µs");

    let f = whoami(None);
    let results = harness.run(vec![task(&f, r#"{"args":[],"kwargs":{}}"#)]);
    assert!(results[0].is_success(), "work before the margin runs");

    harness.message(
        |m| matches!(m, ManagerMessage::Draining),
        Duration::from_secs(5),
    );
    harness.message(|m| matches!(m, ManagerMessage::Bye), Duration::from_secs(5));
    harness
        .join(Duration::from_secs(10))
        .expect("the manager leaves cleanly");
}
