//! The task store: one SQLite file, written by one thread with group commits, read
//! through a small pool of read-only connections.
//!
//! Hot paths do not read from here: users, tokens, functions and endpoints are cached in
//! memory ([`crate::registry`]) and a finished task's result reaches its waiters straight
//! from the agent link. Reads serve task views, the results cursor and the re-sending of
//! an endpoint's backlog when its agent connects.

mod reads;
mod schema;
mod segments;
mod writer;

pub(crate) use reads::{PendingTask, RegistrySnapshot, TaskRow};
pub(crate) use writer::WriterThread;

use bytes::Bytes;
use rusqlite::Connection;
use scifaas_protocol::link::TaskProgress;
use scifaas_protocol::time::Micros;
use scifaas_protocol::{ContainerSpec, EndpointId, FunctionId, TaskId, TaskResult};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;
use writer::{Applied, Command, Job, WriteOp};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A uniqueness rule was broken (an endpoint name the owner already uses, ...).
    #[error("{0}")]
    Conflict(String),
    /// The transaction that held this write failed as a whole.
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the store is shut down")]
    Closed,
    #[error("a database read was cancelled")]
    Cancelled,
}

/// A user as stored.
#[derive(Clone, Debug)]
pub(crate) struct UserRow {
    pub name: String,
    pub is_admin: bool,
    pub created_at: Micros,
}

/// A token as stored: only its hash.
#[derive(Clone, Debug)]
pub(crate) struct TokenRow {
    /// Hex SHA-256 of the token.
    pub hash: String,
    pub user: String,
    pub created_at: Micros,
}

/// A function as stored.
#[derive(Clone, Debug)]
pub(crate) struct FunctionRow {
    pub id: FunctionId,
    pub owner: String,
    pub name: String,
    pub source: String,
    pub description: Option<String>,
    pub hash: String,
    /// The container the function runs in (stored as JSON; NULL for none, and in
    /// databases from before containers).
    pub container: Option<ContainerSpec>,
    pub created_at: Micros,
}

/// An endpoint as stored.
#[derive(Clone, Debug)]
pub(crate) struct EndpointRow {
    pub id: EndpointId,
    pub owner: String,
    pub name: String,
    /// Hex SHA-256 of the agent token.
    pub agent_token_hash: String,
    pub created_at: Micros,
}

/// A task to insert, in state `received`.
#[derive(Clone, Debug)]
pub(crate) struct NewTask {
    pub id: TaskId,
    pub owner: Arc<str>,
    pub endpoint_id: EndpointId,
    pub function_id: FunctionId,
    pub payload: Bytes,
    /// When the service received it: `created_at` and the `received` transition.
    pub received_at: Micros,
}

/// Consecutive task rowids, `first..=last` (empty when `first > last`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowRange {
    pub first: i64,
    pub last: i64,
}

impl RowRange {
    pub(crate) const EMPTY: RowRange = RowRange { first: 1, last: 0 };

    /// The ranges of consecutive rowids among `rowids` (in the order given).
    pub(crate) fn runs(rowids: impl IntoIterator<Item = i64>) -> Vec<RowRange> {
        let mut runs: Vec<RowRange> = Vec::new();
        for rowid in rowids {
            match runs.last_mut() {
                Some(run) if run.last + 1 == rowid => run.last = rowid,
                _ => runs.push(RowRange {
                    first: rowid,
                    last: rowid,
                }),
            }
        }
        runs
    }
}

/// What became of one result handed to [`Store::store_results`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResultFate {
    /// Stored now; the task finished as number `done_seq`.
    Stored { done_seq: i64 },
    /// The task had already finished: this is a re-sent result, not stored again.
    AlreadyFinished,
    /// No such task at this endpoint.
    Unknown,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    commands: mpsc::Sender<Command>,
    reads: Arc<ReadPool>,
    task_horizon: Arc<AtomicI64>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and starts its writer thread.
    pub(crate) fn open(data_dir: &Path) -> Result<(Store, WriterThread), StoreError> {
        let path = schema::db_path(data_dir);
        let conn = schema::open_writer(&path)?;
        let task_horizon = Arc::new(AtomicI64::new(0));
        let segments_dir = segments::segments_dir(data_dir);
        let (commands, writer) = writer::spawn(conn, segments_dir.clone(), task_horizon.clone())?;
        let reads = Arc::new(ReadPool {
            path,
            segments_dir,
            idle: Mutex::new(Vec::new()),
        });
        let store = Store {
            commands,
            reads,
            task_horizon,
        };
        Ok((store, writer))
    }

    /// Sends a write that the caller waits for; the returned future resolves once the
    /// transaction holding it is committed. The write is queued before this returns, so
    /// writes keep the order of the calls even if the futures are awaited later.
    fn durable(
        &self,
        op: WriteOp,
    ) -> impl Future<Output = Result<Applied, StoreError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .commands
            .send(Command::Write(Job {
                op,
                reply: Some(reply),
            }))
            .is_ok();
        async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            answer.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Sends a write nobody waits for. The writer may hold it back briefly to commit it
    /// with the next durable write; losing it in a crash loses only a state hint.
    fn deferred(&self, op: WriteOp) {
        if self
            .commands
            .send(Command::Write(Job { op, reply: None }))
            .is_err()
        {
            tracing::debug!("store is shut down; dropped a deferred write");
        }
    }

    pub(crate) async fn create_user(&self, user: UserRow) -> Result<(), StoreError> {
        self.durable(WriteOp::CreateUser(user)).await.map(drop)
    }

    pub(crate) async fn add_token(&self, token: TokenRow) -> Result<(), StoreError> {
        self.durable(WriteOp::AddToken(token)).await.map(drop)
    }

    pub(crate) async fn create_function(&self, function: FunctionRow) -> Result<(), StoreError> {
        self.durable(WriteOp::CreateFunction(Box::new(function)))
            .await
            .map(drop)
    }

    pub(crate) async fn create_endpoint(&self, endpoint: EndpointRow) -> Result<(), StoreError> {
        self.durable(WriteOp::CreateEndpoint(endpoint))
            .await
            .map(drop)
    }

    /// Inserts tasks in state `received`; resolves once they are durable, with the
    /// rowids they were given (in order: one group's rowids are consecutive).
    pub(crate) fn insert_tasks(
        &self,
        tasks: Vec<NewTask>,
    ) -> impl Future<Output = Result<RowRange, StoreError>> + Send + 'static {
        let done = self.durable(WriteOp::InsertTasks(tasks));
        async move {
            match done.await? {
                Applied::Inserted(rows) => Ok(rows),
                _ => Ok(RowRange::EMPTY),
            }
        }
    }

    /// Stamps `waiting-for-endpoint` on the tasks of these rowids still in `received`.
    pub(crate) fn mark_sent(&self, rows: Vec<RowRange>, at: Micros) {
        self.deferred(WriteOp::MarkSent { rows, at });
    }

    /// Moves those of `task_ids` of this endpoint that are not further along to
    /// `waiting-for-nodes` (the agent's journal has them). The agent's stamp of that
    /// transition comes with the result.
    pub(crate) fn mark_accepted(&self, endpoint_id: EndpointId, task_ids: Vec<TaskId>) {
        self.deferred(WriteOp::MarkAccepted {
            endpoint_id,
            task_ids,
        });
    }

    /// Appends transitions the agent reported for tasks in flight.
    pub(crate) fn progress(&self, endpoint_id: EndpointId, updates: Vec<TaskProgress>) {
        self.deferred(WriteOp::Progress {
            endpoint_id,
            updates,
        });
    }

    /// Stores finished tasks of one endpoint; answers, per result and in order, whether
    /// it was stored now or had been before.
    pub(crate) fn store_results(
        &self,
        endpoint_id: EndpointId,
        results: Vec<Arc<TaskResult>>,
        completed_at: Micros,
    ) -> impl Future<Output = Result<Vec<ResultFate>, StoreError>> + Send + 'static {
        let done = self.durable(WriteOp::StoreResults {
            endpoint_id,
            results,
            completed_at,
        });
        async move {
            match done.await? {
                Applied::Results(fates) => Ok(fates),
                _ => Ok(Vec::new()),
            }
        }
    }

    /// Resolves once every write queued before this call is committed: a read that must
    /// see a write already queued (a result the caller was answered with) waits for it.
    pub(crate) fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let done = self.durable(WriteOp::Flush);
        async move { done.await.map(|_| ()) }
    }

    /// Asks the writer thread to commit what it holds and exit.
    pub(crate) fn stop_writer(&self) {
        let _ = self.commands.send(Command::Stop);
    }

    /// Everything the in-memory registry is built from.
    pub(crate) async fn load_registry(&self) -> Result<RegistrySnapshot, StoreError> {
        self.read(reads::load_registry).await
    }

    /// One task, whoever owns it.
    pub(crate) async fn task(&self, id: TaskId) -> Result<Option<TaskRow>, StoreError> {
        self.read(move |conn| reads::task(conn, id)).await
    }

    /// The tasks among `ids` that exist.
    pub(crate) async fn tasks(&self, ids: Vec<TaskId>) -> Result<Vec<TaskRow>, StoreError> {
        self.read(move |conn| reads::tasks(conn, &ids)).await
    }

    /// `owner`'s tasks that finished after `after`, oldest first, at most `max`.
    pub(crate) async fn finished_after(
        &self,
        owner: Arc<str>,
        after: i64,
        max: usize,
    ) -> Result<Vec<TaskRow>, StoreError> {
        self.read(move |conn| reads::finished_after(conn, &owner, after, max))
            .await
    }

    /// The highest `done_seq` given so far (0 when no task has finished).
    pub(crate) async fn last_done_seq(&self) -> Result<i64, StoreError> {
        self.read(reads::last_done_seq).await
    }

    /// The highest rowid of a committed task. Every task a caller has been told is
    /// stored lies at or below it.
    pub(crate) fn task_horizon(&self) -> i64 {
        self.task_horizon.load(Ordering::SeqCst)
    }

    /// One page of an endpoint's unfinished tasks with rowids in `rows` (exclusive start,
    /// inclusive end), in insertion order.
    pub(crate) async fn pending_page(
        &self,
        endpoint_id: EndpointId,
        rows: (i64, i64),
        limit: usize,
    ) -> Result<Vec<PendingTask>, StoreError> {
        let segments_dir = self.reads.segments_dir.clone();
        self.read(move |conn| reads::pending_page(conn, &segments_dir, endpoint_id, rows, limit))
            .await
    }

    /// Runs `f` on a pooled read connection in the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.reads.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let answer = f(&conn);
            pool.give_back(conn);
            answer
        })
        .await
        .map_err(|_| StoreError::Cancelled)?
    }
}

/// Read-only connections, opened on demand and kept for reuse.
struct ReadPool {
    path: PathBuf,
    /// Where payloads too large for a row lie.
    segments_dir: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// How many idle read connections are kept; more may be open during a burst.
const MAX_IDLE_READERS: usize = 4;

impl ReadPool {
    fn take(&self) -> Result<Connection, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => Ok(schema::open_reader(&self.path)?),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

#[cfg(test)]
mod tests;
