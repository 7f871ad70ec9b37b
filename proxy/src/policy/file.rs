//! The policy file format of DESIGN.md, parsed strictly: unknown keys, bad
//! patterns, lowercase methods and port 0 are errors that serde_yaml reports
//! with the line and column where they occur.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU16;

use http::Method;
use ipnet::IpNet;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::pattern::{HostPattern, PathPattern};
use crate::host::{DomainName, Host};

/// The policy format version this build reads.
pub const POLICY_VERSION: u64 = 1;

/// A policy as written. `version` is required in a policy file and may be
/// left out of a policy written inline in an environment file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub version: Option<Version>,
    pub mode: Mode,
    #[serde(default = "enforced_by_default")]
    pub enforce: bool,
    #[serde(default)]
    pub presets: Vec<Preset>,
    #[serde(default)]
    pub allow: Vec<RuleSpec>,
    #[serde(default)]
    pub deny: Vec<RuleSpec>,
    #[serde(default)]
    pub methods: Option<NonEmpty<MethodName>>,
    #[serde(default)]
    pub ports: Option<NonEmpty<NonZeroU16>>,
    #[serde(default)]
    pub allow_internal: Vec<IpNet>,
    #[serde(default)]
    pub hosts: BTreeMap<StaticName, IpAddr>,
}

fn enforced_by_default() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct Version;

impl TryFrom<u64> for Version {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        if v == POLICY_VERSION {
            Ok(Version)
        } else {
            Err(format!(
                "unsupported policy version {v}: this tollgate reads version {POLICY_VERSION}"
            ))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Off,
    Limited,
    Unrestricted,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Off => "off",
            Mode::Limited => "limited",
            Mode::Unrestricted => "unrestricted",
        })
    }
}

/// Allowlists shipped with the binary that a policy can include by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    CommonDependencies,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::CommonDependencies => "common-dependencies",
        }
    }
}

/// An HTTP method written in its canonical (uppercase) form.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MethodName(pub Method);

impl TryFrom<String> for MethodName {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let upper = text.to_ascii_uppercase();
        if upper != text {
            return Err(format!(
                "method `{text}` must be uppercase: write `{upper}`"
            ));
        }
        Method::from_bytes(text.as_bytes())
            .map(MethodName)
            .map_err(|_| format!("`{text}` is not an HTTP method"))
    }
}

/// A key of `hosts:`: a canonical DNS name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct StaticName(pub DomainName);

impl TryFrom<String> for StaticName {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match Host::parse(&text) {
            Ok(Host::Name(name)) if name.as_str() == text => Ok(StaticName(name)),
            Ok(Host::Name(name)) => Err(format!(
                "host `{text}` is not in canonical form: write `{}`",
                name.as_str()
            )),
            Ok(Host::Ip(_)) => Err(format!("`{text}` is an IP address, not a name")),
            Err(e) => Err(format!("`{text}` is not a valid host name: {e}")),
        }
    }
}

/// One entry of `allow` or `deny`: a bare pattern or a rule object.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub host: HostPattern,
    pub methods: Option<Vec<MethodName>>,
    pub paths: Option<Vec<PathPattern>>,
    pub ports: Option<Vec<NonZeroU16>>,
}

/// A list that must not be empty: `methods: []` would silently allow nothing,
/// which is never what the author meant (to allow nothing, use `mode: off`).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "Vec<T>", bound = "T: Deserialize<'de>")]
pub struct NonEmpty<T>(pub Vec<T>);

impl<T> TryFrom<Vec<T>> for NonEmpty<T> {
    type Error = &'static str;
    fn try_from(items: Vec<T>) -> Result<Self, Self::Error> {
        if items.is_empty() {
            Err("an empty list allows nothing: remove the key to lift the restriction")
        } else {
            Ok(NonEmpty(items))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleObject {
    host: HostPatternText,
    #[serde(default)]
    methods: Option<NonEmpty<MethodName>>,
    #[serde(default)]
    paths: Option<NonEmpty<PathPatternText>>,
    #[serde(default)]
    ports: Option<NonEmpty<NonZeroU16>>,
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct HostPatternText(HostPattern);

impl TryFrom<String> for HostPatternText {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        HostPattern::parse(&text)
            .map(HostPatternText)
            .map_err(|e| e.to_string())
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct PathPatternText(PathPattern);

impl TryFrom<String> for PathPatternText {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        PathPattern::parse(&text)
            .map(PathPatternText)
            .map_err(|e| e.to_string())
    }
}

impl<'de> Deserialize<'de> for RuleSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RuleSpecVisitor)
    }
}

/// Reads a rule as either a string or a map without `#[serde(untagged)]`,
/// which would replace every precise error with "did not match any variant".
struct RuleSpecVisitor;

impl<'de> Visitor<'de> for RuleSpecVisitor {
    type Value = RuleSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a host pattern or a rule {host, methods, paths, ports}")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<RuleSpec, E> {
        let host = HostPattern::parse(text).map_err(E::custom)?;
        Ok(RuleSpec {
            host,
            methods: None,
            paths: None,
            ports: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RuleSpec, A::Error> {
        let object = RuleObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(RuleSpec {
            host: object.host.0,
            methods: object.methods.map(|m| m.0),
            paths: object
                .paths
                .map(|paths| paths.0.into_iter().map(|p| p.0).collect()),
            ports: object.ports.map(|p| p.0),
        })
    }
}
