//! The strategy's decisions, against a scripted provider that records what it is asked
//! and answers what the test tells it to.

use super::*;
use scifaas_providers::{JobStatus, ProviderError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Script {
    submitted: Vec<String>,
    cancelled: Vec<JobId>,
    states: HashMap<JobId, JobState>,
    fail_submit: Option<String>,
    polls: u32,
}

#[derive(Clone, Default)]
struct ScriptedProvider(Arc<Mutex<Script>>);

impl Provider for ScriptedProvider {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn submit(&self, block: &BlockRequest) -> Result<JobId, ProviderError> {
        let mut s = self.0.lock().unwrap();
        if let Some(message) = &s.fail_submit {
            return Err(ProviderError::Unsupported {
                provider: "scripted",
                message: message.clone(),
            });
        }
        s.submitted.push(block.block_id.clone());
        let job = JobId(format!("job-{}", s.submitted.len()));
        s.states.insert(job.clone(), JobState::Pending);
        Ok(job)
    }
    fn status(&self, jobs: &[JobId]) -> Result<HashMap<JobId, JobStatus>, ProviderError> {
        let mut s = self.0.lock().unwrap();
        s.polls += 1;
        Ok(jobs
            .iter()
            .map(|j| {
                let state = s.states.get(j).copied().unwrap_or(JobState::Unknown);
                (j.clone(), JobStatus::new(state))
            })
            .collect())
    }
    fn cancel(&self, jobs: &[JobId]) -> Result<(), ProviderError> {
        let mut s = self.0.lock().unwrap();
        for job in jobs {
            s.cancelled.push(job.clone());
            s.states.insert(job.clone(), JobState::Cancelled);
        }
        Ok(())
    }
}

fn policy() -> ScalingPolicy {
    ScalingPolicy {
        init_blocks: 0,
        min_blocks: 0,
        max_blocks: 4,
        nodes_per_block: 2,
        workers_per_node: 4,
        parallelism: 1.0,
        max_idletime: Duration::ZERO,
        status_poll_period: Duration::ZERO,
    }
}

fn blocks(policy: ScalingPolicy) -> (Blocks, ScriptedProvider) {
    let provider = ScriptedProvider::default();
    let blocks = Blocks::new(
        Box::new(provider.clone()),
        policy,
        Box::new(|id: &str| BlockRequest {
            block_id: id.to_owned(),
            dir: std::env::temp_dir(),
            endpoint_name: "t".into(),
            nodes: 2,
            walltime: None,
            worker_init: String::new(),
            manager_command: vec!["true".into()],
            env: vec![],
        }),
    );
    (blocks, provider)
}

fn manager(block: &str, outstanding: u32) -> ManagerStatus {
    ManagerStatus {
        manager_id: format!("{block}-m"),
        block_id: block.into(),
        host: "h".into(),
        workers: 4,
        busy_workers: outstanding.min(4),
        idle_workers: 4 - outstanding.min(4),
        outstanding_tasks: outstanding,
        draining: false,
        container_switches: 0,
    }
}

#[test]
fn scale_out_follows_the_formula_within_bounds() {
    let p = policy();
    assert_eq!(p.blocks_to_add(0, 0, 0), 0);
    assert_eq!(p.blocks_to_add(1, 0, 0), 1);
    assert_eq!(p.blocks_to_add(8, 0, 0), 1);
    assert_eq!(p.blocks_to_add(9, 0, 0), 2);
    assert_eq!(p.blocks_to_add(9, 1, 8), 1);
    assert_eq!(p.blocks_to_add(1000, 1, 8), 3, "capped by max_blocks");
    let half = ScalingPolicy {
        parallelism: 0.5,
        ..p.clone()
    };
    assert_eq!(half.blocks_to_add(32, 0, 0), 2);
    let floor = ScalingPolicy { min_blocks: 2, ..p };
    assert_eq!(floor.blocks_to_add(0, 0, 0), 2, "min_blocks is kept");
}

#[test]
fn a_block_counts_only_the_managers_that_registered() {
    let (mut b, provider) = blocks(ScalingPolicy {
        max_blocks: 2,
        ..policy()
    });
    b.strategy_round(8, &[]);
    assert_eq!(provider.0.lock().unwrap().submitted.len(), 1);
    // One of the block's two nodes came up: 4 slots, not 8, so 8 tasks want more.
    b.on_manager_registered("block-0", "m1");
    b.strategy_round(8, &[]);
    assert_eq!(provider.0.lock().unwrap().submitted.len(), 2);
}

#[test]
fn idle_blocks_go_queued_first_and_busy_blocks_are_never_touched() {
    let (mut b, provider) = blocks(ScalingPolicy {
        max_blocks: 3,
        ..policy()
    });
    b.strategy_round(24, &[]);
    assert_eq!(provider.0.lock().unwrap().submitted.len(), 3);
    b.on_manager_registered("block-0", "block-0-m");
    b.on_manager_registered("block-1", "block-1-m");
    // No work left at the interchange, but block-1's manager still holds a task.
    let actions = b.strategy_round(0, &[manager("block-0", 0), manager("block-1", 1)]);
    assert_eq!(actions, vec![BlockAction::Drain("block-0".into())]);
    let s = provider.0.lock().unwrap();
    assert_eq!(
        s.cancelled,
        vec![JobId("job-3".into())],
        "the queued block is cancelled"
    );
}

#[test]
fn a_job_that_ends_under_its_managers_loses_them() {
    let (mut b, provider) = blocks(policy());
    b.strategy_round(1, &[]);
    b.on_manager_registered("block-0", "m");
    provider
        .0
        .lock()
        .unwrap()
        .states
        .insert(JobId("job-1".into()), JobState::Cancelled);
    let actions = b.strategy_round(1, &[]);
    assert!(
        matches!(&actions[..], [BlockAction::Lost { block_id, reason }] if block_id == "block-0" && reason.contains("pilot lost") && reason.contains("cancelled")),
        "{actions:?}"
    );
    // The work is still there: a new block replaces the lost one.
    assert_eq!(provider.0.lock().unwrap().submitted.len(), 2);
}

#[test]
fn an_unknown_job_is_not_taken_as_finished() {
    let (mut b, provider) = blocks(policy());
    b.strategy_round(1, &[]);
    provider.0.lock().unwrap().states.clear();
    b.strategy_round(1, &[]);
    assert_eq!(b.statuses().len(), 1);
    assert_eq!(b.statuses()[0].state, "pending");
    assert_eq!(
        provider.0.lock().unwrap().submitted.len(),
        1,
        "no duplicate block"
    );
}

#[test]
fn polls_are_rare_and_batched() {
    let (mut b, provider) = blocks(ScalingPolicy {
        status_poll_period: Duration::from_secs(3600),
        ..policy()
    });
    b.strategy_round(100, &[]);
    for _ in 0..10 {
        b.strategy_round(100, &[]);
    }
    assert_eq!(
        provider.0.lock().unwrap().polls,
        0,
        "the first round had no block to poll"
    );
    let (mut b, provider) = blocks(policy());
    b.strategy_round(100, &[]);
    b.strategy_round(100, &[]);
    assert_eq!(
        provider.0.lock().unwrap().polls,
        1,
        "one call for all blocks"
    );
}

#[test]
fn repeated_submission_failures_back_off_then_pause_until_resumed() {
    let (mut b, provider) = blocks(policy());
    provider.0.lock().unwrap().fail_submit = Some("sbatch: error: invalid partition".into());
    b.strategy_round(1, &[]);
    assert!(b.submit_error().unwrap().contains("invalid partition"));
    assert!(b.paused().is_none());
    b.strategy_round(1, &[]); // second failure: now backing off
    b.strategy_round(1, &[]); // within the backoff: no attempt
    assert!(b.paused().is_none());
    b.next_submit_at = None;
    b.strategy_round(1, &[]);
    assert!(b.paused().unwrap().contains("invalid partition"));
    provider.0.lock().unwrap().fail_submit = None;
    b.strategy_round(1, &[]);
    assert!(provider.0.lock().unwrap().submitted.is_empty(), "paused");
    b.resume();
    b.strategy_round(1, &[]);
    assert_eq!(provider.0.lock().unwrap().submitted.len(), 1);
    assert!(b.submit_error().is_none());
}
