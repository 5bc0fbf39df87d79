//! The queries behind task views, the results cursor, an agent's backlog and the
//! registry loaded at start.

use super::{segments, EndpointRow, FunctionRow, StoreError, TokenRow, UserRow};
use bytes::Bytes;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use scifaas_protocol::time::Micros;
use scifaas_protocol::{EndpointId, FunctionId, TaskId, TaskState};
use std::path::Path;

/// Every user, token, function and endpoint, to fill the in-memory registry at start.
#[derive(Debug, Default)]
pub(crate) struct RegistrySnapshot {
    pub users: Vec<UserRow>,
    pub tokens: Vec<TokenRow>,
    pub functions: Vec<FunctionRow>,
    pub endpoints: Vec<EndpointRow>,
}

/// A task as stored, for its view. JSON columns are kept as the text the writer wrote.
#[derive(Clone, Debug)]
pub(crate) struct TaskRow {
    pub id: String,
    pub owner: String,
    pub endpoint_id: String,
    pub function_id: String,
    pub state: String,
    pub result: Option<Vec<u8>>,
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub transitions: String,
    pub timing: Option<String>,
    pub created_at: Micros,
    pub completed_at: Option<Micros>,
    pub done_seq: Option<i64>,
}

/// A task to (re-)send to its endpoint's agent.
#[derive(Clone, Debug)]
pub(crate) struct PendingTask {
    pub rowid: i64,
    pub id: TaskId,
    pub function_id: FunctionId,
    /// `None` for a state this service does not know (a newer one's).
    pub state: Option<TaskState>,
    pub payload: Bytes,
}

/// The columns of a [`TaskRow`], in its order.
macro_rules! task_columns {
    () => {
        "id, owner, endpoint_id, function_id, state, result, error, stdout, stderr, \
         transitions, timing, created_at, completed_at, done_seq"
    };
}
const TASK_COLUMNS: &str = task_columns!();

// The statements run at every poll are written so that SQLite does not compile them again
// at every run: built with STAT4 (as the bundled SQLite is), it makes a plan depend on a
// value bound against an indexed column, or as the LIMIT, unless the column is given its
// collation explicitly (`COLLATE BINARY`, what it uses anyway) and the limit is an
// expression (`?3 + 0`). The store's tests check them.

/// An owner's tasks finished after a `done_seq`, oldest first (the results cursor).
pub(super) const FINISHED_AFTER: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE owner = ?1 COLLATE BINARY AND done_seq > ?2 ORDER BY done_seq LIMIT ?3 + 0"
);

/// A page of an endpoint's unfinished tasks in rowid order, with their payloads.
pub(super) const PENDING_PAGE: &str =
    "SELECT t.rowid, t.id, t.function_id, t.state, COALESCE(t.small_payload, p.payload),
         p.segment, p.offset, p.length
     FROM tasks t LEFT JOIN task_payloads p ON p.task_rowid = t.rowid
     WHERE t.endpoint_id = ?1 COLLATE BINARY AND t.done_seq IS NULL
         AND t.rowid > ?2 AND t.rowid <= ?3
     ORDER BY t.rowid LIMIT ?4 + 0";

/// SQLite's default limit on `?` parameters is far above this; it keeps statements short.
const IDS_PER_QUERY: usize = 500;

fn task_row(row: &Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        id: row.get(0)?,
        owner: row.get(1)?,
        endpoint_id: row.get(2)?,
        function_id: row.get(3)?,
        state: row.get(4)?,
        result: row.get(5)?,
        error: row.get(6)?,
        stdout: row.get(7)?,
        stderr: row.get(8)?,
        transitions: row.get(9)?,
        timing: row.get(10)?,
        created_at: row.get(11)?,
        completed_at: row.get(12)?,
        done_seq: row.get(13)?,
    })
}

pub(super) fn task(conn: &Connection, id: TaskId) -> Result<Option<TaskRow>, StoreError> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![id.to_string()], task_row)
        .optional()?)
}

pub(super) fn tasks(conn: &Connection, ids: &[TaskId]) -> Result<Vec<TaskRow>, StoreError> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let marks = vec!["?"; chunk.len()].join(",");
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id IN ({marks})");
        let mut statement = conn.prepare(&sql)?;
        let found = statement.query_map(
            params_from_iter(chunk.iter().map(|id| id.to_string())),
            task_row,
        )?;
        for row in found {
            rows.push(row?);
        }
    }
    Ok(rows)
}

pub(super) fn finished_after(
    conn: &Connection,
    owner: &str,
    after: i64,
    max: usize,
) -> Result<Vec<TaskRow>, StoreError> {
    let mut statement = conn.prepare_cached(FINISHED_AFTER)?;
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let rows = statement
        .query_map(params![owner, after, limit], task_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub(super) fn last_done_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(done_seq), 0) FROM tasks", [], |row| {
            row.get(0)
        })?,
    )
}

pub(super) fn pending_page(
    conn: &Connection,
    segments_dir: &Path,
    endpoint_id: EndpointId,
    (after_rowid, up_to_rowid): (i64, i64),
    limit: usize,
) -> Result<Vec<PendingTask>, StoreError> {
    // The partial index of unfinished tasks yields an endpoint's rows already in rowid
    // order, so a page costs its own size, not a sort of the whole backlog.
    let mut statement = conn.prepare_cached(PENDING_PAGE)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(
        params![endpoint_id.to_string(), after_rowid, up_to_rowid, limit],
        |row| {
            // In a row, or in a segment (NULLs: a damaged row, skipped below).
            let place = match row.get::<_, Option<Vec<u8>>>(4)? {
                Some(bytes) => Ok(bytes),
                None => Err((
                    row.get::<_, Option<i64>>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                    row.get::<_, Option<i64>>(7)?,
                )),
            };
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                place,
            ))
        },
    )?;
    let mut page = Vec::new();
    for row in rows {
        let (rowid, id, function_id, state, place) = row?;
        let payload = match place {
            Ok(bytes) => bytes,
            Err((Some(segment), Some(offset), Some(length))) => {
                match segments::read(segments_dir, segment, offset, length) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        // The task finished since the page was read (its segment may be
                        // gone), or the segment is damaged: either way not sent.
                        tracing::warn!(id, segment, "cannot read a task's payload: {e}");
                        continue;
                    }
                }
            }
            Err(_) => {
                tracing::warn!(id, "a task's row has no payload; not sent");
                continue;
            }
        };
        match (id.parse(), function_id.parse()) {
            (Ok(id), Ok(function_id)) => page.push(PendingTask {
                rowid,
                id,
                function_id,
                state: TaskState::parse(&state),
                payload: Bytes::from(payload),
            }),
            _ => tracing::warn!(id, function_id, "skipping a task with a malformed id"),
        }
    }
    Ok(page)
}

pub(super) fn load_registry(conn: &Connection) -> Result<RegistrySnapshot, StoreError> {
    let mut snapshot = RegistrySnapshot::default();
    let mut users = conn.prepare("SELECT name, is_admin, created_at FROM users")?;
    for user in users.query_map([], |row| {
        Ok(UserRow {
            name: row.get(0)?,
            is_admin: row.get(1)?,
            created_at: row.get(2)?,
        })
    })? {
        snapshot.users.push(user?);
    }
    let mut tokens = conn.prepare("SELECT hash, user, created_at FROM tokens")?;
    for token in tokens.query_map([], |row| {
        Ok(TokenRow {
            hash: row.get(0)?,
            user: row.get(1)?,
            created_at: row.get(2)?,
        })
    })? {
        snapshot.tokens.push(token?);
    }
    let mut functions = conn.prepare(
        "SELECT id, owner, name, source, description, hash, created_at, container
         FROM functions ORDER BY created_at",
    )?;
    let rows = functions.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, Option<String>>(7)?,
            FunctionRow {
                id: FunctionId::default(),
                owner: row.get(1)?,
                name: row.get(2)?,
                source: row.get(3)?,
                description: row.get(4)?,
                hash: row.get(5)?,
                container: None,
                created_at: row.get(6)?,
            },
        ))
    })?;
    for row in rows {
        let (id, container, mut function) = row?;
        // A function whose container cannot be read is left out rather than run
        // outside the container it asked for.
        match container.as_deref().map(serde_json::from_str).transpose() {
            Ok(container) => function.container = container,
            Err(e) => {
                tracing::warn!(id, "skipping a function whose container is malformed: {e}");
                continue;
            }
        }
        match id.parse() {
            Ok(id) => {
                function.id = id;
                snapshot.functions.push(function);
            }
            Err(_) => tracing::warn!(id, "skipping a function with a malformed id"),
        }
    }
    let mut endpoints =
        conn.prepare("SELECT id, owner, name, agent_token_hash, created_at FROM endpoints")?;
    let rows = endpoints.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            EndpointRow {
                id: EndpointId::default(),
                owner: row.get(1)?,
                name: row.get(2)?,
                agent_token_hash: row.get(3)?,
                created_at: row.get(4)?,
            },
        ))
    })?;
    for row in rows {
        let (id, mut endpoint) = row?;
        match id.parse() {
            Ok(id) => {
                endpoint.id = id;
                snapshot.endpoints.push(endpoint);
            }
            Err(_) => tracing::warn!(id, "skipping an endpoint with a malformed id"),
        }
    }
    Ok(snapshot)
}
