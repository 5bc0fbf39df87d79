//! The local provider with real processes: submit, status, cancel, and what a job leaves.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use scifaas_providers::{
    BlockRequest, JobId, JobState, JobStatus, LocalProvider, Provider, ScriptTemplate, SCRIPT_FILE,
};

fn block(dir: &Path, manager_command: &[&str]) -> BlockRequest {
    BlockRequest {
        block_id: "block-1".to_owned(),
        dir: dir.join("block-1"),
        endpoint_name: "test-ep".to_owned(),
        nodes: 1,
        walltime: None,
        worker_init: String::new(),
        manager_command: manager_command.iter().map(|s| s.to_string()).collect(),
        env: vec![],
    }
}

fn provider() -> LocalProvider {
    LocalProvider::with_builtin_template().with_cancel_grace(Duration::from_millis(500))
}

fn status_of(provider: &LocalProvider, id: &JobId) -> JobStatus {
    let mut answer = provider.status(std::slice::from_ref(id)).unwrap();
    assert_eq!(answer.len(), 1);
    answer.remove(id).unwrap()
}

/// Polls until the job is in a terminal state (or fails the test after 10 s).
fn wait_until_ended(provider: &LocalProvider, id: &JobId) -> JobStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = status_of(provider, id);
        if status.state.is_terminal() {
            return status;
        }
        assert!(Instant::now() < deadline, "job {id} still {status:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` exists and has not ended; a zombie (ended, not yet reaped by its new
/// parent, which in a container may be a pid 1 that never reaps) counts as gone.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .trim_start()
                .chars()
                .next();
            !matches!(state, Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_script_exports_env_runs_worker_init_and_quotes_the_manager_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = block(dir.path(), &["printf", "%s|", "two words", "it's", "$HOME"]);
    req.env = vec![
        ("SCIFAAS_ENDPOINT_SECRET".into(), "s3cr'et value".into()),
        ("OTHER".into(), "plain".into()),
    ];
    req.worker_init = "echo init-ran >&2\nexport FROM_INIT=yes".into();
    let provider = provider();
    let id = provider.submit(&req).unwrap();

    let script = std::fs::read_to_string(req.dir.join(SCRIPT_FILE)).unwrap();
    assert!(script.starts_with("#!/bin/bash\n"), "{script}");
    assert!(
        script.contains("\nexport SCIFAAS_ENDPOINT_SECRET='s3cr'\\''et value'\n"),
        "{script}"
    );
    assert!(script.contains("\nexport OTHER=plain\n"), "{script}");
    assert!(
        script.contains("\necho init-ran >&2\nexport FROM_INIT=yes\n"),
        "{script}"
    );
    assert!(
        script.contains("\nexec printf '%s|' 'two words' 'it'\\''s' '$HOME'\n"),
        "{script}"
    );
    // The secret is in an export line and nowhere else (never on a command line).
    assert_eq!(script.matches("s3cr").count(), 1, "{script}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(req.dir.join(SCRIPT_FILE))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);

    let status = wait_until_ended(&provider, &id);
    assert_eq!(status.state, JobState::Completed, "{status:?}");
    assert_eq!(status.exit_code, Some(0));
    let stdout = std::fs::read_to_string(req.dir.join("stdout")).unwrap();
    assert_eq!(stdout, "two words|it's|$HOME|");
    let stderr = std::fs::read_to_string(req.dir.join("stderr")).unwrap();
    assert_eq!(stderr, "init-ran\n");
}

#[test]
fn a_job_sees_its_exported_variables_and_writes_to_its_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = block(
        dir.path(),
        &[
            "bash",
            "-c",
            "echo \"secret=$SCIFAAS_ENDPOINT_SECRET init=$FROM_INIT\"; pwd",
        ],
    );
    req.env = vec![("SCIFAAS_ENDPOINT_SECRET".into(), "abc def".into())];
    req.worker_init = "export FROM_INIT=yes".into();
    let provider = provider();
    let id = provider.submit(&req).unwrap();
    assert_eq!(wait_until_ended(&provider, &id).state, JobState::Completed);
    let stdout = std::fs::read_to_string(req.dir.join("stdout")).unwrap();
    assert_eq!(
        stdout,
        format!("secret=abc def init=yes\n{}\n", req.dir.display())
    );
}

#[test]
fn a_running_job_is_running_and_cancel_kills_its_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("manager.pid");
    // The "manager" records its pid and starts a "worker" of its own, as a real one does.
    let manager = format!(
        "echo $$ > {}.tmp; sleep 30 & echo $! >> {}.tmp; mv {}.tmp {}; wait",
        pid_file.display(),
        pid_file.display(),
        pid_file.display(),
        pid_file.display()
    );
    let req = block(dir.path(), &["bash", "-c", &manager]);
    let provider = provider();
    let id = provider.submit(&req).unwrap();
    let pids: Vec<i32> = wait_for_file(&pid_file)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    let script_pid: i32 = id.0.parse().unwrap();

    let status = status_of(&provider, &id);
    assert_eq!(status.state, JobState::Running, "{status:?}");
    assert!(alive(script_pid) && pids.iter().all(|p| alive(*p)));

    let started = Instant::now();
    provider.cancel(std::slice::from_ref(&id)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    for pid in pids.iter().chain([&script_pid]) {
        assert!(
            !alive(*pid),
            "process {pid} of the cancelled block survived"
        );
    }
    // The leader is reaped: not even a zombie of ours is left.
    assert!(!Path::new(&format!("/proc/{script_pid}")).exists());
    let status = status_of(&provider, &id);
    assert_eq!(status.state, JobState::Cancelled, "{status:?}");
    assert!(status.message.unwrap().starts_with("cancelled"));
    // Cancelling again, or something never started, is not an error.
    provider
        .cancel(&[id.clone(), JobId::from("999999999")])
        .unwrap();
}

#[test]
fn a_block_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let manager = format!(
        "trap '' TERM; echo ok > {}; while true; do sleep 0.05; done",
        ready.display()
    );
    let req = block(dir.path(), &["bash", "-c", &manager]);
    let provider = provider();
    let id = provider.submit(&req).unwrap();
    wait_for_file(&ready);
    let started = Instant::now();
    provider.cancel(std::slice::from_ref(&id)).unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(status_of(&provider, &id).state, JobState::Cancelled);
}

#[test]
fn a_command_exiting_3_is_failed_with_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let req = block(dir.path(), &["bash", "-c", "echo bad >&2; exit 3"]);
    let provider = provider();
    let id = provider.submit(&req).unwrap();
    let status = wait_until_ended(&provider, &id);
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.exit_code, Some(3));
    assert!(status.message.unwrap().contains("exit code 3"));
    assert_eq!(
        std::fs::read_to_string(req.dir.join("stderr")).unwrap(),
        "bad\n"
    );
    // The final state stays.
    assert_eq!(status_of(&provider, &id).state, JobState::Failed);
}

#[test]
fn a_finished_block_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("straggler.pid");
    let manager = format!(
        "sleep 30 & echo $! > {}.tmp; mv {}.tmp {}",
        pid_file.display(),
        pid_file.display(),
        pid_file.display()
    );
    let req = block(dir.path(), &["bash", "-c", &manager]);
    let provider = provider();
    let id = provider.submit(&req).unwrap();
    let straggler: i32 = wait_for_file(&pid_file).trim().parse().unwrap();
    assert_eq!(wait_until_ended(&provider, &id).state, JobState::Completed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(straggler) {
        assert!(
            Instant::now() < deadline,
            "left-over process {straggler} survived"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_block_past_its_walltime_is_stopped_as_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = block(dir.path(), &["sleep", "30"]);
    req.walltime = Some(Duration::from_secs(1));
    let provider = provider();
    let id = provider.submit(&req).unwrap();
    assert_eq!(status_of(&provider, &id).state, JobState::Running);
    thread::sleep(Duration::from_millis(1100));
    let status = status_of(&provider, &id);
    assert_eq!(status.state, JobState::Timeout, "{status:?}");
    assert_eq!(status.message.as_deref(), Some("walltime 00:00:01 reached"));
    assert!(!alive(id.0.parse().unwrap()));
}

#[test]
fn an_unknown_id_is_unknown_and_every_id_asked_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let provider = provider();
    let id = provider.submit(&block(dir.path(), &["true"])).unwrap();
    let unknown = JobId::from("123456789");
    let answer = provider.status(&[id.clone(), unknown.clone()]).unwrap();
    assert_eq!(answer.len(), 2);
    assert_eq!(answer[&unknown].state, JobState::Unknown);
    assert!(answer.contains_key(&id));
}

#[test]
fn dropping_the_provider_cancels_its_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let provider = provider();
    let id = provider
        .submit(&block(dir.path(), &["sleep", "30"]))
        .unwrap();
    let pid: i32 = id.0.parse().unwrap();
    assert!(alive(pid));
    drop(provider);
    assert!(!alive(pid));
}

#[test]
fn a_block_of_several_nodes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = block(dir.path(), &["true"]);
    req.nodes = 2;
    let err = provider().submit(&req).unwrap_err().to_string();
    assert!(err.contains("nodes_per_block must be 1, not 2"), "{err}");
}

#[test]
fn an_override_template_is_used_and_its_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.sh.hbs");
    std::fs::write(
        &path,
        "#!/bin/bash\necho custom {{block_id}}\n{{launch_command}}\n",
    )
    .unwrap();
    let template = ScriptTemplate::from_file(&path).unwrap();
    let provider = LocalProvider::new(template, Default::default());
    let id = provider
        .submit(&block(dir.path(), &["echo", "manager"]))
        .unwrap();
    assert_eq!(wait_until_ended(&provider, &id).state, JobState::Completed);
    let stdout = std::fs::read_to_string(dir.path().join("block-1/stdout")).unwrap();
    assert_eq!(stdout, "custom block-1\nmanager\n");

    std::fs::write(&path, "#!/bin/bash\n{{partition}}\n").unwrap();
    let provider = LocalProvider::new(
        ScriptTemplate::from_file(&path).unwrap(),
        Default::default(),
    );
    let err = provider
        .submit(&block(dir.path(), &["true"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("job script template {}: line 2", path.display())),
        "{err}"
    );
}
