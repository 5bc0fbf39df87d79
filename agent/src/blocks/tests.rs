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
    b.on_manager_registered("block-0", "m1", "n1", Some("job-1"));
    b.strategy_round(8, &[]);
    assert_eq!(provider.0.lock().unwrap().submitted.len(), 2);
    // Its second node came up: 8 slots there and a queued block's 8 cover 8 tasks.
    b.on_manager_registered("block-0", "m2", "n2", Some("job-1"));
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
    b.on_manager_registered("block-0", "block-0-m", "n1", None);
    b.on_manager_registered("block-1", "block-1-m", "n2", None);
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
    b.on_manager_registered("block-0", "m", "n1", None);
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
    assert_eq!(b.statuses(&[]).len(), 1);
    assert_eq!(b.statuses(&[])[0].state, "pending");
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

/// A manager's view as the interchange reports it.
fn live(block: &str, id: &str, host: &str, busy: u32, draining: bool) -> ManagerStatus {
    ManagerStatus {
        manager_id: id.into(),
        block_id: block.into(),
        host: host.into(),
        workers: 4,
        busy_workers: busy,
        idle_workers: 4 - busy,
        outstanding_tasks: busy,
        draining,
        container_switches: 0,
    }
}

/// A two-node block, `block-0` (job `job-1`), with managers `m1` on n1 and `m2` on n2.
fn two_node_block(max_blocks: u32) -> (Blocks, ScriptedProvider) {
    let (mut b, provider) = blocks(ScalingPolicy {
        max_blocks,
        ..policy()
    });
    b.strategy_round(1, &[]);
    for (manager, node) in [("m1", "n1"), ("m2", "n2")] {
        let actions = b.on_manager_registered("block-0", manager, node, Some("job-1"));
        assert!(actions.is_empty(), "{actions:?}");
    }
    (b, provider)
}

#[test]
fn nodes_per_block_never_asks_for_more_blocks_than_max_blocks() {
    // Two-node blocks on a three-node cluster: a second block could not be placed.
    let (mut b, provider) = blocks(ScalingPolicy {
        max_blocks: 1,
        ..policy()
    });
    for round in 0..5 {
        if round == 2 {
            b.on_manager_registered("block-0", "m1", "n1", Some("job-1"));
        }
        if round == 4 {
            b.on_manager_registered("block-0", "m2", "n2", Some("job-1"));
        }
        b.strategy_round(1000, &[]);
    }
    assert_eq!(provider.0.lock().unwrap().submitted, vec!["block-0"]);
    let status = &b.statuses(&[])[0];
    assert_eq!(status.requested_nodes, 2);
    assert_eq!(status.managers, 2);
}

#[test]
fn the_status_shows_each_node_with_its_workers_and_job() {
    let (b, _) = two_node_block(1);
    let view = [
        live("block-0", "m2", "n2", 3, false),
        live("block-0", "m1", "n1", 1, true),
    ];
    let status = &b.statuses(&view)[0];
    assert_eq!(status.state, "running");
    let nodes: Vec<(&str, &str, u32, Option<&str>)> = status
        .nodes
        .iter()
        .map(|n| {
            (
                n.host.as_str(),
                n.state.as_str(),
                n.busy_workers,
                n.job_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        vec![
            ("n1", "draining", 1, Some("job-1")),
            ("n2", "up", 3, Some("job-1"))
        ]
    );
    assert_eq!(status.nodes[1].workers, 4);
}

#[test]
fn a_manager_draining_ahead_of_its_walltime_is_no_capacity() {
    let (mut b, provider) = two_node_block(2);
    // Both managers take work: 8 slots for 8 tasks.
    b.strategy_round(
        8,
        &[
            live("block-0", "m1", "n1", 4, false),
            live("block-0", "m2", "n2", 4, false),
        ],
    );
    assert_eq!(provider.0.lock().unwrap().submitted.len(), 1);
    // One drains ahead of the pilot's walltime: its 4 slots are gone.
    b.strategy_round(
        8,
        &[
            live("block-0", "m1", "n1", 4, true),
            live("block-0", "m2", "n2", 4, false),
        ],
    );
    assert_eq!(provider.0.lock().unwrap().submitted.len(), 2);
}

#[test]
fn a_lost_node_drains_the_survivors_then_cancels_and_replaces_the_block() {
    let (mut b, provider) = two_node_block(1);
    let actions = b.on_manager_gone("block-0", "m2", false);
    assert_eq!(actions, vec![BlockAction::Drain("block-0".into())]);
    let status = &b.statuses(&[live("block-0", "m1", "n1", 2, true)])[0];
    assert_eq!(status.state, "draining");
    assert!(
        status.message.as_deref().unwrap().contains("node n2 lost"),
        "{status:?}"
    );
    let nodes: Vec<(&str, &str)> = status
        .nodes
        .iter()
        .map(|n| (n.host.as_str(), n.state.as_str()))
        .collect();
    assert_eq!(nodes, vec![("n1", "draining"), ("n2", "lost")]);

    // Work is waiting: a replacement is submitted while the survivor finishes its tasks,
    // and nothing is cancelled under it.
    b.strategy_round(4, &[live("block-0", "m1", "n1", 2, true)]);
    {
        let s = provider.0.lock().unwrap();
        assert_eq!(s.submitted, vec!["block-0", "block-1"]);
        assert!(s.cancelled.is_empty(), "{:?}", s.cancelled);
    }
    // The survivor finished and left: the half-dead job is cancelled, once.
    assert!(b.on_manager_gone("block-0", "m1", true).is_empty());
    b.strategy_round(4, &[]);
    b.strategy_round(4, &[]);
    let s = provider.0.lock().unwrap();
    assert_eq!(s.cancelled, vec![JobId("job-1".into())]);
    assert_eq!(s.submitted.len(), 2, "one replacement");
    drop(s);
    assert_eq!(
        b.statuses(&[])
            .iter()
            .map(|s| s.block_id.as_str())
            .collect::<Vec<_>>(),
        vec!["block-1"],
        "the cancelled block is forgotten"
    );
}

#[test]
fn a_manager_joining_a_block_being_ended_is_drained_too() {
    let (mut b, _) = blocks(policy());
    b.strategy_round(1, &[]);
    b.on_manager_registered("block-0", "m1", "n1", Some("job-1"));
    // n1 dies before n2's manager is up: nothing left to drain.
    assert!(b.on_manager_gone("block-0", "m1", false).is_empty());
    let late = b.on_manager_registered("block-0", "m2", "n2", Some("job-1"));
    assert_eq!(late, vec![BlockAction::Drain("block-0".into())]);
}

#[test]
fn a_block_whose_last_manager_died_is_cancelled_at_the_next_round() {
    let (mut b, provider) = two_node_block(1);
    b.on_manager_gone("block-0", "m1", false);
    // The second loss finds the block already being ended.
    assert!(b.on_manager_gone("block-0", "m2", false).is_empty());
    let actions = b.strategy_round(0, &[]);
    assert!(
        actions.is_empty(),
        "no manager left to drain or lose: {actions:?}"
    );
    assert_eq!(
        provider.0.lock().unwrap().cancelled,
        vec![JobId("job-1".into())]
    );
}

#[test]
fn goodbyes_are_not_lost_nodes_and_a_block_they_all_left_is_over() {
    let (mut b, provider) = two_node_block(1);
    assert!(b.on_manager_gone("block-0", "m1", true).is_empty());
    assert!(b.on_manager_gone("block-0", "m2", true).is_empty());
    assert!(
        b.on_manager_gone("block-0", "m2", true).is_empty(),
        "twice is once"
    );
    assert_eq!(
        b.statuses(&[])[0].state,
        "running",
        "not drained by the agent"
    );
    assert!(b.statuses(&[])[0].nodes.is_empty());
    // Its job ends by itself; meanwhile it is no capacity, so work gets a new block.
    b.strategy_round(1, &[]);
    let s = provider.0.lock().unwrap();
    assert_eq!(s.submitted.len(), 2);
    assert!(s.cancelled.is_empty());
}

#[test]
fn a_pilot_at_its_walltime_loses_its_managers_as_a_timeout() {
    let (mut b, provider) = two_node_block(1);
    provider
        .0
        .lock()
        .unwrap()
        .states
        .insert(JobId("job-1".into()), JobState::Timeout);
    let actions = b.strategy_round(1, &[]);
    assert!(
        matches!(&actions[..], [BlockAction::Lost { reason, .. }] if reason.contains("reached its walltime")),
        "{actions:?}"
    );
    assert_eq!(provider.0.lock().unwrap().submitted.len(), 2, "replaced");
    assert!(
        b.submit_error().is_none() && b.paused().is_none(),
        "not a failure"
    );
}
