//! The agent's on-disk journal: every task the agent accepted and every result it has
//! not yet seen stored by the service, so that a crash of the agent loses nothing.
//!
//! An append-only file of records, each `u32 length | u32 crc32 | MessagePack`. A torn
//! record at the tail (the agent died mid-write) fails its checksum and is cut off at
//! the next open. The file is rewritten with only the live records at open, and
//! truncated whenever nothing is live (the common idle state), so it stays small
//! without a background compactor.
//!
//! A task whose payload is over [`JOURNAL_PAYLOAD_LIMIT`] is journaled without it (an
//! `accepted` record): writing a large argument once more per task would cost more than
//! it saves, since the service keeps every unfinished task and sends it again when an
//! agent connects. Such a task is not queued again from the journal after a restart; it
//! comes back from the service. Its result is journaled like any other.

use scifaas_protocol::{decode, encode_into, TaskId, TaskResult, TaskSpec};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Payloads up to this size are journaled with their task; larger ones are not.
pub const JOURNAL_PAYLOAD_LIMIT: usize = 64 << 10;

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "kebab-case")]
enum Record {
    /// The agent accepted this task.
    Task(TaskSpec),
    /// The agent accepted this task, whose payload was too large to journal.
    Accepted { id: TaskId },
    /// The task finished with this result.
    Result(TaskResult),
    /// The service stored these results: the agent may forget the tasks.
    Stored { ids: Vec<TaskId> },
}

/// [`Record`] as written: borrowing what it encodes, so that nothing is cloned to journal
/// it. The same tags and fields, hence the same encoding.
#[derive(Serialize)]
#[serde(tag = "r", rename_all = "kebab-case")]
enum RecordRef<'a> {
    Task(&'a TaskSpec),
    Accepted { id: TaskId },
    Result(&'a TaskResult),
    Stored { ids: &'a [TaskId] },
}

impl<'a> RecordRef<'a> {
    /// The record that journals an accepted task.
    fn accepted(task: &'a TaskSpec) -> Self {
        if task.payload.len() > JOURNAL_PAYLOAD_LIMIT {
            RecordRef::Accepted { id: task.task_id }
        } else {
            RecordRef::Task(task)
        }
    }
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
    /// Records are encoded here before each write; kept between writes.
    scratch: Vec<u8>,
    /// Tasks the service stored whose `stored` record is not written yet. It rides along
    /// with the next write, or goes once [`STORED_BATCH`] have gathered: losing it in a
    /// crash only makes the next start send those results again, which the service
    /// recognises.
    stored: Vec<TaskId>,
}

/// Stored ids written on their own once this many have gathered.
const STORED_BATCH: usize = 1024;

/// The scratch buffer is released after a write that grew it past this.
const KEEP_SCRATCH: usize = 4 << 20;

impl Journal {
    /// Opens (or creates) the journal at `path`, replays it and compacts it.
    pub fn open(path: &Path, sync: bool) -> io::Result<(Journal, Recovered)> {
        // A task accepted without its payload has no spec.
        let mut tasks: HashMap<TaskId, (Option<TaskSpec>, Option<TaskResult>)> = HashMap::new();
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
                            slot.insert((Some(spec), None));
                        }
                    }
                    Record::Accepted { id } => {
                        if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(id) {
                            order.push(id);
                            slot.insert((None, None));
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
            let mut buf = Vec::new();
            for id in order {
                let Some((spec, result)) = tasks.remove(&id) else {
                    continue;
                };
                buf.clear();
                match (spec, result) {
                    (spec, Some(result)) => {
                        match &spec {
                            Some(spec) => frame_into(&mut buf, &RecordRef::Task(spec)),
                            None => frame_into(&mut buf, &RecordRef::Accepted { id }),
                        }
                        frame_into(&mut buf, &RecordRef::Result(&result));
                        live.insert(id, Entry::Finished);
                        recovered.unstored_results.push(result);
                    }
                    (Some(spec), None) => {
                        frame_into(&mut buf, &RecordRef::Task(&spec));
                        live.insert(id, Entry::Pending);
                        recovered.pending.push(spec);
                    }
                    // Its payload was never journaled: the service sends it again.
                    (None, None) => continue,
                }
                out.write_all(&buf)?;
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
                scratch: Vec::new(),
                stored: Vec::new(),
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

    /// Whether appending tasks waits for the disk.
    pub fn syncs(&self) -> bool {
        self.sync
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
        let mut buf = self.take_buffer();
        for task in tasks {
            frame_into(&mut buf, &RecordRef::accepted(task));
            if self.live.insert(task.task_id, Entry::Pending) != Some(Entry::Pending) {
                self.pending += 1;
            }
        }
        self.write(buf)?;
        if self.sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Appends results. Not synced: a result lost in a crash only means its task runs
    /// again, and the service stores a task's result once.
    pub fn append_results(&mut self, results: &[TaskResult]) -> io::Result<()> {
        let mut buf = self.take_buffer();
        for result in results {
            if self.live.get(&result.task_id) == Some(&Entry::Pending) {
                frame_into(&mut buf, &RecordRef::Result(result));
                self.live.insert(result.task_id, Entry::Finished);
                self.pending -= 1;
            }
        }
        self.write(buf)
    }

    /// Forgets tasks whose results the service stored.
    pub fn mark_stored(&mut self, ids: &[TaskId]) -> io::Result<()> {
        let before = self.stored.len();
        for id in ids {
            match self.live.remove(id) {
                Some(Entry::Pending) => {
                    self.pending -= 1;
                    self.stored.push(*id);
                }
                Some(Entry::Finished) => self.stored.push(*id),
                None => {}
            }
        }
        if self.stored.len() == before {
            return Ok(());
        }
        if self.live.is_empty() && self.len > TRUNCATE_WHEN_IDLE_ABOVE {
            self.file.set_len(0)?;
            self.file.sync_data()?;
            self.len = 0;
            self.stored.clear();
            return Ok(());
        }
        if self.stored.len() < STORED_BATCH {
            return Ok(());
        }
        let buf = self.take_buffer();
        self.write(buf)
    }

    /// The write buffer, starting with the `stored` record of the ids gathered so far.
    fn take_buffer(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.scratch);
        if !self.stored.is_empty() {
            frame_into(&mut buf, &RecordRef::Stored { ids: &self.stored });
            self.stored.clear();
        }
        buf
    }

    /// Appends the records in `buf`, then keeps `buf` (emptied) for the next write.
    fn write(&mut self, mut buf: Vec<u8>) -> io::Result<()> {
        let written = if buf.is_empty() {
            Ok(())
        } else {
            self.file.write_all(&buf)
        };
        if written.is_ok() {
            self.len += buf.len() as u64;
        }
        buf.clear();
        if buf.capacity() > KEEP_SCRATCH {
            buf = Vec::new();
        }
        self.scratch = buf;
        written
    }
}

impl Drop for Journal {
    /// Writes the `stored` record still gathering, so that a clean stop re-sends nothing.
    fn drop(&mut self) {
        if !self.stored.is_empty() {
            let buf = self.take_buffer();
            if let Err(e) = self.write(buf) {
                tracing::debug!("cannot write the last stored record: {e}");
            }
        }
    }
}

/// Appends one record to `out`: its length and checksum, then its MessagePack.
fn frame_into(out: &mut Vec<u8>, record: &RecordRef<'_>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    encode_into(out, record);
    let body_len = (out.len() - start - 8) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&body_len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
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
    use scifaas_protocol::{FunctionId, FunctionSpec};

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
        TaskResult::success(task_id, Bytes::from_static(b"1"))
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
        let mut torn = Vec::new();
        frame_into(&mut torn, &RecordRef::Task(&task()));
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
        let big = task();
        let mut printed = result(big.task_id);
        printed.stdout = " ".repeat(2 << 20);
        journal.append_tasks(std::slice::from_ref(&big)).unwrap();
        journal.append_results(&[printed]).unwrap();
        journal.mark_stored(&[big.task_id]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(journal.live(), 0);
    }

    #[test]
    fn a_large_payload_is_not_journaled_and_its_task_comes_back_from_the_service() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut small, mut big, mut finished) = (task(), task(), task());
        small.payload = Bytes::from(vec![b' '; JOURNAL_PAYLOAD_LIMIT]);
        big.payload = Bytes::from(vec![b' '; JOURNAL_PAYLOAD_LIMIT + 1]);
        finished.payload = big.payload.clone();
        {
            let (mut journal, _) = Journal::open(&path, false).unwrap();
            journal
                .append_tasks(&[small.clone(), big.clone(), finished.clone()])
                .unwrap();
            assert!(journal.len < 3 * JOURNAL_PAYLOAD_LIMIT as u64);
            assert_eq!(journal.entry(&big.task_id), Some(Entry::Pending));
            journal.append_results(&[result(finished.task_id)]).unwrap();
        }
        let (journal, recovered) = Journal::open(&path, false).unwrap();
        // Only the small one is queued again; the big one is forgotten until the service
        // sends it again; the finished one's result goes back to the service.
        assert_eq!(recovered.pending, vec![small.clone()]);
        assert_eq!(recovered.unstored_results, vec![result(finished.task_id)]);
        assert_eq!(journal.entry(&big.task_id), None);
        assert_eq!(journal.entry(&finished.task_id), Some(Entry::Finished));
        assert_eq!(journal.pending(), 1);
        drop(journal);
        // The compacted file replays the same.
        let (_, again) = Journal::open(&path, false).unwrap();
        assert_eq!(again.pending, vec![small]);
        assert_eq!(again.unstored_results, vec![result(finished.task_id)]);
    }

    #[test]
    fn stored_ids_ride_along_with_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (a, b) = (task(), task());
        {
            let (mut journal, _) = Journal::open(&path, false).unwrap();
            journal.append_tasks(&[a.clone(), b.clone()]).unwrap();
            journal.append_results(&[result(a.task_id)]).unwrap();
            journal.mark_stored(&[a.task_id]).unwrap();
            let len = journal.len;
            // Not written yet: a crash now would only send a's result again.
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
            journal.append_results(&[result(b.task_id)]).unwrap();
            // A crash: no chance to write anything more.
            std::mem::forget(journal);
        }
        let (_, recovered) = Journal::open(&path, false).unwrap();
        assert!(recovered.pending.is_empty());
        assert_eq!(recovered.unstored_results, vec![result(b.task_id)]);
    }
}
