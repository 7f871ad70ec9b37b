//! Cache snapshots of the setup phase (DESIGN.md "Cache snapshots"): the
//! key that says whether a snapshot can stand in for running setup again.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

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
