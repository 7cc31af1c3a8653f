//! Persisted records of pods and containers, so that a restarted daemon lists every sandbox
//! and container again with the same ids and timestamps. A record that cannot be read is moved
//! to a quarantine table and reported, never fatal.
//!
//! Changes go to an append-only [journal] first (one `write`, no sync: they survive the
//! daemon being killed) and are checkpointed into redb, with a sync, within a second or once
//! the journal holds a few MiB. A power cut or kernel crash can lose the changes of the last
//! second; nothing else can.

mod journal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::container::ContainerState;
use crate::error::{Error, Result};
use crate::pod::PodState;
use crate::spec::{ContainerConfig, PodConfig};
use journal::{Entry, Journal};

type Table = TableDefinition<'static, &'static str, &'static [u8]>;

const PODS: Table = TableDefinition::new("pods");
const CONTAINERS: Table = TableDefinition::new("containers");
const QUARANTINE: Table = TableDefinition::new("quarantine");
/// `epoch`: how many checkpoints the database has taken (see [`journal`]).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The tables the journal writes to, by the index its entries carry.
const JOURNALED: [Table; 2] = [PODS, CONTAINERS];
const POD_RECORDS: u8 = 0;
const CONTAINER_RECORDS: u8 = 1;

/// How long an appended change may wait for its checkpoint: what a power cut can lose.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// A journal this long is checkpointed at once, which bounds its size and the replay.
const CHECKPOINT_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub config: PodConfig,
    pub created_at: SystemTime,
    pub state: PodState,
    /// The pod's IP, kept across restarts.
    pub ip: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    pub image_ref: String,
    pub created_at: SystemTime,
    pub log_path: Option<PathBuf>,
    pub state: ContainerState,
}

/// Writes are group-committed: a caller's write is queued, and whoever takes the commit turn
/// appends everything queued so far to the journal in one `write`. Every caller returns only
/// once its own write is in the journal.
pub struct StateStore {
    shared: Arc<Shared>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    db: Database,
    queue: Mutex<Queue>,
    turn: Mutex<Turn>,
    /// Set when the store is dropped, to stop the checkpointer.
    closing: (Mutex<bool>, Condvar),
}

#[derive(Default)]
struct Queue {
    writes: Vec<Entry>,
    /// The batch new writes join.
    batch: u64,
    /// Whether a write of the open batch asked for `Sync::Now`.
    now: bool,
}

/// The commit turn, and what its holder owns.
struct Turn {
    /// The number of the last batch appended, and how it went.
    batch: u64,
    result: Result<()>,
    journal: Journal,
    /// What the journal holds, in order, for the next checkpoint.
    pending: Vec<Entry>,
}

/// How soon a write must be synced to disk. `Soon`, used on the request path, returns once it
/// is in the journal (safe from a kill -9, synced by the next checkpoint); `Now` checkpoints
/// at once; restore uses it once for what the restart changed.
#[derive(Clone, Copy)]
pub enum Sync {
    Now,
    Soon,
}

impl StateStore {
    /// Opens the database at `path` and its journal beside it, replaying into the database
    /// what an earlier daemon journaled but did not checkpoint.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Some(CHECKPOINT_EVERY))
    }

    /// `open`, checkpointing every `period` (`None`: only when the journal is long, for
    /// `Sync::Now`, and at close; tests use it to see exactly what a crash leaves).
    fn open_with(path: &Path, period: Option<Duration>) -> Result<Self> {
        let db = Database::create(path).map_err(|e| db_error(path.display(), e))?;
        // Only a new database is written to: on a full disk the node must still start (to
        // remove images and free space).
        let read = db.begin_read().map_err(|e| db_error("state", e))?;
        if [PODS, CONTAINERS, QUARANTINE]
            .iter()
            .any(|t| read.open_table(*t).is_err())
            || read.open_table(META).is_err()
        {
            let txn = db.begin_write().map_err(|e| db_error("state", e))?;
            for t in [PODS, CONTAINERS, QUARANTINE] {
                txn.open_table(t).map_err(|e| db_error("state", e))?;
            }
            txn.open_table(META).map_err(|e| db_error("state", e))?;
            txn.commit().map_err(|e| db_error("state", e))?;
        }
        drop(read);
        let (journal, replay) = Journal::open(&path.with_extension("journal"), epoch(&db)?)?;
        let mut turn = Turn {
            batch: 0,
            result: Ok(()),
            journal,
            pending: replay,
        };
        if !turn.pending.is_empty() {
            tracing::info!(changes = turn.pending.len(), "state journal replayed");
            checkpoint(&db, &mut turn)?;
        }
        let shared = Arc::new(Shared {
            db,
            queue: Default::default(),
            turn: Mutex::new(turn),
            closing: Default::default(),
        });
        let checkpointer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("state-checkpoint".into())
                .spawn(move || shared.checkpoint_every(period))
                .map_err(|e| Error::internal(format!("state checkpoint thread: {e}")))?
        };
        Ok(Self {
            shared,
            checkpointer: Some(checkpointer),
        })
    }

    pub fn put_pod(&self, r: &PodRecord, sync: Sync) -> Result<()> {
        self.put(POD_RECORDS, &r.id, r, sync)
    }

    pub fn put_container(&self, r: &ContainerRecord, sync: Sync) -> Result<()> {
        self.put(CONTAINER_RECORDS, &r.id, r, sync)
    }

    pub fn remove_pod(&self, id: &str) -> Result<()> {
        self.shared.write(POD_RECORDS, id, None, Sync::Soon)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        self.shared.write(CONTAINER_RECORDS, id, None, Sync::Soon)
    }

    /// Every readable record; unreadable ones are quarantined (and named in the log).
    pub fn load(&self) -> Result<(Vec<PodRecord>, Vec<ContainerRecord>)> {
        {
            let mut turn = self.shared.turn.lock().unwrap_or_else(|e| e.into_inner());
            if !turn.pending.is_empty() {
                checkpoint(&self.shared.db, &mut turn)?;
            }
        }
        Ok((self.load_table(PODS)?, self.load_table(CONTAINERS)?))
    }

    fn put<T: Serialize>(&self, table: u8, id: &str, r: &T, sync: Sync) -> Result<()> {
        let json = serde_json::to_vec(r).map_err(|e| Error::internal(e.to_string()))?;
        self.shared.write(table, id, Some(json), sync)
    }

    fn load_table<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        {
            let txn = self
                .shared
                .db
                .begin_read()
                .map_err(|e| db_error("state", e))?;
            let t = txn.open_table(table).map_err(|e| db_error("state", e))?;
            for row in t.iter().map_err(|e| db_error("state", e))? {
                let (k, v) = row.map_err(|e| db_error("state", e))?;
                match serde_json::from_slice::<T>(v.value()) {
                    Ok(r) => good.push(r),
                    Err(e) => {
                        tracing::error!(id = k.value(), "corrupt state record quarantined: {e}");
                        bad.push((k.value().to_owned(), v.value().to_vec()));
                    }
                }
            }
        }
        if !bad.is_empty() {
            let txn = self
                .shared
                .db
                .begin_write()
                .map_err(|e| db_error("state", e))?;
            {
                let mut t = txn.open_table(table).map_err(|e| db_error("state", e))?;
                let mut q = txn
                    .open_table(QUARANTINE)
                    .map_err(|e| db_error("state", e))?;
                for (k, v) in &bad {
                    q.insert(k.as_str(), v.as_slice())
                        .map_err(|e| db_error("state", e))?;
                    t.remove(k.as_str()).map_err(|e| db_error("state", e))?;
                }
            }
            txn.commit().map_err(|e| db_error("state", e))?;
        }
        Ok(good)
    }

    /// Writes raw bytes as a record (tests use it to plant a corrupt one).
    #[doc(hidden)]
    pub fn put_raw_container(&self, id: &str, bytes: &[u8]) -> Result<()> {
        let txn = self
            .shared
            .db
            .begin_write()
            .map_err(|e| db_error("state", e))?;
        {
            let mut t = txn
                .open_table(CONTAINERS)
                .map_err(|e| db_error("state", e))?;
            t.insert(id, bytes).map_err(|e| db_error("state", e))?;
        }
        txn.commit().map_err(|e| db_error("state", e))
    }

    /// Ids of quarantined records.
    pub fn quarantined(&self) -> Result<Vec<String>> {
        let txn = self
            .shared
            .db
            .begin_read()
            .map_err(|e| db_error("state", e))?;
        let t = txn
            .open_table(QUARANTINE)
            .map_err(|e| db_error("state", e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| db_error("state", e))? {
            out.push(row.map_err(|e| db_error("state", e))?.0.value().to_owned());
        }
        Ok(out)
    }
}

impl Drop for StateStore {
    /// Checkpoints what is left, so a daemon that stops cleanly leaves an empty journal.
    fn drop(&mut self) {
        *self
            .shared
            .closing
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.closing.1.notify_all();
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    /// Queues one write and returns once a journal append holding it is done.
    fn write(&self, table: u8, id: &str, value: Option<Vec<u8>>, sync: Sync) -> Result<()> {
        let batch = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.writes.push(Entry {
                table,
                id: id.to_owned(),
                value,
            });
            q.now |= matches!(sync, Sync::Now);
            q.batch
        };
        let mut turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        if turn.batch > batch {
            // Another caller appended our batch while we waited for the turn.
            return turn.result.clone();
        }
        let (writes, now) = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.batch += 1;
            (std::mem::take(&mut q.writes), std::mem::take(&mut q.now))
        };
        let mut result = turn.journal.append(&writes);
        if result.is_ok() {
            turn.pending.extend(writes);
            if now || turn.journal.len() >= CHECKPOINT_BYTES {
                result = checkpoint(&self.db, &mut turn);
            }
        }
        turn.batch = batch + 1;
        turn.result = result.clone();
        result
    }

    /// The checkpointer's loop: syncs the journal's changes into the database each `period`
    /// there are any, and once more when the store closes.
    fn checkpoint_every(&self, period: Option<Duration>) {
        let (closing, wake) = &self.closing;
        let mut closed = closing.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let stop = *closed;
            drop(closed);
            let mut turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
            if !turn.pending.is_empty() {
                if let Err(e) = checkpoint(&self.db, &mut turn) {
                    tracing::error!("state checkpoint: {e} (the journal keeps the changes)");
                }
            }
            drop(turn);
            if stop {
                return;
            }
            closed = closing.lock().unwrap_or_else(|e| e.into_inner());
            if !*closed {
                closed = match period {
                    Some(p) => {
                        wake.wait_timeout(closed, p)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    None => wake.wait(closed).unwrap_or_else(|e| e.into_inner()),
                };
            }
        }
    }
}

/// Applies the journaled changes to the database in one synced transaction, then empties
/// the journal. A crash between the two replays them again on open, which is harmless:
/// replaying a put or a remove twice leaves the same record.
fn checkpoint(db: &Database, turn: &mut Turn) -> Result<()> {
    let mut txn = db.begin_write().map_err(|e| db_error("state", e))?;
    txn.set_durability(Durability::Immediate);
    let epoch = {
        let mut meta = txn.open_table(META).map_err(|e| db_error("state", e))?;
        let epoch = meta
            .get(EPOCH)
            .map_err(|e| db_error("state", e))?
            .map_or(0, |v| v.value())
            + 1;
        meta.insert(EPOCH, epoch)
            .map_err(|e| db_error("state", e))?;
        epoch
    };
    for e in &turn.pending {
        let Some(table) = JOURNALED.get(e.table as usize) else {
            tracing::warn!(
                table = e.table,
                id = e.id,
                "state journal entry for no table, skipped"
            );
            continue;
        };
        let mut t = txn.open_table(*table).map_err(|e| db_error("state", e))?;
        match &e.value {
            Some(v) => t.insert(e.id.as_str(), v.as_slice()).map(drop),
            None => t.remove(e.id.as_str()).map(drop),
        }
        .map_err(|e| db_error("state", e))?;
    }
    txn.commit().map_err(|e| db_error("state", e))?;
    turn.pending.clear();
    turn.journal.clear(epoch)
}

const EPOCH: &str = "epoch";

/// The database's checkpoint count.
fn epoch(db: &Database) -> Result<u64> {
    let txn = db.begin_read().map_err(|e| db_error("state", e))?;
    let meta = txn.open_table(META).map_err(|e| db_error("state", e))?;
    let epoch = meta.get(EPOCH).map_err(|e| db_error("state", e))?;
    Ok(epoch.map_or(0, |v| v.value()))
}

fn db_error(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("state database {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: String) -> PodRecord {
        PodRecord {
            id,
            config: Default::default(),
            created_at: SystemTime::now(),
            state: PodState::Ready,
            ip: None,
        }
    }

    #[test]
    fn concurrent_writes_share_commits_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = std::sync::Arc::new(StateStore::open(&path).unwrap());
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        store
                            .put_pod(&pod(format!("p{t}-{i}")), Sync::Soon)
                            .unwrap();
                        if i % 5 == 0 {
                            store.remove_pod(&format!("p{t}-{i}")).unwrap();
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        // Every caller returned only once its write was committed.
        let (pods, _) = store.load().unwrap();
        assert_eq!(pods.len(), 8 * 40);
        drop(store);
        let (pods, _) = StateStore::open(&path).unwrap().load().unwrap();
        assert_eq!(pods.len(), 8 * 40, "and it is all on disk");
    }

    /// What a kill -9 leaves on disk: the database as last checkpointed and the journal as
    /// appended (copied while no checkpoint can run).
    fn crash_image(dir: &Path, into: &Path) {
        std::fs::create_dir_all(into).unwrap();
        for f in ["state.redb", "state.journal"] {
            std::fs::copy(dir.join(f), into.join(f)).unwrap();
        }
    }

    #[test]
    fn a_killed_daemon_loses_no_acknowledged_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = StateStore::open_with(&path, None).unwrap();
        store
            .put_pod(&pod("checkpointed".into()), Sync::Now)
            .unwrap();
        for i in 0..20 {
            store.put_pod(&pod(format!("p{i}")), Sync::Soon).unwrap();
        }
        store.remove_pod("p3").unwrap();
        store.remove_pod("checkpointed").unwrap();
        let mut record = pod("p4".into());
        record.state = PodState::NotReady;
        store.put_pod(&record, Sync::Soon).unwrap();
        assert!(
            std::fs::metadata(dir.path().join("state.journal"))
                .unwrap()
                .len()
                > 0
        );

        let crashed = dir.path().join("crashed");
        crash_image(dir.path(), &crashed);
        drop(store);
        let reopened = StateStore::open(&crashed.join("state.redb")).unwrap();
        let (mut pods, _) = reopened.load().unwrap();
        pods.sort_by(|a, b| a.id.cmp(&b.id));
        let mut want: Vec<String> = (0..20)
            .filter(|i| *i != 3)
            .map(|i| format!("p{i}"))
            .collect();
        want.sort();
        assert_eq!(pods.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), want);
        let p4 = pods.iter().find(|p| p.id == "p4").unwrap();
        assert!(
            matches!(p4.state, PodState::NotReady),
            "the last write of a record wins"
        );
        assert_eq!(
            std::fs::metadata(crashed.join("state.journal"))
                .unwrap()
                .len(),
            0,
            "the replay was checkpointed"
        );
    }

    #[test]
    fn a_crash_during_an_append_keeps_every_earlier_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = StateStore::open_with(&path, None).unwrap();
        store.put_pod(&pod("a".into()), Sync::Soon).unwrap();
        let before = std::fs::metadata(dir.path().join("state.journal"))
            .unwrap()
            .len();
        store.put_pod(&pod("b".into()), Sync::Soon).unwrap();
        let crashed = dir.path().join("crashed");
        crash_image(dir.path(), &crashed);
        drop(store);
        // The second append was cut short by the crash.
        let journal = crashed.join("state.journal");
        let len = std::fs::metadata(&journal).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&journal)
            .unwrap()
            .set_len(before + (len - before) / 2)
            .unwrap();
        let (pods, _) = StateStore::open(&crashed.join("state.redb"))
            .unwrap()
            .load()
            .unwrap();
        assert_eq!(
            pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn a_clean_close_checkpoints_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = StateStore::open_with(&path, None).unwrap();
        store.put_pod(&pod("a".into()), Sync::Soon).unwrap();
        drop(store);
        assert_eq!(
            std::fs::metadata(dir.path().join("state.journal"))
                .unwrap()
                .len(),
            0
        );
        let (pods, _) = StateStore::open(&path).unwrap().load().unwrap();
        assert_eq!(pods.len(), 1);
    }
}
