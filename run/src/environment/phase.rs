//! `internet.<phase>` as written: `{file: PATH}`, or a policy inline, read
//! by the policy parser itself so that its errors point into the
//! environment file (line, column and key path).

use std::fmt;
use std::path::PathBuf;

use serde::de::value::{MapAccessDeserializer, StringDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_yaml::Value;
use tollgate_proxy::policy::file::PolicyFile;

pub(super) enum PhaseSpec {
    /// `{file: PATH}`, relative path not yet resolved.
    File(PathBuf),
    /// Any other mapping: a policy (`version` may be left out).
    Inline(Box<PolicyFile>),
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

    /// The first key tells a file reference from an inline policy; an
    /// inline policy is then read whole by [`PolicyFile`], its first key
    /// replayed. Errors raised here are placed by serde_yaml at the mapping.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PhaseSpec, A::Error> {
        let first = map.next_key::<String>()?;
        if first.as_deref() == Some("file") {
            let file = match map.next_value::<Value>()? {
                Value::String(file) if !file.is_empty() => PathBuf::from(file),
                _ => {
                    return Err(de::Error::custom(
                        "file: must be the path of a policy file, e.g. {file: agent.yaml}",
                    ))
                }
            };
            if map.next_key::<de::IgnoredAny>()?.is_some() {
                return Err(de::Error::custom(
                    "`file` takes no other keys: use either {file: PATH} or an inline policy",
                ));
            }
            return Ok(PhaseSpec::File(file));
        }
        let rest = Replay { first, map };
        PolicyFile::deserialize(MapAccessDeserializer::new(rest))
            .map(|policy| PhaseSpec::Inline(Box::new(policy)))
    }
}

/// A mapping whose first key was already read: gives it back first.
struct Replay<A> {
    first: Option<String>,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Replay<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.first.take() {
            Some(key) => {
                let key: StringDeserializer<A::Error> = key.into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}
