//! Tasks lined up behind busy workers: a slot that finishes a task takes the next one of
//! its worker's kind from here at once, without waiting for the main thread.
//!
//! With the interchange's prefetch the manager holds more tasks than it has free workers.
//! Handing each of them to a slot only when the slot reports its previous task done puts
//! two thread wake-ups (slot -> main -> slot) between one task and the next on the same
//! worker; taking it from this queue puts none. The main thread lines up every queued
//! task of a kind that has a busy worker (the line is shared: whichever worker of the kind
//! finishes first takes the oldest), and takes back whatever is left whenever it
//! dispatches, so a task never waits here while a worker of its kind is free: a slot that
//! finds nothing here reports itself free, and the main thread then hands it work
//! directly. With the whole prefetch lined up, a stream of short tasks runs from here
//! without the main thread (which then only batches the results, see `run.rs`).

use crate::pool::WorkerKind;
use scifaas_protocol::TaskSpec;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
pub struct ReadyQueue {
    tasks: Mutex<VecDeque<(TaskSpec, WorkerKind)>>,
}

impl ReadyQueue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<(TaskSpec, WorkerKind)>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lines up a task for the next worker of `kind` to finish.
    pub fn push(&self, task: TaskSpec, kind: WorkerKind) {
        self.lock().push_back((task, kind));
    }

    /// The oldest task lined up for a worker of `kind`, if any (a slot's call).
    pub fn take(&self, kind: &WorkerKind) -> Option<TaskSpec> {
        let mut tasks = self.lock();
        let at = tasks.iter().position(|(_, k)| k == kind)?;
        tasks.remove(at).map(|(task, _)| task)
    }

    /// Puts back, first in line, a task a slot took but cannot run.
    pub fn give_back(&self, task: TaskSpec, kind: WorkerKind) {
        self.lock().push_front((task, kind));
    }

    /// Whether no task is lined up.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Everything still lined up, oldest first (the main thread takes it back).
    pub fn drain(&self) -> Vec<(TaskSpec, WorkerKind)> {
        self.lock().drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scifaas_protocol::{ContainerSpec, FunctionId, FunctionSpec, TaskId};

    fn task() -> TaskSpec {
        TaskSpec {
            task_id: TaskId::new(),
            function: FunctionSpec {
                id: FunctionId::new(),
                hash: "h".into(),
                name: "f".into(),
                source: "def f(): pass".into(),
                container: None,
            },
            payload: "{}".into(),
            walltime_ms: None,
            retries: 0,
        }
    }

    fn container(image: &str) -> WorkerKind {
        WorkerKind(Some(ContainerSpec {
            runtime: "bwrap".into(),
            image: image.into(),
            options: None,
        }))
    }

    #[test]
    fn a_slot_takes_the_oldest_task_of_its_kind_only() {
        let ready = ReadyQueue::default();
        let (a, b, c) = (task(), task(), task());
        let (plain, boxed) = (WorkerKind(None), container("img"));
        ready.push(a.clone(), boxed.clone());
        ready.push(b.clone(), plain.clone());
        ready.push(c.clone(), boxed.clone());
        assert_eq!(ready.take(&plain).map(|t| t.task_id), Some(b.task_id));
        assert!(ready.take(&plain).is_none());
        assert_eq!(ready.take(&boxed).map(|t| t.task_id), Some(a.task_id));
        let left: Vec<_> = ready.drain().into_iter().map(|(t, _)| t.task_id).collect();
        assert_eq!(left, vec![c.task_id]);
        assert!(ready.take(&boxed).is_none());
    }
}
