//! Running a scheduler command (`sbatch`, `squeue`, `qstat`, ...) with a time limit.
//!
//! A hung scheduler (an overloaded slurmctld, a stuck NFS mount) must not hang the agent, so
//! every command runs under a timeout and is killed, with everything it started, when the
//! timeout expires. Both pipes are drained by their own threads while the command runs: a
//! command that fills one pipe while we read the other would otherwise deadlock.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::error::ProviderError;
use crate::template::shell_quote;

/// How long to wait for a command's pipes to close after it exited or was killed: only a
/// process that escaped its process group can hold them longer, and we do not wait for it.
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// What a finished command left.
#[derive(Clone, Debug)]
pub struct CommandOutput {
    /// The command line, shell-quoted (for messages).
    pub command: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (invalid UTF-8 replaced).
    pub stdout: String,
    /// Everything it wrote to stderr (invalid UTF-8 replaced).
    pub stderr: String,
}

/// The command line of `cmd` as a shell would need it, for messages and logs.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|word| shell_quote(&word.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr captured) and waits at most
/// `timeout`. On expiry the command's whole process group is killed with SIGKILL and the
/// answer is [`ProviderError::CommandTimedOut`] with what it had written to stderr. A
/// command that ends, whatever its exit status, answers `Ok`.
pub fn run_with_timeout(
    mut cmd: Command,
    timeout: Duration,
) -> Result<CommandOutput, ProviderError> {
    let command = command_line(&cmd);
    // Its own process group, so that on timeout we also kill what it started (ssh, a
    // wrapper script's children) and not ourselves.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let deadline = started + timeout;
    let mut child = cmd.spawn().map_err(|source| ProviderError::Spawn {
        command: command.clone(),
        source,
    })?;
    let pgid = Pid::from_raw(child.id() as i32);
    let stdout = Capture::start(child.stdout.take().expect("stdout is piped"));
    let stderr = Capture::start(child.stderr.take().expect("stderr is piped"));

    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(source) => {
                // Cannot happen for a child we own; do not leave it behind if it does.
                let _ = killpg(pgid, Signal::SIGKILL);
                let _ = child.wait();
                return Err(ProviderError::Spawn { command, source });
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break None;
        }
        // Most scheduler commands answer in milliseconds: poll fast first, then back off.
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    };

    match status {
        Some(status) => {
            let pipes_deadline = deadline.max(Instant::now() + PIPE_GRACE);
            let closed = stdout.wait_closed(pipes_deadline) & stderr.wait_closed(pipes_deadline);
            if !closed {
                // Something the command started still holds its pipes (and so its process
                // group still exists): it is a leftover of a command that has finished.
                let _ = killpg(pgid, Signal::SIGKILL);
                stdout.wait_closed(Instant::now() + PIPE_GRACE);
                stderr.wait_closed(Instant::now() + PIPE_GRACE);
            }
            Ok(CommandOutput {
                command,
                status,
                stdout: stdout.text(),
                stderr: stderr.text(),
            })
        }
        None => {
            // The leader is not reaped yet, so the group id is certainly still ours.
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait();
            stderr.wait_closed(Instant::now() + PIPE_GRACE);
            Err(ProviderError::CommandTimedOut {
                command,
                timeout,
                stderr: stderr.text().trim().to_owned(),
            })
        }
    }
}

/// Like [`run_with_timeout`], and a command that ends with a non-zero status or a signal is
/// [`ProviderError::CommandFailed`] with its exit code and stderr.
pub fn run_checked(cmd: Command, timeout: Duration) -> Result<CommandOutput, ProviderError> {
    let output = run_with_timeout(cmd, timeout)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(ProviderError::CommandFailed {
            exit_code: output.status.code(),
            stderr: output.stderr.trim().to_owned(),
            command: output.command,
        })
    }
}

/// One pipe drained by its own thread into a shared buffer, so that what was read so far
/// is available even when the writer never closes the pipe.
struct Capture {
    buffer: Arc<Mutex<Vec<u8>>>,
    closed: mpsc::Receiver<()>,
}

impl Capture {
    fn start(mut pipe: impl Read + Send + 'static) -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let (tx, closed) = mpsc::channel();
        let sink = Arc::clone(&buffer);
        thread::spawn(move || {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        Self { buffer, closed }
    }

    /// Whether the pipe reached end-of-file by `deadline`.
    fn wait_closed(&self, deadline: Instant) -> bool {
        match self
            .closed
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(()) => true,
            // The reader thread sends exactly once; a second wait after success lands here.
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        }
    }

    fn text(&self) -> String {
        let bytes = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        cmd
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_and_reported() {
        let started = Instant::now();
        let mut sleep = Command::new("sleep");
        sleep.arg("10");
        let err = run_with_timeout(sleep, Duration::from_millis(200)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{err}");
        match err {
            ProviderError::CommandTimedOut {
                command, timeout, ..
            } => {
                assert_eq!(command, "sleep 10");
                assert_eq!(timeout, Duration::from_millis(200));
            }
            other => panic!("expected a timeout, got {other}"),
        }
    }

    #[test]
    fn a_timeout_also_kills_what_the_command_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "sleep 30 & echo $! > {}; echo started >&2; wait",
            pid_file.display()
        );
        let started = Instant::now();
        let err = run_with_timeout(sh(&script), Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{err}");
        assert!(err.to_string().contains("started"), "{err}");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SIGKILL is sent; the kernel may take a moment to finish the process off.
        let deadline = Instant::now() + Duration::from_secs(5);
        while crate::local::process_is_alive(pid) {
            assert!(Instant::now() < deadline, "background sleep {pid} survived");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn large_outputs_on_both_pipes_do_not_deadlock() {
        let script =
            "head -c 1000000 /dev/zero | tr '\\0' o; head -c 1000000 /dev/zero | tr '\\0' e >&2";
        let out = run_with_timeout(sh(script), Duration::from_secs(20)).unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), 1_000_000);
        assert_eq!(out.stderr.len(), 1_000_000);
        assert!(out.stdout.bytes().all(|b| b == b'o'));
        assert!(out.stderr.bytes().all(|b| b == b'e'));
    }

    #[test]
    fn a_failing_command_is_reported_with_its_line_exit_code_and_stderr() {
        let err = run_checked(
            sh("echo out; echo 'no such partition' >&2; exit 3"),
            Duration::from_secs(10),
        )
        .unwrap_err();
        match &err {
            ProviderError::CommandFailed {
                command,
                exit_code,
                stderr,
            } => {
                assert_eq!(
                    command,
                    "sh -c 'echo out; echo '\\''no such partition'\\'' >&2; exit 3'"
                );
                assert_eq!(*exit_code, Some(3));
                assert_eq!(stderr, "no such partition");
            }
            other => panic!("expected a command failure, got {other}"),
        }
        assert!(err.to_string().contains("exit code 3"), "{err}");
    }

    #[test]
    fn a_successful_command_answers_its_output() {
        let out = run_checked(sh("echo 12345; echo note >&2"), Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, "12345\n");
        assert_eq!(out.stderr, "note\n");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = run_with_timeout(Command::new("/nonexistent/sbatch"), Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(err, ProviderError::Spawn { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("could not run `/nonexistent/sbatch`"),
            "{err}"
        );
    }
}
