//! Reading `qstat -f` (text) and `qstat -f -F json` (PBS Pro / OpenPBS) output, and what a
//! PBS job state and exit status mean.

use std::time::Duration;

use serde_json::Value;

use super::PbsFlavor;
use crate::{JobState, JobStatus};

/// What `qstat -f` tells of one job, from either format.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PbsJob {
    /// The id as qstat prints it (`1234.pbs01`, or `5` from Slurm's wrapper).
    pub id: String,
    /// `job_state`: one letter.
    pub state: String,
    /// `Exit_status` (PBS Pro) or `exit_status` (Torque), once the job ended.
    pub exit_status: Option<i64>,
    /// `comment`: PBS Pro explains walltime kills and holds there.
    pub comment: Option<String>,
    /// `resources_used.walltime`.
    pub used_walltime: Option<Duration>,
    /// `Resource_List.walltime`.
    pub requested_walltime: Option<Duration>,
}

/// Reads `qstat -f -F json` output: the jobs of its `Jobs` object (none when it has no such
/// key, as when every job asked had finished and `-x` was not given). Errs when the text is
/// not such a JSON document.
pub fn parse_json(text: &str) -> Result<Vec<PbsJob>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(doc) = doc else {
        return Err("not a JSON object".to_owned());
    };
    let Some(jobs) = doc.get("Jobs") else {
        return Ok(Vec::new());
    };
    let Value::Object(jobs) = jobs else {
        return Err("`Jobs` is not an object".to_owned());
    };
    let text_of = |v: Option<&Value>| -> Option<String> {
        match v? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    Ok(jobs
        .iter()
        .map(|(id, job)| {
            let field = |name: &str| text_of(job.get(name));
            let nested = |group: &str, name: &str| text_of(job.get(group)?.get(name));
            PbsJob {
                id: id.clone(),
                state: field("job_state").unwrap_or_default(),
                exit_status: field("Exit_status")
                    .or_else(|| field("exit_status"))
                    .and_then(|s| s.trim().parse().ok()),
                comment: field("comment"),
                used_walltime: nested("resources_used", "walltime").and_then(|w| hms(&w)),
                requested_walltime: nested("Resource_List", "walltime").and_then(|w| hms(&w)),
            }
        })
        .collect())
}

/// Reads `qstat -f` text: a `Job Id: ID` line per job, then `name = value` lines (indented
/// by a tab or spaces; long values go on over continuation lines, which are skipped).
pub fn parse_text(text: &str) -> Vec<PbsJob> {
    let mut jobs = Vec::new();
    let mut current: Option<PbsJob> = None;
    for line in text.lines() {
        if let Some(id) = line.trim_start().strip_prefix("Job Id:") {
            jobs.extend(current.take());
            current = Some(PbsJob {
                id: id.trim().to_owned(),
                ..PbsJob::default()
            });
            continue;
        }
        let (Some(job), Some((name, value))) = (current.as_mut(), line.split_once(" = ")) else {
            continue;
        };
        let value = value.trim();
        match name.trim() {
            "job_state" => job.state = value.to_owned(),
            "Exit_status" | "exit_status" => job.exit_status = value.parse().ok(),
            "comment" => job.comment = Some(value.to_owned()),
            "resources_used.walltime" => job.used_walltime = hms(value),
            "Resource_List.walltime" => job.requested_walltime = hms(value),
            _ => {}
        }
    }
    jobs.extend(current);
    jobs
}

/// `HH:MM:SS` (or plain seconds) as a duration.
fn hms(text: &str) -> Option<Duration> {
    let mut secs: u64 = 0;
    for part in text.trim().split(':') {
        secs = secs.checked_mul(60)?.checked_add(part.parse().ok()?)?;
    }
    Some(Duration::from_secs(secs))
}

/// PBS Pro's `JOB_EXEC_KILL_WALLTIME`: the job ran past its walltime.
const PBSPRO_KILL_WALLTIME: i64 = -29;
/// Torque's `JOB_EXEC_OVERLIMIT_WT`: the job exceeded its walltime.
const TORQUE_OVERLIMIT_WT: i64 = -11;

/// The status of a job as `qstat -f` described it.
///
/// States (PBS Pro and Torque `qstat(1B)`): `Q` queued, `W` waiting for its start time, `T`
/// moving between queues: pending; `H` held, `S`/`U` suspended: held; `R` running, `B` array
/// begun, `E` exiting (ending, its outcome not known yet): running; `F`/`X` finished (PBS Pro
/// history), `C` completed (Torque, Slurm's wrapper): ended, the outcome from the exit
/// status; `M` moved to another server: unknown here.
pub fn job_status(flavor: PbsFlavor, job: &PbsJob) -> JobStatus {
    let pending = |message: &str| JobStatus {
        state: JobState::Pending,
        exit_code: None,
        message: Some(message.to_owned()),
    };
    let with = |state, message: String| JobStatus {
        state,
        exit_code: None,
        message: Some(message),
    };
    match job.state.as_str() {
        "Q" => JobStatus::new(JobState::Pending),
        "W" => pending("waiting for its start time (W)"),
        "T" => pending("moving to another queue (T)"),
        "H" => with(JobState::Held, held_message(job, "held (H)")),
        "S" | "U" => with(JobState::Held, format!("suspended ({})", job.state)),
        "R" | "B" => JobStatus::new(JobState::Running),
        "E" => with(JobState::Running, "exiting (E)".to_owned()),
        "F" | "X" | "C" => ended(flavor, job),
        "M" => with(
            JobState::Unknown,
            "moved to another PBS server (M)".to_owned(),
        ),
        other => with(
            JobState::Unknown,
            format!("unrecognised PBS job state `{other}`"),
        ),
    }
}

fn held_message(job: &PbsJob, base: &str) -> String {
    match &job.comment {
        Some(comment) => format!("{base}: {comment}"),
        None => base.to_owned(),
    }
}

/// The outcome of a job that ended, from its exit status, its comment and its walltimes.
fn ended(flavor: PbsFlavor, job: &PbsJob) -> JobStatus {
    let at_walltime = matches!(
        (job.used_walltime, job.requested_walltime),
        (Some(used), Some(limit)) if used >= limit
    );
    let walltime_comment = job
        .comment
        .as_deref()
        .is_some_and(|c| c.contains("walltime") && c.contains("exceeded"));
    let outcome = |state, exit_code, message: String| JobStatus {
        state,
        exit_code,
        message: Some(message),
    };
    let Some(status) = job.exit_status else {
        // Slurm's PBS wrapper shows every ended job as C without an exit status: the job
        // ended, and how is not told.
        return outcome(
            JobState::Completed,
            None,
            format!("ended ({}); qstat gives no exit status", job.state),
        );
    };
    let kill_walltime = match flavor {
        PbsFlavor::Pro => PBSPRO_KILL_WALLTIME,
        PbsFlavor::Torque => TORQUE_OVERLIMIT_WT,
    };
    match status {
        0 => JobStatus {
            state: JobState::Completed,
            exit_code: Some(0),
            message: None,
        },
        s if s == kill_walltime || walltime_comment => outcome(
            JobState::Timeout,
            None,
            match &job.comment {
                Some(comment) if walltime_comment => comment.clone(),
                _ => format!("killed at its walltime (Exit_status {s})"),
            },
        ),
        s @ 1..=255 => outcome(
            JobState::Failed,
            i32::try_from(s).ok(),
            format!("exit code {s}"),
        ),
        // PBS Pro and Torque report a job killed by signal N as 256 + N.
        s if s > 256 && at_walltime => outcome(
            JobState::Timeout,
            None,
            format!("killed by signal {} at its walltime", s - 256),
        ),
        s if s > 256 => outcome(
            JobState::Failed,
            None,
            format!("killed by signal {}", s - 256),
        ),
        s => outcome(
            JobState::Failed,
            None,
            format!(
                "PBS could not run the job or killed it (Exit_status {s}){}",
                job.comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended_job(exit_status: Option<i64>) -> PbsJob {
        PbsJob {
            id: "7.pbs".into(),
            state: "F".into(),
            exit_status,
            ..PbsJob::default()
        }
    }

    #[test]
    fn exit_statuses_map_to_outcomes() {
        let pro = |s| job_status(PbsFlavor::Pro, &ended_job(s));
        assert_eq!(pro(Some(0)).state, JobState::Completed);
        assert_eq!(pro(Some(0)).exit_code, Some(0));
        assert_eq!(pro(Some(3)).state, JobState::Failed);
        assert_eq!(pro(Some(3)).exit_code, Some(3));
        assert_eq!(pro(Some(-29)).state, JobState::Timeout);
        assert_eq!(
            pro(Some(-11)).state,
            JobState::Failed,
            "BADRESRT on PBS Pro"
        );
        assert_eq!(pro(Some(271)).state, JobState::Failed);
        assert_eq!(
            pro(Some(271)).message.as_deref(),
            Some("killed by signal 15")
        );
        assert_eq!(pro(None).state, JobState::Completed);
        assert_eq!(pro(None).exit_code, None);
        let torque = |s| job_status(PbsFlavor::Torque, &ended_job(s));
        assert_eq!(torque(Some(-11)).state, JobState::Timeout);
        assert_eq!(torque(Some(-29)).state, JobState::Failed);
    }

    #[test]
    fn a_signal_at_the_walltime_or_a_walltime_comment_is_a_timeout() {
        let mut job = ended_job(Some(265));
        job.used_walltime = Some(Duration::from_secs(120));
        job.requested_walltime = Some(Duration::from_secs(120));
        assert_eq!(job_status(PbsFlavor::Torque, &job).state, JobState::Timeout);
        job.used_walltime = Some(Duration::from_secs(30));
        assert_eq!(job_status(PbsFlavor::Torque, &job).state, JobState::Failed);
        let mut job = ended_job(Some(-1));
        job.comment = Some("job killed: walltime 70 exceeded limit 60".into());
        let status = job_status(PbsFlavor::Pro, &job);
        assert_eq!(status.state, JobState::Timeout);
        assert_eq!(
            status.message.as_deref(),
            Some("job killed: walltime 70 exceeded limit 60")
        );
    }

    #[test]
    fn every_state_letter_maps_explicitly() {
        use JobState::*;
        let cases = [
            ("Q", Pending),
            ("W", Pending),
            ("T", Pending),
            ("H", Held),
            ("S", Held),
            ("U", Held),
            ("R", Running),
            ("B", Running),
            ("E", Running),
            ("M", Unknown),
            ("Z", Unknown),
            ("", Unknown),
        ];
        for (letter, want) in cases {
            let job = PbsJob {
                state: letter.into(),
                ..PbsJob::default()
            };
            assert_eq!(job_status(PbsFlavor::Pro, &job).state, want, "{letter}");
        }
    }

    #[test]
    fn walltimes_parse() {
        assert_eq!(hms("01:02:03"), Some(Duration::from_secs(3723)));
        assert_eq!(hms("120"), Some(Duration::from_secs(120)));
        assert_eq!(hms("71582788:15:00").map(|d| d.as_secs() % 60), Some(0));
        assert_eq!(hms("x"), None);
    }
}
