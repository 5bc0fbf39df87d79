//! The per-node manager inside a pilot job: registers with the interchange, keeps workers warm.
