//! A real manager keeping workers warm in real containers (bwrap, Charliecloud) on the
//! images `scripts/build-test-image.sh` builds, switching containers as the work asks.

mod common;

use common::images::{image, test_images};
use common::{config, container, error, task, value, whoami, Harness};
use scifaas_protocol::ErrorKind;
use scifaas_worker::{ContainerRuntimes, Runtime};
use std::sync::Arc;
use std::time::Duration;

/// Two functions in two images on a 2-worker manager whose workers start outside any
/// container: each image's first task switches one worker (2 switches), the next calls
/// find both warm (same workers, no switch), and a task outside containers then needs a
/// third switch.
fn two_images_on_two_workers(runtime: &str) {
    let Some(images) = test_images(runtime) else {
        return;
    };
    let mut harness = Harness::start(config(2));
    assert_eq!(harness.next_heartbeat_switches(), 0);
    let in_a = whoami(Some(container(runtime, image(&images, "a"))));
    let in_b = whoami(Some(container(runtime, image(&images, "b"))));

    let first = harness.run(vec![task(&in_a, "{}"), task(&in_b, "{}")]);
    let (a, b) = (value(&first[0]), value(&first[1]));
    assert_eq!(a["marker"], "a", "ran in image a: {a}");
    assert_eq!(b["marker"], "b", "ran in image b: {b}");
    assert_eq!(harness.next_heartbeat_switches(), 2);

    let warm = harness.run(vec![task(&in_a, "{}"), task(&in_b, "{}")]);
    assert_eq!(
        value(&warm[0])["token"],
        a["token"],
        "warm call, same worker"
    );
    assert_eq!(
        value(&warm[1])["token"],
        b["token"],
        "warm call, same worker"
    );
    assert_eq!(
        harness.next_heartbeat_switches(),
        2,
        "warm calls switch nothing"
    );

    let bare = harness.run(vec![task(&whoami(None), "{}")]);
    assert_eq!(value(&bare[0])["marker"], serde_json::Value::Null);
    assert_eq!(harness.next_heartbeat_switches(), 3);
    harness.shutdown();
}

#[test]
fn bwrap_functions_in_two_images_share_two_workers() {
    two_images_on_two_workers("bwrap");
}

#[test]
fn charliecloud_functions_in_two_images_share_two_workers() {
    two_images_on_two_workers("charliecloud");
}

/// With more work for one image than workers, a task waits for its image's busy worker
/// rather than switching the other image's idle worker away.
#[test]
fn a_busy_containers_task_waits_rather_than_switching_a_warm_worker_of_another() {
    let Some(images) = test_images("busy container") else {
        return;
    };
    let mut config = config(2);
    config.default_container = Some(container("bwrap", image(&images, "a")));
    let mut harness = Harness::start(config);
    let in_b = whoami(Some(container("bwrap", image(&images, "b"))));
    let results = harness.run(vec![
        task(&in_b, r#"{"args": [0.3]}"#),
        task(&in_b, r#"{"args": [0.3]}"#),
        task(&whoami(None), "{}"),
    ]);
    assert_eq!(value(&results[0])["marker"], "b");
    assert_eq!(value(&results[1])["token"], value(&results[0])["token"]);
    // A function without a container runs in the endpoint's default container.
    assert_eq!(value(&results[2])["marker"], "a");
    assert_eq!(harness.next_heartbeat_switches(), 1);
    harness.shutdown();
}

#[test]
fn workers_idle_past_the_timeout_are_retired_and_the_next_call_starts_one() {
    let Some(images) = test_images("idle timeout") else {
        return;
    };
    let mut config = config(1);
    config.worker_idle_timeout = Some(Duration::from_millis(400));
    let mut harness = Harness::start(config);
    let in_a = whoami(Some(container("bwrap", image(&images, "a"))));
    let first = value(&harness.run(vec![task(&in_a, "{}")])[0]);
    let warm = value(&harness.run(vec![task(&in_a, "{}")])[0]);
    assert_eq!(warm["token"], first["token"]);
    let switches = harness.next_heartbeat_switches();
    std::thread::sleep(Duration::from_millis(1000));
    let after = value(&harness.run(vec![task(&in_a, "{}")])[0]);
    assert_eq!(after["marker"], "a");
    assert_ne!(
        after["token"], first["token"],
        "the idle worker was retired"
    );
    // Retiring is not switching: the slot was empty when the last task came.
    assert_eq!(harness.next_heartbeat_switches(), switches);
    harness.shutdown();
}

#[test]
fn each_worker_sees_its_own_accelerator_inside_the_container_and_workers_are_capped() {
    let Some(images) = test_images("accelerators") else {
        return;
    };
    let mut config = config(4);
    config.accelerators = vec!["3".into(), "GPU-5".into()];
    config.default_container = Some(container("charliecloud", image(&images, "a")));
    let mut harness = Harness::start(config);
    assert_eq!(
        harness.registration.workers, 2,
        "one worker per accelerator"
    );
    let f = whoami(None);
    let results = harness.run(vec![
        task(&f, r#"{"args": [0.5]}"#),
        task(&f, r#"{"args": [0.5]}"#),
    ]);
    let mut seen: Vec<serde_json::Value> =
        results.iter().map(|r| value(r)["env"].clone()).collect();
    seen.sort_by_key(|env| env.to_string());
    assert_eq!(
        seen,
        [
            serde_json::json!(["3", "3", "3"]),
            serde_json::json!(["GPU-5", "GPU-5", "GPU-5"])
        ]
    );
    harness.shutdown();
}

/// A real image without python3: the task fails naming the runtime, the image and what
/// the runtime printed; the slot's warm worker is lost to the attempt, yet the manager
/// stays up and the next task outside the container runs.
#[test]
fn an_image_without_python3_fails_its_task_clearly_and_the_manager_stays_up() {
    let Some(images) = test_images("no python3") else {
        return;
    };
    let mut harness = Harness::start(config(1));
    let nopython = image(&images, "nopython");
    let broken = whoami(Some(container("bwrap", nopython.clone())));
    let results = harness.run(vec![task(&broken, "{}"), task(&broken, "{}")]);
    let first = error(&results[0]);
    assert_eq!(first.kind, ErrorKind::Endpoint);
    assert_eq!(first.type_name, "WorkerStartFailed");
    assert!(
        first.message.starts_with(&format!(
            "could not start a worker in the bwrap container {nopython} on "
        )),
        "{}",
        first.message
    );
    assert!(
        first
            .message
            .contains("bwrap: execvp python3: No such file or directory"),
        "{}",
        first.message
    );
    // The second task did not start the container again.
    let second = error(&results[1]);
    assert!(
        second
            .message
            .contains("does not start a worker of this kind again for"),
        "{}",
        second.message
    );
    assert_eq!(
        value(&harness.run(vec![task(&whoami(None), "{}")])[0])["marker"],
        serde_json::Value::Null
    );
    assert!(harness.manager_running());
    harness.shutdown();
}

#[test]
fn a_missing_image_fails_before_the_warm_worker_is_given_up() {
    let mut config = config(1);
    // Whether bwrap is installed does not matter: the image is checked before it runs.
    let mut runtimes = ContainerRuntimes::builtin();
    runtimes.set_executable(Runtime::Bwrap, "/bin/true");
    config.containers = Arc::new(runtimes);
    let mut harness = Harness::start(config);
    let bare = whoami(None);
    let token = value(&harness.run(vec![task(&bare, "{}")])[0])["token"].clone();
    let missing = whoami(Some(container(
        "bwrap",
        "/nonexistent/scifaas-image".into(),
    )));
    let result = harness.run(vec![task(&missing, "{}")]);
    let failure = error(&result[0]);
    assert_eq!(failure.type_name, "ContainerImageNotFound");
    assert!(
        failure
            .message
            .contains("the bwrap image /nonexistent/scifaas-image does not exist on "),
        "{}",
        failure.message
    );
    // Nothing ran, so nothing was switched and the warm worker is still there.
    assert_eq!(
        value(&harness.run(vec![task(&bare, "{}")])[0])["token"],
        token
    );
    assert_eq!(harness.next_heartbeat_switches(), 0);
    harness.shutdown();
}

/// A worker that dies in its container (here: killed at its walltime) fails its task and
/// is replaced in the same container, which is not a switch.
#[test]
fn a_worker_killed_in_its_container_is_replaced_in_the_same_container() {
    let Some(images) = test_images("walltime in a container") else {
        return;
    };
    let mut harness = Harness::start(config(1));
    let in_a = whoami(Some(container("bwrap", image(&images, "a"))));
    let first = value(&harness.run(vec![task(&in_a, "{}")])[0]);
    let mut slow = task(&in_a, r#"{"args": [30]}"#);
    slow.walltime_ms = Some(300);
    let killed = harness.run(vec![slow]);
    assert_eq!(error(&killed[0]).kind, ErrorKind::Walltime);
    let after = value(&harness.run(vec![task(&in_a, "{}")])[0]);
    assert_eq!(after["marker"], "a");
    assert_ne!(after["token"], first["token"], "a new worker");
    assert_eq!(
        harness.next_heartbeat_switches(),
        1,
        "only the first start switched"
    );
    harness.shutdown();
}
