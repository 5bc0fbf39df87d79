//! The Cobalt provider (ALCF Theta style): `qsub -n NODES -t MINUTES -q QUEUE -A ACCOUNT
//! --mode script -O PREFIX SCRIPT` to submit, one `qstat ID...` for the status of every
//! block, `qdel` to cancel.
//!
//! No Cobalt can run here: the parsing is tested against recorded outputs
//! (`tests/fixtures/cobalt/`), the commands against fake ones. Cobalt forgets a job as soon
//! as it ends (its `qstat` then prints nothing and exits 1), so the outcome is read from
//! the job's `PREFIX.cobaltlog`, which Cobalt writes next to its `.output` and `.error`:
//! "task completed normally with an exit code of N".

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::batch::{self, BatchOptions, Cancelled, Commands};
use crate::error::ProviderError;
use crate::launcher::Launcher;
use crate::script::{walltime_minutes, ScriptVars};
use crate::template::ScriptTemplate;
use crate::{BlockRequest, JobId, JobState, JobStatus, Provider};

/// Submits blocks as Cobalt jobs.
pub struct CobaltProvider {
    template: ScriptTemplate,
    launcher: Launcher,
    options: BatchOptions,
    commands: Commands,
    cancelled: Cancelled,
    /// Each submitted job's `.cobaltlog`, where its exit code appears once it ended.
    logs: Mutex<HashMap<JobId, PathBuf>>,
}

impl CobaltProvider {
    /// A provider rendering scripts with `template`, starting managers with `launcher`
    /// (usually [`Launcher::Aprun`]), asking Cobalt for what `options` say.
    pub fn new(template: ScriptTemplate, launcher: Launcher, options: BatchOptions) -> Self {
        let commands = Commands::new(options.cmd_timeout);
        Self {
            template,
            launcher,
            options,
            commands,
            cancelled: Cancelled::default(),
            logs: Mutex::new(HashMap::new()),
        }
    }

    /// The provider with the built-in `cobalt.sh.hbs` template.
    pub fn with_builtin_template(launcher: Launcher, options: BatchOptions) -> Self {
        let template = ScriptTemplate::builtin("cobalt").expect("the cobalt template is built in");
        Self::new(template, launcher, options)
    }

    /// Runs `qsub`, `qstat` and `qdel` from `dir` instead of from `PATH`.
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.commands.bin_dir = Some(dir.into());
        self
    }

    /// The job script `submit` would write for `block`.
    pub fn render_script(&self, block: &BlockRequest) -> Result<String, ProviderError> {
        batch::render_script(
            &self.template,
            &self.launcher,
            &self.options,
            block,
            output_files,
        )
    }

    /// The exit code in job `id`'s cobaltlog, if it has one yet.
    fn logged_exit_code(&self, id: &JobId) -> Option<i32> {
        let path = self
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)?
            .clone();
        parse_cobaltlog(&std::fs::read_to_string(path).ok()?)
    }
}

/// Cobalt names a job's files after the `-O` prefix: `PREFIX.output`, `PREFIX.error`,
/// `PREFIX.cobaltlog`. The prefix is the block's directory and the job's name.
fn prefix(vars: &ScriptVars) -> PathBuf {
    PathBuf::from(&vars.dir).join(&vars.job_name)
}

fn output_files(vars: &mut ScriptVars) {
    let prefix = prefix(vars).display().to_string();
    vars.stdout = format!("{prefix}.output");
    vars.stderr = format!("{prefix}.error");
}

impl Provider for CobaltProvider {
    fn name(&self) -> &'static str {
        "cobalt"
    }

    fn submit(&self, block: &BlockRequest) -> Result<JobId, ProviderError> {
        let Some(walltime) = block.walltime else {
            return Err(ProviderError::Unsupported {
                provider: "cobalt",
                message: "Cobalt's qsub needs a walltime (-t); set provider.walltime".to_owned(),
            });
        };
        let block = batch::with_absolute_dir(block);
        let mut log_prefix = PathBuf::new();
        let script = batch::write_script(
            &self.template,
            &self.launcher,
            &self.options,
            &block,
            |vars| {
                output_files(vars);
                log_prefix = prefix(vars);
            },
        )?;
        let mut cmd = self.commands.command("qsub");
        cmd.args(["-n", &block.nodes.to_string()])
            .args(["-t", &walltime_minutes(walltime).to_string()]);
        if let Some(queue) = &self.options.queue {
            cmd.args(["-q", queue]);
        }
        if let Some(account) = &self.options.account {
            cmd.args(["-A", account]);
        }
        cmd.args(["--mode", "script", "-O"])
            .arg(&log_prefix)
            .arg(&script)
            .current_dir(&block.dir);
        let output = self.commands.run_checked(cmd)?;
        let id = batch::job_id_from(&output, "qsub")?;
        let log = PathBuf::from(format!("{}.cobaltlog", log_prefix.display()));
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), log);
        tracing::info!(block = %block.block_id, job = %id, "submitted Cobalt job");
        Ok(id)
    }

    fn status(&self, ids: &[JobId]) -> Result<HashMap<JobId, JobStatus>, ProviderError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut cmd = self.commands.command("qstat");
        cmd.args(ids.iter().map(|id| id.0.as_str()));
        let output = self.commands.run(cmd)?;
        // qstat exits 1 with no output when none of the jobs is queued or running.
        let quiet_miss = output.stdout.trim().is_empty()
            && output.stderr.lines().all(|l| {
                let l = l.trim().to_ascii_lowercase();
                l.is_empty() || l.contains("not found") || l.contains("unknown")
            });
        if !output.status.success() && !quiet_miss {
            return Err(batch::failed(output));
        }
        let mut found = parse_qstat(&output.stdout);
        found.retain(|id, _| ids.contains(id));
        for id in ids {
            if found.contains_key(id) {
                continue;
            }
            if let Some(code) = self.logged_exit_code(id) {
                let status = if code == 0 {
                    JobStatus {
                        state: JobState::Completed,
                        exit_code: Some(0),
                        message: None,
                    }
                } else {
                    JobStatus {
                        state: JobState::Failed,
                        exit_code: Some(code),
                        message: Some(format!("exit code {code} (cobaltlog)")),
                    }
                };
                found.insert(id.clone(), status);
            }
        }
        Ok(batch::answer_all(
            ids,
            found,
            &self.cancelled,
            "not in qstat's output, and no exit code in its cobaltlog",
        ))
    }

    fn cancel(&self, ids: &[JobId]) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.cancelled.mark(ids);
        let mut cmd = self.commands.command("qdel");
        cmd.args(ids.iter().map(|id| id.0.as_str()));
        let output = self.commands.run(cmd)?;
        if output.status.success() || batch::only_gone_jobs(&output) {
            Ok(())
        } else {
            Err(batch::failed(output))
        }
    }
}

/// Reads Cobalt's `qstat` table: a header line naming the columns (`JobID`, `State`, `S`,
/// ...), maybe a line of `=`, then one row per job. The long `State` is used, else the
/// one-letter `S`.
pub fn parse_qstat(text: &str) -> HashMap<JobId, JobStatus> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '=' || c == '-'));
    let Some(header) = lines.find(|l| l.split_whitespace().next() == Some("JobID")) else {
        return HashMap::new();
    };
    let columns: Vec<&str> = header.split_whitespace().collect();
    let column = |name: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(name));
    let (state_at, letter_at) = (column("State"), column("S"));
    lines
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let id = *cells.first()?;
            let aligned = cells.len() == columns.len();
            let word = state_at
                .filter(|_| aligned)
                .map(|at| cells[at])
                // Cells with spaces shift the columns: find the state word itself.
                .or_else(|| {
                    cells
                        .iter()
                        .copied()
                        .find(|c| job_state(c) != JobState::Unknown)
                });
            let state = match word {
                Some(word) => job_state(word),
                None => letter_at
                    .filter(|_| aligned)
                    .map_or(JobState::Unknown, |at| state_letter(cells[at])),
            };
            // The plain states say nothing more; the others are worth showing.
            let message = word
                .filter(|w| !matches!(*w, "queued" | "running"))
                .map(str::to_owned);
            Some((
                JobId(id.to_owned()),
                JobStatus {
                    state,
                    exit_code: None,
                    message,
                },
            ))
        })
        .collect()
}

/// The state of a Cobalt job state word. `starting` (nodes being booted) is still pending;
/// `exiting` and `killing` hold their nodes until they end, outcome unknown until then.
/// The holds (user, admin, dependency, maximum running jobs) wait for a release.
pub fn job_state(word: &str) -> JobState {
    match word {
        "queued" | "starting" | "preempted" => JobState::Pending,
        "running" | "exiting" | "killing" => JobState::Running,
        "user_hold" | "admin_hold" | "dep_hold" | "maxrun_hold" | "dep_fail" | "hold" => {
            JobState::Held
        }
        _ => JobState::Unknown,
    }
}

/// The one-letter `S` column: `Q` queued, `R` starting or running, `H` held, `E` exiting.
fn state_letter(letter: &str) -> JobState {
    match letter {
        "Q" => JobState::Pending,
        "R" | "E" => JobState::Running,
        "H" => JobState::Held,
        _ => JobState::Unknown,
    }
}

/// The exit code in a `.cobaltlog`: "Info: task completed normally with an exit code of N;
/// initiating job cleanup and removal".
pub fn parse_cobaltlog(text: &str) -> Option<i32> {
    const MARK: &str = "task completed normally with an exit code of ";
    text.lines().rev().find_map(|line| {
        let rest = &line[line.find(MARK)? + MARK.len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_explicitly() {
        use JobState::*;
        for (word, want) in [
            ("queued", Pending),
            ("starting", Pending),
            ("running", Running),
            ("exiting", Running),
            ("killing", Running),
            ("user_hold", Held),
            ("admin_hold", Held),
            ("dep_hold", Held),
            ("done", Unknown),
        ] {
            assert_eq!(job_state(word), want, "{word}");
        }
        assert_eq!(state_letter("H"), Held);
        assert_eq!(state_letter("X"), Unknown);
    }

    #[test]
    fn a_shifted_row_still_finds_its_state() {
        let text = "JobID  JobName  User  State\n7  my job  u  running\n";
        let jobs = parse_qstat(text);
        assert_eq!(jobs[&JobId::from("7")].state, JobState::Running);
        assert!(parse_qstat("").is_empty());
    }

    #[test]
    fn the_cobaltlog_gives_the_exit_code() {
        assert_eq!(
            parse_cobaltlog("x\nMon Jan 23 02:44:05 2017 +0000 (UTC) Info: task completed normally with an exit code of 126; initiating job cleanup and removal\n"),
            Some(126)
        );
        assert_eq!(parse_cobaltlog("Info: job started\n"), None);
    }
}
