//! The PBS Pro and Torque providers through Slurm's PBS-compatible `qsub`, `qstat` and
//! `qdel` (no real PBS server can run here). They refuse `qstat -x` and `-F json`, so the
//! PBS Pro provider falls back to `qstat -f` text; and they show every ended job as `C`
//! without an exit status, so a job that failed reads as completed (`tests/fixtures/pbs/`
//! has real PBS Pro outputs with exit statuses).

use scifaas_providers::{
    BatchOptions, JobState, Launcher, PbsFlavor, PbsProvider, Provider, SCRIPT_FILE,
};

use super::{block, has_nodes, options, read_output, slurm_is_up, wait_for, wait_until_ended};

fn provider(flavor: PbsFlavor, launcher: Launcher, options: BatchOptions) -> PbsProvider {
    PbsProvider::with_builtin_template(flavor, launcher, options)
}

fn submit_run_and_cancel(flavor: PbsFlavor) {
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(flavor, Launcher::SingleNode, options());
    let req = block(dir.path(), 1, &["sleep", "60"]);
    let id = provider.submit(&req).unwrap();
    assert!(id.0.bytes().all(|b| b.is_ascii_digit()), "{id}");
    wait_for(
        &provider,
        &id,
        std::time::Duration::from_secs(60),
        "running",
        |s| s.state == JobState::Running,
    );
    provider.cancel(std::slice::from_ref(&id)).unwrap();
    let status = wait_until_ended(&provider, &id);
    assert_eq!(status.state, JobState::Cancelled, "{status:?}");
    provider.cancel(std::slice::from_ref(&id)).unwrap();
}

#[test]
fn pbs_submits_sees_running_and_cancels() {
    if slurm_is_up() {
        submit_run_and_cancel(PbsFlavor::Pro);
    }
}

#[test]
fn torque_submits_sees_running_and_cancels() {
    if slurm_is_up() {
        submit_run_and_cancel(PbsFlavor::Torque);
    }
}

#[test]
fn a_pbs_job_writes_its_output_to_the_block_dir_and_knows_its_pbs_id() {
    if !slurm_is_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(PbsFlavor::Pro, Launcher::SingleNode, options());
    let req = block(
        dir.path(),
        1,
        &["bash", "-c", "echo \"job=$PBS_JOBID init=$FROM_INIT\""],
    );
    let id = provider.submit(&req).unwrap();
    let status = wait_until_ended(&provider, &id);
    assert_eq!(status.state, JobState::Completed, "{status:?}");
    assert_eq!(
        read_output(&req.dir.join("stdout")),
        format!("job={id} init=yes\n")
    );
    let script = std::fs::read_to_string(req.dir.join(SCRIPT_FILE)).unwrap();
    assert!(script.contains("\n#PBS -l select=1\n"), "{script}");
}

#[test]
fn a_failed_job_reads_as_ended_without_an_exit_status() {
    if !slurm_is_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(PbsFlavor::Torque, Launcher::SingleNode, options());
    let id = provider
        .submit(&block(dir.path(), 1, &["bash", "-c", "exit 3"]))
        .unwrap();
    let status = wait_until_ended(&provider, &id);
    // What Slurm's qstat can tell; a real Torque or PBS Pro gives exit_status 3 (Failed).
    assert_eq!(status.state, JobState::Completed, "{status:?}");
    assert_eq!(status.exit_code, None);
    assert_eq!(
        status.message.as_deref(),
        Some("ended (C); qstat gives no exit status")
    );
}

#[test]
fn a_bad_queue_is_an_error_with_the_schedulers_words() {
    if !slurm_is_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = provider(
        PbsFlavor::Pro,
        Launcher::SingleNode,
        BatchOptions {
            queue: Some("no-such-queue".into()),
            ..options()
        },
    );
    let err = provider
        .submit(&block(dir.path(), 1, &["true"]))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("`qsub -o "), "{err}");
    assert!(
        err.contains("invalid partition specified: no-such-queue"),
        "{err}"
    );
}

#[test]
fn a_two_node_pbs_pilot_starts_one_manager_per_node() {
    if !slurm_is_up() {
        return;
    }
    if !has_nodes(2, "a_two_node_pbs_pilot_starts_one_manager_per_node") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // select=2 through Slurm's qsub; srun is the launcher there.
    let provider = provider(
        PbsFlavor::Pro,
        Launcher::from_name("srun", "").unwrap(),
        options(),
    );
    let req = block(dir.path(), 2, &["bash", "-c", "echo $SLURMD_NODENAME"]);
    let id = provider.submit(&req).unwrap();
    assert_eq!(wait_until_ended(&provider, &id).state, JobState::Completed);
    let stdout = read_output(&req.dir.join("stdout"));
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 2, "{stdout}");
}
