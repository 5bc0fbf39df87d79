//! The task writes of the writer thread: insert, state hints, progress, results. Each
//! runs inside the writer's transaction, in a savepoint of its own.

use super::{to_json, Writer};
use crate::store::segments::INLINE_LIMIT;
use crate::store::{NewTask, ResultFate, RowRange, StoreError};
use crate::views::{ErrorView, TimingView};
use rusqlite::{params, OptionalExtension};
use scifaas_protocol::time::Micros;
use scifaas_protocol::{
    Actor, EndpointId, ErrorKind, Outcome, TaskId, TaskResult, TaskState, Transition,
};

// The statements run for every task (the store's tests check that SQLite does not
// compile them again at each run; see reads.rs).

/// Stamps `waiting-for-endpoint` on a run of rowids still in `received`.
pub(in crate::store) const MARK_SENT: &str = "UPDATE tasks SET state = 'waiting-for-endpoint',
         transitions = json_insert(transitions, '$[#]', json(?3))
     WHERE rowid BETWEEN ?1 AND ?2 AND state = 'received'";

/// Moves a task of an endpoint to `waiting-for-nodes` unless it is further along.
pub(in crate::store) const MARK_ACCEPTED: &str = "UPDATE tasks SET state = 'waiting-for-nodes'
     WHERE id = ?1 AND endpoint_id = ?2 AND state IN ('received', 'waiting-for-endpoint')";

/// A task of an endpoint: rowid, state, transitions, and whether its payload has a row
/// of its own in `task_payloads`.
pub(in crate::store) const LOOKUP: &str = "SELECT rowid, state, transitions,
         done_seq IS NULL AND small_payload IS NULL
     FROM tasks WHERE id = ?1 AND endpoint_id = ?2";

/// Payloads up to this size are kept in the task's row (`tasks.small_payload`), larger
/// ones in `task_payloads` (schema.rs).
pub(in crate::store) const SMALL_PAYLOAD_LIMIT: usize = 512;

/// What the writer reads of a task before it changes it.
pub(super) struct Found {
    rowid: i64,
    state: TaskState,
    transitions: Vec<Transition>,
    /// Its payload has a row in `task_payloads`, to delete when it finishes.
    payload_row: bool,
}

impl Writer {
    pub(super) fn insert_tasks(&mut self, tasks: &[NewTask]) -> Result<RowRange, StoreError> {
        let mut rows = RowRange::EMPTY;
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO tasks (id, owner, endpoint_id, function_id, state, transitions, created_at,
                 small_payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut insert_payload = self.conn.prepare_cached(
            "INSERT INTO task_payloads (task_rowid, payload, segment, offset, length)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for task in tasks {
            let payload = &task.payload[..];
            let small = payload.len() <= SMALL_PAYLOAD_LIMIT;
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
                to_json(&received),
                task.received_at,
                small.then_some(payload),
            ])?;
            let rowid = self.conn.last_insert_rowid();
            if small {
                // In the task's row already.
            } else if payload.len() <= INLINE_LIMIT {
                insert_payload.execute(params![
                    rowid,
                    payload,
                    None::<i64>,
                    None::<i64>,
                    None::<i64>
                ])?;
            } else {
                let (segment, offset) = self.segments.append(payload).map_err(|e| {
                    StoreError::Commit(format!("cannot write a payload segment: {e}"))
                })?;
                self.segments.referenced(segment);
                insert_payload.execute(params![
                    rowid,
                    None::<&[u8]>,
                    segment,
                    offset,
                    payload.len() as i64
                ])?;
            }
            self.inserted_up_to = self.inserted_up_to.max(rowid);
            if rows.first > rows.last {
                rows.first = rowid;
            }
            rows.last = rowid;
        }
        Ok(rows)
    }

    pub(super) fn mark_sent(&mut self, rows: &[RowRange], at: Micros) -> Result<(), StoreError> {
        // Only a task still in `received` moves: a fast agent may already have moved it
        // further by the time this deferred write is applied. One statement per run of
        // rowids: a batch is one run.
        let stamp = to_json(&Transition {
            state: TaskState::WaitingForEndpoint,
            at,
            actor: Actor::Service,
        });
        let mut update = self.conn.prepare_cached(MARK_SENT)?;
        for run in rows {
            update.execute(params![run.first, run.last, stamp])?;
        }
        Ok(())
    }

    /// Moves tasks the agent has journaled to `waiting-for-nodes`, unless they are
    /// further along. Only the state moves: the agent's own stamp of this transition
    /// (its clock, its journal time) arrives with the task's result.
    pub(super) fn mark_accepted(
        &mut self,
        endpoint_id: EndpointId,
        task_ids: &[TaskId],
    ) -> Result<(), StoreError> {
        let mut update = self.conn.prepare_cached(MARK_ACCEPTED)?;
        let endpoint_id = endpoint_id.to_string();
        for id in task_ids {
            update.execute(params![id.to_string(), endpoint_id])?;
        }
        Ok(())
    }

    /// Records a transition of a task in flight, unless the very same stamp (state, time,
    /// actor) is already there: the agent re-sends what its journal holds after a
    /// reconnect, while a retried task may legitimately pass through a state twice. The
    /// task's state moves forward only, never back and never to a terminal state
    /// (results do that).
    pub(super) fn advance(
        &mut self,
        endpoint_id: EndpointId,
        task_id: TaskId,
        stamp: Transition,
    ) -> Result<(), StoreError> {
        let Some(Found {
            rowid,
            state,
            mut transitions,
            ..
        }) = self.lookup(endpoint_id, task_id)?
        else {
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
            .prepare_cached("UPDATE tasks SET state = ?2, transitions = ?3 WHERE rowid = ?1")?
            .execute(params![rowid, new_state.as_str(), to_json(&transitions)])?;
        Ok(())
    }

    /// A task of this endpoint, as the writer needs it.
    pub(super) fn lookup(
        &mut self,
        endpoint_id: EndpointId,
        task_id: TaskId,
    ) -> Result<Option<Found>, StoreError> {
        let row: Option<(i64, String, String, bool)> = self
            .conn
            .prepare_cached(LOOKUP)?
            .query_row(
                params![task_id.to_string(), endpoint_id.to_string()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        let Some((rowid, state, transitions, payload_row)) = row else {
            return Ok(None);
        };
        let Some(state) = TaskState::parse(&state) else {
            tracing::warn!(%task_id, state, "task has an unknown state in the store");
            return Ok(None);
        };
        let transitions = serde_json::from_str(&transitions).unwrap_or_default();
        Ok(Some(Found {
            rowid,
            state,
            transitions,
            payload_row,
        }))
    }

    /// Stores a task's result unless it has one; answers what became of it.
    pub(super) fn store_result(
        &mut self,
        endpoint_id: EndpointId,
        result: &TaskResult,
        completed_at: Micros,
    ) -> Result<ResultFate, StoreError> {
        let task_id = result.task_id;
        let Some(Found {
            rowid,
            state,
            mut transitions,
            payload_row,
        }) = self.lookup(endpoint_id, task_id)?
        else {
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
                    transitions = ?7, timing = ?8, completed_at = ?9, done_seq = ?10,
                    small_payload = NULL
                 WHERE rowid = ?1",
            )?
            .execute(params![
                rowid,
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
        if payload_row {
            let segment: Option<Option<i64>> = self
                .conn
                .prepare_cached(
                    "DELETE FROM task_payloads WHERE task_rowid = ?1 RETURNING segment",
                )?
                .query_row([rowid], |row| row.get(0))
                .optional()?;
            if let Some(Some(segment)) = segment {
                self.segments.released(segment);
            }
        }
        self.next_done_seq += 1;
        Ok(ResultFate::Stored { done_seq })
    }
}
