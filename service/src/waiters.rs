//! Who is waiting for what: callers waiting for one task's result (the invoke trigger,
//! `GET /v1/tasks/{id}?wait=S`) and callers long-polling `GET /v1/results`.
//!
//! A waiter is registered before the task can finish (before it is handed to the agent,
//! or before the store is read), so a result that lands in between is never missed. A
//! finished task's result is handed to its waiters straight from the agent link, once the
//! store has committed it: the invoke path does not read it back from disk.

use scifaas_protocol::{TaskId, TaskResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

type Registry = Arc<Mutex<HashMap<TaskId, Vec<oneshot::Sender<Arc<TaskResult>>>>>>;

/// The waiter registry and the "some task finished" signal.
pub(crate) struct Waiters {
    tasks: Registry,
    /// The highest `done_seq` committed so far.
    finished: watch::Sender<i64>,
}

impl Waiters {
    /// `last_done_seq`: the highest `done_seq` already in the store.
    pub(crate) fn new(last_done_seq: i64) -> Self {
        Self {
            tasks: Registry::default(),
            finished: watch::Sender::new(last_done_seq),
        }
    }

    /// Registers interest in one task's result.
    pub(crate) fn wait_for(&self, task_id: TaskId) -> TaskWaiter {
        let (sender, receiver) = oneshot::channel();
        lock(&self.tasks).entry(task_id).or_default().push(sender);
        TaskWaiter {
            task_id,
            receiver,
            tasks: self.tasks.clone(),
        }
    }

    /// Hands a committed result to everyone waiting for that task.
    pub(crate) fn on_task_finished(&self, result: &Arc<TaskResult>) {
        let senders = lock(&self.tasks).remove(&result.task_id);
        for sender in senders.into_iter().flatten() {
            let _ = sender.send(result.clone());
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
        if let Some(senders) = tasks.get_mut(&self.task_id) {
            senders.retain(|sender| !sender.is_closed());
            if senders.is_empty() {
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

    #[test]
    fn the_finished_signal_only_moves_forward() {
        let waiters = Waiters::new(5);
        waiters.on_committed_up_to(3);
        assert_eq!(*waiters.finished().borrow(), 5);
        waiters.on_committed_up_to(9);
        assert_eq!(*waiters.finished().borrow(), 9);
    }
}
