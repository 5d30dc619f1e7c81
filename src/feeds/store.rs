//! The last good copy of each HTTP feed on disk, so a restart without network keeps it.
//!
//! Two files per feed in the store directory: `<name>.body` (the raw body, as served) and
//! `<name>.meta.json` (source, ETag, Last-Modified, length, checksum, save time). Each is
//! written to a temporary file, synced and renamed over the old one, so a crash leaves
//! either the old or the new file, never a torn one. The body is renamed first; a meta
//! file that does not describe the body (a crash in between) makes the body usable
//! without its validators. Feed names are escaped into file names: only ASCII letters,
//! digits, `-` and `_` stay as they are, every other byte becomes `%XX` (so `/`, `..`,
//! `\` and leading dots cannot escape the directory or hide a file).
//!
//! All functions here block; callers run them on the blocking pool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::fetch::Validators;

/// Version of the meta file layout.
const META_VERSION: u32 = 1;

/// A store directory.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

/// A copy read back from the store.
#[derive(Debug)]
pub(crate) struct Stored {
    pub body: Bytes,
    /// Empty when the meta file did not describe this body.
    pub validators: Validators,
    /// When the copy was saved (the time it was fetched).
    pub saved_at: Option<SystemTime>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    version: u32,
    source: String,
    #[serde(flatten)]
    validators: Validators,
    len: u64,
    /// FNV-1a 64 of the body, hex.
    checksum: String,
    /// Unix seconds.
    saved_at: u64,
}

impl Store {
    pub(crate) fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the stored body of feed `name` is (named in errors about it).
    pub(crate) fn body_path(&self, name: &str) -> PathBuf {
        self.paths(name).0
    }

    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let stem = file_stem(name);
        (
            self.dir.join(format!("{stem}.body")),
            self.dir.join(format!("{stem}.meta.json")),
        )
    }

    /// Saves `body` as the last good copy of feed `name` from `source`.
    pub(crate) fn save(
        &self,
        name: &str,
        source: &str,
        body: &[u8],
        validators: &Validators,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let (body_path, meta_path) = self.paths(name);
        let meta = Meta {
            version: META_VERSION,
            source: source.to_string(),
            validators: validators.clone(),
            len: body.len() as u64,
            checksum: checksum(body),
            saved_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let meta = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
        write_atomic(&body_path, body)?;
        write_atomic(&meta_path, &meta)?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// The stored copy of feed `name`, if one was saved from the same `source`.
    ///
    /// `Ok(None)` when there is none (or it came from another source); `Err` when the
    /// files exist but cannot be read.
    pub(crate) fn load(&self, name: &str, source: &str) -> std::io::Result<Option<Stored>> {
        let (body_path, meta_path) = self.paths(name);
        let meta = match std::fs::read(&meta_path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // The position and the kind of problem only: serde_json's message may quote the
        // file, and this error is logged.
        let meta: Meta = serde_json::from_slice(&meta).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: line {}, column {}: not a feed store meta file",
                    meta_path.display(),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        if meta.version != META_VERSION || meta.source != source {
            return Ok(None);
        }
        let body = match std::fs::read(&body_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let described = meta.len == body.len() as u64 && meta.checksum == checksum(&body);
        Ok(Some(Stored {
            body: Bytes::from(body),
            validators: if described {
                meta.validators
            } else {
                Validators::default()
            },
            saved_at: described.then(|| UNIX_EPOCH + Duration::from_secs(meta.saved_at)),
        }))
    }
}

/// A file name stem for a feed name: `[A-Za-z0-9_-]` kept, every other byte `%XX`.
pub(crate) fn file_stem(name: &str) -> String {
    if name.is_empty() {
        return "%".to_string();
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn checksum(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in body {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Writes `data` to a fresh temporary file next to `path`, syncs it and renames it over
/// `path`. The temporary file is removed on failure.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes the renames durable where the platform allows it (best effort).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn v(etag: &str) -> Validators {
        Validators {
            etag: Some(etag.to_string()),
            last_modified: Some("Tue, 02 Apr 2024 10:00:00 GMT".to_string()),
        }
    }

    #[test]
    fn names_cannot_escape_the_directory() {
        assert_eq!(file_stem("tor-exits"), "tor-exits");
        assert_eq!(file_stem("Spamhaus_DROP"), "Spamhaus_DROP");
        assert_eq!(file_stem(".."), "%2E%2E");
        assert_eq!(file_stem("../etc/passwd"), "%2E%2E%2Fetc%2Fpasswd");
        assert_eq!(file_stem("a\\b"), "a%5Cb");
        assert_eq!(file_stem("vpn.txt"), "vpn%2Etxt");
        assert_eq!(file_stem("é"), "%C3%A9");
        assert_eq!(file_stem(""), "%");
        assert_ne!(
            file_stem("a/b"),
            file_stem("a%2Fb"),
            "escaping is injective"
        );
        for name in ["..", "../x", "/abs", "a/../../b", "\0"] {
            let stem = file_stem(name);
            assert!(
                !stem.contains('/') && !stem.contains('\\') && !stem.starts_with('.'),
                "{stem}"
            );
        }
    }

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("nested/store"));
        assert!(store.load("tor", "https://a/x").unwrap().is_none());
        store
            .save("tor", "https://a/x", b"192.0.2.1\n", &v("\"1\""))
            .unwrap();
        store
            .save("tor", "https://a/x", b"192.0.2.2\n", &v("\"2\""))
            .unwrap();
        let got = store.load("tor", "https://a/x").unwrap().unwrap();
        assert_eq!(&got.body[..], b"192.0.2.2\n");
        assert_eq!(got.validators, v("\"2\""));
        assert!(got.saved_at.is_some());
        // Another source under the same name is not this feed's copy.
        assert!(store.load("tor", "https://b/x").unwrap().is_none());
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("nested/store"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }

    #[test]
    fn a_body_newer_than_its_meta_is_used_without_validators() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        store
            .save("x/..", "s", b"192.0.2.1\n", &v("\"1\""))
            .unwrap();
        // A crash between the two renames: the body is new, the meta still old.
        std::fs::write(dir.path().join("x%2F%2E%2E.body"), b"192.0.2.9\n").unwrap();
        let got = store.load("x/..", "s").unwrap().unwrap();
        assert_eq!(&got.body[..], b"192.0.2.9\n");
        assert!(got.validators.is_empty());
        assert!(got.saved_at.is_none());
    }

    #[test]
    fn a_corrupt_meta_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        std::fs::write(dir.path().join("f.meta.json"), b"{not json").unwrap();
        assert!(store.load("f", "s").is_err());
    }
}
