//! Recorded outputs of real schedulers, parsed: every state they show maps to the state it
//! means, and exit codes come out right.

use std::collections::HashMap;

use scifaas_providers::{cobalt, pbs, slurm, JobId, JobState, JobStatus, PbsFlavor};

use super::fixture;

fn state_of(jobs: &HashMap<JobId, JobStatus>, id: &str) -> (JobState, Option<i32>) {
    let status = jobs
        .get(&JobId::from(id))
        .unwrap_or_else(|| panic!("job {id} not in {jobs:?}"));
    (status.state, status.exit_code)
}

#[test]
fn squeue_here_shows_cancelled_completed_failed_held_running_and_timeout() {
    let jobs = slurm::parse_squeue(&fixture("slurm/here_squeue-O_6-states.txt"));
    assert_eq!(jobs.len(), 6);
    assert_eq!(state_of(&jobs, "19"), (JobState::Cancelled, None));
    assert_eq!(state_of(&jobs, "17"), (JobState::Completed, Some(0)));
    assert_eq!(state_of(&jobs, "18"), (JobState::Failed, Some(3)));
    assert_eq!(state_of(&jobs, "20"), (JobState::Held, None));
    assert_eq!(state_of(&jobs, "16"), (JobState::Running, None));
    assert_eq!(state_of(&jobs, "21"), (JobState::Running, None));
    assert_eq!(
        jobs[&JobId::from("18")].message.as_deref(),
        Some("FAILED, exit code 3 (NonZeroExitCode)")
    );
    assert_eq!(
        jobs[&JobId::from("20")].message.as_deref(),
        Some("PENDING (JobHeldUser)")
    );
    let jobs = slurm::parse_squeue(&fixture("slurm/here_squeue-O_timeout.txt"));
    assert_eq!(state_of(&jobs, "16"), (JobState::Timeout, None));
    assert_eq!(
        jobs[&JobId::from("16")].message.as_deref(),
        Some("TIMEOUT, signal 15 (TimeLimit)")
    );
}

#[test]
fn sacct_here_gives_final_states_and_exit_codes() {
    let jobs = slurm::parse_sacct(&fixture("slurm/here_sacct-XnP.txt"));
    assert_eq!(jobs.len(), 6);
    assert_eq!(state_of(&jobs, "16"), (JobState::Timeout, Some(0)));
    assert_eq!(state_of(&jobs, "17"), (JobState::Completed, Some(0)));
    assert_eq!(state_of(&jobs, "18"), (JobState::Failed, Some(3)));
    assert_eq!(state_of(&jobs, "19"), (JobState::Cancelled, Some(0)));
    assert_eq!(
        jobs[&JobId::from("19")].message.as_deref(),
        Some("CANCELLED by 0")
    );
    assert_eq!(state_of(&jobs, "20"), (JobState::Pending, None));
    assert_eq!(state_of(&jobs, "21"), (JobState::Running, None));
    // Without accounting, sacct says so on stderr (and exits 1 here).
    assert!(slurm::accounting_disabled(&fixture(
        "slurm/here_sacct_accounting-disabled.stderr"
    )));
    assert_eq!(
        fixture("slurm/here_sacct_accounting-disabled.rc").trim(),
        "1"
    );
    assert!(!slurm::accounting_disabled(&fixture(
        "slurm/here_sacct-XnP.txt"
    )));
}

#[test]
fn sacct_published_outputs_skip_steps_and_headers() {
    let jobs = slurm::parse_sacct(&fixture(
        "slurm/radicalsaga-comment_sacct-JobID-State-parsable2-noheader.txt",
    ));
    assert_eq!(jobs.len(), 2, "the .batch steps are not jobs");
    assert_eq!(state_of(&jobs, "500723").0, JobState::Completed);
    assert_eq!(state_of(&jobs, "500682").0, JobState::Cancelled);

    // JobID|NodeList|State|ExitCode: the state is the 3rd field there, so only the first
    // two columns of our format match; the states still map by their words.
    let text = fixture(
        "slurm/clusterutils_sacct-parsable2_JobID-NodeList-State-ExitCode_steps-cancelled.txt",
    );
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split('|').collect();
        let want = if fields[0].ends_with(".0") {
            JobState::Cancelled
        } else {
            JobState::Completed
        };
        assert_eq!(slurm::job_state(fields[2], None), want, "{line}");
    }

    let jobs = slurm::parse_sacct(&fixture("slurm/vcell_sacct-P_multistep-running_23.11.txt"));
    assert_eq!(jobs.len(), 1, "header and 22 steps skipped: {jobs:?}");
    // JobID|JobName|State: the name is where our state would be; map the State column.
    for (file, want) in [
        (
            "slurm/vcell_sacct-P_multistep-running_23.11.txt",
            vec![JobState::Running],
        ),
        (
            "slurm/vcell_sacct-P_simple-completed_23.11.txt",
            vec![JobState::Completed],
        ),
        (
            "slurm/vcell_sacct-P_cancelled-by-user_SUSPECT-SYNTH.txt",
            vec![JobState::Cancelled],
        ),
        (
            "slurm/vcell_sacct-P_terminal-states_SUSPECT-SYNTH.txt",
            vec![
                JobState::Timeout,
                JobState::Failed,
                JobState::Failed,
                JobState::Failed,
            ],
        ),
    ] {
        let states: Vec<JobState> = fixture(file)
            .lines()
            .skip(1)
            .filter(|l| !l.split('|').next().unwrap().contains('.'))
            .map(|l| slurm::job_state(l.split('|').nth(2).unwrap(), None))
            .collect();
        assert_eq!(states, want, "{file}");
    }
}

#[test]
fn squeue_states_of_other_versions_map_too() {
    // Fixed-width `squeue -O ...,state:13,...` of Slurm 23.11.
    let text = fixture("slurm/vcell_squeue-O_running_23.11.txt");
    for line in text.lines().skip(1) {
        let state = line.split_whitespace().nth(2).unwrap();
        assert_eq!(slurm::job_state(state, None), JobState::Running, "{line}");
    }
    // slurmrestd 25.11 (v0.0.44, the model of `squeue --json`): job_state is a list.
    for (name, want) in [
        ("pending", JobState::Pending),
        ("running", JobState::Running),
        ("completed", JobState::Completed),
        ("failed", JobState::Failed),
        ("timeout", JobState::Timeout),
    ] {
        let doc: serde_json::Value = serde_json::from_str(&fixture(&format!(
            "slurm/slurmrestd-25.11_v0.0.44_slurm-job-{name}.json"
        )))
        .unwrap();
        let job = &doc["jobs"][0];
        let word = job["job_state"][0].as_str().unwrap();
        let reason = job["state_reason"].as_str();
        assert_eq!(slurm::job_state(word, reason), want, "{name}: {word}");
    }
    // Slurm 21.08's `squeue --json`: job_state is a string.
    let doc: serde_json::Value = serde_json::from_str(&fixture(
        "slurm/squeue-json_21.08.5_openapi-v0.0.37_rivos.json",
    ))
    .unwrap();
    let states: Vec<JobState> = doc["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            slurm::job_state(
                job["job_state"].as_str().unwrap(),
                job["state_reason"].as_str(),
            )
        })
        .collect();
    assert_eq!(states, [JobState::Running, JobState::Pending]);
}

#[test]
fn sbatch_outputs_give_the_id_or_nothing() {
    assert_eq!(
        slurm::parse_submit(&fixture("slurm/qtoolkit_sbatch_submitted_stdout.txt")),
        Some(JobId::from("24"))
    );
    assert_eq!(
        slurm::parse_submit(&fixture(
            "slurm/qtoolkit_sbatch_invalid-partition_stderr_rc1.txt"
        )),
        None
    );
}

#[test]
fn pbs_pro_json_with_history_gives_the_exit_status() {
    let jobs = pbs::parse_json(&fixture(
        "pbs/openpbs-19.0.0_qstat-x-f-F-json_finished-F-exit0_buildtest.json",
    ))
    .unwrap();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!((job.id.as_str(), job.state.as_str()), ("40.pbs", "F"));
    assert_eq!(job.exit_status, Some(0));
    assert_eq!(job.used_walltime.map(|d| d.as_secs()), Some(10));
    assert_eq!(job.requested_walltime.map(|d| d.as_secs()), Some(120));
    let status = pbs::job_status(PbsFlavor::Pro, job);
    assert_eq!(
        (status.state, status.exit_code),
        (JobState::Completed, Some(0))
    );

    // Without -x, a finished job is left out: no `Jobs` at all (PBS Pro 2024.1, Polaris).
    let jobs = pbs::parse_json(&fixture(
        "pbs/pbspro-2024.1_qstat-f-F-json_finished-job_rc35_stdout.json",
    ))
    .unwrap();
    assert!(jobs.is_empty());
    assert!(pbs::parse_json("Usage: qstat [-f]").is_err());
}

#[test]
fn pbs_text_is_read_across_wrapped_lines() {
    let jobs = pbs::parse_text(&fixture("pbs/openpbs_qstat-f_running_qtoolkit.txt"));
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!((job.id.as_str(), job.state.as_str()), ("14", "R"));
    assert_eq!(job.requested_walltime.map(|d| d.as_secs()), Some(3600));
    assert_eq!(job.used_walltime.map(|d| d.as_secs()), Some(0));
    assert_eq!(
        job.comment.as_deref(),
        Some("Job run at Sun Dec 29 at 20:13 on (f41a0fbae027:ncpus=1)")
    );
    assert_eq!(
        pbs::job_status(PbsFlavor::Pro, job).state,
        JobState::Running
    );
}

#[test]
fn slurms_qstat_wrapper_shows_states_without_exit_status() {
    let jobs = pbs::parse_text(&fixture("pbs/here_wrapper_qstat-f_6-jobs.stdout"));
    let states: Vec<(String, JobState, Option<i32>)> = jobs
        .iter()
        .map(|job| {
            let status = pbs::job_status(PbsFlavor::Torque, job);
            (job.id.clone(), status.state, status.exit_code)
        })
        .collect();
    assert_eq!(
        states,
        [
            ("16".into(), JobState::Running, None),
            // 17 exited 0, 18 exited 3, 19 was cancelled: all are C, with no exit status.
            ("17".into(), JobState::Completed, None),
            ("18".into(), JobState::Completed, None),
            ("19".into(), JobState::Completed, None),
            // Held, but the wrapper shows Q.
            ("20".into(), JobState::Pending, None),
            ("21".into(), JobState::Running, None),
        ]
    );
    let ended = pbs::job_status(PbsFlavor::Torque, &jobs[1]);
    assert_eq!(
        ended.message.as_deref(),
        Some("ended (C); qstat gives no exit status")
    );
    assert!(pbs::parse_text(&fixture("pbs/here_wrapper_qstat-f_unknown.stdout")).is_empty());
    assert_eq!(fixture("pbs/here_wrapper_qstat-f_unknown.rc").trim(), "153");
}

#[test]
fn torque_completed_job_with_its_exit_status() {
    // `qstat -f1 ID | grep ...` lost the `Job Id:` line: put one back.
    let text = format!(
        "Job Id: 112059.svc.uc.futuregrid\n{}",
        fixture("torque/radicalsaga-comment_qstat-f-grep_completed.txt")
    );
    let jobs = pbs::parse_text(&text);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].exit_status, Some(0));
    let status = pbs::job_status(PbsFlavor::Torque, &jobs[0]);
    assert_eq!(
        (status.state, status.exit_code),
        (JobState::Completed, Some(0))
    );
}

#[test]
fn pbs_and_torque_table_states_map() {
    // The S column of default `qstat` tables (PBS Pro, OpenPBS, Torque): every letter seen.
    for (file, column) in [
        ("pbs/openpbs-main_qstat_default-table_2-running.txt", 4),
        ("pbs/pbspro-2024.1_session_qstat-x_and_unknown-job.txt", 4),
        ("torque/torque-4.1.6_qstat_default-table.txt", 4),
        ("torque/torque-2.5.1_qstat-a_Q-and-R.txt", 9),
        ("torque/radicalsaga-comment_qstat-grep_table-rows.txt", 4),
    ] {
        let text = fixture(file);
        let letters: Vec<&str> = text
            .lines()
            .filter(|l| l.split_whitespace().next().is_some_and(|w| w.contains('.')))
            .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .filter_map(|l| l.split_whitespace().nth(column))
            .collect();
        assert!(!letters.is_empty(), "{file}");
        for letter in letters {
            let job = pbs::PbsJob {
                state: letter.to_owned(),
                exit_status: Some(0),
                ..pbs::PbsJob::default()
            };
            let state = pbs::job_status(PbsFlavor::Pro, &job).state;
            assert_ne!(state, JobState::Unknown, "{file}: {letter}");
        }
    }
}

#[test]
fn cobalt_table_and_cobaltlog() {
    let jobs = cobalt::parse_qstat(&fixture("cobalt/cobalt_qstat_default-table_states.txt"));
    assert_eq!(jobs.len(), 8);
    assert_eq!(state_of(&jobs, "32").0, JobState::Pending, "starting");
    assert_eq!(state_of(&jobs, "33").0, JobState::Running);
    assert_eq!(state_of(&jobs, "35").0, JobState::Pending);
    assert_eq!(state_of(&jobs, "40").0, JobState::Held, "user_hold");
    assert_eq!(
        jobs[&JobId::from("40")].message.as_deref(),
        Some("user_hold")
    );
    // `qstat --full --long`: State is given by name there too.
    let long = fixture("cobalt/cobalt_qstat--full--long_grep-excerpt_running.txt");
    let state = long
        .lines()
        .find_map(|l| l.trim().strip_prefix("State"))
        .map(|rest| rest.trim_start_matches([' ', ':']).trim())
        .unwrap();
    assert_eq!(cobalt::job_state(state), JobState::Running);
    assert_eq!(
        cobalt::parse_cobaltlog(&fixture("cobalt/cobaltlog_task-completed-line_exit0.txt")),
        Some(0)
    );
    assert_eq!(
        cobalt::parse_cobaltlog(&fixture("cobalt/cobaltlog_task-completed-line_exit126.txt")),
        Some(126)
    );
}
