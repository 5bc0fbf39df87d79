//! The manager side of the manager<->worker protocol: spawns the Python worker and talks
//! to it.
//!
//! A [`Worker`] is one `python3` process running [`WORKER_SCRIPT`] (optionally inside a
//! container, through [`WorkerCommand::prefix`], which [`containers`] renders for each
//! runtime). The manager gives it one task at a time
//! with [`Worker::run`], which blocks; the walltime watchdog kills it from another thread
//! through a [`WorkerKiller`]. The frames are described in DESIGN.md ("The manager <->
//! worker frames") and implemented in [`frame`] and [`message`].
//!
//! Function sources, payloads and results are never decoded here: a result reaches
//! [`scifaas_protocol::Outcome::Success`] byte for byte as the worker encoded it.

mod command;
pub mod containers;
mod error;
pub mod frame;
mod input;
mod killer;
pub mod message;
pub mod pickle;
mod process;
mod stderr;

pub use command::{
    bootstrap, WorkerCommand, WorkerOptions, DEFAULT_MAX_RESULT_BYTES, DEFAULT_READY_TIMEOUT,
};
pub use containers::{ContainerError, ContainerRuntimes, Runtime};
pub use error::{WorkerError, WorkerExit};
pub use frame::FrameError;
pub use input::WorkerInput;
pub use killer::WorkerKiller;
pub use message::WorkerReply;
pub use process::Worker;

/// The Python worker program (stdlib only, Python >= 3.8). [`Worker::spawn`] writes it
/// to the interpreter's stdin, so no file needs to exist where the worker runs.
pub const WORKER_SCRIPT: &str = include_str!("../python/scifaas_worker.py");
