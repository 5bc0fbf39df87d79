//! The Slurm provider: `sbatch --parsable` to submit, one `squeue` for the status of every
//! block (plus one `sacct` for the jobs squeue no longer shows, where accounting is on),
//! `scancel` to cancel.
//!
//! What Slurm really does here (Debian's 22.05, recorded in `tests/fixtures/slurm/`):
//! `squeue -t all` keeps a finished job for `MinJobAge` (300 s by default) and then forgets
//! it; `squeue -j ID` with a single unknown id fails ("Invalid job id specified") while a
//! list of unknown ids prints nothing; the `exit_code` field of `squeue -O` is the raw wait
//! status (768 for exit code 3); `sacct` without accounting prints "Slurm accounting storage
//! is disabled" on stderr (and exits 1 here, 0 on other installations), so it is asked once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::batch::{self, BatchOptions, Cancelled, Commands};
use crate::error::ProviderError;
use crate::launcher::Launcher;
use crate::template::ScriptTemplate;
use crate::{BlockRequest, JobId, JobState, JobStatus, Provider};

/// The `squeue -O` format: id, long state, raw exit status, reason; `|` after each.
pub const SQUEUE_FORMAT: &str = "JobID:|,State:|,exit_code:|,Reason:|";
/// The `sacct -o` fields, read with `-P` (`|`-separated) and `-X` (no job steps).
pub const SACCT_FIELDS: &str = "JobID,State,ExitCode";

/// Environment variables kept when calling `sbatch`; every other `SLURM_*` is removed, so
/// that an agent started inside a Slurm job (an `salloc` shell, say) does not hand its own
/// job's layout (`SLURM_NTASKS`, `SLURM_CPUS_PER_TASK`, ...) to its pilots.
const KEPT_SLURM_VARS: [&str; 2] = ["SLURM_CONF", "SLURM_CLUSTERS"];

/// Submits blocks as Slurm batch jobs.
pub struct SlurmProvider {
    template: ScriptTemplate,
    launcher: Launcher,
    options: BatchOptions,
    commands: Commands,
    cancelled: Cancelled,
    /// Cleared when `sacct` says accounting is disabled, so that it is not asked again.
    accounting: AtomicBool,
}

impl SlurmProvider {
    /// A provider rendering scripts with `template`, starting managers with `launcher`,
    /// asking Slurm for what `options` say.
    pub fn new(template: ScriptTemplate, launcher: Launcher, options: BatchOptions) -> Self {
        let commands = Commands::new(options.cmd_timeout);
        Self {
            template,
            launcher,
            options,
            commands,
            cancelled: Cancelled::default(),
            accounting: AtomicBool::new(true),
        }
    }

    /// The provider with the built-in `slurm.sh.hbs` template.
    pub fn with_builtin_template(launcher: Launcher, options: BatchOptions) -> Self {
        let template = ScriptTemplate::builtin("slurm").expect("the slurm template is built in");
        Self::new(template, launcher, options)
    }

    /// Runs `sbatch`, `squeue`, `sacct` and `scancel` from `dir` instead of from `PATH`.
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.commands.bin_dir = Some(dir.into());
        self
    }

    /// The job script `submit` would write for `block`.
    pub fn render_script(&self, block: &BlockRequest) -> Result<String, ProviderError> {
        batch::render_script(&self.template, &self.launcher, &self.options, block, |_| {})
    }

    /// One `squeue` for all `ids`: the jobs it reports.
    fn squeue(&self, ids: &[JobId]) -> Result<HashMap<JobId, JobStatus>, ProviderError> {
        let mut cmd = self.commands.command("squeue");
        cmd.args(["-h", "-t", "all", "-j", &batch::comma_list(ids), "-O"])
            .arg(SQUEUE_FORMAT);
        let output = self.commands.run(cmd)?;
        if output.status.success() {
            if !output.stderr.trim().is_empty() {
                // An older squeue without the exit_code field says so and prints the rest.
                tracing::debug!(stderr = %output.stderr.trim(), "squeue warned");
            }
            return Ok(parse_squeue(&output.stdout));
        }
        if output.stderr.contains("Invalid job id specified") {
            // squeue refuses a lone id it does not know; a list of them prints nothing.
            return Ok(HashMap::new());
        }
        Err(batch::failed(output))
    }

    /// One `sacct` for `ids`: `None` when accounting is disabled.
    fn sacct(&self, ids: &[JobId]) -> Result<Option<HashMap<JobId, JobStatus>>, ProviderError> {
        let mut cmd = self.commands.command("sacct");
        cmd.args([
            "-X",
            "-n",
            "-P",
            "-o",
            SACCT_FIELDS,
            "-j",
            &batch::comma_list(ids),
        ]);
        let output = self.commands.run(cmd)?;
        // Said on stderr, with exit code 1 here (22.05.8) and 0 elsewhere: read it first.
        if accounting_disabled(&output.stdout) || accounting_disabled(&output.stderr) {
            return Ok(None);
        }
        if !output.status.success() {
            return Err(batch::failed(output));
        }
        Ok(Some(parse_sacct(&output.stdout)))
    }
}

impl Provider for SlurmProvider {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn submit(&self, block: &BlockRequest) -> Result<JobId, ProviderError> {
        let block = batch::with_absolute_dir(block);
        let script = batch::write_script(
            &self.template,
            &self.launcher,
            &self.options,
            &block,
            |_| {},
        )?;
        let mut cmd = self.commands.command("sbatch");
        cmd.arg("--parsable").arg(&script).current_dir(&block.dir);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("SLURM_") && !KEPT_SLURM_VARS.contains(&name.as_ref()) {
                cmd.env_remove(name.as_ref());
            }
        }
        let output = self.commands.run_checked(cmd)?;
        let id = parse_submit(&output.stdout)
            .ok_or_else(|| batch::unexpected(&output, "a job id from sbatch --parsable"))?;
        tracing::info!(block = %block.block_id, job = %id, "submitted Slurm job");
        Ok(id)
    }

    fn status(&self, ids: &[JobId]) -> Result<HashMap<JobId, JobStatus>, ProviderError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut found = self.squeue(ids)?;
        let mut missing =
            "not in squeue's output (it forgets a job MinJobAge after it ended)".to_owned();
        // sacct knows the jobs squeue forgot, and exit codes an old squeue cannot print.
        let ask: Vec<JobId> = ids
            .iter()
            .filter(|id| match found.get(*id) {
                None => true,
                Some(status) => status.state.is_terminal() && status.exit_code.is_none(),
            })
            .cloned()
            .collect();
        if !ask.is_empty() && self.accounting.load(Ordering::Relaxed) {
            match self.sacct(&ask) {
                Ok(Some(accounted)) => {
                    for (id, status) in accounted {
                        match found.get_mut(&id) {
                            Some(known) => known.exit_code = known.exit_code.or(status.exit_code),
                            None => {
                                found.insert(id, status);
                            }
                        }
                    }
                }
                Ok(None) => {
                    tracing::info!("Slurm accounting is disabled; squeue alone gives job states");
                    self.accounting.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!("sacct failed; squeue alone gives job states: {e}");
                    missing = format!("{missing}; sacct failed: {e}");
                }
            }
        }
        if !self.accounting.load(Ordering::Relaxed) {
            missing.push_str(", and Slurm accounting is disabled");
        }
        Ok(batch::answer_all(ids, found, &self.cancelled, &missing))
    }

    fn cancel(&self, ids: &[JobId]) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.cancelled.mark(ids);
        let mut cmd = self.commands.command("scancel");
        cmd.args(ids.iter().map(|id| id.0.as_str()));
        let output = self.commands.run(cmd)?;
        if output.status.success() || batch::only_gone_jobs(&output) {
            Ok(())
        } else {
            Err(batch::failed(output))
        }
    }
}

/// The job id `sbatch --parsable` printed (`123`, or `123;cluster` on a multi-cluster
/// site); also reads the `Submitted batch job 123` of a plain `sbatch`.
pub fn parse_submit(stdout: &str) -> Option<JobId> {
    let line = stdout.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let id = line
        .strip_prefix("Submitted batch job ")
        .unwrap_or(line)
        .split(';')
        .next()?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| JobId(id.to_owned()))
}

/// Reads `squeue -h -O` [`SQUEUE_FORMAT`] output: `ID|STATE|EXIT|REASON|` per line.
pub fn parse_squeue(text: &str) -> HashMap<JobId, JobStatus> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            let (id, state) = (*fields.first()?, *fields.get(1)?);
            if id.is_empty() || state.is_empty() {
                return None;
            }
            let exit = fields.get(2).and_then(|raw| raw.parse::<i32>().ok());
            let reason = fields.get(3).copied().filter(|r| !r.is_empty());
            let (code, signal) = match exit {
                Some(raw) => (Some((raw >> 8) & 0xff), Some(raw & 0x7f)),
                None => (None, None),
            };
            Some((JobId(id.to_owned()), status(state, code, signal, reason)))
        })
        .collect()
}

/// Reads `sacct -X -n -P -o` [`SACCT_FIELDS`] output: `ID|STATE|CODE:SIGNAL` per line. Job
/// steps (`123.batch`) and a header line, if any, are skipped.
pub fn parse_sacct(text: &str) -> HashMap<JobId, JobStatus> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('|').map(str::trim);
            let (id, state) = (fields.next()?, fields.next()?);
            if id.is_empty() || id.contains('.') || id == "JobID" || state.is_empty() {
                return None;
            }
            let (code, signal) = match fields.next().and_then(|e| e.split_once(':')) {
                Some((code, signal)) => (code.parse().ok(), signal.parse().ok()),
                None => (None, None),
            };
            Some((JobId(id.to_owned()), status(state, code, signal, None)))
        })
        .collect()
}

/// Whether a `sacct` output says there is no accounting to ask.
pub fn accounting_disabled(text: &str) -> bool {
    text.contains("accounting storage is disabled")
}

/// A job's status from its Slurm state word, exit code and signal, and squeue's reason.
fn status(word: &str, code: Option<i32>, signal: Option<i32>, reason: Option<&str>) -> JobStatus {
    let state = job_state(word, reason);
    let mut message = word.to_owned();
    if state.is_terminal() {
        match (code, signal) {
            (_, Some(signal)) if signal != 0 => message.push_str(&format!(", signal {signal}")),
            (Some(code), _) if code != 0 => message.push_str(&format!(", exit code {code}")),
            _ => {}
        }
    }
    if let Some(reason) = reason.filter(|r| *r != "None") {
        message.push_str(&format!(" ({reason})"));
    }
    JobStatus {
        state,
        // A job killed by a signal has no exit code of its own; a live one has none yet.
        exit_code: code.filter(|_| state.is_terminal() && signal.unwrap_or(0) == 0),
        message: (state != JobState::Completed || message != "COMPLETED").then_some(message),
    }
}

/// The state of a Slurm job state word, long (`squeue %T`, `sacct`) or short (`%t`).
/// `reason` tells a held pending job from a queued one. A sacct word may carry more
/// (`CANCELLED by 1000`) or be cut short (`CANCELLED+`).
///
/// Every state of Slurm's `squeue(1)` "JOB STATE CODES" is here; a word Slurm adds later
/// is `Unknown`, never taken as finished.
pub fn job_state(word: &str, reason: Option<&str>) -> JobState {
    let word = word.split_whitespace().next().unwrap_or("");
    let word = word.trim_end_matches('+');
    match word {
        "PENDING" | "PD" => match reason {
            Some("JobHeldUser" | "JobHeldAdmin") => JobState::Held,
            _ => JobState::Pending,
        },
        // Nodes are being booted or powered up for it, or it waits to be queued again.
        "CONFIGURING" | "CF" | "POWER_UP_NODE" | "PU" | "REQUEUED" | "RQ" | "REQUEUE_FED"
        | "RF" => JobState::Pending,
        // Still holding its nodes; COMPLETING and STAGE_OUT are ending, outcome unknown.
        "RUNNING" | "R" | "COMPLETING" | "CG" | "SIGNALING" | "SI" | "STAGE_OUT" | "SO"
        | "RESIZING" | "RS" => JobState::Running,
        // Will not go on until someone releases or resumes it.
        "SUSPENDED" | "S" | "STOPPED" | "ST" | "REQUEUE_HOLD" | "RH" | "RESV_DEL_HOLD" | "RD" => {
            JobState::Held
        }
        "COMPLETED" | "CD" => JobState::Completed,
        "FAILED" | "F" | "NODE_FAIL" | "NF" | "BOOT_FAIL" | "BF" | "OUT_OF_MEMORY" | "OOM"
        | "LAUNCH_FAILED" | "LF" | "SPECIAL_EXIT" | "SE" | "RECONFIG_FAIL" => JobState::Failed,
        // Ended by someone else's decision: a user, an admin, preemption, a federation
        // sibling that started first.
        "CANCELLED" | "CA" | "PREEMPTED" | "PR" | "REVOKED" | "RV" => JobState::Cancelled,
        // DEADLINE: ended at its --deadline, which for a pilot is its walltime by another name.
        "TIMEOUT" | "TO" | "DEADLINE" | "DL" => JobState::Timeout,
        _ => JobState::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_output_gives_the_id() {
        assert_eq!(parse_submit("42\n"), Some(JobId::from("42")));
        assert_eq!(parse_submit("42;perlmutter\n"), Some(JobId::from("42")));
        assert_eq!(
            parse_submit("Submitted batch job 24\n"),
            Some(JobId::from("24"))
        );
        assert_eq!(parse_submit(""), None);
        assert_eq!(parse_submit("sbatch: error\n"), None);
    }

    #[test]
    fn states_map_explicitly() {
        use JobState::*;
        let cases = [
            ("PENDING", None, Pending),
            ("PENDING", Some("Resources"), Pending),
            ("PENDING", Some("JobHeldUser"), Held),
            ("PD", Some("JobHeldAdmin"), Held),
            ("CONFIGURING", None, Pending),
            ("RUNNING", None, Running),
            ("COMPLETING", None, Running),
            ("SUSPENDED", None, Held),
            ("COMPLETED", None, Completed),
            ("FAILED", None, Failed),
            ("NODE_FAIL", None, Failed),
            ("OUT_OF_MEMORY", None, Failed),
            ("BOOT_FAIL", None, Failed),
            ("CANCELLED", None, Cancelled),
            ("CANCELLED by 1000", None, Cancelled),
            ("CANCELLED+", None, Cancelled),
            ("PREEMPTED", None, Cancelled),
            ("TIMEOUT", None, Timeout),
            ("DEADLINE", None, Timeout),
            ("WEIRD_NEW_STATE", None, Unknown),
            ("", None, Unknown),
        ];
        for (word, reason, want) in cases {
            assert_eq!(job_state(word, reason), want, "{word} {reason:?}");
        }
    }

    #[test]
    fn raw_exit_status_is_split_into_code_and_signal() {
        let jobs = parse_squeue("2|FAILED|768|NonZeroExitCode|\n3|CANCELLED|15|None|\n");
        let failed = &jobs[&JobId::from("2")];
        assert_eq!(failed.state, JobState::Failed);
        assert_eq!(failed.exit_code, Some(3));
        assert_eq!(
            failed.message.as_deref(),
            Some("FAILED, exit code 3 (NonZeroExitCode)")
        );
        let cancelled = &jobs[&JobId::from("3")];
        assert_eq!(cancelled.exit_code, None);
        assert_eq!(cancelled.message.as_deref(), Some("CANCELLED, signal 15"));
    }
}
