//! The main thread's view of its worker slots, by container, and the choice of the slot
//! a task goes to.
//!
//! A slot's worker serves one container ([`WorkerKind`]). A task goes, in this order of
//! preference, to a free slot whose worker is of its kind (warm), to a free slot with no
//! worker (a cold start), or, when no worker of its kind exists at all, to the free slot
//! of another kind that has been idle longest (a switch), sparing kinds that other queued
//! tasks need. While a worker of its kind exists but is busy, the task waits for it:
//! switching costs a container start, which is usually dearer than the wait.

use scifaas_protocol::{ContainerSpec, TaskId};
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// The container a worker runs in; `None` runs the interpreter directly.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkerKind(pub Option<ContainerSpec>);

impl fmt::Display for WorkerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("no container"),
            Some(spec) => write!(f, "{} container {}", spec.runtime, spec.image),
        }
    }
}

/// A task a slot is running, and when it must be done.
#[derive(Clone, Debug)]
pub struct Running {
    pub task_id: TaskId,
    /// None until the task reaches its worker when the slot must start one first (a
    /// container start does not count against the task's walltime).
    pub deadline: Option<Instant>,
    pub walltime: Option<Duration>,
}

/// What the main thread knows of one slot.
#[derive(Clone, Debug)]
pub struct SlotView {
    /// The kind of the slot's worker (or of the one it is starting); `None`: no worker.
    pub kind: Option<WorkerKind>,
    pub busy: Option<Running>,
    /// Since when the slot has been free (meaningful while `busy` is `None`).
    pub idle_since: Instant,
}

/// How a task reaches the slot chosen for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The slot's worker is of the task's kind.
    Warm,
    /// The slot has no worker; it starts one.
    Cold,
    /// The slot's worker, of another kind, is retired for one of the task's kind.
    Switch,
    /// The task's kind failed to start recently: the slot fails the task at once and
    /// keeps its worker.
    FailFast,
}

/// Every slot's view, indexed by slot number.
pub struct Pool {
    pub slots: Vec<SlotView>,
}

impl Pool {
    /// `count` slots whose workers start as `initial` kind.
    pub fn new(count: usize, initial: &WorkerKind) -> Self {
        let now = Instant::now();
        Self {
            slots: (0..count)
                .map(|_| SlotView {
                    kind: Some(initial.clone()),
                    busy: None,
                    idle_since: now,
                })
                .collect(),
        }
    }

    pub fn any_free(&self) -> bool {
        self.slots.iter().any(|s| s.busy.is_none())
    }

    pub fn busy_count(&self) -> usize {
        self.slots.iter().filter(|s| s.busy.is_some()).count()
    }

    /// Busy slots whose worker is of `kind`: how many tasks of that kind may line up.
    pub fn busy_of_kind(&self, kind: &WorkerKind) -> usize {
        self.slots
            .iter()
            .filter(|s| s.busy.is_some() && s.kind.as_ref() == Some(kind))
            .count()
    }

    /// The slot a task of `kind` should go to now, if any. `failing`: that kind failed
    /// to start recently. `queued` counts the other queued tasks by kind, so that a
    /// switch spares a worker they will want.
    pub fn choose(
        &self,
        kind: &WorkerKind,
        failing: bool,
        queued: &HashMap<WorkerKind, usize>,
    ) -> Option<(usize, Placement)> {
        let free = || {
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.busy.is_none())
        };
        let of_kind = |s: &SlotView| s.kind.as_ref() == Some(kind);
        if failing {
            // Any free slot answers; one of the kind or empty loses no warm worker.
            let slot = free()
                .find(|(_, s)| of_kind(s) || s.kind.is_none())
                .or_else(|| free().next())?;
            return Some((slot.0, Placement::FailFast));
        }
        if let Some((i, _)) = free().find(|(_, s)| of_kind(s)) {
            return Some((i, Placement::Warm));
        }
        if let Some((i, _)) = free().find(|(_, s)| s.kind.is_none()) {
            return Some((i, Placement::Cold));
        }
        if self.slots.iter().any(of_kind) {
            return None;
        }
        let wanted = |s: &SlotView| {
            s.kind
                .as_ref()
                .is_some_and(|k| queued.get(k).copied().unwrap_or(0) > 0)
        };
        free()
            .min_by_key(|(_, s)| (wanted(s), s.idle_since))
            .map(|(i, _)| (i, Placement::Switch))
    }

    /// Records that `slot` took a task of `kind` placed as `placement`.
    pub fn assign(
        &mut self,
        slot: usize,
        kind: &WorkerKind,
        placement: Placement,
        running: Running,
    ) {
        let view = &mut self.slots[slot];
        if placement != Placement::FailFast {
            view.kind = Some(kind.clone());
        }
        view.busy = Some(running);
    }

    /// Records that `slot` finished its task and now holds a worker of `kind`.
    pub fn on_done(&mut self, slot: usize, kind: Option<WorkerKind>) {
        let view = &mut self.slots[slot];
        view.busy = None;
        view.kind = kind;
        view.idle_since = Instant::now();
    }

    /// Free slots holding a worker idle for `timeout` or longer, which are to be retired.
    pub fn idle_past(&self, timeout: Duration) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.busy.is_none() && s.kind.is_some())
            .filter(|(_, s)| s.idle_since.elapsed() >= timeout)
            .map(|(i, _)| i)
            .collect()
    }

    /// When the next idle worker reaches `timeout`, if any worker is idle.
    pub fn next_idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| s.busy.is_none() && s.kind.is_some())
            .map(|s| s.idle_since + timeout)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(image: &str) -> WorkerKind {
        WorkerKind(Some(ContainerSpec {
            runtime: "bwrap".into(),
            image: image.into(),
            options: None,
        }))
    }

    fn running() -> Running {
        Running {
            task_id: TaskId::new(),
            deadline: None,
            walltime: None,
        }
    }

    fn none() -> HashMap<WorkerKind, usize> {
        HashMap::new()
    }

    #[test]
    fn a_warm_worker_of_the_kind_comes_first_then_an_empty_slot() {
        let bare = WorkerKind(None);
        let mut pool = Pool::new(3, &bare);
        pool.slots[1].kind = Some(kind("a"));
        pool.slots[2].kind = None;
        assert_eq!(
            pool.choose(&kind("a"), false, &none()),
            Some((1, Placement::Warm))
        );
        assert_eq!(
            pool.choose(&kind("b"), false, &none()),
            Some((2, Placement::Cold))
        );
        assert_eq!(
            pool.choose(&bare, false, &none()),
            Some((0, Placement::Warm))
        );
    }

    #[test]
    fn a_kind_without_a_worker_switches_the_longest_idle_free_slot() {
        let mut pool = Pool::new(2, &kind("a"));
        pool.slots[1].kind = Some(kind("b"));
        pool.slots[0].idle_since = Instant::now();
        pool.slots[1].idle_since = Instant::now() - Duration::from_secs(5);
        assert_eq!(
            pool.choose(&kind("c"), false, &none()),
            Some((1, Placement::Switch))
        );
        // ...unless queued tasks want that slot's kind.
        let queued = HashMap::from([(kind("b"), 1)]);
        assert_eq!(
            pool.choose(&kind("c"), false, &queued),
            Some((0, Placement::Switch))
        );
    }

    #[test]
    fn a_kind_whose_worker_is_busy_waits_for_it_rather_than_switching() {
        let mut pool = Pool::new(2, &kind("a"));
        pool.slots[1].kind = Some(kind("b"));
        pool.assign(0, &kind("a"), Placement::Warm, running());
        assert_eq!(pool.choose(&kind("a"), false, &none()), None);
        // A kind with no worker at all still gets the free slot.
        assert_eq!(
            pool.choose(&kind("c"), false, &none()),
            Some((1, Placement::Switch))
        );
        pool.assign(1, &kind("c"), Placement::Switch, running());
        assert_eq!(pool.slots[1].kind, Some(kind("c")));
        assert!(!pool.any_free());
        assert_eq!(pool.choose(&kind("d"), false, &none()), None);
    }

    #[test]
    fn a_failing_kind_fails_fast_on_any_free_slot_without_taking_its_worker() {
        let mut pool = Pool::new(2, &kind("a"));
        pool.slots[1].kind = None;
        assert_eq!(
            pool.choose(&kind("broken"), true, &none()),
            Some((1, Placement::FailFast))
        );
        pool.assign(1, &kind("broken"), Placement::FailFast, running());
        assert_eq!(pool.slots[1].kind, None);
        assert_eq!(
            pool.choose(&kind("broken"), true, &none()),
            Some((0, Placement::FailFast))
        );
        pool.assign(0, &kind("broken"), Placement::FailFast, running());
        assert_eq!(pool.slots[0].kind, Some(kind("a")));
    }

    #[test]
    fn idle_workers_past_the_timeout_are_found_and_empty_slots_are_not() {
        let mut pool = Pool::new(3, &kind("a"));
        let long_ago = Instant::now() - Duration::from_secs(10);
        pool.slots[0].idle_since = long_ago;
        pool.slots[1].idle_since = long_ago;
        pool.slots[1].kind = None;
        pool.slots[2].idle_since = long_ago;
        pool.assign(2, &kind("a"), Placement::Warm, running());
        assert_eq!(pool.idle_past(Duration::from_secs(5)), [0]);
        assert_eq!(
            pool.next_idle_deadline(Duration::from_secs(5)),
            Some(long_ago + Duration::from_secs(5))
        );
        pool.on_done(2, Some(kind("a")));
        assert_eq!(pool.busy_count(), 0);
        assert_eq!(pool.idle_past(Duration::from_secs(5)), [0]);
    }
}
