//! The SQLite file: where it lives, how a connection to it is opened, and its tables.

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The database file inside the service's data directory.
pub(crate) const DB_FILE: &str = "scifaas.db";

/// How long a connection waits for another's lock before failing. Only the writer thread
/// writes, so this covers checkpoints and a second service started on the same directory
/// by mistake.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer's page cache, in KiB.
const WRITER_CACHE_KIB: i64 = 8 << 10;

/// WAL pages after which a commit checkpoints the WAL into the database (SQLite's
/// default is 1,000). Every call rewrites the same few pages (the ends of the tasks table
/// and its indexes), and a checkpoint copies each page once however often it changed,
/// so rarer checkpoints copy and sync far less in all. With the default, a warm call
/// paid for a checkpoint every ~75 calls (~13 WAL pages each, from `strace`), on a
/// 2-core machine in the same moment as its worker: p99 lower in 15 of 20 alternating
/// latency runs with 20,000 (e.g. 2.03 -> 1.26 ms, 1.38 -> 1.04 ms at a p50 of ~0.75
/// ms). The WAL then grows to ~80 MB on disk.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 20_000;

/// The path of the database inside `data_dir`.
pub(crate) fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

/// Opens the connection the writer thread owns, creating the file and its tables.
pub(crate) fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL lets readers run while the writer commits; FULL makes every commit durable
    // (an fsync of the WAL) before a caller is answered.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Task ids are time-ordered (ids.rs), so inserts append to the id index and its
    // working set is its last pages; 8 MiB holds them with room for a deep queue (a
    // million queued tasks go in at ~100,000/s with it; 64 MiB made no difference).
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    // Every statement the writer runs stays compiled (rusqlite keeps 16 by default,
    // fewer than the writer's own).
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(SCHEMA)?;
    migrate(&conn)?;
    conn.execute_batch(INDEXES)?;
    Ok(conn)
}

/// Brings a database made by an older service up to [`SCHEMA`]: columns added since are
/// added, with NULL in the rows already there, and payloads move out of the tasks table.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_column = |table: &str, column: &str| -> rusqlite::Result<bool> {
        conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
            .exists([table, column])
    };
    if !has_column("functions", "container")? {
        conn.execute_batch("ALTER TABLE functions ADD COLUMN container TEXT")?;
    }
    if !has_column("tasks", "small_payload")? {
        conn.execute_batch("ALTER TABLE tasks ADD COLUMN small_payload BLOB")?;
    }
    if has_column("tasks", "payload")? {
        // Before payloads had their own table: move those of unfinished tasks (the
        // others are never read again), drop the column and the indexes replaced by
        // partial ones. One transaction, so a crash leaves the old layout whole.
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             INSERT OR IGNORE INTO task_payloads (task_rowid, payload)
                 SELECT rowid, payload FROM tasks WHERE done_seq IS NULL;
             DROP INDEX IF EXISTS tasks_by_endpoint_state;
             DROP INDEX IF EXISTS tasks_by_owner_done;
             ALTER TABLE tasks DROP COLUMN payload;
             COMMIT;",
        )?;
    }
    Ok(())
}

/// Opens a read-only connection; the file must already exist (the writer creates it).
pub(crate) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// The tables. Ids are UUIDs in their text form and users are named, so that the file
/// can be inspected with the `sqlite3` shell. Times are microseconds since the epoch.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS users (
    name        TEXT PRIMARY KEY,
    is_admin    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Tokens are kept only as the hex SHA-256 of the token.
CREATE TABLE IF NOT EXISTS tokens (
    hash        TEXT PRIMARY KEY,
    user        TEXT NOT NULL REFERENCES users(name),
    created_at  INTEGER NOT NULL
);

-- container: JSON {type, image, options}, NULL for none (added later: see migrate()).
CREATE TABLE IF NOT EXISTS functions (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    description TEXT,
    hash        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    container   TEXT
);

CREATE TABLE IF NOT EXISTS endpoints (
    id               TEXT PRIMARY KEY,
    owner            TEXT NOT NULL,
    name             TEXT NOT NULL,
    agent_token_hash TEXT NOT NULL UNIQUE,
    created_at       INTEGER NOT NULL,
    UNIQUE (owner, name)
);

-- transitions: JSON array of {state, at, actor}; error: JSON {kind, type, message,
-- traceback}; timing: JSON {exec_start, exec_end, manager_sent, agent_sent, completed}.
-- done_seq: the service-wide order in which tasks finished, NULL until then.
-- small_payload: the arguments of an unfinished task when they are small (see
-- task_payloads), NULL otherwise and once it finished.
CREATE TABLE IF NOT EXISTS tasks (
    id           TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    endpoint_id  TEXT NOT NULL,
    function_id  TEXT NOT NULL,
    state        TEXT NOT NULL,
    result       BLOB,
    error        TEXT,
    stdout       TEXT NOT NULL DEFAULT '',
    stderr       TEXT NOT NULL DEFAULT '',
    transitions  TEXT NOT NULL,
    timing       TEXT,
    created_at   INTEGER NOT NULL,
    completed_at INTEGER,
    done_seq     INTEGER,
    small_payload BLOB
);

-- The arguments of unfinished tasks, keyed by their task's rowid, when they are larger
-- than a few hundred bytes. Apart from the task's row because SQLite rewrites a whole
-- row (overflow pages included) on every update, and a task's row is updated several
-- times on its way; deleted once the task finishes (nothing reads the arguments of a
-- finished task). Small arguments stay in the task's row (`small_payload`): rewriting
-- them costs less than a row here inserted and deleted per task. payload: the bytes, or
-- NULL when they lie in the segment file `payloads/{segment}.seg` at `offset`
-- (segments.rs).
CREATE TABLE IF NOT EXISTS task_payloads (
    task_rowid   INTEGER PRIMARY KEY,
    payload      BLOB,
    segment      INTEGER,
    offset       INTEGER,
    length       INTEGER
);
CREATE INDEX IF NOT EXISTS task_payloads_by_segment ON task_payloads (segment)
    WHERE segment IS NOT NULL;
"#;

/// The indexes, made after [`migrate`] (a database from before them has older ones of
/// the same purpose to drop first). Both are partial, so that an update of a task's state
/// touches no index: an unfinished task is in the first, a finished one in the second,
/// and it moves once, when it finishes.
const INDEXES: &str = r#"
-- An endpoint's unfinished tasks in insertion (rowid) order: the backlog re-sent to an
-- agent that connects.
CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks (endpoint_id) WHERE done_seq IS NULL;
-- An owner's finished tasks in the order they finished: the results cursor.
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (owner, done_seq) WHERE done_seq IS NOT NULL;
"#;
