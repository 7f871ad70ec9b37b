//! The vocabulary of decisions: why a request was allowed or refused.
//!
//! Every denial carries a [`Reason`] whose [`Reason::code`] is the stable string
//! of DESIGN.md ("Decisions, denials, audit log") that appears in the
//! `X-Tollgate-Reason` header and in the audit log.

use std::fmt;
use std::sync::Arc;

use http::StatusCode;

/// Why a request was refused (or would have been, in audit mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    ModeOff,
    NotAllowlisted,
    Denylisted,
    MethodNotAllowed,
    PathNotAllowed,
    PortNotAllowed,
    InternalAddress,
    SniMismatch,
    EncryptedClientHello,
    HostMismatch,
    BadRequest,
    ResolveFailed,
    UpstreamFailed,
    AuditUnavailable,
    NeedsInterception,
    TooManyConnections,
}

impl Reason {
    /// The stable reason code of the contract.
    pub fn code(self) -> &'static str {
        match self {
            Reason::ModeOff => "mode-off",
            Reason::NotAllowlisted => "not-allowlisted",
            Reason::Denylisted => "denylisted",
            Reason::MethodNotAllowed => "method-not-allowed",
            Reason::PathNotAllowed => "path-not-allowed",
            Reason::PortNotAllowed => "port-not-allowed",
            Reason::InternalAddress => "internal-address",
            Reason::SniMismatch => "sni-mismatch",
            Reason::EncryptedClientHello => "encrypted-client-hello",
            Reason::HostMismatch => "host-mismatch",
            Reason::BadRequest => "bad-request",
            Reason::ResolveFailed => "resolve-failed",
            Reason::UpstreamFailed => "upstream-failed",
            Reason::AuditUnavailable => "audit-unavailable",
            Reason::NeedsInterception => "needs-interception",
            Reason::TooManyConnections => "too-many-connections",
        }
    }

    /// A short phrase a person or an agent understands, for the deny body.
    pub fn explain(self) -> &'static str {
        match self {
            Reason::ModeOff => "network access is off for this phase",
            Reason::NotAllowlisted => "host not in allowlist",
            Reason::Denylisted => "host is on the deny list",
            Reason::MethodNotAllowed => "method not allowed by policy",
            Reason::PathNotAllowed => "path not allowed by policy",
            Reason::PortNotAllowed => "port not allowed for this host",
            Reason::InternalAddress => "host resolves to an internal address",
            Reason::SniMismatch => "TLS server name differs from the CONNECT host",
            Reason::EncryptedClientHello => {
                "TLS hello hides its server name (Encrypted Client Hello); tunnels without interception need it in the clear"
            }
            Reason::HostMismatch => "Host header differs from the request target",
            Reason::BadRequest => "malformed proxy request",
            Reason::ResolveFailed => "could not resolve host",
            Reason::UpstreamFailed => "could not reach upstream server",
            Reason::AuditUnavailable => {
                "the audit log cannot be written; no request is served until it can"
            }
            Reason::NeedsInterception => {
                "the policy now decides on what is inside this tunnel, which a plain tunnel cannot show"
            }
            Reason::TooManyConnections => "this client holds as many connections as one client may",
        }
    }

    /// The HTTP status of the refusal: 403 for policy, 400 for a broken
    /// request, 502 when the proxy allowed it but could not deliver it, 503
    /// when it cannot record it.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::ResolveFailed | Reason::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Reason::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// What allowed a request: a named rule, or the mode itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// An allow rule, named as in the policy (e.g. `allow[2]:api.github.com`
    /// or `common-dependencies:**.github.com`).
    Rule(Arc<str>),
    /// `mode: unrestricted`.
    Unrestricted,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Rule(name) => f.write_str(name),
            Grant::Unrestricted => f.write_str("mode:unrestricted"),
        }
    }
}

/// The policy's answer, before enforcement is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Grant),
    Deny(Reason),
}

/// A verdict plus whether it is enforced (`enforce: false` is audit mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub enforced: bool,
}

/// The `decision` field of an audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    WouldDeny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::WouldDeny => "would_deny",
        }
    }
}

impl Decision {
    /// An enforced denial that no policy setting relaxes: broken requests,
    /// the internal-address guard, Host/SNI mismatches, delivery failures.
    pub fn refuse(reason: Reason) -> Decision {
        Decision {
            verdict: Verdict::Deny(reason),
            enforced: true,
        }
    }

    /// Whether the traffic may pass.
    pub fn permits(&self) -> bool {
        matches!(self.verdict, Verdict::Allow(_)) || !self.enforced
    }

    pub fn outcome(&self) -> Outcome {
        match (&self.verdict, self.enforced) {
            (Verdict::Allow(_), _) => Outcome::Allow,
            (Verdict::Deny(_), true) => Outcome::Deny,
            (Verdict::Deny(_), false) => Outcome::WouldDeny,
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        match self.verdict {
            Verdict::Deny(reason) => Some(reason),
            Verdict::Allow(_) => None,
        }
    }

    pub fn grant(&self) -> Option<&Grant> {
        match &self.verdict {
            Verdict::Allow(grant) => Some(grant),
            Verdict::Deny(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_mode_turns_denials_into_would_deny_and_lets_them_pass() {
        let audit = Decision {
            verdict: Verdict::Deny(Reason::NotAllowlisted),
            enforced: false,
        };
        assert!(audit.permits());
        assert_eq!(audit.outcome(), Outcome::WouldDeny);
        let enforced = Decision {
            enforced: true,
            ..audit
        };
        assert!(!enforced.permits());
        assert_eq!(enforced.outcome(), Outcome::Deny);
    }

    #[test]
    fn reason_codes_are_the_contract() {
        let all = [
            (Reason::ModeOff, "mode-off"),
            (Reason::NotAllowlisted, "not-allowlisted"),
            (Reason::Denylisted, "denylisted"),
            (Reason::MethodNotAllowed, "method-not-allowed"),
            (Reason::PathNotAllowed, "path-not-allowed"),
            (Reason::PortNotAllowed, "port-not-allowed"),
            (Reason::InternalAddress, "internal-address"),
            (Reason::SniMismatch, "sni-mismatch"),
            (Reason::EncryptedClientHello, "encrypted-client-hello"),
            (Reason::HostMismatch, "host-mismatch"),
            (Reason::BadRequest, "bad-request"),
            (Reason::ResolveFailed, "resolve-failed"),
            (Reason::UpstreamFailed, "upstream-failed"),
            (Reason::AuditUnavailable, "audit-unavailable"),
            (Reason::NeedsInterception, "needs-interception"),
            (Reason::TooManyConnections, "too-many-connections"),
        ];
        for (reason, code) in all {
            assert_eq!(reason.code(), code);
        }
    }
}
