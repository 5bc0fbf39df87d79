//! The manager's main loop: registration, dispatch to slots, result batching,
//! heartbeats and the walltime watchdog.

use crate::slot::{spawn_slot, SlotEvent, SlotHandle};
use anyhow::{bail, Context};
use scifaas_protocol::interchange::{InterchangeMessage, ManagerMessage, Registration};
use scifaas_protocol::time::now_micros;
use scifaas_protocol::{
    decode, encode, BlockId, ErrorKind, ManagerId, TaskError, TaskId, TaskResult, TaskSpec,
    PROTOCOL_VERSION,
};
use scifaas_worker::WorkerCommand;
use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Everything a manager needs to know; built by `scifaas manager` from its arguments and
/// environment.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// The interchange's ZeroMQ address, e.g. `tcp://10.1.2.3:54001`.
    pub interchange: String,
    pub block_id: BlockId,
    /// The batch job this manager runs in, if any (`SLURM_JOB_ID`, `PBS_JOBID`, ...).
    pub job_id: Option<String>,
    pub workers: u32,
    /// The endpoint's secret (from `SCIFAAS_ENDPOINT_SECRET`, never a command line).
    pub secret: String,
    pub worker: WorkerCommand,
    /// How long to wait for the interchange to answer the registration.
    pub register_timeout: Duration,
}

/// Runs a manager until the interchange tells it to stop, or is lost.
pub fn run(config: ManagerConfig) -> anyhow::Result<()> {
    let context = zmq::Context::new();
    let dealer = context.socket(zmq::DEALER)?;
    let manager_id = ManagerId(format!(
        "{}-{}-{}",
        hostname(),
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
        host: hostname(),
        workers: config.workers,
        cores: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: total_memory_bytes(),
        secret: config.secret.clone(),
        accepts_until: None,
    };
    dealer.send(encode(&ManagerMessage::Register(registration)), 0)?;
    let (period, threshold) = await_registration(&dealer, config.register_timeout)?;
    tracing::info!(%manager_id, interchange = %config.interchange, workers = config.workers, "registered");

    // Slots report through a channel and wake the poll through this inproc pair.
    let wake_addr = format!("inproc://slot-wake-{}", manager_id.0);
    let wake_rx = context.socket(zmq::PULL)?;
    wake_rx.bind(&wake_addr)?;
    let (events_tx, events_rx) = mpsc::channel();
    let slots: Vec<SlotHandle> = (0..config.workers as usize)
        .map(|i| {
            let push = context.socket(zmq::PUSH).expect("inproc socket");
            push.connect(&wake_addr).expect("inproc connect");
            let push = std::sync::Mutex::new(push);
            spawn_slot(i, config.worker.clone(), events_tx.clone(), move || {
                if let Ok(p) = push.lock() {
                    let _ = p.send(&[][..], zmq::DONTWAIT);
                }
            })
        })
        .collect();

    let mut manager = Manager {
        dealer,
        slots,
        busy: vec![None; config.workers as usize],
        queue: VecDeque::new(),
        period,
        threshold,
        last_heard: Instant::now(),
        last_sent: Instant::now(),
        draining: false,
    };
    let outcome = manager.serve(&wake_rx, &events_rx);
    manager.stop();
    outcome
}

/// A task a slot is running, and when it must be done.
#[derive(Clone)]
struct Running {
    task_id: TaskId,
    deadline: Option<Instant>,
}

struct Manager {
    dealer: zmq::Socket,
    slots: Vec<SlotHandle>,
    busy: Vec<Option<Running>>,
    /// Tasks received beyond the free slots (the interchange's prefetch).
    queue: VecDeque<TaskSpec>,
    period: Duration,
    threshold: Duration,
    last_heard: Instant,
    last_sent: Instant,
    draining: bool,
}

impl Manager {
    fn serve(
        &mut self,
        wake_rx: &zmq::Socket,
        events: &mpsc::Receiver<SlotEvent>,
    ) -> anyhow::Result<()> {
        loop {
            let timeout = self.poll_timeout();
            let (interchange_ready, slots_ready) = {
                let mut items = [
                    self.dealer.as_poll_item(zmq::POLLIN),
                    wake_rx.as_poll_item(zmq::POLLIN),
                ];
                zmq::poll(&mut items, timeout.as_millis() as i64)?;
                (items[0].is_readable(), items[1].is_readable())
            };
            if slots_ready {
                while wake_rx.recv_bytes(zmq::DONTWAIT).is_ok() {}
                self.on_slot_events(events)?;
            }
            if interchange_ready {
                while let Ok(frame) = self.dealer.recv_bytes(zmq::DONTWAIT) {
                    self.last_heard = Instant::now();
                    match decode::<InterchangeMessage>(&frame) {
                        Ok(message) => {
                            if self.on_interchange_message(message)? {
                                return Ok(());
                            }
                        }
                        Err(err) => tracing::warn!("dropping a malformed frame: {err}"),
                    }
                }
            }
            self.enforce_walltime();
            if self.last_heard.elapsed() > self.threshold {
                bail!(
                    "the interchange has been silent for {:?} (threshold {:?}); giving up",
                    self.last_heard.elapsed(),
                    self.threshold
                );
            }
            if self.last_sent.elapsed() >= self.period {
                let busy_workers = self.busy.iter().filter(|b| b.is_some()).count() as u32;
                self.send(&ManagerMessage::Heartbeat { busy_workers })?;
            }
            if self.draining && self.idle() {
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

    fn on_slot_events(&mut self, events: &mpsc::Receiver<SlotEvent>) -> anyhow::Result<()> {
        let mut results = Vec::new();
        while let Ok(SlotEvent::Done { slot, result }) = events.try_recv() {
            self.busy[slot] = None;
            results.push(result);
        }
        // Refill the slots before sending, so the next task starts as early as possible.
        self.dispatch();
        if !results.is_empty() {
            let stamp = now_micros();
            for result in &mut results {
                result.timing.manager_sent = stamp;
            }
            self.send(&ManagerMessage::Results { results })?;
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        let mut lost = Vec::new();
        for (slot, running) in self.busy.iter_mut().enumerate() {
            if running.is_some() {
                continue;
            }
            let Some(task) = self.queue.pop_front() else {
                break;
            };
            *running = Some(Running {
                task_id: task.task_id,
                deadline: task
                    .walltime_ms
                    .map(|ms| Instant::now() + Duration::from_millis(ms)),
            });
            if let Err(mpsc::SendError(task)) = self.slots[slot].tasks.send(task) {
                // The slot thread is gone; this cannot happen while the manager runs.
                tracing::error!(slot, task_id = %task.task_id, "slot thread is gone");
                *running = None;
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
        for (slot, running) in self.busy.iter().enumerate() {
            if let Some(Running {
                task_id,
                deadline: Some(deadline),
            }) = running
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

    fn poll_timeout(&self) -> Duration {
        let mut timeout = self.period.saturating_sub(self.last_sent.elapsed());
        for deadline in self.busy.iter().flatten().filter_map(|r| r.deadline) {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }
        timeout.max(Duration::from_millis(1))
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.busy.iter().all(Option::is_none)
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
        let Manager { slots, .. } = self;
        for slot in slots {
            // A slot stuck in a long task would block its thread: kill the worker first.
            slot.kill_worker();
            let SlotHandle { tasks, thread, .. } = slot;
            drop(tasks);
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

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into())
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
