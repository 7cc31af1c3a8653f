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

pub struct StateStore {
    db: Database,
}

/// How soon a write must be on disk. `Soon`, used on the request path, hands the write to
/// the OS without waiting for the disk: a daemon killed with -9 loses nothing, a power cut may
/// lose the last changes (kubelet reconciles them). `Now` syncs before returning; restore uses
/// it once for what the restart changed.
#[derive(Clone, Copy)]
pub enum Sync {
    Now,
    Soon,
}

impl StateStore {
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|e| db_error(path.display(), e))?;
        let txn = db.begin_write().map_err(|e| db_error("state", e))?;
        for t in [PODS, CONTAINERS, QUARANTINE] {
            txn.open_table(t).map_err(|e| db_error("state", e))?;
        }
        txn.commit().map_err(|e| db_error("state", e))?;
        Ok(Self { db })
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
        table: TableDefinition<&str, &[u8]>,
        id: &str,
        r: &T,
        sync: Sync,
    ) -> Result<()> {
        let json = serde_json::to_vec(r).map_err(|e| Error::internal(e.to_string()))?;
        let mut txn = self.db.begin_write().map_err(|e| db_error("state", e))?;
        txn.set_durability(match sync {
            Sync::Now => Durability::Immediate,
            Sync::Soon => Durability::Eventual,
        });
        {
            let mut t = txn.open_table(table).map_err(|e| db_error("state", e))?;
            t.insert(id, json.as_slice())
                .map_err(|e| db_error("state", e))?;
        }
        txn.commit().map_err(|e| db_error("state", e))
    }

    /// Removals are `Sync::Soon` like the request path's writes: one lost to a power cut
    /// brings a record back, which kubelet removes again.
    fn remove(&self, table: TableDefinition<&str, &[u8]>, id: &str) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(|e| db_error("state", e))?;
        txn.set_durability(Durability::Eventual);
        {
            let mut t = txn.open_table(table).map_err(|e| db_error("state", e))?;
            t.remove(id).map_err(|e| db_error("state", e))?;
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
