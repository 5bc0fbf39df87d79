//! The writer thread: the only code that writes to the database.
//!
//! It takes every write waiting in its channel, applies them in one transaction (each in
//! its own savepoint, so one failing write does not undo the others), commits once — one
//! fsync for the whole group — and then answers each caller. Writes nobody waits for
//! (state hints such as "sent to the agent") are held back up to [`DEFER_WINDOW`] so that
//! they ride along with the next write somebody does wait for.

mod tasks;

use super::segments::Segments;
use super::{
    EndpointRow, FunctionRow, NewTask, ResultFate, RowRange, StoreError, TokenRow, UserRow,
};
use rusqlite::{params, Connection, ErrorCode};
use scifaas_protocol::link::TaskProgress;
use scifaas_protocol::time::Micros;
use scifaas_protocol::{EndpointId, TaskId, TaskResult};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long writes nobody waits for may wait for company before they are committed on
/// their own.
const DEFER_WINDOW: Duration = Duration::from_millis(10);

/// A commit holding only results (and hints) that comes this soon after another such
/// commit waits out the rest of this spacing, taking in what arrives meanwhile (a write a
/// 2xx waits for ends the wait at once). Under a stream of results this makes one commit
/// (its WAL frames, its checkpoint share) serve many batches; a lone result, as in a
/// warm call, follows the commit of its task and is not held.
const RESULT_COMMIT_SPACING: Duration = Duration::from_millis(2);

/// The most writes one transaction takes, so that one huge burst does not hold every
/// caller until all of it is applied.
const MAX_BATCH: usize = 10_000;

#[cfg(test)]
pub(super) use tasks::{LOOKUP, MARK_ACCEPTED, MARK_SENT};

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
        rows: Vec<RowRange>,
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
    /// Nothing: answered once everything queued before it is committed.
    Flush,
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
    Inserted(RowRange),
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

/// Starts the writer thread on `conn`, with large payloads in `segments_dir`.
/// `task_horizon` is kept at the highest rowid of a committed task.
pub(super) fn spawn(
    conn: Connection,
    segments_dir: PathBuf,
    task_horizon: Arc<AtomicI64>,
) -> Result<(mpsc::Sender<Command>, WriterThread), StoreError> {
    let (last_done_seq, last_rowid): (i64, i64) = conn.query_row(
        "SELECT COALESCE(MAX(done_seq), 0), COALESCE(MAX(rowid), 0) FROM tasks",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    task_horizon.store(last_rowid, Ordering::SeqCst);
    let live = conn
        .prepare(
            "SELECT segment, COUNT(*) FROM task_payloads WHERE segment IS NOT NULL GROUP BY segment",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<HashMap<i64, i64>>>()?;
    let segments = Segments::open(segments_dir, live)
        .map_err(|e| StoreError::Commit(format!("cannot open the payload segments: {e}")))?;
    let (commands, queue) = mpsc::channel();
    let writer = Writer {
        conn,
        next_done_seq: last_done_seq + 1,
        inserted_up_to: last_rowid,
        task_horizon,
        // schema.rs opens the connection with synchronous=FULL.
        synced: true,
        segments,
        last_unpromised_commit: None,
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
    /// Where payloads too large for a row go.
    segments: Segments,
    /// When the last commit ended, if it held only results and hints.
    last_unpromised_commit: Option<Instant>,
}

/// Drops from `batch` the acceptances of tasks whose results it also stores: a result
/// sets the task's final state and carries the agent's own stamp of the acceptance, so
/// moving the task to `waiting-for-nodes` first would be a write for nothing. With many
/// short tasks, most acceptances share a commit with their results.
fn skip_superseded_acceptances(batch: &mut [Job]) {
    if !batch
        .iter()
        .any(|job| matches!(job.op, WriteOp::MarkAccepted { .. }))
    {
        return;
    }
    let finishing: HashSet<(EndpointId, TaskId)> = batch
        .iter()
        .filter_map(|job| match &job.op {
            WriteOp::StoreResults {
                endpoint_id,
                results,
                ..
            } => Some(results.iter().map(move |r| (*endpoint_id, r.task_id))),
            _ => None,
        })
        .flatten()
        .collect();
    if finishing.is_empty() {
        return;
    }
    for job in batch {
        if let WriteOp::MarkAccepted {
            endpoint_id,
            task_ids,
        } = &mut job.op
        {
            task_ids.retain(|id| !finishing.contains(&(*endpoint_id, *id)));
        }
    }
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
            } else if !stopping && !batch.iter().any(|job| job.op.is_promised_durable()) {
                if let Some(last) = self.last_unpromised_commit {
                    stopping = gather_until(&queue, &mut batch, last + RESULT_COMMIT_SPACING);
                }
            }
            let promised = batch.iter().any(|job| job.op.is_promised_durable());
            self.commit(batch);
            self.last_unpromised_commit = (!promised).then(Instant::now);
        }
        tracing::debug!("store writer stopped");
    }

    fn commit(&mut self, mut batch: Vec<Job>) {
        let seq_before = self.next_done_seq;
        // Only what a 2xx promises is on disk needs the fsync: new tasks and the
        // registry. A result is also held by the agent until we acknowledge it, and a
        // task whose result a power loss took from the WAL's tail is not terminal, so
        // the service sends it again when the agent reconnects: for those, surviving
        // a crash of this process (which WAL without fsync does) is enough.
        let needs_sync = batch.iter().any(|job| job.op.is_promised_durable());
        // Cached statements: these run at every commit, and parsing them each time costs
        // as much as a short commit's own work.
        let synchronous = if needs_sync {
            "PRAGMA synchronous = FULL"
        } else {
            "PRAGMA synchronous = NORMAL"
        };
        if needs_sync != self.synced {
            if let Err(e) = self.run_cached(synchronous) {
                tracing::warn!("cannot run {synchronous}: {e}");
            } else {
                self.synced = needs_sync;
            }
        }
        if let Err(e) = self.run_cached("BEGIN IMMEDIATE") {
            let message = e.to_string();
            for job in batch {
                answer(job.reply, Err(StoreError::Commit(message.clone())));
            }
            return;
        }
        skip_superseded_acceptances(&mut batch);
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch {
            let applied = self.apply_in_savepoint(job.op);
            answers.push((job.reply, applied));
        }
        // Payload bytes in segments reach the disk before the rows that refer to them.
        let committed = self
            .segments
            .sync()
            .map_err(|e| format!("cannot sync a payload segment: {e}"))
            .and_then(|()| self.run_cached("COMMIT").map_err(|e| e.to_string()));
        if let Err(message) = committed {
            tracing::error!("store commit failed: {message}");
            let _ = self.conn.execute_batch("ROLLBACK");
            self.segments.rolled_back();
            self.next_done_seq = seq_before;
            for (reply, _) in answers {
                answer(reply, Err(StoreError::Commit(message.clone())));
            }
            return;
        }
        self.segments.committed();
        // Published before anyone hears of the commit, so whoever learns that a task is
        // stored also sees a horizon that covers it.
        self.task_horizon
            .fetch_max(self.inserted_up_to, Ordering::SeqCst);
        for (reply, applied) in answers {
            answer(reply, applied);
        }
    }

    /// Runs a statement without parameters or rows from the statement cache.
    fn run_cached(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    fn apply_in_savepoint(&mut self, op: WriteOp) -> Result<Applied, StoreError> {
        let seq_before = self.next_done_seq;
        self.conn.prepare_cached("SAVEPOINT op")?.execute([])?;
        let applied = self.apply(op).and_then(|applied| {
            self.conn.prepare_cached("RELEASE op")?.execute([])?;
            Ok(applied)
        });
        match applied {
            Ok(applied) => {
                self.segments.write_kept();
                Ok(applied)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK TO op; RELEASE op");
                self.segments.write_undone();
                self.next_done_seq = seq_before;
                Err(e)
            }
        }
    }

    fn apply(&mut self, op: WriteOp) -> Result<Applied, StoreError> {
        match op {
            WriteOp::Flush => {}
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
            WriteOp::InsertTasks(tasks) => {
                return Ok(Applied::Inserted(self.insert_tasks(&tasks)?))
            }
            WriteOp::MarkSent { rows, at } => self.mark_sent(&rows, at)?,
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

/// Takes writes into `batch` until `deadline`, or until one that a 2xx waits for arrives
/// (then everything queued with it); true when told to stop.
fn gather_until(queue: &Receiver<Command>, batch: &mut Vec<Job>, deadline: Instant) -> bool {
    while batch.len() < MAX_BATCH {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return drain(queue, batch);
        }
        match queue.recv_timeout(left) {
            Ok(Command::Write(job)) => {
                let promised = job.op.is_promised_durable();
                batch.push(job);
                if promised {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn result(task_id: TaskId) -> Arc<TaskResult> {
        Arc::new(TaskResult::success(task_id, Bytes::from_static(b"1")))
    }

    fn job(op: WriteOp) -> Job {
        Job { op, reply: None }
    }

    #[test]
    fn an_acceptance_committed_with_its_result_is_skipped_and_only_that_one() {
        let (endpoint, other) = (EndpointId::new(), EndpointId::new());
        let (done, running, elsewhere) = (TaskId::new(), TaskId::new(), TaskId::new());
        let mut batch = vec![
            job(WriteOp::MarkAccepted {
                endpoint_id: endpoint,
                task_ids: vec![done, running, elsewhere],
            }),
            job(WriteOp::StoreResults {
                endpoint_id: endpoint,
                results: vec![result(done)],
                completed_at: 0,
            }),
            // A result for the same id from another endpoint is not this task's.
            job(WriteOp::StoreResults {
                endpoint_id: other,
                results: vec![result(elsewhere)],
                completed_at: 0,
            }),
        ];
        skip_superseded_acceptances(&mut batch);
        let WriteOp::MarkAccepted { task_ids, .. } = &batch[0].op else {
            unreachable!()
        };
        assert_eq!(task_ids, &vec![running, elsewhere]);
    }
}
