//! A worker slot: one thread that owns one warm worker process and runs one task at a
//! time on it, replacing the worker when it dies.

use scifaas_protocol::{Actor, ErrorKind, TaskError, TaskResult, TaskSpec, TaskState, Transition};
use scifaas_worker::WorkerKiller;
use scifaas_worker::{Worker, WorkerCommand};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a slot tells the main thread.
pub enum SlotEvent {
    Done { slot: usize, result: TaskResult },
}

/// The main thread's handle on a slot.
pub struct SlotHandle {
    pub tasks: Sender<TaskSpec>,
    /// Set by the watchdog before it kills the worker, so the slot reports a walltime
    /// failure rather than a crash.
    pub walltime_hit: Arc<AtomicBool>,
    /// Kills the slot's current worker (None while none runs).
    pub killer: Arc<Mutex<Option<WorkerKiller>>>,
    pub thread: std::thread::JoinHandle<()>,
}

impl SlotHandle {
    /// Kills the slot's worker because its task ran past its walltime.
    pub fn kill_for_walltime(&self) {
        if let Some(killer) = self.killer.lock().ok().and_then(|k| k.clone()) {
            self.walltime_hit.store(true, Ordering::Release);
            killer.kill();
        }
    }

    /// Kills the slot's worker, whatever it is doing (manager shutdown).
    pub fn kill_worker(&self) {
        if let Some(killer) = self.killer.lock().ok().and_then(|k| k.clone()) {
            killer.kill();
        }
    }
}

/// Starts a slot thread. `wake` is called after each event is queued, so the main
/// thread's poll returns.
pub fn spawn_slot(
    slot: usize,
    command: WorkerCommand,
    events: Sender<SlotEvent>,
    wake: impl Fn() + Send + 'static,
) -> SlotHandle {
    let (tasks_tx, tasks) = std::sync::mpsc::channel();
    let walltime_hit = Arc::new(AtomicBool::new(false));
    let killer = Arc::new(Mutex::new(None));
    let state = SlotState {
        slot,
        command,
        walltime_hit: walltime_hit.clone(),
        killer: killer.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("slot-{slot}"))
        .spawn(move || state.serve(tasks, events, wake))
        .expect("spawning a slot thread");
    SlotHandle {
        tasks: tasks_tx,
        walltime_hit,
        killer,
        thread,
    }
}

struct SlotState {
    slot: usize,
    command: WorkerCommand,
    walltime_hit: Arc<AtomicBool>,
    killer: Arc<Mutex<Option<WorkerKiller>>>,
}

impl SlotState {
    fn serve(self, tasks: Receiver<TaskSpec>, events: Sender<SlotEvent>, wake: impl Fn()) {
        // Start warm: the worker is spawned before the first task arrives.
        let mut worker = self.start_worker();
        for task in tasks {
            let running = Transition::now(TaskState::Running, Actor::Manager);
            let mut result = match worker.as_mut() {
                Ok(w) => match w.run(&task) {
                    Ok(reply) => reply.into_task_result(),
                    Err(err) => {
                        let error = if self.walltime_hit.swap(false, Ordering::AcqRel) {
                            TaskError::system(
                                ErrorKind::Walltime,
                                "WalltimeExceeded",
                                format!(
                                    "task ran past its walltime of {} ms and its worker was killed",
                                    task.walltime_ms.unwrap_or(0)
                                ),
                            )
                        } else {
                            TaskError::system(ErrorKind::WorkerDied, "WorkerDied", err.to_string())
                        };
                        worker = self.start_worker();
                        TaskResult::failed(task.task_id, error)
                    }
                },
                Err(message) => {
                    let message = message.clone();
                    // A worker that cannot start fails its task, then we try again, with
                    // a pause so that a broken interpreter does not spin.
                    std::thread::sleep(Duration::from_millis(200));
                    worker = self.start_worker();
                    TaskResult::failed(
                        task.task_id,
                        TaskError::system(ErrorKind::Endpoint, "WorkerStartFailed", message),
                    )
                }
            };
            let end_state = if result.is_success() {
                TaskState::Success
            } else {
                TaskState::Failed
            };
            result.transitions.push(running);
            result
                .transitions
                .push(Transition::now(end_state, Actor::Manager));
            if events
                .send(SlotEvent::Done {
                    slot: self.slot,
                    result,
                })
                .is_err()
            {
                break;
            }
            wake();
        }
        if let Ok(w) = worker {
            w.kill();
        }
        self.set_killer(None);
    }

    fn set_killer(&self, killer: Option<WorkerKiller>) {
        if let Ok(mut slot) = self.killer.lock() {
            *slot = killer;
        }
    }

    fn start_worker(&self) -> Result<Worker, String> {
        self.set_killer(None);
        match Worker::spawn(&self.command) {
            Ok(worker) => {
                self.set_killer(Some(worker.killer()));
                tracing::debug!(slot = self.slot, pid = worker.pid(), "worker ready");
                Ok(worker)
            }
            Err(err) => {
                tracing::error!(slot = self.slot, "worker failed to start: {err}");
                Err(err.to_string())
            }
        }
    }
}
