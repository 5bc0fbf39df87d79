//! Killing a worker from any thread without ever signalling a recycled pid.

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A cheap, cloneable handle that SIGKILLs one worker (and everything it started) from
/// any thread, e.g. the manager's walltime watchdog while another thread blocks in
/// [`crate::Worker::run`].
///
/// It signals the worker's process group, so subprocesses a function started die too.
/// Once the worker has been reaped, `kill` does nothing: the pid may belong to someone
/// else by then.
#[derive(Clone, Debug)]
pub struct WorkerKiller {
    inner: Arc<KillState>,
}

#[derive(Debug)]
struct KillState {
    pid: u32,
    /// Set, under the lock, in the same critical section that reaps the child.
    reaped: Mutex<bool>,
    killed: AtomicBool,
}

impl WorkerKiller {
    pub(crate) fn new(pid: u32) -> Self {
        Self {
            inner: Arc::new(KillState {
                pid,
                reaped: Mutex::new(false),
                killed: AtomicBool::new(false),
            }),
        }
    }

    /// The worker's pid on this host (the container runtime's, when there is a prefix),
    /// which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// SIGKILLs the worker's process group. Returns whether a signal was sent (false once
    /// the worker is gone). A task running on it fails with a
    /// [`crate::WorkerError::Died`] whose `killed` is true.
    pub fn kill(&self) -> bool {
        let sent = self.signal_group();
        if sent {
            self.inner.killed.store(true, Ordering::SeqCst);
        }
        sent
    }

    /// Whether [`WorkerKiller::kill`] has sent its signal.
    pub fn was_killed(&self) -> bool {
        self.inner.killed.load(Ordering::SeqCst)
    }

    /// Whether the worker process has been reaped.
    pub fn is_reaped(&self) -> bool {
        *self.lock()
    }

    /// SIGKILLs the group without counting it as a kill by the manager: clean-up of a
    /// worker that already failed, or of what it left behind.
    pub(crate) fn signal_group(&self) -> bool {
        let reaped = self.lock();
        if *reaped {
            return false;
        }
        let pgid = Pid::from_raw(self.inner.pid as i32);
        match killpg(pgid, Signal::SIGKILL) {
            Ok(()) => true,
            Err(Errno::ESRCH) => false,
            Err(e) => {
                tracing::warn!(pid = self.inner.pid, "could not kill worker group: {e}");
                false
            }
        }
    }

    /// Reaps `child` if it has exited, marking it reaped in the same critical section so
    /// no signal can race the pid's reuse. `Some` once reaped.
    pub(crate) fn try_reap(&self, child: &mut Child) -> Option<Option<ExitStatus>> {
        let mut reaped = self.lock();
        if *reaped {
            return Some(None);
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                *reaped = true;
                Some(Some(status))
            }
            Ok(None) => None,
            Err(e) => {
                // ECHILD: someone else reaped it; either way it is gone.
                tracing::debug!(pid = self.inner.pid, "waiting for worker: {e}");
                *reaped = true;
                Some(None)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.inner
            .reaped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
