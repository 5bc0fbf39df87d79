//! Each runtime's rendered command line, checked against the CLI its documentation gives,
//! and the failures a start meets before anything runs.

use super::*;

fn spec(runtime: &str, image: &str, options: Option<&str>) -> ContainerSpec {
    ContainerSpec {
        runtime: runtime.into(),
        image: image.into(),
        options: options.map(str::to_owned),
    }
}

/// The built-in runtimes, rendering as if this process were root or not.
fn runtimes(unprivileged: bool) -> ContainerRuntimes {
    let mut runtimes = ContainerRuntimes::builtin();
    runtimes.set_unprivileged(unprivileged);
    runtimes
}

/// The rendered prefix without checks (tests of rendering only).
fn prefix(runtimes: &ContainerRuntimes, spec: &ContainerSpec, env: &[&str]) -> Vec<String> {
    let runtime = Runtime::parse(&spec.runtime).unwrap();
    runtimes.prefix(runtime, spec, env).unwrap()
}

#[test]
fn apptainer_and_singularity_exec_options_then_the_image() {
    // `apptainer exec [exec options...] <container> <command>`
    for name in ["apptainer", "singularity"] {
        let spec = spec(name, "/sw/img/sci.sif", Some("-B /pscratch --nv"));
        assert_eq!(
            prefix(&runtimes(false), &spec, &["CUDA_VISIBLE_DEVICES"]),
            [name, "exec", "-B", "/pscratch", "--nv", "/sw/img/sci.sif"]
        );
    }
}

#[test]
fn charliecloud_runs_options_image_then_a_double_dash() {
    // `ch-run [OPTION...] IMAGE -- CMD [ARG...]`
    let spec = spec("charliecloud", "/var/tmp/img", Some("-b /data:/mnt/0 -w"));
    assert_eq!(
        prefix(&runtimes(true), &spec, &[]),
        [
            "ch-run",
            "--private-tmp",
            "-b",
            "/data:/mnt/0",
            "-w",
            "/var/tmp/img",
            "--"
        ]
    );
    let bare = self::spec("charliecloud", "/var/tmp/img", None);
    assert_eq!(
        prefix(&runtimes(true), &bare, &[]),
        ["ch-run", "--private-tmp", "/var/tmp/img", "--"]
    );
}

#[test]
fn docker_and_podman_run_interactively_and_pass_the_workers_variables() {
    // `docker run [OPTIONS] IMAGE [COMMAND] [ARG...]`; `-e NAME` passes NAME's value on.
    for name in ["docker", "podman"] {
        let spec = spec(name, "python:3.11-slim", Some("--network=host"));
        assert_eq!(
            prefix(
                &runtimes(false),
                &spec,
                &["CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"]
            ),
            [
                name,
                "run",
                "--rm",
                "-i",
                "-e",
                "CUDA_VISIBLE_DEVICES",
                "-e",
                "ROCR_VISIBLE_DEVICES",
                "--network=host",
                "python:3.11-slim"
            ]
        );
    }
}

#[test]
fn shifter_names_the_image_with_an_equals_sign() {
    // `shifter [options] --image=IMAGE command`
    let spec = spec(
        "shifter",
        "docker:python:3.11",
        Some("--volume=/global/cscratch1:/scratch"),
    );
    assert_eq!(
        prefix(&runtimes(false), &spec, &[]),
        [
            "shifter",
            "--image=docker:python:3.11",
            "--volume=/global/cscratch1:/scratch"
        ]
    );
}

#[test]
fn bwrap_gives_a_read_only_root_and_private_tmp_proc_and_dev() {
    let spec = spec("bwrap", "/images/sci", Some("--ro-bind /data /data"));
    let common = [
        "bwrap",
        "--ro-bind",
        "/images/sci",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--chdir",
        "/tmp",
        "--unshare-all",
        "--share-net",
        "--die-with-parent",
    ];
    let as_root = prefix(&runtimes(false), &spec, &[]);
    assert_eq!(as_root[..common.len()], common);
    assert_eq!(as_root[common.len()..], ["--ro-bind", "/data", "/data"]);
    // Without root, bwrap must map the caller to root in a user namespace of its own.
    let unprivileged = prefix(&runtimes(true), &spec, &[]);
    assert_eq!(unprivileged[..common.len()], common);
    assert_eq!(
        unprivileged[common.len()..],
        [
            "--unshare-user",
            "--uid",
            "0",
            "--gid",
            "0",
            "--ro-bind",
            "/data",
            "/data"
        ]
    );
}

#[test]
fn an_image_with_blanks_and_quotes_stays_one_word_and_options_split_as_a_shell_would() {
    let image = "/images/it's a \"test\" $HOME";
    let spec = spec(
        "charliecloud",
        image,
        Some(r#"-b "/my data:/mnt/my data" --set-env='A=1 2'"#),
    );
    assert_eq!(
        prefix(&runtimes(false), &spec, &[]),
        [
            "ch-run",
            "--private-tmp",
            "-b",
            "/my data:/mnt/my data",
            "--set-env=A=1 2",
            image,
            "--"
        ]
    );
}

#[test]
fn command_puts_the_runtime_between_host_wrappers_and_the_images_python() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().to_str().unwrap();
    let mut runtimes = runtimes(false);
    runtimes.set_executable(Runtime::Bwrap, "/bin/true");
    let mut base = WorkerCommand::new("/opt/host/python3");
    base.prefix = vec!["nice".into()];
    base.env = vec![("CUDA_VISIBLE_DEVICES".into(), "1".into())];
    let command = runtimes
        .command(&spec("bwrap", image, None), &base)
        .unwrap();
    assert_eq!(
        command.prefix[..4],
        ["nice", "/bin/true", "--ro-bind", image]
    );
    // The host's interpreter means nothing inside the image.
    assert_eq!(command.python, "python3");
    assert_eq!(command.env, base.env);
}

#[test]
fn an_unknown_type_lists_the_known_ones() {
    let error = runtimes(false)
        .command(&spec("lxc", "img", None), &WorkerCommand::default())
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "unknown container type `lxc`; known types: apptainer, singularity, charliecloud, \
         docker, podman, shifter, bwrap"
    );
}

#[test]
fn unbalanced_options_are_blamed_on_the_options() {
    let error = runtimes(false)
        .command(
            &spec("docker", "python:3.11", Some("-v '/a:/b")),
            &WorkerCommand::default(),
        )
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ContainerError::Options { .. }), "{message}");
    assert!(
        message.contains("docker container python:3.11"),
        "{message}"
    );
    assert!(message.contains("single quote"), "{message}");
}

#[test]
fn a_runtime_that_is_not_installed_says_so_before_anything_runs() {
    let mut runtimes = runtimes(false);
    runtimes.set_executable(Runtime::Docker, "scifaas-no-such-docker");
    let error = runtimes
        .command(
            &spec("docker", "python:3.11", None),
            &WorkerCommand::default(),
        )
        .unwrap_err();
    assert_eq!(error.type_name(), "ContainerRuntimeNotFound");
    let message = error.to_string();
    assert!(
        message.starts_with("the docker container runtime is not installed on "),
        "{message}"
    );
    assert!(
        message.contains("`scifaas-no-such-docker` is not on PATH"),
        "{message}"
    );

    runtimes.set_executable(Runtime::Docker, "/nonexistent/docker");
    let message = runtimes
        .command(
            &spec("docker", "python:3.11", None),
            &WorkerCommand::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(message.contains("`/nonexistent/docker`: "), "{message}");
}

#[test]
fn an_image_path_that_does_not_exist_says_so_and_a_registry_reference_is_not_checked() {
    let mut runtimes = runtimes(false);
    for runtime in RUNTIMES {
        runtimes.set_executable(*runtime, "/bin/true");
    }
    for runtime in ["bwrap", "charliecloud", "apptainer", "singularity"] {
        let error = runtimes
            .command(
                &spec(runtime, "/nonexistent/image", None),
                &WorkerCommand::default(),
            )
            .unwrap_err();
        assert_eq!(error.type_name(), "ContainerImageNotFound", "{runtime}");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "the {runtime} image /nonexistent/image does not exist on "
            )),
            "{message}"
        );
    }
    // bwrap needs a tree, not a file.
    let file = tempfile::NamedTempFile::new().unwrap();
    let message = runtimes
        .command(
            &spec("bwrap", file.path().to_str().unwrap(), None),
            &WorkerCommand::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(message.contains("needs an unpacked image"), "{message}");
    for (runtime, image) in [
        ("docker", "python:3.11"),
        ("podman", "/not/a/path/but/a/reference"),
        ("shifter", "docker:python:3.11"),
        ("apptainer", "docker://python:3.11"),
        ("charliecloud", "sci-image"),
    ] {
        runtimes
            .command(&spec(runtime, image, None), &WorkerCommand::default())
            .unwrap_or_else(|e| panic!("{runtime} {image}: {e}"));
    }
}

#[test]
fn an_admins_template_folder_replaces_only_the_runtimes_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("charliecloud.hbs"),
        "/opt/ch/bin/ch-run --private-tmp {{{options}}} {{image}} --",
    )
    .unwrap();
    std::fs::write(dir.path().join("README"), "not a template").unwrap();
    let runtimes = ContainerRuntimes::with_template_dir(dir.path()).unwrap();
    assert_eq!(
        prefix(&runtimes, &spec("charliecloud", "/img", None), &[]),
        ["/opt/ch/bin/ch-run", "--private-tmp", "/img", "--"]
    );
    assert_eq!(
        prefix(&runtimes, &spec("shifter", "x", None), &[]),
        ["shifter", "--image=x"]
    );
}

#[test]
fn a_broken_template_is_an_error_naming_its_file_when_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bwrap.hbs");
    std::fs::write(&path, "bwrap {{#if image}} --ro-bind {{image}} /").unwrap();
    let message = ContainerRuntimes::with_template_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(&format!("container template {}: ", path.display())),
        "{message}"
    );

    // A variable the manager does not supply is found at load time, not at a start.
    std::fs::write(&path, "bwrap --ro-bind {{imgae}} /").unwrap();
    let message = ContainerRuntimes::with_template_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(message.contains("imgae"), "{message}");

    let missing = dir.path().join("nope");
    let message = ContainerRuntimes::with_template_dir(&missing)
        .unwrap_err()
        .to_string();
    assert!(message.contains("cannot read the folder"), "{message}");
}

#[test]
fn the_runtimes_are_those_the_protocol_names() {
    let names: Vec<&str> = RUNTIMES.iter().map(|r| r.name()).collect();
    assert_eq!(names, ContainerSpec::RUNTIMES);
}

#[test]
fn every_runtime_has_a_builtin_template_naming_its_executable() {
    let runtimes = runtimes(false);
    for runtime in RUNTIMES {
        let words = prefix(&runtimes, &spec(runtime.name(), "/img", None), &[]);
        assert_eq!(words[0], runtime.default_executable(), "{runtime}");
        assert!(words.iter().any(|w| w.contains("/img")), "{runtime}");
    }
}
