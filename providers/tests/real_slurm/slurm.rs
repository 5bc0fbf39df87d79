//! The Slurm provider against the real Slurm: sbatch, squeue (and sacct), scancel.

use std::time::Duration;

use scifaas_providers::{
    BatchOptions, JobId, JobState, Launcher, Provider, ProviderError, SlurmProvider, SCRIPT_FILE,
};

use super::{
    block, has_nodes, options, read_output, slurm_is_up, status_of, wait_for, wait_until_ended,
};

fn provider(options: BatchOptions) -> SlurmProvider {
    SlurmProvider::with_builtin_template(Launcher::from_name("srun", "").unwrap(), options)
}

#[test]
fn a_pilot_is_pending_or_running_then_cancelled() {
    if !slurm_is_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(options());
    let req = block(dir.path(), 1, &["sleep", "60"]);
    let id = provider.submit(&req).unwrap();
    let first = status_of(&provider, &id);
    assert!(
        matches!(first.state, JobState::Pending | JobState::Running),
        "{first:?}"
    );
    wait_for(&provider, &id, Duration::from_secs(60), "running", |s| {
        s.state == JobState::Running
    });
    // The script an admin can read, next to the job's output.
    let script = std::fs::read_to_string(req.dir.join(SCRIPT_FILE)).unwrap();
    assert!(script.contains("\n#SBATCH --nodes=1\n"), "{script}");
    assert!(script.contains("\nsrun --ntasks=1 --ntasks-per-node=1 sleep 60\n"));

    provider.cancel(std::slice::from_ref(&id)).unwrap();
    let status = wait_until_ended(&provider, &id);
    assert_eq!(status.state, JobState::Cancelled, "{status:?}");
    // Cancelling again is not an error.
    provider.cancel(std::slice::from_ref(&id)).unwrap();
}

#[test]
fn a_pilot_exiting_3_is_failed_with_exit_code_3() {
    if !slurm_is_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = SlurmProvider::with_builtin_template(Launcher::SingleNode, options());
    let id = provider
        .submit(&block(dir.path(), 1, &["bash", "-c", "exit 3"]))
        .unwrap();
    let status = wait_until_ended(&provider, &id);
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    assert_eq!(status.exit_code, Some(3));
}

#[test]
fn a_pilot_that_succeeds_is_completed_and_sees_its_environment() {
    if !slurm_is_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(options());
    let req = block(
        dir.path(),
        1,
        &[
            "bash",
            "-c",
            "echo \"secret=$SCIFAAS_ENDPOINT_SECRET init=$FROM_INIT job=$SLURM_JOB_ID\"",
        ],
    );
    let id = provider.submit(&req).unwrap();
    let status = wait_until_ended(&provider, &id);
    assert_eq!(status.state, JobState::Completed, "{status:?}");
    assert_eq!(status.exit_code, Some(0));
    let stdout = read_output(&req.dir.join("stdout"));
    assert_eq!(stdout, format!("secret=s3cr3t value init=yes job={id}\n"));
}

#[test]
fn a_bad_partition_is_an_error_with_sbatchs_stderr() {
    if !slurm_is_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(BatchOptions {
        queue: Some("no-such-partition".into()),
        ..options()
    });
    let err = provider
        .submit(&block(dir.path(), 1, &["true"]))
        .unwrap_err();
    match &err {
        ProviderError::CommandFailed {
            command,
            exit_code,
            stderr,
        } => {
            assert!(command.starts_with("sbatch --parsable "), "{command}");
            assert_eq!(*exit_code, Some(1));
            assert!(
                stderr.contains("invalid partition specified: no-such-partition"),
                "{stderr}"
            );
        }
        other => panic!("expected sbatch's failure, got {other}"),
    }
}

#[test]
fn a_held_pilot_is_held_until_cancelled() {
    if !slurm_is_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(BatchOptions {
        scheduler_options: "#SBATCH --hold".into(),
        ..options()
    });
    let id = provider.submit(&block(dir.path(), 1, &["true"])).unwrap();
    let status = wait_for(&provider, &id, Duration::from_secs(20), "held", |s| {
        s.state == JobState::Held
    });
    assert_eq!(status.message.as_deref(), Some("PENDING (JobHeldUser)"));
    provider.cancel(std::slice::from_ref(&id)).unwrap();
    assert_eq!(wait_until_ended(&provider, &id).state, JobState::Cancelled);
}

#[test]
fn the_status_of_many_pilots_is_one_answer_with_unknown_ids_unknown() {
    if !slurm_is_up() {
        return;
    }
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let provider = provider(options());
    let first = provider
        .submit(&block(a.path(), 1, &["sleep", "60"]))
        .unwrap();
    let second = provider
        .submit(&block(b.path(), 1, &["sleep", "60"]))
        .unwrap();
    let never = JobId::from("99999999");
    let asked = [first.clone(), second.clone(), never.clone()];
    let answer = provider.status(&asked).unwrap();
    assert_eq!(answer.len(), 3);
    for id in [&first, &second] {
        assert!(
            matches!(answer[id].state, JobState::Pending | JobState::Running),
            "{:?}",
            answer[id]
        );
    }
    assert_eq!(answer[&never].state, JobState::Unknown, "never completed");
    // Alone, an unknown id makes squeue fail; it is still just unknown.
    assert_eq!(status_of(&provider, &never).state, JobState::Unknown);
    provider.cancel(&[first.clone(), second.clone()]).unwrap();
    for id in [&first, &second] {
        assert_eq!(wait_until_ended(&provider, id).state, JobState::Cancelled);
    }
}

#[test]
fn a_two_node_pilot_starts_one_manager_on_each_node() {
    if !slurm_is_up() {
        return;
    }
    if !has_nodes(2, "a_two_node_pilot_starts_one_manager_on_each_node") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(options());
    let req = block(
        dir.path(),
        2,
        &[
            "bash",
            "-c",
            "echo \"$SLURMD_NODENAME $SCIFAAS_ENDPOINT_SECRET\"",
        ],
    );
    let id = provider.submit(&req).unwrap();
    let status = wait_until_ended(&provider, &id);
    assert_eq!(status.state, JobState::Completed, "{status:?}");
    let stdout = read_output(&req.dir.join("stdout"));
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 2, "one manager per node: {stdout}");
    assert!(
        lines.iter().all(|l| l.ends_with(" s3cr3t value")),
        "{stdout}"
    );
}

/// Slow (Slurm's shortest walltime is one minute), and run in CI all the same.
#[test]
fn a_pilot_past_its_walltime_is_timeout() {
    if !slurm_is_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(options());
    let mut req = block(dir.path(), 1, &["sleep", "600"]);
    req.walltime = Some(Duration::from_secs(60));
    let id = provider.submit(&req).unwrap();
    let status = wait_for(&provider, &id, Duration::from_secs(240), "ended", |s| {
        s.state.is_terminal()
    });
    assert_eq!(status.state, JobState::Timeout, "{status:?}");
}
