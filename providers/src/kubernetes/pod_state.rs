//! From a pod, as the API server reports it, to a [`JobStatus`].
//!
//! The mapping, all of it:
//!
//! | pod | state | message |
//! |---|---|---|
//! | `metadata.deletionTimestamp` set, phase not ended | Cancelled | being deleted |
//! | Pending, a container waiting on its image or its config (`ImagePullBackOff`, `ErrImagePull`, `InvalidImageName`, `ErrImageNeverPull`, `CreateContainerConfigError`, `CreateContainerError`) | **Held** | the reason and the kubelet's message |
//! | Pending, otherwise (`ContainerCreating`, unschedulable, no status yet) | Pending | the waiting reason, or why it is not scheduled |
//! | Running | Running | restarts and their last reason, if any |
//! | Succeeded | Completed | exit code 0 |
//! | Failed, pod reason `DeadlineExceeded` (`activeDeadlineSeconds`, our walltime) | Timeout | |
//! | Failed, otherwise (`Error`, `OOMKilled`, `Evicted`, ...) | Failed | pod reason, container reason, exit code |
//! | phase `Unknown` (its node stopped reporting) or none | Unknown | |
//! | not in the list at all | Unknown (Cancelled if we deleted it) | (decided by the provider) |
//!
//! Why a pod that cannot pull its image is **Held** and not Failed: the kubelet keeps
//! retrying, so the pod is not over (it starts if the registry comes back or the image is
//! pushed), and it still exists in the cluster. Failed would make the agent forget a pod
//! that may yet start a manager, and submit replacements that fail the same way, one per
//! strategy period. Held keeps the block counted, shows the kubelet's reason in the
//! endpoint's status until an admin fixes `image` or `image_pull_secrets`, and the pod is
//! deleted like any queued block when the endpoint scales in or stops.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::{JobState, JobStatus};

/// Container waiting reasons that keep a pod from ever starting until someone acts.
pub const HELD_REASONS: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The parts of a pod the mapping reads. Every field may be absent; unknown ones are
/// ignored, so any API version's pod parses.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Pod {
    /// Name, labels, deletion.
    pub metadata: ObjectMeta,
    /// Phase, reason, conditions and container states.
    pub status: PodStatus,
}

/// A pod's `metadata`, the parts read here.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The pod's name (the job id).
    pub name: String,
    /// Set once the pod is being deleted.
    pub deletion_timestamp: Option<String>,
    /// The pod's labels.
    #[serde(deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
}

/// A pod's `status`, the parts read here.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: Option<String>,
    /// Why the pod is in this phase (`Evicted`, `DeadlineExceeded`, ...).
    pub reason: Option<String>,
    /// The same in words.
    pub message: Option<String>,
    /// `PodScheduled`, `Ready`, ...
    #[serde(deserialize_with = "nullable")]
    pub conditions: Vec<PodCondition>,
    /// The init containers' states.
    #[serde(deserialize_with = "nullable")]
    pub init_container_statuses: Vec<ContainerStatus>,
    /// The containers' states.
    #[serde(deserialize_with = "nullable")]
    pub container_statuses: Vec<ContainerStatus>,
}

/// One of a pod's conditions.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodCondition {
    /// `PodScheduled`, `Ready`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Why (`Unschedulable`, ...).
    pub reason: Option<String>,
    /// The same in words (`0/3 nodes are available: 3 Insufficient cpu.`).
    pub message: Option<String>,
}

/// One container's state.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name.
    pub name: String,
    /// What it is doing now.
    pub state: ContainerState,
    /// How its previous run ended, if it was restarted.
    pub last_state: ContainerState,
    /// How often it was restarted.
    pub restart_count: u32,
}

/// Exactly one of waiting, running, terminated (or none, before the kubelet reports).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerState {
    /// Not started (yet): pulling, creating, backing off.
    pub waiting: Option<Waiting>,
    /// Started; its start time is not needed here.
    pub running: Option<serde::de::IgnoredAny>,
    /// Ended.
    pub terminated: Option<Terminated>,
}

/// A waiting container's reason.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Waiting {
    /// `ContainerCreating`, `ImagePullBackOff`, ...
    pub reason: Option<String>,
    /// The kubelet's words.
    pub message: Option<String>,
}

/// How a container ended.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Terminated {
    /// The exit code (137 for SIGKILL, as after an OOM kill).
    pub exit_code: i32,
    /// The signal that ended it, when the runtime reports one.
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, ...
    pub reason: Option<String>,
    /// The runtime's words, or the container's termination message.
    pub message: Option<String>,
}

/// `null` read as the default (the API server and YAML files write both `[]` and null).
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The status of a block whose pod is `pod`. See the module's table.
pub fn pod_job_status(pod: &Pod) -> JobStatus {
    let status = &pod.status;
    let phase = status.phase.as_deref().unwrap_or("");
    let ended = matches!(phase, "Succeeded" | "Failed");
    if let (Some(since), false) = (&pod.metadata.deletion_timestamp, ended) {
        return with_message(
            JobState::Cancelled,
            None,
            format!("pod being deleted since {since}"),
        );
    }
    let containers = || {
        status
            .init_container_statuses
            .iter()
            .chain(&status.container_statuses)
    };
    match phase {
        "Pending" => {
            let waiting = containers().find_map(|c| Some((c, c.state.waiting.as_ref()?)));
            if let Some((container, waiting)) = waiting {
                let reason = waiting.reason.as_deref().unwrap_or("waiting");
                let text = join(&[Some(reason), waiting.message.as_deref()]);
                if HELD_REASONS.contains(&reason) {
                    return with_message(
                        JobState::Held,
                        None,
                        format!(
                            "container {}: {text} (the pod cannot start until this is fixed; \
                             check the provider's image and image_pull_secrets)",
                            container.name
                        ),
                    );
                }
                return with_message(
                    JobState::Pending,
                    None,
                    format!("container {}: {text}", container.name),
                );
            }
            let unscheduled = status
                .conditions
                .iter()
                .find(|c| c.kind == "PodScheduled" && c.status == "False");
            match unscheduled {
                Some(c) => with_message(
                    JobState::Pending,
                    None,
                    join(&[c.reason.as_deref(), c.message.as_deref()]),
                ),
                None => JobStatus::new(JobState::Pending),
            }
        }
        "Running" => {
            let restarted = containers().find(|c| c.restart_count > 0).map(|c| {
                let last = c.last_state.terminated.as_ref();
                format!(
                    "container {} restarted {} times; last ended: {}",
                    c.name,
                    c.restart_count,
                    last.map_or_else(|| "unknown".to_owned(), describe_termination)
                )
            });
            match restarted {
                Some(message) => with_message(JobState::Running, None, message),
                None => JobStatus::new(JobState::Running),
            }
        }
        "Succeeded" => JobStatus {
            state: JobState::Completed,
            exit_code: Some(0),
            message: None,
        },
        "Failed" => failed(pod),
        "Unknown" => with_message(
            JobState::Unknown,
            None,
            join(&[
                Some("phase Unknown: the pod's node stopped reporting"),
                status.reason.as_deref(),
                status.message.as_deref(),
            ]),
        ),
        other => with_message(
            JobState::Unknown,
            None,
            if other.is_empty() {
                "the pod has no phase yet".to_owned()
            } else {
                format!("unknown pod phase `{other}`")
            },
        ),
    }
}

fn failed(pod: &Pod) -> JobStatus {
    let status = &pod.status;
    if status.reason.as_deref() == Some("DeadlineExceeded") {
        return with_message(
            JobState::Timeout,
            None,
            join(&[
                Some("walltime reached (activeDeadlineSeconds)"),
                status.message.as_deref(),
            ]),
        );
    }
    // The first container that ended badly says why; init containers run first.
    let culprit = status
        .init_container_statuses
        .iter()
        .chain(&status.container_statuses)
        .find_map(|c| {
            let t = c.state.terminated.as_ref()?;
            (t.exit_code != 0 || t.reason.as_deref() != Some("Completed")).then_some((c, t))
        });
    let pod_reason = join(&[
        status.reason.as_deref(),
        status.message.as_deref().map(str::trim),
    ]);
    let container = culprit.map(|(c, t)| {
        let hint = if t.reason.as_deref() == Some("OOMKilled") {
            " (the manager used more memory than max_mem allows)"
        } else {
            ""
        };
        format!("container {}: {}{hint}", c.name, describe_termination(t))
    });
    let message = match (pod_reason.is_empty(), container) {
        (false, Some(container)) => format!("{pod_reason}; {container}"),
        (false, None) => pod_reason,
        (true, Some(container)) => container,
        (true, None) => "pod failed".to_owned(),
    };
    with_message(JobState::Failed, culprit.map(|(_, t)| t.exit_code), message)
}

/// `OOMKilled: exit code 137` (with the signal and the runtime's message, if any).
fn describe_termination(t: &Terminated) -> String {
    let mut text = join(&[
        t.reason.as_deref(),
        Some(&format!("exit code {}", t.exit_code)),
    ]);
    if let Some(signal) = t.signal {
        text.push_str(&format!(", signal {signal}"));
    }
    if let Some(message) = t
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        text.push_str(": ");
        text.push_str(message);
    }
    text
}

/// The parts that are present and not empty, joined with `: `.
fn join(parts: &[Option<&str>]) -> String {
    parts
        .iter()
        .flatten()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

fn with_message(state: JobState, exit_code: Option<i32>, message: String) -> JobStatus {
    JobStatus {
        state,
        exit_code,
        message: Some(message),
    }
}
