//! A worker's input side: its stdin and the tasks written to it that it has not answered
//! yet. The [`crate::Worker`] that reads the answers owns it; a [`WorkerInput`] lets
//! another thread write a task to the worker while the worker is idle, so that a task
//! reaches the worker from the thread that decided where it goes, not one thread further
//! on (in the manager: one wake-up less between a task's arrival and its start).

use crate::error::WorkerError;
use crate::frame::{encode_frame_into, FrameError, PREFIX_LEN};
use crate::message::TaskHeader;
use scifaas_protocol::{TaskId, TaskSpec};
use std::collections::{HashSet, VecDeque};
use std::io::{IoSlice, Write};
use std::process::ChildStdin;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

/// Room a task frame needs besides its source and payload (the prefix and a header).
const FRAME_OVERHEAD: usize = 1024;

/// About how many bytes a task's frame takes in the pipe (at most: the source may not go).
pub(crate) fn frame_len(task: &TaskSpec) -> usize {
    task.payload.len() + task.function.source.len() + FRAME_OVERHEAD
}

/// A task written to the worker and not answered yet.
pub(crate) struct Written {
    pub task_id: TaskId,
    /// Whether its function's source went with it.
    pub with_source: bool,
    /// About how many bytes its frame took in the pipe.
    pub frame_len: usize,
}

/// Why a task could not be written.
pub(crate) enum WriteFailure {
    /// Its header does not fit a frame; the worker is fine.
    TooLarge(FrameError),
    /// The pipe is closed or broke: the worker is gone (or going).
    Broken,
}

impl From<FrameError> for WriteFailure {
    fn from(e: FrameError) -> Self {
        WriteFailure::TooLarge(e)
    }
}

pub(crate) struct Input {
    /// None once the worker was told to stop or was found gone.
    pub stdin: Option<ChildStdin>,
    /// Hashes of the functions the worker has (or will have, once it reads what was
    /// written) compiled.
    pub known: HashSet<String>,
    /// The tasks written and not answered yet, oldest (the running one) first.
    pub written: VecDeque<Written>,
    /// The prefix and header of the task frame being sent (its body is written from the
    /// task's own buffers).
    frame: Vec<u8>,
    /// The size of the pipe into the worker.
    pub pipe_capacity: usize,
}

impl Input {
    pub fn new(stdin: ChildStdin, pipe_capacity: usize) -> Self {
        Input {
            stdin: Some(stdin),
            known: HashSet::new(),
            written: VecDeque::new(),
            frame: Vec::new(),
            pipe_capacity,
        }
    }

    /// Writes a task, with its function's source unless the worker has it, and notes it
    /// as written. A pipe that broke is closed on our side too.
    pub fn write(&mut self, task: &TaskSpec) -> Result<(), WriteFailure> {
        let with_source = !self.known.contains(&task.function.hash);
        self.write_frame(task, with_source)?;
        self.written.push_back(Written {
            task_id: task.task_id,
            with_source,
            frame_len: frame_len(task),
        });
        Ok(())
    }

    /// Writes one task frame, without noting it.
    pub fn write_frame(&mut self, task: &TaskSpec, with_source: bool) -> Result<(), WriteFailure> {
        let source: &[u8] = if with_source {
            &task.function.source
        } else {
            &[]
        };
        let header = TaskHeader {
            op: "task",
            task_id: task.task_id,
            fn_hash: &task.function.hash,
            fn_name: &task.function.name,
            source_len: source.len(),
        };
        let header = serde_json::to_vec(&header).expect("a task header always encodes");
        self.frame.clear();
        encode_frame_into(&mut self.frame, &header, &[])?;
        let body_len = u32::try_from(source.len() + task.payload.len()).map_err(|_| {
            FrameError::BodyTooLarge {
                len: (source.len() + task.payload.len()) as u64,
                limit: u32::MAX.into(),
            }
        })?;
        // The prefix announces the body that follows; written from the task's buffers,
        // so that a large payload is not copied into a frame first.
        self.frame[4..PREFIX_LEN].copy_from_slice(&body_len.to_be_bytes());
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(WriteFailure::Broken);
        };
        if write_all_vectored(stdin, &[&self.frame, source, &task.payload]).is_err() {
            // Part of a frame may be in the pipe: nothing more may follow it.
            self.stdin = None;
            return Err(WriteFailure::Broken);
        }
        Ok(())
    }

    /// The bytes of the frames written and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.written.iter().map(|w| w.frame_len).sum()
    }
}

/// Locks a worker's input; a thread that panicked holding it left whole frames only
/// (a broken write closes the pipe first), so the state is usable.
pub(crate) fn lock(input: &Mutex<Input>) -> MutexGuard<'_, Input> {
    input
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A handle on a worker's input for another thread: it writes a task to the worker when
/// the worker has nothing else written to it, and never waits.
#[derive(Clone)]
pub struct WorkerInput {
    pub(crate) input: Arc<Mutex<Input>>,
}

impl WorkerInput {
    /// Writes `task` to the worker if the worker has answered everything written to it
    /// (so its pipe is empty), the frame fits half the pipe (so the write cannot wait for
    /// the worker), and no one else is writing. Answers whether it was written; if so,
    /// the worker's owner must run exactly this task next ([`crate::Worker::run`] then
    /// reads its answer without writing it again). If not, nothing was written, or the
    /// pipe broke and the owner will find the worker gone.
    pub fn write_if_idle(&self, task: &TaskSpec) -> bool {
        let mut input = match self.input.try_lock() {
            Ok(input) => input,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        if input.stdin.is_none()
            || !input.written.is_empty()
            || frame_len(task) > input.pipe_capacity / 2
        {
            return false;
        }
        input.write(task).is_ok()
    }
}

/// Writes every part, in order, with as few system calls as the pipe allows.
pub(crate) fn write_all_vectored(out: &mut impl Write, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|part| !part.is_empty())
        .map(|part| IoSlice::new(part))
        .collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl WriteFailure {
    /// As the owner reports it: a broken pipe is the worker's death, found by `died`.
    pub(crate) fn into_error(self, died: impl FnOnce() -> WorkerError) -> WorkerError {
        match self {
            WriteFailure::TooLarge(e) => WorkerError::TooLarge(e),
            WriteFailure::Broken => died(),
        }
    }
}
