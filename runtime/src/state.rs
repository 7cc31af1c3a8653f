//! Persisted records of pods and containers (redb), so that a restarted daemon lists every
//! sandbox and container again with the same ids and timestamps. A record that cannot be read
//! is moved to a quarantine table and reported, never fatal.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::container::ContainerState;
use crate::error::{Error, Result};
use crate::pod::PodState;
use crate::spec::{ContainerConfig, PodConfig};

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");

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
/// commits everything queued so far in one transaction, so concurrent CRI calls share one
/// disk sync instead of taking one each. Every caller still returns only once its own write
/// is committed.
pub struct StateStore {
    db: Database,
    queue: std::sync::Mutex<Queue>,
    /// The commit turn, with the number of the last batch committed and how it went.
    turn: std::sync::Mutex<(u64, Result<()>)>,
}

#[derive(Default)]
struct Queue {
    writes: Vec<Write>,
    /// The batch new writes join.
    batch: u64,
    /// Whether a write of the open batch asked for `Sync::Now`.
    now: bool,
}

struct Write {
    table: TableDefinition<'static, &'static str, &'static [u8]>,
    id: String,
    /// `None` removes the record.
    value: Option<Vec<u8>>,
}

/// How soon a write must be on disk. `Soon`, used on the request path, asks redb for eventual
/// durability (on Linux redb still syncs each commit, so a daemon killed with -9 loses
/// nothing); `Now` asks for immediate durability; restore uses it once for what the restart
/// changed.
#[derive(Clone, Copy)]
pub enum Sync {
    Now,
    Soon,
}

impl StateStore {
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|e| db_error(path.display(), e))?;
        // Only a new database is written to: on a full disk the node must still start (to
        // remove images and free space).
        let read = db.begin_read().map_err(|e| db_error("state", e))?;
        if [PODS, CONTAINERS, QUARANTINE]
            .iter()
            .any(|t| read.open_table(*t).is_err())
        {
            let txn = db.begin_write().map_err(|e| db_error("state", e))?;
            for t in [PODS, CONTAINERS, QUARANTINE] {
                txn.open_table(t).map_err(|e| db_error("state", e))?;
            }
            txn.commit().map_err(|e| db_error("state", e))?;
        }
        Ok(Self {
            db,
            queue: Default::default(),
            turn: std::sync::Mutex::new((0, Ok(()))),
        })
    }

    pub fn put_pod(&self, r: &PodRecord, sync: Sync) -> Result<()> {
        self.put(PODS, &r.id, r, sync)
    }

    pub fn put_container(&self, r: &ContainerRecord, sync: Sync) -> Result<()> {
        self.put(CONTAINERS, &r.id, r, sync)
    }

    pub fn remove_pod(&self, id: &str) -> Result<()> {
        self.remove(PODS, id)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        self.remove(CONTAINERS, id)
    }

    /// Every readable record; unreadable ones are quarantined (and named in the log).
    pub fn load(&self) -> Result<(Vec<PodRecord>, Vec<ContainerRecord>)> {
        Ok((self.load_table(PODS)?, self.load_table(CONTAINERS)?))
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        id: &str,
        r: &T,
        sync: Sync,
    ) -> Result<()> {
        let json = serde_json::to_vec(r).map_err(|e| Error::internal(e.to_string()))?;
        self.write(table, id, Some(json), sync)
    }

    fn remove(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        id: &str,
    ) -> Result<()> {
        self.write(table, id, None, Sync::Soon)
    }

    /// Queues one write and returns once a commit holding it is done.
    fn write(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        id: &str,
        value: Option<Vec<u8>>,
        sync: Sync,
    ) -> Result<()> {
        let batch = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.writes.push(Write {
                table,
                id: id.to_owned(),
                value,
            });
            q.now |= matches!(sync, Sync::Now);
            q.batch
        };
        let mut turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        if turn.0 > batch {
            // Another caller committed our batch while we waited for the turn.
            return turn.1.clone();
        }
        let (writes, now) = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.batch += 1;
            (std::mem::take(&mut q.writes), std::mem::take(&mut q.now))
        };
        let result = self.commit(writes, now);
        *turn = (batch + 1, result.clone());
        result
    }

    fn commit(&self, writes: Vec<Write>, now: bool) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(|e| db_error("state", e))?;
        txn.set_durability(if now {
            Durability::Immediate
        } else {
            Durability::Eventual
        });
        for w in &writes {
            let mut t = txn.open_table(w.table).map_err(|e| db_error("state", e))?;
            match &w.value {
                Some(v) => t.insert(w.id.as_str(), v.as_slice()).map(drop),
                None => t.remove(w.id.as_str()).map(drop),
            }
            .map_err(|e| db_error("state", e))?;
        }
        txn.commit().map_err(|e| db_error("state", e))
    }

    fn load_table<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        {
            let txn = self.db.begin_read().map_err(|e| db_error("state", e))?;
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
            let txn = self.db.begin_write().map_err(|e| db_error("state", e))?;
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
        let txn = self.db.begin_write().map_err(|e| db_error("state", e))?;
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
        let txn = self.db.begin_read().map_err(|e| db_error("state", e))?;
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
}
