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

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

/// The environment file format version this build reads.
const FORMAT_VERSION: &str = "1";

/// Variables tollgate sets inside every sandbox (proxy and CA bundle, and
/// `BASH_ENV` for the phase scripts); an environment file may not set them.
const SET_BY_TOLLGATE: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "CARGO_HTTP_CAINFO",
    "npm_config_cafile",
    "BASH_ENV",
];

/// Linux's limit on one `NAME=value` string passed to execve(2), counting
/// its terminating NUL (MAX_ARG_STRLEN): a longer secret could never reach
/// a phase's environment.
const MAX_ENV_STRING: usize = 128 * 1024;

/// How long a cached environment is reused when `cache.ttl` is not set.
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// A parsed environment file. Relative paths in it (`from_file`, `file`)
/// are already resolved against the directory of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Internet {
    /// `internet.setup`; default: unrestricted.
    pub setup: PhasePolicy,
    /// `internet.agent`; default: off.
    pub agent: PhasePolicy,
}

/// One phase's policy, still to be compiled by the proxy's policy loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhasePolicy {
    /// `{file: PATH}`: a policy file.
    File(PathBuf),
    /// An inline policy: `yaml` is the mapping from the environment file,
    /// with `version: 1` prepended when absent; `origin` names it in the
    /// policy loader's errors, e.g. `web.yaml: internet.agent`. Line numbers
    /// in those errors count lines of `yaml`, not of the environment file.
    Inline { origin: String, yaml: String },
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
}

/// A secret with its value, as read by [`Environment::resolve_secrets`].
/// `Debug` shows the name only.
pub struct Secret {
    /// The variable it is set as.
    pub name: String,
    value: String,
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
        let file: Option<EnvironmentFile> =
            serde_yaml::from_str(text).map_err(|error| parse_error(path, &error))?;
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
            internet: internet_from(path, file.internet)?,
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

/// `internet`, with each phase's default.
fn internet_from(path: &Path, internet: Field<InternetFile>) -> Result<Internet, EnvironmentError> {
    let internet = internet.given(path, "internet")?.unwrap_or_default();
    Ok(Internet {
        setup: phase_policy(
            path,
            "setup",
            internet.setup.given(path, "internet.setup")?,
            "unrestricted",
        ),
        agent: phase_policy(
            path,
            "agent",
            internet.agent.given(path, "internet.agent")?,
            "off",
        ),
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
    })
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
) -> PhasePolicy {
    let origin = format!("{}: internet.{phase}", path.display());
    match spec {
        Some(PhaseSpec::File(file)) => PhasePolicy::File(resolve_against(path, file)),
        Some(PhaseSpec::Inline(yaml)) => PhasePolicy::Inline { origin, yaml },
        None => PhasePolicy::Inline {
            origin: format!("{origin} (default)"),
            yaml: format!("version: 1\nmode: {default_mode}\n"),
        },
    }
}

/// `relative` resolved against the directory of the environment file.
fn resolve_against(env_file: &Path, relative: PathBuf) -> PathBuf {
    match env_file.parent() {
        Some(dir) if relative.is_relative() => dir.join(relative),
        _ => relative,
    }
}

/// Reads a secret's raw value; the error says what to do.
fn read_secret(
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
fn check_secret_value(name: &str, source: &SecretSource, value: String) -> Result<String, String> {
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

// ---------------------------------------------------------------------------
// The file as written. Every struct denies unknown fields, and every key is a
// `Field`, so that a null value is refused rather than read as absent.

#[derive(Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of environment settings, starting with `version: 1`"
)]
struct EnvironmentFile {
    version: Field<Version>,
    name: Field<EnvName>,
    base: Field<AbsolutePath>,
    setup: Field<String>,
    maintenance: Field<String>,
    env: Field<EnvVars>,
    secrets: Field<Secrets>,
    internet: Field<InternetFile>,
    cache: Field<CacheFile>,
    limits: Field<LimitsFile>,
}

#[derive(Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of phases to policies, e.g. {setup: {mode: unrestricted}, agent: {mode: off}}"
)]
struct InternetFile {
    setup: Field<PhaseSpec>,
    agent: Field<PhaseSpec>,
}

#[derive(Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping such as {ttl: 12h}"
)]
struct CacheFile {
    ttl: Field<Ttl>,
}

#[derive(Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping such as {setup_timeout: 30m, agent_timeout: 1h, memory: 8G, pids: 4096}"
)]
struct LimitsFile {
    setup_timeout: Field<Timeout>,
    agent_timeout: Field<Timeout>,
    memory: Field<Size>,
    pids: Field<Pids>,
}

/// A key's value as written. Absent (the default) and null (`key:` with
/// nothing after it, `~`, `null`) are told apart: null is refused, with a
/// hint, rather than silently meaning absent (an empty `setup:` must not
/// mean automatic setup).
#[derive(Default)]
enum Field<T> {
    #[default]
    Absent,
    Null,
    Given(T),
}

impl<T> Field<T> {
    /// The value, `None` when the key is absent; an error naming `key` when
    /// it is null. serde_yaml does not report where a null is, so the error
    /// has the key path but no line.
    fn given(self, path: &Path, key: &str) -> Result<Option<T>, EnvironmentError> {
        match self {
            Field::Absent => Ok(None),
            Field::Given(value) => Ok(Some(value)),
            Field::Null => Err(invalid(path, key, null_hint(key))),
        }
    }
}

/// What to write instead of a null value for `key`.
fn null_hint(key: &str) -> String {
    match key {
        "setup" => "has no value: write `setup: \"\"` for no setup, or remove the key for \
                    automatic setup"
            .to_owned(),
        _ if key.starts_with("env.") => "has no value: write \"\" for an empty value".to_owned(),
        _ => "has no value: give it one, or remove the key".to_owned(),
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_option(FieldVisitor(PhantomData))
    }
}

struct FieldVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for FieldVisitor<T> {
    type Value = Field<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_none<E: de::Error>(self) -> Result<Field<T>, E> {
        Ok(Field::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Field<T>, E> {
        Ok(Field::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Field<T>, D::Error> {
        T::deserialize(deserializer).map(Field::Given)
    }
}

/// Reads one scalar as the text written in the file (`8G`, `30m`, `3.10`:
/// numbers are not reinterpreted) and hands it to `parse`, so that what
/// `parse` rejects is reported at the scalar's line and column.
fn scalar<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    deserializer.deserialize_str(ScalarText { expecting, parse })
}

struct ScalarText<F> {
    expecting: &'static str,
    parse: F,
}

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for ScalarText<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.parse)(text).map_err(E::custom)
    }
}

/// `version:`, which must be 1.
struct Version;

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "the format version, 1", |text| {
            if text == FORMAT_VERSION {
                Ok(Version)
            } else {
                Err(format!(
                    "unsupported version {text:?}: this tollgate reads version {FORMAT_VERSION}"
                ))
            }
        })
    }
}

/// `name:`, used as a directory name.
struct EnvName(String);

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "an environment name", |text| {
            check_environment_name(text).map(|()| EnvName(text.to_owned()))
        })
    }
}

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`: never empty, `.` or `..`, never
/// holds a `/`.
fn check_environment_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid environment name: use letters, digits, '.', '_' or '-' \
             (at most 64, starting with a letter or digit)"
        ))
    }
}

/// `base:`, which must be absolute.
struct AbsolutePath(PathBuf);

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "an absolute path", |text| {
            let path = PathBuf::from(text);
            if path.is_absolute() {
                Ok(AbsolutePath(path))
            } else {
                Err(format!(
                    "{text:?} is not an absolute path: write it from the root, e.g. /srv/images/node"
                ))
            }
        })
    }
}

/// `env:`, in file order; values are checked for null after parsing.
struct EnvVars(Vec<(String, Field<EnvValue>)>);

impl<'de> Deserialize<'de> for EnvVars {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(VariableMap::new(
                "a mapping of variable names to values, e.g. {NODE_ENV: test}",
            ))
            .map(EnvVars)
    }
}

/// `secrets:`, in file order, with paths as written.
struct Secrets(Vec<(String, SourceSpec)>);

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(VariableMap::new(
                "a mapping of variable names to sources, e.g. {NPM_TOKEN: {from_env: NPM_TOKEN}}",
            ))
            .map(Secrets)
    }
}

/// Visits a mapping of variable names to `V`s, keeping file order.
struct VariableMap<V> {
    expecting: &'static str,
    values: PhantomData<V>,
}

impl<V> VariableMap<V> {
    fn new(expecting: &'static str) -> Self {
        VariableMap {
            expecting,
            values: PhantomData,
        }
    }
}

impl<'de, V: Deserialize<'de>> Visitor<'de> for VariableMap<V> {
    type Value = Vec<(String, V)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        while let Some(name) = map.next_key_seed(NewVariableName { seen: &seen })? {
            let value = map.next_value()?;
            seen.insert(name.clone());
            entries.push((name, value));
        }
        Ok(entries)
    }
}

/// A key of `env` or `secrets`: a variable name, not one tollgate sets, not
/// already in `seen`. Checked while reading the key, so that the error
/// points at it.
struct NewVariableName<'a> {
    seen: &'a HashSet<String>,
}

impl<'de> DeserializeSeed<'de> for NewVariableName<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        scalar(deserializer, "a variable name", |name| {
            check_variable_name(name)?;
            if SET_BY_TOLLGATE.contains(&name) {
                return Err(format!("{name} is set by tollgate; remove it"));
            }
            if self.seen.contains(name) {
                return Err(format!("{name} appears twice: keep one"));
            }
            Ok(name.to_owned())
        })
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn check_variable_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a variable name: use letters, digits and '_', not starting with a digit"
        ))
    }
}

/// A value of `env`: a string, number or boolean, kept as written
/// (`3.10` stays "3.10", not 3.1); sequences and mappings are refused.
struct EnvValue(String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "a string, number or boolean", |text| {
            if text.contains('\0') {
                Err("holds a NUL byte, which an environment variable cannot hold".to_owned())
            } else {
                Ok(EnvValue(text.to_owned()))
            }
        })
    }
}

/// A secret's source as written; a relative `from_file` is resolved later.
enum SourceSpec {
    Env(String),
    File(PathBuf),
}

impl SourceSpec {
    fn resolve_against(self, env_file: &Path) -> SecretSource {
        match self {
            SourceSpec::Env(var) => SecretSource::Env(var),
            SourceSpec::File(path) => SecretSource::File(resolve_against(env_file, path)),
        }
    }
}

const SOURCE_FIELDS: &[&str] = &["from_env", "from_file"];

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SourceVisitor)
    }
}

struct SourceVisitor;

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = SourceSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a source: {from_env: VAR} or {from_file: PATH}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SourceSpec, A::Error> {
        let mut source = None;
        while let Some(key) = map.next_key::<String>()? {
            let next = match key.as_str() {
                "from_env" => SourceSpec::Env(map.next_value::<SourceVariable>()?.0),
                "from_file" => SourceSpec::File(map.next_value::<SourcePath>()?.0),
                other => return Err(de::Error::unknown_field(other, SOURCE_FIELDS)),
            };
            if source.replace(next).is_some() {
                return Err(de::Error::custom(
                    "more than one source: use either {from_env: VAR} or {from_file: PATH}",
                ));
            }
        }
        source
            .ok_or_else(|| de::Error::custom("no source: use {from_env: VAR} or {from_file: PATH}"))
    }
}

/// The value of `from_env`: a variable name.
struct SourceVariable(String);

impl<'de> Deserialize<'de> for SourceVariable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "a variable name", |name| {
            check_variable_name(name).map(|()| SourceVariable(name.to_owned()))
        })
    }
}

/// The value of `from_file` or `file`: a non-empty path.
struct SourcePath(PathBuf);

impl<'de> Deserialize<'de> for SourcePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "a path", |text| {
            if text.is_empty() {
                Err("is empty: give the path of a file".to_owned())
            } else {
                Ok(SourcePath(PathBuf::from(text)))
            }
        })
    }
}

/// `internet.<phase>` as written.
enum PhaseSpec {
    /// `{file: PATH}`, relative path not yet resolved.
    File(PathBuf),
    /// Any other mapping, re-serialized with `version: 1` first when absent.
    Inline(String),
}

impl<'de> Deserialize<'de> for PhaseSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PhaseVisitor)
    }
}

struct PhaseVisitor;

impl<'de> Visitor<'de> for PhaseVisitor {
    type Value = PhaseSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a policy, e.g. {mode: off}, or {file: PATH}")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PhaseSpec, A::Error> {
        // Mapping refuses duplicate keys.
        let mapping = Mapping::deserialize(MapAccessDeserializer::new(map))?;
        phase_spec(mapping).map_err(de::Error::custom)
    }
}

/// Tells a `{file: PATH}` reference from an inline policy.
fn phase_spec(mapping: Mapping) -> Result<PhaseSpec, String> {
    match mapping.get("file") {
        Some(_) if mapping.len() > 1 => Err(
            "`file` takes no other keys: use either {file: PATH} or an inline policy".to_owned(),
        ),
        Some(Value::String(file)) if !file.is_empty() => Ok(PhaseSpec::File(PathBuf::from(file))),
        Some(_) => {
            Err("file: must be the path of a policy file, e.g. {file: agent.yaml}".to_owned())
        }
        None => inline_policy(mapping).map(PhaseSpec::Inline),
    }
}

/// The inline policy as a policy file: `version: 1` first unless present.
fn inline_policy(mapping: Mapping) -> Result<String, String> {
    let policy = if mapping.contains_key("version") {
        mapping
    } else {
        let mut versioned = Mapping::with_capacity(mapping.len() + 1);
        versioned.insert(Value::from("version"), Value::from(1));
        versioned.extend(mapping);
        versioned
    };
    serde_yaml::to_string(&policy)
        .map_err(|error| format!("cannot re-serialize the policy: {error}"))
}

/// `cache.ttl`: a duration; zero disables the cache.
struct Ttl(Duration);

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "a duration, e.g. 12h, or 0", |text| {
            parse_duration(text, "e.g. 12h, or 0 to disable the cache").map(Ttl)
        })
    }
}

/// `limits.*_timeout`: a positive duration.
struct Timeout(Duration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "a duration, e.g. 30m", |text| {
            let timeout = parse_duration(text, "e.g. 30m")?;
            if timeout.is_zero() {
                Err(format!(
                    "{text:?} is zero: use a positive duration, e.g. 30m, or remove the key for no limit"
                ))
            } else {
                Ok(Timeout(timeout))
            }
        })
    }
}

/// A humantime duration (`30m`, `1h`, `1h 30m`), or `0`. Any other bare
/// number is refused: seconds or minutes would be a guess.
fn parse_duration(text: &str, example: &str) -> Result<Duration, String> {
    let all_digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if all_digits && text.bytes().all(|b| b == b'0') {
        return Ok(Duration::ZERO);
    }
    if all_digits {
        return Err(format!(
            "{text:?} has no unit: add one (s, m, h, d), {example}"
        ));
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not a duration ({error}): {example}"))
}

/// `limits.memory`: a positive number of bytes.
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "a size, e.g. 8G", |text| {
            parse_size(text).map(Size)
        })
    }
}

/// Bytes, or a number and a binary unit: `K`, `M`, `G`, `T`, also written
/// `Ki`, `KiB` or `KB` (all powers of 1024), in any case.
fn parse_size(text: &str) -> Result<u64, String> {
    let not_a_size = || {
        format!(
            "{text:?} is not a size: use a number of bytes or K, M, G, T (powers of 1024), e.g. 8G"
        )
    };
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(not_a_size());
    }
    let exponent = unit_exponent(unit.trim_start()).ok_or_else(not_a_size)?;
    let too_large =
        || format!("{text:?} is too large to count in bytes: use a smaller size, e.g. 8G");
    let number: u64 = number.parse().map_err(|_| too_large())?;
    let bytes = number
        .checked_mul(1024u64.pow(exponent))
        .ok_or_else(too_large)?;
    if bytes == 0 {
        return Err(format!(
            "{text:?} is zero: use a positive size, e.g. 8G, or remove the key for no limit"
        ));
    }
    Ok(bytes)
}

/// The power of 1024 a size unit stands for.
fn unit_exponent(unit: &str) -> Option<u32> {
    let (prefix, suffix) = match unit.char_indices().nth(1) {
        Some((at, _)) => unit.split_at(at),
        None => (unit, ""),
    };
    let exponent = match prefix.to_ascii_lowercase().as_str() {
        "" => return Some(0),
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        _ => return None,
    };
    matches!(suffix.to_ascii_lowercase().as_str(), "" | "i" | "ib" | "b").then_some(exponent)
}

/// `limits.pids`: a positive whole number.
struct Pids(u64);

impl<'de> Deserialize<'de> for Pids {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "a number of processes, e.g. 4096", |text| {
            // Digits only: `str::parse` alone would also take "+5".
            match text.parse::<u64>() {
                Ok(pids) if pids > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(Pids(pids)),
                _ => Err(format!(
                    "{text:?} is not a positive whole number of processes: e.g. 4096"
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The example of DESIGN.md, "Environment files".
    const DESIGN_EXAMPLE: &str = r#"version: 1
name: web-app
base: /                   # lower layer (read-only); default "/"
setup: |                  # bash, run in its own session; `export` does not
  npm ci                  # carry over, ~/.bashrc does
maintenance: |            # run when a cached environment is resumed
  npm ci
env: {NODE_ENV: test}     # every phase
secrets:                  # setup and maintenance only
  NPM_TOKEN: {from_env: NPM_TOKEN}     # or {from_file: PATH}
internet:
  setup: {mode: unrestricted}          # default; inline policy or {file: PATH}
  agent: {mode: off}                   # default
cache: {ttl: 12h}          # 0 disables
limits: {setup_timeout: 30m, agent_timeout: 1h, memory: 8G, pids: 4096}
"#;

    fn parse(text: &str) -> Result<Environment, EnvironmentError> {
        Environment::parse(Path::new("web.yaml"), text)
    }

    fn parse_ok(text: &str) -> Environment {
        parse(text).unwrap_or_else(|error| panic!("{text:?} should parse: {error}"))
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(env) => panic!("{text:?} should be refused, got {env:?}"),
            Err(error) => error.to_string(),
        }
    }

    fn inline(origin: &str, yaml: &str) -> PhasePolicy {
        PhasePolicy::Inline {
            origin: origin.to_owned(),
            yaml: yaml.to_owned(),
        }
    }

    fn hours(n: u64) -> Duration {
        Duration::from_secs(n * 3600)
    }

    /// A directory of its own under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "tollgate-environment-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn design_example_parses_to_expected_struct() {
        let env = Environment::parse(Path::new("/srv/envs/web.yaml"), DESIGN_EXAMPLE).unwrap();
        let expected = Environment {
            path: PathBuf::from("/srv/envs/web.yaml"),
            name: "web-app".to_owned(),
            base: PathBuf::from("/"),
            setup: Some("npm ci                  # carry over, ~/.bashrc does\n".to_owned()),
            maintenance: Some("npm ci\n".to_owned()),
            env: vec![("NODE_ENV".to_owned(), "test".to_owned())],
            secrets: vec![(
                "NPM_TOKEN".to_owned(),
                SecretSource::Env("NPM_TOKEN".to_owned()),
            )],
            internet: Internet {
                setup: inline(
                    "/srv/envs/web.yaml: internet.setup",
                    "version: 1\nmode: unrestricted\n",
                ),
                agent: inline(
                    "/srv/envs/web.yaml: internet.agent",
                    "version: 1\nmode: off\n",
                ),
            },
            cache: CacheSettings { ttl: hours(12) },
            limits: Limits {
                setup_timeout: Some(Duration::from_secs(30 * 60)),
                agent_timeout: Some(hours(1)),
                memory: Some(8 << 30),
                pids: Some(4096),
            },
        };
        assert_eq!(env, expected);
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let env = Environment::parse(Path::new("/srv/envs/web.yaml"), "version: 1\n").unwrap();
        let expected = Environment {
            path: PathBuf::from("/srv/envs/web.yaml"),
            name: "web".to_owned(),
            base: PathBuf::from("/"),
            setup: None,
            maintenance: None,
            env: Vec::new(),
            secrets: Vec::new(),
            internet: Internet {
                setup: inline(
                    "/srv/envs/web.yaml: internet.setup (default)",
                    "version: 1\nmode: unrestricted\n",
                ),
                agent: inline(
                    "/srv/envs/web.yaml: internet.agent (default)",
                    "version: 1\nmode: off\n",
                ),
            },
            cache: CacheSettings { ttl: hours(12) },
            limits: Limits::default(),
        };
        assert_eq!(env, expected);
        assert!(env.cache.enabled());
    }

    #[test]
    fn empty_setup_is_kept_apart_from_absent_setup() {
        assert_eq!(
            parse_ok("version: 1\nsetup: \"\"\n").setup,
            Some(String::new())
        );
        assert_eq!(parse_ok("version: 1\n").setup, None);
    }

    #[test]
    fn inline_policy_gets_version_first_and_keeps_its_content() {
        let env = parse_ok(
            "version: 1\ninternet:\n  agent:\n    mode: limited\n    allow: ['*.github.com', {host: api.github.com, ports: [443]}]\n",
        );
        let PhasePolicy::Inline { origin, yaml } = &env.internet.agent else {
            panic!("expected an inline policy, got {:?}", env.internet.agent);
        };
        assert_eq!(origin, "web.yaml: internet.agent");
        assert!(yaml.starts_with("version: 1\n"), "{yaml}");
        let reparsed: Value = serde_yaml::from_str(yaml).unwrap();
        let expected: Value = serde_yaml::from_str(
            "{version: 1, mode: limited, allow: ['*.github.com', {host: api.github.com, ports: [443]}]}",
        )
        .unwrap();
        assert_eq!(reparsed, expected);
    }

    #[test]
    fn inline_policy_with_a_version_is_not_given_another() {
        let env = parse_ok("version: 1\ninternet: {setup: {mode: off, version: 7}}\n");
        let PhasePolicy::Inline { yaml, .. } = &env.internet.setup else {
            panic!("expected an inline policy");
        };
        assert_eq!(yaml, "mode: off\nversion: 7\n");
    }

    #[test]
    fn relative_paths_resolve_against_the_env_file_directory() {
        let text = "version: 1\n\
                    secrets:\n  A: {from_file: keys/a}\n  B: {from_file: /run/keys/b}\n\
                    internet:\n  setup: {file: ../policies/setup.yaml}\n  agent: {file: /etc/tollgate/agent.yaml}\n";
        let env = Environment::parse(Path::new("/srv/envs/web.yaml"), text).unwrap();
        assert_eq!(
            env.secrets,
            vec![
                (
                    "A".to_owned(),
                    SecretSource::File("/srv/envs/keys/a".into())
                ),
                ("B".to_owned(), SecretSource::File("/run/keys/b".into())),
            ]
        );
        assert_eq!(
            env.internet.setup,
            PhasePolicy::File("/srv/envs/../policies/setup.yaml".into())
        );
        assert_eq!(
            env.internet.agent,
            PhasePolicy::File("/etc/tollgate/agent.yaml".into())
        );

        // A bare file name: its directory is the working directory.
        let env = parse_ok("version: 1\ninternet: {agent: {file: agent.yaml}}\n");
        assert_eq!(env.internet.agent, PhasePolicy::File("agent.yaml".into()));
    }

    #[test]
    fn env_values_are_kept_as_written_in_file_order() {
        let env = parse_ok(
            "version: 1\nenv:\n  PY: 3.10\n  MODE: 0755\n  N: 42\n  NEG: -1\n  EXP: 1e3\n  \
             FLAG: true\n  OFF: False\n  Q: \"quoted # not a comment\"\n  EMPTY: ''\n  \
             MULTI: |\n    a\n    b\n",
        );
        let expected = [
            ("PY", "3.10"),
            ("MODE", "0755"),
            ("N", "42"),
            ("NEG", "-1"),
            ("EXP", "1e3"),
            ("FLAG", "true"),
            ("OFF", "False"),
            ("Q", "quoted # not a comment"),
            ("EMPTY", ""),
            ("MULTI", "a\nb\n"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        assert_eq!(env.env, expected);
    }

    #[test]
    fn sizes_take_bytes_and_binary_units() {
        let cases = [
            ("1073741824", 1 << 30),
            ("1", 1),
            ("8G", 8 << 30),
            ("8g", 8 << 30),
            ("8Gi", 8 << 30),
            ("8GiB", 8 << 30),
            ("8gib", 8 << 30),
            ("8GB", 8 << 30),
            ("8 G", 8 << 30),
            ("512K", 512 << 10),
            ("512KiB", 512 << 10),
            ("512kb", 512 << 10),
            ("3M", 3 << 20),
            ("2T", 2 << 40),
            ("\"16MiB\"", 16 << 20),
        ];
        for (text, bytes) in cases {
            let env = parse_ok(&format!("version: 1\nlimits: {{memory: {text}}}\n"));
            assert_eq!(env.limits.memory, Some(bytes), "{text}");
        }
    }

    #[test]
    fn durations_take_units_and_zero() {
        let cases = [
            ("12h", hours(12)),
            ("30m", Duration::from_secs(1800)),
            ("1h 30m", Duration::from_secs(5400)),
            ("90s", Duration::from_secs(90)),
            ("2d", hours(48)),
            ("0", Duration::ZERO),
            ("\"0\"", Duration::ZERO),
            ("0s", Duration::ZERO),
        ];
        for (text, ttl) in cases {
            let env = parse_ok(&format!("version: 1\ncache: {{ttl: {text}}}\n"));
            assert_eq!(env.cache.ttl, ttl, "{text}");
            assert_eq!(env.cache.enabled(), !ttl.is_zero(), "{text}");
        }
        let env = parse_ok("version: 1\nlimits: {setup_timeout: 45m, agent_timeout: 2h}\n");
        assert_eq!(env.limits.setup_timeout, Some(Duration::from_secs(45 * 60)));
        assert_eq!(env.limits.agent_timeout, Some(hours(2)));
    }

    #[test]
    fn name_defaults_to_a_valid_file_stem_and_is_checked() {
        let env = Environment::parse(Path::new("envs/node-18.ci.yaml"), "version: 1\n").unwrap();
        assert_eq!(env.name, "node-18.ci");
        let longest = "a".repeat(64);
        assert_eq!(
            parse_ok(&format!("version: 1\nname: {longest}\n")).name,
            longest
        );
        for bad in ["../x", ".hidden", "-x", "a/b", "a b", "\"\"", "é"] {
            let message = parse_err(&format!("version: 1\nname: {bad}\n"));
            assert!(message.starts_with("web.yaml:2:7: name: "), "{message}");
            assert!(
                message.contains("is not a valid environment name"),
                "{message}"
            );
        }
        let too_long = "a".repeat(65);
        assert!(parse_err(&format!("version: 1\nname: {too_long}\n")).contains("at most 64"));

        let error = Environment::parse(Path::new("my env.yaml"), "version: 1\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "my env.yaml: name: not set, and the file name \"my env.yaml\" is not a valid \
             environment name: add `name:` with letters, digits, '.', '_' or '-' (at most 64, \
             starting with a letter or digit)"
        );
    }

    /// One YAML document, and what its error message must contain.
    struct Refused {
        yaml: &'static str,
        expect: &'static [&'static str],
    }

    const fn refused(yaml: &'static str, expect: &'static [&'static str]) -> Refused {
        Refused { yaml, expect }
    }

    const REFUSED: &[Refused] = &[
        // The file as a whole.
        refused("", &["web.yaml: is empty: an environment needs at least `version: 1`"]),
        refused("# nothing\n---\n", &["web.yaml: is empty: an environment needs at least `version: 1`"]),
        refused("name: x\n", &["web.yaml: version: missing: add `version: 1` at the top of the file"]),
        refused("version: 2\n", &["web.yaml:1:10: version: unsupported version \"2\": this tollgate reads version 1"]),
        refused("version:\n", &["web.yaml: version: has no value"]),
        refused("- version: 1\n", &["web.yaml:1:1: invalid type: sequence, expected a mapping of environment settings, starting with `version: 1`"]),
        refused("version: 1\n---\nversion: 1\n", &["web.yaml: ", "more than one document", "remove the `---` separators"]),
        refused("version: 1\nbogus: 1\n", &["web.yaml:2:1: unknown field `bogus`, expected one of `version`, `name`, `base`, `setup`, `maintenance`, `env`, `secrets`, `internet`, `cache`, `limits`"]),
        refused("version: 1\nversion: 1\n", &["web.yaml:1:1: duplicate field `version`: keep one"]),
        refused("version: 1\nsetup:\n", &["web.yaml: setup: has no value: write `setup: \"\"` for no setup, or remove the key for automatic setup"]),
        refused("version: 1\nmaintenance: ~\n", &["web.yaml: maintenance: has no value: give it one, or remove the key"]),
        refused("version: 1\nsetup: [npm ci]\n", &["web.yaml:2:8: setup: invalid type: sequence, expected a string"]),
        refused("version: 1\nbase: images/node\n", &["web.yaml:2:7: base: \"images/node\" is not an absolute path: write it from the root"]),
        refused("version: 1\nbase: ''\n", &["web.yaml:2:7: base: \"\" is not an absolute path"]),
        // YAML tricks.
        refused("version: 1\n<<: {name: x}\n", &["web.yaml:2:1: unknown field `<<`", "YAML merge keys (`<<`) are not supported: write the keys out"]),
        refused("version: 1\nenv: *vars\n", &["web.yaml:2:6: unknown anchor: an alias `*name` needs an anchor `&name` before it"]),
        refused("version: 1\ninternet: {agent: {mode: limited, allow: [*.github.com]}}\n", &["web.yaml:2:44: ", "scanning an alias", "must be quoted, e.g. \"*.example.com\""]),
        refused("version: 1\nsetup: \"npm ci\n", &["web.yaml:3:1: found unexpected end of stream"]),
        // env.
        refused("version: 1\nenv: [A=1]\n", &["web.yaml:2:6: env: invalid type: sequence, expected a mapping of variable names to values, e.g. {NODE_ENV: test}"]),
        refused("version: 1\nenv:\n  A: 1\n  A: 2\n", &["web.yaml:4:3: env: A appears twice: keep one"]),
        refused("version: 1\nenv:\n  1A: x\n", &["web.yaml:3:3: env: \"1A\" is not a variable name: use letters, digits and '_', not starting with a digit"]),
        refused("version: 1\nenv:\n  MY-VAR: x\n", &["web.yaml:3:3: env: \"MY-VAR\" is not a variable name"]),
        refused("version: 1\nenv:\n  A:\n", &["web.yaml: env.A: has no value: write \"\" for an empty value"]),
        refused("version: 1\nenv:\n  A: null\n", &["web.yaml: env.A: has no value"]),
        refused("version: 1\nenv:\n  A: [1, 2]\n", &["web.yaml:3:6: env.A: invalid type: sequence, expected a string, number or boolean"]),
        refused("version: 1\nenv:\n  A: {b: 1}\n", &["web.yaml:3:6: env.A: invalid type: map, expected a string, number or boolean"]),
        refused("version: 1\nenv: {A: \"a\\0b\"}\n", &["web.yaml:2:10: env.A: holds a NUL byte"]),
        // secrets.
        refused("version: 1\nsecrets:\n  NPM_TOKEN: {}\n", &["web.yaml:3:14: secrets.NPM_TOKEN: no source: use {from_env: VAR} or {from_file: PATH}"]),
        refused("version: 1\nsecrets:\n  NPM_TOKEN:\n", &["web.yaml:3:13: secrets.NPM_TOKEN: no source: use {from_env: VAR} or {from_file: PATH}"]),
        refused("version: 1\nsecrets:\n  NPM_TOKEN: NPM_TOKEN\n", &["web.yaml:3:14: secrets.NPM_TOKEN: invalid type: string \"NPM_TOKEN\", expected a source: {from_env: VAR} or {from_file: PATH}"]),
        refused("version: 1\nsecrets:\n  NPM_TOKEN: {from_env: A, from_file: b}\n", &["web.yaml:3:14: secrets.NPM_TOKEN: more than one source: use either {from_env: VAR} or {from_file: PATH}"]),
        refused("version: 1\nsecrets:\n  NPM_TOKEN: {from_envv: A}\n", &["web.yaml:3:14: secrets.NPM_TOKEN: unknown field `from_envv`, expected `from_env` or `from_file`"]),
        refused("version: 1\nsecrets:\n  NPM_TOKEN: {from_env: npm-token}\n", &["web.yaml:3:25: secrets.NPM_TOKEN.from_env: \"npm-token\" is not a variable name"]),
        refused("version: 1\nsecrets:\n  NPM_TOKEN: {from_file: ''}\n", &["web.yaml:3:26: secrets.NPM_TOKEN.from_file: is empty: give the path of a file"]),
        refused("version: 1\nsecrets:\n  A: {from_env: A}\n  A: {from_env: B}\n", &["web.yaml:4:3: secrets: A appears twice: keep one"]),
        refused("version: 1\nsecrets:\n  a.b: {from_env: A}\n", &["web.yaml:3:3: secrets: \"a.b\" is not a variable name"]),
        refused("version: 1\nenv: {NPM_TOKEN: x}\nsecrets: {NPM_TOKEN: {from_env: NPM_TOKEN}}\n", &["web.yaml: secrets.NPM_TOKEN: NPM_TOKEN is also set in env: remove it from one of them"]),
        // internet.
        refused("version: 1\ninternet: {maintenance: {mode: off}}\n", &["web.yaml:2:12: internet: unknown field `maintenance`, expected `setup` or `agent`"]),
        refused("version: 1\ninternet: {agent: off}\n", &["web.yaml:2:19: internet.agent: invalid type: string \"off\", expected a policy, e.g. {mode: off}, or {file: PATH}"]),
        refused("version: 1\ninternet: {agent: }\n", &["web.yaml: internet.agent: has no value"]),
        refused("version: 1\ninternet: {agent: {mode: off, mode: unrestricted}}\n", &["web.yaml:2:19: internet.agent: duplicate entry with key \"mode\""]),
        refused("version: 1\ninternet: {agent: {file: [a]}}\n", &["web.yaml:2:19: internet.agent: file: must be the path of a policy file"]),
        refused("version: 1\ninternet: {agent: {file: ''}}\n", &["web.yaml:2:19: internet.agent: file: must be the path of a policy file"]),
        refused("version: 1\ninternet: {agent: {file: a.yaml, mode: off}}\n", &["web.yaml:2:19: internet.agent: `file` takes no other keys: use either {file: PATH} or an inline policy"]),
        // cache.
        refused("version: 1\ncache: {ttl: 30}\n", &["web.yaml:2:14: cache.ttl: \"30\" has no unit: add one (s, m, h, d), e.g. 12h, or 0 to disable the cache"]),
        refused("version: 1\ncache: {ttl: forever}\n", &["web.yaml:2:14: cache.ttl: \"forever\" is not a duration", "e.g. 12h"]),
        refused("version: 1\ncache: {ttl: -1h}\n", &["web.yaml:2:14: cache.ttl: \"-1h\" is not a duration"]),
        refused("version: 1\ncache: {tll: 1h}\n", &["web.yaml:2:9: cache: unknown field `tll`, expected `ttl`"]),
        // limits.
        refused("version: 1\nlimits:\n  memroy: 8G\n", &["web.yaml:3:3: limits: unknown field `memroy`, expected one of `setup_timeout`, `agent_timeout`, `memory`, `pids`"]),
        refused("version: 1\nlimits:\n  memory: 8 gigs\n", &["web.yaml:3:11: limits.memory: \"8 gigs\" is not a size: use a number of bytes or K, M, G, T (powers of 1024), e.g. 8G"]),
        refused("version: 1\nlimits: {memory: 1.5G}\n", &["web.yaml:2:18: limits.memory: \"1.5G\" is not a size"]),
        refused("version: 1\nlimits: {memory: -1}\n", &["web.yaml:2:18: limits.memory: \"-1\" is not a size"]),
        refused("version: 1\nlimits: {memory: 8P}\n", &["web.yaml:2:18: limits.memory: \"8P\" is not a size"]),
        refused("version: 1\nlimits: {memory: G}\n", &["web.yaml:2:18: limits.memory: \"G\" is not a size"]),
        refused("version: 1\nlimits: {memory: 0}\n", &["web.yaml:2:18: limits.memory: \"0\" is zero: use a positive size, e.g. 8G, or remove the key for no limit"]),
        refused("version: 1\nlimits: {memory: 0G}\n", &["web.yaml:2:18: limits.memory: \"0G\" is zero"]),
        refused("version: 1\nlimits: {memory: 16777216T}\n", &["web.yaml:2:18: limits.memory: \"16777216T\" is too large"]),
        refused("version: 1\nlimits: {memory: 99999999999999999999}\n", &["web.yaml:2:18: limits.memory: \"99999999999999999999\" is too large"]),
        refused("version: 1\nlimits: {memory: }\n", &["web.yaml: limits.memory: has no value: give it one, or remove the key"]),
        refused("version: 1\nlimits: {setup_timeout: 30}\n", &["web.yaml:2:25: limits.setup_timeout: \"30\" has no unit: add one (s, m, h, d), e.g. 30m"]),
        refused("version: 1\nlimits: {setup_timeout: 0}\n", &["web.yaml:2:25: limits.setup_timeout: \"0\" is zero: use a positive duration, e.g. 30m, or remove the key for no limit"]),
        refused("version: 1\nlimits: {agent_timeout: 0s}\n", &["web.yaml:2:25: limits.agent_timeout: \"0s\" is zero: use a positive duration"]),
        refused("version: 1\nlimits: {agent_timeout: soon}\n", &["web.yaml:2:25: limits.agent_timeout: \"soon\" is not a duration", "e.g. 30m"]),
        refused("version: 1\nlimits: {pids: 0}\n", &["web.yaml:2:16: limits.pids: \"0\" is not a positive whole number of processes: e.g. 4096"]),
        refused("version: 1\nlimits: {pids: -5}\n", &["web.yaml:2:16: limits.pids: \"-5\" is not a positive whole number"]),
        refused("version: 1\nlimits: {pids: 1.5}\n", &["web.yaml:2:16: limits.pids: \"1.5\" is not a positive whole number"]),
        refused("version: 1\nlimits: {pids: +5}\n", &["web.yaml:2:16: limits.pids: \"+5\" is not a positive whole number"]),
        refused("version: 1\nlimits: {pids: lots}\n", &["web.yaml:2:16: limits.pids: \"lots\" is not a positive whole number"]),
    ];

    #[test]
    fn refused_files_get_one_line_that_says_where_and_what_to_do() {
        for case in REFUSED {
            let message = parse_err(case.yaml);
            assert!(
                !message.contains('\n'),
                "{:?}: not one line: {message}",
                case.yaml
            );
            for expected in case.expect {
                assert!(
                    message.contains(expected),
                    "{:?}:\n  message:  {message}\n  expected: {expected}",
                    case.yaml
                );
            }
        }
    }

    #[test]
    fn control_characters_from_the_file_are_escaped_in_messages() {
        let message = parse_err("version: 1\n\"bad\\nkey\\e[31m\": 1\n");
        assert!(
            message.starts_with("web.yaml:2:1: unknown field `bad\\nkey\\u{1b}[31m`"),
            "{message}"
        );
        assert!(!message.contains(['\n', '\x1b']), "{message}");
    }

    #[test]
    fn variables_set_by_tollgate_are_refused_in_env_and_secrets() {
        for name in SET_BY_TOLLGATE {
            let message = parse_err(&format!("version: 1\nenv:\n  {name}: x\n"));
            assert_eq!(
                message,
                format!("web.yaml:3:3: env: {name} is set by tollgate; remove it")
            );
            let message = parse_err(&format!(
                "version: 1\nsecrets:\n  {name}: {{from_env: X}}\n"
            ));
            assert_eq!(
                message,
                format!("web.yaml:3:3: secrets: {name} is set by tollgate; remove it")
            );
        }
        // Only the exact names: other spellings are ordinary variables.
        assert_eq!(parse_ok("version: 1\nenv: {Http_Proxy: x}\n").env.len(), 1);
    }

    #[test]
    fn alias_expansion_bomb_is_refused() {
        // "Billion laughs", in an inline policy, the one place that takes
        // any keys: 9^9 strings if expanded.
        let mut yaml = String::from("version: 1\ninternet:\n  agent:\n    x0: &x0 [lol]\n");
        for level in 1..=9 {
            let items = vec![format!("*x{}", level - 1); 9].join(", ");
            yaml.push_str(&format!("    x{level}: &x{level} [{items}]\n"));
        }
        assert_eq!(
            parse_err(&yaml),
            "web.yaml: repetition limit exceeded: YAML aliases expand to too much data: \
             write the values out"
        );
    }

    #[test]
    fn load_reads_the_file_and_names_it_when_it_cannot() {
        let dir = TempDir::new();
        let path = dir.write("ci.yaml", "version: 1\nenv: {A: b}\n");
        let env = Environment::load(&path).unwrap();
        assert_eq!(env.name, "ci");
        assert_eq!(env.path, path);
        assert_eq!(env.env, vec![("A".to_owned(), "b".to_owned())]);

        let missing = dir.0.join("missing.yaml");
        let message = Environment::load(&missing).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "{}: cannot read environment file: ",
                missing.display()
            )),
            "{message}"
        );
        assert!(
            message.ends_with("check the path and its permissions"),
            "{message}"
        );
    }

    fn with_secrets(dir: &TempDir, secrets: &str) -> Environment {
        let text = format!("version: 1\nsecrets:\n{secrets}");
        Environment::parse(&dir.0.join("web.yaml"), &text).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn secret_error(env: &Environment, lookup: impl Fn(&str) -> Option<String>) -> String {
        match env.resolve_secrets(lookup) {
            Ok(secrets) => panic!("should be refused, got {secrets:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn secrets_resolve_from_env_and_relative_files_in_order() {
        let dir = TempDir::new();
        dir.write("npmrc-token", "file-value\n");
        dir.write("crlf", "crlf-value\r\n");
        dir.write("two-newlines", "kept\n\n");
        let env = with_secrets(
            &dir,
            "  NPM_TOKEN: {from_env: HOST_NPM_TOKEN}\n  FROM_FILE: {from_file: npmrc-token}\n  \
             CRLF: {from_file: crlf}\n  TWO: {from_file: two-newlines}\n",
        );
        let secrets = env
            .resolve_secrets(|var| (var == "HOST_NPM_TOKEN").then(|| "env-value".to_owned()))
            .unwrap();
        let resolved: Vec<(&str, &str)> = secrets
            .iter()
            .map(|secret| (secret.name.as_str(), secret.value()))
            .collect();
        assert_eq!(
            resolved,
            [
                ("NPM_TOKEN", "env-value"),
                ("FROM_FILE", "file-value"),
                ("CRLF", "crlf-value"),
                ("TWO", "kept\n"),
            ]
        );
    }

    #[test]
    fn missing_or_empty_secret_values_are_refused() {
        let dir = TempDir::new();
        let env = with_secrets(&dir, "  NPM_TOKEN: {from_env: NPM_TOKEN}\n");
        assert_eq!(
            secret_error(&env, no_env),
            "secret NPM_TOKEN: environment variable NPM_TOKEN is not set: export it before \
             tollgate run, or use from_file"
        );
        assert_eq!(
            secret_error(&env, |_| Some(String::new())),
            "secret NPM_TOKEN: environment variable NPM_TOKEN is empty: give the secret a value"
        );

        let empty = dir.write("empty", "\n");
        let env = with_secrets(&dir, "  KEY: {from_file: empty}\n");
        assert_eq!(
            secret_error(&env, no_env),
            format!(
                "secret KEY: file {} is empty: give the secret a value",
                empty.display()
            )
        );

        let env = with_secrets(&dir, "  KEY: {from_file: nowhere/key}\n");
        let message = secret_error(&env, no_env);
        let missing = dir.0.join("nowhere/key");
        assert!(
            message.starts_with(&format!(
                "secret KEY: cannot read file {}: ",
                missing.display()
            )),
            "{message}"
        );
        assert!(
            message.ends_with("check the path and its permissions"),
            "{message}"
        );
    }

    #[test]
    fn unusable_secret_values_are_refused_without_being_shown() {
        let dir = TempDir::new();
        dir.write("nul", "s3cr3t-\0-value");
        dir.write("binary", b"s3cr3t-\xff-value");
        dir.write("huge", "s3cr3t-".repeat(MAX_ENV_STRING / 7 + 1));
        let cases = [
            ("nul", "holds a NUL byte"),
            ("binary", "is not UTF-8 text"),
            ("huge", "is too long"),
        ];
        for (file, expected) in cases {
            let env = with_secrets(&dir, &format!("  KEY: {{from_file: {file}}}\n"));
            let message = secret_error(&env, no_env);
            assert!(message.contains(expected), "{file}: {message}");
            assert!(!message.contains("s3cr3t"), "{file}: {message}");
        }
        let env = with_secrets(&dir, "  KEY: {from_env: KEY}\n");
        let message = secret_error(&env, |_| Some("s3cr3t\0".to_owned()));
        assert!(message.contains("holds a NUL byte"), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");

        // The limit counts `NAME=` and the terminating NUL.
        let fits = "x".repeat(MAX_ENV_STRING - "KEY=".len() - 1);
        assert_eq!(
            env.resolve_secrets(|_| Some(fits.clone())).unwrap()[0].value(),
            fits
        );
        let message = secret_error(&env, |_| Some(format!("{fits}x")));
        assert!(message.contains("is too long"), "{message}");
    }

    #[test]
    fn debug_never_shows_secret_values() {
        let dir = TempDir::new();
        dir.write("token", "s3cr3t-from-file\n");
        let env = with_secrets(
            &dir,
            "  NPM_TOKEN: {from_env: NPM_TOKEN}\n  FILE_TOKEN: {from_file: token}\n",
        );
        let secrets = env
            .resolve_secrets(|_| Some("s3cr3t-from-env".to_owned()))
            .unwrap();
        assert_eq!(secrets[1].value(), "s3cr3t-from-file");
        let one = format!("{:?}", secrets[0]);
        assert_eq!(one, "Secret { name: \"NPM_TOKEN\", value: <redacted> }");
        let all = format!("{secrets:?} {secrets:#?} {env:?}");
        assert!(
            all.contains("FILE_TOKEN") && all.contains("<redacted>"),
            "{all}"
        );
        assert!(!all.contains("s3cr3t"), "{all}");
    }
}
