//! The environment file as written. Every struct denies unknown fields, and
//! every key is a [`Field`], so that a null value is refused rather than read
//! as absent.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::phase::PhaseSpec;
use super::values::*;
use super::{invalid, EnvironmentError};

#[derive(Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of environment settings, starting with `version: 1`"
)]
pub(super) struct EnvironmentFile {
    pub(super) version: Field<Version>,
    pub(super) name: Field<EnvName>,
    pub(super) base: Field<AbsolutePath>,
    pub(super) setup: Field<String>,
    pub(super) maintenance: Field<String>,
    pub(super) env: Field<EnvVars>,
    pub(super) secrets: Field<Secrets>,
    pub(super) internet: Field<InternetFile>,
    pub(super) cache: Field<CacheFile>,
    pub(super) limits: Field<LimitsFile>,
}

#[derive(Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of phases to policies, e.g. {setup: {mode: unrestricted}, agent: {mode: off}}"
)]
pub(super) struct InternetFile {
    pub(super) setup: Field<PhaseSpec>,
    pub(super) agent: Field<PhaseSpec>,
}

#[derive(Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping such as {ttl: 12h}"
)]
pub(super) struct CacheFile {
    pub(super) ttl: Field<Ttl>,
}

#[derive(Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping such as {setup_timeout: 30m, agent_timeout: 1h, memory: 8G, pids: 4096, tmpfs: 1G}"
)]
pub(super) struct LimitsFile {
    pub(super) setup_timeout: Field<Timeout>,
    pub(super) agent_timeout: Field<Timeout>,
    pub(super) memory: Field<Size>,
    pub(super) pids: Field<Pids>,
    pub(super) tmpfs: Field<Size>,
}

/// A key's value as written. Absent (the default) and null (`key:` with
/// nothing after it, `~`, `null`) are told apart: null is refused, with a
/// hint, rather than silently meaning absent (an empty `setup:` must not
/// mean automatic setup).
#[derive(Default)]
pub(super) enum Field<T> {
    #[default]
    Absent,
    Null,
    Given(T),
}

impl<T> Field<T> {
    /// The value, `None` when the key is absent; an error naming `key` when
    /// it is null. serde_yaml does not report where a null is, so the error
    /// has the key path but no line.
    pub(super) fn given(self, path: &Path, key: &str) -> Result<Option<T>, EnvironmentError> {
        match self {
            Field::Absent => Ok(None),
            Field::Given(value) => Ok(Some(value)),
            Field::Null => Err(invalid(path, key, null_hint(key))),
        }
    }
}

/// What to write instead of a null value for `key`.
pub(super) fn null_hint(key: &str) -> String {
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

pub(super) struct FieldVisitor<T>(PhantomData<T>);

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
pub(super) fn scalar<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    deserializer.deserialize_str(ScalarText { expecting, parse })
}

pub(super) struct ScalarText<F> {
    pub(super) expecting: &'static str,
    pub(super) parse: F,
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
