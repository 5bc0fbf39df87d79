//! Service <-> agent messages. The agent opens one WebSocket to the service
//! (`GET /v1/agent/ws`, `Authorization: Bearer <agent token>`) and every binary frame on
//! it is one MessagePack-encoded message from this module.
//!
//! Delivery is at-least-once in both directions with acknowledgements: the service
//! re-sends a task until the agent acks it (the agent acks only after its journal has
//! it, and recognises a re-sent task by id); the agent re-sends a result until the
//! service acks it (after the store has it).

use crate::ids::{EndpointId, TaskId};
use crate::state::Transition;
use crate::task::{TaskResult, TaskSpec};
use serde::{Deserialize, Serialize};

/// Agent -> service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AgentMessage {
    /// First frame on every connection.
    Hello {
        protocol_version: u32,
        agent_version: String,
    },
    /// These tasks are in the agent's journal; the service stops re-sending them.
    TasksAccepted { task_ids: Vec<TaskId> },
    /// State changes of tasks still in flight (dispatched to a manager, running).
    Progress { updates: Vec<TaskProgress> },
    /// Finished tasks. Kept in the agent's journal until acknowledged.
    Results { results: Vec<TaskResult> },
    /// Periodic snapshot of the endpoint for `GET /v1/endpoints/{id}`.
    Status(EndpointStatus),
}

/// Service -> agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServiceMessage {
    /// Answer to `Hello`: the connection is accepted for this endpoint.
    Welcome {
        protocol_version: u32,
        endpoint_id: EndpointId,
        endpoint_name: String,
    },
    /// The connection is refused (version mismatch, ...); the service closes it next.
    Refused { reason: String },
    /// Work for the endpoint.
    Tasks { tasks: Vec<TaskSpec> },
    /// These results are stored; the agent may forget them.
    ResultsStored { task_ids: Vec<TaskId> },
}

/// One transition of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    pub task_id: TaskId,
    pub transition: Transition,
}

/// What an endpoint reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// Tasks in the agent not yet finished (queued in the interchange or at managers).
    pub outstanding_tasks: u64,
    pub managers: Vec<ManagerStatus>,
    pub blocks: Vec<BlockStatus>,
    /// Set when the endpoint stopped provisioning, with the reason.
    pub paused: Option<String>,
    /// The provider's last submission error, until a submission works.
    #[serde(default)]
    pub submit_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManagerStatus {
    pub manager_id: String,
    pub block_id: String,
    pub host: String,
    pub workers: u32,
    pub busy_workers: u32,
    pub idle_workers: u32,
    /// Tasks dispatched to this manager and not yet returned.
    pub outstanding_tasks: u32,
    pub draining: bool,
    /// Workers the manager retired to start one for another container.
    #[serde(default)]
    pub container_switches: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockStatus {
    pub block_id: String,
    /// The provider's job id (pid for local, Slurm job id, ...).
    pub job_id: String,
    /// `pending`, `running`, `completed`, `failed`, `cancelled`, `timeout`, `held`,
    /// `unknown`, or `draining` (the agent asked its managers to finish and leave).
    pub state: String,
    pub managers: u32,
    /// Nodes the block asked for (`nodes_per_block`). Absent from older agents.
    #[serde(default)]
    pub requested_nodes: u32,
    /// The block's nodes as its managers reported them: one entry per registered manager,
    /// plus the nodes whose manager was lost. Absent from older agents.
    #[serde(default)]
    pub nodes: Vec<BlockNode>,
    /// Why the block is in its state, when that is not the scheduler's doing (e.g. `node
    /// n2 lost: draining the other nodes, then cancelling`).
    #[serde(default)]
    pub message: Option<String>,
}

/// One node of a block, as its manager reported it at registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockNode {
    /// The node's name in the scheduler's terms (`SLURMD_NODENAME`), else its host name.
    pub host: String,
    pub manager_id: String,
    /// The batch job id the manager runs under, as it reported it (the block's job).
    pub job_id: Option<String>,
    /// `up`, `draining` (taking no more work) or `lost` (silent past the heartbeat
    /// threshold).
    pub state: String,
    pub workers: u32,
    pub busy_workers: u32,
    pub idle_workers: u32,
}
