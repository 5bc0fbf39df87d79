//! The endpoint agent: it runs on a login node (or a laptop), keeps one outbound link to
//! the service, journals the tasks it accepts, routes them through its ZeroMQ
//! interchange to managers in pilot jobs, and provisions those pilots through a
//! provider.
//!
//! A task's way through this crate: [`link`] (from the service) -> [`journal`] ->
//! [`interchange`] (to managers and back) -> [`journal`] -> [`link`]. [`blocks`] decides
//! how many pilots there should be; [`endpoint`] is the loop that ties them together.

pub mod blocks;
pub mod config;
pub mod endpoint;
pub mod interchange;
pub mod journal;
pub mod link;
pub mod prefetch;
pub mod settings;
