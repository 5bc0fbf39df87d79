//! A worker slot: one thread that owns at most one warm worker, for one container at a
//! time, and runs one task at a time on it. The main thread decides which slot a task
//! goes to ([`crate::pool`]); the slot starts, switches, replaces and retires its worker
//! as the task's container requires.

use crate::failures::StartFailures;
use crate::pool::WorkerKind;
use crate::ready::ReadyQueue;
use crate::reports::ReportSender;
use crate::yielding::Yielding;
use scifaas_protocol::{
    Actor, ErrorKind, TaskError, TaskId, TaskResult, TaskSpec, TaskState, Transition,
};
use scifaas_worker::{ContainerRuntimes, Worker, WorkerCommand, WorkerInput, WorkerKiller};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A task is written to its worker behind the running one only if the running task's
/// function last ran at most this long (in microseconds): the wait it saves, a round
/// trip through the slot thread, is under 1 % of longer tasks, and a task written behind
/// one that runs long waits for it even if another worker comes free.
const SEND_AHEAD_MAX_RUN_US: i64 = scifaas_protocol::interchange::WRITE_AHEAD_MAX_RUN_US;

/// Behind a function that last ran at most this long (microseconds), up to
/// [`DEEP_AHEAD`] tasks are written at once. For calls this short the worker's own
/// overhead dominates: with one task behind the running one it spends ~36 us of CPU per
/// no-op task (~59 us fed one at a time), with eight in its pipe ~20 us (it reads several frames per system call and never
/// sleeps between them). A task then waits behind at most 1.6 ms of such calls.
const DEEP_AHEAD_MAX_RUN_US: i64 = 200;

/// The most tasks written behind a running one.
const DEEP_AHEAD: usize = 8;

/// How long a retired worker gets to exit once its input is closed, before SIGKILL. A
/// clean exit matters for runtimes that clean up after their process (`docker run --rm`).
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// How long a slot whose worker died of SIGTERM (or SIGINT, SIGHUP) waits for the
/// manager to be signalled too before reporting the death as the task's failure. A batch
/// system ending a job signals all its processes in one pass, microseconds apart.
const JOB_END_GRACE: Duration = Duration::from_secs(1);

/// What the main thread tells a slot.
// Sent once per task through a channel: a few hundred bytes moved beat a box per task.
#[allow(clippy::large_enum_variant)]
pub enum SlotOrder {
    /// Run this task in a worker of this kind, starting or switching one if needed.
    Run { task: TaskSpec, kind: WorkerKind },
    /// Stop the worker (it has been idle too long).
    Retire,
}

/// What a slot tells the main thread.
#[allow(clippy::large_enum_variant)] // as for SlotOrder
pub enum SlotEvent {
    /// A task is finished; the slot now holds a worker of `kind` (`None`: no worker),
    /// and runs `next` on it, a task it took from the ready queue (`None`: it is free).
    Done {
        slot: usize,
        result: TaskResult,
        kind: Option<WorkerKind>,
        next: Option<Lined>,
    },
    /// The slot had to start a worker for its task, which runs from now on (its walltime
    /// starts now).
    Started { slot: usize },
    /// The slot's worker is gone and could not be replaced.
    Empty { slot: usize },
}

impl SlotEvent {
    /// Whether this report may wait for the main thread to come by while it holds
    /// results (`reports.rs`): a task done while the slot goes on with one it took itself.
    pub fn may_wait_for_main(&self) -> bool {
        matches!(self, SlotEvent::Done { next: Some(_), .. })
    }
}

/// A task a slot took from the ready queue, as the main thread tracks it.
pub struct Lined {
    pub task_id: TaskId,
    pub walltime: Option<Duration>,
}

impl Lined {
    fn of(task: &TaskSpec) -> Lined {
        Lined {
            task_id: task.task_id,
            walltime: task.walltime_ms.map(Duration::from_millis),
        }
    }
}

/// What every slot shares.
#[derive(Clone)]
pub struct SlotShared {
    pub runtimes: Arc<ContainerRuntimes>,
    pub failures: Arc<StartFailures>,
    /// Workers retired to make room for another container's (exposed in heartbeats).
    pub switches: Arc<AtomicU64>,
    pub host: String,
    /// Tasks lined up behind busy workers.
    pub ready: Arc<ReadyQueue>,
    /// Set when the manager stops: a slot then takes no further task and does not
    /// replace a worker that died.
    pub stopping: Arc<AtomicBool>,
}

/// The main thread's handle on a slot.
pub struct SlotHandle {
    pub orders: Sender<SlotOrder>,
    /// Set by the watchdog before it kills the worker, so the slot reports a walltime
    /// failure rather than a crash.
    pub walltime_hit: Arc<AtomicBool>,
    /// The slot's current worker, for this thread (None while none runs).
    worker: Arc<Mutex<Option<WorkerHandles>>>,
    pub thread: std::thread::JoinHandle<()>,
}

/// What the main thread may do to a slot's worker without the slot thread.
#[derive(Clone)]
struct WorkerHandles {
    killer: WorkerKiller,
    input: WorkerInput,
}

impl SlotHandle {
    /// Kills the slot's worker because its task ran past its walltime.
    pub fn kill_for_walltime(&self) {
        if let Some(killer) = self.killer() {
            self.walltime_hit.store(true, Ordering::Release);
            killer.kill();
        }
    }

    /// Kills the slot's worker, whatever it is doing (manager shutdown).
    pub fn kill_worker(&self) {
        if let Some(killer) = self.killer() {
            killer.kill();
        }
    }

    fn killer(&self) -> Option<WorkerKiller> {
        let worker = self.worker.lock().ok()?;
        worker.as_ref().map(|w| w.killer.clone())
    }

    /// Writes `task` to the slot's worker now, if that worker is idle
    /// ([`WorkerInput::write_if_idle`]), so that it starts without waiting for the slot
    /// thread to wake up; the slot, sent the task next, reads its result. Call it only
    /// for a slot that holds a warm worker of the task's kind and has no task: the worker
    /// must run this task next. If it is not written here, the slot writes it.
    pub fn write_if_idle(&self, task: &TaskSpec) {
        if let Some(worker) = self.worker.lock().ok().as_ref().and_then(|w| w.as_ref()) {
            worker.input.write_if_idle(task);
        }
    }
}

/// Starts a slot thread, which starts a worker of `initial` kind at once so that the
/// first task finds it warm. `base` is the command of a worker outside any container
/// (with this slot's accelerator pinned in its environment). The slot reports through
/// `reports`, which wakes the main thread's poll when it must.
pub fn spawn_slot<W: Fn() + Send + 'static>(
    slot: usize,
    base: WorkerCommand,
    initial: WorkerKind,
    shared: SlotShared,
    reports: ReportSender<W>,
) -> SlotHandle {
    let (orders_tx, orders) = std::sync::mpsc::channel();
    let walltime_hit = Arc::new(AtomicBool::new(false));
    let worker = Arc::new(Mutex::new(None));
    let state = SlotState {
        slot,
        base,
        shared,
        walltime_hit: walltime_hit.clone(),
        worker: worker.clone(),
        current: None,
        run_times: HashMap::new(),
        yielding: Yielding::new(),
    };
    // The worker is spawned from this thread, which lives as long as the slot: a
    // runtime that ties its child's life to its parent's (bwrap --die-with-parent uses
    // PR_SET_PDEATHSIG, which follows the spawning *thread*) keeps the worker alive.
    let thread = std::thread::Builder::new()
        .name(format!("slot-{slot}"))
        .spawn(move || state.serve(initial, orders, reports))
        .expect("spawning a slot thread");
    SlotHandle {
        orders: orders_tx,
        walltime_hit,
        worker,
        thread,
    }
}

struct SlotState {
    slot: usize,
    base: WorkerCommand,
    shared: SlotShared,
    walltime_hit: Arc<AtomicBool>,
    /// Handles on `current`'s worker for the main thread.
    worker: Arc<Mutex<Option<WorkerHandles>>>,
    current: Option<(WorkerKind, Worker)>,
    /// How long each function (by hash) ran last on this slot, in microseconds.
    run_times: HashMap<String, i64>,
    /// This thread's scheduling policy, by whether its worker has tasks queued.
    yielding: Yielding,
}

impl SlotState {
    fn serve(
        mut self,
        initial: WorkerKind,
        orders: Receiver<SlotOrder>,
        reports: ReportSender<impl Fn()>,
    ) {
        // Workers inherit this thread's timer slack (fork and exec keep it). Linux lets a
        // sleeping thread wake up to 50 us late so that wake-ups can be coalesced to
        // save power; a worker runs someone's computation, whose sleeps and timeouts
        // should end when they are due (a 10 ms sleep: 10.17 ms p50 with the default
        // slack, 10.12 ms with 1 ns, on this kind of VM).
        if let Err(e) = nix::sys::prctl::set_timerslack(1) {
            tracing::debug!(slot = self.slot, "cannot set the timer slack: {e}");
        }
        let send = |event: SlotEvent| reports.send(event);
        if self.start(&initial).is_err() && !send(SlotEvent::Empty { slot: self.slot }) {
            return;
        }
        let mut next: Option<(TaskSpec, WorkerKind)> = None;
        // Tasks written to the worker behind `next`, in the order it runs them.
        let mut written: VecDeque<TaskSpec> = VecDeque::new();
        loop {
            let (task, kind) = match next.take() {
                Some(lined_up) => lined_up,
                None => {
                    // Idle, this thread is woken for a lone task, whose result someone
                    // waits for: it must not wait for a busy core.
                    self.yielding.set(false);
                    match orders.recv() {
                        Ok(SlotOrder::Retire) => {
                            self.retire("idle");
                            continue;
                        }
                        Ok(SlotOrder::Run { task, kind }) => (task, kind),
                        Err(_) => break,
                    }
                }
            };
            // Tasks lined up behind this one go to the worker with it, each to start the
            // moment the one before ends, when this one is expected to be short: one
            // written behind a long task would wait for it even if another worker came
            // free.
            let depth = if self.shared.stopping.load(Ordering::Acquire) {
                0
            } else {
                self.ahead_depth(&task)
            };
            let mut fresh = Vec::new();
            while written.len() + fresh.len() < depth {
                match self.shared.ready.take(&kind) {
                    Some(task) => fresh.push(task),
                    None => break,
                }
            }
            // Woken for this task's result while others are queued behind it, this
            // thread must not preempt the worker running them.
            self.yielding.set(!written.is_empty() || !fresh.is_empty());
            let (result, died, sent) = self.run(&task, &kind, &fresh, &send);
            // Those written are now the worker's; the others go back to the line.
            let mut fresh = fresh.into_iter();
            written.extend(fresh.by_ref().take(sent));
            for unsent in fresh.rev() {
                self.shared.ready.give_back(unsent, kind.clone());
            }
            let timing = &result.timing;
            if timing.exec_start > 0 && timing.exec_end >= timing.exec_start {
                let ran = timing.exec_end - timing.exec_start;
                match self.run_times.get_mut(&task.function.hash) {
                    Some(last) => *last = ran,
                    None => {
                        self.run_times.insert(task.function.hash.clone(), ran);
                    }
                }
            }
            let holds = self.current.as_ref().map(|(k, _)| k.clone());
            let lost_worker = holds.is_none() && died;
            let stopping = self.shared.stopping.load(Ordering::Acquire);
            if died && stopping {
                // The worker died as the manager stops: one signal ended the pilot for
                // both (a batch system signals every process of the job). That is not
                // the task's failure: it goes unreported, and the interchange retries
                // it or fails it with the manager ("manager lost").
                break;
            }
            // The next task of the kind this worker serves, taken before the report so
            // that the report says which task the slot is busy with now. Tasks written
            // ahead that this worker will not run (it died, or the manager stops) never
            // started: they go back to the front of the line, in order.
            if holds.as_ref() == Some(&kind) && !stopping {
                next = written.pop_front().map(|t| (t, kind.clone()));
            } else {
                while let Some(unrun) = written.pop_back() {
                    self.shared.ready.give_back(unrun, kind.clone());
                }
            }
            if next.is_none() && !stopping {
                if let Some(holds) = &holds {
                    next = self.shared.ready.take(holds).map(|t| (t, holds.clone()));
                }
            }
            if !send(SlotEvent::Done {
                slot: self.slot,
                result,
                kind: holds,
                next: next.as_ref().map(|(t, _)| Lined::of(t)),
            }) {
                break;
            }
            // Replace a worker that died after its result went out, so that the next
            // task finds one warm; a replacement that fails leaves the slot empty.
            if lost_worker
                && !stopping
                && self.start(&kind).is_err()
                && !send(SlotEvent::Empty { slot: self.slot })
            {
                break;
            }
        }
        self.retire("the manager is stopping");
    }

    /// How many tasks may be written behind `task`, by how long its function last ran
    /// here: none behind one not seen yet or long, one behind a short one, several
    /// behind a very short one.
    fn ahead_depth(&self, task: &TaskSpec) -> usize {
        match self.run_times.get(&task.function.hash) {
            Some(&us) if us <= DEEP_AHEAD_MAX_RUN_US => DEEP_AHEAD,
            Some(&us) if us <= SEND_AHEAD_MAX_RUN_US => 1,
            _ => 0,
        }
    }

    /// Runs one task in a worker of `kind`, starting one first when the slot holds
    /// another kind or none. Answers the result, whether a worker died running it, and
    /// how many of `ahead` (tasks of the same kind) were written to the worker behind it
    /// ([`Worker::run_and_send_ahead`]).
    fn run(
        &mut self,
        task: &TaskSpec,
        kind: &WorkerKind,
        ahead: &[TaskSpec],
        send: &impl Fn(SlotEvent) -> bool,
    ) -> (TaskResult, bool, usize) {
        if !self.current.as_ref().is_some_and(|(k, _)| k == kind) {
            if let Some(error) = self.shared.failures.recent(kind) {
                return (
                    finished(TaskResult::failed(task.task_id, error), None),
                    false,
                    0,
                );
            }
            if let Err(error) = self.start(kind) {
                return (
                    finished(TaskResult::failed(task.task_id, error), None),
                    false,
                    0,
                );
            }
            send(SlotEvent::Started { slot: self.slot });
        }
        let (_, worker) = self.current.as_mut().expect("a worker of the task's kind");
        let running = Transition::now(TaskState::Running, Actor::Manager);
        let (reply, sent) = worker.run_and_send_ahead(task, ahead);
        match reply {
            Ok(reply) => (
                finished(reply.into_task_result(), Some(running)),
                false,
                sent,
            ),
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
                    err.to_task_error()
                };
                if err.is_termination_by_signal() {
                    // Most likely the pilot is ending: the same signal is on its way to
                    // the manager. Give it a moment, so that the task goes down with the
                    // manager (retried elsewhere) rather than failing here.
                    await_stopping(&self.shared.stopping, JOB_END_GRACE);
                }
                let died = !worker.is_usable();
                if died {
                    self.publish(None);
                    self.current = None;
                }
                let result = TaskResult::failed(task.task_id, error);
                (finished(result, Some(running)), died, sent)
            }
        }
    }

    /// Starts a worker of `kind` in place of the slot's worker, unless one failed to
    /// start recently. A failure is remembered and answered as the error of the task
    /// that needed the worker. What can be checked without running anything (the
    /// runtime is installed, the image exists) is checked before the current worker is
    /// retired, so that a broken container does not cost the slot its warm worker.
    fn start(&mut self, kind: &WorkerKind) -> Result<(), TaskError> {
        if let Some(error) = self.shared.failures.recent(kind) {
            return Err(error);
        }
        let command = match &kind.0 {
            None => Ok(self.base.clone()),
            Some(spec) => self.shared.runtimes.command(spec, &self.base).map_err(|e| {
                TaskError::system(
                    ErrorKind::Endpoint,
                    e.type_name(),
                    format!("could not start a worker in the {kind}: {e}"),
                )
            }),
        };
        let started = command.and_then(|command| {
            if self.current.is_some() {
                self.retire(&format!("switching to the {kind}"));
                self.shared.switches.fetch_add(1, Ordering::Relaxed);
            }
            // A process inherits its parent thread's policy: workers get the default.
            self.yielding.set(false);
            Worker::spawn(&command).map_err(|e| {
                TaskError::system(
                    ErrorKind::Endpoint,
                    "WorkerStartFailed",
                    format!(
                        "could not start a worker in the {kind} on {}: {e}",
                        self.shared.host
                    ),
                )
            })
        });
        match started {
            Ok(worker) => {
                tracing::debug!(slot = self.slot, pid = worker.pid(), %kind, "worker ready");
                self.shared.failures.clear(kind);
                self.publish(Some(&worker));
                self.current = Some((kind.clone(), worker));
                Ok(())
            }
            Err(error) => {
                tracing::error!(slot = self.slot, "{}", error.message);
                self.shared.failures.record(kind, &error);
                Err(error)
            }
        }
    }

    /// Stops the slot's worker, if any: closes its input and gives it a moment to exit.
    fn retire(&mut self, why: &str) {
        if let Some((kind, worker)) = self.current.take() {
            self.publish(None);
            tracing::debug!(slot = self.slot, pid = worker.pid(), %kind, "retiring worker: {why}");
            worker.shutdown(RETIRE_GRACE);
        }
    }

    /// Tells the main thread which worker the slot holds.
    fn publish(&self, worker: Option<&Worker>) {
        if let Ok(mut slot) = self.worker.lock() {
            *slot = worker.map(|w| WorkerHandles {
                killer: w.killer(),
                input: w.input(),
            });
        }
    }
}

/// `result` with the manager's stamps: `running` (when it reached a worker, if it did)
/// and its end state.
fn finished(mut result: TaskResult, running: Option<Transition>) -> TaskResult {
    let end_state = if result.is_success() {
        TaskState::Success
    } else {
        TaskState::Failed
    };
    result.transitions.extend(running);
    result
        .transitions
        .push(Transition::now(end_state, Actor::Manager));
    result
}

/// Waits up to `grace` for the manager to start stopping (the caller reads the flag).
fn await_stopping(stopping: &AtomicBool, grace: Duration) {
    let deadline = Instant::now() + grace;
    while !stopping.load(Ordering::Acquire) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}
