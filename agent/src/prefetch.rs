//! How many tasks a manager may hold beyond its workers (`engine.prefetch_capacity`).
//!
//! A worker that finishes a task waits for the next one for a whole round trip
//! (manager -> interchange -> manager) unless the manager already holds it. For tasks of a
//! few milliseconds or less that wait is most of a worker's time; for tasks of seconds it
//! is nothing, while every task held by a busy manager may wait there although another
//! manager's worker is free. `auto` (the default) therefore sizes the prefetch from how
//! long tasks run: about 2 ms of work per worker for short tasks, which covers a round trip
//! and the manager's hold of results (and at least two per worker for tasks the manager
//! writes behind a running one, up to 20 ms), one task per worker for tasks up to a
//! second, none for longer ones; and at most 8 MiB of arguments per worker, by the mean
//! payload of recent tasks. Either way the interchange first fills idle workers everywhere
//! and only then prefetches, so a burst never piles onto one manager while another idles.
//!
//! For no-op tasks the held work bounds throughput outright: a manager sends results in
//! batches (holding each up to 0.5 ms for company) and is sent tasks as results come
//! back, so its tasks per second are at most what it holds over that cycle. With 8 tasks
//! per worker (1 ms) two workers did 18-25k no-op tasks/s with 16 % of the CPUs idle;
//! with 64 (2 ms), 33-40k/s, and 42-44k/s with the 8 MiB cap too, on less CPU per task
//! (alternating `scifaas bench` runs, three of each).

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

/// The work `auto` has a manager hold per worker, in microseconds: a dispatch round trip
/// (generous for a manager on another node of a busy cluster network) plus the time a
/// manager holds results for company.
const HELD_WORK_US: f64 = 2_000.0;
/// Tasks running at least this long are not prefetched under `auto`.
const LONG_TASK_US: f64 = 1_000_000.0;
/// Under `auto`, a manager holds at most this many tasks per worker beyond its workers.
const MAX_PER_WORKER: u32 = 64;
/// Under `auto`, a manager holds at most this many bytes of arguments per worker beyond
/// its workers (but always one task).
const MAX_BYTES_PER_WORKER: f64 = (8 << 20) as f64;
/// Tasks this short are written into a worker's pipe behind the running one by the
/// manager; under `auto` they get at least two per worker: one written behind the
/// running task, one at the manager to be written when that one starts. With one, the
/// one written went and the next arrived only while it ran, so it waited for the slot
/// to come back between every two tasks (10 ms tasks on 2 workers: ~0.3 ms lost per
/// task, 96 % efficiency).
const WRITTEN_AHEAD_US: f64 = scifaas_protocol::interchange::WRITE_AHEAD_MAX_RUN_US as f64;

impl Prefetch {
    /// The tasks a manager with `workers` workers may hold beyond them, given the mean
    /// run time of recent tasks (`None`: none finished yet) and the mean payload of
    /// recent tasks in bytes.
    pub fn capacity(self, workers: u32, mean_run_us: Option<f64>, mean_payload: f64) -> u32 {
        match self {
            Prefetch::Fixed(n) => n,
            Prefetch::Auto => match mean_run_us {
                None => workers,
                Some(run) if run >= LONG_TASK_US => 0,
                Some(run) => {
                    let mut per_worker = (HELD_WORK_US / run.max(1.0)).ceil();
                    if run <= WRITTEN_AHEAD_US {
                        per_worker = per_worker.max(2.0);
                    }
                    let by_bytes = (MAX_BYTES_PER_WORKER / mean_payload.max(1.0))
                        .floor()
                        .max(1.0);
                    let per_worker = per_worker.min(by_bytes).min(f64::from(MAX_PER_WORKER));
                    workers.saturating_mul(per_worker as u32)
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
        let small = 30.0;
        // Before any task finished: one per worker.
        assert_eq!(auto.capacity(4, None, small), 4);
        // No-op tasks: as many as allowed.
        assert_eq!(auto.capacity(4, Some(5.0), small), 4 * MAX_PER_WORKER);
        // 250 us tasks: eight per worker cover two milliseconds.
        assert_eq!(auto.capacity(2, Some(250.0), small), 16);
        // 1 to 20 ms, written behind a running task by the manager: two per worker.
        assert_eq!(auto.capacity(2, Some(1_500.0), small), 4);
        assert_eq!(auto.capacity(2, Some(10_000.0), small), 4);
        assert_eq!(auto.capacity(2, Some(20_000.0), small), 4);
        // Longer, to just under a second: one per worker.
        assert_eq!(auto.capacity(2, Some(20_001.0), small), 2);
        assert_eq!(auto.capacity(2, Some(999_999.0), small), 2);
        // A second or more: none, so no task waits behind a long one.
        assert_eq!(auto.capacity(2, Some(1_000_000.0), small), 0);
        assert_eq!(Prefetch::Fixed(3).capacity(64, Some(1.0), small), 3);
    }

    #[test]
    fn auto_holds_a_few_mebibytes_of_arguments_per_worker_and_at_least_one_task() {
        let auto = Prefetch::Auto;
        let mib = f64::from(1 << 20);
        assert_eq!(auto.capacity(2, Some(5.0), mib), 16);
        assert_eq!(auto.capacity(2, Some(5.0), 64.0 * mib), 2);
        // Not more than the run time asks for.
        assert_eq!(auto.capacity(2, Some(600_000.0), mib / 4.0), 2);
        assert_eq!(Prefetch::Fixed(100).capacity(2, Some(5.0), 64.0 * mib), 100);
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
            let held = [1, 2, 128].map(|workers| prefetch.capacity(workers, mean, 30.0));
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
