//! Large payloads live in append-only segment files beside the database, not in it.
//!
//! SQLite stores a large blob as a chain of overflow pages: each 4 KiB page is written to
//! the WAL with its own frame header and checksum, and written again when the WAL is
//! checkpointed into the database file. For a 1 MiB argument that is several times the
//! work of writing its bytes once. So a payload over [`INLINE_LIMIT`] is appended to the
//! current segment (`payloads/NNNNNNNN.seg`) and its row in `task_payloads` holds only
//! where it lies. Small payloads, the common case, stay inline in that row.
//!
//! Durability follows the database: the writer thread appends while it applies a group of
//! writes, and [`Segments::sync`] flushes the segment (and the directory, after a new file
//! appeared) before the transaction that refers to those bytes commits. Bytes written by a
//! transaction that then failed are garbage nobody refers to.
//!
//! A segment is deleted once no row refers to it and it is no longer the one being
//! appended to. The writer keeps how many rows refer to each segment; the counts are
//! rebuilt from the table when the store opens, and files nobody refers to are deleted
//! then (a crash may leave one behind).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Payloads up to this size are stored in the database row; larger ones in a segment.
pub(super) const INLINE_LIMIT: usize = 16 << 10;

/// A segment takes appends until it is this large; the next append starts a new one.
const SEGMENT_BYTES: u64 = 64 << 20;

/// The folder of segments inside the service's data directory.
pub(super) fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("payloads")
}

fn segment_path(dir: &Path, segment: i64) -> PathBuf {
    dir.join(format!("{segment:08}.seg"))
}

/// Reads `length` bytes at `offset` of a segment (the reading side, any thread).
pub(super) fn read(dir: &Path, segment: i64, offset: i64, length: i64) -> io::Result<Vec<u8>> {
    let (Ok(offset), Ok(length)) = (u64::try_from(offset), usize::try_from(length)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "negative payload offset or length",
        ));
    };
    let file = File::open(segment_path(dir, segment))?;
    let mut bytes = vec![0u8; length];
    file.read_exact_at(&mut bytes, offset)?;
    Ok(bytes)
}

/// The segment being appended to.
struct Current {
    id: i64,
    file: File,
    len: u64,
}

/// The writer thread's view of the segments: the one appended to and how many rows refer
/// to each. Changes to the counts are staged per write and per transaction, the way the
/// database stages its own, so that a write rolled back leaves them as they were.
pub(super) struct Segments {
    dir: PathBuf,
    current: Option<Current>,
    next_id: i64,
    /// Committed rows per segment.
    live: HashMap<i64, i64>,
    /// Changes made by the write being applied (its savepoint).
    in_write: Vec<(i64, i64)>,
    /// Changes made by the writes of the open transaction that succeeded.
    in_transaction: HashMap<i64, i64>,
    /// Bytes appended since the last sync.
    unsynced: bool,
    /// A segment file was created since the directory was last synced.
    new_file: bool,
}

impl Segments {
    /// Opens the segments of `dir` given the committed row counts per segment, and
    /// deletes the files no row refers to.
    pub(super) fn open(dir: PathBuf, live: HashMap<i64, i64>) -> io::Result<Segments> {
        std::fs::create_dir_all(&dir)?;
        let mut next_id = live.keys().max().map_or(1, |max| max + 1);
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(id) = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_suffix(".seg"))
                .and_then(|id| id.parse::<i64>().ok())
            else {
                continue;
            };
            next_id = next_id.max(id + 1);
            if !live.contains_key(&id) {
                tracing::debug!(segment = %path.display(), "deleting an unreferenced payload segment");
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Segments {
            dir,
            current: None,
            next_id,
            live,
            in_write: Vec::new(),
            in_transaction: HashMap::new(),
            unsynced: false,
            new_file: false,
        })
    }

    /// Appends a payload; answers its segment and offset. The row that refers to it is
    /// counted with [`Segments::referenced`].
    pub(super) fn append(&mut self, payload: &[u8]) -> io::Result<(i64, i64)> {
        let current = match &mut self.current {
            Some(current) => current,
            None => {
                let id = self.next_id;
                let file = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(segment_path(&self.dir, id))?;
                self.next_id += 1;
                self.new_file = true;
                self.current.insert(Current { id, file, len: 0 })
            }
        };
        let offset = current.len;
        if let Err(e) = current.file.write_all(payload) {
            // The file's end is unknown now: start the next append in a new segment.
            self.retire_current();
            return Err(e);
        }
        current.len += payload.len() as u64;
        self.unsynced = true;
        Ok((current.id, offset as i64))
    }

    /// A row now refers to `segment` (staged with the write being applied).
    pub(super) fn referenced(&mut self, segment: i64) {
        self.in_write.push((segment, 1));
    }

    /// A row that referred to `segment` is gone (staged with the write being applied).
    pub(super) fn released(&mut self, segment: i64) {
        self.in_write.push((segment, -1));
    }

    /// The write being applied succeeded: its changes join the transaction's.
    pub(super) fn write_kept(&mut self) {
        for (segment, delta) in self.in_write.drain(..) {
            *self.in_transaction.entry(segment).or_default() += delta;
        }
    }

    /// The write being applied was rolled back.
    pub(super) fn write_undone(&mut self) {
        self.in_write.clear();
    }

    /// Makes the bytes appended so far durable; called before the transaction that
    /// refers to them commits.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            if let Some(current) = &self.current {
                current.file.sync_data()?;
            }
            self.unsynced = false;
        }
        if self.new_file {
            File::open(&self.dir)?.sync_all()?;
            self.new_file = false;
        }
        Ok(())
    }

    /// The transaction committed: its counts become the live ones, and segments nobody
    /// refers to any more are deleted.
    pub(super) fn committed(&mut self) {
        for (segment, delta) in self.in_transaction.drain() {
            *self.live.entry(segment).or_default() += delta;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|current| current.len >= SEGMENT_BYTES)
        {
            self.retire_current();
        }
        let current = self.current.as_ref().map(|current| current.id);
        let unreferenced: Vec<i64> = self
            .live
            .iter()
            .filter(|(id, count)| **count <= 0 && Some(**id) != current)
            .map(|(id, _)| *id)
            .collect();
        for id in unreferenced {
            self.live.remove(&id);
            let path = segment_path(&self.dir, id);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(segment = %path.display(), "cannot delete a payload segment: {e}");
                }
            }
        }
    }

    /// The transaction failed as a whole: its changes are forgotten.
    pub(super) fn rolled_back(&mut self) {
        self.in_write.clear();
        self.in_transaction.clear();
    }

    /// Stops appending to the current segment; it is deleted once nobody refers to it
    /// (now, if nobody does).
    fn retire_current(&mut self) {
        if let Some(current) = self.current.take() {
            self.live.entry(current.id).or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_segment_goes_once_nobody_refers_to_it_and_it_is_full() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = segments_dir(tmp.path());
        let mut segments = Segments::open(dir.clone(), HashMap::new()).unwrap();
        let (a, at) = segments.append(b"hello").unwrap();
        segments.referenced(a);
        segments.write_kept();
        let (b, bt) = segments.append(b"world").unwrap();
        segments.referenced(b);
        segments.write_kept();
        assert_eq!((a, at, b, bt), (1, 0, 1, 5));
        segments.sync().unwrap();
        segments.committed();
        assert_eq!(read(&dir, b, bt, 5).unwrap(), b"world");

        segments.released(a);
        segments.released(b);
        segments.write_kept();
        segments.committed();
        // Still the one appended to: kept.
        assert_eq!(files(&dir), ["00000001.seg"]);
        segments.retire_current();
        segments.committed();
        assert!(files(&dir).is_empty());
    }

    #[test]
    fn a_rolled_back_write_changes_no_count() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = segments_dir(tmp.path());
        let mut segments = Segments::open(dir.clone(), HashMap::new()).unwrap();
        let (a, _) = segments.append(b"x").unwrap();
        segments.referenced(a);
        segments.write_kept();
        segments.committed();
        segments.retire_current();
        segments.released(a);
        segments.write_undone();
        segments.committed();
        assert_eq!(files(&dir), ["00000001.seg"]);
        segments.released(a);
        segments.write_kept();
        segments.rolled_back();
        segments.committed();
        assert_eq!(files(&dir), ["00000001.seg"]);
    }

    #[test]
    fn opening_deletes_unreferenced_files_and_appends_to_a_new_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = segments_dir(tmp.path());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(segment_path(&dir, 3), b"kept").unwrap();
        std::fs::write(segment_path(&dir, 7), b"orphan").unwrap();
        let mut segments = Segments::open(dir.clone(), HashMap::from([(3, 1)])).unwrap();
        assert_eq!(files(&dir), ["00000003.seg"]);
        let (id, offset) = segments.append(b"new").unwrap();
        assert_eq!((id, offset), (8, 0));
        assert_eq!(read(&dir, 3, 1, 3).unwrap(), b"ept");
    }
}
