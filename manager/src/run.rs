//! The manager's main loop: registration, dispatch to slots by container, result
//! batching, heartbeats, idle retirement and the walltime watchdog.

use crate::failures::StartFailures;
use crate::node::node_name;
use crate::pool::{Placement, Pool, Running, WorkerKind};
use crate::ready::ReadyQueue;
use crate::reports::Reports;
use crate::slot::{spawn_slot, SlotEvent, SlotHandle, SlotOrder, SlotShared};
use anyhow::{bail, Context};
use bytes::Bytes;
use scifaas_protocol::interchange::{InterchangeMessage, ManagerMessage, Registration};
use scifaas_protocol::time::now_micros;
use scifaas_protocol::{
    decode, decode_shared, encode, BlockId, ContainerSpec, ErrorKind, ManagerId, TaskError,
    TaskResult, TaskSpec, PROTOCOL_VERSION,
};
use scifaas_worker::{ContainerRuntimes, WorkerCommand};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The variables that pin a worker to its accelerator: NVIDIA (CUDA), AMD (ROCm) and
/// Intel (Level Zero) runtimes each read their own.
pub const ACCELERATOR_VARIABLES: &[&str] = &[
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "ZE_AFFINITY_MASK",
];

/// How long tasks for a container whose worker failed to start fail at once, before a
/// start is tried again, by default.
pub const DEFAULT_START_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How long a result may wait for others while tasks still run on this manager.
const RESULT_HOLD: Duration = Duration::from_micros(500);
/// Results sent at once without waiting for more.
const MAX_HELD_RESULTS: usize = 256;

/// Everything a manager needs to know; built by `scifaas manager` from its arguments and
/// environment.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// The interchange's ZeroMQ address, e.g. `tcp://10.1.2.3:54001`.
    pub interchange: String,
    pub block_id: BlockId,
    /// The batch job this manager runs in, if any (`SLURM_JOB_ID`, `PBS_JOBID`, ...).
    pub job_id: Option<String>,
    /// Workers to keep (capped at the number of `accelerators` when there are any).
    pub workers: u32,
    /// The endpoint's secret (from `SCIFAAS_ENDPOINT_SECRET`, never a command line).
    pub secret: String,
    /// How a worker starts outside any container.
    pub worker: WorkerCommand,
    /// How workers start in containers: the runtimes' templates and executables.
    pub containers: Arc<ContainerRuntimes>,
    /// The container of a task whose function names none (`engine.container`); `None`:
    /// such tasks run outside any container. The slots start warm in it.
    pub default_container: Option<ContainerSpec>,
    /// Workers idle this long are stopped (`engine.worker_idle_timeout`); `None`: never.
    pub worker_idle_timeout: Option<Duration>,
    /// Accelerator ids (`engine.available_accelerators`): worker `i` sees only
    /// `accelerators[i]`, through [`ACCELERATOR_VARIABLES`].
    pub accelerators: Vec<String>,
    /// After a worker fails to start in a container, tasks for that container fail at
    /// once with that failure for this long (default [`DEFAULT_START_RETRY_AFTER`]).
    pub start_retry_after: Duration,
    /// How long to wait for the interchange to answer the registration.
    pub register_timeout: Duration,
    /// The pilot job's walltime: the manager stops taking work a margin before it ends
    /// ([`drain_margin`]) and exits once its tasks are done. `None`: no limit.
    pub walltime: Option<Duration>,
}

/// How long before its pilot's walltime a manager stops taking work: 5 % of the
/// walltime, at least 5 s and at most 2 min, so that running tasks can finish and the
/// manager can say goodbye before the scheduler kills the job.
pub fn drain_margin(walltime: Duration) -> Duration {
    (walltime / 20).clamp(Duration::from_secs(5), Duration::from_secs(120))
}

impl ManagerConfig {
    /// A manager of one worker outside containers, with every other setting at its
    /// default.
    pub fn new(
        interchange: impl Into<String>,
        block_id: BlockId,
        secret: impl Into<String>,
    ) -> Self {
        Self {
            interchange: interchange.into(),
            block_id,
            job_id: None,
            workers: 1,
            secret: secret.into(),
            worker: WorkerCommand::default(),
            containers: Arc::new(ContainerRuntimes::builtin()),
            default_container: None,
            worker_idle_timeout: None,
            accelerators: Vec::new(),
            start_retry_after: DEFAULT_START_RETRY_AFTER,
            register_timeout: Duration::from_secs(60),
            walltime: None,
        }
    }

    /// The workers this manager runs: `workers`, at most one per accelerator.
    pub fn worker_count(&self) -> u32 {
        if self.accelerators.is_empty() {
            self.workers
        } else {
            self.workers.min(self.accelerators.len() as u32)
        }
    }

    /// The command of worker `slot` outside containers: [`ManagerConfig::worker`] with
    /// its accelerator pinned.
    fn slot_command(&self, slot: usize) -> WorkerCommand {
        let mut command = self.worker.clone();
        if let Some(id) = self.accelerators.get(slot) {
            for var in ACCELERATOR_VARIABLES {
                command.env.retain(|(k, _)| k != var);
                command.env.push(((*var).to_owned(), id.clone()));
            }
        }
        command
    }
}

/// Runs a manager until the interchange tells it to stop, or is lost.
pub fn run(config: ManagerConfig) -> anyhow::Result<()> {
    let workers = config.worker_count();
    anyhow::ensure!(workers > 0, "a manager needs at least one worker");
    if workers < config.workers {
        tracing::info!(
            workers,
            asked = config.workers,
            "one worker per accelerator: fewer workers than asked"
        );
    }
    let started = Instant::now();
    let drain_at = config
        .walltime
        .map(|w| started + w.saturating_sub(drain_margin(w)));
    // SIGTERM/SIGINT (a scheduler ending the job, an admin) end the manager cleanly: its
    // workers are their own process groups and would outlive it otherwise.
    let (signals_rx, signals_tx) = std::os::unix::net::UnixStream::pair()?;
    signals_rx.set_nonblocking(true)?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(signal, signals_tx.try_clone()?)?;
    }
    let context = zmq::Context::new();
    let dealer = context.socket(zmq::DEALER)?;
    // The scheduler's name for this node, so that a lost manager names the node to look
    // at; several emulated nodes may share one host name.
    let node = node_name();
    let manager_id = ManagerId(format!(
        "{}-{}-{}",
        node,
        std::process::id(),
        random_suffix()
    ));
    dealer.set_identity(manager_id.0.as_bytes())?;
    dealer.set_linger(1000)?;
    dealer
        .connect(&config.interchange)
        .with_context(|| format!("connecting to the interchange at {}", config.interchange))?;

    let registration = Registration {
        protocol_version: PROTOCOL_VERSION,
        manager_id: manager_id.clone(),
        block_id: config.block_id.clone(),
        job_id: config.job_id.clone(),
        host: node.clone(),
        workers,
        cores: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: total_memory_bytes(),
        secret: config.secret.clone(),
        accepts_until: config
            .walltime
            .map(|w| now_micros() + w.saturating_sub(drain_margin(w)).as_micros() as i64),
    };
    dealer.send(encode(&ManagerMessage::Register(registration)), 0)?;
    let (period, threshold) = await_registration(&dealer, config.register_timeout)?;
    tracing::info!(%manager_id, interchange = %config.interchange, workers, "registered");

    // Slots report through a channel and wake the poll through this inproc pair.
    let wake_addr = format!("inproc://slot-wake-{}", manager_id.0);
    let wake_rx = context.socket(zmq::PULL)?;
    wake_rx.bind(&wake_addr)?;
    let reports = Reports::new();
    let shared = SlotShared {
        runtimes: config.containers.clone(),
        failures: Arc::new(StartFailures::new(config.start_retry_after)),
        switches: Arc::new(AtomicU64::new(0)),
        host: node,
        ready: Arc::new(ReadyQueue::default()),
        stopping: Arc::new(AtomicBool::new(false)),
    };
    let default_kind = WorkerKind(config.default_container.clone());
    let slots: Vec<SlotHandle> = (0..workers as usize)
        .map(|i| {
            let push = context.socket(zmq::PUSH).expect("inproc socket");
            push.connect(&wake_addr).expect("inproc connect");
            let push = std::sync::Mutex::new(push);
            let wake = move || {
                if let Ok(p) = push.lock() {
                    let _ = p.send(&[][..], zmq::DONTWAIT);
                }
            };
            let base = config.slot_command(i);
            spawn_slot(
                i,
                base,
                default_kind.clone(),
                shared.clone(),
                reports.sender(wake),
            )
        })
        .collect();

    let mut manager = Manager {
        dealer,
        slots,
        pool: Pool::new(workers as usize, &default_kind),
        shared,
        default_kind,
        idle_timeout: config.worker_idle_timeout,
        queue: VecDeque::new(),
        held: Vec::new(),
        held_since: None,
        period,
        threshold,
        last_heard: Instant::now(),
        last_sent: Instant::now(),
        draining: false,
        drain_at,
    };
    let outcome = manager.serve(&wake_rx, &reports, &signals_rx);
    // Results still held go out before the manager does (best effort: the interchange
    // may be gone, and it runs again whatever it never heard back about).
    let _ = manager.send_results(true);
    manager.stop();
    outcome
}

struct Manager {
    dealer: zmq::Socket,
    slots: Vec<SlotHandle>,
    pool: Pool,
    shared: SlotShared,
    /// The kind of a task whose function names no container.
    default_kind: WorkerKind,
    idle_timeout: Option<Duration>,
    /// Tasks received beyond the free slots (the interchange's prefetch).
    queue: VecDeque<TaskSpec>,
    /// Results not sent yet ([`Manager::send_results`]), and since when.
    held: Vec<TaskResult>,
    held_since: Option<Instant>,
    period: Duration,
    threshold: Duration,
    last_heard: Instant,
    last_sent: Instant,
    draining: bool,
    /// When to stop taking work, ahead of the pilot's walltime.
    drain_at: Option<Instant>,
}

/// A message from the interchange as the owner of the `Bytes` its tasks are slices of.
struct Received(zmq::Message);

impl AsRef<[u8]> for Received {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Manager {
    fn serve(
        &mut self,
        wake_rx: &zmq::Socket,
        reports: &Reports,
        signals: &std::os::unix::net::UnixStream,
    ) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        loop {
            self.publish_holding(reports)?;
            let mut timeout = self.poll_timeout();
            if let Some(at) = self.drain_at.filter(|_| !self.draining) {
                timeout = timeout.min(at.saturating_duration_since(Instant::now()));
            }
            let (interchange_ready, slots_ready, signalled) = {
                let mut items = [
                    self.dealer.as_poll_item(zmq::POLLIN),
                    wake_rx.as_poll_item(zmq::POLLIN),
                    zmq::PollItem::from_fd(signals.as_raw_fd(), zmq::POLLIN),
                ];
                zmq::poll(&mut items, timeout.as_millis().max(1) as i64)?;
                (
                    items[0].is_readable(),
                    items[1].is_readable(),
                    items[2].is_readable(),
                )
            };
            if signalled {
                tracing::info!("terminated by a signal; stopping workers");
                // At once: a slot whose worker the same signal killed is waiting on this.
                self.shared.stopping.store(true, Ordering::Release);
                return Ok(());
            }
            if !self.draining && self.drain_at.is_some_and(|at| Instant::now() >= at) {
                tracing::info!("the pilot's walltime is near: taking no more work");
                self.draining = true;
                self.send(&ManagerMessage::Draining)?;
            }
            if slots_ready {
                while wake_rx.recv_bytes(zmq::DONTWAIT).is_ok() {}
            }
            // Every time round, woken or not: a slot does not wake us for a task done
            // while we hold results (and the poll's timeout is the hold's end).
            self.on_slot_events(reports)?;
            if interchange_ready {
                // Decoded from ZeroMQ's own buffer, and the payloads stay in it: a slot
                // writes each to its worker from there (the buffer goes with the last).
                while let Ok(frame) = self.dealer.recv_msg(zmq::DONTWAIT) {
                    self.last_heard = Instant::now();
                    let frame = Bytes::from_owner(Received(frame));
                    match decode_shared::<InterchangeMessage>(&frame) {
                        Ok(message) => {
                            if self.on_interchange_message(message)? {
                                return Ok(());
                            }
                        }
                        Err(err) => tracing::warn!("dropping a malformed frame: {err}"),
                    }
                }
            }
            self.send_results(false)?;
            self.enforce_walltime();
            self.retire_idle_workers();
            if self.last_heard.elapsed() > self.threshold {
                bail!(
                    "the interchange has been silent for {:?} (threshold {:?}); giving up",
                    self.last_heard.elapsed(),
                    self.threshold
                );
            }
            if self.last_sent.elapsed() >= self.period {
                self.send(&ManagerMessage::Heartbeat {
                    busy_workers: self.pool.busy_count() as u32,
                    container_switches: self.shared.switches.load(Ordering::Relaxed),
                })?;
            }
            if self.draining && self.idle() {
                self.send_results(true)?;
                self.send(&ManagerMessage::Bye)?;
                tracing::info!("drained; exiting");
                return Ok(());
            }
        }
    }

    /// Returns true when the manager should exit.
    fn on_interchange_message(&mut self, message: InterchangeMessage) -> anyhow::Result<bool> {
        match message {
            InterchangeMessage::Tasks { tasks } => {
                self.queue.extend(tasks);
                self.dispatch();
            }
            InterchangeMessage::Heartbeat => {}
            InterchangeMessage::Drain => {
                self.draining = true;
                self.send(&ManagerMessage::Draining)?;
            }
            InterchangeMessage::Shutdown => {
                tracing::info!("the interchange asked us to shut down");
                return Ok(true);
            }
            InterchangeMessage::Registered { .. } => {}
            InterchangeMessage::Rejected { reason } => {
                bail!("the interchange dropped this manager: {reason}")
            }
        }
        Ok(false)
    }

    /// Tells the slots whether we hold results (`reports.rs`). On clearing the flag,
    /// reads the reports once more: one queued by a slot that still saw it set did not
    /// wake us.
    fn publish_holding(&mut self, reports: &Reports) -> anyhow::Result<()> {
        if !self.held.is_empty() {
            reports.set_holding(true);
            return Ok(());
        }
        reports.set_holding(false);
        self.on_slot_events(reports)?;
        if !self.held.is_empty() {
            reports.set_holding(true);
        }
        Ok(())
    }

    fn on_slot_events(&mut self, reports: &Reports) -> anyhow::Result<()> {
        let Some(first) = reports.next() else {
            return Ok(());
        };
        let mut results = std::mem::take(&mut self.held);
        for event in std::iter::once(first).chain(std::iter::from_fn(|| reports.next())) {
            match event {
                SlotEvent::Done {
                    slot,
                    result,
                    kind,
                    next,
                } => {
                    self.pool.on_done(slot, kind.clone());
                    results.push(result);
                    if let (Some(next), Some(kind)) = (next, kind) {
                        let running = Running {
                            task_id: next.task_id,
                            deadline: next.walltime.map(|w| Instant::now() + w),
                            walltime: next.walltime,
                        };
                        self.pool.assign(slot, &kind, Placement::Warm, running);
                    }
                }
                SlotEvent::Started { slot } => {
                    // The container start is behind it: the task's walltime runs from now.
                    if let Some(running) = &mut self.pool.slots[slot].busy {
                        running.deadline = running.walltime.map(|w| Instant::now() + w);
                    }
                }
                SlotEvent::Empty { slot } => {
                    if self.pool.slots[slot].busy.is_none() {
                        self.pool.slots[slot].kind = None;
                    }
                }
            }
        }
        // Refill the slots before sending, so the next task starts as early as possible.
        self.dispatch();
        self.held = results;
        self.send_results(false)
    }

    /// Sends the results held, unless more are due soon: while other tasks run here, a
    /// result waits up to [`RESULT_HOLD`] for company, so that under load one message
    /// (and one wake-up of every thread on the way to the service) carries many results,
    /// and the interchange answers with a batch of tasks rather than one at a time. The
    /// last running task's result, as a lone call's, goes at once.
    fn send_results(&mut self, now: bool) -> anyhow::Result<()> {
        if self.held.is_empty() {
            self.held_since = None;
            return Ok(());
        }
        let since = *self.held_since.get_or_insert_with(Instant::now);
        let due = now
            || self.pool.busy_count() == 0
            || self.held.len() >= MAX_HELD_RESULTS
            || since.elapsed() >= RESULT_HOLD;
        if !due {
            return Ok(());
        }
        let mut results = std::mem::take(&mut self.held);
        self.held_since = None;
        let stamp = now_micros();
        for result in &mut results {
            result.timing.manager_sent = stamp;
        }
        self.send(&ManagerMessage::Results { results })
    }

    /// The container a task runs in: its function's, else the manager's default.
    fn kind_of(&self, task: &TaskSpec) -> WorkerKind {
        match &task.function.container {
            Some(spec) => WorkerKind(Some(spec.clone())),
            None => self.default_kind.clone(),
        }
    }

    /// Hands queued tasks to free slots, then lines up what is left behind busy workers.
    fn dispatch(&mut self) {
        // Tasks still lined up come back first: they are the oldest, and one may now
        // be better placed on a free slot.
        let back = self.shared.ready.drain();
        for (task, _) in back.into_iter().rev() {
            self.queue.push_front(task);
        }
        self.dispatch_to_free_slots();
        self.line_up();
    }

    /// Lines up the queued tasks of every kind that has a busy worker behind those
    /// workers (`ready.rs`); the others wait here for a slot to come free.
    fn line_up(&mut self) {
        if self.queue.is_empty() || self.draining {
            return;
        }
        let mut lined: HashMap<WorkerKind, bool> = HashMap::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        while let Some(task) = self.queue.pop_front() {
            let kind = self.kind_of(&task);
            let line = *lined.entry(kind.clone()).or_insert_with(|| {
                self.pool.busy_of_kind(&kind) > 0 && self.shared.failures.recent(&kind).is_none()
            });
            if line {
                self.shared.ready.push(task, kind);
            } else {
                kept.push_back(task);
            }
        }
        self.queue = kept;
    }

    /// Hands queued tasks to free slots ([`Pool::choose`]), oldest first; a task that
    /// must wait for a worker of its container lets later tasks of other containers pass.
    fn dispatch_to_free_slots(&mut self) {
        let mut queued: HashMap<WorkerKind, usize> = HashMap::new();
        for task in &self.queue {
            *queued.entry(self.kind_of(task)).or_default() += 1;
        }
        let mut lost = Vec::new();
        let mut i = 0;
        while i < self.queue.len() && self.pool.any_free() {
            let kind = self.kind_of(&self.queue[i]);
            if let Some(n) = queued.get_mut(&kind) {
                *n -= 1;
            }
            let failing = self.shared.failures.recent(&kind).is_some();
            let Some((slot, placement)) = self.pool.choose(&kind, failing, &queued) else {
                *queued.entry(kind).or_default() += 1;
                i += 1;
                continue;
            };
            let task = self.queue.remove(i).expect("index within the queue");
            let walltime = task.walltime_ms.map(Duration::from_millis);
            let running = Running {
                task_id: task.task_id,
                // A slot that starts a worker first says when the task really starts.
                deadline: match placement {
                    Placement::Warm => walltime.map(|w| Instant::now() + w),
                    _ => None,
                },
                walltime,
            };
            if placement == Placement::Switch {
                tracing::info!(slot, %kind, "switching a worker to another container");
            }
            self.pool.assign(slot, &kind, placement, running);
            // A lone task for a warm idle worker is written to it from here, one wake-up
            // sooner; the slot, sent it next, finds it written and reads its result.
            // Not when more of its kind wait: the slot writes those behind it at once,
            // and the worker reads them all in one go rather than the first alone.
            if placement == Placement::Warm && queued.get(&kind).is_none_or(|n| *n == 0) {
                self.slots[slot].write_if_idle(&task);
            }
            if let Err(mpsc::SendError(order)) =
                self.slots[slot].orders.send(SlotOrder::Run { task, kind })
            {
                // The slot thread is gone; this cannot happen while the manager runs.
                let SlotOrder::Run { task, .. } = order else {
                    unreachable!("a run order was sent")
                };
                tracing::error!(slot, task_id = %task.task_id, "slot thread is gone");
                self.pool.on_done(slot, None);
                lost.push(TaskResult::failed(
                    task.task_id,
                    TaskError::system(ErrorKind::WorkerDied, "WorkerDied", "worker slot is gone"),
                ));
            }
        }
        if !lost.is_empty() {
            let _ = self.send(&ManagerMessage::Results { results: lost });
        }
    }

    fn enforce_walltime(&mut self) {
        let now = Instant::now();
        for (slot, view) in self.pool.slots.iter().enumerate() {
            if let Some(Running {
                task_id,
                deadline: Some(deadline),
                ..
            }) = &view.busy
            {
                if now >= *deadline
                    && !self.slots[slot]
                        .walltime_hit
                        .load(std::sync::atomic::Ordering::Acquire)
                {
                    tracing::warn!(slot, %task_id, "task exceeded its walltime; killing its worker");
                    self.slots[slot].kill_for_walltime();
                }
            }
        }
    }

    /// Stops workers idle past `worker_idle_timeout`; their slots start a worker again
    /// when work comes.
    fn retire_idle_workers(&mut self) {
        let Some(timeout) = self.idle_timeout else {
            return;
        };
        for slot in self.pool.idle_past(timeout) {
            if self.slots[slot].orders.send(SlotOrder::Retire).is_ok() {
                tracing::debug!(slot, "worker idle for {timeout:?}; retiring it");
                self.pool.slots[slot].kind = None;
            }
        }
    }

    fn poll_timeout(&self) -> Duration {
        let now = Instant::now();
        let mut timeout = self.period.saturating_sub(self.last_sent.elapsed());
        let deadlines = self
            .pool
            .slots
            .iter()
            .filter_map(|s| s.busy.as_ref()?.deadline);
        let idle = self
            .idle_timeout
            .and_then(|t| self.pool.next_idle_deadline(t));
        let held = self.held_since.map(|since| since + RESULT_HOLD);
        for deadline in deadlines.chain(idle).chain(held) {
            timeout = timeout.min(deadline.saturating_duration_since(now));
        }
        timeout.max(Duration::from_millis(1))
    }

    fn idle(&self) -> bool {
        // A task a slot took from the ready queue keeps that slot busy until it reports.
        self.queue.is_empty() && self.shared.ready.is_empty() && self.pool.busy_count() == 0
    }

    fn send(&mut self, message: &ManagerMessage) -> anyhow::Result<()> {
        self.dealer
            .send(encode(message), 0)
            .context("sending to the interchange")?;
        self.last_sent = Instant::now();
        Ok(())
    }

    fn stop(self) {
        // Closing the task channels ends the slot threads, which kill their workers.
        self.shared.stopping.store(true, Ordering::Release);
        let Manager { slots, .. } = self;
        for slot in slots {
            // A slot stuck in a long task would block its thread: kill the worker first.
            slot.kill_worker();
            let SlotHandle { orders, thread, .. } = slot;
            drop(orders);
            let _ = thread.join();
        }
    }
}

fn await_registration(
    dealer: &zmq::Socket,
    timeout: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the interchange did not answer the registration within {timeout:?}");
        }
        if dealer.poll(zmq::POLLIN, left.as_millis() as i64)? == 0 {
            continue;
        }
        let frame = dealer.recv_bytes(0)?;
        match decode::<InterchangeMessage>(&frame) {
            Ok(InterchangeMessage::Registered {
                heartbeat_period_ms,
                heartbeat_threshold_ms,
            }) => {
                return Ok((
                    Duration::from_millis(heartbeat_period_ms.max(1)),
                    Duration::from_millis(heartbeat_threshold_ms.max(1)),
                ))
            }
            Ok(InterchangeMessage::Rejected { reason }) => {
                bail!("the interchange rejected this manager: {reason}")
            }
            Ok(other) => tracing::debug!("ignoring {other:?} before registration"),
            Err(err) => tracing::warn!("dropping a malformed frame: {err}"),
        }
    }
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}

fn total_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
