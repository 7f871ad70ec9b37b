//! Everything that can go wrong with the CA, its files and minting.
//!
//! Each message is one line that says what is wrong and what to do, because
//! it is printed as is by the CLI and written to logs.

use std::fmt;
use std::path::{Path, PathBuf};

/// An error from creating or loading the CA, minting a leaf, or reading roots.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// `ca.crt` or `ca.key` is not there.
    #[error("{} does not exist: run `tollgate ca init --dir {}` to create a CA there", .path.display(), .dir.display())]
    MissingCaFile { path: PathBuf, dir: PathBuf },

    /// A CA file is a directory, a socket, a device...
    #[error("{} is not a regular file: point --ca-dir at a directory made by `tollgate ca init`", .path.display())]
    NotAFile { path: PathBuf },

    /// The CA directory given to `ca init` is a file.
    #[error("{} exists and is not a directory: pass a directory to `tollgate ca init --dir`", .path.display())]
    NotADirectory { path: PathBuf },

    /// A file that should hold a few KiB of PEM is much larger.
    #[error("{} is larger than {limit} bytes, too large for a PEM file: check that the path is right", .path.display())]
    FileTooLarge { path: PathBuf, limit: u64 },

    /// The OS refused an operation on a path.
    #[error("cannot {action} {}: {source}: check the path and its permissions", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The CA key can be read or written by someone else.
    #[error("{} can be read or written by group or others (mode {mode:04o}): run chmod 600 {}", .path.display(), .path.display())]
    KeyPermissions { path: PathBuf, mode: u32 },

    /// The CA key belongs to another user, who could have planted it.
    #[error("{} is owned by uid {owner}, not by the current user (uid {uid}): run tollgate as its owner or run chown {uid} {}", .path.display(), .path.display())]
    KeyOwner { path: PathBuf, owner: u32, uid: u32 },

    /// The file holds no PEM certificate, or more than one.
    #[error("{} does not hold exactly one PEM certificate ({reason}): it must hold the CA certificate made by `tollgate ca init`", .path.display())]
    NotACertificate { path: PathBuf, reason: OneLine },

    /// The PEM certificate is not a well-formed X.509 certificate.
    #[error("{} holds a certificate tollgate cannot read ({reason}): replace it with the one made by `tollgate ca init`", .path.display())]
    BadCertificate { path: PathBuf, reason: OneLine },

    /// The file holds no usable PEM private key.
    #[error("{} does not hold an unencrypted PKCS#8 PEM private key ({reason}): convert it with `openssl pkcs8 -topk8 -nocrypt`, or create a new CA with `tollgate ca init`", .path.display())]
    NotAPrivateKey { path: PathBuf, reason: OneLine },

    /// The certificate does not have basicConstraints CA:TRUE.
    #[error("{} is not a CA certificate (no basicConstraints CA:TRUE): use a CA certificate, e.g. one made by `tollgate ca init`", .path.display())]
    NotACa { path: PathBuf },

    /// The certificate's keyUsage does not include keyCertSign.
    #[error("{} has a keyUsage without keyCertSign, so it may not sign certificates: use a CA certificate made for signing, e.g. by `tollgate ca init`", .path.display())]
    CaCannotSign { path: PathBuf },

    /// The certificate's extendedKeyUsage excludes serverAuth, so clients
    /// that honour it on roots (OpenSSL) refuse the leaves it signs.
    #[error("{} has an extendedKeyUsage without serverAuth, so clients will refuse the certificates it issues: use a CA without that restriction, e.g. one made by `tollgate ca init`", .path.display())]
    CaNotForServers { path: PathBuf },

    /// The private key is not the one the certificate was made for.
    #[error("{} does not match the public key in {}: put the key of that certificate there, or create a new CA with `tollgate ca init`", .key.display(), .cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },

    /// The CA certificate is past its notAfter.
    #[error("{} expired on {not_after}: move ca.crt and ca.key away, run `tollgate ca init`, and give sandboxes the new certificate", .path.display())]
    CaExpired { path: PathBuf, not_after: String },

    /// The CA loaded, but a certificate it issues does not verify against it.
    #[error("{} cannot issue certificates that verify against it ({reason}): create a CA with `tollgate ca init` instead", .path.display())]
    CaUnusable { path: PathBuf, reason: OneLine },

    /// `ca init` found a CA file already there.
    #[error("{} already exists: refusing to overwrite a CA; use it as is, or move it away and run `tollgate ca init` again", .path.display())]
    CaExists { path: PathBuf },

    /// Generating the CA key or certificate failed inside the crypto library.
    #[error("cannot generate the CA ({reason}): the crypto backend failed; retry, and report a bug if it persists")]
    Generate { reason: OneLine },

    /// A host name that cannot appear in a certificate.
    #[error("cannot mint a certificate for {name:?}: {reason}; only valid DNS names and IP addresses can be intercepted")]
    InvalidName { name: String, reason: &'static str },

    /// Minting a leaf failed (the CA key refused to sign, the RNG failed...).
    #[error("minting a certificate for {name} failed ({reason}): retry; if it persists, recreate the CA with `tollgate ca init`")]
    Mint { name: String, reason: OneLine },

    /// An `--upstream-ca` file that holds no usable certificate.
    #[error("--upstream-ca {}: {reason}: pass a PEM file with one or more -----BEGIN CERTIFICATE----- blocks", .path.display())]
    UpstreamCa { path: PathBuf, reason: OneLine },

    /// The PEM given to `trust_bundle` is not a certificate.
    #[error("the CA certificate for the sandbox trust bundle is not a PEM certificate ({reason}): pass Authority::cert_pem()")]
    BundleCa { reason: OneLine },
}

impl CertError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        CertError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A reason from another library, flattened to one line so that every
/// [`CertError`] message stays on one line whatever the library says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneLine(String);

impl OneLine {
    pub(crate) fn new(reason: impl fmt::Display) -> Self {
        let text = reason.to_string();
        OneLine(text.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

impl fmt::Display for OneLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for OneLine {
    fn from(reason: &str) -> Self {
        OneLine::new(reason)
    }
}
