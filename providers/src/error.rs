//! The one error type of the crate.

use std::path::PathBuf;
use std::time::Duration;

/// Why a provider call failed. Command failures carry the command line, the exit code and
/// the command's stderr, so that the agent can show an admin exactly what the scheduler said.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A command could not be started at all (not installed, not executable, ...).
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line, shell-quoted.
        command: String,
        /// Why the operating system refused.
        source: std::io::Error,
    },

    /// A command ran and exited with a non-zero status or a signal.
    #[error("`{command}` failed ({}): {}", exit_description(*.exit_code), stderr_or_none(.stderr))]
    CommandFailed {
        /// The command line, shell-quoted.
        command: String,
        /// Its exit code; `None` when a signal killed it.
        exit_code: Option<i32>,
        /// What it wrote to stderr, trimmed; for the batch providers, its stdout when stderr
        /// is empty (Slurm's PBS-compatible `qsub` reports `sbatch`'s errors there).
        stderr: String,
    },

    /// A command succeeded but its output is not what the provider can read (no job id
    /// after a submission, say).
    #[error("`{command}`: {message}")]
    UnexpectedOutput {
        /// The command line, shell-quoted.
        command: String,
        /// What was expected and what came, with the output (trimmed, shortened).
        message: String,
    },

    /// A command did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout:?} and was killed; stderr: {}", stderr_or_none(.stderr))]
    CommandTimedOut {
        /// The command line, shell-quoted.
        command: String,
        /// The limit it ran under.
        timeout: Duration,
        /// What it had written to stderr, trimmed.
        stderr: String,
    },

    /// A job-script template failed to compile or to render.
    #[error("job script template {template}: {message}")]
    Template {
        /// The template's file, or `built-in NAME` for an embedded one.
        template: String,
        /// What is wrong, with the template's line where handlebars knows it.
        message: String,
    },

    /// Reading or writing a file (the job script, the job's output files) failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// The block asks for something this provider cannot do.
    #[error("{provider} provider: {message}")]
    Unsupported {
        /// The provider's name.
        provider: &'static str,
        /// What cannot be done and what would be valid.
        message: String,
    },

    /// An HTTP API (the Kubernetes API server) refused a request or could not be reached.
    /// For a refusal, `message` is the server's own (a Kubernetes `Status` message such as
    /// `pods is forbidden: User "..." cannot list resource "pods" ...`).
    #[error("{request}: {}{message}", api_status(*.code, .reason.as_deref()))]
    Api {
        /// The method and URL, e.g. `POST https://10.0.0.1:6443/api/v1/namespaces/ns/pods`.
        request: String,
        /// The HTTP status code; `None` when no answer came (connection refused, timeout).
        code: Option<u16>,
        /// The machine-readable reason (`Forbidden`, `NotFound`, `AlreadyExists`,
        /// `Invalid`, ...), when the server gave one.
        reason: Option<String>,
        /// What went wrong, in the server's words where it sent any.
        message: String,
    },

    /// Credentials or cluster settings (a kubeconfig, a service account) could not be used.
    #[error("{origin}: {message}")]
    Credentials {
        /// Where they were looked for: a kubeconfig path, the service-account directory.
        origin: String,
        /// What is missing or wrong, and what would be valid.
        message: String,
    },

    /// Signalling a job failed for a reason other than "it is gone already".
    #[error("could not signal job {job}: {source}")]
    Signal {
        /// The job's id.
        job: String,
        /// The error of `kill(2)`.
        source: nix::errno::Errno,
    },
}

fn exit_description(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_owned(),
    }
}

fn api_status(code: Option<u16>, reason: Option<&str>) -> String {
    match (code, reason) {
        (Some(code), Some(reason)) => format!("{code} {reason}: "),
        (Some(code), None) => format!("HTTP {code}: "),
        (None, _) => String::new(),
    }
}

fn stderr_or_none(stderr: &str) -> &str {
    if stderr.is_empty() {
        "(no stderr)"
    } else {
        stderr
    }
}
