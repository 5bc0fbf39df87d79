//! A worker's input side: its stdin and the tasks written to it that it has not answered
//! yet. The [`crate::Worker`] that reads the answers owns it; a [`WorkerInput`] lets
//! another thread write a task to the worker while the worker is idle, so that a task
//! reaches the worker from the thread that decided where it goes, not one thread further
//! on (in the manager: one wake-up less between a task's arrival and its start).

use crate::error::WorkerError;
use crate::frame::{encode_frame_into, FrameError, PREFIX_LEN};
use crate::message::{TaskHeader, PAYLOAD_PICKLE};
use crate::pickle::json_to_pickle;
use bytes::Bytes;
use nix::fcntl::{vmsplice, SpliceFFlags};
use scifaas_protocol::{TaskId, TaskSpec};
use std::collections::{HashSet, VecDeque};
use std::io::{IoSlice, Write};
use std::process::ChildStdin;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

/// Room a task frame needs besides its source and payload (the prefix and a header).
const FRAME_OVERHEAD: usize = 1024;

/// The largest payload a [`WorkerInput`] writes: re-encoding a larger one (see
/// [`crate::pickle`]) would hold up the thread that writes it, and a task that large
/// gains nothing from reaching its worker a wake-up sooner.
const DIRECT_PAYLOAD_MAX: usize = 64 << 10;

/// A buffer of re-encoded payloads larger than this is let go once written, so that one
/// huge argument does not stay in the manager's memory.
const KEPT_PICKLE_BUFFER: usize = 2 << 20;

/// Payloads at least this large go into the pipe by `vmsplice`: the pipe takes references
/// to their pages instead of a copy (the worker's read is then the only copy). The
/// payload's memory must then stay as it is until the worker has read it, so it is held
/// with the task until the task's answer ([`Held`]). Below this size a copy costs less
/// than pinning pages.
const SPLICE_MIN: usize = 128 << 10;

/// Spare payload buffers kept for re-use, so that a large pickle is not written into
/// freshly allocated (page-faulting) memory for every task.
const SPARE_BUFFERS: usize = 2;

/// A task written to the worker and not answered yet.
pub(crate) struct Written {
    pub task_id: TaskId,
    /// Whether its function's source went with it.
    pub with_source: bool,
    /// About how many bytes its frame took in the pipe.
    pub frame_len: usize,
    /// The payload's memory, while the pipe may still refer to it.
    pub held: Option<Held>,
}

/// A payload spliced into the pipe, kept unchanged until its task is answered.
pub(crate) enum Held {
    /// Its pickle (a buffer re-used once the answer came).
    Pickle(Vec<u8>),
    /// Its JSON, as received (a reference kept only so that the bytes stay).
    Json { _bytes: Bytes },
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
    /// task's own buffers, or from `pickled`).
    frame: Vec<u8>,
    /// The payload of the task in `payload_of`, as a pickle.
    pickled: Vec<u8>,
    /// The task whose payload was encoded last, and whether it goes as the pickle in
    /// `pickled` (or as its JSON): a task measured for the room it needs is then written
    /// without encoding its payload again.
    payload_of: Option<(TaskId, bool)>,
    /// The size of the pipe into the worker.
    pub pipe_capacity: usize,
    /// Buffers of pickles spliced and answered, for the next ones.
    spare_buffers: Vec<Vec<u8>>,
}

impl Input {
    pub fn new(stdin: ChildStdin, pipe_capacity: usize) -> Self {
        Input {
            stdin: Some(stdin),
            known: HashSet::new(),
            written: VecDeque::new(),
            frame: Vec::new(),
            pickled: Vec::new(),
            payload_of: None,
            pipe_capacity,
            spare_buffers: Vec::new(),
        }
    }

    /// Writes a task, with its function's source unless the worker has it, and notes it
    /// as written. A pipe that broke is closed on our side too.
    pub fn write(&mut self, task: &TaskSpec) -> Result<(), WriteFailure> {
        let with_source = !self.known.contains(&task.function.hash);
        let frame_len = self.frame_len(task);
        let held = self.write_frame(task, with_source)?;
        self.written.push_back(Written {
            task_id: task.task_id,
            with_source,
            frame_len,
            held,
        });
        Ok(())
    }

    /// The oldest task written has been answered: the worker read all of its frame.
    pub fn answered(&mut self) -> Option<Written> {
        let mut answered = self.written.pop_front()?;
        self.release(answered.held.take());
        Some(answered)
    }

    /// A payload the pipe no longer refers to: its buffer may be written again.
    pub fn release(&mut self, held: Option<Held>) {
        if let Some(Held::Pickle(mut buffer)) = held {
            if self.spare_buffers.len() < SPARE_BUFFERS && buffer.capacity() <= KEPT_PICKLE_BUFFER {
                buffer.clear();
                self.spare_buffers.push(buffer);
            }
        }
    }

    /// About how many bytes `task`'s frame takes in the pipe (at most: the source may not
    /// go). Encodes its payload for the worker, which writing it next then reuses.
    fn frame_len(&mut self, task: &TaskSpec) -> usize {
        let payload = if self.encode_payload(task) {
            self.pickled.len()
        } else {
            task.payload.len()
        };
        payload + task.function.source.len() + FRAME_OVERHEAD
    }

    /// [`Input::frame_len`] of `task` if it is at most `room`, else `None`. The JSON is
    /// measured first: a task whose JSON does not fit is not re-encoded only to be
    /// measured and left unwritten (its pickle might be a little smaller; it is then
    /// written on its own later).
    pub fn frame_len_within(&mut self, task: &TaskSpec, room: usize) -> Option<usize> {
        let json_len = task.payload.len() + task.function.source.len() + FRAME_OVERHEAD;
        if json_len > room {
            return None;
        }
        Some(self.frame_len(task)).filter(|&len| len <= room)
    }

    /// Encodes `task`'s payload as a pickle into `pickled`, unless that was the last one
    /// encoded; answers whether the pickle goes (or the JSON, where it declined).
    fn encode_payload(&mut self, task: &TaskSpec) -> bool {
        match self.payload_of {
            Some((id, pickled)) if id == task.task_id => pickled,
            _ => {
                // An empty payload means no arguments, to the worker as well.
                let pickled =
                    !task.payload.is_empty() && json_to_pickle(&task.payload, &mut self.pickled);
                self.payload_of = Some((task.task_id, pickled));
                pickled
            }
        }
    }

    /// Writes one task frame, without noting it. Answers the payload's memory if it was
    /// spliced: the caller keeps it until the worker answers the task ([`Input::release`]).
    pub fn write_frame(
        &mut self,
        task: &TaskSpec,
        with_source: bool,
    ) -> Result<Option<Held>, WriteFailure> {
        let source: &[u8] = if with_source {
            &task.function.source
        } else {
            &[]
        };
        let pickled = self.encode_payload(task);
        let payload: &[u8] = if pickled {
            &self.pickled
        } else {
            &task.payload
        };
        let header = TaskHeader {
            op: "task",
            task_id: task.task_id,
            fn_hash: &task.function.hash,
            fn_name: &task.function.name,
            source_len: source.len(),
            payload_format: pickled.then_some(PAYLOAD_PICKLE),
        };
        let header = serde_json::to_vec(&header).expect("a task header always encodes");
        self.frame.clear();
        encode_frame_into(&mut self.frame, &header, &[])?;
        let body_len =
            u32::try_from(source.len() + payload.len()).map_err(|_| FrameError::BodyTooLarge {
                len: (source.len() + payload.len()) as u64,
                limit: u32::MAX.into(),
            })?;
        // The prefix announces the body that follows; written from the task's buffers,
        // so that a large payload is not copied into a frame first.
        self.frame[4..PREFIX_LEN].copy_from_slice(&body_len.to_be_bytes());
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(WriteFailure::Broken);
        };
        let splice = payload.len() >= SPLICE_MIN;
        let broke = if splice {
            write_all_vectored(stdin, &[&self.frame, source]).is_err()
                || splice_all(stdin, payload).is_err()
        } else {
            write_all_vectored(stdin, &[&self.frame, source, payload]).is_err()
        };
        // Even a broken write may have left pages of the payload in the pipe.
        let held = if !splice {
            None
        } else if pickled {
            let next = self.spare_buffers.pop().unwrap_or_default();
            self.payload_of = None;
            Some(Held::Pickle(std::mem::replace(&mut self.pickled, next)))
        } else {
            Some(Held::Json {
                _bytes: task.payload.clone(),
            })
        };
        if self.pickled.capacity() > KEPT_PICKLE_BUFFER {
            self.pickled = Vec::new();
            self.payload_of = None;
        }
        if broke {
            // Part of a frame may be in the pipe: nothing more may follow it.
            self.stdin = None;
            return Err(WriteFailure::Broken);
        }
        Ok(held)
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
        let room = input.pipe_capacity / 2;
        if input.stdin.is_none()
            || !input.written.is_empty()
            || task.payload.len() > DIRECT_PAYLOAD_MAX
            || input.frame_len_within(task, room).is_none()
        {
            return false;
        }
        input.write(task).is_ok()
    }
}

/// Puts `bytes` into the pipe `out` by reference to their pages (`vmsplice`): no copy
/// here, so the caller must not change or free them until the reader has read them.
/// Where the system refuses `vmsplice` before taking anything (a seccomp filter, a
/// kernel without it), the bytes are written as usual.
fn splice_all(mut out: &ChildStdin, mut bytes: &[u8]) -> std::io::Result<()> {
    use nix::errno::Errno;
    let mut spliced_any = false;
    while !bytes.is_empty() {
        match vmsplice(out, &[IoSlice::new(bytes)], SpliceFFlags::empty()) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                spliced_any = true;
            }
            Err(Errno::EINTR) => {}
            Err(Errno::ENOSYS | Errno::EPERM | Errno::EINVAL) if !spliced_any => {
                return out.write_all(bytes);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::read_frame;
    use bytes::Bytes;
    use scifaas_protocol::{FunctionId, FunctionSpec};
    use std::process::{Command, Stdio};

    /// The frames `Input` writes for `payloads`, as they leave the pipe (through `cat`).
    fn frames_written(payloads: &[&str]) -> Vec<(serde_json::Value, Vec<u8>)> {
        let mut cat = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cat runs");
        let mut input = Input::new(cat.stdin.take().unwrap(), 1 << 16);
        for payload in payloads {
            let task = TaskSpec {
                task_id: TaskId::new(),
                function: FunctionSpec {
                    id: FunctionId::new(),
                    hash: "h".into(),
                    name: "f".into(),
                    source: Bytes::from_static(b"def f(*a): pass\n"),
                    container: None,
                },
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                walltime_ms: None,
                retries: 0,
            };
            assert!(input.write(&task).is_ok());
            input.known.insert("h".into());
        }
        input.stdin = None;
        let mut out = cat.stdout.take().unwrap();
        let frames = std::iter::from_fn(|| read_frame(&mut out, u32::MAX).unwrap())
            .map(|f| (serde_json::from_slice(&f.header).unwrap(), f.body))
            .collect();
        cat.wait().unwrap();
        frames
    }

    #[test]
    fn payloads_go_as_pickles_unless_the_pickle_could_read_differently() {
        let frames = frames_written(&[r#"{"args": [1.5]}"#, r#"{"args": [-0]}"#, ""]);
        let (header, body) = &frames[0];
        assert_eq!(header["payload_format"], "pickle");
        let source_len = header["source_len"].as_u64().unwrap() as usize;
        assert_eq!(&body[source_len..source_len + 2], b"\x80\x04");
        // Declined: the JSON goes, and no format is named.
        let (header, body) = &frames[1];
        assert!(header.get("payload_format").is_none());
        assert_eq!(&body[..], br#"{"args": [-0]}"#);
        // No arguments stays no bytes.
        let (header, body) = &frames[2];
        assert!(header.get("payload_format").is_none());
        assert!(body.is_empty());
    }
}
