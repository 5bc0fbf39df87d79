//! Interchange <-> manager messages. The interchange binds a ZeroMQ ROUTER; each manager
//! connects a DEALER and sends one MessagePack-encoded message per ZeroMQ message (a
//! single frame on the DEALER side; the ROUTER sees the manager's identity frame first).
//!
//! Capacity is implicit: the interchange knows how many workers a manager has and how
//! many tasks it holds, and sends at most `workers + prefetch` outstanding tasks.

use crate::ids::{BlockId, ManagerId};

/// A manager writes a task into a worker's pipe behind the running one when the running
/// task's function last ran at most this long (microseconds), so the worker starts it
/// the moment the first ends. The interchange's `auto` prefetch counts on it: such tasks
/// need a second task per worker at the manager to keep one written behind.
pub const WRITE_AHEAD_MAX_RUN_US: i64 = 20_000;
use crate::task::{TaskResult, TaskSpec};
use serde::{Deserialize, Serialize};

/// Manager -> interchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ManagerMessage {
    /// First message. A manager that gets no `Registered` in time gives up.
    Register(Registration),
    /// Sent every heartbeat period while idle; any message counts as a heartbeat.
    Heartbeat {
        busy_workers: u32,
        /// Workers retired so far to make room for a worker of another container (a
        /// manager keeps a pool per container; see the manager crate). Absent from older
        /// managers.
        #[serde(default)]
        container_switches: u64,
    },
    /// Finished tasks, in batches.
    Results { results: Vec<TaskResult> },
    /// The manager stops taking work (walltime near, or asked to drain) and will say
    /// `Bye` once its tasks are done.
    Draining,
    /// The manager is exiting; it holds no tasks.
    Bye,
}

/// What a manager says about itself when it connects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub protocol_version: u32,
    pub manager_id: ManagerId,
    pub block_id: BlockId,
    /// The batch job id the manager runs under (`SLURM_JOB_ID`, `PBS_JOBID`, ...), or the
    /// pilot's pid for the local provider.
    pub job_id: Option<String>,
    pub host: String,
    pub workers: u32,
    pub cores: u32,
    pub memory_bytes: u64,
    /// The endpoint's secret, proving the manager belongs to this endpoint.
    pub secret: String,
    /// When the manager stops taking work because its pilot's walltime ends (Unix
    /// microseconds); the interchange sends it no task whose walltime cannot fit.
    #[serde(default)]
    pub accepts_until: Option<crate::time::Micros>,
}

/// Interchange -> manager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum InterchangeMessage {
    Registered {
        heartbeat_period_ms: u64,
        heartbeat_threshold_ms: u64,
    },
    /// Registration refused; the manager exits with this reason.
    Rejected {
        reason: String,
    },
    Tasks {
        tasks: Vec<TaskSpec>,
    },
    Heartbeat,
    /// Stop taking work, finish what you hold, then say `Bye` and exit.
    Drain,
    /// Exit now (the endpoint is stopping).
    Shutdown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::test_task;
    use crate::{decode, encode};
    use bytes::Bytes;

    #[test]
    fn tasks_round_trip_and_payload_stays_bytes() {
        let payload = Bytes::from_static(b"{\"args\": [1], \"kwargs\": {}}");
        let message = InterchangeMessage::Tasks {
            tasks: vec![TaskSpec {
                walltime_ms: Some(1000),
                ..test_task(payload.clone())
            }],
        };
        let frame = encode(&message);
        // The payload is carried as a MessagePack bin, verbatim.
        assert!(frame.windows(payload.len()).any(|w| w == payload.as_ref()));
        assert_eq!(decode::<InterchangeMessage>(&frame).unwrap(), message);
    }

    #[test]
    fn a_heartbeat_without_container_switches_reads_as_none() {
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "kebab-case")]
        enum OldManagerMessage {
            Heartbeat { busy_workers: u32 },
        }
        let old = encode(&OldManagerMessage::Heartbeat { busy_workers: 3 });
        assert_eq!(
            decode::<ManagerMessage>(&old).unwrap(),
            ManagerMessage::Heartbeat {
                busy_workers: 3,
                container_switches: 0
            }
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for frame in [&b""[..], b"\xff\xff", b"\x81\xa4type\xa3bad"] {
            assert!(decode::<ManagerMessage>(frame).is_err());
        }
    }
}
