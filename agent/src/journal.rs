//! The agent's on-disk journal: every task the agent accepted and every result it has
//! not yet seen stored by the service, so that a crash of the agent loses nothing.
//!
//! An append-only file of records, each `u32 length | u32 crc32 | MessagePack`. A torn
//! record at the tail (the agent died mid-write) fails its checksum and is cut off at
//! the next open. The file is rewritten with only the live records at open, and
//! truncated whenever nothing is live (the common idle state), so it stays small
//! without a background compactor.

use scifaas_protocol::{decode, encode, TaskId, TaskResult, TaskSpec};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "kebab-case")]
enum Record {
    /// The agent accepted this task.
    Task(TaskSpec),
    /// The task finished with this result.
    Result(TaskResult),
    /// The service stored these results: the agent may forget the tasks.
    Stored { ids: Vec<TaskId> },
}

/// What the journal knows of a live task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Accepted, no result yet.
    Pending,
    /// Finished, the service has not confirmed it stored the result.
    Finished,
}

/// What a restarted agent must pick up again.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Tasks accepted and not finished: queue them again.
    pub pending: Vec<TaskSpec>,
    /// Results the service may not have stored: send them again.
    pub unstored_results: Vec<TaskResult>,
}

/// Truncate the file once nothing is live and it has grown past this.
const TRUNCATE_WHEN_IDLE_ABOVE: u64 = 1 << 20;

pub struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
    live: HashMap<TaskId, Entry>,
    /// How many of `live` are `Pending`.
    pending: usize,
    /// Whether appending tasks waits for the disk (fdatasync) before returning.
    sync: bool,
}

impl Journal {
    /// Opens (or creates) the journal at `path`, replays it and compacts it.
    pub fn open(path: &Path, sync: bool) -> io::Result<(Journal, Recovered)> {
        let mut tasks: HashMap<TaskId, (TaskSpec, Option<TaskResult>)> = HashMap::new();
        let mut order: Vec<TaskId> = Vec::new();
        if path.exists() {
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            let (records, valid_len) = parse_records(&bytes);
            if valid_len < bytes.len() {
                tracing::warn!(
                    journal = %path.display(),
                    dropped_bytes = bytes.len() - valid_len,
                    "cut off a torn record at the journal's tail"
                );
            }
            for record in records {
                match record {
                    Record::Task(spec) => {
                        if let std::collections::hash_map::Entry::Vacant(slot) =
                            tasks.entry(spec.task_id)
                        {
                            order.push(spec.task_id);
                            slot.insert((spec, None));
                        }
                    }
                    Record::Result(result) => {
                        if let Some(entry) = tasks.get_mut(&result.task_id) {
                            entry.1 = Some(result);
                        }
                    }
                    Record::Stored { ids } => {
                        for id in ids {
                            tasks.remove(&id);
                        }
                    }
                }
            }
        }

        // Compact: write the live records to a new file and move it into place.
        let tmp = path.with_extension("compact");
        let mut recovered = Recovered::default();
        let mut live = HashMap::new();
        {
            let mut out = io::BufWriter::new(File::create(&tmp)?);
            for id in order {
                let Some((spec, result)) = tasks.remove(&id) else {
                    continue;
                };
                out.write_all(&frame(&Record::Task(spec.clone())))?;
                match result {
                    Some(result) => {
                        out.write_all(&frame(&Record::Result(result.clone())))?;
                        live.insert(id, Entry::Finished);
                        recovered.unstored_results.push(result);
                    }
                    None => {
                        live.insert(id, Entry::Pending);
                        recovered.pending.push(spec);
                    }
                }
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok((
            Journal {
                path: path.to_owned(),
                file,
                len,
                pending: recovered.pending.len(),
                live,
                sync,
            },
            recovered,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the journal knows of `task_id`, if it is live.
    pub fn entry(&self, task_id: &TaskId) -> Option<Entry> {
        self.live.get(task_id).copied()
    }

    /// Number of live tasks (pending or finished but not yet stored by the service).
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Number of tasks accepted and not finished: the work the endpoint holds.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Appends newly accepted tasks (the caller filters out ones already live) and, when
    /// the journal syncs, waits for the disk: after this returns the agent may ack them.
    pub fn append_tasks(&mut self, tasks: &[TaskSpec]) -> io::Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for task in tasks {
            buf.extend_from_slice(&frame(&Record::Task(task.clone())));
            if self.live.insert(task.task_id, Entry::Pending) != Some(Entry::Pending) {
                self.pending += 1;
            }
        }
        self.write(&buf)?;
        if self.sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Appends results. Not synced: a result lost in a crash only means its task runs
    /// again, and the service stores a task's result once.
    pub fn append_results(&mut self, results: &[TaskResult]) -> io::Result<()> {
        let mut buf = Vec::new();
        for result in results {
            if self.live.get(&result.task_id) == Some(&Entry::Pending) {
                buf.extend_from_slice(&frame(&Record::Result(result.clone())));
                self.live.insert(result.task_id, Entry::Finished);
                self.pending -= 1;
            }
        }
        self.write(&buf)
    }

    /// Forgets tasks whose results the service stored.
    pub fn mark_stored(&mut self, ids: &[TaskId]) -> io::Result<()> {
        let ids: Vec<TaskId> = ids
            .iter()
            .filter(|id| match self.live.remove(id) {
                Some(Entry::Pending) => {
                    self.pending -= 1;
                    true
                }
                Some(Entry::Finished) => true,
                None => false,
            })
            .copied()
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        if self.live.is_empty() && self.len > TRUNCATE_WHEN_IDLE_ABOVE {
            self.file.set_len(0)?;
            self.file.sync_data()?;
            self.len = 0;
            return Ok(());
        }
        self.write(&frame(&Record::Stored { ids }))
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }
}

fn frame(record: &Record) -> Vec<u8> {
    let body = encode(record);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Parses records up to the first torn or corrupt one; returns them and the length of
/// the valid prefix.
fn parse_records(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let Some(body) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        match decode::<Record>(body) {
            Ok(record) => records.push(record),
            Err(_) => break,
        }
        at += 8 + len;
    }
    (records, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use scifaas_protocol::{FunctionId, FunctionSpec, Outcome, ResultTiming};

    fn task() -> TaskSpec {
        TaskSpec {
            task_id: TaskId::new(),
            function: FunctionSpec {
                id: FunctionId::new(),
                hash: "h".into(),
                name: "f".into(),
                source: Bytes::from_static(b"def f(): pass"),
                container: None,
            },
            payload: Bytes::from_static(b"{\"args\":[],\"kwargs\":{}}"),
            walltime_ms: None,
            retries: 0,
        }
    }

    fn result(task_id: TaskId) -> TaskResult {
        TaskResult {
            task_id,
            outcome: Outcome::Success(Bytes::from_static(b"1")),
            stdout: String::new(),
            stderr: String::new(),
            transitions: vec![],
            timing: ResultTiming::default(),
        }
    }

    #[test]
    fn replay_gives_pending_tasks_and_unstored_results() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (a, b, c) = (task(), task(), task());
        {
            let (mut journal, recovered) = Journal::open(&path, true).unwrap();
            assert!(recovered.pending.is_empty());
            journal
                .append_tasks(&[a.clone(), b.clone(), c.clone()])
                .unwrap();
            journal
                .append_results(&[result(b.task_id), result(c.task_id)])
                .unwrap();
            journal.mark_stored(&[c.task_id]).unwrap();
        }
        let (journal, recovered) = Journal::open(&path, true).unwrap();
        assert_eq!(recovered.pending, vec![a.clone()]);
        assert_eq!(recovered.unstored_results, vec![result(b.task_id)]);
        assert_eq!(journal.entry(&a.task_id), Some(Entry::Pending));
        assert_eq!(journal.entry(&b.task_id), Some(Entry::Finished));
        assert_eq!(journal.entry(&c.task_id), None);
        assert_eq!(journal.pending(), 1);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let a = task();
        {
            let (mut journal, _) = Journal::open(&path, false).unwrap();
            journal.append_tasks(std::slice::from_ref(&a)).unwrap();
        }
        // Half a record, as if the agent died mid-write.
        let torn = frame(&Record::Task(task()));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(file);
        let (_, recovered) = Journal::open(&path, false).unwrap();
        assert_eq!(recovered.pending, vec![a]);
    }

    #[test]
    fn the_file_is_emptied_when_nothing_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, _) = Journal::open(&path, false).unwrap();
        let mut big = task();
        big.payload = Bytes::from(vec![b' '; 2 << 20]);
        journal.append_tasks(&[big.clone()]).unwrap();
        journal.append_results(&[result(big.task_id)]).unwrap();
        journal.mark_stored(&[big.task_id]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(journal.live(), 0);
    }
}
