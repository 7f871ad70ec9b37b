//! The CA's two files on disk: where they are, reading them safely, and
//! writing them so that a key is never readable by anyone else.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::CertError;

/// File name of the CA certificate inside a CA directory (DESIGN.md, `ca init`).
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key inside a CA directory (DESIGN.md, `ca init`).
pub const CA_KEY_FILE: &str = "ca.key";

/// The certificate is public: sandboxes and users install it.
const CERT_MODE: u32 = 0o644;
/// The key is the keys to every intercepted site: owner only (DESIGN.md).
const KEY_MODE: u32 = 0o600;
/// A CA directory that `create_ca` makes holds a secret: owner only.
const DIR_MODE: u32 = 0o700;
/// Group and other permission bits; any of them on the key is refused.
const GROUP_OTHER_BITS: u32 = 0o077;
/// A CA certificate or key is a few KiB, a PEM bundle of roots a few hundred
/// KiB; 16 MiB is far above both and stops a mistaken path (a log, /dev/zero)
/// from being read into memory.
pub(crate) const MAX_PEM_FILE_BYTES: u64 = 16 << 20;

/// Paths of `ca.crt` and `ca.key` in a CA directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    /// The CA certificate, PEM.
    pub cert: PathBuf,
    /// The CA private key, PKCS#8 PEM, mode 0600.
    pub key: PathBuf,
}

impl CaFiles {
    /// The CA files inside `dir`; nothing is checked.
    pub fn in_dir(dir: &Path) -> CaFiles {
        CaFiles {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
        }
    }
}

/// Reads a CA file that anyone may read (the certificate).
pub(crate) fn read_ca_cert(path: &Path, dir: &Path) -> Result<Vec<u8>, CertError> {
    let file = open_ca_file(path, dir)?;
    read_limited(file, path)
}

/// Reads the CA key after checking that only the current user can use it:
/// a key someone else can read lets them impersonate any site to every
/// sandbox, and a key someone else owns may have been planted by them.
pub(crate) fn read_ca_key(path: &Path, dir: &Path) -> Result<Vec<u8>, CertError> {
    let file = open_ca_file(path, dir)?;
    // Check the opened file, not the path, so a swap in between changes nothing.
    let meta = file
        .metadata()
        .map_err(|e| CertError::io("inspect", path, e))?;
    check_key_owner(path, meta.uid())?;
    check_key_mode(path, meta.mode())?;
    read_limited(file, path)
}

fn check_key_owner(path: &Path, owner: u32) -> Result<(), CertError> {
    let uid = nix::unistd::geteuid().as_raw();
    if owner != uid {
        return Err(CertError::KeyOwner {
            path: path.to_path_buf(),
            owner,
            uid,
        });
    }
    Ok(())
}

fn check_key_mode(path: &Path, mode: u32) -> Result<(), CertError> {
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(CertError::KeyPermissions {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Opens a CA file, telling a missing file (run `ca init`) from other errors,
/// and refusing anything but a regular file before opening it (opening a FIFO
/// would block).
fn open_ca_file(path: &Path, dir: &Path) -> Result<File, CertError> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => CertError::MissingCaFile {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        },
        _ => CertError::io("inspect", path, e),
    })?;
    if !meta.is_file() {
        return Err(CertError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    File::open(path).map_err(|e| CertError::io("open", path, e))
}

/// Opens and reads a PEM file given on the command line (`--upstream-ca`).
pub(crate) fn read_pem_file(path: &Path) -> Result<Vec<u8>, CertError> {
    let meta = fs::metadata(path).map_err(|e| CertError::io("read", path, e))?;
    if !meta.is_file() {
        return Err(CertError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let file = File::open(path).map_err(|e| CertError::io("open", path, e))?;
    read_limited(file, path)
}

/// Reads a whole file, refusing one over [`MAX_PEM_FILE_BYTES`].
fn read_limited(file: File, path: &Path) -> Result<Vec<u8>, CertError> {
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CertError::io("read", path, e))?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(CertError::FileTooLarge {
            path: path.to_path_buf(),
            limit: MAX_PEM_FILE_BYTES,
        });
    }
    Ok(bytes)
}

/// Creates `dir` with mode 0700 (and any missing parents) if it is missing;
/// an existing directory is left as it is.
pub(crate) fn ensure_ca_dir(dir: &Path) -> Result<(), CertError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(CertError::NotADirectory {
            path: dir.to_path_buf(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| CertError::io("create directory", dir, e)),
        Err(e) => Err(CertError::io("inspect", dir, e)),
    }
}

/// Fails if either CA file exists (even as a dangling symlink).
pub(crate) fn refuse_existing(files: &CaFiles) -> Result<(), CertError> {
    for path in [&files.cert, &files.key] {
        match fs::symlink_metadata(path) {
            Ok(_) => {
                return Err(CertError::CaExists {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(CertError::io("inspect", path, e)),
        }
    }
    Ok(())
}

/// Writes both CA files without ever replacing an existing one.
///
/// Each file is first written in full to a temporary name (created with its
/// final mode, so the key is never readable by others, not even for a moment)
/// and then hard-linked to its real name: `link` fails if the name exists, so
/// two concurrent `ca init`s cannot overwrite each other, and a crash leaves
/// at worst a stray temporary file, never a truncated `ca.key`.
pub(crate) fn write_ca_files(
    dir: &Path,
    files: &CaFiles,
    cert_pem: &str,
    key_pem: &str,
    nonce: u64,
) -> Result<(), CertError> {
    let cert_tmp = write_temp(dir, CA_CERT_FILE, nonce, cert_pem.as_bytes(), CERT_MODE)?;
    let key_tmp = write_temp(dir, CA_KEY_FILE, nonce, key_pem.as_bytes(), KEY_MODE)?;
    link_new(&cert_tmp.path, &files.cert)?;
    if let Err(e) = link_new(&key_tmp.path, &files.key) {
        // The certificate was linked by us a moment ago; without its key it is
        // useless and would make the next `ca init` refuse.
        let _ = fs::remove_file(&files.cert);
        return Err(e);
    }
    sync_dir(dir)
}

/// A temporary file removed when dropped (after it has been linked, or on error).
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn write_temp(
    dir: &Path,
    name: &str,
    nonce: u64,
    contents: &[u8],
    mode: u32,
) -> Result<TempFile, CertError> {
    let path = dir.join(format!(".{name}.{}.{nonce:016x}.tmp", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(|e| CertError::io("create", &path, e))?;
    let temp = TempFile { path };
    // The umask may have removed bits from the certificate's mode; set it exactly.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(|e| CertError::io("set permissions on", &temp.path, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| CertError::io("write", &temp.path, e))?;
    Ok(temp)
}

/// Gives `from` the additional name `to`, failing if `to` exists.
fn link_new(from: &Path, to: &Path) -> Result<(), CertError> {
    fs::hard_link(from, to).map_err(|e| match e.kind() {
        ErrorKind::AlreadyExists => CertError::CaExists {
            path: to.to_path_buf(),
        },
        _ => CertError::io("create", to, e),
    })
}

/// Makes the new directory entries durable.
fn sync_dir(dir: &Path) -> Result<(), CertError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CertError::io("sync", dir, e))
}
