//! The endpoint agent's main loop: one task that owns the journal, the link to the
//! service, the interchange handle and the blocks, and reacts to each of them in turn.

use crate::blocks::{BlockAction, Blocks, ScalingPolicy};
use crate::interchange::{self, InterchangeConfig, InterchangeEvent, InterchangeStatus};
use crate::journal::{Entry, Journal};
use crate::link::Link;
use scifaas_protocol::link::{AgentMessage, EndpointStatus, ServiceMessage};
use scifaas_protocol::time::now_micros;
use scifaas_protocol::{ErrorKind, TaskError, TaskId, TaskResult, TaskSpec};
use scifaas_providers::{BlockRequest, Provider};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Everything the agent needs to run.
pub struct AgentSettings {
    /// The endpoint's name (its directory under `$SCIFAAS_HOME/endpoints`).
    pub name: String,
    /// Where the journal and the blocks' scripts and logs live.
    pub state_dir: PathBuf,
    pub service_url: String,
    /// PEM file of the authority to trust for an `https://` service.
    pub service_ca: Option<PathBuf>,
    pub agent_token: String,
    pub interchange: InterchangeConfig,
    pub scaling: ScalingPolicy,
    pub strategy_period: Duration,
    /// argv prefix that starts a manager (`[/path/to/scifaas, manager]`).
    pub manager_command: Vec<String>,
    /// Extra manager arguments (workers, python, ...).
    pub manager_args: Vec<String>,
    pub walltime: Option<Duration>,
    pub worker_init: String,
    /// Walltime given to tasks that carry none.
    pub task_walltime: Option<Duration>,
    /// Containers a function may ask for; `None` allows any.
    pub allowed_containers: Option<Vec<crate::config::ContainerPattern>>,
    /// Whether the journal waits for the disk before a task is acknowledged.
    pub journal_sync: bool,
}

/// How often the agent reports its status to the service.
const STATUS_PERIOD: Duration = Duration::from_secs(1);
/// Reconnection backoff bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Runs the agent until `shutdown` resolves; then drains nothing, stops managers and
/// cancels every block it started.
pub async fn run(
    settings: AgentSettings,
    provider: Box<dyn Provider>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.state_dir)?;
    let journal_path = settings.state_dir.join("journal");
    let (journal, recovered) = Journal::open(&journal_path, settings.journal_sync)?;
    tracing::info!(
        journal = %journal_path.display(),
        pending = recovered.pending.len(),
        unstored_results = recovered.unstored_results.len(),
        "journal opened"
    );

    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let interchange = interchange::start(settings.interchange.clone(), events_tx)?;
    tracing::info!(url = %interchange.url, local = ?interchange.local_url, "interchange listening");

    let blocks_dir = settings.state_dir.join("blocks");
    let make_request = {
        let mut argv = settings.manager_command.clone();
        // Managers on this host connect over the Unix socket when there is one.
        let url = interchange.local_url.as_ref().unwrap_or(&interchange.url);
        argv.extend(["--interchange".to_owned(), url.clone()]);
        argv.extend(settings.manager_args.iter().cloned());
        let blocks_dir = blocks_dir.clone();
        let name = settings.name.clone();
        let secret = settings.interchange.secret.clone();
        let walltime = settings.walltime;
        let worker_init = settings.worker_init.clone();
        let nodes = settings.scaling.nodes_per_block;
        Box::new(move |block_id: &str| {
            let mut manager_command = argv.clone();
            manager_command.extend(["--block-id".to_owned(), block_id.to_owned()]);
            BlockRequest {
                block_id: block_id.to_owned(),
                dir: blocks_dir.join(block_id),
                endpoint_name: name.clone(),
                nodes,
                walltime,
                worker_init: worker_init.clone(),
                manager_command,
                env: vec![("SCIFAAS_ENDPOINT_SECRET".to_owned(), secret.clone())],
            }
        }) as Box<dyn Fn(&str) -> BlockRequest + Send>
    };
    let mut blocks = Blocks::new(provider, settings.scaling.clone(), make_request);

    // Work recovered from the journal goes straight back into the queue.
    interchange.submit(recovered.pending, now_micros());
    let mut agent = Agent {
        journal,
        interchange,
        task_walltime_ms: settings.task_walltime.map(|w| w.as_millis() as u64),
        allowed_containers: settings.allowed_containers.clone(),
        unstored: recovered
            .unstored_results
            .into_iter()
            .map(|r| (r.task_id, r))
            .collect(),
        status: InterchangeStatus::default(),
    };
    tokio::task::block_in_place(|| blocks.start());

    tokio::pin!(shutdown);
    let mut resume = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let mut events_rx = events_rx;
    let mut backoff = RECONNECT_MIN;
    let outcome = loop {
        let connect = Link::connect(
            &settings.service_url,
            &settings.agent_token,
            settings.service_ca.as_deref(),
        );
        let link = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            link = connect => link,
        };
        let link = match link {
            Ok(link) => {
                backoff = RECONNECT_MIN;
                tracing::info!(endpoint = %link.endpoint_name, id = %link.endpoint_id, "connected to the service");
                link
            }
            Err(err) => {
                tracing::warn!("cannot reach the service ({err:#}); retrying in {backoff:?}");
                let wait = tokio::time::sleep(backoff);
                backoff = (backoff * 2).min(RECONNECT_MAX);
                // Keep serving managers while disconnected: results wait in the journal.
                tokio::select! {
                    _ = &mut shutdown => break Ok(()),
                    _ = agent.serve_offline(&mut events_rx, &mut blocks, wait, settings.strategy_period) => continue,
                }
            }
        };
        match agent
            .serve(
                link,
                &mut events_rx,
                &mut blocks,
                &mut shutdown,
                &mut resume,
                settings.strategy_period,
            )
            .await
        {
            Ok(Stop::Shutdown) => break Ok(()),
            Ok(Stop::Disconnected) => tracing::warn!("lost the link to the service; reconnecting"),
            Err(err) => break Err(err),
        }
    };

    tracing::info!("stopping: shutting managers down and cancelling blocks");
    let Agent { interchange, .. } = agent;
    tokio::task::block_in_place(|| {
        interchange.shutdown();
        blocks.cancel_all();
    });
    outcome
}

enum Stop {
    Shutdown,
    Disconnected,
}

struct Agent {
    journal: Journal,
    interchange: interchange::InterchangeHandle,
    task_walltime_ms: Option<u64>,
    allowed_containers: Option<Vec<crate::config::ContainerPattern>>,
    /// Results the service has not confirmed storing, re-sent on every reconnect.
    unstored: HashMap<TaskId, TaskResult>,
    status: InterchangeStatus,
}

impl Agent {
    async fn serve(
        &mut self,
        mut link: Link,
        events: &mut UnboundedReceiver<InterchangeEvent>,
        blocks: &mut Blocks,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
        resume: &mut tokio::signal::unix::Signal,
        strategy_period: Duration,
    ) -> anyhow::Result<Stop> {
        if !self.unstored.is_empty() {
            let results: Vec<TaskResult> = self.unstored.values().cloned().collect();
            link.send(&AgentMessage::Results { results }).await?;
        }
        let mut status_tick = tokio::time::interval(STATUS_PERIOD);
        let mut strategy_tick = tokio::time::interval(strategy_period);
        loop {
            tokio::select! {
                _ = shutdown.as_mut() => return Ok(Stop::Shutdown),
                message = link.recv() => {
                    let Some(message) = message else { return Ok(Stop::Disconnected) };
                    if let Err(err) = self.on_service_message(message, &mut link).await {
                        tracing::warn!("link error: {err:#}");
                        return Ok(Stop::Disconnected);
                    }
                    // Work arriving at an endpoint with no block need not wait for the
                    // next strategy period.
                    if self.journal.pending() > 0 && !blocks.has_active() {
                        self.strategy_round(blocks);
                    }
                }
                Some(event) = events.recv() => {
                    let mut batch = vec![event];
                    while let Ok(more) = events.try_recv() {
                        batch.push(more);
                    }
                    let results = self.on_events(batch, blocks)?;
                    if !results.is_empty()
                        && link.send(&AgentMessage::Results { results }).await.is_err()
                    {
                        return Ok(Stop::Disconnected);
                    }
                }
                _ = status_tick.tick() => {
                    let status = self.endpoint_status(blocks);
                    if link.send(&AgentMessage::Status(status)).await.is_err() {
                        return Ok(Stop::Disconnected);
                    }
                }
                _ = strategy_tick.tick() => self.strategy_round(blocks),
                _ = resume.recv() => {
                    blocks.resume();
                    self.strategy_round(blocks);
                }
            }
        }
    }

    /// While the service is unreachable: keep taking results from managers (they wait
    /// in the journal) and keep the blocks right, until `until` fires.
    async fn serve_offline(
        &mut self,
        events: &mut UnboundedReceiver<InterchangeEvent>,
        blocks: &mut Blocks,
        until: tokio::time::Sleep,
        strategy_period: Duration,
    ) {
        tokio::pin!(until);
        let mut strategy_tick = tokio::time::interval(strategy_period);
        loop {
            tokio::select! {
                _ = &mut until => return,
                Some(event) = events.recv() => {
                    if let Err(err) = self.on_events(vec![event], blocks) {
                        tracing::error!("journal write failed: {err:#}");
                    }
                }
                _ = strategy_tick.tick() => self.strategy_round(blocks),
            }
        }
    }

    async fn on_service_message(
        &mut self,
        message: ServiceMessage,
        link: &mut Link,
    ) -> anyhow::Result<()> {
        match message {
            ServiceMessage::Tasks { tasks } => {
                let task_ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
                // A re-sent task the journal already has is acknowledged again; a result
                // it already has goes back again; only new tasks are queued.
                let mut fresh: Vec<TaskSpec> = Vec::with_capacity(tasks.len());
                let mut resend = Vec::new();
                let mut refused = Vec::new();
                for mut task in tasks {
                    if let Some(error) = self.refusal(&task) {
                        tracing::warn!(task_id = %task.task_id, "refused: {}", error.message);
                        if self.journal.entry(&task.task_id).is_none() {
                            refused.push(TaskResult::failed(task.task_id, error));
                        }
                        continue;
                    }
                    if task.walltime_ms.is_none() {
                        task.walltime_ms = self.task_walltime_ms;
                    }
                    match self.journal.entry(&task.task_id) {
                        None => fresh.push(task),
                        Some(Entry::Pending) => {}
                        Some(Entry::Finished) => {
                            if let Some(result) = self.unstored.get(&task.task_id) {
                                resend.push(result.clone());
                            }
                        }
                    }
                }
                // A `write(2)` is quick; only waiting for the disk is worth handing this
                // thread's other tasks to another thread.
                if self.journal.syncs() {
                    tokio::task::block_in_place(|| self.journal.append_tasks(&fresh))?;
                } else {
                    self.journal.append_tasks(&fresh)?;
                }
                self.interchange.submit(fresh, now_micros());
                link.send(&AgentMessage::TasksAccepted { task_ids }).await?;
                if !resend.is_empty() {
                    link.send(&AgentMessage::Results { results: resend })
                        .await?;
                }
                if !refused.is_empty() {
                    // Not journaled: were the agent to crash first, the service would send
                    // the task again and get the same refusal.
                    for result in &refused {
                        self.unstored.insert(result.task_id, result.clone());
                    }
                    link.send(&AgentMessage::Results { results: refused })
                        .await?;
                }
            }
            ServiceMessage::ResultsStored { task_ids } => {
                for id in &task_ids {
                    self.unstored.remove(id);
                }
                self.journal.mark_stored(&task_ids)?;
            }
            ServiceMessage::Welcome { .. } => {}
            ServiceMessage::Refused { reason } => {
                anyhow::bail!("the service refused this agent: {reason}")
            }
        }
        Ok(())
    }

    /// Why this endpoint will not run `task`, if it will not: a container the
    /// endpoint's `allowed_containers` does not list.
    fn refusal(&self, task: &TaskSpec) -> Option<TaskError> {
        let allowed = self.allowed_containers.as_ref()?;
        let container = task.function.container.as_ref()?;
        let listed: Vec<String> = allowed
            .iter()
            .map(|p| format!("{}:{}", p.runtime, p.image.as_deref().unwrap_or("*")))
            .collect();
        let message = if !allowed.iter().any(|p| p.matches(container)) {
            format!(
                "container {}:{} is not allowed on this endpoint (allowed_containers: {})",
                container.runtime,
                container.image,
                listed.join(", ")
            )
        } else if container
            .options
            .as_deref()
            .is_some_and(|o| !o.trim().is_empty())
        {
            // Options could bind or expose anything; an endpoint that restricts
            // containers sets them itself.
            format!(
                "container options (`{}`) are not accepted on an endpoint that restricts containers",
                container.options.as_deref().unwrap_or_default()
            )
        } else {
            return None;
        };
        Some(TaskError::system(
            ErrorKind::Endpoint,
            "ContainerNotAllowed",
            message,
        ))
    }

    /// Applies interchange events; returns the results to send to the service.
    fn on_events(
        &mut self,
        events: Vec<InterchangeEvent>,
        blocks: &mut Blocks,
    ) -> anyhow::Result<Vec<TaskResult>> {
        let mut results = Vec::new();
        for event in events {
            match event {
                InterchangeEvent::Results(batch) => results.extend(batch),
                InterchangeEvent::ManagerRegistered {
                    block_id,
                    manager_id,
                    host,
                    job_id,
                } => {
                    let actions = blocks.on_manager_registered(
                        &block_id,
                        &manager_id,
                        &host,
                        job_id.as_deref(),
                    );
                    self.apply(actions);
                }
                InterchangeEvent::ManagerGone {
                    block_id,
                    manager_id,
                    clean,
                } => {
                    // A lost node drains its block's other nodes at once, not at the
                    // next strategy round.
                    let actions = blocks.on_manager_gone(&block_id, &manager_id, clean);
                    self.apply(actions);
                }
                InterchangeEvent::Status(status) => self.status = status,
            }
        }
        if !results.is_empty() {
            self.journal.append_results(&results)?;
            let stamp = now_micros();
            for result in &mut results {
                result.timing.agent_sent = stamp;
                self.unstored.insert(result.task_id, result.clone());
            }
        }
        Ok(results)
    }

    fn strategy_round(&mut self, blocks: &mut Blocks) {
        // The journal counts accepted work at once; the interchange's snapshot lags.
        let outstanding = self.journal.pending() as u64;
        let managers = &self.status.managers;
        // Provider calls may run scheduler commands for seconds.
        let actions = tokio::task::block_in_place(|| blocks.strategy_round(outstanding, managers));
        self.apply(actions);
    }

    /// Tells the interchange what the blocks decided.
    fn apply(&self, actions: Vec<BlockAction>) {
        for action in actions {
            match action {
                BlockAction::Drain(block_id) => {
                    tracing::info!(%block_id, "draining block");
                    self.interchange.drain_block(&block_id);
                }
                BlockAction::Lost { block_id, reason } => {
                    tracing::warn!(%block_id, "{reason}");
                    self.interchange.block_lost(&block_id, reason);
                }
            }
        }
    }

    fn endpoint_status(&self, blocks: &Blocks) -> EndpointStatus {
        EndpointStatus {
            outstanding_tasks: (self.status.queued + self.status.dispatched) as u64,
            managers: self.status.managers.clone(),
            blocks: blocks.statuses(&self.status.managers),
            paused: blocks.paused().map(str::to_owned),
            submit_error: blocks.submit_error().map(str::to_owned),
        }
    }
}
