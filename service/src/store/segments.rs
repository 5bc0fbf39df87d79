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
//! A segment is done with once no row refers to it and it is no longer the one being
//! appended to. The writer keeps how many rows refer to each segment; the counts are
//! rebuilt from the table when the store opens, and files nobody refers to are deleted
//! then (a crash may leave one behind).
//!
//! A segment done with becomes a spare (`NNNNNNNN.spare`, up to [`MAX_SPARES`]) rather
//! than being deleted, and the next segment is a spare renamed and written over from its
//! start. Writing over blocks the file already has skips the filesystem's block
//! allocation for every page, and deleting a file full of cached pages costs as much
//! again: on ext4 the two were a quarter of the writer's CPU time with 1 MiB arguments.
//! Bytes of a spare past what its new rows refer to are garbage nobody reads. The new
//! name is made durable (the directory synced) before a row that refers to it commits,
//! as for a new file; the old name is gone, so a reader still holding the old segment's
//! number fails rather than reading another task's bytes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Payloads up to this size are stored in the database row; larger ones in a segment.
pub(super) const INLINE_LIMIT: usize = 16 << 10;

/// A segment takes appends until it is this large; the next append starts a new one.
/// Small enough that segments are done with, and reused, while a large batch is still
/// arriving.
const SEGMENT_BYTES: u64 = 16 << 20;

/// Segments done with that are kept to be written over, at most.
const MAX_SPARES: usize = 4;

/// A segment done with is kept as a spare only up to this size (one that a huge payload
/// made huge is deleted), so spares hold at most `MAX_SPARES` times this on disk.
const MAX_SPARE_BYTES: u64 = 2 * SEGMENT_BYTES;

/// The folder of segments inside the service's data directory.
pub(super) fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("payloads")
}

fn segment_path(dir: &Path, segment: i64) -> PathBuf {
    dir.join(format!("{segment:08}.seg"))
}

fn spare_path(dir: &Path, segment: i64) -> PathBuf {
    dir.join(format!("{segment:08}.spare"))
}

/// The number in a segment's or a spare's file name, and whether it is a spare.
fn parse_name(path: &Path) -> Option<(i64, bool)> {
    let name = path.file_name()?.to_str()?;
    if let Some(id) = name.strip_suffix(".seg") {
        return Some((id.parse().ok()?, false));
    }
    Some((name.strip_suffix(".spare")?.parse().ok()?, true))
}

/// Reads `length` bytes at `offset` of a segment (the reading side, any thread).
pub(super) fn read(dir: &Path, segment: i64, offset: i64, length: i64) -> io::Result<Vec<u8>> {
    let (Ok(offset), Ok(length)) = (u64::try_from(offset), usize::try_from(length)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "negative payload offset or length",
        ));
    };
    let path = segment_path(dir, segment);
    let file = File::open(&path)?;
    read_while_named(&file, &path, offset, length)
}

/// Reads from `file`, opened as `path`, and answers the bytes only if `path` still exists
/// afterwards. A segment done with is renamed before it is written over as another, and
/// a segment's number is never given twice, so while the name is there, what was read
/// is the segment's own; a task that finished meanwhile must not be sent with another
/// task's arguments.
fn read_while_named(file: &File, path: &Path, offset: u64, length: usize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; length];
    file.read_exact_at(&mut bytes, offset)?;
    std::fs::metadata(path)?;
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
    /// A segment file was created or renamed since the directory was last synced.
    new_file: bool,
    /// Files of segments done with, to be written over (by their old numbers).
    spares: Vec<i64>,
}

impl Segments {
    /// Opens the segments of `dir` given the committed row counts per segment, and
    /// deletes the files no row refers to.
    pub(super) fn open(dir: PathBuf, live: HashMap<i64, i64>) -> io::Result<Segments> {
        std::fs::create_dir_all(&dir)?;
        let mut next_id = live.keys().max().map_or(1, |max| max + 1);
        let mut spares = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some((id, spare)) = parse_name(&path) else {
                continue;
            };
            next_id = next_id.max(id + 1);
            if spare && spares.len() < MAX_SPARES {
                spares.push(id);
            } else if spare || !live.contains_key(&id) {
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
            spares,
        })
    }

    /// Appends a payload; answers its segment and offset. The row that refers to it is
    /// counted with [`Segments::referenced`].
    pub(super) fn append(&mut self, payload: &[u8]) -> io::Result<(i64, i64)> {
        let current = match &mut self.current {
            Some(current) => current,
            None => {
                let id = self.next_id;
                let file = self.create(id)?;
                self.next_id += 1;
                self.new_file = true;
                self.current.insert(Current { id, file, len: 0 })
            }
        };
        let offset = current.len;
        if let Err(e) = current.file.write_all_at(payload, offset) {
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

    /// Creates segment `id`'s file: a spare renamed, or a new file.
    fn create(&mut self, id: i64) -> io::Result<File> {
        let path = segment_path(&self.dir, id);
        while let Some(spare) = self.spares.pop() {
            let from = spare_path(&self.dir, spare);
            match std::fs::rename(&from, &path) {
                Ok(()) => return OpenOptions::new().write(true).open(&path),
                Err(e) => {
                    tracing::warn!(spare = %from.display(), "cannot reuse a payload segment: {e}");
                    let _ = std::fs::remove_file(&from);
                }
            }
        }
        OpenOptions::new().create_new(true).write(true).open(&path)
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
            let kept = self.spares.len() < MAX_SPARES
                && std::fs::metadata(&path).is_ok_and(|m| m.len() <= MAX_SPARE_BYTES)
                && match std::fs::rename(&path, spare_path(&self.dir, id)) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(segment = %path.display(), "cannot keep a payload segment as a spare: {e}");
                        false
                    }
                };
            if kept {
                self.spares.push(id);
            } else if let Err(e) = std::fs::remove_file(&path) {
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

    /// Segments opened in an empty directory (kept while the first item lives): the
    /// directory's path and the segments.
    fn empty_segments() -> (tempfile::TempDir, PathBuf, Segments) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = segments_dir(tmp.path());
        let segments = Segments::open(dir.clone(), HashMap::new()).unwrap();
        (tmp, dir, segments)
    }

    /// Appends `payload` for a row that commits: its segment and offset.
    fn stored(segments: &mut Segments, payload: &[u8]) -> (i64, i64) {
        let (id, offset) = segments.append(payload).unwrap();
        segments.referenced(id);
        segments.write_kept();
        segments.sync().unwrap();
        segments.committed();
        (id, offset)
    }

    /// The only row in segment `id` is gone and the segment takes no more appends.
    fn done_with(segments: &mut Segments, id: i64) {
        segments.released(id);
        segments.write_kept();
        segments.retire_current();
        segments.committed();
    }

    #[test]
    fn a_segment_goes_once_nobody_refers_to_it_and_it_is_full() {
        let (_tmp, dir, mut segments) = empty_segments();
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
        assert_eq!(files(&dir), ["00000001.spare"]);
    }

    #[test]
    fn the_next_segment_is_a_spare_written_over_and_spares_are_capped() {
        let (_tmp, dir, mut segments) = empty_segments();
        // Segment 1 holds a long payload, then nobody refers to it: a spare.
        let (first, _) = stored(&mut segments, &[b'o'; 100]);
        done_with(&mut segments, first);
        assert_eq!(files(&dir), ["00000001.spare"]);

        // Segment 2 is that file, renamed and written from its start.
        let (second, offset) = stored(&mut segments, b"new");
        assert_eq!((second, offset), (2, 0));
        assert_eq!(files(&dir), ["00000002.seg"]);
        assert_eq!(read(&dir, 2, 0, 3).unwrap(), b"new");
        assert_eq!(
            read(&dir, 2, 3, 2).unwrap(),
            b"oo",
            "the old bytes past it stay"
        );
        // A reader that still had segment 1's place reads nothing rather than segment 2.
        assert!(read(&dir, first, 0, 3).is_err());

        // More segments done with than spares are kept: the rest are deleted.
        done_with(&mut segments, second);
        for _ in 0..MAX_SPARES + 2 {
            stored(&mut segments, b"x");
            segments.retire_current();
        }
        let mut held: Vec<i64> = segments.live.keys().copied().collect();
        held.sort();
        for id in held {
            segments.released(id);
            segments.write_kept();
        }
        segments.committed();
        let names = files(&dir);
        assert_eq!(names.len(), MAX_SPARES, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".spare")), "{names:?}");
    }

    #[test]
    fn bytes_read_while_the_segment_became_another_are_refused() {
        let (_tmp, dir, mut segments) = empty_segments();
        let (id, _) = stored(&mut segments, b"mine");
        let path = segment_path(&dir, id);
        let opened = File::open(&path).unwrap();
        assert_eq!(read_while_named(&opened, &path, 0, 4).unwrap(), b"mine");

        // Between the reader's open and its read, the task finishes and the file is
        // reused for another task's arguments.
        done_with(&mut segments, id);
        let (other, _) = segments.append(b"else").unwrap();
        assert_ne!(other, id);
        let err = read_while_named(&opened, &path, 0, 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn a_segment_a_huge_payload_made_huge_is_not_kept() {
        let (_tmp, dir, mut segments) = empty_segments();
        let (id, _) = stored(&mut segments, b"x");
        // As if a payload of more than two segments had gone into it (sparse: cheap).
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(&dir, id))
            .unwrap();
        file.set_len(MAX_SPARE_BYTES + 1).unwrap();
        done_with(&mut segments, id);
        assert!(files(&dir).is_empty(), "{:?}", files(&dir));
    }

    #[test]
    fn a_rolled_back_write_changes_no_count() {
        let (_tmp, dir, mut segments) = empty_segments();
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

    #[test]
    fn opening_keeps_spares_up_to_the_cap_and_reuses_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = segments_dir(tmp.path());
        std::fs::create_dir_all(&dir).unwrap();
        for id in 1..=MAX_SPARES as i64 + 1 {
            std::fs::write(spare_path(&dir, id), b"stale bytes").unwrap();
        }
        let mut segments = Segments::open(dir.clone(), HashMap::new()).unwrap();
        assert_eq!(files(&dir).len(), MAX_SPARES);
        let next = MAX_SPARES as i64 + 2;
        let (id, offset) = segments.append(b"fresh").unwrap();
        assert_eq!((id, offset), (next, 0));
        assert_eq!(files(&dir).len(), MAX_SPARES, "a spare became the segment");
        assert_eq!(read(&dir, id, 0, 11).unwrap(), b"fresh bytes");
    }
}
