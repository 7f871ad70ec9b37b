//! Host and path patterns of a policy, validated at load time.
//!
//! Host patterns are label-aligned: `a.b` is exactly that host, `*.a.b` is any
//! subdomain of `a.b` at any depth (not the apex), `**.a.b` is the apex and any
//! subdomain. They compile to globs over the host's labels in reverse order
//! (`api.github.com` -> `com/github/api`) so that globset's `/` separator is a
//! label boundary and `**` can only ever match whole labels.

use std::fmt;
use std::net::IpAddr;

use globset::{Glob, GlobBuilder};
use thiserror::Error;

use crate::host::{DomainName, Host};

/// Why a pattern in a policy was rejected; each says how to write it instead.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("`{0}` matches every host: use `mode: unrestricted` instead")]
    MatchesEverything(String),
    #[error(
        "`{0}` is not label-aligned: a wildcard must be a whole leading label, \
         `*.example.com` (subdomains) or `**.example.com` (apex and subdomains)"
    )]
    NotLabelAligned(String),
    #[error("`{given}` is not in canonical form: write `{canonical}`")]
    NotCanonical { given: String, canonical: String },
    #[error("`{0}` is an IP address: wildcards only apply to names")]
    WildcardIp(String),
    #[error("`{pattern}` is not a valid host: {reason}")]
    InvalidHost { pattern: String, reason: String },
    #[error("path pattern `{0}` must start with `/`")]
    RelativePath(String),
    #[error("path pattern `{pattern}` is not a valid glob: {reason}")]
    InvalidPathGlob { pattern: String, reason: String },
}

/// A validated host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `a.b`, or an IP literal in canonical form.
    Exact(Host),
    /// `*.a.b`: any subdomain, not the apex.
    Subdomains(DomainName),
    /// `**.a.b`: the apex and any subdomain.
    ApexAndSubdomains(DomainName),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, PatternError> {
        if text.contains('*') && text.chars().all(|c| c == '*' || c == '.') {
            return Err(PatternError::MatchesEverything(text.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("**.") {
            return canonical_name(text, rest).map(HostPattern::ApexAndSubdomains);
        }
        if let Some(rest) = text.strip_prefix("*.") {
            return canonical_name(text, rest).map(HostPattern::Subdomains);
        }
        if text.contains('*') {
            return Err(PatternError::NotLabelAligned(text.to_owned()));
        }
        canonical_host(text).map(HostPattern::Exact)
    }

    /// The globs (over reversed labels) this pattern compiles to; none for
    /// IP literals, which are matched exactly.
    pub(crate) fn globs(&self) -> Vec<String> {
        match self {
            HostPattern::Exact(Host::Ip(_)) => Vec::new(),
            HostPattern::Exact(Host::Name(name)) => vec![label_path(name)],
            HostPattern::Subdomains(name) => vec![format!("{}/**", label_path(name))],
            HostPattern::ApexAndSubdomains(name) => {
                let path = label_path(name);
                vec![format!("{path}/**"), path]
            }
        }
    }

    pub(crate) fn ip(&self) -> Option<IpAddr> {
        match self {
            HostPattern::Exact(Host::Ip(ip)) => Some(*ip),
            _ => None,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => write!(f, "{host}"),
            HostPattern::Subdomains(name) => write!(f, "*.{}", name.as_str()),
            HostPattern::ApexAndSubdomains(name) => write!(f, "**.{}", name.as_str()),
        }
    }
}

/// A host name as a `/`-separated path of its labels, top-level first.
pub(crate) fn label_path(name: &DomainName) -> String {
    let labels: Vec<&str> = name.as_str().rsplit('.').collect();
    labels.join("/")
}

/// Compiles a glob in which `/` is a separator that `*` never crosses.
pub(crate) fn separator_glob(text: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(text).literal_separator(true).build()
}

fn canonical_host(text: &str) -> Result<Host, PatternError> {
    let host = Host::parse(text).map_err(|e| PatternError::InvalidHost {
        pattern: text.to_owned(),
        reason: e.to_string(),
    })?;
    let canonical = match &host {
        Host::Name(name) => name.as_str().to_owned(),
        Host::Ip(ip) => ip.to_string(),
    };
    let bracketed_v6 = matches!(host, Host::Ip(IpAddr::V6(_))) && text == host.to_string();
    if canonical != text && !bracketed_v6 {
        return Err(PatternError::NotCanonical {
            given: text.to_owned(),
            canonical,
        });
    }
    Ok(host)
}

fn canonical_name(pattern: &str, rest: &str) -> Result<DomainName, PatternError> {
    if rest.contains('*') {
        return Err(PatternError::NotLabelAligned(pattern.to_owned()));
    }
    match canonical_host(rest) {
        Ok(Host::Name(name)) => Ok(name),
        Ok(Host::Ip(_)) => Err(PatternError::WildcardIp(pattern.to_owned())),
        Err(PatternError::NotCanonical { canonical, .. }) => Err(PatternError::NotCanonical {
            given: pattern.to_owned(),
            canonical: format!("{}{canonical}", &pattern[..pattern.len() - rest.len()]),
        }),
        Err(other) => Err(other),
    }
}

/// A validated path glob: `*` stays within one segment, `**` crosses them.
#[derive(Debug, Clone)]
pub struct PathPattern {
    text: String,
    glob: Glob,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<PathPattern, PatternError> {
        if !text.starts_with('/') {
            return Err(PatternError::RelativePath(text.to_owned()));
        }
        let glob = separator_glob(text).map_err(|e| PatternError::InvalidPathGlob {
            pattern: text.to_owned(),
            reason: e.kind().to_string(),
        })?;
        Ok(PathPattern {
            text: text.to_owned(),
            glob,
        })
    }

    pub(crate) fn glob(&self) -> &Glob {
        &self.glob
    }

    /// The globs a deny rule matches with: this one in any letter case,
    /// and the spellings of the same place a server serves alike — `/a/**`
    /// also denies `/a` itself, `/a` also `/a/`.
    pub(crate) fn deny_globs(&self) -> Result<Vec<Glob>, globset::Error> {
        let mut texts = vec![self.text.clone()];
        if let Some(dir) = self.text.strip_suffix("/**") {
            texts.push(if dir.is_empty() {
                "/".to_owned()
            } else {
                dir.to_owned()
            });
        } else if !self.text.ends_with('/') {
            texts.push(format!("{}/", self.text));
        }
        texts
            .iter()
            .map(|text| {
                GlobBuilder::new(text)
                    .literal_separator(true)
                    .case_insensitive(true)
                    .build()
            })
            .collect()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_forms() {
        assert_eq!(
            HostPattern::parse("github.com").unwrap().to_string(),
            "github.com"
        );
        assert_eq!(
            HostPattern::parse("*.github.com").unwrap().globs(),
            vec!["com/github/**".to_string()]
        );
        assert_eq!(
            HostPattern::parse("**.github.com").unwrap().globs(),
            vec!["com/github/**".to_string(), "com/github".to_string()]
        );
    }

    #[test]
    fn rejects_wildcards_that_are_not_whole_leading_labels() {
        for bad in [
            "*github.com",
            "git*.com",
            "github.*",
            "a.*.com",
            "**github.com",
            "*.*.com",
        ] {
            assert!(
                matches!(
                    HostPattern::parse(bad),
                    Err(PatternError::NotLabelAligned(_))
                ),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn rejects_match_everything() {
        for bad in ["*", "**", "*.", "**."] {
            assert!(matches!(
                HostPattern::parse(bad),
                Err(PatternError::MatchesEverything(_))
            ));
        }
    }

    #[test]
    fn non_canonical_names_get_the_canonical_form_as_hint() {
        let cases = [
            ("GitHub.com", "github.com"),
            ("github.com.", "github.com"),
            ("*.GitHub.com", "*.github.com"),
            ("**.bücher.example", "**.xn--bcher-kva.example"),
            ("127.1", "127.0.0.1"),
        ];
        for (given, canonical) in cases {
            match HostPattern::parse(given) {
                Err(PatternError::NotCanonical { canonical: c, .. }) => assert_eq!(c, canonical),
                other => panic!("{given}: {other:?}"),
            }
        }
    }

    #[test]
    fn ip_literals_are_exact_only() {
        assert_eq!(
            HostPattern::parse("127.0.0.1").unwrap().ip(),
            Some("127.0.0.1".parse().unwrap())
        );
        assert!(HostPattern::parse("::1").unwrap().ip().is_some());
        assert!(HostPattern::parse("[::1]").unwrap().ip().is_some());
        assert!(matches!(
            HostPattern::parse("*.10.0.0.1"),
            Err(PatternError::WildcardIp(_)) | Err(PatternError::InvalidHost { .. })
        ));
    }

    #[test]
    fn path_patterns_must_be_absolute_and_valid() {
        assert!(PathPattern::parse("/repos/**").is_ok());
        assert!(matches!(
            PathPattern::parse("repos/**"),
            Err(PatternError::RelativePath(_))
        ));
        assert!(matches!(
            PathPattern::parse("/a/[b"),
            Err(PatternError::InvalidPathGlob { .. })
        ));
    }
}
