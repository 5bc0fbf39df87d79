//! Task states and the transitions every hop stamps.

use crate::time::Micros;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a task is in its life. The order of the variants is the order a task normally
/// passes through them; the last three are terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    /// Stored by the service.
    Received,
    /// Sent towards the endpoint's agent, not yet in its journal.
    WaitingForEndpoint,
    /// In the agent's journal and queued in the interchange, waiting for a manager slot.
    WaitingForNodes,
    /// Dispatched to a manager, waiting for a free worker.
    WaitingForLaunch,
    /// Handed to a worker.
    Running,
    Success,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Success | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::WaitingForEndpoint => "waiting-for-endpoint",
            Self::WaitingForNodes => "waiting-for-nodes",
            Self::WaitingForLaunch => "waiting-for-launch",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Received,
            Self::WaitingForEndpoint,
            Self::WaitingForNodes,
            Self::WaitingForLaunch,
            Self::Running,
            Self::Success,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The component that stamped a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Actor {
    Service,
    Agent,
    Interchange,
    Manager,
    Worker,
}

/// One state change of one task: what, when (the stamping process's wall clock), by whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub state: TaskState,
    pub at: Micros,
    pub actor: Actor,
}

impl Transition {
    /// A transition stamped now.
    pub fn now(state: TaskState, actor: Actor) -> Self {
        Self {
            state,
            at: crate::time::now_micros(),
            actor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_have_stable_names() {
        for state in [TaskState::WaitingForNodes, TaskState::Success] {
            assert_eq!(TaskState::parse(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert_eq!(TaskState::parse("bogus"), None);
        assert!(TaskState::Cancelled.is_terminal());
        assert!(!TaskState::Running.is_terminal());
    }
}
