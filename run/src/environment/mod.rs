//! Environment files for `tollgate run` (DESIGN.md, "Environment files"),
//! parsed strictly.
//!
//! An environment file says what a run is built from (`base`, `setup`,
//! `maintenance`, `env`, `secrets`), how each phase may reach the network
//! (`internet`), how long its snapshot is reused (`cache`) and what it may
//! consume (`limits`). Parsing refuses anything it does not understand: an
//! unknown or duplicated key, a value of the wrong type, a key written with
//! no value, a variable that tollgate sets itself. Each error is one line
//! naming the file, the line and column when known, the key, and what to do.
//!
//! Values are checked while serde_yaml still knows where they are (custom
//! `Deserialize` impls that read a scalar as the text the user wrote), so
//! value errors keep their line and column. Two kinds of error are found
//! after parsing and name the file and key path but no line: a null value
//! (serde_yaml does not report where a null is) and a rule relating two
//! keys (a secret also set in `env`).
//!
//! Secret values are not in the file: it names where to read them, and
//! [`Environment::resolve_secrets`] reads them. No error message and no
//! `Debug` output ever contains a secret value.

mod file;
mod phase;
mod secret;
#[cfg(test)]
mod tests;
mod values;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tollgate_proxy::policy::{Policy, PolicyError};

use self::file::{null_hint, CacheFile, EnvironmentFile, Field, InternetFile, LimitsFile};
use self::phase::PhaseSpec;
pub use self::secret::Secret;
use self::secret::{check_secret_value, read_secret};
pub use self::values::parse_size;
use self::values::{
    check_environment_name, AbsolutePath, EnvName, EnvValue, EnvVars, Pids, Secrets, Size, Timeout,
    Ttl,
};

/// How long a cached environment is reused when `cache.ttl` is not set.
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// A parsed environment file. Relative paths in it (`from_file`, `file`)
/// are already resolved against the directory of the file; inline phase
/// policies are compiled.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The file it came from, as given to [`Environment::load`].
    pub path: PathBuf,
    /// `name:`, else the file stem; safe as one directory name component.
    pub name: String,
    /// The read-only lower layer of the sandbox's root; always absolute.
    pub base: PathBuf,
    /// The setup script; `None` when the key is absent (automatic setup from
    /// lock files), `Some("")` when it is explicitly empty (no setup).
    pub setup: Option<String>,
    /// The script run when a cached environment is resumed.
    pub maintenance: Option<String>,
    /// Variables for every phase, in file order.
    pub env: Vec<(String, String)>,
    /// Variables for setup and maintenance only, in file order, with where
    /// to read each value.
    pub secrets: Vec<(String, SecretSource)>,
    /// The network policy of each phase.
    pub internet: Internet,
    /// Snapshot reuse.
    pub cache: CacheSettings,
    /// Resource limits; `None` means no limit.
    pub limits: Limits,
}

/// Where a secret's value is read from when the run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `{from_env: VAR}`: a variable of the environment `tollgate run` runs in.
    Env(String),
    /// `{from_file: PATH}`: a file's contents, minus one trailing newline.
    File(PathBuf),
}

/// The network policy of each phase. Maintenance is not listed: it is part
/// of preparing the environment, like setup.
#[derive(Debug, Clone)]
pub struct Internet {
    /// `internet.setup`; default: unrestricted.
    pub setup: PhasePolicy,
    /// `internet.agent`; default: off.
    pub agent: PhasePolicy,
}

/// One phase's policy.
#[derive(Debug, Clone)]
pub enum PhasePolicy {
    /// `{file: PATH}`: a policy file, loaded when the run starts.
    File(PathBuf),
    /// A policy written in the environment file (read by the policy
    /// parser, so its errors name lines of the environment file), or the
    /// phase's default. Its origin is e.g. `web.yaml: internet.agent`.
    Inline(Arc<Policy>),
}

/// How long a snapshot of the set-up environment is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Age after which a snapshot is not used; zero disables the cache.
    pub ttl: Duration,
}

impl CacheSettings {
    /// Whether snapshots are taken and reused at all (`ttl` not zero).
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }
}

/// Resource limits of a run; `None` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Wall-clock limit of the setup phase; never zero.
    pub setup_timeout: Option<Duration>,
    /// Wall-clock limit of the agent phase; never zero.
    pub agent_timeout: Option<Duration>,
    /// Memory limit in bytes; never zero.
    pub memory: Option<u64>,
    /// Maximum number of processes and threads; never zero.
    pub pids: Option<u64>,
    /// Bytes each of a phase's tmpfs mounts (/tmp, /dev/shm) may hold.
    pub tmpfs: Option<u64>,
}

/// Why an environment file, or one of its secrets, cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EnvironmentError {
    /// The file could not be read.
    #[error("{}: cannot read environment file: {source}: check the path and its permissions", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file holds no YAML document (or only comments).
    #[error("{}: is empty: an environment needs at least `version: 1`", .path.display())]
    Empty { path: PathBuf },
    /// Bad YAML, or a key or value rejected while parsing; `position` is
    /// the 1-based (line, column) when serde_yaml knows it. `message`
    /// starts with the key path when the error is inside a key.
    #[error("{}{}: {message}", .path.display(), line_column(*.position))]
    Parse {
        path: PathBuf,
        position: Option<(usize, usize)>,
        message: String,
    },
    /// A rule relating keys, checked after parsing; `key` is a dotted path.
    #[error("{}: {key}: {message}", .path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A secret's value could not be read; the message never holds a value.
    #[error("secret {name}: {message}")]
    Secret { name: String, message: String },
}

/// `:line:column`, or nothing when the position is unknown.
fn line_column(position: Option<(usize, usize)>) -> String {
    position.map_or_else(String::new, |(line, column)| format!(":{line}:{column}"))
}

impl Environment {
    /// Reads and parses the environment file at `path`.
    pub fn load(path: &Path) -> Result<Environment, EnvironmentError> {
        let text = std::fs::read_to_string(path).map_err(|source| EnvironmentError::Read {
            path: path.to_owned(),
            source,
        })?;
        Environment::parse(path, &text)
    }

    /// Parses `text`, the contents of the environment file at `path`;
    /// `path` names the file in errors, gives the default `name`, and is
    /// what relative `from_file` and `file` paths are resolved against.
    pub fn parse(path: &Path, text: &str) -> Result<Environment, EnvironmentError> {
        // It holds policies: read as strictly as a policy file (too deep
        // and tags before serde_yaml sees it; duplicate keys after, so that
        // its own errors keep their hints).
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        strict(
            path,
            tollgate_proxy::policy::prescan_yaml(&path.display().to_string(), text),
        )?;
        let file: Option<EnvironmentFile> =
            serde_yaml::from_str(text).map_err(|error| parse_error(path, &error))?;
        strict(
            path,
            tollgate_proxy::policy::check_yaml(&path.display().to_string(), text),
        )?;
        let file = file.ok_or_else(|| EnvironmentError::Empty {
            path: path.to_owned(),
        })?;
        Environment::from_file(path, file)
    }

    /// Reads every secret's value: from_env via `lookup` (the invoking
    /// environment in production), from_file read from disk (one trailing
    /// "\n" or "\r\n" trimmed). A value must be non-empty UTF-8 without NUL
    /// bytes, short enough to be passed as an environment variable.
    pub fn resolve_secrets(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<Secret>, EnvironmentError> {
        self.secrets
            .iter()
            .map(|(name, source)| {
                let value = read_secret(source, &lookup)
                    .and_then(|value| check_secret_value(name, source, value))
                    .map_err(|message| EnvironmentError::Secret {
                        name: name.clone(),
                        message,
                    })?;
                Ok(Secret {
                    name: name.clone(),
                    value,
                })
            })
            .collect()
    }

    /// Applies defaults, resolves relative paths, and checks what could not
    /// be checked while parsing: null values, and rules that relate keys.
    fn from_file(path: &Path, file: EnvironmentFile) -> Result<Environment, EnvironmentError> {
        if file.version.given(path, "version")?.is_none() {
            return Err(invalid(
                path,
                "version",
                "missing: add `version: 1` at the top of the file".to_owned(),
            ));
        }
        let name = match file.name.given(path, "name")? {
            Some(EnvName(name)) => name,
            None => name_from_file_stem(path).map_err(|message| invalid(path, "name", message))?,
        };
        let env = env_from(path, file.env)?;
        let secrets = secrets_from(path, file.secrets)?;
        if let Some((secret, _)) = secrets
            .iter()
            .find(|(secret, _)| env.iter().any(|(var, _)| var == secret))
        {
            return Err(invalid(
                path,
                &format!("secrets.{secret}"),
                format!("{secret} is also set in env: remove it from one of them"),
            ));
        }
        let internet = internet_from(path, file.internet)?;
        Ok(Environment {
            path: path.to_owned(),
            name,
            base: file
                .base
                .given(path, "base")?
                .map_or_else(|| PathBuf::from("/"), |AbsolutePath(base)| base),
            setup: file.setup.given(path, "setup")?,
            maintenance: file.maintenance.given(path, "maintenance")?,
            env,
            secrets,
            internet,
            cache: cache_from(path, file.cache)?,
            limits: limits_from(path, file.limits)?,
        })
    }
}

/// An error found after parsing, naming the file and the key.
fn invalid(path: &Path, key: &str, message: String) -> EnvironmentError {
    EnvironmentError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
        message,
    }
}

/// `env`, in file order, every value given.
fn env_from(path: &Path, env: Field<EnvVars>) -> Result<Vec<(String, String)>, EnvironmentError> {
    let Some(EnvVars(vars)) = env.given(path, "env")? else {
        return Ok(Vec::new());
    };
    vars.into_iter()
        .map(|(name, value)| {
            let key = format!("env.{name}");
            match value.given(path, &key)? {
                Some(EnvValue(value)) => Ok((name, value)),
                // A key in a mapping always has a value, if only null.
                None => Err(invalid(path, &key, null_hint(&key))),
            }
        })
        .collect()
}

/// `secrets`, in file order, relative `from_file` paths resolved.
fn secrets_from(
    path: &Path,
    secrets: Field<Secrets>,
) -> Result<Vec<(String, SecretSource)>, EnvironmentError> {
    Ok(secrets
        .given(path, "secrets")?
        .map_or_else(Vec::new, |Secrets(secrets)| secrets)
        .into_iter()
        .map(|(name, source)| (name, source.resolve_against(path)))
        .collect())
}

/// `internet`, each phase's policy compiled, or its default.
fn internet_from(path: &Path, internet: Field<InternetFile>) -> Result<Internet, EnvironmentError> {
    let internet = internet.given(path, "internet")?.unwrap_or_default();
    Ok(Internet {
        setup: phase_policy(
            path,
            "setup",
            internet.setup.given(path, "internet.setup")?,
            "unrestricted",
        )?,
        agent: phase_policy(
            path,
            "agent",
            internet.agent.given(path, "internet.agent")?,
            "off",
        )?,
    })
}

/// `cache`, with the default time to live.
fn cache_from(path: &Path, cache: Field<CacheFile>) -> Result<CacheSettings, EnvironmentError> {
    let ttl = match cache.given(path, "cache")? {
        Some(cache) => cache.ttl.given(path, "cache.ttl")?,
        None => None,
    };
    Ok(CacheSettings {
        ttl: ttl.map_or(DEFAULT_CACHE_TTL, |Ttl(ttl)| ttl),
    })
}

/// `limits`; an absent limit is no limit.
fn limits_from(path: &Path, limits: Field<LimitsFile>) -> Result<Limits, EnvironmentError> {
    let limits = limits.given(path, "limits")?.unwrap_or_default();
    Ok(Limits {
        setup_timeout: limits
            .setup_timeout
            .given(path, "limits.setup_timeout")?
            .map(|Timeout(timeout)| timeout),
        agent_timeout: limits
            .agent_timeout
            .given(path, "limits.agent_timeout")?
            .map(|Timeout(timeout)| timeout),
        memory: limits
            .memory
            .given(path, "limits.memory")?
            .map(|Size(bytes)| bytes),
        pids: limits
            .pids
            .given(path, "limits.pids")?
            .map(|Pids(pids)| pids),
        tmpfs: limits
            .tmpfs
            .given(path, "limits.tmpfs")?
            .map(|Size(bytes)| bytes),
    })
}

/// A strictness check's verdict (duplicate keys, tags, deep nesting, as in
/// policy files) as an environment file's error.
fn strict(path: &Path, checked: Result<(), PolicyError>) -> Result<(), EnvironmentError> {
    match checked {
        Ok(()) => Ok(()),
        Err(PolicyError::Syntax {
            line,
            column,
            message,
            ..
        }) => Err(EnvironmentError::Parse {
            path: path.to_owned(),
            position: Some((line, column)),
            message,
        }),
        Err(other) => Err(EnvironmentError::Parse {
            path: path.to_owned(),
            position: None,
            message: other.to_string(),
        }),
    }
}

/// Turns a serde_yaml error into `file:line:column: key: message`, with a
/// hint for YAML features that trip people up in this format.
fn parse_error(path: &Path, error: &serde_yaml::Error) -> EnvironmentError {
    const HINTS: &[(&str, &str)] = &[
        (
            "scanning an alias",
            "a value that starts with `*` must be quoted, e.g. \"*.example.com\"",
        ),
        (
            "unknown anchor",
            "an alias `*name` needs an anchor `&name` before it; quote values that start with `*`",
        ),
        (
            "repetition limit exceeded",
            "YAML aliases expand to too much data: write the values out",
        ),
        ("recursion limit exceeded", "the YAML is nested too deeply"),
        (
            "more than one document",
            "an environment file holds one YAML document: remove the `---` separators",
        ),
        ("duplicate field", "keep one"),
        (
            "unknown field `<<`",
            "YAML merge keys (`<<`) are not supported: write the keys out",
        ),
    ];
    let position = error
        .location()
        .map(|location| (location.line(), location.column()));
    let mut message = error.to_string();
    if let Some((line, column)) = position {
        message = without_position(&message, line, column);
    }
    if let Some((_, hint)) = HINTS.iter().find(|(needle, _)| message.contains(needle)) {
        message = format!("{message}: {hint}");
    }
    EnvironmentError::Parse {
        path: path.to_owned(),
        position,
        message: escape_controls(&message),
    }
}

/// Escapes control characters, which serde echoes from the file as they
/// are (an unknown key "a\nb"), so that the message stays one line and
/// cannot drive the terminal.
fn escape_controls(message: &str) -> String {
    message
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Removes serde_yaml's ` at line L column C` (reported separately), which
/// ends its own messages and precedes the context in libyaml's.
fn without_position(message: &str, line: usize, column: usize) -> String {
    let at = format!(" at line {line} column {column}");
    if let Some(head) = message.strip_suffix(&at) {
        return head.to_owned();
    }
    message.replacen(&format!("{at},"), ",", 1)
}

/// The default environment name: the file stem, if it is a valid name.
fn name_from_file_stem(path: &Path) -> Result<String, String> {
    let stem = path.file_stem().map(|stem| stem.to_string_lossy());
    match stem {
        Some(stem) if check_environment_name(&stem).is_ok() => Ok(stem.into_owned()),
        _ => Err(format!(
            "not set, and the file name {:?} is not a valid environment name: \
             add `name:` with letters, digits, '.', '_' or '-' (at most 64, \
             starting with a letter or digit)",
            path.file_name().unwrap_or(path.as_os_str()),
        )),
    }
}

/// The policy of one phase, or its default (`default_mode` inline).
fn phase_policy(
    path: &Path,
    phase: &str,
    spec: Option<PhaseSpec>,
    default_mode: &str,
) -> Result<PhasePolicy, EnvironmentError> {
    let origin = format!("{}: internet.{phase}", path.display());
    let compiled = match spec {
        Some(PhaseSpec::File(file)) => return Ok(PhasePolicy::File(resolve_against(path, file))),
        Some(PhaseSpec::Inline(file)) => Policy::from_file(&origin, *file),
        None => Policy::from_yaml(
            &format!("{origin} (default)"),
            &format!("version: 1\nmode: {default_mode}\n"),
        ),
    };
    compiled
        .map(|policy| PhasePolicy::Inline(Arc::new(policy)))
        .map_err(|error| invalid(path, &format!("internet.{phase}"), error.to_string()))
}

/// `relative` resolved against the directory of the environment file.
fn resolve_against(env_file: &Path, relative: PathBuf) -> PathBuf {
    match env_file.parent() {
        Some(dir) if relative.is_relative() => dir.join(relative),
        _ => relative,
    }
}
