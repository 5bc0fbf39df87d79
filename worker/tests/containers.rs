//! Workers inside real containers: bubblewrap (`bwrap`) and Charliecloud (`ch-run`), on
//! the images `scripts/build-test-image.sh` builds. Each test proves where its function
//! ran by reading `/scifaas-test-image`, a file only that image has.

#[path = "common/images.rs"]
mod images;

use bytes::Bytes;
use scifaas_protocol::{ContainerSpec, FunctionId, FunctionSpec, Outcome, TaskId, TaskSpec};
use scifaas_worker::{ContainerRuntimes, Worker, WorkerCommand, WorkerError};
use std::path::Path;

const PROBE: &str = r#"
import os

def probe(x):
    def can_write(path):
        try:
            with open(path, "w") as f:
                f.write("x")
            return True
        except OSError:
            return False
    return {
        "marker": open("/scifaas-test-image").read().strip(),
        "pid": os.getpid(),
        "uid": os.getuid(),
        "x": x,
        "sees_the_repository": os.path.exists(os.environ["SCIFAAS_TEST_REPO"]),
        "tmp_writable": can_write("/tmp/scifaas-probe-%d" % os.getpid()),
        "etc_writable": can_write("/etc/scifaas-probe-%d" % os.getpid()),
        "tmp_is_private": not os.path.exists(os.environ["SCIFAAS_TEST_HOST_TMP_FILE"]),
        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
"#;

fn probe_function() -> FunctionSpec {
    FunctionSpec {
        id: FunctionId::new(),
        hash: format!("probe-{}", FunctionId::new()),
        name: "probe".into(),
        source: Bytes::from_static(PROBE.as_bytes()),
        container: None,
    }
}

fn task(function: &FunctionSpec, x: i64) -> TaskSpec {
    TaskSpec {
        task_id: TaskId::new(),
        function: function.clone(),
        payload: Bytes::from(format!("{{\"args\": [{x}]}}")),
        walltime_ms: None,
        retries: 0,
    }
}

fn container(runtime: &str, image: String) -> ContainerSpec {
    ContainerSpec {
        runtime: runtime.into(),
        image,
        options: None,
    }
}

/// The worker command for `spec`, with the variables the probe reads; `host_tmp_file`
/// is a file in this machine's /tmp, which a worker with a private /tmp does not see.
fn command(
    runtimes: &ContainerRuntimes,
    spec: &ContainerSpec,
    host_tmp_file: &Path,
) -> WorkerCommand {
    let mut base = WorkerCommand::new("python3");
    base.env = vec![
        ("SCIFAAS_TEST_REPO".into(), repository()),
        ("CUDA_VISIBLE_DEVICES".into(), "3".into()),
        (
            "SCIFAAS_TEST_HOST_TMP_FILE".into(),
            host_tmp_file.to_string_lossy().into_owned(),
        ),
    ];
    runtimes.command(spec, &base).expect("container command")
}

fn host_tmp_file() -> tempfile::NamedTempFile {
    tempfile::NamedTempFile::new_in("/tmp").expect("a file in /tmp")
}

fn repository() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("Cargo.toml")
        .to_string_lossy()
        .into_owned()
}

fn run(worker: &mut Worker, function: &FunctionSpec, x: i64) -> serde_json::Value {
    let reply = worker.run(&task(function, x)).expect("the worker answers");
    match reply.outcome {
        Outcome::Success(body) => serde_json::from_slice(&body).unwrap(),
        Outcome::Failure(error) => panic!("task failed: {error:?}"),
    }
}

/// Starts a worker in `runtime` on image `a`, runs the probe twice, and checks that it
/// ran inside the image, on one warm worker, isolated as the runtime promises.
fn runs_inside_the_image(runtime: &str, runtimes: &ContainerRuntimes) -> serde_json::Value {
    let Some(images) = images::test_images(runtime) else {
        return serde_json::Value::Null;
    };
    let spec = container(runtime, images::image(&images, "a"));
    let host_tmp = host_tmp_file();
    let mut worker =
        Worker::spawn(&command(runtimes, &spec, host_tmp.path())).expect("worker starts");
    let function = probe_function();
    let first = run(&mut worker, &function, 1);
    assert_eq!(first["marker"], "a", "{first}");
    assert_eq!(first["x"], 1);
    assert_eq!(first["pid"], worker.worker_pid());
    assert_eq!(
        first["gpu"], "3",
        "the worker's variables reach the container"
    );
    assert_eq!(first["tmp_writable"], true);
    assert_eq!(first["tmp_is_private"], true, "{first}");
    let warm = run(&mut worker, &function, 2);
    assert_eq!(warm["pid"], first["pid"], "a warm call reuses the worker");
    assert_eq!(warm["x"], 2);
    first
}

#[test]
fn bwrap_runs_the_worker_in_a_read_only_image_that_cannot_see_the_hosts_files() {
    let probe = runs_inside_the_image("bwrap", &ContainerRuntimes::builtin());
    if probe.is_null() {
        return;
    }
    assert_eq!(probe["sees_the_repository"], false, "{probe}");
    assert_eq!(
        probe["etc_writable"], false,
        "the image is read-only: {probe}"
    );
}

#[test]
fn charliecloud_runs_the_worker_in_the_image() {
    let probe = runs_inside_the_image("charliecloud", &ContainerRuntimes::builtin());
    if probe.is_null() {
        return;
    }
    assert_eq!(
        probe["etc_writable"], false,
        "ch-run mounts images read-only"
    );
}

/// Both runtimes as a user without any privilege (`nobody`), through `setpriv`, the way
/// they run on a cluster's compute node.
#[test]
fn bwrap_and_charliecloud_run_unprivileged() {
    let Some(images) = images::test_images("unprivileged") else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        // Already unprivileged: the other tests cover it.
        return;
    }
    let mut runtimes = ContainerRuntimes::builtin();
    runtimes.set_unprivileged(true);
    for runtime in ["bwrap", "charliecloud"] {
        let spec = container(runtime, images::image(&images, "b"));
        let host_tmp = host_tmp_file();
        let mut command = command(&runtimes, &spec, host_tmp.path());
        let drop_privileges = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ];
        command
            .prefix
            .splice(0..0, drop_privileges.iter().map(|s| s.to_string()));
        let mut worker = Worker::spawn(&command)
            .unwrap_or_else(|e| panic!("{runtime} worker starts unprivileged: {e}"));
        let probe = run(&mut worker, &probe_function(), 7);
        assert_eq!(probe["marker"], "b", "{runtime}: {probe}");
        let uid = if runtime == "bwrap" { 0 } else { 65534 };
        assert_eq!(probe["uid"], uid, "{runtime}: {probe}");
    }
}

/// Starting a worker in `image` fails; the error quotes the runtime's stderr.
fn start_failure(runtime: &str, images: &Path, image: &str) -> String {
    let spec = container(runtime, images::image(images, image));
    let command = command(&ContainerRuntimes::builtin(), &spec, Path::new("/tmp/none"));
    match Worker::spawn(&command) {
        Ok(worker) => panic!("{runtime} {image}: a worker started: {worker:?}"),
        Err(error @ WorkerError::NotReady { .. }) => error.to_string(),
        Err(other) => panic!("{runtime} {image}: unexpected error {other}"),
    }
}

#[test]
fn an_image_without_python3_fails_the_start_with_the_runtimes_stderr() {
    let Some(images) = images::test_images("no python3") else {
        return;
    };
    let bwrap = start_failure("bwrap", &images, "nopython");
    assert!(
        bwrap.contains("bwrap: execvp python3: No such file or directory"),
        "{bwrap}"
    );
    let ch_run = start_failure("charliecloud", &images, "nopython");
    assert!(ch_run.contains("can't execve(2): python3"), "{ch_run}");
    assert!(ch_run.contains("ch-run"), "the command is named: {ch_run}");
}

#[test]
fn an_image_whose_python3_is_too_old_fails_the_start_saying_so() {
    let Some(images) = images::test_images("old python3") else {
        return;
    };
    for runtime in ["bwrap", "charliecloud"] {
        let message = start_failure(runtime, &images, "oldpython");
        assert!(
            message.contains("the scifaas worker needs Python >= 3.8")
                && message.contains("is 3.7.17"),
            "{runtime}: {message}"
        );
        assert!(message.contains("exited with status 2"), "{message}");
    }
}
