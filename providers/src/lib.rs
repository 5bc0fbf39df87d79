//! Providers (local, slurm, pbs, ...) that submit, poll and cancel pilot-job blocks; launchers.
//!
//! A *block* is one pilot job: `nodes` nodes for up to `walltime`, each running one
//! `scifaas manager`. The agent's scaling strategy decides how many blocks it wants and
//! talks to a [`Provider`] through three calls: submit one block, ask the status of many
//! blocks in one call, cancel blocks. The strategy never knows which scheduler is behind
//! the trait.
//!
//! Every provider renders its job script from a handlebars template ([`ScriptTemplate`],
//! built-ins in `templates/`, overridable per endpoint), in which a [`Launcher`] line starts
//! one manager per node.
//!
//! The batch providers ([`SlurmProvider`], [`PbsProvider`] for PBS Pro and Torque,
//! [`CobaltProvider`]) share [`BatchOptions`] (partition/queue, account, ...) and run every
//! scheduler command under a timeout; their output parsers are public (in [`slurm`],
//! [`pbs`], [`cobalt`]) so that recorded outputs of real schedulers can be tested.

mod batch;
pub mod cobalt;
mod command;
mod error;
pub mod kubernetes;
mod launcher;
mod local;
pub mod pbs;
mod script;
pub mod slurm;
mod template;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use batch::{check_scheduler_options, check_word, BatchOptions, DEFAULT_CMD_TIMEOUT};
pub use cobalt::CobaltProvider;
pub use command::{command_line, run_checked, run_with_timeout, CommandOutput};
pub use error::ProviderError;
pub use kubernetes::{Credentials, KubernetesOptions, KubernetesProvider, PodTemplate};
pub use launcher::Launcher;
pub use local::{LocalProvider, DEFAULT_CANCEL_GRACE};
pub use pbs::{PbsFlavor, PbsProvider};
pub use script::{format_walltime, walltime_minutes, write_job_script, SCRIPT_FILE};
pub use script::{EnvVar, ScriptVars};
pub use slurm::SlurmProvider;
pub use template::{shell_quote, ScriptTemplate, BUILTIN_TEMPLATES};

/// The seam between the scaling policy and a resource manager.
///
/// Calls block (they may run scheduler commands that take seconds); the async agent calls
/// them from a blocking thread.
pub trait Provider: Send + Sync {
    /// The provider's type as written in the endpoint config (`local`, `slurm`, ...).
    fn name(&self) -> &'static str;

    /// Renders the job script for `block`, writes it to `block.dir/submit.sh` (mode 0700:
    /// it holds the endpoint secret in an `export` line, never on a command line), submits
    /// it and answers the job id.
    fn submit(&self, block: &BlockRequest) -> Result<JobId, ProviderError>;

    /// The status of many jobs in one call (for a scheduler: one `squeue`/`qstat` for all
    /// ids, to amortize its cost). Every id asked for is in the answer; a job the resource
    /// manager does not report is [`JobState::Unknown`], never silently completed.
    fn status(&self, jobs: &[JobId]) -> Result<HashMap<JobId, JobStatus>, ProviderError>;

    /// Cancels the jobs. Cancelling a job that already ended, or that this provider does
    /// not know, is not an error.
    fn cancel(&self, jobs: &[JobId]) -> Result<(), ProviderError>;
}

/// What the agent asks a provider to start: one block. Its `Debug` shows the names of
/// `env`, never the values (the endpoint secret is one).
#[derive(Clone, PartialEq, Eq)]
pub struct BlockRequest {
    /// The block's name, chosen by the agent (also its `--block-id`).
    pub block_id: String,
    /// The block's own directory: the job script and the job's stdout/stderr go here.
    pub dir: PathBuf,
    /// The endpoint's name, used in job names so that admins see whose job it is.
    pub endpoint_name: String,
    /// Nodes in the block (`nodes_per_block`).
    pub nodes: u32,
    /// The job's walltime; `None` leaves it to the resource manager's default.
    pub walltime: Option<Duration>,
    /// Shell lines run before the managers start (`module load python`, ...).
    pub worker_init: String,
    /// argv of `scifaas manager ...`; the script shell-quotes every word.
    pub manager_command: Vec<String>,
    /// Variables exported in the script (e.g. `SCIFAAS_ENDPOINT_SECRET`). Names must be
    /// shell identifiers; values are shell-quoted.
    pub env: Vec<(String, String)>,
}

impl fmt::Debug for BlockRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("BlockRequest")
            .field("block_id", &self.block_id)
            .field("dir", &self.dir)
            .field("endpoint_name", &self.endpoint_name)
            .field("nodes", &self.nodes)
            .field("walltime", &self.walltime)
            .field("worker_init", &self.worker_init)
            .field("manager_command", &self.manager_command)
            .field("env", &env_names)
            .finish()
    }
}

/// A job's id as the resource manager names it (a Slurm job id, a local pid, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for JobId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The state of a job, as far as the resource manager tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Queued, waiting for nodes.
    Pending,
    /// Started.
    Running,
    /// Ended with exit status 0.
    Completed,
    /// Ended with a non-zero exit status, a signal, or a node failure.
    Failed,
    /// Cancelled (by us or an admin).
    Cancelled,
    /// Killed at its walltime: the normal end of a pilot, not a failure.
    Timeout,
    /// Held by the scheduler or an admin; it will not start until released.
    Held,
    /// The resource manager does not report the job (any more): never assume it completed.
    Unknown,
}

impl JobState {
    /// Every state, for exhaustive tests and tables.
    pub const ALL: [JobState; 8] = [
        JobState::Pending,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Timeout,
        JobState::Held,
        JobState::Unknown,
    ];

    /// Whether the job has ended and will never run (again).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled | JobState::Timeout
        )
    }

    /// The word used in `Display`, in logs and in the endpoint's status.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Timeout => "timeout",
            JobState::Held => "held",
            JobState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's state with what is known of its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The state.
    pub state: JobState,
    /// The job's exit code, when it ended with one.
    pub exit_code: Option<i32>,
    /// A human explanation (the signal that killed it, the scheduler's reason, ...).
    pub message: Option<String>,
}

impl JobStatus {
    /// A status with neither exit code nor message.
    pub fn new(state: JobState) -> Self {
        Self {
            state,
            exit_code: None,
            message: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_display_in_lowercase_and_serialize_the_same() {
        let words: Vec<String> = JobState::ALL.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            words,
            [
                "pending",
                "running",
                "completed",
                "failed",
                "cancelled",
                "timeout",
                "held",
                "unknown"
            ]
        );
        for state in JobState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{state}\""));
        }
    }

    #[test]
    fn a_block_request_never_shows_its_env_values() {
        let block = BlockRequest {
            block_id: "b".into(),
            dir: "/tmp/b".into(),
            endpoint_name: "ep".into(),
            nodes: 1,
            walltime: None,
            worker_init: String::new(),
            manager_command: vec!["scifaas".into()],
            env: vec![("SCIFAAS_ENDPOINT_SECRET".into(), "hunter2".into())],
        };
        let shown = format!("{block:?}");
        assert!(shown.contains("SCIFAAS_ENDPOINT_SECRET"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let vars = ScriptVars::for_block(&block, &Launcher::SingleNode).unwrap();
        let shown = format!("{vars:?}");
        assert!(shown.contains("SCIFAAS_ENDPOINT_SECRET"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn only_ended_states_are_terminal() {
        let terminal: Vec<JobState> = JobState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                JobState::Completed,
                JobState::Failed,
                JobState::Cancelled,
                JobState::Timeout
            ]
        );
    }
}
