//! A directory in the layout of [the store module](super): the embedded default, for one
//! gateway instance.
//!
//! Every entry is one JSON file named after its key: `accounts/{a}/certificates/{id}.json`
//! holds a certificate's facts and `{id}.secret.json` beside it the P12 and its password, so
//! lists never open a secret file; then `mappings/{id}.json`, the claims under `names/` and
//! `keys/`, `sequence.json` and `revision.json`. A file is written whole: a temporary file in
//! the same directory, fsync, rename. Files are created with mode 0600, directories with 0700.
//! A certificate exists once its facts file exists: a create writes the secret first. A write
//! that fails half-way puts back what it changed, newest first, and removes directories it
//! left empty.
//!
//! Limitation: one process at a time. Writes are serialised by a lock that every
//! [`LocalStore`] of the process opened on the same directory shares. Names and mapping keys
//! stay unique even across processes, because claims are created with `create_new`, but the
//! id sequence and the revision are read, then written, under that in-process lock, so a second
//! process on the same directory could be handed an id already in use. Several replicas need
//! the Vault backend.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    conflict, keep_readable, key_conflict, keys, not_found, now, users_of, CertificateChange,
    CertificateRecord, Claim, ConsumerSecret, Mapping, MappingSpec, NewCertificate, SecretHalf,
    Store, StoreError, StoredP12,
};
use crate::ids::{AccountId, CertificateId, MappingId};

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;
const EXTENSION: &str = ".json";
const SECRET_EXTENSION: &str = ".secret.json";

/// The `store` section with `kind: local`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The store's directory; created (mode 0700) when missing.
    pub path: PathBuf,
}

impl LocalConfig {
    /// Every semantic problem, as (field path, sentence).
    pub fn problems(&self) -> Vec<(String, String)> {
        if self.path.as_os_str().is_empty() {
            return vec![(
                "path".into(),
                "is empty; name the directory that holds the store".into(),
            )];
        }
        match fs::metadata(&self.path) {
            Ok(metadata) if !metadata.is_dir() => vec![(
                "path".into(),
                format!("{} exists and is not a directory", self.path.display()),
            )],
            _ => Vec::new(),
        }
    }
}

/// Certificates and mappings in a directory; see the module doc.
pub struct LocalStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

struct Inner {
    root: PathBuf,
    /// Shared by every store of this process on the same directory.
    writes: Arc<Mutex<()>>,
}

/// One lock per store directory, for every [`LocalStore`] of the process opened on it.
static WRITE_LOCKS: LazyLock<Mutex<HashMap<PathBuf, Weak<Mutex<()>>>>> =
    LazyLock::new(Mutex::default);

fn write_lock_for(root: &Path) -> Arc<Mutex<()>> {
    let mut locks = WRITE_LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
    locks.retain(|_, lock| lock.strong_count() > 0);
    if let Some(lock) = locks.get(root).and_then(Weak::upgrade) {
        return lock;
    }
    let lock = Arc::new(Mutex::new(()));
    locks.insert(root.to_owned(), Arc::downgrade(&lock));
    lock
}

/// One step of a multi-file write, undone when a later step fails.
enum Undo {
    /// Delete a file the write created.
    Remove(PathBuf),
    /// Put back a file's earlier content.
    Restore { path: PathBuf, bytes: Vec<u8> },
}

/// What `sequence.json` and `revision.json` hold.
#[derive(Serialize, Deserialize)]
struct Counter {
    value: u64,
}

impl LocalStore {
    /// Creates the directory when missing.
    pub async fn open(config: &LocalConfig) -> Result<Self, StoreError> {
        if let Some((field, sentence)) = config.problems().into_iter().next() {
            return Err(StoreError::Misconfigured {
                reason: format!("{field} {sentence}"),
            });
        }

        let path = config.path.clone();
        let inner = blocking(move || {
            let accounts = path.join(keys::ACCOUNTS);
            create_dirs(&accounts).map_err(|e| io_error(&accounts, e))?;
            let root = fs::canonicalize(&path).map_err(|e| io_error(&path, e))?;
            Ok(Inner {
                writes: write_lock_for(&root),
                root,
            })
        })
        .await?;
        info!(root = %inner.root.display(), "local store opened");
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Runs blocking file work off the async threads.
    async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || work(&inner)).await
    }

    /// Runs a write under the directory's write lock.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(move |inner| {
            let _writes = inner.writes.lock().unwrap_or_else(PoisonError::into_inner);
            work(inner)
        })
        .await
    }
}

async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(StoreError::Io {
            path: "local store task".into(),
            source: io::Error::other(error),
        }),
    }
}

#[async_trait]
impl Store for LocalStore {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn create_certificate(
        &self,
        new: NewCertificate,
    ) -> Result<CertificateRecord, StoreError> {
        self.write(move |inner| {
            let id = CertificateId(inner.next(keys::SEQUENCE)?);
            let record = CertificateRecord::new(new.account, id, new.name, new.p12.facts(), now());
            let secret = SecretHalf::of(&new.p12);

            inner.transaction(|undo| {
                let account = &record.account;
                let name = inner.file(&keys::certificate_name(account, &record.name));
                inner.claim_or(undo, &name, id.0, || {
                    conflict("certificate name", account, record.name.as_str())
                })?;

                let key = keys::certificate(account, id);
                inner.put(undo, &inner.secret_file(&key), &secret)?;
                inner.put(undo, &inner.file(&key), &record)?;

                inner.next(keys::REVISION).map(drop)
            })?;
            Ok(record)
        })
        .await
    }

    async fn update_certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
        change: CertificateChange,
    ) -> Result<CertificateRecord, StoreError> {
        let account = account.clone();
        self.write(move |inner| {
            let old = inner.certificate(&account, id)?;
            let new = old.changed(&change, now());

            inner.transaction(|undo| {
                let renamed = old.name != new.name;
                if renamed {
                    let name = inner.file(&keys::certificate_name(&account, &new.name));
                    inner.claim_or(undo, &name, id.0, || {
                        conflict("certificate name", &account, new.name.as_str())
                    })?;
                }

                let key = keys::certificate(&account, id);
                if let Some(p12) = &change.p12 {
                    inner.put(undo, &inner.secret_file(&key), &SecretHalf::of(p12))?;
                }
                inner.put(undo, &inner.file(&key), &new)?;

                if renamed {
                    let name = inner.file(&keys::certificate_name(&account, &old.name));
                    inner.delete(undo, &name)?;
                }
                inner.next(keys::REVISION).map(drop)
            })?;
            Ok(new)
        })
        .await
    }

    async fn certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
    ) -> Result<CertificateRecord, StoreError> {
        let account = account.clone();
        self.run(move |inner| inner.certificate(&account, id)).await
    }

    async fn certificate_secret(
        &self,
        account: &AccountId,
        id: CertificateId,
    ) -> Result<StoredP12, StoreError> {
        let account = account.clone();
        self.run(move |inner| {
            let path = inner.secret_file(&keys::certificate(&account, id));
            let secret: SecretHalf = inner
                .read(&path)?
                .ok_or_else(|| not_found("certificate", &account, id.0))?;
            secret
                .into_stored()
                .map_err(|reason| StoreError::Malformed {
                    path: path.display().to_string(),
                    reason: reason.into(),
                })
        })
        .await
    }

    async fn certificates(
        &self,
        account: &AccountId,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let account = account.clone();
        self.run(move |inner| inner.certificates(&account)).await
    }

    async fn delete_certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
        force: bool,
    ) -> Result<(), StoreError> {
        let account = account.clone();
        self.write(move |inner| {
            let old = inner.certificate(&account, id)?;
            if !force {
                let users = users_of(&inner.mappings(&account)?, id);
                if !users.is_empty() {
                    return Err(StoreError::InUse {
                        account,
                        id,
                        mappings: users,
                    });
                }
            }

            inner.transaction(|undo| {
                let key = keys::certificate(&account, id);
                inner.delete(undo, &inner.file(&key))?;
                inner.delete(undo, &inner.secret_file(&key))?;
                inner.delete(
                    undo,
                    &inner.file(&keys::certificate_name(&account, &old.name)),
                )?;
                inner.next(keys::REVISION).map(drop)
            })
        })
        .await
    }

    async fn create_mapping(
        &self,
        account: &AccountId,
        spec: MappingSpec,
    ) -> Result<Mapping, StoreError> {
        let account = account.clone();
        self.write(move |inner| {
            inner.certificate(&account, spec.certificate_id)?;
            let mapping = Mapping {
                id: MappingId(inner.next(keys::SEQUENCE)?),
                account,
                spec,
            };

            inner.transaction(|undo| {
                let (account, id, spec) = (&mapping.account, mapping.id.0, &mapping.spec);
                let name = inner.file(&keys::mapping_name(account, &spec.name));
                inner.claim_or(undo, &name, id, || {
                    conflict("mapping name", account, spec.name.as_str())
                })?;
                let key = inner.file(&keys::mapping_key(account, spec));
                inner.claim_or(undo, &key, id, || key_conflict(account, spec))?;

                inner.put(
                    undo,
                    &inner.file(&keys::mapping(account, mapping.id)),
                    &mapping,
                )?;
                inner.next(keys::REVISION).map(drop)
            })?;
            Ok(mapping)
        })
        .await
    }

    async fn update_mapping(
        &self,
        account: &AccountId,
        id: MappingId,
        spec: MappingSpec,
    ) -> Result<Mapping, StoreError> {
        let account = account.clone();
        self.write(move |inner| {
            let old = inner.mapping(&account, id)?;
            if spec.certificate_id != old.spec.certificate_id {
                inner.certificate(&account, spec.certificate_id)?;
            }
            let new = Mapping { id, account, spec };

            inner.transaction(|undo| {
                let (account, old_spec, spec) = (&new.account, &old.spec, &new.spec);
                let renamed = old_spec.name != spec.name;
                let rekeyed = old_spec.key_digest() != spec.key_digest();
                if renamed {
                    let name = inner.file(&keys::mapping_name(account, &spec.name));
                    inner.claim_or(undo, &name, id.0, || {
                        conflict("mapping name", account, spec.name.as_str())
                    })?;
                }
                if rekeyed {
                    let key = inner.file(&keys::mapping_key(account, spec));
                    inner.claim_or(undo, &key, id.0, || key_conflict(account, spec))?;
                }

                inner.put(undo, &inner.file(&keys::mapping(account, id)), &new)?;

                if renamed {
                    inner.delete(
                        undo,
                        &inner.file(&keys::mapping_name(account, &old_spec.name)),
                    )?;
                }
                if rekeyed {
                    inner.delete(undo, &inner.file(&keys::mapping_key(account, old_spec)))?;
                }
                inner.next(keys::REVISION).map(drop)
            })?;
            Ok(new)
        })
        .await
    }

    async fn mapping(&self, account: &AccountId, id: MappingId) -> Result<Mapping, StoreError> {
        let account = account.clone();
        self.run(move |inner| inner.mapping(&account, id)).await
    }

    async fn mappings(&self, account: &AccountId) -> Result<Vec<Mapping>, StoreError> {
        let account = account.clone();
        self.run(move |inner| inner.mappings(&account)).await
    }

    async fn delete_mapping(&self, account: &AccountId, id: MappingId) -> Result<(), StoreError> {
        let account = account.clone();
        self.write(move |inner| {
            let old = inner.mapping(&account, id)?;

            inner.transaction(|undo| {
                inner.delete(undo, &inner.file(&keys::mapping(&account, id)))?;
                inner.delete(
                    undo,
                    &inner.file(&keys::mapping_name(&account, &old.spec.name)),
                )?;
                inner.delete(undo, &inner.file(&keys::mapping_key(&account, &old.spec)))?;
                inner.next(keys::REVISION).map(drop)
            })
        })
        .await
    }

    async fn accounts(&self) -> Result<Vec<AccountId>, StoreError> {
        self.run(|inner| {
            let dir = inner.root.join(keys::ACCOUNTS);
            let mut accounts: Vec<AccountId> = inner
                .entries(&dir)?
                .iter()
                .filter_map(|name| keys::account_from_segment(name))
                .collect();
            accounts.sort();
            Ok(accounts)
        })
        .await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.run(|inner| inner.counter(keys::REVISION)).await
    }

    async fn consumer_secret(&self, key: &str) -> Result<Option<SecretString>, StoreError> {
        let key = keys::consumer(key);
        self.run(move |inner| {
            let secret: Option<ConsumerSecret> = inner.read(&inner.secret_file(&key))?;
            Ok(secret.map(|s| SecretString::from(s.secret)))
        })
        .await
    }
}

impl Inner {
    fn file(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}{EXTENSION}"))
    }

    fn secret_file(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}{SECRET_EXTENSION}"))
    }

    fn certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
    ) -> Result<CertificateRecord, StoreError> {
        self.load_certificate(account, id)?
            .ok_or_else(|| not_found("certificate", account, id.0))
    }

    fn load_certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        let record: Option<CertificateRecord> =
            self.read(&self.file(&keys::certificate(account, id)))?;
        // The path is the truth for id and account, whatever the file says.
        Ok(record.map(|record| CertificateRecord {
            id,
            account: account.clone(),
            ..record
        }))
    }

    fn certificates(&self, account: &AccountId) -> Result<Vec<CertificateRecord>, StoreError> {
        let ids = self.ids(&self.root.join(keys::certificates(account)))?;
        let loaded = ids
            .into_iter()
            .map(|id| self.load_certificate(account, CertificateId(id)))
            .collect();
        keep_readable(loaded)
    }

    fn mapping(&self, account: &AccountId, id: MappingId) -> Result<Mapping, StoreError> {
        self.load_mapping(account, id)?
            .ok_or_else(|| not_found("mapping", account, id.0))
    }

    fn load_mapping(
        &self,
        account: &AccountId,
        id: MappingId,
    ) -> Result<Option<Mapping>, StoreError> {
        let mapping: Option<Mapping> = self.read(&self.file(&keys::mapping(account, id)))?;
        Ok(mapping.map(|mapping| Mapping {
            id,
            account: account.clone(),
            spec: mapping.spec,
        }))
    }

    fn mappings(&self, account: &AccountId) -> Result<Vec<Mapping>, StoreError> {
        let ids = self.ids(&self.root.join(keys::mappings(account)))?;
        let loaded = ids
            .into_iter()
            .map(|id| self.load_mapping(account, MappingId(id)))
            .collect();
        keep_readable(loaded)
    }

    /// The names in `dir`, temporary files left out; empty when `dir` does not exist.
    fn entries(&self, dir: &Path) -> Result<Vec<String>, StoreError> {
        let listing = match fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(dir, e)),
        };
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| io_error(dir, e))?;
            if let Some(name) = entry.file_name().to_str() {
                if !name.starts_with('.') {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    /// The ids of the entries in `dir` (`{id}.json`), ascending.
    fn ids(&self, dir: &Path) -> Result<Vec<u64>, StoreError> {
        let mut ids: Vec<u64> = self
            .entries(dir)?
            .iter()
            .filter_map(|name| name.strip_suffix(EXTENSION)?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, StoreError> {
        let Some(bytes) = read_bytes(path)? else {
            return Ok(None);
        };
        // The serde error is left out: it may quote the value, and the value may be secret.
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| StoreError::Malformed {
                path: path.display().to_string(),
                reason: "the file does not hold the expected json".into(),
            })
    }

    fn counter(&self, key: &str) -> Result<u64, StoreError> {
        Ok(self
            .read::<Counter>(&self.file(key))?
            .map_or(0, |counter| counter.value))
    }

    /// Moves a counter on by one and returns the new value; needs the write lock.
    fn next(&self, key: &str) -> Result<u64, StoreError> {
        let value = self.counter(key)? + 1;
        let bytes = to_json(&Counter { value })?;
        write_atomic(&self.file(key), &bytes)?;
        Ok(value)
    }

    /// Runs the steps of a write; when one fails, undoes the earlier ones, newest first.
    fn transaction(
        &self,
        steps: impl FnOnce(&mut Vec<Undo>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut undo = Vec::new();
        let result = steps(&mut undo);
        if result.is_err() {
            for step in undo.into_iter().rev() {
                let (path, outcome) = match step {
                    Undo::Remove(path) => {
                        let outcome = self.remove(&path);
                        (path, outcome)
                    }
                    Undo::Restore { path, bytes } => {
                        let outcome = write_atomic(&path, &bytes);
                        (path, outcome)
                    }
                };
                if let Err(error) = outcome {
                    warn!(
                        path = %path.display(),
                        %error,
                        "local store rollback step failed; the file may need repair by hand"
                    );
                }
            }
        }
        result
    }

    /// Creates the claim `path` holding `id`, or answers the conflict `conflict` describes.
    fn claim_or(
        &self,
        undo: &mut Vec<Undo>,
        path: &Path,
        id: u64,
        conflict: impl FnOnce() -> StoreError,
    ) -> Result<(), StoreError> {
        if !claim(path, id)? {
            return Err(conflict());
        }
        undo.push(Undo::Remove(path.to_owned()));
        Ok(())
    }

    /// Writes `value` to `path`, recording how to put back what was there.
    fn put<T: Serialize>(
        &self,
        undo: &mut Vec<Undo>,
        path: &Path,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = to_json(value)?;
        let previous = read_bytes(path)?;
        write_atomic(path, &bytes)?;
        undo.push(match previous {
            Some(bytes) => Undo::Restore {
                path: path.to_owned(),
                bytes,
            },
            None => Undo::Remove(path.to_owned()),
        });
        Ok(())
    }

    /// Deletes `path` if it exists, recording how to put it back.
    fn delete(&self, undo: &mut Vec<Undo>, path: &Path) -> Result<(), StoreError> {
        let Some(bytes) = read_bytes(path)? else {
            return Ok(());
        };
        self.remove(path)?;
        undo.push(Undo::Restore {
            path: path.to_owned(),
            bytes,
        });
        Ok(())
    }

    /// Deletes `path`, then every directory that this leaves empty up to `accounts/`.
    fn remove(&self, path: &Path) -> Result<(), StoreError> {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(path, e)),
        }
        let top = self.root.join(keys::ACCOUNTS);
        let mut dir = path.parent();
        while let Some(current) = dir.filter(|d| d.starts_with(&top) && *d != top) {
            // Fails, and so stops, at the first directory that still holds something.
            if fs::remove_dir(current).is_err() {
                break;
            }
            dir = current.parent();
        }
        sync_dir(path)
    }
}

fn io_error(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec_pretty(value).map_err(|e| StoreError::Io {
        path: "serialisation".into(),
        source: io::Error::other(e),
    })
}

fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

fn create_dirs(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Makes a rename, create or delete in `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    match File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        // The directory itself went away: nothing is left in it to make durable.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(dir, e)),
    }
}

/// Replaces `path` with `bytes` at once: readers see the old file or the new one, whole.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    static TEMPORARY: AtomicU64 = AtomicU64::new(0);

    let dir = path.parent().unwrap_or(Path::new("."));
    create_dirs(dir).map_err(|e| io_error(dir, e))?;
    let file_name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let temporary = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        TEMPORARY.fetch_add(1, Ordering::Relaxed)
    ));

    let written = create_new(&temporary)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temporary, path));
    if let Err(error) = written {
        // Best effort: the temporary file may not even exist.
        let _ = fs::remove_file(&temporary);
        return Err(io_error(path, error));
    }
    sync_dir(path)
}

/// Creates the claim `path` holding `id` unless it exists; false when it does.
fn claim(path: &Path, id: u64) -> Result<bool, StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dirs(dir).map_err(|e| io_error(dir, e))?;
    let bytes = to_json(&Claim { id })?;

    let mut file = match create_new(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(io_error(path, e)),
    };
    if let Err(error) = file.write_all(&bytes).and_then(|()| file.sync_all()) {
        let _ = fs::remove_file(path);
        return Err(io_error(path, error));
    }
    sync_dir(path)?;
    Ok(true)
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_path_that_is_a_file() {
        let file = tempfile::NamedTempFile::new().expect("temporary file");
        let config = LocalConfig {
            path: file.path().to_owned(),
        };

        let problems = config.problems();

        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "path");
    }

    #[test]
    fn refuses_unknown_keys() {
        let parsed: Result<LocalConfig, _> = serde_norway::from_str("path: /x\ncolour: blue\n");

        assert!(parsed.is_err());
    }
}
