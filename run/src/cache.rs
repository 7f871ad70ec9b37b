//! Cache snapshots of the setup phase (DESIGN.md "Cache snapshots"): the
//! key that says whether a snapshot can stand in for running setup again,
//! and the store that publishes, finds, lists and removes them.
//!
//! Concurrency, with flock(2) locks (released by the kernel when a run
//! dies): one build lock per key, so only one run builds a snapshot; a
//! shared lock on a snapshot's meta.json while a run uses its layer, so
//! reset and gc (which need it exclusively) never remove a layer under a
//! running sandbox.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::environment::{Environment, Secret};

/// Changes whenever what goes into a key, or how, changes.
const KEY_VERSION: &[u8] = b"tollgate-cache-key-v1";

/// Files whose change means the base's software changed: the package
/// databases of Debian, RPM and Alpine systems, and the release file.
const BASE_MARKERS: [&str; 4] = [
    "var/lib/dpkg/status",
    "var/lib/rpm",
    "lib/apk/db/installed",
    "etc/os-release",
];

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("base {path}: {source} (the environment's `base` must be an existing directory)")]
    Base {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cache key of a run: a SHA-256 over the base's identity, the repo,
/// setup, maintenance, env, and each secret's name and the SHA-256 of its
/// value. Values are never stored; a secret with little entropy could be
/// guessed from the key by someone who knows every other input.
pub fn key(
    environment: &Environment,
    repo: &str,
    secrets: &[Secret],
) -> Result<String, CacheError> {
    let mut hasher = Sha256::new();
    field(&mut hasher, KEY_VERSION);
    field(&mut hasher, base_identity(&environment.base)?.as_bytes());
    field(&mut hasher, repo.as_bytes());
    optional(&mut hasher, environment.setup.as_deref());
    optional(&mut hasher, environment.maintenance.as_deref());
    count(&mut hasher, environment.env.len());
    for (name, value) in &environment.env {
        field(&mut hasher, name.as_bytes());
        field(&mut hasher, value.as_bytes());
    }
    count(&mut hasher, secrets.len());
    for secret in secrets {
        field(&mut hasher, secret.name.as_bytes());
        field(&mut hasher, &Sha256::digest(secret.value().as_bytes()));
    }
    Ok(hex(&hasher.finalize()))
}

/// What identifies a base: its path, its root directory's inode, and when
/// its package database or release file last changed. Installing or
/// upgrading packages on the base makes a new key; other edits of the base
/// do not (`tollgate cache reset` after them).
pub fn base_identity(base: &Path) -> Result<String, CacheError> {
    let bad = |source| CacheError::Base {
        path: base.to_owned(),
        source,
    };
    let canonical = std::fs::canonicalize(base).map_err(bad)?;
    let root = std::fs::metadata(&canonical).map_err(bad)?;
    let mut identity = format!("{}\0{}:{}", canonical.display(), root.dev(), root.ino());
    for marker in BASE_MARKERS {
        if let Ok(meta) = std::fs::metadata(canonical.join(marker)) {
            identity.push_str(&format!(
                "\0{marker}:{}.{}:{}",
                meta.mtime(),
                meta.mtime_nsec(),
                meta.size()
            ));
        }
    }
    Ok(identity)
}

/// Length-prefixed, so no two different inputs hash the same way.
fn field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

fn optional(hasher: &mut Sha256, text: Option<&str>) {
    match text {
        None => hasher.update([0]),
        Some(text) => {
            hasher.update([1]);
            field(hasher, text.as_bytes());
        }
    }
}

fn count(hasher: &mut Sha256, n: usize) {
    hasher.update((n as u64).to_be_bytes());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where snapshots live: `<cache>/<env>/<key>/` holding `layer/` (a former
/// upper directory) and `meta.json`. A snapshot directory exists only once
/// its publication finished (it appears by one rename), so a run that
/// finds one finds it whole.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
}

/// What is recorded about a snapshot. Never a secret value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub env: String,
    pub key: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The environment's `cache.ttl` when it was made, in seconds.
    pub ttl: u64,
    pub base: PathBuf,
    pub repo: String,
}

impl Meta {
    pub fn age(&self) -> Duration {
        Duration::from_secs(now().saturating_sub(self.created))
    }

    pub fn expired(&self, ttl: Duration) -> bool {
        self.age() >= ttl
    }
}

/// A snapshot a run uses: its layer stays as long as this shared lock is
/// held (reset and gc only remove snapshots they can lock exclusively).
#[derive(Debug)]
pub struct Snapshot {
    pub meta: Meta,
    pub layer: PathBuf,
    _in_use: Flock<File>,
}

/// The right to build one environment's snapshot for one key: held from
/// setup to publication, released if the run dies.
#[derive(Debug)]
pub struct BuildLock {
    env: String,
    key: String,
    _lock: Flock<File>,
}

/// One line of `tollgate cache list`.
#[derive(Debug)]
pub struct Listed {
    pub env: String,
    pub key: String,
    pub meta: Option<Meta>,
    pub size: u64,
    pub in_use: bool,
}

/// What reset or gc removed, and what they had to leave.
#[derive(Debug, Default)]
pub struct Removal {
    pub removed: Vec<String>,
    pub kept_in_use: Vec<String>,
    pub freed: u64,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {0}: cannot lock it: {1}")]
    Lock(PathBuf, nix::Error),
}

fn io_error(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { step, path, source }
}

/// The name of the directory under which snapshots of removed or
/// abandoned publications wait to be deleted.
const TRASH: &str = ".trash";

impl SnapshotStore {
    pub fn new(root: PathBuf) -> SnapshotStore {
        SnapshotStore { root }
    }

    fn env_dir(&self, env: &str) -> PathBuf {
        self.root.join(env)
    }

    fn create_dir(path: &Path) -> Result<(), StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io_error("create", path))
    }

    /// The live snapshot for `key`, locked for use: `None` when there is
    /// none, it is older than `ttl`, or it is not whole.
    pub fn lookup(
        &self,
        env: &str,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<Snapshot>, StoreError> {
        let dir = self.env_dir(env).join(key);
        let Some(meta) = read_meta(&dir) else {
            return Ok(None);
        };
        if meta.key != key || meta.env != env || meta.expired(ttl) {
            return Ok(None);
        }
        // Blocking: exclusive holders are brief (`cache list`'s probe, a
        // removal's rename), and waiting them out keeps a hit a hit.
        let lock = match lock_file(&dir.join("meta.json"), FlockArg::LockShared) {
            Ok(Some(lock)) => lock,
            Ok(None) => return Ok(None),
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        // Removed between the read and the lock: not ours to use.
        if read_meta(&dir).as_ref() != Some(&meta) || !dir.join("layer").is_dir() {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            meta,
            layer: dir.join("layer"),
            _in_use: lock,
        }))
    }

    /// The build lock for `key`, if no other run holds it.
    pub fn try_build(&self, env: &str, key: &str) -> Result<Option<BuildLock>, StoreError> {
        let dir = self.env_dir(env);
        Self::create_dir(&dir)?;
        let path = dir.join(format!("{key}.build-lock"));
        Ok(
            lock_file(&path, FlockArg::LockExclusiveNonblock)?.map(|lock| BuildLock {
                env: env.to_owned(),
                key: key.to_owned(),
                _lock: lock,
            }),
        )
    }

    /// Publishes `upper` (a finished setup's upper directory, on the same
    /// filesystem) as the snapshot of the build's key: moved into a staging
    /// directory beside its metadata, then renamed into place in one step.
    /// An expired snapshot of the key is replaced unless a run still uses
    /// it; then `Ok(None)` and `upper` is left where it was.
    pub fn publish(
        &self,
        build: BuildLock,
        upper: &Path,
        staging: &Path,
        meta: Meta,
    ) -> Result<Option<Snapshot>, StoreError> {
        let target = self.env_dir(&build.env).join(&build.key);
        if target.exists() && !self.unpublish(&target)? {
            return Ok(None);
        }
        Self::create_dir(staging)?;
        let meta_path = staging.join("meta.json");
        let text = serde_json::to_vec_pretty(&meta).map_err(|e| StoreError::Io {
            step: "serialise",
            path: meta_path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_synced(&meta_path, &text)?;
        std::fs::rename(upper, staging.join("layer")).map_err(io_error("move", upper))?;
        let lock = lock_file(&meta_path, FlockArg::LockSharedNonblock)?
            .ok_or_else(|| StoreError::Lock(meta_path.clone(), nix::Error::EWOULDBLOCK))?;
        std::fs::rename(staging, &target).map_err(io_error("publish", &target))?;
        sync_dir(target.parent().unwrap_or(&self.root));
        Ok(Some(Snapshot {
            meta,
            layer: target.join("layer"),
            _in_use: lock,
        }))
    }

    /// Moves a snapshot out of sight (into the trash) and deletes it, if no
    /// run uses it. Returns whether it is gone.
    fn unpublish(&self, dir: &Path) -> Result<bool, StoreError> {
        let meta = dir.join("meta.json");
        let lock = if meta.exists() {
            match lock_file(&meta, FlockArg::LockExclusiveNonblock)? {
                Some(lock) => Some(lock),
                None => return Ok(false),
            }
        } else {
            None
        };
        let trash = self.root.join(TRASH);
        Self::create_dir(&trash)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let doomed = trash.join(format!("{name}-{}-{}", std::process::id(), now_nanos()));
        std::fs::rename(dir, &doomed).map_err(io_error("remove", dir))?;
        // Out of sight now: a lookup waiting on the lock may go on (and miss).
        drop(lock);
        let _ = std::fs::remove_dir_all(&doomed);
        Ok(true)
    }

    /// Every snapshot directory, whole or not.
    pub fn list(&self) -> Vec<Listed> {
        let mut listed = Vec::new();
        for (env, key, dir) in self.snapshot_dirs() {
            let meta = read_meta(&dir);
            let in_use = meta.is_some()
                && matches!(
                    lock_file(&dir.join("meta.json"), FlockArg::LockExclusiveNonblock),
                    Ok(None)
                );
            listed.push(Listed {
                env,
                key,
                meta,
                size: tree_size(&dir),
                in_use,
            });
        }
        listed.sort_by(|a, b| (&a.env, &a.key).cmp(&(&b.env, &b.key)));
        listed
    }

    /// Removes every snapshot of `env` no run is using.
    pub fn reset(&self, env: &str) -> Result<Removal, StoreError> {
        let mut removal = Removal::default();
        for (dir_env, key, dir) in self.snapshot_dirs() {
            if dir_env == env {
                self.remove_into(&dir, format!("{env}/{key}"), &mut removal)?;
            }
        }
        Ok(removal)
    }

    /// Removes expired snapshots (by the ttl they were made with), those
    /// that are not whole, and leftovers of interrupted removals.
    pub fn gc(&self) -> Result<Removal, StoreError> {
        let mut removal = Removal::default();
        for (env, key, dir) in self.snapshot_dirs() {
            let keep = read_meta(&dir).is_some_and(|m| {
                !m.expired(Duration::from_secs(m.ttl)) && dir.join("layer").is_dir()
            });
            if !keep {
                self.remove_into(&dir, format!("{env}/{key}"), &mut removal)?;
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.root.join(TRASH)) {
            for entry in entries.flatten() {
                removal.freed += tree_size(&entry.path());
                let _ = std::fs::remove_dir_all(entry.path());
                removal
                    .removed
                    .push(format!("{TRASH}/{}", entry.file_name().to_string_lossy()));
            }
        }
        Ok(removal)
    }

    fn remove_into(
        &self,
        dir: &Path,
        label: String,
        removal: &mut Removal,
    ) -> Result<(), StoreError> {
        let size = tree_size(dir);
        if self.unpublish(dir)? {
            removal.freed += size;
            removal.removed.push(label);
        } else {
            removal.kept_in_use.push(label);
        }
        Ok(())
    }

    /// (env, key, dir) of every entry that looks like a snapshot.
    fn snapshot_dirs(&self) -> Vec<(String, String, PathBuf)> {
        let mut found = Vec::new();
        let Ok(envs) = std::fs::read_dir(&self.root) else {
            return found;
        };
        for env in envs.flatten() {
            let env_name = env.file_name().to_string_lossy().into_owned();
            if env_name == TRASH || !env.path().is_dir() {
                continue;
            }
            let Ok(keys) = std::fs::read_dir(env.path()) else {
                continue;
            };
            for key in keys.flatten() {
                let name = key.file_name().to_string_lossy().into_owned();
                if key.path().is_dir() && !name.ends_with(".build-lock") {
                    found.push((env_name.clone(), name, key.path()));
                }
            }
        }
        found
    }
}

/// The metadata of a whole snapshot; `None` for anything else.
fn read_meta(dir: &Path) -> Option<Meta> {
    let text = std::fs::read(dir.join("meta.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Opens (creating) `path` and locks it; `None` if someone else holds a
/// conflicting lock.
fn lock_file(path: &Path, how: FlockArg) -> Result<Option<Flock<File>>, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_error("open", path))?;
    match Flock::lock(file, how) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(StoreError::Lock(path.to_owned(), e)),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("create", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", path))
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// Bytes in regular files under `dir` (symlinks not followed).
pub fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(entry.path()),
                Ok(meta) if meta.is_file() => total += meta.len(),
                _ => {}
            }
        }
    }
    total
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_snapshot(name: &str) -> (SnapshotStore, PathBuf, Meta) {
        let root = std::env::temp_dir().join(format!(
            "tollgate-cache-{name}-{}-{}",
            std::process::id(),
            now_nanos()
        ));
        let dir = root.join("env").join("k1");
        std::fs::create_dir_all(dir.join("layer")).unwrap();
        let meta = Meta {
            env: "env".into(),
            key: "k1".into(),
            created: now(),
            ttl: 3600,
            base: PathBuf::from("/"),
            repo: "/srv/repo".into(),
        };
        std::fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
        (SnapshotStore::new(root.clone()), root, meta)
    }

    #[test]
    fn a_brief_exclusive_lock_like_cache_lists_probe_does_not_turn_a_hit_into_a_miss() {
        let (store, root, meta) = store_with_snapshot("probe");
        let meta_path = root.join("env/k1/meta.json");
        let probe = lock_file(&meta_path, FlockArg::LockExclusiveNonblock)
            .unwrap()
            .unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(probe);
        });
        let found = store
            .lookup("env", "k1", Duration::from_secs(3600))
            .unwrap();
        release.join().unwrap();
        assert_eq!(found.map(|s| s.meta), Some(meta));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_snapshot_removed_while_it_is_looked_up_is_a_miss_not_an_error() {
        let (store, root, _) = store_with_snapshot("gone");
        let meta_path = root.join("env/k1/meta.json");
        let holder = lock_file(&meta_path, FlockArg::LockExclusiveNonblock)
            .unwrap()
            .unwrap();
        let doomed = root.join("env/k1");
        let remover = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::remove_dir_all(&doomed).unwrap();
            drop(holder);
        });
        let found = store.lookup("env", "k1", Duration::from_secs(3600));
        remover.join().unwrap();
        assert!(matches!(found, Ok(None)), "{found:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn keys_change_with_each_input_and_never_hold_a_secret_value() {
        let env = crate::environment::Environment::parse(
            Path::new("e.yaml"),
            "version: 1\nsetup: echo hi\nsecrets:\n  T: {from_env: T}\n",
        )
        .unwrap();
        let secrets = |v: &str| {
            let v = v.to_owned();
            env.resolve_secrets(move |_| Some(v.clone())).unwrap()
        };
        let a = key(&env, "/srv/a", &secrets("one")).unwrap();
        assert_eq!(a, key(&env, "/srv/a", &secrets("one")).unwrap());
        assert_ne!(a, key(&env, "/srv/b", &secrets("one")).unwrap());
        assert_ne!(a, key(&env, "/srv/a", &secrets("two")).unwrap());
        assert!(!a.contains("one") && a.len() == 64);
    }
}
