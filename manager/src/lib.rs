//! The per-node manager that a pilot job starts: it registers with the endpoint's
//! interchange, keeps `workers` Python workers warm, hands each one task at a time,
//! enforces task walltime, and returns results in batches.
//!
//! Workers may run inside containers ([`scifaas_worker::containers`]): each slot's
//! worker serves one container at a time, tasks go to a warm worker of their function's
//! container, and a slot switches containers only when a container has no worker at
//! all (the `pool` module). Switches are counted and reported in heartbeats. A container whose
//! worker cannot start fails its tasks with the runtime's own words, and is not started
//! again for a while (the `failures` module).
//!
//! Threads: the main thread owns the ZeroMQ DEALER and all scheduling state
//! ([`run::Manager`]); each worker slot is a thread that owns one worker process
//! ([`slot`]). Slots report back over a channel and wake the main thread through an
//! inproc ZeroMQ socket, so one `zmq::poll` waits for both the interchange and the slots
//! ([`reports`]: not for a task done while the main thread holds results anyway).
//! Tasks the interchange prefetched are lined up behind busy workers of their kind
//! ([`ready`]), so a slot goes from one task to the next without the main thread. A task
//! for an idle warm worker is written to the worker by the main thread itself, one
//! wake-up sooner than through the slot thread, which then reads its result.

mod failures;
mod node;
mod pool;
mod ready;
mod reports;
mod run;
mod slot;
mod yielding;

pub use node::{node_name, NODE_NAME_VARIABLES};
pub use run::{drain_margin, run, ManagerConfig, ACCELERATOR_VARIABLES, DEFAULT_START_RETRY_AFTER};
