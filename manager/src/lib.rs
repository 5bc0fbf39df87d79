//! The per-node manager that a pilot job starts: it registers with the endpoint's
//! interchange, keeps `workers` Python workers warm, hands each one task at a time,
//! enforces task walltime, and returns results in batches.
//!
//! Threads: the main thread owns the ZeroMQ DEALER and all scheduling state
//! ([`run::Manager`]); each worker slot is a thread that owns one worker process
//! ([`slot`]). Slots report back over a channel and wake the main thread through an
//! inproc ZeroMQ socket, so one `zmq::poll` waits for both the interchange and the slots.

mod run;
mod slot;

pub use run::{run, ManagerConfig};
