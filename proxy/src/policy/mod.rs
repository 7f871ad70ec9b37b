//! The policy engine: a YAML policy (see [`file`]) compiled once into matchers,
//! then asked [`Policy::decide_request`] / [`Policy::decide_tunnel`] for every
//! request. Deciding needs no DNS: it looks only at the normalised host, the
//! port, and for HTTP requests the method and path (invariant 1).

mod builtin;
pub mod file;
pub mod path;
pub mod pattern;
mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use globset::{Candidate, GlobSet, GlobSetBuilder};
use http::Method;
use thiserror::Error;

pub use self::builtin::BUILTIN_NAMES;
pub use self::file::{Mode, Preset};
use self::file::{PolicyFile, RuleSpec};
use self::path::RequestPath;
use self::pattern::{label_path, separator_glob};
use crate::decision::{Decision, Grant, Reason, Verdict};
use crate::guard::AddressGuard;
use crate::host::{DomainName, Host};

/// Ports a rule without its own `ports` allows when the policy sets none.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("{origin}: cannot read policy: {source} (check the path and its permissions)")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error(
        "{origin}: this policy restricts methods or paths, which HTTPS can only enforce \
         with TLS interception: create a CA with `tollgate ca init` or pass --ca-dir DIR"
    )]
    NeedsInterception { origin: String },
    #[error(
        "no policy file `{0}` and no built-in policy of that name \
         (built-in: off, unrestricted, common-dependencies)"
    )]
    NotFound(String),
}

/// Where a request is going, normalised.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub host: &'a Host,
    pub port: u16,
}

/// A compiled, immutable policy.
#[derive(Debug)]
pub struct Policy {
    origin: Arc<str>,
    /// SHA-256 (hex) of the policy's text, stamped on audit records.
    digest: Arc<str>,
    mode: Mode,
    enforce: bool,
    allow: RuleSet,
    deny: RuleSet,
    methods: Option<Vec<Method>>,
    default_ports: Vec<u16>,
    guard: AddressGuard,
    hosts: BTreeMap<DomainName, IpAddr>,
}

impl Policy {
    /// Loads `arg` as a policy file if one exists at that path, else as the
    /// name of a built-in policy (`off`, `unrestricted`, `common-dependencies`).
    pub fn load(arg: &str) -> Result<Policy, PolicyError> {
        let path = Path::new(arg);
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
                origin: arg.to_owned(),
                source,
            })?;
            return Policy::from_yaml(arg, &text);
        }
        let text = builtin::source(arg).ok_or_else(|| PolicyError::NotFound(arg.to_owned()))?;
        let digest = sha256_hex(text.as_bytes());
        compile(&format!("builtin:{arg}"), builtin_file(arg)?, arg, digest)
    }

    /// The policy `tollgate proxy` enforces when given none.
    pub fn default_policy() -> Result<Policy, PolicyError> {
        Policy::load("common-dependencies")
    }

    /// Parses and compiles a policy file; `origin` names it in errors and
    /// logs. A leading UTF-8 byte-order mark is ignored; nesting deeper than
    /// [`yaml::MAX_DEPTH`], tags and duplicate keys are errors.
    pub fn from_yaml(origin: &str, text: &str) -> Result<Policy, PolicyError> {
        let text = yaml::strip_bom(text);
        check_yaml(origin, text)?;
        let missing_version = || PolicyError::Syntax {
            origin: origin.to_owned(),
            line: 1,
            column: 1,
            message: "missing field `version`: add `version: 1` at the top".to_owned(),
        };
        let file: PolicyFile = match serde_yaml::from_str(text) {
            Ok(file) => file,
            Err(_) if lacks_version(text) => return Err(missing_version()),
            Err(e) => return Err(syntax_error(origin, &e)),
        };
        if file.version.is_none() {
            return Err(missing_version());
        }
        compile(origin, file, "allow", sha256_hex(text.as_bytes()))
    }

    /// Compiles a policy already parsed, e.g. one written inline in an
    /// environment file (which may leave `version` out).
    /// Its digest is of the parsed form (there is no text of its own).
    pub fn from_file(origin: &str, file: PolicyFile) -> Result<Policy, PolicyError> {
        let digest = sha256_hex(format!("{file:?}").as_bytes());
        compile(origin, file, "allow", digest)
    }

    /// SHA-256 (hex) of the policy's text: what audit records name as the
    /// policy in force.
    pub fn digest(&self) -> &Arc<str> {
        &self.digest
    }

    /// Refuses a policy that cannot be enforced as written (invariant 5: a
    /// policy is never silently weakened).
    pub fn check_enforceable(&self, interception: bool) -> Result<(), PolicyError> {
        if self.needs_interception() && !interception {
            return Err(PolicyError::NeedsInterception {
                origin: self.origin.to_string(),
            });
        }
        Ok(())
    }

    /// Whether some rule looks inside HTTP requests (methods or paths), which
    /// for HTTPS means terminating TLS.
    pub fn needs_interception(&self) -> bool {
        self.methods.is_some() || self.allow.inspects_requests() || self.deny.inspects_requests()
    }

    /// Whether a tunnel to `target` must be intercepted for this policy to be
    /// enforced: something decides on what is inside it (global `methods`, or
    /// a matching deny or allow rule with methods or paths), and no allow rule
    /// grants the host and port unconditionally. Everything else stays a
    /// plain tunnel.
    pub fn tunnel_needs_interception(&self, target: Target<'_>) -> bool {
        if self.mode == Mode::Off {
            return false;
        }
        if self.methods.is_some() {
            return true;
        }
        let deny_inspects = self
            .deny
            .rules_for(target.host)
            .any(|rule| rule.inspects_requests() && rule.applies_to_port(target.port));
        if deny_inspects {
            return true;
        }
        if self.mode == Mode::Unrestricted {
            return false;
        }
        let mut granting = self
            .allow
            .rules_for(target.host)
            .filter(|rule| rule.admits(target.port, None, &self.default_ports).is_ok())
            .peekable();
        granting.peek().is_some() && granting.all(Rule::inspects_requests)
    }

    /// Decides a plain HTTP request (or one read inside an intercepted tunnel).
    /// A method with a lower-case letter is refused as `bad-request`: methods
    /// are case-sensitive (RFC 9110 §9.1) and every registered one is upper
    /// case, but frameworks upper-case what they receive, so `delete` would
    /// be a DELETE that a `DELETE` rule does not see.
    pub fn decide_request(&self, target: Target<'_>, method: &Method, path: &str) -> Decision {
        if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            return self.enforce(Verdict::Deny(Reason::BadRequest));
        }
        let request = HttpParts {
            method,
            path: RequestPath::classify(path),
        };
        self.enforce(self.verdict(target, Some(&request)))
    }

    /// Decides a tunnel (CONNECT) on its host and port alone. Rules that
    /// restrict methods or paths are decided later, per request, inside an
    /// intercepted tunnel.
    pub fn decide_tunnel(&self, target: Target<'_>) -> Decision {
        self.enforce(self.verdict(target, None))
    }

    pub fn guard(&self) -> &AddressGuard {
        &self.guard
    }

    /// The static `hosts:` entry for a name, consulted before DNS.
    pub fn static_address(&self, name: &DomainName) -> Option<IpAddr> {
        self.hosts.get(name).copied()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn enforced(&self) -> bool {
        self.enforce
    }

    /// One line for `policy check` and the proxy's start-up log.
    pub fn summary(&self) -> String {
        let enforcement = if self.enforce {
            "enforced"
        } else {
            "audit mode"
        };
        let mut line = format!(
            "mode {}, {enforcement}, {} allow and {} deny rules",
            self.mode,
            self.allow.rules.len(),
            self.deny.rules.len()
        );
        if self.needs_interception() {
            line.push_str(", needs TLS interception");
        }
        line
    }

    fn enforce(&self, verdict: Verdict) -> Decision {
        Decision {
            verdict,
            enforced: self.enforce,
        }
    }

    fn verdict(&self, target: Target<'_>, http: Option<&HttpParts<'_>>) -> Verdict {
        if self.mode == Mode::Off {
            return Verdict::Deny(Reason::ModeOff);
        }
        if self.deny.any_denies(target, http) {
            return Verdict::Deny(Reason::Denylisted);
        }
        if let (Some(allowed), Some(request)) = (&self.methods, http) {
            if !allowed.contains(request.method) {
                return Verdict::Deny(Reason::MethodNotAllowed);
            }
        }
        match self.mode {
            Mode::Unrestricted => Verdict::Allow(Grant::Unrestricted),
            _ => self.allow.first_grant(target, http, &self.default_ports),
        }
    }
}

struct HttpParts<'a> {
    method: &'a Method,
    path: RequestPath,
}

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    methods: Option<Vec<Method>>,
    paths: Option<GlobSet>,
    ports: Option<Vec<u16>>,
}

/// How far a request got through one rule: the furthest stage any candidate
/// rule reached names the denial ("right host, wrong port" beats "unknown host").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Miss {
    Port,
    Method,
    Path,
}

impl Miss {
    fn reason(self) -> Reason {
        match self {
            Miss::Port => Reason::PortNotAllowed,
            Miss::Method => Reason::MethodNotAllowed,
            Miss::Path => Reason::PathNotAllowed,
        }
    }
}

impl Rule {
    /// Checks an allow rule; `Err` says at which stage it stopped matching.
    fn admits(
        &self,
        port: u16,
        http: Option<&HttpParts<'_>>,
        default_ports: &[u16],
    ) -> Result<(), Miss> {
        let ports = self.ports.as_deref().unwrap_or(default_ports);
        if !ports.contains(&port) {
            return Err(Miss::Port);
        }
        let Some(request) = http else {
            return Ok(());
        };
        if let Some(methods) = &self.methods {
            if !methods.contains(request.method) {
                return Err(Miss::Method);
            }
        }
        if let Some(paths) = &self.paths {
            let matched = match &request.path {
                RequestPath::Clear(path) => paths.is_match(path),
                RequestPath::Ambiguous => false,
            };
            if !matched {
                return Err(Miss::Path);
            }
        }
        Ok(())
    }

    /// Checks a deny rule. Without request details (a tunnel), a rule that
    /// names methods or paths cannot apply yet; an ambiguous path is denied.
    fn forbids(&self, port: u16, http: Option<&HttpParts<'_>>) -> bool {
        if !self.applies_to_port(port) {
            return false;
        }
        let Some(request) = http else {
            return self.methods.is_none() && self.paths.is_none();
        };
        let method_hit = self
            .methods
            .as_ref()
            .is_none_or(|methods| methods.contains(request.method));
        let path_hit = self.paths.as_ref().is_none_or(|paths| match &request.path {
            RequestPath::Clear(path) => paths.is_match(path),
            RequestPath::Ambiguous => true,
        });
        method_hit && path_hit
    }

    fn inspects_requests(&self) -> bool {
        self.methods.is_some() || self.paths.is_some()
    }

    fn applies_to_port(&self, port: u16) -> bool {
        self.ports
            .as_ref()
            .is_none_or(|ports| ports.contains(&port))
    }
}

/// Rules compiled for host look-up: one globset over every name pattern, and
/// a map for IP literals.
#[derive(Debug)]
struct RuleSet {
    rules: Vec<Rule>,
    names: GlobSet,
    glob_rule: Vec<usize>,
    ips: HashMap<IpAddr, Vec<usize>>,
}

impl RuleSet {
    /// Indexes of the rules whose host pattern matches, in policy order.
    fn matching(&self, host: &Host) -> Vec<usize> {
        match host {
            Host::Ip(ip) => self.ips.get(ip).cloned().unwrap_or_default(),
            Host::Name(name) => {
                let path = label_path(name);
                let mut hits: Vec<usize> = self
                    .names
                    .matches_candidate(&Candidate::new(&path))
                    .into_iter()
                    .filter_map(|glob| self.glob_rule.get(glob).copied())
                    .collect();
                hits.sort_unstable();
                hits.dedup();
                hits
            }
        }
    }

    /// The rules whose host pattern matches, in policy order.
    fn rules_for(&self, host: &Host) -> impl Iterator<Item = &Rule> {
        self.matching(host)
            .into_iter()
            .filter_map(|i| self.rules.get(i))
    }

    fn any_denies(&self, target: Target<'_>, http: Option<&HttpParts<'_>>) -> bool {
        self.rules_for(target.host)
            .any(|rule| rule.forbids(target.port, http))
    }

    fn first_grant(
        &self,
        target: Target<'_>,
        http: Option<&HttpParts<'_>>,
        default_ports: &[u16],
    ) -> Verdict {
        let mut furthest: Option<Miss> = None;
        for rule in self.rules_for(target.host) {
            match rule.admits(target.port, http, default_ports) {
                Ok(()) => return Verdict::Allow(Grant::Rule(rule.name.clone())),
                Err(miss) => furthest = furthest.max(Some(miss)),
            }
        }
        Verdict::Deny(furthest.map_or(Reason::NotAllowlisted, Miss::reason))
    }

    fn inspects_requests(&self) -> bool {
        self.rules.iter().any(Rule::inspects_requests)
    }
}

/// A rule spec with the name it will carry in decisions and the audit log.
struct NamedSpec {
    name: String,
    spec: RuleSpec,
}

/// `allow_prefix` names allow rules: `allow` gives `allow[3]:github.com`; a
/// built-in policy uses its own name, as its rules do when used as a preset.
fn sha256_hex(bytes: &[u8]) -> Arc<str> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    Arc::from(
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )
}

fn compile(
    origin: &str,
    file: PolicyFile,
    allow_prefix: &str,
    digest: Arc<str>,
) -> Result<Policy, PolicyError> {
    let invalid = |message: String| PolicyError::Invalid {
        origin: origin.to_owned(),
        message,
    };
    let mut allow: Vec<NamedSpec> = name_rules(allow_prefix, file.allow);
    for preset in &file.presets {
        allow.extend(preset_rules(*preset).map_err(|e| invalid(e.to_string()))?);
    }
    let deny = name_rules("deny", file.deny);
    Ok(Policy {
        origin: Arc::from(origin),
        digest,
        mode: file.mode,
        enforce: file.enforce,
        allow: build_rule_set(allow, PathCase::Exact).map_err(invalid)?,
        deny: build_rule_set(deny, PathCase::Ignored).map_err(invalid)?,
        methods: file.methods.map(|m| m.0.into_iter().map(|m| m.0).collect()),
        default_ports: file.ports.map_or(DEFAULT_PORTS.to_vec(), |ports| {
            ports.0.into_iter().map(u16::from).collect()
        }),
        guard: AddressGuard::new(file.allow_internal),
        hosts: file.hosts.into_iter().map(|(k, v)| (k.0, v)).collect(),
    })
}

/// Names rules `allow[i]:pattern` / `deny[i]:pattern`; rules of a built-in
/// list are `name:pattern` (its patterns are unique, its indexes meaningless
/// to a reader).
fn name_rules(list: &str, specs: Vec<RuleSpec>) -> Vec<NamedSpec> {
    let indexed = list == "allow" || list == "deny";
    specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| NamedSpec {
            name: if indexed {
                format!("{list}[{i}]:{}", spec.host)
            } else {
                format!("{list}:{}", spec.host)
            },
            spec,
        })
        .collect()
}

/// The allow rules of a preset, named `<preset>:<pattern>`.
fn preset_rules(preset: Preset) -> Result<Vec<NamedSpec>, PolicyError> {
    let name = preset.name();
    Ok(name_rules(name, builtin_file(name)?.allow))
}

fn builtin_file(name: &str) -> Result<PolicyFile, PolicyError> {
    let text = builtin::source(name).ok_or_else(|| PolicyError::NotFound(name.to_owned()))?;
    let origin = format!("builtin:{name}");
    check_yaml(&origin, text)?;
    serde_yaml::from_str(text).map_err(|e| syntax_error(&origin, &e))
}

/// Refuses what serde_yaml would accept and a policy must not hold (see
/// [`yaml`]): the text scan first, so that nothing too deep reaches libyaml.
/// Reads `text` (a policy, or a file that holds policies, such as an
/// environment file) as strictly as a policy file must be: nesting deeper
/// than [`yaml::MAX_DEPTH`], tags and duplicate keys are errors with their
/// line. `origin` names it in the error.
pub fn check_yaml(origin: &str, text: &str) -> Result<(), PolicyError> {
    prescan_yaml(origin, text)?;
    yaml::walk(text).map_err(|e| syntax_error(origin, &e))
}

/// The part of [`check_yaml`] that must come before any YAML parser sees
/// `text`: nesting too deep (libyaml is quadratic in it) and tags, in one
/// linear pass.
pub fn prescan_yaml(origin: &str, text: &str) -> Result<(), PolicyError> {
    yaml::scan(text).map_err(|e| {
        let (line, column) = e.position();
        PolicyError::Syntax {
            origin: origin.to_owned(),
            line,
            column,
            message: e.to_string(),
        }
    })
}

/// How a rule set's path globs are read: allow rules exactly (a path in
/// another case is not allowed), deny rules in any case (some servers
/// route `/Admin` where the rule says `/admin`) and with the directory
/// itself (`/admin/**` denies `/admin`). Either way a rule that could be
/// dodged fails closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathCase {
    Exact,
    Ignored,
}

fn build_rule_set(specs: Vec<NamedSpec>, case: PathCase) -> Result<RuleSet, String> {
    let mut names = GlobSetBuilder::new();
    let mut glob_rule = Vec::new();
    let mut ips: HashMap<IpAddr, Vec<usize>> = HashMap::new();
    let mut rules = Vec::with_capacity(specs.len());
    for (index, NamedSpec { name, spec }) in specs.into_iter().enumerate() {
        if let Some(ip) = spec.host.ip() {
            ips.entry(ip).or_default().push(index);
        }
        for glob in spec.host.globs() {
            names.add(separator_glob(&glob).map_err(|e| format!("rule {name}: {e}"))?);
            glob_rule.push(index);
        }
        rules.push(compile_rule(name, spec, case)?);
    }
    Ok(RuleSet {
        rules,
        names: names.build().map_err(|e| e.to_string())?,
        glob_rule,
        ips,
    })
}

fn compile_rule(name: String, spec: RuleSpec, case: PathCase) -> Result<Rule, String> {
    let paths = match spec.paths {
        None => None,
        Some(patterns) => {
            let mut set = GlobSetBuilder::new();
            for pattern in patterns {
                match case {
                    PathCase::Exact => {
                        set.add(pattern.glob().clone());
                    }
                    PathCase::Ignored => {
                        for glob in pattern
                            .deny_globs()
                            .map_err(|e| format!("rule {name}: {e}"))?
                        {
                            set.add(glob);
                        }
                    }
                }
            }
            Some(set.build().map_err(|e| format!("rule {name}: {e}"))?)
        }
    };
    Ok(Rule {
        name: Arc::from(name),
        methods: spec
            .methods
            .map(|methods| methods.into_iter().map(|m| m.0).collect()),
        paths,
        ports: spec
            .ports
            .map(|ports| ports.into_iter().map(u16::from).collect()),
    })
}

/// Whether a policy file is a mapping (or nothing) without `version`: that
/// is said first, whatever else is wrong, as the version says how to read
/// the rest.
fn lacks_version(text: &str) -> bool {
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(serde_yaml::Value::Mapping(mapping)) => !mapping.contains_key("version"),
        Ok(serde_yaml::Value::Null) => true,
        _ => false,
    }
}

/// Turns a serde_yaml error into `origin:line:column: message`, with a hint
/// for the most common YAML trap in policies.
fn syntax_error(origin: &str, error: &serde_yaml::Error) -> PolicyError {
    let (line, column) = error.location().map_or((1, 1), |l| (l.line(), l.column()));
    let text = error.to_string();
    let suffix = format!(" at line {line} column {column}");
    let mut message = text
        .split_once(&suffix)
        .map_or(text.as_str(), |(head, _)| head)
        .to_owned();
    if text.contains("scanning an alias") {
        message.push_str(" (a pattern that starts with `*` must be quoted: \"*.example.com\")");
    }
    PolicyError::Syntax {
        origin: origin.to_owned(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod request_tests;
#[cfg(test)]
mod tests;
