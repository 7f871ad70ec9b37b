//! The values of an environment file, each checked while serde_yaml still
//! knows where it is, so that what is refused is reported at its line and
//! column.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::file::{scalar, Field};
use super::{resolve_against, SecretSource};
use crate::enclave::inside;

/// The environment file format version this build reads.
pub(super) const FORMAT_VERSION: &str = "1";

/// `version:`, which must be 1.
pub(super) struct Version;

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
pub(super) struct EnvName(pub(super) String);

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "an environment name", |text| {
            check_environment_name(text).map(|()| EnvName(text.to_owned()))
        })
    }
}

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`: never empty, `.` or `..`, never
/// holds a `/`.
pub(super) fn check_environment_name(name: &str) -> Result<(), String> {
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
pub(super) struct AbsolutePath(pub(super) PathBuf);

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
pub(super) struct EnvVars(pub(super) Vec<(String, Field<EnvValue>)>);

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
pub(super) struct Secrets(pub(super) Vec<(String, SourceSpec)>);

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
pub(super) struct VariableMap<V> {
    pub(super) expecting: &'static str,
    pub(super) values: PhantomData<V>,
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
pub(super) struct NewVariableName<'a> {
    pub(super) seen: &'a HashSet<String>,
}

impl<'de> DeserializeSeed<'de> for NewVariableName<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        scalar(deserializer, "a variable name", |name| {
            check_variable_name(name)?;
            if inside::set_by_tollgate().any(|set| set == name) {
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
pub(super) fn check_variable_name(name: &str) -> Result<(), String> {
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
pub(super) struct EnvValue(pub(super) String);

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
pub(super) enum SourceSpec {
    Env(String),
    File(PathBuf),
}

impl SourceSpec {
    pub(super) fn resolve_against(self, env_file: &Path) -> SecretSource {
        match self {
            SourceSpec::Env(var) => SecretSource::Env(var),
            SourceSpec::File(path) => SecretSource::File(resolve_against(env_file, path)),
        }
    }
}

pub(super) const SOURCE_FIELDS: &[&str] = &["from_env", "from_file"];

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SourceVisitor)
    }
}

pub(super) struct SourceVisitor;

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
pub(super) struct SourceVariable(pub(super) String);

impl<'de> Deserialize<'de> for SourceVariable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "a variable name", |name| {
            check_variable_name(name).map(|()| SourceVariable(name.to_owned()))
        })
    }
}

/// The value of `from_file` or `file`: a non-empty path.
pub(super) struct SourcePath(pub(super) PathBuf);

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

/// `cache.ttl`: a duration; zero disables the cache.
pub(super) struct Ttl(pub(super) Duration);

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "a duration, e.g. 12h, or 0", |text| {
            parse_duration(text, "e.g. 12h, or 0 to disable the cache").map(Ttl)
        })
    }
}

/// `limits.*_timeout`: a positive duration.
pub(super) struct Timeout(pub(super) Duration);

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
pub(super) fn parse_duration(text: &str, example: &str) -> Result<Duration, String> {
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
pub(super) struct Size(pub(super) u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "a size, e.g. 8G", |text| {
            parse_size(text).map(Size)
        })
    }
}

/// Bytes, or a number and a binary unit: `K`, `M`, `G`, `T`, also written
/// `Ki`, `KiB` or `KB` (all powers of 1024), in any case.
pub fn parse_size(text: &str) -> Result<u64, String> {
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
pub(super) fn unit_exponent(unit: &str) -> Option<u32> {
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
pub(super) struct Pids(pub(super) u64);

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
