//! The PBS Pro / OpenPBS and Torque providers: `qsub` to submit, one `qstat -f` for the
//! status of every block, `qdel` to cancel.
//!
//! PBS Pro is asked `qstat -x -f -F json` first (`-x`: finished jobs too, from the server's
//! history); a `qstat` that refuses an option (no history kept, no JSON, or Slurm's
//! PBS-compatible wrapper, which knows neither) is asked the next simpler form, and the form
//! that worked is kept: `-x -f -F json`, `-f -F json`, `-x -f`, `-f`. Torque is asked `-f`
//! (its `-x` means XML). An id qstat does not know ("Unknown Job Id", exit code 153) is
//! `Unknown`, and so is a finished job when no history is kept.

mod qstat;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

pub use qstat::{job_status, parse_json, parse_text, PbsJob};

use crate::batch::{self, BatchOptions, Cancelled, Commands};
use crate::command::CommandOutput;
use crate::error::ProviderError;
use crate::launcher::Launcher;
use crate::template::ScriptTemplate;
use crate::{BlockRequest, JobId, JobStatus, Provider};

/// Which PBS: the two differ in resource requests (`select=` or `nodes=:ppn=`), in what
/// `qstat` can print, and in their exit-status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PbsFlavor {
    /// PBS Pro / OpenPBS (`type: pbs`).
    Pro,
    /// Torque (`type: torque`).
    Torque,
}

impl PbsFlavor {
    /// The provider type and built-in template name: `pbs` or `torque`.
    pub fn name(self) -> &'static str {
        match self {
            PbsFlavor::Pro => "pbs",
            PbsFlavor::Torque => "torque",
        }
    }

    fn queries(self) -> &'static [Query] {
        match self {
            PbsFlavor::Pro => &[
                Query::JsonHistory,
                Query::Json,
                Query::TextHistory,
                Query::Text,
            ],
            PbsFlavor::Torque => &[Query::Text],
        }
    }
}

/// A form of `qstat` to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Query {
    JsonHistory,
    Json,
    TextHistory,
    Text,
}

impl Query {
    fn args(self) -> &'static [&'static str] {
        match self {
            Query::JsonHistory => &["-x", "-f", "-F", "json"],
            Query::Json => &["-f", "-F", "json"],
            Query::TextHistory => &["-x", "-f"],
            Query::Text => &["-f"],
        }
    }

    fn is_json(self) -> bool {
        matches!(self, Query::JsonHistory | Query::Json)
    }
}

/// Submits blocks as PBS Pro or Torque jobs.
pub struct PbsProvider {
    flavor: PbsFlavor,
    template: ScriptTemplate,
    launcher: Launcher,
    options: BatchOptions,
    commands: Commands,
    cancelled: Cancelled,
    /// Index into `flavor.queries()` of the form of `qstat` this server accepts.
    query: Mutex<usize>,
}

impl PbsProvider {
    /// A provider for `flavor` rendering scripts with `template`, starting managers with
    /// `launcher`, asking the scheduler for what `options` say.
    pub fn new(
        flavor: PbsFlavor,
        template: ScriptTemplate,
        launcher: Launcher,
        options: BatchOptions,
    ) -> Self {
        let commands = Commands::new(options.cmd_timeout);
        Self {
            flavor,
            template,
            launcher,
            options,
            commands,
            cancelled: Cancelled::default(),
            query: Mutex::new(0),
        }
    }

    /// The provider with the built-in `pbs.sh.hbs` or `torque.sh.hbs` template.
    pub fn with_builtin_template(
        flavor: PbsFlavor,
        launcher: Launcher,
        options: BatchOptions,
    ) -> Self {
        let template =
            ScriptTemplate::builtin(flavor.name()).expect("the pbs templates are built in");
        Self::new(flavor, template, launcher, options)
    }

    /// Runs `qsub`, `qstat` and `qdel` from `dir` instead of from `PATH`.
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.commands.bin_dir = Some(dir.into());
        self
    }

    /// The job script `submit` would write for `block`.
    pub fn render_script(&self, block: &BlockRequest) -> Result<String, ProviderError> {
        batch::render_script(&self.template, &self.launcher, &self.options, block, |_| {})
    }

    fn qstat(&self, query: Query, ids: &[JobId]) -> Result<CommandOutput, ProviderError> {
        let mut cmd = self.commands.command("qstat");
        cmd.args(query.args())
            .args(ids.iter().map(|id| id.0.as_str()));
        self.commands.run(cmd)
    }
}

impl Provider for PbsProvider {
    fn name(&self) -> &'static str {
        self.flavor.name()
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
        let mut cmd = self.commands.command("qsub");
        // On the command line as well as in the script: Slurm's qsub wrapper passes its own
        // defaults to sbatch, which override the script's directives.
        cmd.arg("-o")
            .arg(block.dir.join("stdout"))
            .arg("-e")
            .arg(block.dir.join("stderr"))
            .arg(&script)
            .current_dir(&block.dir);
        let output = self.commands.run_checked(cmd)?;
        let id = batch::job_id_from(&output, "qsub")?;
        tracing::info!(block = %block.block_id, job = %id, flavor = self.flavor.name(), "submitted PBS job");
        Ok(id)
    }

    fn status(&self, ids: &[JobId]) -> Result<HashMap<JobId, JobStatus>, ProviderError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let queries = self.flavor.queries();
        let mut index = *self.query.lock().unwrap_or_else(|e| e.into_inner());
        let (jobs, notes) = loop {
            let query = queries[index];
            let output = self.qstat(query, ids)?;
            match read_qstat(query, &output) {
                Ok(read) => break read,
                Err(Refused) if index + 1 < queries.len() => {
                    tracing::info!(
                        command = %output.command,
                        "qstat refused this form; asking a simpler one from now on"
                    );
                    index += 1;
                    *self.query.lock().unwrap_or_else(|e| e.into_inner()) = index;
                }
                Err(Refused) => return Err(batch::failed(output)),
            }
        };
        let found = match_ids(ids, &jobs, self.flavor);
        let mut answer = batch::answer_all(ids, found, &self.cancelled, "not in qstat's output");
        // A job qstat named in a note ("Job has finished, use -x") says more than "missing".
        for (id, status) in answer.iter_mut() {
            if status.message.as_deref() == Some("not in qstat's output") {
                let names_id = |note: &&String| note.split_whitespace().any(|w| w == id.0);
                if let Some(note) = notes.iter().find(names_id) {
                    status.message = Some(format!("not in qstat's output: {note}"));
                }
            }
        }
        Ok(answer)
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

/// This form of qstat is not understood here: ask the next one.
#[derive(Debug)]
struct Refused;

/// The jobs of a qstat output and its per-job notes (stderr lines about ids it could not
/// show), or `Refused` when the output is an error that is not about particular jobs.
fn read_qstat(query: Query, output: &CommandOutput) -> Result<(Vec<PbsJob>, Vec<String>), Refused> {
    let notes: Vec<String> = output
        .stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let all_about_jobs = notes.iter().all(|line| is_note_about_a_job(line));
    let nothing_printed = output.stdout.trim().is_empty();
    if nothing_printed && !notes.is_empty() && all_about_jobs {
        // Every id asked is unknown or finished: nothing to read, and no reason to think
        // less of this form of qstat.
        return Ok((Vec::new(), notes));
    }
    if query.is_json() {
        // PBS Pro prints the JSON of the jobs it knows even when it fails for others.
        return match parse_json(&output.stdout) {
            Ok(jobs) if output.status.success() || all_about_jobs => Ok((jobs, notes)),
            Ok(_) => Err(Refused),
            Err(e) => {
                if output.stdout.trim_start().starts_with('{') {
                    tracing::warn!("qstat printed JSON that does not parse ({e}); using text");
                }
                Err(Refused)
            }
        };
    }
    let looks_refused = notes.iter().any(|line| is_refusal(line))
        || output
            .stdout
            .lines()
            .any(|line| line.trim_start().to_ascii_lowercase().starts_with("usage:"));
    // A failure that names no job is acceptable only when it printed nothing at all or
    // still printed jobs (Slurm's wrapper exits 153, silent, when it knows none of them).
    let printed_jobs = output.stdout.trim_start().starts_with("Job Id:");
    let quiet_miss = notes.is_empty() && (nothing_printed || printed_jobs);
    if looks_refused
        || !(output.status.success() || (all_about_jobs && !notes.is_empty()) || quiet_miss)
    {
        return Err(Refused);
    }
    Ok((parse_text(&output.stdout), notes))
}

/// An error line about one job: it is unknown, or finished and not kept.
fn is_note_about_a_job(line: &str) -> bool {
    let line = line.to_ascii_lowercase();
    line.contains("unknown job id") || line.contains("job has finished")
}

/// An error line that refuses the command itself (an option, or job history).
fn is_refusal(line: &str) -> bool {
    let line = line.to_ascii_lowercase();
    [
        "usage",
        "unknown option",
        "invalid option",
        "illegal option",
        "unrecognized option",
        "not configured to maintain job history",
    ]
    .iter()
    .any(|word| line.contains(word))
}

/// The reported jobs matched to the ids asked. PBS ids are `NUMBER.SERVER`, and the server
/// part may be written differently by qsub and qstat (short or full host name), so a job
/// matches on its number when no id matches exactly.
fn match_ids(ids: &[JobId], jobs: &[PbsJob], flavor: PbsFlavor) -> HashMap<JobId, JobStatus> {
    let number = |id: &str| id.split('.').next().unwrap_or(id).to_owned();
    ids.iter()
        .filter_map(|id| {
            let job = jobs
                .iter()
                .find(|job| job.id == id.0)
                .or_else(|| jobs.iter().find(|job| number(&job.id) == number(&id.0)))?;
            Some((id.clone(), job_status(flavor, job)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn output(code: i32, stdout: &str, stderr: &str) -> CommandOutput {
        CommandOutput {
            command: "qstat".to_owned(),
            status: ExitStatus::from_raw(code << 8),
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
        }
    }

    #[test]
    fn a_usage_message_refuses_the_form() {
        let usage = output(2, "", "Unknown option: x\nUsage:\n    qstat [-f]\n");
        assert!(read_qstat(Query::JsonHistory, &usage).is_err());
        assert!(read_qstat(Query::TextHistory, &usage).is_err());
        let history = output(
            1,
            "",
            "qstat: PBS is not configured to maintain job history 0.scheduler",
        );
        assert!(read_qstat(Query::TextHistory, &history).is_err());
    }

    #[test]
    fn unknown_ids_alone_are_not_a_refusal() {
        let (jobs, notes) = read_qstat(
            Query::Text,
            &output(153, "", "qstat: Unknown Job Id 9.pbs\n"),
        )
        .unwrap();
        assert!(jobs.is_empty());
        assert_eq!(notes, ["qstat: Unknown Job Id 9.pbs"]);
        // Slurm's wrapper: nothing at all for an unknown id.
        assert!(read_qstat(Query::Text, &output(153, "", ""))
            .unwrap()
            .0
            .is_empty());
        assert!(read_qstat(Query::Text, &output(1, "", "Connection refused")).is_err());
        assert!(read_qstat(Query::Text, &output(1, "Connection refused\n", "")).is_err());
        // All unknown, and no JSON printed: not a reason to give up JSON.
        let (jobs, _) = read_qstat(
            Query::JsonHistory,
            &output(153, "", "qstat: Unknown Job Id 9.pbs"),
        )
        .unwrap();
        assert!(jobs.is_empty());
    }

    #[test]
    fn ids_match_exactly_or_by_number() {
        let jobs = vec![
            PbsJob {
                id: "12.pbs01.example.org".into(),
                state: "R".into(),
                ..PbsJob::default()
            },
            PbsJob {
                id: "13".into(),
                state: "Q".into(),
                ..PbsJob::default()
            },
        ];
        let ids = [
            JobId::from("12.pbs01"),
            JobId::from("13"),
            JobId::from("14"),
        ];
        let found = match_ids(&ids, &jobs, PbsFlavor::Pro);
        assert_eq!(found.len(), 2);
        assert_eq!(found[&ids[0]].state, crate::JobState::Running);
        assert_eq!(found[&ids[1]].state, crate::JobState::Pending);
    }
}
