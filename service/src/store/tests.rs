//! The store against a real SQLite file: group commits, forward-only states, results
//! stored once, and `done_seq` continuing across a reopen.

use super::*;
use scifaas_protocol::link::TaskProgress;
use scifaas_protocol::time::now_micros;
use scifaas_protocol::{Actor, ErrorKind, TaskError, TaskState, Transition};

fn open(dir: &Path) -> (Store, WriterThread) {
    Store::open(dir).unwrap()
}

fn close(store: Store, writer: WriterThread) {
    store.stop_writer();
    writer.join();
}

fn new_task(endpoint_id: EndpointId) -> NewTask {
    NewTask {
        id: TaskId::new(),
        owner: Arc::from("alice"),
        endpoint_id,
        function_id: FunctionId::new(),
        payload: Bytes::from_static(b"{\"args\":[],\"kwargs\":{}}"),
        received_at: now_micros(),
    }
}

fn result(task_id: TaskId, value: &'static [u8]) -> Arc<TaskResult> {
    Arc::new(TaskResult::success(task_id, Bytes::from_static(value)))
}

fn states(row: &TaskRow) -> Vec<TaskState> {
    let transitions: Vec<Transition> = serde_json::from_str(&row.transitions).unwrap();
    transitions.iter().map(|t| t.state).collect()
}

#[tokio::test]
async fn deferred_hints_ride_along_and_states_only_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path());
    let endpoint = EndpointId::new();
    let task = new_task(endpoint);
    let id = task.id;
    let rows = store.insert_tasks(vec![task]).await.unwrap();
    store.mark_sent(vec![rows], now_micros());
    store.mark_accepted(endpoint, vec![id]);
    // A durable write after the hints: by its commit, they are committed too.
    store.insert_tasks(vec![new_task(endpoint)]).await.unwrap();
    let row = store.task(id).await.unwrap().unwrap();
    assert_eq!(row.state, "waiting-for-nodes");
    // Acceptance moves the state only; the agent's stamp comes with the result.
    assert_eq!(
        states(&row),
        [TaskState::Received, TaskState::WaitingForEndpoint]
    );

    let running = Transition::now(TaskState::Running, Actor::Worker);
    let progress = |transition| TaskProgress {
        task_id: id,
        transition,
    };
    store.progress(endpoint, vec![progress(running)]);
    // Late and repeated news neither move the state back nor stamp twice.
    store.progress(
        endpoint,
        vec![
            progress(Transition::now(TaskState::WaitingForLaunch, Actor::Manager)),
            progress(running),
        ],
    );
    store.mark_sent(vec![rows], now_micros());
    store.mark_accepted(endpoint, vec![id]);
    // Another endpoint's agent cannot touch the task.
    store.progress(
        EndpointId::new(),
        vec![progress(Transition::now(
            TaskState::WaitingForLaunch,
            Actor::Agent,
        ))],
    );
    store.insert_tasks(vec![new_task(endpoint)]).await.unwrap();
    let row = store.task(id).await.unwrap().unwrap();
    assert_eq!(row.state, "running");
    assert_eq!(
        states(&row),
        [
            TaskState::Received,
            TaskState::WaitingForEndpoint,
            TaskState::Running,
            TaskState::WaitingForLaunch,
        ]
    );
    close(store, writer);
}

#[tokio::test]
async fn a_result_is_stored_once_and_done_seq_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path());
    let endpoint = EndpointId::new();
    let (first, second) = (new_task(endpoint), new_task(endpoint));
    let (a, b) = (first.id, second.id);
    store.insert_tasks(vec![first, second]).await.unwrap();

    let fates = store
        .store_results(
            endpoint,
            vec![result(a, b"1"), result(a, b"2")],
            now_micros(),
        )
        .await
        .unwrap();
    assert_eq!(
        fates,
        [
            ResultFate::Stored { done_seq: 1 },
            ResultFate::AlreadyFinished
        ]
    );
    let fates = store
        .store_results(EndpointId::new(), vec![result(b, b"3")], now_micros())
        .await
        .unwrap();
    assert_eq!(fates, [ResultFate::Unknown]);
    let row = store.task(a).await.unwrap().unwrap();
    assert_eq!(row.result.as_deref(), Some(&b"1"[..]));
    assert_eq!(row.state, "success");
    assert_eq!(row.done_seq, Some(1));
    close(store, writer);

    let (store, writer) = open(dir.path());
    assert_eq!(store.last_done_seq().await.unwrap(), 1);
    let failed = Arc::new(TaskResult::failed(
        b,
        TaskError::system(ErrorKind::Cancelled, "Cancelled", "asked to"),
    ));
    let fates = store
        .store_results(endpoint, vec![failed], now_micros())
        .await
        .unwrap();
    assert_eq!(fates, [ResultFate::Stored { done_seq: 2 }]);
    let row = store.task(b).await.unwrap().unwrap();
    assert_eq!(row.state, "cancelled");
    assert!(row.error.unwrap().contains("\"kind\":\"cancelled\""));
    let finished = store
        .finished_after(Arc::from("alice"), 0, 10)
        .await
        .unwrap();
    let order: Vec<_> = finished.iter().map(|row| row.done_seq).collect();
    assert_eq!(order, [Some(1), Some(2)]);
    assert!(store
        .finished_after(Arc::from("bob"), 0, 10)
        .await
        .unwrap()
        .is_empty());
    close(store, writer);
}

#[tokio::test]
async fn a_failing_write_does_not_undo_the_others_in_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path());
    let user = |name: &str| UserRow {
        name: name.into(),
        is_admin: false,
        created_at: 1,
    };
    store.create_user(user("alice")).await.unwrap();
    // Queued together, so they share one transaction.
    let duplicate = store.create_user(user("alice"));
    let fresh = store.create_user(user("bob"));
    assert!(matches!(duplicate.await, Err(StoreError::Conflict(_))));
    fresh.await.unwrap();
    let snapshot = store.load_registry().await.unwrap();
    let mut names: Vec<_> = snapshot.users.iter().map(|u| u.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["alice", "bob"]);
    close(store, writer);
}

#[tokio::test]
async fn the_backlog_is_the_unfinished_tasks_paged_in_insertion_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path());
    let endpoint = EndpointId::new();
    let mut tasks: Vec<NewTask> = (0..6).map(|_| new_task(endpoint)).collect();
    tasks[1].payload = Bytes::from(vec![b'7'; 3 << 20]);
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    let rows = store.insert_tasks(tasks).await.unwrap();
    assert_eq!(rows.last - rows.first, 5);
    // A finished task leaves the backlog; one further along stays in it.
    store
        .store_results(endpoint, vec![result(ids[5], b"1")], now_micros())
        .await
        .unwrap();
    store.mark_sent(RowRange::runs([rows.first]), now_micros());
    store.mark_accepted(endpoint, vec![ids[0]]);
    // Another endpoint's task, durable: the hints above commit with it.
    store
        .insert_tasks(vec![new_task(EndpointId::new())])
        .await
        .unwrap();
    let horizon = store.task_horizon();
    let first = store.pending_page(endpoint, (0, horizon), 3).await.unwrap();
    let rest = store
        .pending_page(endpoint, (first[2].rowid, horizon), 3)
        .await
        .unwrap();
    let paged: Vec<TaskId> = first.iter().chain(&rest).map(|t| t.id).collect();
    assert_eq!(paged, ids[..5]);
    assert_eq!(first[0].state, Some(TaskState::WaitingForNodes));
    assert_eq!(first[1].state, Some(TaskState::Received));
    assert_eq!(first[1].payload.len(), 3 << 20);
    assert_eq!(&first[2].payload[..], b"{\"args\":[],\"kwargs\":{}}");
    // Tasks stored after the horizon was taken are not in the pages.
    store.insert_tasks(vec![new_task(endpoint)]).await.unwrap();
    assert!(store.task_horizon() > horizon);
    let again = store
        .pending_page(endpoint, (0, horizon), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 5);
    close(store, writer);
}

#[tokio::test]
async fn a_finished_task_keeps_no_payload_and_updates_leave_payloads_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path());
    let endpoint = EndpointId::new();
    let mut task = new_task(endpoint);
    task.payload = Bytes::from(vec![b'x'; 1 << 20]);
    let id = task.id;
    let rows = store.insert_tasks(vec![task]).await.unwrap();
    store.mark_sent(vec![rows], now_micros());
    store.mark_accepted(endpoint, vec![id]);
    store
        .store_results(endpoint, vec![result(id, b"1")], now_micros())
        .await
        .unwrap();
    close(store, writer);
    let conn = rusqlite::Connection::open(schema::db_path(dir.path())).unwrap();
    let payloads: i64 = conn
        .query_row("SELECT COUNT(*) FROM task_payloads", [], |row| row.get(0))
        .unwrap();
    assert_eq!(payloads, 0);
    // The segment that held it was still being appended to; the next start deletes it.
    let segments = || {
        std::fs::read_dir(segments::segments_dir(dir.path()))
            .unwrap()
            .count()
    };
    assert_eq!(segments(), 1);
    let (store, writer) = open(dir.path());
    assert_eq!(segments(), 0);
    close(store, writer);
}

#[tokio::test]
async fn payloads_of_every_size_come_back_whole_and_none_outlives_its_task() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path());
    let endpoint = EndpointId::new();
    // In the task's row, in a row of task_payloads, in a segment file.
    let sizes = [100, 4 << 10, 1 << 20];
    let tasks: Vec<NewTask> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| NewTask {
            payload: Bytes::from(vec![b'a' + i as u8; size]),
            ..new_task(endpoint)
        })
        .collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    store.insert_tasks(tasks).await.unwrap();
    let page = store
        .pending_page(endpoint, (0, store.task_horizon()), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 3);
    for (i, (task, &size)) in page.iter().zip(&sizes).enumerate() {
        assert_eq!(task.id, ids[i]);
        assert_eq!(task.payload.len(), size);
        assert!(task.payload.iter().all(|&b| b == b'a' + i as u8));
    }
    let results = ids.iter().map(|&id| result(id, b"1")).collect();
    store
        .store_results(endpoint, results, now_micros())
        .await
        .unwrap();
    close(store, writer);
    let conn = rusqlite::Connection::open(schema::db_path(dir.path())).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |row| row.get(0)).unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM task_payloads"), 0);
    assert_eq!(
        count("SELECT COUNT(*) FROM tasks WHERE small_payload IS NOT NULL"),
        0
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM tasks WHERE done_seq IS NOT NULL"),
        3
    );
}

#[tokio::test]
async fn a_database_with_payloads_in_the_tasks_table_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = EndpointId::new();
    let (pending, finished) = (TaskId::new(), TaskId::new());
    // The tasks table as services before the payloads table made it.
    {
        let conn = rusqlite::Connection::open(schema::db_path(dir.path())).unwrap();
        conn.execute_batch(
            "CREATE TABLE tasks (id TEXT PRIMARY KEY, owner TEXT NOT NULL,
                 endpoint_id TEXT NOT NULL, function_id TEXT NOT NULL, state TEXT NOT NULL,
                 payload BLOB NOT NULL, result BLOB, error TEXT,
                 stdout TEXT NOT NULL DEFAULT '', stderr TEXT NOT NULL DEFAULT '',
                 transitions TEXT NOT NULL, timing TEXT, created_at INTEGER NOT NULL,
                 completed_at INTEGER, done_seq INTEGER);
             CREATE INDEX tasks_by_endpoint_state ON tasks (endpoint_id, state);
             CREATE INDEX tasks_by_owner_done ON tasks (owner, done_seq);",
        )
        .unwrap();
        let insert = "INSERT INTO tasks (id, owner, endpoint_id, function_id, state, payload,
                 transitions, created_at, done_seq) VALUES (?1, 'alice', ?2, ?3, ?4, ?5, '[]', 1, ?6)";
        let function = FunctionId::new().to_string();
        conn.execute(
            insert,
            rusqlite::params![
                pending.to_string(),
                endpoint.to_string(),
                function,
                "received",
                b"{\"args\":[1]}".to_vec(),
                None::<i64>
            ],
        )
        .unwrap();
        conn.execute(
            insert,
            rusqlite::params![
                finished.to_string(),
                endpoint.to_string(),
                function,
                "success",
                b"{}".to_vec(),
                Some(1)
            ],
        )
        .unwrap();
    }
    let (store, writer) = open(dir.path());
    let page = store
        .pending_page(endpoint, (0, store.task_horizon()), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, pending);
    assert_eq!(&page[0].payload[..], b"{\"args\":[1]}");
    assert_eq!(store.last_done_seq().await.unwrap(), 1);
    let finished_rows = store
        .finished_after(Arc::from("alice"), 0, 10)
        .await
        .unwrap();
    assert_eq!(finished_rows.len(), 1);
    close(store, writer);
}

#[tokio::test]
async fn a_database_from_before_containers_is_migrated_and_containers_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    // The functions table as services before containers made it, with one function.
    {
        let conn = rusqlite::Connection::open(schema::db_path(dir.path())).unwrap();
        conn.execute_batch(
            "CREATE TABLE functions (id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL,
                 source TEXT NOT NULL, description TEXT, hash TEXT NOT NULL,
                 created_at INTEGER NOT NULL);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO functions VALUES (?1, 'alice', 'old', 'def old(): pass', NULL, 'h', 1)",
            [FunctionId::new().to_string()],
        )
        .unwrap();
    }
    let (store, writer) = open(dir.path());
    let snapshot = store.load_registry().await.unwrap();
    assert_eq!(snapshot.functions.len(), 1);
    assert_eq!(snapshot.functions[0].name, "old");
    assert_eq!(snapshot.functions[0].container, None);

    let container = ContainerSpec {
        runtime: "bwrap".into(),
        image: "/images/sci".into(),
        options: Some("--ro-bind /data /data".into()),
    };
    store
        .create_function(FunctionRow {
            id: FunctionId::new(),
            owner: "alice".into(),
            name: "boxed".into(),
            source: "def boxed(): pass".into(),
            description: None,
            hash: "h2".into(),
            container: Some(container.clone()),
            created_at: 2,
        })
        .await
        .unwrap();
    close(store, writer);

    let (store, writer) = open(dir.path());
    let snapshot = store.load_registry().await.unwrap();
    let boxed = snapshot
        .functions
        .iter()
        .find(|f| f.name == "boxed")
        .unwrap();
    assert_eq!(boxed.container, Some(container));
    close(store, writer);
}

#[test]
fn rowids_group_into_runs() {
    let runs = RowRange::runs([3, 4, 5, 9, 10, 2]);
    let pairs: Vec<(i64, i64)> = runs.iter().map(|r| (r.first, r.last)).collect();
    assert_eq!(pairs, [(3, 5), (9, 10), (2, 2)]);
    assert!(RowRange::runs([]).is_empty());
}

/// The statements run once per task or per poll must not be compiled again at each run:
/// with STAT4 (as the bundled SQLite is built), SQLite recompiles a statement whenever a
/// value bound against an indexed column changes, unless the query is written to avoid it.
#[test]
fn hot_statements_are_not_recompiled_at_each_run() {
    let dir = tempfile::tempdir().unwrap();
    let conn = schema::open_writer(&schema::db_path(dir.path())).unwrap();
    // Each statement with the kinds of values the store binds: T text, I integer.
    let statements = [
        (reads::FINISHED_AFTER, "TII"),
        (reads::PENDING_PAGE, "TIII"),
        (writer::MARK_SENT, "IIT"),
        (writer::MARK_ACCEPTED, "TT"),
        (writer::LOOKUP, "TT"),
    ];
    conn.execute_batch("BEGIN").unwrap();
    for (sql, kinds) in statements {
        let mut statement = conn.prepare(sql).unwrap();
        for i in 0..3i64 {
            let values: Vec<rusqlite::types::Value> = kinds
                .chars()
                .map(|kind| match kind {
                    'T' => rusqlite::types::Value::from(format!("v{i}")),
                    _ => rusqlite::types::Value::from(i + 1),
                })
                .collect();
            let values = rusqlite::params_from_iter(values);
            if sql.trim_start().starts_with("SELECT") {
                statement.query(values).unwrap().next().unwrap();
            } else {
                statement.execute(values).unwrap();
            }
        }
        assert_eq!(
            statement.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "{sql}"
        );
    }
}
