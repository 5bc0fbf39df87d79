//! What the batch-scheduler providers (slurm, pbs, torque, cobalt) share: the site's
//! options, running the scheduler's commands, rendering the job script, and the
//! bookkeeping of jobs this provider cancelled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use crate::command::{run_with_timeout, CommandOutput};
use crate::error::ProviderError;
use crate::launcher::Launcher;
use crate::script::{write_job_script, ScriptVars};
use crate::template::ScriptTemplate;
use crate::{BlockRequest, JobId, JobState, JobStatus};

/// Default limit on each scheduler command: long enough for a busy slurmctld or PBS server,
/// short enough that a hung one does not stall the agent's scaling for long.
pub const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// What a site asks of its batch scheduler for every block, in the Parsl / Globus Compute
/// vocabulary. Each scheduler uses the options it has (the endpoint config accepts only
/// those for its provider type); all of them are also variables of the job-script
/// template, `null` (or `false`) when unset.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchOptions {
    /// Slurm partition, or PBS/Torque/Cobalt queue (template variables `partition` and
    /// `queue`). Default: the scheduler's default.
    pub queue: Option<String>,
    /// The account (project, allocation) charged. Default: the user's default.
    pub account: Option<String>,
    /// Slurm quality of service. Default: none.
    pub qos: Option<String>,
    /// Slurm node features (`--constraint`, e.g. `cpu` or `gpu&hbm80g`). Default: none.
    pub constraint: Option<String>,
    /// Cores on each node the block asks for (Slurm `--cpus-per-task`, PBS Pro `ncpus`,
    /// Torque `ppn`). Default: the scheduler's default.
    pub cores_per_node: Option<u32>,
    /// Memory per node in GB (Slurm `--mem`, PBS Pro `mem`). Default: the scheduler's.
    pub mem_per_node: Option<u32>,
    /// Whole nodes only, shared with no other job (Slurm `--exclusive`, PBS Pro
    /// `place=scatter:excl`). Default `false` here; the endpoint config's Slurm default is
    /// `true`, as Parsl's.
    pub exclusive: bool,
    /// PBS Pro: more resources of each `select` chunk, e.g. `ngpus=4` or
    /// `system=polaris`, appended as `:ngpus=4`. Default: none.
    pub select_options: Option<String>,
    /// Directive lines (`#SBATCH ...`, `#PBS ...`, `#COBALT ...`) added to the script's
    /// header as they are. Default: none.
    pub scheduler_options: String,
    /// Limit on each scheduler command (default [`DEFAULT_CMD_TIMEOUT`]).
    pub cmd_timeout: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            queue: None,
            account: None,
            qos: None,
            constraint: None,
            cores_per_node: None,
            mem_per_node: None,
            exclusive: false,
            select_options: None,
            scheduler_options: String::new(),
            cmd_timeout: DEFAULT_CMD_TIMEOUT,
        }
    }
}

impl BatchOptions {
    /// The options as job-script template variables (every one present, `null` when
    /// unset), so that one template may name any of them.
    pub fn script_vars(&self) -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("partition".to_owned(), json!(self.queue)),
            ("queue".to_owned(), json!(self.queue)),
            ("account".to_owned(), json!(self.account)),
            ("qos".to_owned(), json!(self.qos)),
            ("constraint".to_owned(), json!(self.constraint)),
            ("cores_per_node".to_owned(), json!(self.cores_per_node)),
            ("mem_per_node".to_owned(), json!(self.mem_per_node)),
            ("exclusive".to_owned(), json!(self.exclusive)),
            ("select_options".to_owned(), json!(self.select_options)),
            (
                "scheduler_options".to_owned(),
                json!(self.scheduler_options.trim_end()),
            ),
        ])
    }

    /// Checks the values that go into directive lines and command lines: each word option
    /// must be one word, and `scheduler_options` only directive lines. The message names
    /// the option (by its Slurm-neutral name: `queue`, not `partition`).
    pub fn check(&self) -> Result<(), String> {
        let words = [
            ("queue", &self.queue),
            ("account", &self.account),
            ("qos", &self.qos),
            ("constraint", &self.constraint),
            ("select_options", &self.select_options),
        ];
        for (name, value) in words {
            if let Some(value) = value {
                check_word(value).map_err(|e| format!("{name}: {e}"))?;
            }
        }
        check_scheduler_options(&self.scheduler_options)
            .map_err(|e| format!("scheduler_options: {e}"))
    }
}

/// A value that goes into one `#SBATCH`/`#PBS` line or one command-line argument: not
/// empty, no whitespace or control characters (a newline would start a new script line).
pub fn check_word(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty (leave it out for the scheduler's default)".to_owned());
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{}` must be one word: it holds {}",
            value.escape_debug(),
            match c {
                '\n' | '\r' => "a line break".to_owned(),
                ' ' => "a space".to_owned(),
                c => format!("the character {:?}", c),
            }
        ));
    }
    Ok(())
}

/// `scheduler_options` must be directive lines (or comments): a command among them would
/// end the scheduler's reading of directives, and every directive after it would be
/// ignored without a word. Commands belong in `worker_init`.
pub fn check_scheduler_options(text: &str) -> Result<(), String> {
    match text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
    {
        None => Ok(()),
        Some(line) => Err(format!(
            "line `{line}` is not a directive: every line must start with `#` \
             (`#SBATCH ...`, `#PBS ...`, `#COBALT ...`); commands belong in worker_init"
        )),
    }
}

/// Runs a scheduler's commands: found in `bin_dir` when set, else on `PATH`, each under the
/// provider's `cmd_timeout`.
#[derive(Clone, Debug)]
pub(crate) struct Commands {
    pub(crate) bin_dir: Option<PathBuf>,
    pub(crate) timeout: Duration,
}

impl Commands {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            bin_dir: None,
            timeout,
        }
    }

    pub(crate) fn command(&self, program: &str) -> Command {
        match &self.bin_dir {
            Some(dir) => Command::new(dir.join(program)),
            None => Command::new(program),
        }
    }

    /// Runs `cmd` under the timeout; any exit status is `Ok`.
    pub(crate) fn run(&self, cmd: Command) -> Result<CommandOutput, ProviderError> {
        let output = run_with_timeout(cmd, self.timeout)?;
        tracing::debug!(
            command = %output.command,
            status = %output.status,
            "scheduler command ran"
        );
        Ok(output)
    }

    /// Runs `cmd`; a non-zero exit is [`failed`].
    pub(crate) fn run_checked(&self, cmd: Command) -> Result<CommandOutput, ProviderError> {
        let output = self.run(cmd)?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(failed(output))
        }
    }
}

/// A command that ended badly, with what it said: its stderr, or its stdout when stderr is
/// empty (Slurm's `qsub` wrapper prints `sbatch`'s errors on stdout).
pub(crate) fn failed(output: CommandOutput) -> ProviderError {
    let stderr = output.stderr.trim();
    let said = if stderr.is_empty() {
        output.stdout.trim()
    } else {
        stderr
    };
    ProviderError::CommandFailed {
        exit_code: output.status.code(),
        stderr: said.to_owned(),
        command: output.command,
    }
}

/// Output the provider cannot read.
pub(crate) fn unexpected(output: &CommandOutput, expected: &str) -> ProviderError {
    ProviderError::UnexpectedOutput {
        command: output.command.clone(),
        message: format!(
            "expected {expected}; stdout: {}; stderr: {}",
            shorten(&output.stdout),
            shorten(&output.stderr)
        ),
    }
}

/// `text` trimmed, at most 500 characters, `(empty)` when empty: for error messages.
pub(crate) fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(500) {
        _ if text.is_empty() => "(empty)".to_owned(),
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// The job id a submit command printed: its last non-empty stdout line, which must be one
/// word (schedulers print warnings before it).
pub(crate) fn job_id_from(output: &CommandOutput, program: &str) -> Result<JobId, ProviderError> {
    match output
        .stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
    {
        Some(line) if check_word(line).is_ok() => Ok(JobId(line.to_owned())),
        _ => Err(unexpected(output, &format!("a job id from {program}"))),
    }
}

/// Renders the block's script (the launcher line, the options as variables), lets the
/// provider `adjust` its variables, and writes it to the block's directory.
pub(crate) fn write_script(
    template: &ScriptTemplate,
    launcher: &Launcher,
    options: &BatchOptions,
    block: &BlockRequest,
    adjust: impl FnOnce(&mut ScriptVars),
) -> Result<PathBuf, ProviderError> {
    let script = render_script(template, launcher, options, block, adjust)?;
    write_job_script(&block.dir, &script)
}

/// The script [`write_script`] writes.
pub(crate) fn render_script(
    template: &ScriptTemplate,
    launcher: &Launcher,
    options: &BatchOptions,
    block: &BlockRequest,
    adjust: impl FnOnce(&mut ScriptVars),
) -> Result<String, ProviderError> {
    if block.nodes == 0 {
        return Err(ProviderError::Template {
            template: template.origin().to_owned(),
            message: "a block needs at least one node".to_owned(),
        });
    }
    let mut vars = ScriptVars::for_block(block, launcher)?.with_extra(options.script_vars());
    adjust(&mut vars);
    template.render(&vars)
}

/// Jobs this provider cancelled. Some schedulers (PBS, Torque, Cobalt) report a cancelled
/// job as merely ended, or forget it; a job we cancelled and that ended is `Cancelled`.
#[derive(Debug, Default)]
pub(crate) struct Cancelled(Mutex<HashSet<JobId>>);

impl Cancelled {
    pub(crate) fn mark(&self, ids: &[JobId]) {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.extend(ids.iter().cloned());
    }

    pub(crate) fn contains(&self, id: &JobId) -> bool {
        let set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.contains(id)
    }

    /// `status` of job `id`, made `Cancelled` when we cancelled it and it ended otherwise
    /// than by its walltime.
    pub(crate) fn apply(&self, id: &JobId, status: JobStatus) -> JobStatus {
        if matches!(status.state, JobState::Completed | JobState::Failed) && self.contains(id) {
            let how = match (&status.message, status.exit_code) {
                (Some(message), _) => format!("; {message}"),
                (None, Some(code)) => format!("; exit code {code}"),
                (None, None) => String::new(),
            };
            JobStatus {
                state: JobState::Cancelled,
                exit_code: status.exit_code,
                message: Some(format!("cancelled by this endpoint{how}")),
            }
        } else {
            status
        }
    }
}

/// The answer to a status call: every id asked, `found` where the scheduler reported it,
/// else `Unknown` with `missing` as the reason (or `Cancelled` if we cancelled it: a
/// cancelled job the scheduler forgot ended by our hand).
pub(crate) fn answer_all(
    ids: &[JobId],
    mut found: HashMap<JobId, JobStatus>,
    cancelled: &Cancelled,
    missing: &str,
) -> HashMap<JobId, JobStatus> {
    ids.iter()
        .map(|id| {
            let status = match found.remove(id) {
                Some(status) => cancelled.apply(id, status),
                None if cancelled.contains(id) => JobStatus {
                    state: JobState::Cancelled,
                    exit_code: None,
                    message: Some(format!("cancelled by this endpoint; {missing}")),
                },
                None => JobStatus {
                    state: JobState::Unknown,
                    exit_code: None,
                    message: Some(missing.to_owned()),
                },
            };
            (id.clone(), status)
        })
        .collect()
}

/// Whether a failed cancel command failed only because jobs had already ended or were
/// unknown: every line it printed says so (an empty output counts, as Slurm's `qdel`
/// wrapper prints nothing for those).
pub(crate) fn only_gone_jobs(output: &CommandOutput) -> bool {
    const GONE: [&str; 8] = [
        "unknown job",
        "has finished",
        "already complet",
        "invalid job id",
        "job has already finished",
        "invalid state for job - complete",
        "request invalid for state of job",
        "not found",
    ];
    output
        .stdout
        .lines()
        .chain(output.stderr.lines())
        .map(|line| line.trim().to_ascii_lowercase())
        .filter(|line| !line.is_empty())
        .all(|line| GONE.iter().any(|gone| line.contains(gone)))
}

/// Ids as one comma-separated argument (`squeue -j`, `sacct -j`).
pub(crate) fn comma_list(ids: &[JobId]) -> String {
    ids.iter()
        .map(|id| id.0.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `block` with its directory made absolute: batch schedulers run the script from
/// another working directory, and the script's options name files in that directory.
pub(crate) fn with_absolute_dir(block: &BlockRequest) -> BlockRequest {
    BlockRequest {
        dir: absolute(&block.dir),
        ..block.clone()
    }
}

/// `dir` made absolute, for scheduler options that name files (run from another cwd).
pub(crate) fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn output(code: i32, stdout: &str, stderr: &str) -> CommandOutput {
        CommandOutput {
            command: "qdel 1 2".to_owned(),
            status: ExitStatus::from_raw(code << 8),
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
        }
    }

    #[test]
    fn words_must_be_one_word() {
        check_word("debug").unwrap();
        check_word("gpu&hbm80g").unwrap();
        for bad in ["", "a b", "a\nb", "a\tb"] {
            assert!(check_word(bad).is_err(), "{bad:?}");
        }
        assert!(check_word("x\n#SBATCH --x")
            .unwrap_err()
            .contains("line break"));
    }

    #[test]
    fn scheduler_options_are_directives_only() {
        check_scheduler_options("").unwrap();
        check_scheduler_options("#SBATCH --gpus=4\n\n  #PBS -k doe\n# a comment").unwrap();
        let err = check_scheduler_options("#SBATCH -x\nmodule load py\n").unwrap_err();
        assert!(err.contains("`module load py`"), "{err}");
        let options = BatchOptions {
            qos: Some("a b".into()),
            ..BatchOptions::default()
        };
        assert!(options.check().unwrap_err().starts_with("qos: "));
    }

    #[test]
    fn every_option_is_a_template_variable() {
        let vars = BatchOptions::default().script_vars();
        let names: Vec<&str> = vars.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "account",
                "constraint",
                "cores_per_node",
                "exclusive",
                "mem_per_node",
                "partition",
                "qos",
                "queue",
                "scheduler_options",
                "select_options"
            ]
        );
        assert_eq!(vars["partition"], Value::Null);
        assert_eq!(vars["exclusive"], json!(false));
    }

    #[test]
    fn a_job_id_is_the_last_line_of_stdout() {
        let id = job_id_from(&output(0, "warning: x\n1234.pbs01\n\n", ""), "qsub").unwrap();
        assert_eq!(id, JobId::from("1234.pbs01"));
        let err = job_id_from(&output(0, "", "note"), "qsub").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`qdel 1 2`: expected a job id from qsub; stdout: (empty); stderr: note"
        );
        assert!(job_id_from(&output(0, "Submitted batch job 3\n", ""), "x").is_err());
    }

    #[test]
    fn a_failure_shows_stdout_when_stderr_is_empty() {
        let err = failed(output(1, "sbatch: error: invalid partition\n", ""));
        assert!(err
            .to_string()
            .ends_with("sbatch: error: invalid partition"));
        let err = failed(output(1, "noise", "real error\n"));
        assert!(err.to_string().ends_with("real error"));
    }

    #[test]
    fn cancel_failures_about_gone_jobs_are_benign() {
        assert!(only_gone_jobs(&output(2, "", "")));
        assert!(only_gone_jobs(&output(
            153,
            "",
            "qdel: Unknown Job Id 7.pbs\n"
        )));
        assert!(only_gone_jobs(&output(
            35,
            "",
            "qdel: Job has finished 7.pbs\nqdel: Unknown Job Id 8.pbs"
        )));
        assert!(!only_gone_jobs(&output(
            1,
            "",
            "qdel: Unknown Job Id 7\nqdel: Unauthorized Request 8"
        )));
    }

    #[test]
    fn a_cancelled_job_that_ended_or_vanished_is_cancelled() {
        let cancelled = Cancelled::default();
        let (a, b, c) = (JobId::from("1"), JobId::from("2"), JobId::from("3"));
        cancelled.mark(&[a.clone(), b.clone()]);
        let found = HashMap::from([
            (a.clone(), JobStatus::new(JobState::Completed)),
            (c.clone(), JobStatus::new(JobState::Completed)),
        ]);
        let answer = answer_all(
            &[a.clone(), b.clone(), c.clone()],
            found,
            &cancelled,
            "gone",
        );
        assert_eq!(answer[&a].state, JobState::Cancelled);
        assert_eq!(answer[&b].state, JobState::Cancelled);
        assert_eq!(
            answer[&b].message.as_deref(),
            Some("cancelled by this endpoint; gone")
        );
        assert_eq!(answer[&c].state, JobState::Completed);
        let timeout = cancelled.apply(&a, JobStatus::new(JobState::Timeout));
        assert_eq!(timeout.state, JobState::Timeout);
        let answer = answer_all(&[JobId::from("9")], HashMap::new(), &cancelled, "gone");
        assert_eq!(answer[&JobId::from("9")].state, JobState::Unknown);
    }

    #[test]
    fn long_output_is_shortened() {
        assert_eq!(shorten("  "), "(empty)");
        let long = "x".repeat(600);
        assert_eq!(shorten(&long).len(), 503);
    }
}
