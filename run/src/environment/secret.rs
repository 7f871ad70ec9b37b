//! Secret values: read when a run starts, from the invoking environment or
//! a file; never shown by `Debug` or put in an error.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::SecretSource;

/// Linux's limit on one `NAME=value` string passed to execve(2), counting
/// its terminating NUL (MAX_ARG_STRLEN): a longer secret could never reach
/// a phase's environment.
pub(super) const MAX_ENV_STRING: usize = 128 * 1024;

/// A secret with its value, as read by [`Environment::resolve_secrets`].
/// `Debug` shows the name only.
pub struct Secret {
    /// The variable it is set as.
    pub name: String,
    pub(super) value: String,
}

impl Secret {
    /// The secret's value. Never log it, never put it in an error.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("value", &format_args!("<redacted>"))
            .finish()
    }
}

/// Reads a secret's raw value; the error says what to do.
pub(super) fn read_secret(
    source: &SecretSource,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    match source {
        SecretSource::Env(var) => lookup(var).ok_or_else(|| {
            format!(
                "environment variable {var} is not set: export it before tollgate run, \
                 or use from_file"
            )
        }),
        SecretSource::File(path) => read_secret_file(path),
    }
}

/// Reads a secret file, at most as much as could ever be passed on, and
/// trims one trailing newline.
fn read_secret_file(path: &Path) -> Result<String, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|file| {
            // Room for a value that fills MAX_ENV_STRING plus "\r\n": a
            // larger file is refused by the length check, not read whole.
            file.take(MAX_ENV_STRING as u64 + 2).read_to_end(&mut bytes)
        })
        .map_err(|error| {
            format!(
                "cannot read file {}: {error}: check the path and its permissions",
                path.display()
            )
        })?;
    let mut value = String::from_utf8(bytes)
        .map_err(|_| format!("file {} is not UTF-8 text", path.display()))?;
    if value.ends_with("\r\n") {
        value.truncate(value.len() - 2);
    } else if value.ends_with('\n') {
        value.truncate(value.len() - 1);
    }
    Ok(value)
}

/// Refuses a value that cannot be, or should not be, set as the variable
/// `name`. Messages describe the value, never quote it.
pub(super) fn check_secret_value(
    name: &str,
    source: &SecretSource,
    value: String,
) -> Result<String, String> {
    let origin = match source {
        SecretSource::Env(var) => format!("environment variable {var}"),
        SecretSource::File(path) => format!("file {}", path.display()),
    };
    if value.is_empty() {
        return Err(format!("{origin} is empty: give the secret a value"));
    }
    if value.contains('\0') {
        return Err(format!(
            "{origin} holds a NUL byte, which an environment variable cannot hold"
        ));
    }
    // `NAME=value` and its terminating NUL.
    if name.len() + value.len() + 2 > MAX_ENV_STRING {
        return Err(format!(
            "{origin} is too long: an environment variable holds at most 128 KiB"
        ));
    }
    Ok(value)
}
