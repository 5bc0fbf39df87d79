//! The runtimes that cannot run on this machine (Apptainer, Singularity, Docker, Podman,
//! Shifter), driven through stand-in executables: one that behaves like the runtime
//! (records its argv, then runs the worker's `python3` outside any container), and one
//! that fails the way a broken runtime does. The manager's side is real.

mod common;

use common::{config, container, error, task, value, whoami, Harness};
use scifaas_protocol::ErrorKind;
use scifaas_worker::{ContainerRuntimes, Runtime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Writes an executable shell script `name` into `dir`, without this process ever holding
/// it open for writing: tests run on threads of one process, and a thread that forks while
/// another holds a fresh script open hands that descriptor to its child until the child
/// execs; running the script in that window fails with "Text file busy" (ETXTBSY). So the
/// text goes to a plain file and `install` (its own process) writes the executable.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    let source = dir.join(format!("{name}.src"));
    std::fs::write(&source, format!("#!/bin/sh\n{body}\n")).unwrap();
    let status = std::process::Command::new("install")
        .args(["-m", "0755"])
        .arg(&source)
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "install {} failed", path.display());
    path
}

/// The argv a stand-in recorded (NUL-separated, its own name left out).
fn recorded_argv(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.split_terminator('\0').map(str::to_owned).collect()
}

/// Each runtime's command line, as the manager runs it, has the shape its CLI documents,
/// and a task runs through it: the stand-in drops everything before `python3` and runs
/// the rest.
#[test]
fn every_runtimes_command_line_reaches_the_worker_in_its_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut runtimes = ContainerRuntimes::builtin();
    for runtime in [
        Runtime::Apptainer,
        Runtime::Singularity,
        Runtime::Docker,
        Runtime::Podman,
        Runtime::Shifter,
    ] {
        let log = dir.path().join(format!("{runtime}.argv"));
        let body = format!(
            "printf '%s\\0' \"$@\" > '{}'\n\
             while [ $# -gt 0 ] && [ \"$1\" != python3 ]; do shift; done\n\
             exec \"$@\"",
            log.display()
        );
        let exe = script(dir.path(), &format!("fake-{runtime}"), &body);
        runtimes.set_executable(runtime, exe.to_string_lossy());
    }
    let mut config = config(1);
    config.accelerators = vec!["0".into()];
    config.containers = Arc::new(runtimes);
    let mut harness = Harness::start(config);
    let cases = [
        (
            "apptainer",
            "/sw/sci.sif",
            "-B /scratch",
            vec!["exec", "-B", "/scratch", "/sw/sci.sif"],
        ),
        (
            "singularity",
            "docker://python:3.11",
            "--nv",
            vec!["exec", "--nv", "docker://python:3.11"],
        ),
        (
            "docker",
            "python:3.11-slim",
            "--network=host",
            vec![
                "run",
                "--rm",
                "-i",
                "-e",
                "CUDA_VISIBLE_DEVICES",
                "-e",
                "ROCR_VISIBLE_DEVICES",
                "-e",
                "ZE_AFFINITY_MASK",
                "--network=host",
                "python:3.11-slim",
            ],
        ),
        (
            "podman",
            "python:3.11-slim",
            "",
            vec![
                "run",
                "--rm",
                "-i",
                "-e",
                "CUDA_VISIBLE_DEVICES",
                "-e",
                "ROCR_VISIBLE_DEVICES",
                "-e",
                "ZE_AFFINITY_MASK",
                "python:3.11-slim",
            ],
        ),
        (
            "shifter",
            "docker:python:3.11",
            "--volume=/global/scratch:/scratch",
            vec![
                "--image=docker:python:3.11",
                "--volume=/global/scratch:/scratch",
            ],
        ),
    ];
    for (runtime, image, options, expected) in cases {
        // A path image must exist (the manager checks before the runtime runs).
        let image = if image.starts_with('/') {
            let path = dir.path().join("sci.sif");
            std::fs::write(&path, "").unwrap();
            path.to_string_lossy().into_owned()
        } else {
            image.to_owned()
        };
        let mut spec = container(runtime, image.clone());
        spec.options = Some(options.to_owned()).filter(|o| !o.is_empty());
        let result = harness.run(vec![task(&whoami(Some(spec)), "{}")]);
        assert_eq!(
            value(&result[0])["env"][0],
            "0",
            "{runtime}: pinned accelerator"
        );
        let argv = recorded_argv(&dir.path().join(format!("{runtime}.argv")));
        let expected: Vec<String> = expected
            .iter()
            .map(|w| {
                if *w == "/sw/sci.sif" {
                    image.clone()
                } else {
                    (*w).to_owned()
                }
            })
            .collect();
        assert_eq!(argv[..expected.len()], expected, "{runtime}: {argv:?}");
        assert_eq!(
            argv[expected.len()..][..3],
            ["python3", "-u", "-c"],
            "{runtime}"
        );
    }
    harness.shutdown();
}

/// A runtime that fails at every start (here: Docker without its daemon). Every task
/// for it fails with a message naming the runtime, the image and the runtime's stderr;
/// the manager starts it once, not once per task and not in a loop, tries again only
/// after `start_retry_after`, and keeps running tasks outside containers.
#[test]
fn a_failing_runtime_fails_its_tasks_clearly_without_a_restart_loop() {
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let exe = script(
        dir.path(),
        "docker",
        &format!(
            "echo start >> '{}'\n\
             echo 'docker: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. \
             Is the docker daemon running?' >&2\n\
             exit 125",
            starts.display()
        ),
    );
    let count_starts = || {
        std::fs::read_to_string(&starts)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let mut runtimes = ContainerRuntimes::builtin();
    runtimes.set_executable(Runtime::Docker, exe.to_string_lossy());
    let mut config = config(2);
    config.containers = Arc::new(runtimes);
    config.start_retry_after = Duration::from_millis(1500);
    let mut harness = Harness::start(config);

    let in_docker = whoami(Some(container("docker", "python:3.11-slim".into())));
    let results = harness.run((0..4).map(|_| task(&in_docker, "{}")).collect());
    for result in &results {
        let failure = error(result);
        assert_eq!(failure.kind, ErrorKind::Endpoint);
        assert_eq!(failure.type_name, "WorkerStartFailed");
        let message = &failure.message;
        assert!(
            message.starts_with(
                "could not start a worker in the docker container python:3.11-slim on "
            ),
            "{message}"
        );
        assert!(message.contains("exited with status 125"), "{message}");
        assert!(
            message.contains("Cannot connect to the Docker daemon"),
            "the runtime's stderr: {message}"
        );
        assert!(
            message.contains("run --rm -i"),
            "the command line: {message}"
        );
    }
    assert_eq!(count_starts(), 1, "one start for four tasks");

    // No work, no starts: nothing restarts the broken container in the background.
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(count_starts(), 1);
    assert!(harness.manager_running());

    // The failure has lapsed: the next task tries again (the admin may have fixed it).
    let again = harness.run(vec![task(&in_docker, "{}")]);
    assert!(error(&again[0]).message.contains("Cannot connect"));
    assert_eq!(count_starts(), 2);

    // Work outside containers goes on.
    let bare = harness.run(vec![task(&whoami(None), "{}"), task(&whoami(None), "{}")]);
    assert!(bare.iter().all(|r| r.is_success()));
    harness.shutdown();
}

#[test]
fn a_runtime_that_is_not_installed_fails_its_tasks_saying_so() {
    let mut runtimes = ContainerRuntimes::builtin();
    runtimes.set_executable(Runtime::Podman, "scifaas-no-such-podman");
    let mut config = config(1);
    config.containers = Arc::new(runtimes);
    let mut harness = Harness::start(config);
    let in_podman = whoami(Some(container("podman", "python:3.11".into())));
    let results = harness.run(vec![task(&in_podman, "{}"), task(&whoami(None), "{}")]);
    let failure = error(&results[0]);
    assert_eq!(failure.type_name, "ContainerRuntimeNotFound");
    assert!(
        failure.message.starts_with(
            "could not start a worker in the podman container python:3.11: the podman container \
             runtime is not installed on "
        ),
        "{}",
        failure.message
    );
    assert!(results[1].is_success());
    assert_eq!(harness.next_heartbeat_switches(), 0);
    harness.shutdown();
}
