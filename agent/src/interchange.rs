//! The interchange: a ZeroMQ ROUTER that managers connect to. It keeps the queue of
//! tasks waiting for a worker, dispatches them in batches by each manager's free
//! capacity (workers + prefetch - outstanding; idle workers everywhere first, then the
//! prefetch, see [`crate::prefetch`]), tracks heartbeats, and turns a lost manager's
//! tasks into retries or failures.
//!
//! It runs on its own thread (ZeroMQ sockets are not async). The agent talks to it
//! through an [`InterchangeHandle`]: commands go in over a channel plus an inproc wake-up
//! socket, events come out on a tokio channel.

use crate::prefetch::Prefetch;
use bytes::Bytes;
use scifaas_protocol::interchange::{InterchangeMessage, ManagerMessage, Registration};
use scifaas_protocol::link::ManagerStatus;
use scifaas_protocol::time::{now_micros, Micros};
use scifaas_protocol::{
    decode_shared, encode, encode_into, Actor, ContainerSpec, ErrorKind, TaskError, TaskId,
    TaskResult, TaskSpec, TaskState, Transition, PROTOCOL_VERSION,
};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// How the interchange is set up; from the endpoint config's `engine` section.
#[derive(Clone, Debug)]
pub struct InterchangeConfig {
    /// Address to bind, e.g. `127.0.0.1`.
    pub bind_address: String,
    /// Ports to try, in order; `None` lets the kernel choose.
    pub port_range: Option<(u16, u16)>,
    /// The endpoint's secret, which managers must present.
    pub secret: String,
    pub heartbeat_period: Duration,
    pub heartbeat_threshold: Duration,
    /// Tasks a manager may hold beyond its worker count.
    pub prefetch: Prefetch,
    /// How often a task lost with its manager is run again before it fails.
    pub max_retries_on_system_failure: u32,
    /// A Unix socket to listen on as well, for managers on this host (the local
    /// provider): it skips the TCP stack, and only users who may write the socket file
    /// (its owner, under the usual umask) can connect, where anyone on the host can
    /// reach a loopback port.
    pub local_socket: Option<PathBuf>,
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Requests from the agent.
enum Command {
    Submit(Vec<(TaskSpec, Micros)>),
    DrainBlock(String),
    BlockLost { block_id: String, reason: String },
    Shutdown,
}

/// What the interchange reports to the agent.
#[derive(Debug)]
pub enum InterchangeEvent {
    /// Finished tasks, with the interchange's transitions prepended.
    Results(Vec<TaskResult>),
    ManagerRegistered {
        block_id: String,
        job_id: Option<String>,
        manager_id: String,
        /// The manager's node, as it named it (`SLURMD_NODENAME`, else its host name).
        host: String,
    },
    /// A manager said goodbye (`clean`) or went silent past the heartbeat threshold.
    ManagerGone {
        block_id: String,
        manager_id: String,
        clean: bool,
    },
    /// A periodic snapshot.
    Status(InterchangeStatus),
}

/// Snapshot of the interchange, for scaling and for the endpoint's status.
#[derive(Clone, Debug, Default)]
pub struct InterchangeStatus {
    /// Tasks waiting in the interchange for a manager slot.
    pub queued: usize,
    /// Tasks held by managers.
    pub dispatched: usize,
    pub managers: Vec<ManagerStatus>,
}

/// The agent's side of the interchange thread.
pub struct InterchangeHandle {
    commands: mpsc::Sender<Command>,
    wake: Mutex<zmq::Socket>,
    /// The address managers connect to (`tcp://host:port`).
    pub url: String,
    /// The address managers on this host connect to (`ipc://path`), if it listens on
    /// one ([`InterchangeConfig::local_socket`]).
    pub local_url: Option<String>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InterchangeHandle {
    /// Queues tasks; `accepted_at` is when the agent journaled them.
    pub fn submit(&self, tasks: Vec<TaskSpec>, accepted_at: Micros) {
        if tasks.is_empty() {
            return;
        }
        let tasks = tasks.into_iter().map(|t| (t, accepted_at)).collect();
        self.send(Command::Submit(tasks));
    }

    /// Asks every manager of a block to finish its tasks and exit.
    pub fn drain_block(&self, block_id: &str) {
        self.send(Command::DrainBlock(block_id.to_owned()));
    }

    /// The block's job ended under its managers: their tasks are retried or failed
    /// with `reason`, without waiting for the heartbeat threshold.
    pub fn block_lost(&self, block_id: &str, reason: String) {
        self.send(Command::BlockLost {
            block_id: block_id.to_owned(),
            reason,
        });
    }

    /// Tells managers to exit and stops the thread.
    pub fn shutdown(mut self) {
        self.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // ZeroMQ removes the socket file when its listener closes, which it does in the
        // background; the agent may exit first.
        if let Some(path) = self
            .local_url
            .as_deref()
            .and_then(|u| u.strip_prefix("ipc://"))
        {
            let _ = std::fs::remove_file(path);
        }
    }

    fn send(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            if let Ok(wake) = self.wake.lock() {
                let _ = wake.send(&[][..], zmq::DONTWAIT);
            }
        }
    }
}

/// Binds the interchange and starts its thread.
pub fn start(
    config: InterchangeConfig,
    events: UnboundedSender<InterchangeEvent>,
) -> anyhow::Result<InterchangeHandle> {
    let context = zmq::Context::new();
    let router = context.socket(zmq::ROUTER)?;
    router.set_router_mandatory(false)?;
    router.set_linger(500)?;
    let url = bind(&router, &config)?;
    let local_url = config
        .local_socket
        .as_deref()
        .and_then(|path| bind_local(&router, path));
    let wake_addr = "inproc://interchange-wake";
    let wake_rx = context.socket(zmq::PULL)?;
    wake_rx.bind(wake_addr)?;
    let wake_tx = context.socket(zmq::PUSH)?;
    wake_tx.connect(wake_addr)?;
    let (commands_tx, commands_rx) = mpsc::channel();
    let mut interchange = Interchange {
        config,
        router,
        queue: VecDeque::new(),
        managers: HashMap::new(),
        mean_run_us: None,
        mean_payload: None,
        events,
        last_status: Instant::now() - Duration::from_secs(3600),
    };
    let thread = std::thread::Builder::new()
        .name("interchange".into())
        .spawn(move || {
            let _context = context;
            interchange.serve(&wake_rx, &commands_rx);
        })?;
    Ok(InterchangeHandle {
        commands: commands_tx,
        wake: Mutex::new(wake_tx),
        url,
        local_url,
        thread: Some(thread),
    })
}

fn bind(router: &zmq::Socket, config: &InterchangeConfig) -> anyhow::Result<String> {
    let host = &config.bind_address;
    match config.port_range {
        None => {
            router.bind(&format!("tcp://{host}:*"))?;
            let endpoint = router
                .get_last_endpoint()?
                .map_err(|_| anyhow::anyhow!("ZeroMQ returned a non-UTF-8 endpoint"))?;
            Ok(endpoint)
        }
        Some((lo, hi)) => {
            for port in lo..=hi {
                let url = format!("tcp://{host}:{port}");
                if router.bind(&url).is_ok() {
                    return Ok(url);
                }
            }
            anyhow::bail!("no free port for the interchange on {host} in {lo}..={hi}")
        }
    }
}

/// Listens on the Unix socket `path` too; answers its address, or `None` (logged) when it
/// cannot, and managers then connect over TCP. ZeroMQ replaces a socket file left by an
/// agent that crashed.
fn bind_local(router: &zmq::Socket, path: &Path) -> Option<String> {
    let Some(text) = path.to_str().filter(|p| p.len() <= MAX_SOCKET_PATH) else {
        tracing::info!(
            path = %path.display(),
            "the state directory's path is too long for a Unix socket; local managers use TCP"
        );
        return None;
    };
    let url = format!("ipc://{text}");
    match router.bind(&url) {
        Ok(()) => Some(url),
        Err(e) => {
            tracing::warn!(%url, "cannot listen on a Unix socket ({e}); local managers use TCP");
            None
        }
    }
}

/// A task sent to a manager, kept until its result returns (to retry it if the
/// manager is lost).
struct Dispatched {
    spec: TaskSpec,
    accepted_at: Micros,
    dispatched_at: Micros,
}

struct Manager {
    registration: Registration,
    outstanding: HashMap<TaskId, Dispatched>,
    busy_workers: u32,
    container_switches: u64,
    last_heard: Instant,
    last_sent: Instant,
    draining: bool,
    /// Containers of the tasks last sent to this manager, newest last, at most one per
    /// worker: the containers it most likely has warm workers for.
    warm: VecDeque<ContainerSpec>,
}

impl Manager {
    fn has_warm(&self, container: &ContainerSpec) -> bool {
        self.warm.iter().any(|c| c == container)
    }

    fn note_sent(&mut self, spec: &TaskSpec) {
        if let Some(container) = &spec.function.container {
            if let Some(at) = self.warm.iter().position(|c| c == container) {
                self.warm.remove(at);
            }
            self.warm.push_back(container.clone());
            while self.warm.len() > self.registration.workers.max(1) as usize {
                self.warm.pop_front();
            }
        }
    }

    /// Tasks this manager may be sent now, holding `prefetch` beyond its workers.
    fn free_capacity(&self, prefetch: u32) -> usize {
        if self.draining {
            return 0;
        }
        (self.registration.workers + prefetch).saturating_sub(self.outstanding.len() as u32)
            as usize
    }
}

struct Interchange {
    config: InterchangeConfig,
    router: zmq::Socket,
    queue: VecDeque<(TaskSpec, Micros)>,
    /// Keyed by the manager's ZeroMQ identity.
    managers: HashMap<Vec<u8>, Manager>,
    /// Moving mean of how long tasks ran in their workers, in microseconds (sizes an
    /// `auto` prefetch).
    mean_run_us: Option<f64>,
    /// Moving mean of the payload bytes of tasks submitted (sizes an `auto` prefetch).
    mean_payload: Option<f64>,
    events: UnboundedSender<InterchangeEvent>,
    last_status: Instant,
}

/// The weight of the newest task in the moving means of run times and payload sizes.
const MEAN_WEIGHT: f64 = 0.05;

/// Adds `sample` to the moving mean `mean` (the first sample starts it).
fn add_to_mean(mean: &mut Option<f64>, sample: f64) {
    let mean = mean.get_or_insert(sample);
    *mean += (sample - *mean) * MEAN_WEIGHT;
}

/// How often the interchange reports a status snapshot.
const STATUS_PERIOD: Duration = Duration::from_millis(500);

impl Interchange {
    fn serve(&mut self, wake_rx: &zmq::Socket, commands: &mpsc::Receiver<Command>) {
        loop {
            let timeout = self.config.heartbeat_period.min(STATUS_PERIOD);
            let (router_ready, wake_ready) = {
                let mut items = [
                    self.router.as_poll_item(zmq::POLLIN),
                    wake_rx.as_poll_item(zmq::POLLIN),
                ];
                if zmq::poll(&mut items, timeout.as_millis() as i64).is_err() {
                    continue;
                }
                (items[0].is_readable(), items[1].is_readable())
            };
            let mut dirty = false;
            if wake_ready {
                while wake_rx.recv_bytes(zmq::DONTWAIT).is_ok() {}
                while let Ok(command) = commands.try_recv() {
                    match command {
                        Command::Submit(tasks) => {
                            for (task, _) in &tasks {
                                add_to_mean(&mut self.mean_payload, task.payload.len() as f64);
                            }
                            self.queue.extend(tasks)
                        }
                        Command::DrainBlock(block_id) => self.drain_block(&block_id),
                        Command::BlockLost { block_id, reason } => {
                            self.on_block_lost(&block_id, &reason)
                        }
                        Command::Shutdown => {
                            self.shutdown();
                            return;
                        }
                    }
                    dirty = true;
                }
            }
            if router_ready {
                let mut results = Vec::new();
                while let Ok(parts) = self.router.recv_multipart(zmq::DONTWAIT) {
                    self.on_frame(parts, &mut results);
                }
                if !results.is_empty() {
                    let _ = self.events.send(InterchangeEvent::Results(results));
                }
                dirty = true;
            }
            if dirty {
                self.dispatch();
            }
            self.heartbeats();
            if self.last_status.elapsed() >= STATUS_PERIOD {
                self.last_status = Instant::now();
                let _ = self.events.send(InterchangeEvent::Status(self.status()));
            }
        }
    }

    fn on_frame(&mut self, parts: Vec<Vec<u8>>, results: &mut Vec<TaskResult>) {
        let [identity, frame] = <[Vec<u8>; 2]>::try_from(parts).unwrap_or_default();
        if identity.is_empty() {
            tracing::warn!("dropping a message with an unexpected frame count");
            return;
        }
        // Results share the frame's buffer (a Vec becomes Bytes without a copy).
        let frame = Bytes::from(frame);
        let message = match decode_shared::<ManagerMessage>(&frame) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!("dropping a malformed frame from a manager: {err}");
                return;
            }
        };
        if let ManagerMessage::Register(registration) = message {
            self.on_register(identity, registration);
            return;
        }
        let Some(manager) = self.managers.get_mut(&identity) else {
            tracing::warn!(
                manager = %String::from_utf8_lossy(&identity),
                "message from an unregistered manager; telling it to go"
            );
            self.send_to(
                &identity,
                &InterchangeMessage::Rejected {
                    reason: "not registered (the interchange may have restarted)".into(),
                },
            );
            return;
        };
        manager.last_heard = Instant::now();
        match message {
            ManagerMessage::Register(_) => unreachable!("handled above"),
            ManagerMessage::Heartbeat {
                busy_workers,
                container_switches,
            } => {
                manager.busy_workers = busy_workers;
                manager.container_switches = container_switches;
            }
            ManagerMessage::Results { results: batch } => {
                for mut result in batch {
                    let Some(dispatched) = manager.outstanding.remove(&result.task_id) else {
                        // A task we already gave up on (manager declared lost, then back).
                        tracing::debug!(task_id = %result.task_id, "late result ignored");
                        continue;
                    };
                    prepend_queue_transitions(&mut result, &dispatched);
                    let timing = &result.timing;
                    if timing.exec_start > 0 && timing.exec_end >= timing.exec_start {
                        let run = (timing.exec_end - timing.exec_start) as f64;
                        add_to_mean(&mut self.mean_run_us, run);
                    }
                    results.push(result);
                }
            }
            ManagerMessage::Draining => manager.draining = true,
            ManagerMessage::Bye => {
                let manager = self.managers.remove(&identity).expect("present");
                self.on_manager_gone(manager, None, results);
            }
        }
    }

    fn on_register(&mut self, identity: Vec<u8>, registration: Registration) {
        let refusal = if registration.protocol_version != PROTOCOL_VERSION {
            Some(format!(
                "protocol version {} is not supported (this interchange speaks {})",
                registration.protocol_version, PROTOCOL_VERSION
            ))
        } else if !constant_time_eq(
            registration.secret.as_bytes(),
            self.config.secret.as_bytes(),
        ) {
            Some("wrong endpoint secret".to_owned())
        } else {
            None
        };
        if let Some(reason) = refusal {
            tracing::warn!(
                manager = %registration.manager_id,
                host = %registration.host,
                "rejected a manager: {reason}"
            );
            self.send_to(&identity, &InterchangeMessage::Rejected { reason });
            return;
        }
        tracing::info!(
            manager = %registration.manager_id,
            block = %registration.block_id,
            host = %registration.host,
            workers = registration.workers,
            "manager registered"
        );
        let _ = self.events.send(InterchangeEvent::ManagerRegistered {
            block_id: registration.block_id.0.clone(),
            job_id: registration.job_id.clone(),
            manager_id: registration.manager_id.0.clone(),
            host: registration.host.clone(),
        });
        self.send_to(
            &identity,
            &InterchangeMessage::Registered {
                heartbeat_period_ms: self.config.heartbeat_period.as_millis() as u64,
                heartbeat_threshold_ms: self.config.heartbeat_threshold.as_millis() as u64,
            },
        );
        self.managers.insert(
            identity,
            Manager {
                registration,
                outstanding: HashMap::new(),
                busy_workers: 0,
                container_switches: 0,
                last_heard: Instant::now(),
                last_sent: Instant::now(),
                draining: false,
                warm: VecDeque::new(),
            },
        );
    }

    /// A manager left: its tasks go back to the queue while retries remain, else fail.
    fn on_manager_gone(
        &mut self,
        manager: Manager,
        lost: Option<&str>,
        results: &mut Vec<TaskResult>,
    ) {
        let reg = &manager.registration;
        let clean = lost.is_none();
        if let Some(reason) = lost {
            tracing::warn!(
                manager = %reg.manager_id,
                host = %reg.host,
                block = %reg.block_id,
                tasks = manager.outstanding.len(),
                "manager lost: {reason}"
            );
        }
        for (_, dispatched) in manager.outstanding {
            let mut spec = dispatched.spec;
            if spec.retries < self.config.max_retries_on_system_failure {
                spec.retries += 1;
                self.queue.push_front((spec, dispatched.accepted_at));
            } else {
                let mut result = TaskResult::failed(
                    spec.task_id,
                    TaskError::system(
                        ErrorKind::ManagerLost,
                        "ManagerLost",
                        format!(
                            "manager lost (node {}, block {}) while it held the task, after {} retries: {}",
                            reg.host,
                            reg.block_id,
                            spec.retries,
                            lost.unwrap_or("it left")
                        ),
                    ),
                );
                result
                    .transitions
                    .push(Transition::now(TaskState::Failed, Actor::Interchange));
                results.push(result);
            }
        }
        let _ = self.events.send(InterchangeEvent::ManagerGone {
            block_id: reg.block_id.0.clone(),
            manager_id: reg.manager_id.0.clone(),
            clean,
        });
    }

    fn dispatch(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let now = now_micros();
        let mut batches: HashMap<Vec<u8>, Vec<TaskSpec>> = HashMap::new();
        // Idle workers everywhere first, then the prefetch: a burst fills every free
        // worker before any manager holds tasks it cannot start yet.
        self.fill(&mut batches, now, false, |_| 0);
        let (prefetch, mean_run_us) = (self.config.prefetch, self.mean_run_us);
        let mean_payload = self.mean_payload.unwrap_or(0.0);
        if !prefetch.is_none(mean_run_us) {
            self.fill(&mut batches, now, true, |m| {
                prefetch.capacity(m.registration.workers, mean_run_us, mean_payload)
            });
        }
        self.send_batches(batches);
    }

    /// Adds queued tasks to `batches` up to each manager's free capacity, holding
    /// `prefetch(manager)` tasks beyond its workers (a task is outstanding from the
    /// moment it joins a batch). `spread`: no manager takes more than an even share of
    /// the queue, so that tasks held ahead wait behind as few busy workers as possible.
    fn fill(
        &mut self,
        batches: &mut HashMap<Vec<u8>, Vec<TaskSpec>>,
        now: Micros,
        spread: bool,
        prefetch: impl Fn(&Manager) -> u32,
    ) {
        if self.queue.is_empty() {
            return;
        }
        let mut order: Vec<(usize, Vec<u8>)> = self
            .managers
            .iter()
            .map(|(id, m)| (m.free_capacity(prefetch(m)), id.clone()))
            .filter(|(free, _)| *free > 0)
            .collect();
        if order.is_empty() {
            return;
        }
        self.dispatch_to_warm(&mut order, batches, now);
        // Then in queue order, most free capacity first, so a burst spreads over idle
        // managers.
        order.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.0));
        let share = if spread {
            self.queue.len().div_ceil(order.len())
        } else {
            usize::MAX
        };
        for (free, identity) in order {
            if self.queue.is_empty() {
                break;
            }
            if free == 0 {
                continue;
            }
            let manager = self.managers.get_mut(&identity).expect("present");
            let batch = take_fitting(&mut self.queue, free.min(share), manager, now);
            batches.entry(identity).or_default().extend(batch);
        }
    }

    /// Sends each manager its batch, one message per manager.
    fn send_batches(&mut self, batches: HashMap<Vec<u8>, Vec<TaskSpec>>) {
        for (identity, batch) in batches {
            if batch.is_empty() {
                continue;
            }
            let manager = self.managers.get_mut(&identity).expect("present");
            for spec in &batch {
                manager.note_sent(spec);
            }
            manager.last_sent = Instant::now();
            // Encoded into a buffer sized up front (a growing one would copy large
            // payloads at every doubling) and handed to ZeroMQ as it is (a `Vec` becomes
            // a message without a copy).
            let bytes: usize = batch
                .iter()
                .map(|t| t.payload.len() + t.function.source.len() + 512)
                .sum();
            let mut frame = Vec::with_capacity(bytes + 64);
            encode_into(&mut frame, &InterchangeMessage::Tasks { tasks: batch });
            let frame = zmq::Message::from(frame);
            let parts = [zmq::Message::from(&identity[..]), frame];
            if let Err(err) = self.router.send_multipart(parts, 0) {
                tracing::warn!("sending tasks to a manager failed: {err}");
            }
        }
    }

    /// Sends queued tasks that name a container to a manager with free capacity that
    /// likely has a warm worker for it, so a warm call does not pay a container start
    /// (or a switch) elsewhere. Scans only as far into the queue as there is capacity.
    fn dispatch_to_warm(
        &mut self,
        order: &mut [(usize, Vec<u8>)],
        batches: &mut HashMap<Vec<u8>, Vec<TaskSpec>>,
        now: Micros,
    ) {
        let mut free_total: usize = order.iter().map(|(free, _)| free).sum();
        let mut at = 0;
        let mut scanned = 0;
        while at < self.queue.len() && free_total > 0 && scanned < 4 * free_total.max(16) {
            scanned += 1;
            let Some(container) = self.queue[at].0.function.container.as_ref() else {
                at += 1;
                continue;
            };
            let walltime_ms = self.queue[at].0.walltime_ms;
            let target = order.iter_mut().find(|(free, identity)| {
                *free > 0
                    && self.managers.get(identity).is_some_and(|m| {
                        m.has_warm(container)
                            && fits(m.registration.accepts_until, walltime_ms, now)
                    })
            });
            let Some((free, identity)) = target else {
                at += 1;
                continue;
            };
            let (spec, accepted_at) = self.queue.remove(at).expect("in range");
            *free -= 1;
            free_total -= 1;
            let manager = self.managers.get_mut(identity).expect("present");
            manager.outstanding.insert(
                spec.task_id,
                Dispatched {
                    spec: spec.clone(),
                    accepted_at,
                    dispatched_at: now,
                },
            );
            batches.entry(identity.clone()).or_default().push(spec);
        }
    }

    fn heartbeats(&mut self) {
        let threshold = self.config.heartbeat_threshold;
        let lost: Vec<Vec<u8>> = self
            .managers
            .iter()
            .filter(|(_, m)| m.last_heard.elapsed() > threshold)
            .map(|(id, _)| id.clone())
            .collect();
        if !lost.is_empty() {
            let mut results = Vec::new();
            let reason = format!("no heartbeat within {:?}", threshold);
            for identity in lost {
                let manager = self.managers.remove(&identity).expect("present");
                self.on_manager_gone(manager, Some(&reason), &mut results);
            }
            if !results.is_empty() {
                let _ = self.events.send(InterchangeEvent::Results(results));
            }
            self.dispatch();
        }
        let period = self.config.heartbeat_period;
        let due: Vec<Vec<u8>> = self
            .managers
            .iter()
            .filter(|(_, m)| m.last_sent.elapsed() >= period)
            .map(|(id, _)| id.clone())
            .collect();
        for identity in due {
            self.send_to(&identity, &InterchangeMessage::Heartbeat);
        }
    }

    fn on_block_lost(&mut self, block_id: &str, reason: &str) {
        let ids: Vec<Vec<u8>> = self
            .managers
            .iter()
            .filter(|(_, m)| m.registration.block_id.0 == block_id)
            .map(|(id, _)| id.clone())
            .collect();
        let mut results = Vec::new();
        for identity in ids {
            let manager = self.managers.remove(&identity).expect("present");
            self.on_manager_gone(manager, Some(reason), &mut results);
        }
        if !results.is_empty() {
            let _ = self.events.send(InterchangeEvent::Results(results));
        }
    }

    fn drain_block(&mut self, block_id: &str) {
        let ids: Vec<Vec<u8>> = self
            .managers
            .iter_mut()
            .filter(|(_, m)| m.registration.block_id.0 == block_id)
            .map(|(id, m)| {
                m.draining = true;
                id.clone()
            })
            .collect();
        for identity in ids {
            self.send_to(&identity, &InterchangeMessage::Drain);
        }
    }

    fn shutdown(&mut self) {
        let ids: Vec<Vec<u8>> = self.managers.keys().cloned().collect();
        for identity in ids {
            self.send_to(&identity, &InterchangeMessage::Shutdown);
        }
    }

    fn send_to(&mut self, identity: &[u8], message: &InterchangeMessage) {
        if let Some(manager) = self.managers.get_mut(identity) {
            manager.last_sent = Instant::now();
        }
        if let Err(err) = self
            .router
            .send_multipart([identity, &encode(message)[..]], 0)
        {
            tracing::warn!("sending to a manager failed: {err}");
        }
    }

    fn status(&self) -> InterchangeStatus {
        InterchangeStatus {
            queued: self.queue.len(),
            dispatched: self.managers.values().map(|m| m.outstanding.len()).sum(),
            managers: self
                .managers
                .values()
                .map(|m| {
                    let r = &m.registration;
                    let busy = m
                        .busy_workers
                        .max(m.outstanding.len().min(r.workers as usize) as u32);
                    ManagerStatus {
                        manager_id: r.manager_id.0.clone(),
                        block_id: r.block_id.0.clone(),
                        host: r.host.clone(),
                        workers: r.workers,
                        busy_workers: busy,
                        idle_workers: r.workers.saturating_sub(busy),
                        outstanding_tasks: m.outstanding.len() as u32,
                        draining: m.draining,
                        container_switches: m.container_switches,
                    }
                })
                .collect(),
        }
    }
}

/// Takes up to `free` tasks from the queue for `manager`, skipping (and keeping in
/// order) tasks whose walltime would run past the manager's pilot.
fn take_fitting(
    queue: &mut VecDeque<(TaskSpec, Micros)>,
    free: usize,
    manager: &mut Manager,
    now: Micros,
) -> Vec<TaskSpec> {
    let mut batch = Vec::with_capacity(free.min(queue.len()));
    let until = manager.registration.accepts_until;
    let fits = |spec: &TaskSpec| fits(until, spec.walltime_ms, now);
    let mut skipped = VecDeque::new();
    while batch.len() < free {
        let Some((spec, accepted_at)) = queue.pop_front() else {
            break;
        };
        if !fits(&spec) {
            skipped.push_back((spec, accepted_at));
            // Do not scan a long queue for a manager about to end.
            if skipped.len() >= 1024 {
                break;
            }
            continue;
        }
        batch.push(spec.clone());
        manager.outstanding.insert(
            spec.task_id,
            Dispatched {
                spec,
                accepted_at,
                dispatched_at: now,
            },
        );
    }
    while let Some(entry) = skipped.pop_back() {
        queue.push_front(entry);
    }
    batch
}

/// Whether a task of `walltime_ms` started `now` ends before `until`, when the manager
/// stops taking work.
fn fits(until: Option<Micros>, walltime_ms: Option<u64>, now: Micros) -> bool {
    match (until, walltime_ms) {
        (Some(until), Some(walltime_ms)) => now + (walltime_ms as i64) * 1000 <= until,
        (Some(until), None) => now < until,
        (None, _) => true,
    }
}

/// Stamps the agent's and the interchange's transitions before the manager's.
fn prepend_queue_transitions(result: &mut TaskResult, dispatched: &Dispatched) {
    let mut transitions = Vec::with_capacity(result.transitions.len() + 2);
    transitions.push(Transition {
        state: TaskState::WaitingForNodes,
        at: dispatched.accepted_at,
        actor: Actor::Agent,
    });
    transitions.push(Transition {
        state: TaskState::WaitingForLaunch,
        at: dispatched.dispatched_at,
        actor: Actor::Interchange,
    });
    transitions.append(&mut result.transitions);
    result.transitions = transitions;
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
