//! Timestamps: wall-clock microseconds since the Unix epoch.
//!
//! Every hop stamps with its own clock. On one machine (or an NTP-disciplined cluster)
//! these are comparable, which is what the per-component latency breakdown needs.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as Micros)
        .unwrap_or(0)
}
