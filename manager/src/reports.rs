//! The slots' reports to the main thread: a channel, and a wake-up of the main thread's
//! poll that is skipped while the main thread will come by anyway.
//!
//! Under a stream of short tasks a slot finishes one task every few tens of microseconds
//! and goes on with the next one it took from the ready line (`ready.rs`). Waking the
//! main thread for each of those reports (an inproc ZeroMQ send, a return from `poll`)
//! cost about as much CPU as running the task in Python. The main thread only needs them
//! for their results, which it holds for a moment anyway to send many in one message
//! (`run.rs`, `RESULT_HOLD`): while it holds results its poll times out at the hold's end
//! and it reads every queued report then. So a slot skips the wake-up for such a report
//! while the main thread says it holds results. Any other report (a slot free, a worker
//! started or gone) wakes it at once.
//!
//! No report is left unread: a slot queues its report before it reads the flag, and the
//! main thread, after clearing the flag, reads the queue once more before it sleeps.

use crate::slot::SlotEvent;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

/// The main thread's end, which also makes the slots' senders.
pub struct Reports {
    events: Receiver<SlotEvent>,
    /// Cloned into each slot's sender.
    events_in: Sender<SlotEvent>,
    main_holding: Arc<AtomicBool>,
}

/// What a slot sends through: the queue, and how to wake the main thread.
pub struct ReportSender<W> {
    events: Sender<SlotEvent>,
    main_holding: Arc<AtomicBool>,
    wake: W,
}

impl Reports {
    pub fn new() -> Reports {
        let (events_in, events) = mpsc::channel();
        Reports {
            events,
            events_in,
            main_holding: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A slot's sender, which calls `wake` to interrupt the main thread's poll.
    pub fn sender<W: Fn()>(&self, wake: W) -> ReportSender<W> {
        ReportSender {
            events: self.events_in.clone(),
            main_holding: self.main_holding.clone(),
            wake,
        }
    }

    /// The next queued report, if any (never waits).
    pub fn next(&self) -> Option<SlotEvent> {
        self.events.try_recv().ok()
    }

    /// Says whether the main thread holds results, and so will read the reports when
    /// the hold ends without being woken. After clearing it, the caller reads the queue
    /// once more before it sleeps.
    pub fn set_holding(&self, holding: bool) {
        self.main_holding.store(holding, Ordering::SeqCst);
    }
}

impl<W: Fn()> ReportSender<W> {
    /// Queues a report, waking the main thread unless it may wait; false once the main
    /// thread is gone.
    pub fn send(&self, event: SlotEvent) -> bool {
        let may_wait = event.may_wait_for_main();
        if self.events.send(event).is_err() {
            return false;
        }
        // Read after the report is queued (see the module's comment).
        if !(may_wait && self.main_holding.load(Ordering::SeqCst)) {
            (self.wake)();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::Lined;
    use scifaas_protocol::{ErrorKind, TaskError, TaskId, TaskResult};
    use std::cell::Cell;

    fn done(next: bool) -> SlotEvent {
        let error = TaskError::system(ErrorKind::WorkerDied, "T", "m");
        SlotEvent::Done {
            slot: 0,
            result: TaskResult::failed(TaskId::new(), error),
            kind: None,
            next: next.then(|| Lined {
                task_id: TaskId::new(),
                walltime: None,
            }),
        }
    }

    #[test]
    fn a_slot_going_on_skips_the_wake_up_only_while_results_are_held() {
        let reports = Reports::new();
        let wakes = Cell::new(0);
        let sender = reports.sender(|| wakes.set(wakes.get() + 1));

        // Not holding: every report wakes the main thread.
        assert!(sender.send(done(true)));
        assert_eq!(wakes.get(), 1);

        // Holding: a task done with the next one taken waits; a slot that is free now, or
        // any other report, still wakes.
        reports.set_holding(true);
        assert!(sender.send(done(true)));
        assert_eq!(wakes.get(), 1);
        assert!(sender.send(done(false)));
        assert_eq!(wakes.get(), 2);
        assert!(sender.send(SlotEvent::Started { slot: 0 }));
        assert_eq!(wakes.get(), 3);

        // Every report is there to read, the ones that did not wake included.
        reports.set_holding(false);
        let mut read = 0;
        while reports.next().is_some() {
            read += 1;
        }
        assert_eq!(read, 4);
        assert!(sender.send(done(true)));
        assert_eq!(wakes.get(), 4, "not holding any more: woken again");
    }

    #[test]
    fn a_sender_says_when_the_main_thread_is_gone() {
        let reports = Reports::new();
        let sender = reports.sender(|| {});
        drop(reports);
        assert!(!sender.send(done(true)));
    }
}
