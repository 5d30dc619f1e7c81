//! The persistent store (`cache.path`): reputations and today's quota counters in one
//! redb file. redb commits are atomic and crash-safe; a file that is not an ipgate cache
//! is refused and left untouched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::key::IpKey;

const REPUTATIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("reputations");
const QUOTAS: TableDefinition<&str, (u32, u32)> = TableDefinition::new("quotas");
const META: TableDefinition<&str, &str> = TableDefinition::new("ipgate_meta");
/// Small records that must survive a restart: bans (`ban:CIDR`), provider cool-downs
/// (`cooldown:PROVIDER`), each a JSON value.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const FORMAT: &str = "ipgate-cache-1";

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(
        "cache.path {path} is damaged ({cause}); it was left untouched. Move it aside (mv {path} {path}.damaged) and start again: the cache then starts empty, and today's quota counts restart from 0 unless the providers say otherwise"
    )]
    Damaged { path: String, cause: String },
    #[error("cache.path {path}: cannot open ({cause}); the file was left untouched")]
    Open { path: String, cause: String },
    #[error("cache.path {path} is in use by another process (a running gateway?)")]
    Locked { path: String },
    #[error("cache.path {path}: not an ipgate cache file ({cause}); the file was left untouched")]
    Foreign { path: String, cause: String },
    #[error("cache.path {path}: {cause}")]
    Io { path: String, cause: String },
}

/// The persistent store.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the store at `path`.
    ///
    /// An existing file is checked read-only first, every table read to the end: a
    /// foreign or damaged file is refused and left byte-identical (a panic inside the
    /// store is caught and reported as damage). A file that needs the repair redb does
    /// after a crash is repaired on a copy, which replaces it only once it reads back
    /// whole.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let p = path.display().to_string();
        let exists = path.exists();
        let db = if exists {
            match verify(path, &|p: &Path| redb::ReadOnlyDatabase::open(p))? {
                Checked::Whole => {}
                Checked::NeedsRepair => repair_on_a_copy(path)?,
            }
            guarded(path, || Database::open(path))?.map_err(|e| StoreError::Open {
                path: p.clone(),
                cause: e.to_string(),
            })?
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                    path: p.clone(),
                    cause: e.to_string(),
                })?;
            }
            Database::create(path).map_err(|e| StoreError::Open {
                path: p.clone(),
                cause: e.to_string(),
            })?
        };
        let store = Store {
            db: Arc::new(db),
            path: path.to_path_buf(),
        };
        if !exists {
            store
                .init()
                .map_err(|cause| StoreError::Io { path: p, cause })?;
        }
        Ok(store)
    }

    fn init(&self) -> Result<(), String> {
        let tx = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut meta = tx.open_table(META).map_err(|e| e.to_string())?;
            meta.insert("format", FORMAT).map_err(|e| e.to_string())?;
            tx.open_table(REPUTATIONS).map_err(|e| e.to_string())?;
            tx.open_table(QUOTAS).map_err(|e| e.to_string())?;
            tx.open_table(STATE).map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            cause: e.to_string(),
        }
    }

    /// Every stored reputation entry (raw bytes; the caller decodes and drops bad ones).
    pub fn load_entries(&self) -> Result<Vec<(IpKey, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = tx.open_table(REPUTATIONS).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            if let Some(key) = IpKey::from_bytes(k.value()) {
                out.push((key, v.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// The stored records whose key starts with `prefix` (`ban:`, `cooldown:`).
    pub fn load_state(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = match tx.open_table(STATE) {
            Ok(t) => t,
            // A file written before the table existed.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            if k.value().starts_with(prefix) {
                out.push((k.value().to_string(), v.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// Stored quota counters: provider → (UTC day, spent).
    pub fn load_quotas(&self) -> Result<HashMap<String, (u32, u32)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = tx.open_table(QUOTAS).map_err(|e| self.io(e))?;
        let mut out = HashMap::new();
        for row in table.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            out.insert(k.value().to_string(), v.value());
        }
        Ok(out)
    }

    /// Writes a batch in one transaction (blocking: call from a blocking thread).
    pub fn write(&self, batch: &[Write]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut reps = tx.open_table(REPUTATIONS).map_err(|e| self.io(e))?;
            let mut quotas = tx.open_table(QUOTAS).map_err(|e| self.io(e))?;
            let mut state = tx.open_table(STATE).map_err(|e| self.io(e))?;
            for w in batch {
                match w {
                    Write::Put(k, v) => {
                        state
                            .insert(k.as_str(), v.as_slice())
                            .map_err(|e| self.io(e))?;
                    }
                    Write::Delete(k) => {
                        state.remove(k.as_str()).map_err(|e| self.io(e))?;
                    }
                    Write::Entry(k, v) => {
                        reps.insert(k.to_bytes().as_slice(), v.as_slice())
                            .map_err(|e| self.io(e))?;
                    }
                    Write::Remove(k) => {
                        reps.remove(k.to_bytes().as_slice())
                            .map_err(|e| self.io(e))?;
                    }
                    Write::Clear => {
                        reps.retain(|_, _| false).map_err(|e| self.io(e))?;
                    }
                    Write::Barrier => {}
                    Write::PurgeExpired(now) => {
                        reps.retain(|_, v| entry_json(v, *now).is_some())
                            .map_err(|e| self.io(e))?;
                    }
                    Write::Quota(p, day, spent) => {
                        // Reservations may be written out of order: a count only grows
                        // within a day.
                        let stored = quotas
                            .get(p.as_str())
                            .map_err(|e| self.io(e))?
                            .map(|v| v.value());
                        let spent = match stored {
                            Some((d, s)) if d == *day => s.max(*spent),
                            _ => *spent,
                        };
                        quotas
                            .insert(p.as_str(), (*day, spent))
                            .map_err(|e| self.io(e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.io(e))
    }
}

/// What a read-only check of an existing file found.
enum Checked {
    /// Ours, and every table reads to the end.
    Whole,
    /// redb must repair it (after a crash) before it can be read.
    NeedsRepair,
}

/// Runs `f`, turning a panic inside the store into [`StoreError::Damaged`].
fn guarded<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let cause = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("the store failed while reading it");
        StoreError::Damaged {
            path: path.display().to_string(),
            cause: cause.to_string(),
        }
    })
}

/// Opens `path` with `open` (read-only, or a full open of a copy), checks it is an
/// ipgate cache and reads every row of every table.
fn verify<D: ReadableDatabase>(
    path: &Path,
    open: &dyn Fn(&Path) -> Result<D, redb::DatabaseError>,
) -> Result<Checked, StoreError> {
    let p = path.display().to_string();
    guarded(path, || {
        let db = match open(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::RepairAborted) => return Ok(Checked::NeedsRepair),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked { path: p.clone() });
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(cause))) => {
                return Err(StoreError::Damaged {
                    path: p.clone(),
                    cause,
                });
            }
            Err(e) => {
                return Err(StoreError::Open {
                    path: p.clone(),
                    cause: e.to_string(),
                });
            }
        };
        check_format(&db, path)?;
        read_everything(&db).map_err(|cause| StoreError::Damaged {
            path: p.clone(),
            cause,
        })?;
        Ok(Checked::Whole)
    })?
}

/// Reads every key and value of every table (a damaged page fails or panics here).
fn read_everything(db: &impl ReadableDatabase) -> Result<(), String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let reps = tx.open_table(REPUTATIONS).map_err(|e| e.to_string())?;
    for row in reps.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        std::hint::black_box((k.value().len(), v.value().len()));
    }
    let quotas = tx.open_table(QUOTAS).map_err(|e| e.to_string())?;
    for row in quotas.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        std::hint::black_box((k.value().len(), v.value()));
    }
    match tx.open_table(STATE) {
        Ok(state) => {
            for row in state.iter().map_err(|e| e.to_string())? {
                let (k, v) = row.map_err(|e| e.to_string())?;
                std::hint::black_box((k.value().len(), v.value().len()));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    Ok(())
}

/// Repairs a copy of `path` (redb's repair writes to the file it opens) and puts it in
/// place only when it reads back whole; otherwise `path` stays as it was.
fn repair_on_a_copy(path: &Path) -> Result<(), StoreError> {
    let p = path.display().to_string();
    let mut copy = path.as_os_str().to_owned();
    copy.push(".repairing");
    let copy = PathBuf::from(copy);
    std::fs::copy(path, &copy).map_err(|e| StoreError::Io {
        path: p.clone(),
        cause: format!("cannot copy it to repair it: {e}"),
    })?;
    let repaired = verify(&copy, &|c: &Path| Database::open(c)).and_then(|checked| match checked {
        Checked::Whole => Ok(()),
        Checked::NeedsRepair => Err(StoreError::Damaged {
            path: p.clone(),
            cause: "the repair did not complete".into(),
        }),
    });
    match repaired {
        Ok(()) => {
            std::fs::rename(&copy, path).map_err(|e| StoreError::Io {
                path: p.clone(),
                cause: format!("cannot put the repaired copy in place: {e}"),
            })?;
            tracing::warn!(path = %p, "cache.path was repaired after an unclean shutdown");
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&copy);
            Err(match e {
                StoreError::Open { cause, .. } => StoreError::Damaged { path: p, cause },
                StoreError::Damaged { cause, .. } => StoreError::Damaged { path: p, cause },
                other => other,
            })
        }
    }
}

fn check_format(db: &impl ReadableDatabase, path: &Path) -> Result<(), StoreError> {
    let foreign = |cause: String| StoreError::Foreign {
        path: path.display().to_string(),
        cause,
    };
    let tx = db.begin_read().map_err(|e| foreign(e.to_string()))?;
    let meta = tx
        .open_table(META)
        .map_err(|_| foreign("no ipgate metadata".into()))?;
    match meta.get("format").map_err(|e| foreign(e.to_string()))? {
        Some(v) if v.value() == FORMAT => Ok(()),
        Some(v) => Err(foreign(format!(
            "format `{}`, expected `{FORMAT}`",
            v.value()
        ))),
        None => Err(foreign("no format marker".into())),
    }
}

/// A stored entry: its latest expiry (unix ms, big-endian) then its JSON, so expired
/// rows can be dropped without decoding them.
pub fn entry_bytes(expires_ms: u64, json: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + json.len());
    v.extend_from_slice(&expires_ms.to_be_bytes());
    v.extend_from_slice(json);
    v
}

/// The JSON of a stored entry that is still fresh at `now_ms` (None when expired or
/// malformed).
pub fn entry_json(bytes: &[u8], now_ms: u64) -> Option<&[u8]> {
    let (head, json) = bytes.split_at_checked(8)?;
    let expires = u64::from_be_bytes(head.try_into().ok()?);
    (expires > now_ms).then_some(json)
}

/// One change to the store.
#[derive(Debug, Clone)]
pub enum Write {
    Entry(IpKey, Vec<u8>),
    Remove(IpKey),
    Clear,
    Quota(String, u32, u32),
    /// A record of the state table (ban, cool-down).
    Put(String, Vec<u8>),
    /// Removes a record of the state table.
    Delete(String),
    /// Nothing: acknowledged once every earlier write is committed.
    Barrier,
    /// Removes every entry that expired before this unix ms.
    PurgeExpired(u64),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.redb");
        let k = IpKey::V4(0x01020304);
        {
            let s = Store::open(&p).unwrap();
            s.write(&[
                Write::Entry(k, b"x".to_vec()),
                Write::Quota("iocscout".into(), 7, 3),
            ])
            .unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.load_entries().unwrap(), vec![(k, b"x".to_vec())]);
        assert_eq!(s.load_quotas().unwrap()["iocscout"], (7, 3));
        // Out-of-order reservations never lower the count of a day; a new day resets it.
        s.write(&[Write::Quota("iocscout".into(), 7, 2)]).unwrap();
        assert_eq!(s.load_quotas().unwrap()["iocscout"], (7, 3));
        s.write(&[Write::Quota("iocscout".into(), 8, 1)]).unwrap();
        assert_eq!(s.load_quotas().unwrap()["iocscout"], (8, 1));
        s.write(&[Write::Remove(k)]).unwrap();
        assert!(s.load_entries().unwrap().is_empty());
        // Expired rows are purged without decoding them.
        let (k1, k2) = (IpKey::V4(1), IpKey::V4(2));
        s.write(&[
            Write::Entry(k1, entry_bytes(100, b"[]")),
            Write::Entry(k2, entry_bytes(300, b"[]")),
        ])
        .unwrap();
        s.write(&[Write::PurgeExpired(200)]).unwrap();
        let left: Vec<_> = s
            .load_entries()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec![k2]);
        assert_eq!(
            entry_json(&entry_bytes(300, b"[1]"), 200),
            Some(&b"[1]"[..])
        );
        assert_eq!(entry_json(b"short", 0), None);
    }

    #[test]
    fn foreign_and_corrupt_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.redb");
        std::fs::write(&junk, b"this is not a database at all").unwrap();
        let err = Store::open(&junk).unwrap_err();
        assert!(err.to_string().contains("junk.redb"), "{err}");
        assert_eq!(
            std::fs::read(&junk).unwrap(),
            b"this is not a database at all"
        );

        let other = dir.path().join("other.redb");
        {
            let db = Database::create(&other).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(TableDefinition::<&str, &str>::new("theirs"))
                .unwrap();
            tx.commit().unwrap();
        }
        let before = std::fs::read(&other).unwrap();
        let err = Store::open(&other).unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        assert!(
            std::fs::read(&other).unwrap() == before,
            "foreign redb file modified"
        );
    }
}

#[cfg(test)]
mod damage {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A store with enough entries to span many pages.
    fn filled(p: &Path) {
        let s = Store::open(p).unwrap();
        let writes: Vec<Write> = (0..20_000u32)
            .map(|i| Write::Entry(IpKey::V4(i), entry_bytes(u64::MAX, &[b'x'; 60])))
            .collect();
        s.write(&writes).unwrap();
        s.write(&[Write::Quota("iocscout".into(), 7, 3)]).unwrap();
    }

    fn try_open(p: &Path) -> String {
        match std::panic::catch_unwind(|| Store::open(p).map(|s| s.load_entries().map(|e| e.len())))
        {
            Ok(Ok(Ok(n))) => format!("opened, {n} entries"),
            Ok(Ok(Err(e))) => format!("load error: {e}"),
            Ok(Err(e)) => format!("open error: {e}"),
            Err(_) => "PANIC".into(),
        }
    }

    #[test]
    fn a_damaged_file_is_refused_untouched_and_never_panics_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.redb");
        filled(&p);
        let bytes = std::fs::read(&p).unwrap();
        let half = bytes[..bytes.len() / 2].to_vec();
        let mut mid = bytes.clone();
        let m = mid.len() / 2;
        for (i, b) in mid[m..m + 4096].iter_mut().enumerate() {
            *b = (i * 7919 % 251) as u8;
        }
        for damaged in [half, mid] {
            std::fs::write(&p, &damaged).unwrap();
            let opened = try_open(&p);
            assert!(
                opened.starts_with("open error")
                    && opened.contains("damaged")
                    && opened.contains("Move it aside"),
                "{opened}"
            );
            assert!(
                std::fs::read(&p).unwrap() == damaged,
                "the file was changed"
            );
            assert!(!dir.path().join("c.redb.repairing").exists());
        }
        // The intact file still opens with every entry.
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(try_open(&p), "opened, 20000 entries");
    }
}
