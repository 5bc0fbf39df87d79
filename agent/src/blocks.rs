//! Blocks (pilot jobs) and the scaling strategy that decides how many there should be.
//!
//! Block state comes mainly from events: a manager registers with its block id, a
//! manager says goodbye or goes silent. The provider is polled rarely
//! (`status_poll_period`), always in one call for all blocks, and a job missing from its
//! answer (`Unknown`) is never taken as finished: the next poll or the block's managers
//! settle it.
//!
//! Scale-out: `ceil((tasks x parallelism - slots) / slots_per_block)` within
//! `min_blocks..max_blocks`. Scale-in, after `max_idletime` without work: queued pilots
//! are cancelled first, then running blocks whose managers hold no task are drained
//! (their managers finish and exit, which ends the pilot). A block with a task on it is
//! never cancelled. Submission failures back off, then pause provisioning until an
//! admin resumes it.
//!
//! A block spans `nodes_per_block` nodes, one manager each, and is bookkept per node: the
//! managers it has (each with the node name and job id it reported), and the nodes it
//! lost. A block whose nodes are not all up counts the slots of the managers that
//! registered, not of those it asked for. A manager that goes silent (a dead node) makes
//! its block half-dead: the scheduler will end the whole job once it notices the node,
//! killing whatever runs on the others. So the block stops counting as capacity (a
//! replacement is submitted when there is work), its surviving managers are drained
//! (they finish their tasks and take no more), and the job is cancelled once they are
//! gone, never under a running task.

use scifaas_protocol::link::{BlockNode, BlockStatus, ManagerStatus};
use scifaas_providers::{BlockRequest, JobId, JobState, Provider};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// The knobs of scaling; from the endpoint config.
#[derive(Clone, Debug)]
pub struct ScalingPolicy {
    pub init_blocks: u32,
    pub min_blocks: u32,
    pub max_blocks: u32,
    pub nodes_per_block: u32,
    pub workers_per_node: u32,
    pub parallelism: f64,
    pub max_idletime: Duration,
    /// How often to ask the provider for block states (one call for all blocks).
    pub status_poll_period: Duration,
}

impl ScalingPolicy {
    fn slots_per_block(&self) -> u64 {
        u64::from(self.nodes_per_block.max(1)) * u64::from(self.workers_per_node.max(1))
    }

    /// How many blocks to add for `outstanding` tasks when `active` blocks (and
    /// `slots` worker slots among them) exist: enough to cover
    /// `tasks x parallelism`, within `max_blocks`, and at least enough to reach
    /// `min_blocks`.
    pub fn blocks_to_add(&self, outstanding: u64, active: u32, slots: u64) -> u32 {
        let wanted_slots = (outstanding as f64 * self.parallelism).ceil() as u64;
        let mut add = if outstanding > 0 && wanted_slots > slots {
            (wanted_slots - slots).div_ceil(self.slots_per_block()) as u32
        } else {
            0
        };
        // Some work always gets a block, whatever the parallelism.
        if outstanding > 0 && active == 0 {
            add = add.max(1);
        }
        add = add.max(self.min_blocks.saturating_sub(active));
        add.min(self.max_blocks.saturating_sub(active))
    }
}

/// After this many submission failures in a row, provisioning pauses until resumed.
pub const PAUSE_AFTER_FAILURES: u32 = 3;

/// Wait before the next submission after `failures` failures in a row.
fn submit_backoff(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        2 => Duration::from_secs(60),
        _ => Duration::from_secs(15 * 60),
    }
}

/// One manager of a block, as it reported itself at registration.
#[derive(Clone, Debug)]
struct NodeManager {
    manager_id: String,
    /// The node's name (`SLURMD_NODENAME` under Slurm, else the host name).
    host: String,
    /// The batch job the manager says it runs in.
    job_id: Option<String>,
}

/// One pilot job.
#[derive(Debug)]
struct Block {
    job_id: JobId,
    state: JobState,
    /// Managers registered and not gone, by manager id.
    managers: BTreeMap<String, NodeManager>,
    /// Managers that went silent (their node died), oldest first; kept for the status.
    lost: Vec<NodeManager>,
    /// Whether any manager ever registered (a block whose managers all left is over).
    ever_registered: bool,
    /// The agent is ending this block: it takes no work and is no capacity.
    draining: bool,
    /// The agent asked the scheduler to cancel the job.
    cancel_requested: bool,
    /// Why the agent is ending the block, when it is not scale-in.
    message: Option<String>,
}

impl Block {
    fn new(job_id: JobId) -> Self {
        Self {
            job_id,
            state: JobState::Pending,
            managers: BTreeMap::new(),
            lost: Vec::new(),
            ever_registered: false,
            draining: false,
            cancel_requested: false,
            message: None,
        }
    }

    /// Whether the block still counts: its job not ended, the agent not ending it, and
    /// not every manager it had gone.
    fn is_active(&self) -> bool {
        let all_left = self.ever_registered && self.managers.is_empty();
        !(self.state.is_terminal() || self.draining || all_left)
    }

    /// A drained block whose managers are all gone, and whose job is still there.
    fn awaits_cancel(&self) -> bool {
        self.draining && self.managers.is_empty() && !self.state.is_terminal()
    }
}

/// What the agent must tell the interchange after a strategy round.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockAction {
    /// Ask the block's managers to finish their tasks and exit.
    Drain(String),
    /// The block's job ended while managers were registered: they are lost with it.
    Lost { block_id: String, reason: String },
}

/// The agent's blocks and their provider.
pub struct Blocks {
    provider: Box<dyn Provider>,
    policy: ScalingPolicy,
    blocks: BTreeMap<String, Block>,
    next_index: u64,
    idle_since: Option<Instant>,
    last_poll: Option<Instant>,
    submit_failures: u32,
    next_submit_at: Option<Instant>,
    /// The last submission error, until a submission works.
    submit_error: Option<String>,
    /// Set after repeated submission failures; cleared by [`Blocks::resume`].
    paused: Option<String>,
    /// Builds the request for a new block (script dir, manager command, environment).
    make_request: Box<dyn Fn(&str) -> BlockRequest + Send>,
}

impl Blocks {
    pub fn new(
        provider: Box<dyn Provider>,
        policy: ScalingPolicy,
        make_request: Box<dyn Fn(&str) -> BlockRequest + Send>,
    ) -> Self {
        Self {
            provider,
            policy,
            blocks: BTreeMap::new(),
            next_index: 0,
            idle_since: None,
            last_poll: None,
            submit_failures: 0,
            next_submit_at: None,
            submit_error: None,
            paused: None,
            make_request,
        }
    }

    /// Blocks that count towards capacity: not ended, not being ended.
    fn active(&self) -> impl Iterator<Item = &Block> {
        self.blocks.values().filter(|b| b.is_active())
    }

    /// Worker slots of the active blocks. A block whose managers have registered counts
    /// those of its managers that take work (`managers` is the interchange's view, which
    /// knows who drains ahead of its walltime), not the nodes it asked for; a queued block
    /// counts what it will bring.
    fn slots(&self, managers: &[ManagerStatus]) -> u64 {
        let per_node = u64::from(self.policy.workers_per_node.max(1));
        let draining: HashSet<&str> = managers
            .iter()
            .filter(|m| m.draining)
            .map(|m| m.manager_id.as_str())
            .collect();
        self.active()
            .map(|b| {
                if b.ever_registered {
                    let taking_work = b
                        .managers
                        .keys()
                        .filter(|id| !draining.contains(id.as_str()))
                        .count();
                    taking_work as u64 * per_node
                } else {
                    self.policy.slots_per_block()
                }
            })
            .sum()
    }

    /// Whether any block is queued or running (and not draining).
    pub fn has_active(&self) -> bool {
        self.active().next().is_some()
    }

    /// Submits the configured initial blocks.
    pub fn start(&mut self) {
        let n = self.policy.init_blocks.max(self.policy.min_blocks);
        for _ in 0..n {
            if !self.submit_one() {
                break;
            }
        }
    }

    /// Submits one block; false when it failed or provisioning is held back.
    fn submit_one(&mut self) -> bool {
        if self.paused.is_some() {
            return false;
        }
        if let Some(at) = self.next_submit_at {
            if Instant::now() < at {
                return false;
            }
        }
        let block_id = format!("block-{}", self.next_index);
        self.next_index += 1;
        let request = (self.make_request)(&block_id);
        match self.provider.submit(&request) {
            Ok(job_id) => {
                self.on_submitted(block_id, job_id);
                true
            }
            Err(err) => {
                self.on_submission_failed(&block_id, err.to_string());
                false
            }
        }
    }

    fn on_submitted(&mut self, block_id: String, job_id: JobId) {
        tracing::info!(%block_id, %job_id, provider = self.provider.name(), "submitted a block");
        self.submit_failures = 0;
        self.next_submit_at = None;
        self.submit_error = None;
        self.blocks.insert(block_id, Block::new(job_id));
    }

    fn on_submission_failed(&mut self, block_id: &str, error: String) {
        self.submit_failures += 1;
        tracing::error!(%block_id, failures = self.submit_failures, "submitting a block failed: {error}");
        if self.submit_failures >= PAUSE_AFTER_FAILURES {
            tracing::error!(
                "provisioning paused after {} failed submissions; fix the cause, then `scifaas endpoint resume`",
                self.submit_failures
            );
            self.paused = Some(format!(
                "paused after {} failed submissions; last error: {error}",
                self.submit_failures
            ));
        }
        self.next_submit_at = Some(Instant::now() + submit_backoff(self.submit_failures));
        self.submit_error = Some(error);
    }

    /// Lifts a pause: the next strategy round submits again.
    pub fn resume(&mut self) {
        if self.paused.take().is_some() {
            tracing::info!("provisioning resumed");
        }
        self.submit_failures = 0;
        self.next_submit_at = None;
    }

    /// A manager of `block_id` registered from node `host`, in batch job `job_id`. A
    /// manager that joins a block the agent is ending is drained at once.
    pub fn on_manager_registered(
        &mut self,
        block_id: &str,
        manager_id: &str,
        host: &str,
        job_id: Option<&str>,
    ) -> Vec<BlockAction> {
        let Some(block) = self.blocks.get_mut(block_id) else {
            tracing::warn!(%block_id, %manager_id, %host, "a manager registered for a block this agent did not start");
            return Vec::new();
        };
        if job_id.is_some_and(|j| j != block.job_id.0) {
            tracing::warn!(%block_id, %manager_id, %host, job_id = ?job_id, block_job = %block.job_id, "the manager runs in another job than its block's");
        }
        block.managers.insert(
            manager_id.to_owned(),
            NodeManager {
                manager_id: manager_id.to_owned(),
                host: host.to_owned(),
                job_id: job_id.map(str::to_owned),
            },
        );
        block.ever_registered = true;
        if matches!(
            block.state,
            JobState::Pending | JobState::Unknown | JobState::Held
        ) {
            block.state = JobState::Running;
        }
        if block.draining {
            vec![BlockAction::Drain(block_id.to_owned())]
        } else {
            Vec::new()
        }
    }

    /// A manager of `block_id` left: said goodbye (`clean`), or went silent past the
    /// heartbeat threshold. A silent one takes its node with it: the block is ended
    /// without killing a task on its other nodes (see the module doc).
    pub fn on_manager_gone(
        &mut self,
        block_id: &str,
        manager_id: &str,
        clean: bool,
    ) -> Vec<BlockAction> {
        let Some(block) = self.blocks.get_mut(block_id) else {
            return Vec::new();
        };
        let Some(manager) = block.managers.remove(manager_id) else {
            return Vec::new();
        };
        if clean {
            return Vec::new();
        }
        let host = manager.host.clone();
        block.lost.push(manager);
        if block.state.is_terminal() || block.draining {
            return Vec::new();
        }
        let message = format!(
            "node {host} lost (its manager {manager_id} went silent): draining the block's other nodes, then cancelling it"
        );
        tracing::warn!(%block_id, job_id = %block.job_id, "{message}");
        block.draining = true;
        block.message = Some(message);
        if block.managers.is_empty() {
            // Nothing to drain: the next strategy round cancels the job.
            Vec::new()
        } else {
            vec![BlockAction::Drain(block_id.to_owned())]
        }
    }

    /// One strategy round: refresh states when due, scale out for `outstanding` tasks,
    /// scale in after `max_idletime` without work. `managers` is the interchange's view.
    pub fn strategy_round(
        &mut self,
        outstanding: u64,
        managers: &[ManagerStatus],
    ) -> Vec<BlockAction> {
        let mut actions = Vec::new();
        let due = self
            .last_poll
            .is_none_or(|at| at.elapsed() >= self.policy.status_poll_period);
        if due {
            self.poll(&mut actions);
        }
        self.cancel_drained();
        let active = self.active().count() as u32;
        let add = self
            .policy
            .blocks_to_add(outstanding, active, self.slots(managers));
        for _ in 0..add {
            if !self.submit_one() {
                break;
            }
        }
        if outstanding > 0 {
            self.idle_since = None;
            return actions;
        }
        let idle_since = *self.idle_since.get_or_insert_with(Instant::now);
        if idle_since.elapsed() < self.policy.max_idletime {
            return actions;
        }
        self.scale_in(managers, &mut actions);
        actions
    }

    fn scale_in(&mut self, managers: &[ManagerStatus], actions: &mut Vec<BlockAction>) {
        let busy_blocks: HashSet<&str> = managers
            .iter()
            .filter(|m| m.outstanding_tasks > 0)
            .map(|m| m.block_id.as_str())
            .collect();
        let mut excess = (self.active().count() as u32).saturating_sub(self.policy.min_blocks);
        let mut cancel = Vec::new();
        // Queued pilots first: they cost nothing to drop.
        for block in self.blocks.values_mut() {
            if excess == 0 {
                break;
            }
            if block.is_active() && !block.ever_registered {
                cancel.push(block.job_id.clone());
                block.draining = true;
                block.cancel_requested = true;
                excess -= 1;
            }
        }
        for (block_id, block) in &mut self.blocks {
            if excess == 0 {
                break;
            }
            if block.is_active() && !busy_blocks.contains(block_id.as_str()) {
                block.draining = true;
                actions.push(BlockAction::Drain(block_id.clone()));
                excess -= 1;
            }
        }
        if !cancel.is_empty() {
            if let Err(err) = self.provider.cancel(&cancel) {
                tracing::warn!("cancelling queued blocks failed: {err}");
            }
        }
    }

    /// Cancels, in one call, the drained blocks whose managers are all gone and whose
    /// job is still there (a half-dead block's survivors finished, a drained manager
    /// exited but its job lingers), once each; the poll repeats it for one that lingers.
    fn cancel_drained(&mut self) {
        let mut jobs = Vec::new();
        for (block_id, block) in &mut self.blocks {
            if block.awaits_cancel() && !block.cancel_requested {
                tracing::info!(%block_id, job_id = %block.job_id, "drained: cancelling the block's job");
                block.cancel_requested = true;
                jobs.push(block.job_id.clone());
            }
        }
        if !jobs.is_empty() {
            if let Err(err) = self.provider.cancel(&jobs) {
                tracing::warn!("cancelling drained blocks failed: {err}");
            }
        }
    }

    /// Refreshes block states with one provider call. A block whose job ended while it
    /// still had managers has lost them; a drained block whose managers all left but
    /// whose job lingers is cancelled (again); ended blocks are forgotten.
    fn poll(&mut self, actions: &mut Vec<BlockAction>) {
        self.last_poll = Some(Instant::now());
        let jobs: Vec<JobId> = self.blocks.values().map(|b| b.job_id.clone()).collect();
        if jobs.is_empty() {
            return;
        }
        let states = match self.provider.status(&jobs) {
            Ok(states) => states,
            Err(err) => {
                tracing::warn!("polling block states failed: {err}");
                return;
            }
        };
        let mut linger = Vec::new();
        for (block_id, block) in &mut self.blocks {
            let Some(status) = states.get(&block.job_id) else {
                continue;
            };
            // Unknown is not completed: keep what we knew.
            if status.state != JobState::Unknown && status.state != block.state {
                tracing::info!(%block_id, job_id = %block.job_id, from = %block.state, to = %status.state, "block state changed");
                block.state = status.state;
            }
            if block.state.is_terminal() && !block.managers.is_empty() {
                // The end of its walltime is a pilot's normal end; its tasks are lost
                // all the same (retried or failed).
                let how = if block.state == JobState::Timeout {
                    "reached its walltime".to_owned()
                } else {
                    format!("ended {}", block.state)
                };
                let mut reason =
                    format!("pilot lost: block {block_id} (job {}) {how}", block.job_id);
                if let Some(message) = &status.message {
                    reason.push_str(&format!(" ({message})"));
                }
                actions.push(BlockAction::Lost {
                    block_id: block_id.clone(),
                    reason,
                });
                block.managers.clear();
            }
            if block.awaits_cancel() && block.cancel_requested {
                linger.push(block.job_id.clone());
            }
        }
        if !linger.is_empty() {
            if let Err(err) = self.provider.cancel(&linger) {
                tracing::warn!("cancelling drained blocks failed: {err}");
            }
        }
        self.blocks.retain(|_, b| !b.state.is_terminal());
    }

    /// Cancels every block (agent shutdown).
    pub fn cancel_all(&mut self) {
        let jobs: Vec<JobId> = self
            .blocks
            .values()
            .filter(|b| !b.state.is_terminal())
            .map(|b| b.job_id.clone())
            .collect();
        if !jobs.is_empty() {
            if let Err(err) = self.provider.cancel(&jobs) {
                tracing::warn!("cancelling blocks at shutdown failed: {err}");
            }
        }
        self.blocks.clear();
    }

    /// Every block with its nodes: the managers it has (their workers from `managers`,
    /// the interchange's view), then the nodes it lost.
    pub fn statuses(&self, managers: &[ManagerStatus]) -> Vec<BlockStatus> {
        let live: HashMap<&str, &ManagerStatus> = managers
            .iter()
            .map(|m| (m.manager_id.as_str(), m))
            .collect();
        self.blocks
            .iter()
            .map(|(block_id, b)| {
                let mut nodes: Vec<BlockNode> = b
                    .managers
                    .values()
                    .map(|m| {
                        let status = live.get(m.manager_id.as_str());
                        let draining = b.draining || status.is_some_and(|s| s.draining);
                        node_view(m, if draining { "draining" } else { "up" }, status)
                    })
                    .collect();
                nodes.sort_by(|x, y| x.host.cmp(&y.host));
                nodes.extend(b.lost.iter().map(|m| node_view(m, "lost", None)));
                BlockStatus {
                    block_id: block_id.clone(),
                    job_id: b.job_id.to_string(),
                    state: if b.draining && !b.state.is_terminal() {
                        "draining".to_owned()
                    } else {
                        b.state.to_string()
                    },
                    managers: b.managers.len() as u32,
                    requested_nodes: self.policy.nodes_per_block.max(1),
                    nodes,
                    message: b.message.clone(),
                }
            })
            .collect()
    }

    pub fn paused(&self) -> Option<&str> {
        self.paused.as_deref()
    }

    pub fn submit_error(&self) -> Option<&str> {
        self.submit_error.as_deref()
    }
}

/// One node of a block for the status; workers come from the interchange's view.
fn node_view(manager: &NodeManager, state: &str, status: Option<&&ManagerStatus>) -> BlockNode {
    BlockNode {
        host: manager.host.clone(),
        manager_id: manager.manager_id.clone(),
        job_id: manager.job_id.clone(),
        state: state.to_owned(),
        workers: status.map_or(0, |s| s.workers),
        busy_workers: status.map_or(0, |s| s.busy_workers),
        idle_workers: status.map_or(0, |s| s.idle_workers),
    }
}

#[cfg(test)]
mod tests;
