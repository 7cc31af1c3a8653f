//! The state journal: record changes appended to a file with one `write` per batch and no
//! sync. Once `write` returns the change is in the kernel's page cache, so it survives the
//! daemon being killed (-9, a panic, the OOM killer); only a power cut or a kernel crash can
//! lose what was appended since the last checkpoint into the database.
//!
//! A frame is `len: u32 LE | crc32(body): u32 LE | body`, the body `epoch: u64 LE | op: u8 |
//! id_len: u16 LE | id | value`. Reading stops at the first frame that is short or fails its
//! checksum: a write cut short by a crash leaves a torn tail, never a wrong record.
//!
//! The epoch is the number of checkpoints the database has taken. Emptying the journal after
//! a checkpoint is not synced, so after a power cut the file may still hold frames the
//! database already has, older than what it has now: only frames of the database's current
//! epoch are replayed.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};

const HEADER: usize = 8;

/// One change to a table of the state database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Index of the table in the store's table list.
    pub table: u8,
    pub id: String,
    /// `None` removes the record.
    pub value: Option<Vec<u8>>,
}

pub struct Journal {
    file: File,
    /// Bytes in the file: what the next checkpoint may drop.
    len: u64,
    /// The database's checkpoint count, written into each frame.
    epoch: u64,
}

impl Journal {
    /// Opens (or creates, 0600) the journal and returns it with the entries of `epoch` it
    /// holds, in order.
    pub fn open(path: &Path, epoch: u64) -> Result<(Self, Vec<Entry>)> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(path.display(), e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io(path.display(), e))?;
        let (frames, good) = decode(&bytes);
        let entries = frames
            .into_iter()
            .filter_map(|(e, entry)| (e == epoch).then_some(entry))
            .collect();
        if good < bytes.len() {
            tracing::warn!(
                journal = %path.display(),
                dropped = bytes.len() - good,
                "state journal ends in a torn or damaged frame; replaying what precedes it"
            );
        }
        let len = bytes.len() as u64;
        Ok((Self { file, len, epoch }, entries))
    }

    /// Appends a batch with one `write`, so a batch is never interleaved with another.
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let mut buf = Vec::with_capacity(entries.iter().map(Entry::frame_len).sum());
        for e in entries {
            e.encode(self.epoch, &mut buf);
        }
        if let Err(e) = self.file.write_all(&buf) {
            // A partial append would leave a torn frame that hides every later one: cut it.
            let _ = self.file.set_len(self.len);
            return Err(Error::io("state journal", e));
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Empties the journal once its entries are durable in the database, whose checkpoint
    /// count is now `epoch`.
    pub fn clear(&mut self, epoch: u64) -> Result<()> {
        self.epoch = epoch;
        self.file
            .set_len(0)
            .map_err(|e| Error::io("state journal", e))?;
        self.len = 0;
        Ok(())
    }
}

impl Entry {
    fn frame_len(&self) -> usize {
        HEADER + 11 + self.id.len() + self.value.as_ref().map_or(0, Vec::len)
    }

    fn encode(&self, epoch: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER]);
        out.extend_from_slice(&epoch.to_le_bytes());
        // op: the table in the low bits, bit 7 set for a put.
        let put = if self.value.is_some() { 0x80 } else { 0 };
        out.push(self.table | put);
        // Ids are CRI ids (64 hex digits); anything longer is cut, and never matches on replay.
        let id = &self.id.as_bytes()[..self.id.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id);
        if let Some(v) = &self.value {
            out.extend_from_slice(v);
        }
        let body = &out[start + HEADER..];
        let len = (body.len() as u32).to_le_bytes();
        let crc = crc32fast::hash(body).to_le_bytes();
        out[start..start + 4].copy_from_slice(&len);
        out[start + 4..start + HEADER].copy_from_slice(&crc);
    }
}

/// The entries of `bytes` with their epochs up to the first bad frame, and how many bytes
/// they take.
fn decode(bytes: &[u8]) -> (Vec<(u64, Entry)>, usize) {
    let mut entries = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(entry) = parse(body) else { break };
        entries.push(entry);
        at += HEADER + len;
    }
    (entries, at)
}

fn parse(body: &[u8]) -> Option<(u64, Entry)> {
    let epoch = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let (&op, rest) = body[8..].split_first()?;
    let id_len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(rest.get(2..2 + id_len)?)
        .ok()?
        .to_owned();
    let value = rest[2 + id_len..].to_vec();
    let entry = Entry {
        table: op & 0x7f,
        id,
        value: (op & 0x80 != 0).then_some(value),
    };
    Some((epoch, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(table: u8, id: &str, value: Option<&[u8]>) -> Entry {
        Entry {
            table,
            id: id.into(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn appended_batches_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let batches = [
            vec![entry(0, "a", Some(b"{}")), entry(1, "b", Some(b""))],
            vec![entry(0, "a", None)],
        ];
        {
            let (mut j, old) = Journal::open(&path, 0).unwrap();
            assert!(old.is_empty());
            for b in &batches {
                j.append(b).unwrap();
            }
        }
        let (j, read) = Journal::open(&path, 0).unwrap();
        assert_eq!(read, batches.concat());
        assert_eq!(j.len(), std::fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn a_torn_or_damaged_tail_is_dropped_and_what_precedes_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let first = entry(1, "c1", Some(br#"{"state":"running"}"#));
        {
            let (mut j, _) = Journal::open(&path, 0).unwrap();
            j.append(std::slice::from_ref(&first)).unwrap();
            j.append(&[entry(1, "c2", Some(b"xyz"))]).unwrap();
        }
        let full = std::fs::read(&path).unwrap();
        // Every cut inside the second frame, and a flipped bit in it, leave just the first.
        let first_len = first.frame_len();
        for cut in first_len..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            assert_eq!(
                Journal::open(&path, 0).unwrap().1,
                vec![first.clone()],
                "cut at {cut}"
            );
        }
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(Journal::open(&path, 0).unwrap().1, vec![first]);
    }

    #[test]
    fn frames_of_an_earlier_epoch_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (old, new) = (entry(0, "old", Some(b"1")), entry(0, "new", None));
        {
            let (mut j, _) = Journal::open(&path, 3).unwrap();
            j.append(std::slice::from_ref(&old)).unwrap();
        }
        {
            // As a power cut can leave it: the emptying lost, a later epoch's frame after.
            let (mut j, _) = Journal::open(&path, 4).unwrap();
            j.append(std::slice::from_ref(&new)).unwrap();
        }
        assert_eq!(Journal::open(&path, 4).unwrap().1, vec![new]);
        assert_eq!(Journal::open(&path, 3).unwrap().1, vec![old]);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        bolero::check!().for_each(|bytes: &[u8]| {
            let (_, good) = decode(bytes);
            assert!(good <= bytes.len());
        });
    }

    #[test]
    fn a_symlink_in_its_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("j")).unwrap();
        assert!(Journal::open(&dir.path().join("j"), 0).is_err());
    }
}
