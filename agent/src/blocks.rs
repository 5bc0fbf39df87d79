//! Blocks (pilot jobs) and the scaling strategy that decides how many there should be.
//!
//! Block state comes mainly from events (a manager registers with its block id); the
//! provider is polled on the strategy period, in one call for all blocks. A block that
//! the provider reports as unknown is not treated as finished until a later poll says
//! so or its managers are gone.

use scifaas_protocol::link::BlockStatus;
use scifaas_providers::{BlockRequest, JobId, JobState, Provider};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
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
}

impl ScalingPolicy {
    fn slots_per_block(&self) -> u64 {
        u64::from(self.nodes_per_block.max(1)) * u64::from(self.workers_per_node.max(1))
    }

    /// How many blocks to add for `outstanding` tasks when `active` blocks exist:
    /// `ceil((tasks x parallelism - slots) / slots_per_block)`, within `max_blocks`,
    /// and at least enough to reach `min_blocks`.
    pub fn blocks_to_add(&self, outstanding: u64, active: u32) -> u32 {
        let slots = u64::from(active) * self.slots_per_block();
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

/// One pilot job.
#[derive(Debug)]
struct Block {
    job_id: JobId,
    state: JobState,
    managers: HashSet<String>,
    draining: bool,
}

/// The agent's blocks and their provider.
pub struct Blocks {
    provider: Box<dyn Provider>,
    policy: ScalingPolicy,
    blocks: BTreeMap<String, Block>,
    next_index: u64,
    idle_since: Option<Instant>,
    /// The last submission error, reported in the endpoint status until a submit works.
    pub last_error: Option<String>,
    /// Builds the request for a new block (script dir, manager command, environment).
    make_request: Box<dyn Fn(&str) -> BlockRequest + Send>,
    /// Where blocks' directories live.
    pub blocks_dir: PathBuf,
}

impl Blocks {
    pub fn new(
        provider: Box<dyn Provider>,
        policy: ScalingPolicy,
        blocks_dir: PathBuf,
        make_request: Box<dyn Fn(&str) -> BlockRequest + Send>,
    ) -> Self {
        Self {
            provider,
            policy,
            blocks: BTreeMap::new(),
            next_index: 0,
            idle_since: None,
            last_error: None,
            make_request,
            blocks_dir,
        }
    }

    fn active(&self) -> u32 {
        self.blocks
            .values()
            .filter(|b| !b.state.is_terminal() && !b.draining)
            .count() as u32
    }

    /// Submits the configured initial blocks.
    pub fn start(&mut self) {
        let n = self.policy.init_blocks.max(self.policy.min_blocks);
        for _ in 0..n {
            self.submit_one();
        }
    }

    fn submit_one(&mut self) {
        let block_id = format!("block-{}", self.next_index);
        self.next_index += 1;
        let request = (self.make_request)(&block_id);
        match self.provider.submit(&request) {
            Ok(job_id) => {
                tracing::info!(%block_id, job_id = %job_id, provider = self.provider.name(), "submitted a block");
                self.last_error = None;
                self.blocks.insert(
                    block_id,
                    Block {
                        job_id,
                        state: JobState::Pending,
                        managers: HashSet::new(),
                        draining: false,
                    },
                );
            }
            Err(err) => {
                tracing::error!(%block_id, "submitting a block failed: {err}");
                self.last_error = Some(err.to_string());
            }
        }
    }

    pub fn on_manager_registered(&mut self, block_id: &str, manager_id: &str) {
        if let Some(block) = self.blocks.get_mut(block_id) {
            block.managers.insert(manager_id.to_owned());
            if block.state == JobState::Pending || block.state == JobState::Unknown {
                block.state = JobState::Running;
            }
        }
    }

    pub fn on_manager_gone(&mut self, block_id: &str, manager_id: &str) {
        if let Some(block) = self.blocks.get_mut(block_id) {
            block.managers.remove(manager_id);
        }
    }

    /// One strategy round: refresh states, scale out for `outstanding` tasks, scale in
    /// after `max_idletime` without work. Returns the blocks to drain.
    pub fn strategy_round(&mut self, outstanding: u64) -> Vec<String> {
        self.poll();
        let add = self.policy.blocks_to_add(outstanding, self.active());
        for _ in 0..add {
            self.submit_one();
        }
        if outstanding > 0 {
            self.idle_since = None;
            return Vec::new();
        }
        let idle_since = *self.idle_since.get_or_insert_with(Instant::now);
        if idle_since.elapsed() < self.policy.max_idletime {
            return Vec::new();
        }
        // Scale in, never below min_blocks: queued pilots first (cancel them), then
        // drain running ones (their managers finish and exit; the block then ends).
        let mut excess = self.active().saturating_sub(self.policy.min_blocks);
        let mut cancel = Vec::new();
        let mut drain = Vec::new();
        for (block_id, block) in self
            .blocks
            .iter_mut()
            .filter(|(_, b)| !b.state.is_terminal() && !b.draining)
        {
            if excess == 0 {
                break;
            }
            if block.managers.is_empty() {
                cancel.push(block.job_id.clone());
            } else {
                drain.push(block_id.clone());
            }
            block.draining = true;
            excess -= 1;
        }
        if !cancel.is_empty() {
            if let Err(err) = self.provider.cancel(&cancel) {
                tracing::warn!("cancelling idle blocks failed: {err}");
            }
        }
        drain
    }

    /// Refreshes block states with one provider call and forgets finished blocks.
    fn poll(&mut self) {
        let jobs: Vec<JobId> = self.blocks.values().map(|b| b.job_id.clone()).collect();
        if jobs.is_empty() {
            return;
        }
        match self.provider.status(&jobs) {
            Ok(states) => {
                for (block_id, block) in &mut self.blocks {
                    if let Some(status) = states.get(&block.job_id) {
                        if status.state != block.state {
                            tracing::info!(%block_id, from = %block.state, to = %status.state, "block state changed");
                        }
                        // Unknown is not completed: keep what we knew.
                        if status.state != JobState::Unknown {
                            block.state = status.state;
                        }
                    }
                }
                self.blocks.retain(|_, b| !b.state.is_terminal());
            }
            Err(err) => tracing::warn!("polling block states failed: {err}"),
        }
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

    pub fn statuses(&self) -> Vec<BlockStatus> {
        self.blocks
            .iter()
            .map(|(block_id, b)| BlockStatus {
                block_id: block_id.clone(),
                job_id: b.job_id.to_string(),
                state: b.state.to_string(),
                managers: b.managers.len() as u32,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalingPolicy {
        ScalingPolicy {
            init_blocks: 0,
            min_blocks: 0,
            max_blocks: 4,
            nodes_per_block: 2,
            workers_per_node: 4,
            parallelism: 1.0,
            max_idletime: Duration::from_secs(120),
        }
    }

    #[test]
    fn scale_out_follows_the_formula_within_bounds() {
        let p = policy();
        assert_eq!(p.blocks_to_add(0, 0), 0);
        assert_eq!(p.blocks_to_add(1, 0), 1);
        assert_eq!(p.blocks_to_add(8, 0), 1);
        assert_eq!(p.blocks_to_add(9, 0), 2);
        assert_eq!(p.blocks_to_add(9, 1), 1);
        assert_eq!(p.blocks_to_add(1000, 1), 3, "capped by max_blocks");
        let half = ScalingPolicy {
            parallelism: 0.5,
            ..p.clone()
        };
        assert_eq!(half.blocks_to_add(32, 0), 2);
        let floor = ScalingPolicy { min_blocks: 2, ..p };
        assert_eq!(floor.blocks_to_add(0, 0), 2, "min_blocks is kept");
    }
}
