//! Who is waiting for what: callers waiting for one task's result (the invoke trigger,
//! `GET /v1/tasks/{id}?wait=S`) and callers long-polling `GET /v1/results`.
//!
//! A waiter is registered before the task can finish (before it is handed to the agent,
//! or before the store is read), so a result that lands in between is never missed. A
//! finished task's result is handed to its waiters straight from the agent link: the
//! invoke trigger's callers as soon as it arrives (they answer with the result itself),
//! the others once the store has committed it (they read the task back).
//!
//! Answering before the commit must not let the caller then read the task unfinished:
//! results that arrived and are not committed yet are listed ([`Waiters::any_uncommitted`]),
//! and a read of such a task first waits for the store to commit what it was given.

use scifaas_protocol::{EndpointId, TaskId, TaskResult};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// A waiter: for the invoke trigger, the endpoint whose agent may answer it early.
struct Entry {
    early_from: Option<EndpointId>,
    sender: oneshot::Sender<Arc<TaskResult>>,
}

type Registry = Arc<Mutex<HashMap<TaskId, Vec<Entry>>>>;

/// The waiter registry and the "some task finished" signal.
pub(crate) struct Waiters {
    tasks: Registry,
    /// Tasks whose result arrived and is not committed yet.
    uncommitted: Mutex<HashSet<TaskId>>,
    /// The highest `done_seq` committed so far.
    finished: watch::Sender<i64>,
}

impl Waiters {
    /// `last_done_seq`: the highest `done_seq` already in the store.
    pub(crate) fn new(last_done_seq: i64) -> Self {
        Self {
            tasks: Registry::default(),
            uncommitted: Mutex::new(HashSet::new()),
            finished: watch::Sender::new(last_done_seq),
        }
    }

    /// Registers interest in one task's committed result.
    pub(crate) fn wait_for(&self, task_id: TaskId) -> TaskWaiter {
        self.register(task_id, None)
    }

    /// Registers interest in one task's result as soon as `endpoint`'s agent sends it,
    /// before it is committed (the invoke trigger, which answers with the result).
    pub(crate) fn wait_for_arrival(&self, task_id: TaskId, endpoint: EndpointId) -> TaskWaiter {
        self.register(task_id, Some(endpoint))
    }

    fn register(&self, task_id: TaskId, early_from: Option<EndpointId>) -> TaskWaiter {
        let (sender, receiver) = oneshot::channel();
        lock(&self.tasks)
            .entry(task_id)
            .or_default()
            .push(Entry { early_from, sender });
        TaskWaiter {
            task_id,
            receiver,
            tasks: self.tasks.clone(),
        }
    }

    /// Notes results `endpoint`'s agent just sent, queued for the store and not
    /// committed yet, and hands each to the invoke callers waiting for it from that
    /// endpoint.
    pub(crate) fn on_results_arrived(&self, endpoint: EndpointId, results: &[Arc<TaskResult>]) {
        lock(&self.uncommitted).extend(results.iter().map(|r| r.task_id));
        let mut tasks = lock(&self.tasks);
        for result in results {
            let Some(entries) = tasks.get_mut(&result.task_id) else {
                continue;
            };
            let (early, rest): (Vec<Entry>, Vec<Entry>) = std::mem::take(entries)
                .into_iter()
                .partition(|e| e.early_from == Some(endpoint));
            *entries = rest;
            if entries.is_empty() {
                tasks.remove(&result.task_id);
            }
            for entry in early {
                let _ = entry.sender.send(result.clone());
            }
        }
    }

    /// Notes that the store is done with these results (committed, or failed to).
    pub(crate) fn on_results_settled(&self, task_ids: impl IntoIterator<Item = TaskId>) {
        let mut uncommitted = lock(&self.uncommitted);
        for id in task_ids {
            uncommitted.remove(&id);
        }
    }

    /// Whether any of the tasks' results arrived and is not committed yet: a read of them
    /// should wait for the store to commit (`Store::flush`) before it reads.
    pub(crate) fn any_uncommitted<'a>(&self, mut ids: impl Iterator<Item = &'a TaskId>) -> bool {
        let uncommitted = lock(&self.uncommitted);
        !uncommitted.is_empty() && ids.any(|id| uncommitted.contains(id))
    }

    /// Hands a committed result to everyone still waiting for that task.
    pub(crate) fn on_task_finished(&self, result: &Arc<TaskResult>) {
        let entries = lock(&self.tasks).remove(&result.task_id);
        for entry in entries.into_iter().flatten() {
            let _ = entry.sender.send(result.clone());
        }
    }

    /// Announces that every task up to `done_seq` is committed.
    pub(crate) fn on_committed_up_to(&self, done_seq: i64) {
        self.finished.send_if_modified(|last| {
            let newer = done_seq > *last;
            if newer {
                *last = done_seq;
            }
            newer
        });
    }

    /// The highest committed `done_seq` and a way to wait for a higher one.
    pub(crate) fn finished(&self) -> watch::Receiver<i64> {
        self.finished.subscribe()
    }
}

/// One registered wait for one task; deregisters itself when dropped (a caller that
/// timed out or hung up leaves nothing behind).
pub(crate) struct TaskWaiter {
    task_id: TaskId,
    receiver: oneshot::Receiver<Arc<TaskResult>>,
    tasks: Registry,
}

impl TaskWaiter {
    /// The task's result, or `None` when `limit` passes first.
    pub(crate) async fn wait(&mut self, limit: Duration) -> Option<Arc<TaskResult>> {
        match tokio::time::timeout(limit, &mut self.receiver).await {
            Ok(Ok(result)) => Some(result),
            _ => None,
        }
    }
}

impl Drop for TaskWaiter {
    fn drop(&mut self) {
        self.receiver.close();
        let mut tasks = lock(&self.tasks);
        if let Some(entries) = tasks.get_mut(&self.task_id) {
            entries.retain(|entry| !entry.sender.is_closed());
            if entries.is_empty() {
                tasks.remove(&self.task_id);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scifaas_protocol::{ErrorKind, TaskError};

    #[tokio::test]
    async fn a_waiter_gets_the_result_and_a_dropped_waiter_leaves_nothing() {
        let waiters = Waiters::new(0);
        let id = TaskId::new();
        let mut first = waiters.wait_for(id);
        let gone = waiters.wait_for(id);
        drop(gone);
        assert_eq!(lock(&waiters.tasks)[&id].len(), 1);
        let result = Arc::new(TaskResult::failed(
            id,
            TaskError::system(ErrorKind::WorkerDied, "WorkerDied", "x"),
        ));
        waiters.on_task_finished(&result);
        assert_eq!(
            first.wait(Duration::from_secs(1)).await.unwrap().task_id,
            id
        );
        drop(first);
        assert!(lock(&waiters.tasks).is_empty());

        let mut late = waiters.wait_for(TaskId::new());
        assert!(late.wait(Duration::from_millis(10)).await.is_none());
        drop(late);
        assert!(lock(&waiters.tasks).is_empty());
    }

    #[tokio::test]
    async fn an_invoke_caller_gets_the_result_on_arrival_from_its_endpoint_only() {
        let waiters = Waiters::new(0);
        let (endpoint, other) = (EndpointId::new(), EndpointId::new());
        let id = TaskId::new();
        let mut invoke = waiters.wait_for_arrival(id, endpoint);
        let mut view = waiters.wait_for(id);
        let result = Arc::new(TaskResult::failed(
            id,
            TaskError::system(ErrorKind::WorkerDied, "WorkerDied", "x"),
        ));
        // Another endpoint's agent cannot answer it.
        waiters.on_results_arrived(other, std::slice::from_ref(&result));
        assert!(invoke.wait(Duration::from_millis(10)).await.is_none());
        waiters.on_results_arrived(endpoint, std::slice::from_ref(&result));
        assert!(waiters.any_uncommitted([id].iter()));
        assert!(invoke.wait(Duration::from_secs(1)).await.is_some());
        // A reader of the task waits for the commit.
        assert!(view.wait(Duration::from_millis(10)).await.is_none());
        waiters.on_results_settled([id]);
        assert!(!waiters.any_uncommitted([id].iter()));
        waiters.on_task_finished(&result);
        assert!(view.wait(Duration::from_secs(1)).await.is_some());
        drop((invoke, view));
        assert!(lock(&waiters.tasks).is_empty());
    }

    #[test]
    fn the_finished_signal_only_moves_forward() {
        let waiters = Waiters::new(5);
        waiters.on_committed_up_to(3);
        assert_eq!(*waiters.finished().borrow(), 5);
        waiters.on_committed_up_to(9);
        assert_eq!(*waiters.finished().borrow(), 9);
    }
}
