//! How many tasks a manager may hold beyond its workers (`engine.prefetch_capacity`).
//!
//! A worker that finishes a task waits for the next one for a whole round trip
//! (manager -> interchange -> manager) unless the manager already holds it. For tasks of a
//! few milliseconds or less that wait is most of a worker's time; for tasks of seconds it
//! is nothing, while every task held by a busy manager may wait there although another
//! manager's worker is free. `auto` (the default) therefore sizes the prefetch from how
//! long tasks run: enough to cover a round trip for short tasks (and at least two per
//! worker for tasks the manager writes behind a running one, up to 20 ms), one task per
//! worker for tasks up to a second, none for longer ones. Either way the interchange first fills idle
//! workers everywhere and only then prefetches, so a burst never piles onto one manager
//! while another idles.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// `engine.prefetch_capacity`: `auto`, or a fixed number of tasks per manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Prefetch {
    #[default]
    Auto,
    Fixed(u32),
}

/// The dispatch round trip `auto` plans to hide, in microseconds: generous for a
/// manager on another node of a busy cluster network.
const ROUND_TRIP_US: f64 = 1_000.0;
/// Tasks running at least this long are not prefetched under `auto`.
const LONG_TASK_US: f64 = 1_000_000.0;
/// Under `auto`, a manager holds at most this many tasks per worker beyond its workers.
const MAX_PER_WORKER: u32 = 8;
/// Tasks this short are written into a worker's pipe behind the running one by the
/// manager; under `auto` they get at least two per worker: one written behind the
/// running task, one at the manager to be written when that one starts. With one, the
/// one written went and the next arrived only while it ran, so it waited for the slot
/// to come back between every two tasks (10 ms tasks on 2 workers: ~0.3 ms lost per
/// task, 96 % efficiency).
const WRITTEN_AHEAD_US: f64 = scifaas_protocol::interchange::WRITE_AHEAD_MAX_RUN_US as f64;

impl Prefetch {
    /// The tasks a manager with `workers` workers may hold beyond them, given the mean
    /// run time of recent tasks (`None`: none finished yet).
    pub fn capacity(self, workers: u32, mean_run_us: Option<f64>) -> u32 {
        match self {
            Prefetch::Fixed(n) => n,
            Prefetch::Auto => match mean_run_us {
                None => workers,
                Some(run) if run >= LONG_TASK_US => 0,
                Some(run) => {
                    let mut per_worker = (ROUND_TRIP_US / run.max(1.0)).ceil();
                    if run <= WRITTEN_AHEAD_US {
                        per_worker = per_worker.max(2.0);
                    }
                    workers.saturating_mul(per_worker.min(f64::from(MAX_PER_WORKER)) as u32)
                }
            },
        }
    }

    /// Whether no manager may hold any task beyond its workers now (the dispatch then
    /// skips its prefetch pass).
    pub fn is_none(self, mean_run_us: Option<f64>) -> bool {
        match self {
            Prefetch::Fixed(n) => n == 0,
            Prefetch::Auto => mean_run_us.is_some_and(|run| run >= LONG_TASK_US),
        }
    }
}

impl fmt::Display for Prefetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefetch::Auto => f.write_str("auto"),
            Prefetch::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Prefetch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AutoOrCount;

        impl Visitor<'_> for AutoOrCount {
            type Value = Prefetch;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`auto` or a number of tasks")
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Prefetch, E> {
                u32::try_from(n)
                    .map(Prefetch::Fixed)
                    .map_err(|_| E::custom(format!("{n} tasks is too many to prefetch")))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Prefetch, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("{n} is not a number of tasks")))
                    .and_then(|n| self.visit_u64(n))
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Prefetch, E> {
                match s {
                    "auto" => Ok(Prefetch::Auto),
                    other => Err(E::custom(format!(
                        "`{other}` is neither `auto` nor a number of tasks"
                    ))),
                }
            }
        }

        deserializer.deserialize_any(AutoOrCount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_covers_a_round_trip_for_short_tasks_and_spares_long_ones() {
        let auto = Prefetch::Auto;
        // Before any task finished: one per worker.
        assert_eq!(auto.capacity(4, None), 4);
        // No-op tasks: as many as allowed.
        assert_eq!(auto.capacity(4, Some(5.0)), 4 * MAX_PER_WORKER);
        // 250 us tasks: four per worker cover a millisecond.
        assert_eq!(auto.capacity(2, Some(250.0)), 8);
        // 1 to 20 ms, written behind a running task by the manager: two per worker.
        assert_eq!(auto.capacity(2, Some(1_500.0)), 4);
        assert_eq!(auto.capacity(2, Some(10_000.0)), 4);
        assert_eq!(auto.capacity(2, Some(20_000.0)), 4);
        // Longer, to just under a second: one per worker.
        assert_eq!(auto.capacity(2, Some(20_001.0)), 2);
        assert_eq!(auto.capacity(2, Some(999_999.0)), 2);
        // A second or more: none, so no task waits behind a long one.
        assert_eq!(auto.capacity(2, Some(1_000_000.0)), 0);
        assert_eq!(Prefetch::Fixed(3).capacity(64, Some(1.0)), 3);
    }

    #[test]
    fn none_means_no_manager_may_hold_a_task_ahead() {
        for (prefetch, mean) in [
            (Prefetch::Auto, None),
            (Prefetch::Auto, Some(5.0)),
            (Prefetch::Auto, Some(999_999.0)),
            (Prefetch::Auto, Some(1_000_000.0)),
            (Prefetch::Fixed(0), Some(5.0)),
            (Prefetch::Fixed(2), Some(2e6)),
        ] {
            let held = [1, 2, 128].map(|workers| prefetch.capacity(workers, mean));
            assert_eq!(
                prefetch.is_none(mean),
                held.iter().all(|&n| n == 0),
                "{prefetch} at {mean:?}"
            );
        }
    }

    #[test]
    fn reads_auto_or_a_count() {
        let read = |yaml: &str| serde_yaml_ng::from_str::<Prefetch>(yaml);
        assert_eq!(read("auto").unwrap(), Prefetch::Auto);
        assert_eq!(read("16").unwrap(), Prefetch::Fixed(16));
        assert!(read("-1").is_err());
        let err = read("lots").unwrap_err().to_string();
        assert!(err.contains("neither `auto` nor a number"), "{err}");
    }
}
