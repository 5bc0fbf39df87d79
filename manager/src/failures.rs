//! Remembering worker starts that failed, so that a broken container (a missing image, a
//! runtime that is not installed, an image without a usable python3) fails its tasks
//! at once with the first failure's message instead of being started again for each
//! task, or in a loop.

use crate::pool::WorkerKind;
use scifaas_protocol::TaskError;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The last start failure of each kind of worker, shared by the slots and the main
/// thread. A failure stands for `retry_after`; the first task after that tries again
/// (the admin may have fixed the image), and a success forgets the failure.
pub struct StartFailures {
    retry_after: Duration,
    failures: Mutex<HashMap<WorkerKind, (Instant, TaskError)>>,
}

impl StartFailures {
    pub fn new(retry_after: Duration) -> Self {
        Self {
            retry_after,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The error for a task of `kind` while its last start failure stands: that
    /// failure's, saying when a start will be tried again.
    pub fn recent(&self, kind: &WorkerKind) -> Option<TaskError> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (at, error) = failures.get(kind)?;
        let left = self.retry_after.checked_sub(at.elapsed())?;
        let mut error = error.clone();
        error.message = format!(
            "{} [this manager does not start a worker of this kind again for {:.0} s]",
            error.message,
            left.as_secs_f64().ceil()
        );
        Some(error)
    }

    pub fn record(&self, kind: &WorkerKind, error: &TaskError) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.insert(kind.clone(), (Instant::now(), error.clone()));
    }

    pub fn clear(&self, kind: &WorkerKind) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scifaas_protocol::ErrorKind;

    #[test]
    fn a_failure_stands_for_its_time_then_lapses_and_a_success_clears_it() {
        let failures = StartFailures::new(Duration::from_millis(50));
        let kind = WorkerKind(None);
        assert!(failures.recent(&kind).is_none());
        let error = TaskError::system(ErrorKind::Endpoint, "WorkerStartFailed", "no python3");
        failures.record(&kind, &error);
        let recent = failures.recent(&kind).unwrap();
        assert_eq!(recent.type_name, "WorkerStartFailed");
        assert!(recent
            .message
            .starts_with("no python3 [this manager does not start"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(failures.recent(&kind).is_none());
        failures.record(&kind, &error);
        failures.clear(&kind);
        assert!(failures.recent(&kind).is_none());
    }
}
