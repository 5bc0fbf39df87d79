//! A running worker process and the task exchange with it.

use crate::command::{WorkerCommand, WorkerOptions};
use crate::error::{WorkerError, WorkerExit};
use crate::frame::{read_exact_vec, read_frame, read_prefix, skip_bytes, FrameError};
use crate::input::{lock, Held, Input, WorkerInput};
use crate::killer::WorkerKiller;
use crate::message::{ResultHeader, WorkerMessage, WorkerReply};
use crate::stderr::StderrTail;
use crate::WORKER_SCRIPT;
use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use scifaas_protocol::{ErrorKind, Outcome, TaskError, TaskId, TaskSpec};
use std::io::{BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// glibc's allocator settings for a worker, unless its environment names its own: blocks
/// up to 4 MiB come from the heap and up to 32 MiB freed at its top stay there. glibc's
/// defaults map (and zero) every block over 128 KiB afresh, and give it back when freed,
/// so each large argument costs its pages three times over (read, decoded, parsed):
/// measured here, a 1 MiB argument takes 2.3 ms per task instead of 3-4 ms. Other C
/// libraries ignore the variable.
const MALLOC_TUNABLES: (&str, &str) = (
    "GLIBC_TUNABLES",
    "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=33554432",
);

/// How long a worker that closed its output gets to exit on its own before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for a dead worker's last stderr bytes to arrive.
const STDERR_SETTLE: Duration = Duration::from_millis(500);
/// Give up waiting for a SIGKILLed process after this (it is stuck in the kernel).
const KILL_PATIENCE: Duration = Duration::from_secs(10);
/// The pipe buffer asked for each way (Linux's default is 64 KiB). A 1 MiB argument
/// then crosses in one write and one read instead of sixteen of each, every one a
/// context switch between the manager and the worker. Best effort: the kernel caps it
/// (`/proc/sys/fs/pipe-max-size`, a per-user total), and a smaller pipe only costs time.
const PIPE_BUFFER: i32 = 1 << 20;
/// Linux's pipe buffer when it cannot be enlarged (or read back).
const DEFAULT_PIPE_BUFFER: usize = 64 << 10;

/// One Python worker process, ready for tasks, which it runs one at a time.
///
/// It remembers which functions the worker has received, so that a warm call sends only
/// the payload. Dropping it SIGKILLs the worker's process group.
pub struct Worker {
    child: Child,
    /// Its stdin and what was written to it, shared with [`WorkerInput`]s.
    input: Arc<Mutex<Input>>,
    stdout: BufReader<ChildStdout>,
    killer: WorkerKiller,
    stderr: Arc<StderrTail>,
    python_version: String,
    worker_pid: u32,
    max_result_bytes: u32,
    /// Why this worker can no longer run tasks, once it cannot.
    unusable: Option<String>,
}

impl Worker {
    /// Starts a worker with `command`, in its own process group, sends it the worker
    /// script and waits (at most [`crate::DEFAULT_READY_TIMEOUT`]) for its "ready".
    ///
    /// A command that cannot be executed, or that exits or stalls before "ready", is an
    /// error naming the command line and quoting the end of its stderr.
    pub fn spawn(command: &WorkerCommand) -> Result<Worker, WorkerError> {
        Self::spawn_with(command, WorkerOptions::default())
    }

    /// [`Worker::spawn`] with a chosen ready timeout and result size limit.
    pub fn spawn_with(
        command: &WorkerCommand,
        options: WorkerOptions,
    ) -> Result<Worker, WorkerError> {
        let script = WORKER_SCRIPT.as_bytes();
        let argv = command.argv(script.len());
        let describe = || command.describe(script.len());
        let mut spawn = Command::new(&argv[0]);
        let (tunables, value) = MALLOC_TUNABLES;
        if std::env::var_os(tunables).is_none() && !command.env.iter().any(|(k, _)| k == tunables) {
            spawn.env(tunables, value);
        }
        let mut child = spawn
            .args(&argv[1..])
            .envs(command.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: a terminal's Ctrl-C does not reach it, and one killpg takes
            // whatever a function started along with it.
            .process_group(0)
            .spawn()
            .map_err(|source| WorkerError::Spawn {
                command: describe(),
                source,
            })?;
        let pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three streams are piped")
        };
        let mut pipe_capacity = DEFAULT_PIPE_BUFFER;
        for (i, pipe) in [stdin.as_fd(), stdout.as_fd()].into_iter().enumerate() {
            match fcntl(pipe, FcntlArg::F_SETPIPE_SZ(PIPE_BUFFER)) {
                Ok(size) if i == 0 => pipe_capacity = usize::try_from(size).unwrap_or(0),
                Ok(_) => {}
                Err(e) => tracing::debug!(pid, "cannot enlarge a worker pipe: {e}"),
            }
        }
        let mut worker = Worker {
            child,
            input: Arc::new(Mutex::new(Input::new(stdin, pipe_capacity))),
            stdout: BufReader::with_capacity(64 << 10, stdout),
            killer: WorkerKiller::new(pid),
            stderr: StderrTail::start(stderr, pid),
            python_version: String::new(),
            worker_pid: 0,
            max_result_bytes: options.max_result_bytes,
            unusable: None,
        };

        // The watchdog bounds the whole start, the script write included: a runtime that
        // hangs before reading stdin would otherwise block us forever.
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let killer = worker.killer.clone();
        let timeout = options.ready_timeout;
        let watchdog = thread::Builder::new()
            .name(format!("worker-{pid}-start"))
            .spawn(move || {
                started_rx.recv_timeout(timeout) == Err(RecvTimeoutError::Timeout)
                    && killer.signal_group()
            })
            .map_err(|source| WorkerError::Spawn {
                command: describe(),
                source,
            })?;
        let started = worker.start(script);
        drop(started_tx);
        let timed_out = watchdog.join().unwrap_or(false);

        let failure = match started {
            Ok(()) if !timed_out => {
                tracing::debug!(pid, python = %worker.python_version, "worker ready");
                return Ok(worker);
            }
            // "ready" raced the watchdog and lost: the worker has been killed.
            Ok(()) => StartFailure::Exited,
            Err(failure) => failure,
        };
        let exit = match failure {
            StartFailure::Exited => worker.finish(EXIT_GRACE),
            StartFailure::Protocol(_) => {
                worker.killer.signal_group();
                worker.finish(Duration::ZERO)
            }
        };
        let reason = match failure {
            _ if timed_out => format!("no \"ready\" within {timeout:?}, so it was killed"),
            StartFailure::Exited => exit.to_string(),
            StartFailure::Protocol(message) => message,
        };
        Err(WorkerError::NotReady {
            command: describe(),
            reason,
            stderr: worker.stderr.text(STDERR_SETTLE),
        })
    }

    /// The worker's pid on this host, also its process group id.
    pub fn pid(&self) -> u32 {
        self.killer.pid()
    }

    /// The pid the worker reported for itself (differs from [`Worker::pid`] inside a
    /// container).
    pub fn worker_pid(&self) -> u32 {
        self.worker_pid
    }

    /// The worker's Python version, e.g. `3.11.7`.
    pub fn python_version(&self) -> &str {
        &self.python_version
    }

    /// Whether the worker has compiled the function with this hash.
    pub fn has_function(&self, fn_hash: &str) -> bool {
        lock(&self.input).known.contains(fn_hash)
    }

    /// Whether the worker can still take tasks (false after any error but
    /// [`WorkerError::TooLarge`]).
    pub fn is_usable(&self) -> bool {
        self.unusable.is_none()
    }

    /// A handle that writes a task to this worker from another thread while it is idle.
    pub fn input(&self) -> WorkerInput {
        WorkerInput {
            input: self.input.clone(),
        }
    }

    /// A handle that kills this worker from another thread.
    pub fn killer(&self) -> WorkerKiller {
        self.killer.clone()
    }

    /// SIGKILLs the worker's process group; a [`Worker::run`] in progress returns
    /// [`WorkerError::Died`] with `killed` set.
    pub fn kill(&self) {
        self.killer.kill();
    }

    /// Runs one task and blocks until the worker answers. The function's source is sent
    /// only if this worker does not have it yet.
    ///
    /// A reply is returned for everything the task itself did, failures included; an
    /// `Err` means the worker failed (died, was killed, broke the protocol) and must be
    /// replaced, except for [`WorkerError::TooLarge`].
    pub fn run(&mut self, task: &TaskSpec) -> Result<WorkerReply, WorkerError> {
        self.run_and_send_ahead(task, []).0
    }

    /// Runs one task like [`Worker::run`], and first writes `next` to the worker behind
    /// it (and behind any task written ahead before), so that the worker starts each the
    /// moment the one before ends instead of waiting for the manager to read a result and
    /// write a task. Answers how many of `next` were written, in order; the worker must
    /// run those next (by this call, each in turn as `task`). Tasks are written ahead only
    /// while every frame not answered yet fits half the pipe, so that a write never waits
    /// for the worker (which may be waiting for us to read its result). If the worker
    /// fails, the tasks written behind the failed one did not run.
    pub fn run_and_send_ahead<'a>(
        &mut self,
        task: &TaskSpec,
        next: impl IntoIterator<Item = &'a TaskSpec>,
    ) -> (Result<WorkerReply, WorkerError>, usize) {
        if let Some(why) = &self.unusable {
            return (Err(WorkerError::Unusable(why.clone())), 0);
        }
        let mut input = lock(&self.input);
        match input.written.front().map(|w| w.task_id) {
            // Written ahead, or by a `WorkerInput`.
            Some(front) if front == task.task_id => {}
            Some(front) => {
                drop(input);
                let message = format!(
                    "task {front} was written ahead, but {} came next",
                    task.task_id
                );
                return (Err(self.protocol_error(message)), 0);
            }
            None => {
                if let Err(failure) = input.write(task) {
                    drop(input);
                    return (Err(failure.into_error(|| self.died())), 0);
                }
            }
        }
        let mut sent = 0;
        let room = input.pipe_capacity / 2;
        let mut in_flight = input.in_flight();
        for next in next {
            let Some(len) = input.frame_len_within(next, room.saturating_sub(in_flight)) else {
                break;
            };
            in_flight += len;
            // One that cannot be written (too large a header) runs on its own later and
            // fails then; a worker that died shows in the reply read below.
            if input.write(next).is_err() {
                break;
            }
            sent += 1;
        }
        drop(input);
        (self.finish_task(task), sent)
    }

    /// Reads the result of `task`, already written, and notes whether the worker now
    /// has its function.
    fn finish_task(&mut self, task: &TaskSpec) -> Result<WorkerReply, WorkerError> {
        let hash = &task.function.hash;
        let mut reply = self.read_reply(task.task_id)?;
        let (sent_source, more_written) = {
            let mut input = lock(&self.input);
            let answered = input.answered();
            (
                answered.is_some_and(|w| w.with_source),
                !input.written.is_empty(),
            )
        };
        if !sent_source && is_unknown_function(&reply) {
            if more_written {
                // Resending would put this task behind the one written ahead.
                let message = format!("the worker lost function {hash} with a task queued");
                return Err(self.protocol_error(message));
            }
            // We believed the worker had it; heal by sending the source once.
            tracing::warn!(pid = self.pid(), fn_hash = %hash, "worker lost a function; resending");
            reply = self.exchange(task, true)?;
        }
        // The worker caches a function exactly when its definition succeeded.
        let known = &mut lock(&self.input).known;
        if reply.error_kind() == Some(ErrorKind::FunctionDefinition) {
            known.remove(hash);
        } else if !known.contains(hash) {
            known.insert(hash.clone());
        }
        Ok(reply)
    }

    /// Closes the worker's input, which asks it to exit, and waits up to `grace` before
    /// killing it.
    pub fn shutdown(mut self, grace: Duration) -> WorkerExit {
        lock(&self.input).stdin = None;
        self.unusable = Some("shut down".into());
        self.finish(grace)
    }

    fn start(&mut self, script: &[u8]) -> Result<(), StartFailure> {
        {
            let mut input = lock(&self.input);
            let stdin = input.stdin.as_mut().ok_or(StartFailure::Exited)?;
            stdin.write_all(script).map_err(|_| StartFailure::Exited)?;
        }
        let frame = match read_frame(&mut self.stdout, 1 << 20) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(FrameError::Truncated | FrameError::Io(_)) => {
                return Err(StartFailure::Exited)
            }
            Err(e) => {
                return Err(StartFailure::Protocol(format!(
                    "its output is not a scifaas worker's ({e}); does something print to \
                     stdout before Python starts?"
                )))
            }
        };
        match serde_json::from_slice(&frame.header) {
            Ok(WorkerMessage::Ready { pid, python }) => {
                self.worker_pid = pid;
                self.python_version = python;
                Ok(())
            }
            Ok(other) => Err(StartFailure::Protocol(format!(
                "its first message is not \"ready\": {other:?}"
            ))),
            Err(e) => Err(StartFailure::Protocol(format!(
                "its first message is not a scifaas ready header: {e}"
            ))),
        }
    }

    /// Sends one task frame and reads its result frame.
    fn exchange(&mut self, task: &TaskSpec, with_source: bool) -> Result<WorkerReply, WorkerError> {
        let held = self.write_task(task, with_source)?;
        let reply = self.read_reply(task.task_id);
        lock(&self.input).release(held);
        reply
    }

    /// Writes one task frame, not noted as written (the caller reads its answer at once,
    /// keeping the payload's memory the pipe may refer to until then).
    fn write_task(
        &mut self,
        task: &TaskSpec,
        with_source: bool,
    ) -> Result<Option<Held>, WorkerError> {
        let written = lock(&self.input).write_frame(task, with_source);
        written.map_err(|failure| failure.into_error(|| self.died()))
    }

    fn read_reply(&mut self, task_id: TaskId) -> Result<WorkerReply, WorkerError> {
        let prefix = match read_prefix(&mut self.stdout) {
            Ok(Some(prefix)) => prefix,
            Ok(None) | Err(FrameError::Truncated | FrameError::Io(_)) => return Err(self.died()),
            Err(e) => return Err(self.protocol_error(e.to_string())),
        };
        let Ok(header) = read_exact_vec(&mut self.stdout, prefix.header_len as usize) else {
            return Err(self.died());
        };
        let header: ResultHeader = match serde_json::from_slice(&header) {
            Ok(WorkerMessage::Result(header)) => header,
            Ok(other) => {
                return Err(self.protocol_error(format!("expected a result, got {other:?}")))
            }
            Err(e) => return Err(self.protocol_error(format!("bad result header: {e}"))),
        };
        if header.task_id != task_id {
            let message = format!("sent task {task_id}, got the result of {}", header.task_id);
            return Err(self.protocol_error(message));
        }
        if prefix.body_len > self.max_result_bytes {
            if skip_bytes(&mut self.stdout, prefix.body_len.into()).is_err() {
                return Err(self.died());
            }
            let message = format!(
                "the result is {} bytes, over the limit of {} bytes",
                prefix.body_len, self.max_result_bytes
            );
            return Ok(WorkerReply {
                task_id,
                outcome: Outcome::Failure(TaskError::system(
                    ErrorKind::TooLarge,
                    "ResultTooLarge",
                    message,
                )),
                stdout: header.stdout,
                stderr: header.stderr,
                exec_start: header.exec_start,
                exec_end: header.exec_end,
            });
        }
        let Ok(body) = read_exact_vec(&mut self.stdout, prefix.body_len as usize) else {
            return Err(self.died());
        };
        WorkerReply::from_header(header, Bytes::from(body))
            .ok_or_else(|| self.protocol_error("a failed result without an error".into()))
    }

    /// The error for a worker whose pipes broke: reaps it and says how it ended.
    fn died(&mut self) -> WorkerError {
        let exit = self.finish(EXIT_GRACE);
        let error = WorkerError::Died {
            exit,
            stderr: self.stderr.text(STDERR_SETTLE),
            killed: self.killer.was_killed(),
        };
        self.unusable = Some(error.to_string());
        error
    }

    fn protocol_error(&mut self, message: String) -> WorkerError {
        tracing::warn!(pid = self.pid(), "worker broke the protocol: {message}");
        self.killer.signal_group();
        self.finish(Duration::ZERO);
        self.unusable = Some(format!("protocol error: {message}"));
        WorkerError::Protocol(message)
    }

    /// Waits up to `grace` for the worker to exit, SIGKILLs its group if it has not,
    /// and reaps it. What the worker's functions started dies with it.
    fn finish(&mut self, grace: Duration) -> WorkerExit {
        lock(&self.input).stdin = None;
        let pid = Pid::from_raw(self.pid() as i32);
        let give_up_waiting = Instant::now() + grace;
        let mut killed_at = None;
        let mut pause = Duration::from_micros(100);
        // WNOWAIT: learn how it ended but leave it a zombie, so its pid (and group) stays
        // ours until the killer has been told it is reaped.
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let exit = loop {
            match waitid(Id::Pid(pid), flags) {
                Ok(WaitStatus::Exited(_, code)) => break WorkerExit::Code(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => break WorkerExit::Signal(signal as i32),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => break WorkerExit::Unknown,
            }
            let now = Instant::now();
            match killed_at {
                None if now >= give_up_waiting => {
                    self.killer.signal_group();
                    killed_at = Some(now);
                }
                Some(at) if now.duration_since(at) > KILL_PATIENCE => {
                    tracing::error!(pid = self.pid(), "worker does not die after SIGKILL");
                    return WorkerExit::Unknown;
                }
                _ => {}
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        };
        self.killer.signal_group();
        self.killer.try_reap(&mut self.child);
        exit
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.killer.is_reaped() {
            self.killer.signal_group();
            self.finish(Duration::ZERO);
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("pid", &self.pid())
            .field("python", &self.python_version)
            .field("functions", &lock(&self.input).known.len())
            .field("unusable", &self.unusable)
            .finish()
    }
}

enum StartFailure {
    /// Its pipes closed: it exited, or is exiting.
    Exited,
    /// It answered, but not with "ready".
    Protocol(String),
}

fn is_unknown_function(reply: &WorkerReply) -> bool {
    matches!(&reply.outcome, Outcome::Failure(error)
        if error.kind == ErrorKind::FunctionDefinition && error.type_name == "UnknownFunction")
}
