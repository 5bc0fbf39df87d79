//! The wire contract of scifaas.
//!
//! Every message that crosses a process boundary between Rust components is defined here:
//! service <-> agent ([`link`]), interchange <-> manager ([`interchange`]), and the task
//! records both carry ([`task`]). One encoding, MessagePack ([`codec`]). Function bodies
//! and arguments are opaque [`bytes::Bytes`]: no Rust component decodes them on the way.

pub mod codec;
pub mod ids;
pub mod interchange;
pub mod link;
pub mod shared;
pub mod state;
pub mod tagged;
pub mod task;
pub mod time;

pub use codec::{decode, encode, encode_into, DecodeError};
pub use ids::{BlockId, EndpointId, FunctionId, ManagerId, TaskId};
pub use shared::decode_shared;
pub use state::{Actor, TaskState, Transition};
pub use tagged::{decode_message, TaggedMessage};
pub use task::{
    ContainerSpec, ErrorKind, FunctionSpec, Outcome, ResultTiming, TaskError, TaskResult, TaskSpec,
};

/// Bumped whenever a message defined in this crate changes incompatibly. Carried in every
/// registration (agent -> service, manager -> interchange) and checked on arrival.
pub const PROTOCOL_VERSION: u32 = 1;
