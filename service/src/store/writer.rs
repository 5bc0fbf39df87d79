//! The writer thread: the only code that writes to the database.
//!
//! It takes every write waiting in its channel, applies them in one transaction (each in
//! its own savepoint, so one failing write does not undo the others), commits once — one
//! fsync for the whole group — and then answers each caller. Writes nobody waits for
//! (state hints such as "sent to the agent") are held back up to [`DEFER_WINDOW`] so that
//! they ride along with the next write somebody does wait for.

use super::{EndpointRow, FunctionRow, NewTask, ResultFate, StoreError, TokenRow, UserRow};
use crate::views::{ErrorView, TimingView};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use scifaas_protocol::link::TaskProgress;
use scifaas_protocol::time::Micros;
use scifaas_protocol::{
    Actor, EndpointId, ErrorKind, Outcome, TaskId, TaskResult, TaskState, Transition,
};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long writes nobody waits for may wait for company before they are committed on
/// their own.
const DEFER_WINDOW: Duration = Duration::from_millis(10);

/// The most writes one transaction takes, so that one huge burst does not hold every
/// caller until all of it is applied.
const MAX_BATCH: usize = 10_000;

/// What the writer thread is asked to do.
pub(crate) enum Command {
    Write(Job),
    /// Commit what is queued before this and exit.
    Stop,
}

/// One write and, for a durable write, who to tell once it is committed.
pub(crate) struct Job {
    pub op: WriteOp,
    pub reply: Option<oneshot::Sender<Result<Applied, StoreError>>>,
}

/// The writes the store knows.
pub(crate) enum WriteOp {
    CreateUser(UserRow),
    AddToken(TokenRow),
    // Boxed: functions are registered rarely, and the row would make every write larger.
    CreateFunction(Box<FunctionRow>),
    CreateEndpoint(EndpointRow),
    InsertTasks(Vec<NewTask>),
    MarkSent {
        task_ids: Vec<TaskId>,
        at: Micros,
    },
    MarkAccepted {
        endpoint_id: EndpointId,
        task_ids: Vec<TaskId>,
    },
    Progress {
        endpoint_id: EndpointId,
        updates: Vec<TaskProgress>,
    },
    StoreResults {
        endpoint_id: EndpointId,
        results: Vec<Arc<TaskResult>>,
        completed_at: Micros,
    },
}

impl WriteOp {
    /// Whether the caller is promised the write is on disk once it is answered.
    fn is_promised_durable(&self) -> bool {
        matches!(
            self,
            WriteOp::CreateUser(_)
                | WriteOp::AddToken(_)
                | WriteOp::CreateFunction(_)
                | WriteOp::CreateEndpoint(_)
                | WriteOp::InsertTasks(_)
        )
    }
}

/// What a committed write reports back.
pub(crate) enum Applied {
    Nothing,
    Results(Vec<ResultFate>),
}

/// The running writer thread; joined at shutdown.
pub(crate) struct WriterThread {
    handle: JoinHandle<()>,
}

impl WriterThread {
    /// Waits until the thread has committed its last batch and closed the database.
    pub(crate) fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("the store writer thread panicked");
        }
    }
}

/// Starts the writer thread on `conn`. `task_horizon` is kept at the highest rowid of a
/// committed task.
pub(super) fn spawn(
    conn: Connection,
    task_horizon: Arc<AtomicI64>,
) -> Result<(mpsc::Sender<Command>, WriterThread), StoreError> {
    let (last_done_seq, last_rowid): (i64, i64) = conn.query_row(
        "SELECT COALESCE(MAX(done_seq), 0), COALESCE(MAX(rowid), 0) FROM tasks",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    task_horizon.store(last_rowid, Ordering::SeqCst);
    let (commands, queue) = mpsc::channel();
    let writer = Writer {
        conn,
        next_done_seq: last_done_seq + 1,
        inserted_up_to: last_rowid,
        task_horizon,
        // schema.rs opens the connection with synchronous=FULL.
        synced: true,
    };
    let handle = std::thread::Builder::new()
        .name("scifaas-store-writer".into())
        .spawn(move || writer.run(queue))
        .map_err(|e| StoreError::Commit(format!("cannot start the writer thread: {e}")))?;
    Ok((commands, WriterThread { handle }))
}

struct Writer {
    conn: Connection,
    /// The `done_seq` the next finished task gets.
    next_done_seq: i64,
    /// The highest rowid of a task inserted, committed or not yet.
    inserted_up_to: i64,
    /// The highest rowid of a committed task, published for the agent link.
    task_horizon: Arc<AtomicI64>,
    /// Whether the connection is at synchronous=FULL (else NORMAL).
    synced: bool,
}

impl Writer {
    fn run(mut self, queue: Receiver<Command>) {
        let mut stopping = false;
        while !stopping {
            let first = match queue.recv() {
                Ok(Command::Write(job)) => job,
                Ok(Command::Stop) | Err(_) => break,
            };
            let mut batch = vec![first];
            stopping = drain(&queue, &mut batch);
            if !stopping && batch.iter().all(|job| job.reply.is_none()) {
                stopping = wait_for_company(&queue, &mut batch);
            }
            self.commit(batch);
        }
        tracing::debug!("store writer stopped");
    }

    fn commit(&mut self, batch: Vec<Job>) {
        let seq_before = self.next_done_seq;
        // Only what a 2xx promises is on disk needs the fsync: new tasks and the
        // registry. A result is also held by the agent until we acknowledge it, and a
        // task whose result a power loss took from the WAL's tail is not terminal, so
        // the service sends it again when the agent reconnects: for those, surviving
        // a crash of this process (which WAL without fsync does) is enough.
        let needs_sync = batch.iter().any(|job| job.op.is_promised_durable());
        let synchronous = if needs_sync { "FULL" } else { "NORMAL" };
        if needs_sync != self.synced {
            if let Err(e) = self.conn.pragma_update(None, "synchronous", synchronous) {
                tracing::warn!("cannot set synchronous={synchronous}: {e}");
            } else {
                self.synced = needs_sync;
            }
        }
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let message = e.to_string();
            for job in batch {
                answer(job.reply, Err(StoreError::Commit(message.clone())));
            }
            return;
        }
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch {
            let applied = self.apply_in_savepoint(job.op);
            answers.push((job.reply, applied));
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            tracing::error!("store commit failed: {e}");
            let _ = self.conn.execute_batch("ROLLBACK");
            self.next_done_seq = seq_before;
            let message = e.to_string();
            for (reply, _) in answers {
                answer(reply, Err(StoreError::Commit(message.clone())));
            }
            return;
        }
        // Published before anyone hears of the commit, so whoever learns that a task is
        // stored also sees a horizon that covers it.
        self.task_horizon
            .fetch_max(self.inserted_up_to, Ordering::SeqCst);
        for (reply, applied) in answers {
            answer(reply, applied);
        }
    }

    fn apply_in_savepoint(&mut self, op: WriteOp) -> Result<Applied, StoreError> {
        let seq_before = self.next_done_seq;
        self.conn.prepare_cached("SAVEPOINT op")?.execute([])?;
        match self.apply(op) {
            Ok(applied) => {
                self.conn.prepare_cached("RELEASE op")?.execute([])?;
                Ok(applied)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK TO op; RELEASE op");
                self.next_done_seq = seq_before;
                Err(e)
            }
        }
    }

    fn apply(&mut self, op: WriteOp) -> Result<Applied, StoreError> {
        match op {
            WriteOp::CreateUser(user) => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO users (name, is_admin, created_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![user.name, user.is_admin, user.created_at])
                    .map_err(|e| conflict(e, || format!("user {} exists", user.name)))?;
            }
            WriteOp::AddToken(token) => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO tokens (hash, user, created_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![token.hash, token.user, token.created_at])
                    .map_err(|e| conflict(e, || "token exists".to_owned()))?;
            }
            WriteOp::CreateFunction(f) => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO functions (id, owner, name, source, description, hash, created_at, container)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?
                    .execute(params![
                        f.id.to_string(),
                        f.owner,
                        f.name,
                        f.source,
                        f.description,
                        f.hash,
                        f.created_at,
                        f.container
                            .as_ref()
                            .map(|c| serde_json::to_string(c).expect("a container spec encodes"))
                    ])?;
            }
            WriteOp::CreateEndpoint(ep) => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO endpoints (id, owner, name, agent_token_hash, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        ep.id.to_string(),
                        ep.owner,
                        ep.name,
                        ep.agent_token_hash,
                        ep.created_at
                    ])
                    .map_err(|e| {
                        conflict(e, || {
                            format!("you already have an endpoint named {:?}", ep.name)
                        })
                    })?;
            }
            WriteOp::InsertTasks(tasks) => self.insert_tasks(&tasks)?,
            WriteOp::MarkSent { task_ids, at } => self.mark_sent(&task_ids, at)?,
            WriteOp::MarkAccepted {
                endpoint_id,
                task_ids,
            } => self.mark_accepted(endpoint_id, &task_ids)?,
            WriteOp::Progress {
                endpoint_id,
                updates,
            } => {
                for update in updates {
                    self.advance(endpoint_id, update.task_id, update.transition)?;
                }
            }
            WriteOp::StoreResults {
                endpoint_id,
                results,
                completed_at,
            } => {
                let mut fates = Vec::with_capacity(results.len());
                for result in &results {
                    fates.push(self.store_result(endpoint_id, result, completed_at)?);
                }
                return Ok(Applied::Results(fates));
            }
        }
        Ok(Applied::Nothing)
    }

    fn insert_tasks(&mut self, tasks: &[NewTask]) -> Result<(), StoreError> {
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO tasks (id, owner, endpoint_id, function_id, state, payload, transitions, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for task in tasks {
            let received = [Transition {
                state: TaskState::Received,
                at: task.received_at,
                actor: Actor::Service,
            }];
            insert.execute(params![
                task.id.to_string(),
                &*task.owner,
                task.endpoint_id.to_string(),
                task.function_id.to_string(),
                TaskState::Received.as_str(),
                &task.payload[..],
                to_json(&received),
                task.received_at,
            ])?;
            self.inserted_up_to = self.inserted_up_to.max(self.conn.last_insert_rowid());
        }
        Ok(())
    }

    fn mark_sent(&mut self, task_ids: &[TaskId], at: Micros) -> Result<(), StoreError> {
        // Only a task still in `received` moves: a fast agent may already have moved it
        // further by the time this deferred write is applied.
        let stamp = to_json(&Transition {
            state: TaskState::WaitingForEndpoint,
            at,
            actor: Actor::Service,
        });
        let mut update = self.conn.prepare_cached(
            "UPDATE tasks SET state = ?2, transitions = json_insert(transitions, '$[#]', json(?3))
             WHERE id = ?1 AND state = ?4",
        )?;
        for id in task_ids {
            update.execute(params![
                id.to_string(),
                TaskState::WaitingForEndpoint.as_str(),
                stamp,
                TaskState::Received.as_str(),
            ])?;
        }
        Ok(())
    }

    /// Moves tasks the agent has journaled to `waiting-for-nodes`, unless they are
    /// further along. Only the state moves: the agent's own stamp of this transition
    /// (its clock, its journal time) arrives with the task's result.
    fn mark_accepted(
        &mut self,
        endpoint_id: EndpointId,
        task_ids: &[TaskId],
    ) -> Result<(), StoreError> {
        let mut update = self.conn.prepare_cached(
            "UPDATE tasks SET state = ?3 WHERE id = ?1 AND endpoint_id = ?2 AND state IN (?4, ?5)",
        )?;
        for id in task_ids {
            update.execute(params![
                id.to_string(),
                endpoint_id.to_string(),
                TaskState::WaitingForNodes.as_str(),
                TaskState::Received.as_str(),
                TaskState::WaitingForEndpoint.as_str(),
            ])?;
        }
        Ok(())
    }

    /// Records a transition of a task in flight, unless the very same stamp (state, time,
    /// actor) is already there: the agent re-sends what its journal holds after a
    /// reconnect, while a retried task may legitimately pass through a state twice. The
    /// task's state moves forward only, never back and never to a terminal state
    /// (results do that).
    fn advance(
        &mut self,
        endpoint_id: EndpointId,
        task_id: TaskId,
        stamp: Transition,
    ) -> Result<(), StoreError> {
        let Some((state, mut transitions)) = self.lookup(endpoint_id, task_id)? else {
            return Ok(());
        };
        if state.is_terminal() || stamp.state.is_terminal() {
            return Ok(());
        }
        if transitions.contains(&stamp) {
            return Ok(());
        }
        transitions.push(stamp);
        let new_state = state.max(stamp.state);
        self.conn
            .prepare_cached("UPDATE tasks SET state = ?2, transitions = ?3 WHERE id = ?1")?
            .execute(params![
                task_id.to_string(),
                new_state.as_str(),
                to_json(&transitions)
            ])?;
        Ok(())
    }

    /// State and transitions of a task of this endpoint.
    fn lookup(
        &mut self,
        endpoint_id: EndpointId,
        task_id: TaskId,
    ) -> Result<Option<(TaskState, Vec<Transition>)>, StoreError> {
        let row: Option<(String, String)> = self
            .conn
            .prepare_cached(
                "SELECT state, transitions FROM tasks WHERE id = ?1 AND endpoint_id = ?2",
            )?
            .query_row(
                params![task_id.to_string(), endpoint_id.to_string()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((state, transitions)) = row else {
            return Ok(None);
        };
        let Some(state) = TaskState::parse(&state) else {
            tracing::warn!(%task_id, state, "task has an unknown state in the store");
            return Ok(None);
        };
        let transitions = serde_json::from_str(&transitions).unwrap_or_default();
        Ok(Some((state, transitions)))
    }

    fn store_result(
        &mut self,
        endpoint_id: EndpointId,
        result: &TaskResult,
        completed_at: Micros,
    ) -> Result<ResultFate, StoreError> {
        let task_id = result.task_id;
        let Some((state, mut transitions)) = self.lookup(endpoint_id, task_id)? else {
            return Ok(ResultFate::Unknown);
        };
        if state.is_terminal() {
            return Ok(ResultFate::AlreadyFinished);
        }
        for stamp in &result.transitions {
            if !transitions.contains(stamp) {
                transitions.push(*stamp);
            }
        }
        let final_state = match &result.outcome {
            Outcome::Success(_) => TaskState::Success,
            Outcome::Failure(e) if e.kind == ErrorKind::Cancelled => TaskState::Cancelled,
            Outcome::Failure(_) => TaskState::Failed,
        };
        if !transitions.iter().any(|t| t.state.is_terminal()) {
            transitions.push(Transition {
                state: final_state,
                at: completed_at,
                actor: Actor::Service,
            });
        }
        let (value, error) = match &result.outcome {
            Outcome::Success(bytes) => (Some(&bytes[..]), None),
            Outcome::Failure(e) => (None, Some(to_json(&ErrorView::from(e)))),
        };
        let timing = TimingView::new(&result.timing, completed_at);
        let done_seq = self.next_done_seq;
        self.conn
            .prepare_cached(
                "UPDATE tasks SET state = ?2, result = ?3, error = ?4, stdout = ?5, stderr = ?6,
                    transitions = ?7, timing = ?8, completed_at = ?9, done_seq = ?10
                 WHERE id = ?1",
            )?
            .execute(params![
                task_id.to_string(),
                final_state.as_str(),
                value,
                error,
                result.stdout,
                result.stderr,
                to_json(&transitions),
                to_json(&timing),
                completed_at,
                done_seq,
            ])?;
        self.next_done_seq += 1;
        Ok(ResultFate::Stored { done_seq })
    }
}

/// Moves every write already queued into `batch`; true when a stop was among them.
fn drain(queue: &Receiver<Command>, batch: &mut Vec<Job>) -> bool {
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(Command::Write(job)) => batch.push(job),
            Ok(Command::Stop) => return true,
            Err(mpsc::TryRecvError::Empty) => return false,
            Err(mpsc::TryRecvError::Disconnected) => return true,
        }
    }
    false
}

/// Holds a batch of deferred writes until a durable write arrives (it and whatever came
/// with it join the batch) or [`DEFER_WINDOW`] passes; true when told to stop.
fn wait_for_company(queue: &Receiver<Command>, batch: &mut Vec<Job>) -> bool {
    let deadline = Instant::now() + DEFER_WINDOW;
    while batch.len() < MAX_BATCH {
        match queue.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Command::Write(job)) => {
                let durable = job.reply.is_some();
                batch.push(job);
                if durable {
                    return drain(queue, batch);
                }
            }
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return true,
            Err(RecvTimeoutError::Timeout) => return false,
        }
    }
    false
}

fn answer(
    reply: Option<oneshot::Sender<Result<Applied, StoreError>>>,
    applied: Result<Applied, StoreError>,
) {
    match reply {
        // The caller may have gone (a client hung up); the write stands regardless.
        Some(reply) => drop(reply.send(applied)),
        None => {
            if let Err(e) = applied {
                tracing::warn!("deferred store write failed: {e}");
            }
        }
    }
}

/// Maps a uniqueness violation to [`StoreError::Conflict`].
fn conflict(e: rusqlite::Error, message: impl FnOnce() -> String) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.code == ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(message())
        }
        _ => StoreError::Sqlite(e),
    }
}

/// Serializes one of our own types (never user data) to JSON text.
fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    // Our types have string keys and plain values: serialization cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}
