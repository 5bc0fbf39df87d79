//! The local provider: each block is `bash submit.sh`, a child process of the agent.
//!
//! A block runs in its own process group (its job id is the pid of that group's leader,
//! the script's shell), so that cancelling it reaches the manager and its workers too and
//! a Ctrl-C in the agent's terminal reaches none of them. The provider keeps the `Child`
//! of every block and reaps it; nothing it started outlives the block:
//!
//! - the leader is reaped only *after* the last signal to its group, because an unreaped
//!   leader (running or zombie) keeps the group's id from being reused, so a signal can
//!   never reach an unrelated process;
//! - a block whose script ended has whatever it left behind in its group killed, as a batch
//!   scheduler does at the end of a job;
//! - dropping the provider cancels the blocks still running.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::command::command_line;
use crate::error::ProviderError;
use crate::launcher::Launcher;
use crate::script::{format_walltime, write_job_script, ScriptVars};
use crate::template::ScriptTemplate;
use crate::{BlockRequest, JobId, JobState, JobStatus, Provider};

/// Default time a cancelled block gets between SIGTERM and SIGKILL: enough for a manager
/// to stop its workers and say goodbye, short enough that `endpoint stop` stays quick.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(3);

/// How often a cancel checks whether the block's processes are gone.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Runs blocks as child processes of the agent, on the agent's own machine.
///
/// A block's walltime is enforced when `status` is asked about it: a block past its
/// walltime is stopped like a cancelled one (so that call may take up to the cancel grace)
/// and reported as [`JobState::Timeout`].
pub struct LocalProvider {
    template: ScriptTemplate,
    launcher: Launcher,
    cancel_grace: Duration,
    jobs: Mutex<HashMap<JobId, Job>>,
}

enum Job {
    Live(LiveJob),
    Ended(JobStatus),
}

struct LiveJob {
    child: Child,
    pgid: Pid,
    /// When the block's walltime runs out, if it has one (checked by `status`).
    deadline: Option<Instant>,
    walltime: Option<Duration>,
    /// Why we are ending it, once we are.
    ending: Option<Ending>,
}

#[derive(Clone, Copy)]
enum Ending {
    Cancelled,
    Walltime,
}

impl LocalProvider {
    /// A provider rendering scripts with `template` and starting managers with
    /// `launcher` (only [`Launcher::SingleNode`] makes sense on one machine).
    pub fn new(template: ScriptTemplate, launcher: Launcher) -> Self {
        Self {
            template,
            launcher,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    /// The provider with the built-in `local.sh.hbs` template and the single-node launcher.
    pub fn with_builtin_template() -> Self {
        let template = ScriptTemplate::builtin("local").expect("the local template is built in");
        Self::new(template, Launcher::SingleNode)
    }

    /// Sets the time between SIGTERM and SIGKILL when a block is cancelled or reaches its
    /// walltime (default [`DEFAULT_CANCEL_GRACE`]).
    pub fn with_cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Job>> {
        // A panic while holding the lock leaves the map consistent (entries are replaced
        // whole), so keep going rather than losing track of live children.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the live jobs among `ids`: SIGTERM to each group, a grace period for them to
    /// exit, SIGKILL to whatever is left, then reaping. Bounded by the grace period.
    fn stop(
        &self,
        jobs: &mut HashMap<JobId, Job>,
        ids: &[JobId],
        ending: Ending,
    ) -> Result<(), ProviderError> {
        let mut first_error = None;
        let mut targets = Vec::new();
        for id in ids {
            if let Some(Job::Live(live)) = jobs.get_mut(id) {
                live.ending.get_or_insert(ending);
                if let Err(e) = signal_group(id, live.pgid, Signal::SIGTERM) {
                    first_error.get_or_insert(e);
                }
                targets.push((id.clone(), live.pgid));
            }
        }
        let deadline = Instant::now() + self.cancel_grace;
        while Instant::now() < deadline
            && targets
                .iter()
                .any(|(_, pgid)| group_has_live_members(*pgid))
        {
            thread::sleep(STOP_POLL);
        }
        for (id, pgid) in targets {
            if let Err(e) = signal_group(&id, pgid, Signal::SIGKILL) {
                first_error.get_or_insert(e);
            }
            if let Some(Job::Live(live)) = jobs.remove(&id) {
                jobs.insert(id, Job::Ended(reap(live)));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn submit(&self, block: &BlockRequest) -> Result<JobId, ProviderError> {
        if block.nodes != 1 {
            return Err(ProviderError::Unsupported {
                provider: "local",
                message: format!(
                    "a block runs on this one machine; nodes_per_block must be 1, not {}",
                    block.nodes
                ),
            });
        }
        let vars = ScriptVars::for_block(block, &self.launcher)?;
        let script = self.template.render(&vars)?;
        let path = write_job_script(&block.dir, &script)?;
        let log = |name: &str| {
            let path = block.dir.join(name);
            File::create(&path).map_err(|source| ProviderError::Io { path, source })
        };
        let mut cmd = Command::new("bash");
        cmd.arg(&path)
            .current_dir(&block.dir)
            .stdin(Stdio::null())
            .stdout(log("stdout")?)
            .stderr(log("stderr")?)
            .process_group(0);
        let child = cmd.spawn().map_err(|source| ProviderError::Spawn {
            command: command_line(&cmd),
            source,
        })?;
        let id = JobId(child.id().to_string());
        let live = LiveJob {
            pgid: Pid::from_raw(child.id() as i32),
            child,
            deadline: block.walltime.map(|w| Instant::now() + w),
            walltime: block.walltime,
            ending: None,
        };
        tracing::info!(block = %block.block_id, job = %id, "started local block");
        self.jobs().insert(id.clone(), Job::Live(live));
        Ok(id)
    }

    fn status(&self, ids: &[JobId]) -> Result<HashMap<JobId, JobStatus>, ProviderError> {
        let mut jobs = self.jobs();
        let now = Instant::now();
        let mut overdue = Vec::new();
        for id in ids {
            let Some(Job::Live(live)) = jobs.get_mut(id) else {
                continue;
            };
            if has_exited(live.pgid) {
                // Anything the script left in its group is an orphan now; the zombie
                // leader still holds the group's id, so this reaches only those.
                let _ = killpg(live.pgid, Signal::SIGKILL);
                if let Some(Job::Live(live)) = jobs.remove(id) {
                    jobs.insert(id.clone(), Job::Ended(reap(live)));
                }
            } else if live.deadline.is_some_and(|d| now >= d) {
                overdue.push(id.clone());
            }
        }
        let stopped = self.stop(&mut jobs, &overdue, Ending::Walltime);
        let answer = ids
            .iter()
            .map(|id| {
                let status = match jobs.get(id) {
                    Some(Job::Live(_)) => JobStatus::new(JobState::Running),
                    Some(Job::Ended(status)) => status.clone(),
                    None => JobStatus {
                        state: JobState::Unknown,
                        exit_code: None,
                        message: Some("not a job this local provider started".to_owned()),
                    },
                };
                (id.clone(), status)
            })
            .collect();
        stopped.map(|()| answer)
    }

    fn cancel(&self, ids: &[JobId]) -> Result<(), ProviderError> {
        let mut jobs = self.jobs();
        self.stop(&mut jobs, ids, Ending::Cancelled)
    }
}

impl Drop for LocalProvider {
    fn drop(&mut self) {
        let mut jobs = std::mem::take(self.jobs.get_mut().unwrap_or_else(|e| e.into_inner()));
        let live: Vec<JobId> = jobs
            .iter()
            .filter(|(_, job)| matches!(job, Job::Live(_)))
            .map(|(id, _)| id.clone())
            .collect();
        if !live.is_empty() {
            tracing::info!(
                blocks = live.len(),
                "local provider dropped; cancelling its blocks"
            );
            if let Err(e) = self.stop(&mut jobs, &live, Ending::Cancelled) {
                tracing::warn!("cancelling local blocks: {e}");
            }
        }
    }
}

/// Whether the group leader `pgid` has exited, without reaping it (`WNOWAIT`).
fn has_exited(pgid: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pgid), flags) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        // ECHILD: already reaped, which only `reap` does; EINTR: ask again next time.
        Err(Errno::ECHILD) => true,
        Err(_) => false,
    }
}

/// Reaps the leader and turns how it ended into the job's final status.
fn reap(mut live: LiveJob) -> JobStatus {
    let status = match live.child.wait() {
        Ok(status) => status,
        Err(e) => {
            return JobStatus {
                state: JobState::Unknown,
                exit_code: None,
                message: Some(format!("could not reap the job script: {e}")),
            }
        }
    };
    let code = status.code();
    match live.ending {
        Some(Ending::Cancelled) => JobStatus {
            state: JobState::Cancelled,
            exit_code: code,
            message: Some(format!(
                "cancelled; the job script ended with {}",
                describe(status)
            )),
        },
        Some(Ending::Walltime) => JobStatus {
            state: JobState::Timeout,
            exit_code: code,
            message: Some(format!(
                "walltime {} reached",
                live.walltime.map(format_walltime).unwrap_or_default()
            )),
        },
        None if status.success() => JobStatus {
            state: JobState::Completed,
            exit_code: Some(0),
            message: None,
        },
        None => JobStatus {
            state: JobState::Failed,
            exit_code: code,
            message: Some(format!("the job script ended with {}", describe(status))),
        },
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("signal {signal}"),
            Err(_) => format!("signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

fn signal_group(id: &JobId, pgid: Pid, signal: Signal) -> Result<(), ProviderError> {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(ProviderError::Signal {
            job: id.0.clone(),
            source,
        }),
    }
}

/// Whether any process of group `pgid` is still running (zombies do not count: they have
/// ended and only wait to be reaped). Reads `/proc`; where it cannot, answers `true`, so
/// that a cancel waits its full grace period before SIGKILL.
fn group_has_live_members(pgid: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            return false;
        };
        matches!(proc_stat(pid), Some((state, pgrp)) if pgrp == pgid.as_raw() && !ended(state))
    })
}

/// Whether process `pid` exists and has not ended (a zombie has ended). Linux only.
#[cfg(test)]
pub(crate) fn process_is_alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if !ended(state))
}

fn ended(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

/// State and process group of `pid` from `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_reads_our_own_state_and_group() {
        let me = std::process::id() as i32;
        let (state, pgrp) = proc_stat(me).unwrap();
        assert!(!ended(state));
        assert_eq!(pgrp, nix::unistd::getpgrp().as_raw());
        assert!(process_is_alive(me));
        assert!(!process_is_alive(i32::MAX));
    }
}
