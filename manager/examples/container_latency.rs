//! Prints cold-start and warm round-trip times of a manager's workers outside any
//! container, in bwrap and in Charliecloud (`ch-run`), measured through a real manager
//! and a stand-in interchange on loopback:
//!
//! ```text
//! scripts/build-test-image.sh && cargo run -p scifaas-manager --example container_latency [N]
//! ```
//!
//! - cold start: from starting a fresh manager (whose workers start in that container)
//!   to the first call's result;
//! - switch: a call whose container has no worker on a running manager (the manager
//!   retires a worker of another container and starts one in this one);
//! - warm: a call that finds its worker warm, median and 99th percentile of N (default 500).
//!
//! Figures, not assertions: they depend on the machine and its load.

#[path = "../tests/common/mod.rs"]
mod common;

use common::images::{image, test_images};
use common::{config, container, task, value, whoami, Harness};
use scifaas_manager::ManagerConfig;
use scifaas_protocol::ContainerSpec;
use scifaas_worker::WorkerCommand;
use std::path::Path;
use std::time::{Duration, Instant};

fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let images = test_images("container_latency");
    let mut kinds: Vec<(&str, Option<ContainerSpec>)> = vec![("no container", None)];
    if let Some(images) = &images {
        kinds.push(("bwrap", Some(container("bwrap", image(images, "a")))));
        kinds.push((
            "ch-run",
            Some(container("charliecloud", image(images, "a"))),
        ));
    }
    println!(
        "{:<14} {:>12} {:>12} {:>12} {:>12}",
        "", "cold start", "switch", "warm p50", "warm p99"
    );
    for (name, spec) in kinds {
        let (cold, switch, warm) = measure(spec, calls);
        println!(
            "{name:<14} {:>12} {:>12} {:>12} {:>12}",
            ms(cold),
            ms(switch),
            ms(percentile(&warm, 0.50)),
            ms(percentile(&warm, 0.99)),
        );
    }
}

/// A one-worker manager config; outside containers it runs the same interpreter as the
/// test image (Debian's /usr/bin/python3, where this machine has it) so that the rows
/// differ only by the container.
fn one_worker(default_container: Option<ContainerSpec>) -> ManagerConfig {
    let mut config = config(1);
    if std::env::var_os("SCIFAAS_TEST_PYTHON").is_none() && Path::new(DEBIAN_PYTHON).exists() {
        config.worker = WorkerCommand::new(DEBIAN_PYTHON);
    }
    config.default_container = default_container;
    config
}

const DEBIAN_PYTHON: &str = "/usr/bin/python3";

fn measure(spec: Option<ContainerSpec>, calls: usize) -> (Duration, Duration, Vec<Duration>) {
    let f = whoami(spec.clone());
    // Cold: a fresh manager whose one worker starts in the container.
    let started = Instant::now();
    let mut harness = Harness::start(one_worker(spec.clone()));
    value(&harness.run(vec![task(&f, "{}")])[0]);
    let cold = started.elapsed();
    harness.shutdown();

    // Switch: the manager's one worker serves another kind when the call comes (a
    // container when timing "no container", none otherwise).
    let mut harness = Harness::start(one_worker(None));
    if spec.is_none() {
        let Some(images) = test_images("switch") else {
            return (cold, Duration::ZERO, Vec::new());
        };
        let other = whoami(Some(container("bwrap", image(&images, "b"))));
        value(&harness.run(vec![task(&other, "{}")])[0]);
    } else {
        // Let the first worker finish starting, so that only the switch is timed.
        value(&harness.run(vec![task(&whoami(None), "{}")])[0]);
    }
    let at = Instant::now();
    value(&harness.run(vec![task(&f, "{}")])[0]);
    let switch = at.elapsed();

    let mut warm = Vec::with_capacity(calls);
    for _ in 0..calls {
        let at = Instant::now();
        value(&harness.run(vec![task(&f, "{}")])[0]);
        warm.push(at.elapsed());
    }
    harness.shutdown();
    (cold, switch, warm)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}
