//! What can go wrong between a manager and its worker process.

use crate::frame::FrameError;
use scifaas_protocol::{ErrorKind, TaskError};
use std::fmt;
use std::io;

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// Killed by this signal (9 for SIGKILL: a walltime kill or the OOM killer).
    Signal(i32),
    /// Exited with this status.
    Code(i32),
    /// Did not exit even after SIGKILL, or its status could not be read.
    Unknown,
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Signal(signal) => write!(f, "worker died (signal {signal})"),
            Self::Code(code) => write!(f, "worker exited with status {code}"),
            Self::Unknown => f.write_str("worker stopped answering and could not be reaped"),
        }
    }
}

/// An error starting or talking to a worker. Every variant but [`WorkerError::TooLarge`]
/// leaves the [`crate::Worker`] unusable: the caller replaces it.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The command could not be executed at all (interpreter or runtime not found).
    #[error("could not start worker `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// The command ran but never said it was ready.
    #[error("worker `{command}` did not start: {reason}{}", stderr_suffix(.stderr))]
    NotReady {
        command: String,
        /// How it ended, or that it was killed after the ready timeout.
        reason: String,
        /// The last of what it printed on stderr.
        stderr: String,
    },
    /// The worker process ended while it held a task (or between tasks).
    #[error("{exit}{}", stderr_suffix(.stderr))]
    Died {
        exit: WorkerExit,
        /// The last of what it printed on stderr (and on fd 1, which points there).
        stderr: String,
        /// Whether it was killed through [`crate::WorkerKiller::kill`], that is by the
        /// manager (a walltime), not by itself or the system.
        killed: bool,
    },
    /// The worker sent something that does not follow the protocol; it was killed.
    #[error("worker protocol error: {0}")]
    Protocol(String),
    /// The task cannot be framed (its body is over 4 GiB); nothing was sent and the worker
    /// is still usable.
    #[error("task too large for a worker frame: {0}")]
    TooLarge(FrameError),
    /// An earlier error left this worker unusable.
    #[error("worker is no longer usable: {0}")]
    Unusable(String),
}

impl WorkerError {
    /// The error a task that met this failure should report.
    pub fn to_task_error(&self) -> TaskError {
        let (kind, type_name) = match self {
            Self::Spawn { .. } | Self::NotReady { .. } => {
                (ErrorKind::Endpoint, "WorkerStartFailed")
            }
            Self::Died { .. } => (ErrorKind::WorkerDied, "WorkerDied"),
            Self::Protocol(_) | Self::Unusable(_) => (ErrorKind::WorkerDied, "WorkerProtocolError"),
            Self::TooLarge(_) => (ErrorKind::TooLarge, "PayloadTooLarge"),
        };
        TaskError::system(kind, type_name, self.to_string())
    }

    /// Whether the worker died of a signal that ends jobs (SIGTERM, SIGINT, SIGHUP) sent
    /// by someone other than its manager: usually a batch system ending the whole pilot
    /// (`scancel`, a preemption), whose signal reaches the manager at about the same time.
    pub fn is_termination_by_signal(&self) -> bool {
        matches!(
            self,
            Self::Died {
                exit: WorkerExit::Signal(libc::SIGTERM | libc::SIGINT | libc::SIGHUP),
                killed: false,
                ..
            }
        )
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; its last output on stderr: {stderr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_death_by_signal_reads_as_such_with_its_stderr() {
        let error = WorkerError::Died {
            exit: WorkerExit::Signal(9),
            stderr: "MemoryError".into(),
            killed: false,
        };
        assert_eq!(
            error.to_string(),
            "worker died (signal 9); its last output on stderr: MemoryError"
        );
        let task_error = error.to_task_error();
        assert_eq!(task_error.kind, ErrorKind::WorkerDied);
        assert_eq!(task_error.type_name, "WorkerDied");
    }

    #[test]
    fn an_exit_status_reads_as_such() {
        let error = WorkerError::Died {
            exit: WorkerExit::Code(3),
            stderr: String::new(),
            killed: false,
        };
        assert_eq!(error.to_string(), "worker exited with status 3");
    }

    #[test]
    fn only_job_ending_signals_from_outside_read_as_termination() {
        let died = |exit, killed| WorkerError::Died {
            exit,
            stderr: String::new(),
            killed,
        };
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            assert!(died(WorkerExit::Signal(signal), false).is_termination_by_signal());
            assert!(!died(WorkerExit::Signal(signal), true).is_termination_by_signal());
        }
        // SIGKILL is the OOM killer or a walltime; SIGSEGV the function; an exit status
        // the worker itself.
        for exit in [
            WorkerExit::Signal(libc::SIGKILL),
            WorkerExit::Signal(libc::SIGSEGV),
            WorkerExit::Code(1),
            WorkerExit::Unknown,
        ] {
            assert!(!died(exit, false).is_termination_by_signal());
        }
        assert!(!WorkerError::Protocol("x".into()).is_termination_by_signal());
    }
}
