//! Host normalisation: the one place where host text from a request URI, a
//! `Host` header, a TLS SNI or a policy file becomes a [`Host`].
//!
//! Every other part of the proxy compares, matches, logs and dials `Host`
//! values, never raw strings. Doing it once, strictly, is what stops
//! `EXAMPLE.com.`, `ｅｘａｍｐｌｅ．ｃｏｍ` and `example.com` from being three
//! different hosts to the policy but one host to the network, and what stops
//! `2130706433` or `0x7f.1` from being looked up as a "name" while the
//! resolver quietly treats it as 127.0.0.1 (DESIGN.md, invariant 3).
//!
//! The rules follow the WHATWG URL host parser (what browsers, and most
//! clients a sandbox runs, do), made stricter where a lenient reading could
//! hide an address: no percent-decoding, no zone ids, no wildcards, no signs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use http::uri::Authority;
use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// Longest DNS name in presentation form, without the root dot (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;
/// Raw input cap. A valid name is at most 253 ASCII bytes after IDNA; Unicode
/// input may be a few times longer in UTF-8, never this long. Refusing early
/// keeps attacker-sized strings out of the IDNA machinery.
const MAX_INPUT_BYTES: usize = 1024;
/// How much of an offending input an error message quotes.
const SHOWN_CHARS: usize = 80;

/// A host as the proxy understands it: a canonical DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, to be checked against the policy before it is resolved.
    Name(DomainName),
    /// An IP literal (any inet_aton form, or IPv6), to be guarded, never resolved.
    Ip(IpAddr),
}

/// Canonical DNS name: lowercase ASCII (IDNA/punycode applied), no trailing dot,
/// labels 1..=63 chars of [a-z0-9-_], total <= 253.
///
/// Only [`Host::parse`] makes one, so holding a `DomainName` proves the text
/// went through normalisation and cannot be read as an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// The canonical text, e.g. `xn--bcher-kva.example`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why host text was refused. Each message quotes the input (escaped, so it
/// stays on one line) and says what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum HostError {
    /// Nothing where a host was expected.
    #[error("empty host")]
    Empty,
    /// Longer than any host could be, refused before parsing.
    #[error("host is {len} bytes long; at most {MAX_INPUT_BYTES} bytes are accepted")]
    InputTooLong { len: usize },
    /// A wildcard: patterns belong in policy rules, never in a host.
    #[error("host {input:?} contains '*': a wildcard is a policy pattern, not a host")]
    Wildcard { input: String },
    /// A character no canonical host name may contain.
    #[error("host {input:?} contains the character {ch:?}, which is not allowed in a host name")]
    ForbiddenChar { input: String, ch: char },
    /// An IPv6 zone id (`fe80::1%eth0`), which names a local interface.
    #[error("host {input:?} has an IPv6 zone identifier ('%'); zone ids are not allowed")]
    ZoneId { input: String },
    /// Brackets that are unbalanced or do not hold an IPv6 address.
    #[error(
        "host {input:?}: square brackets must enclose exactly one IPv6 address, e.g. [2001:db8::1]"
    )]
    Brackets { input: String },
    /// A ':' in something that is not an IPv6 literal.
    #[error("host {input:?} contains ':' but is not an IPv6 address (a port is not part of a host; IPv6 is written like [2001:db8::1])")]
    InvalidIpv6 { input: String },
    /// Numeric last label, but not a valid IPv4 address in any inet_aton form.
    #[error("host {input:?} ends in a number but is not a valid IPv4 address")]
    InvalidIpv4 { input: String },
    /// Refused by UTS #46 processing (bad punycode, disallowed code point, ...).
    #[error("host {input:?} is not a valid internationalised domain name (IDNA, UTS #46)")]
    Idna { input: String },
    /// An empty label: leading dot, `..`, or a second trailing dot.
    #[error(
        "host {input:?} has an empty label (leading dot, \"..\", or more than one trailing dot)"
    )]
    EmptyLabel { input: String },
    /// A label over 63 characters (after punycode).
    #[error(
        "host {input:?} has a label of {len} characters; a DNS label has at most {MAX_LABEL_LEN}"
    )]
    LabelTooLong { input: String, len: usize },
    /// A name over 253 characters (after punycode).
    #[error("host {input:?} is {len} characters long; a DNS name has at most {MAX_NAME_LEN}")]
    NameTooLong { input: String, len: usize },
    /// `user[:password]@` in an authority.
    #[error("authority for {input:?} contains user info ('@'); credentials in the host part are not allowed")]
    Userinfo { input: String },
    /// Port 0, which cannot be dialled.
    #[error("authority {input:?} has port 0; use a port from 1 to 65535")]
    PortZero { input: String },
    /// A port that is not a decimal number up to 65535.
    #[error("authority {input:?} has an invalid port; expected a number from 1 to 65535")]
    InvalidPort { input: String },
    /// Text that `http::uri::Authority` refuses, or junk after the host.
    #[error("{input:?} is not a valid host[:port] authority: {reason}")]
    InvalidAuthority { input: String, reason: String },
}

/// The input as quoted in an error: shortened so a hostile megabyte cannot
/// flood a log line.
fn shown(input: &str) -> String {
    match input.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", input.get(..cut).unwrap_or_default()),
        None => input.to_owned(),
    }
}

impl Host {
    /// Parse a bare host as found in a URL authority, a Host header, an SNI or a policy:
    /// any case, optional single trailing dot, Unicode (IDNA UTS-46 -> punycode),
    /// "[v6]" brackets (also accept an unbracketed IPv6 literal), IPv4 in every inet_aton form.
    pub fn parse(input: &str) -> Result<Host, HostError> {
        check_input_size(input)?;
        if input.contains('*') {
            return Err(HostError::Wildcard {
                input: shown(input),
            });
        }
        if input.starts_with('[') || input.ends_with(']') {
            return parse_bracketed_ipv6(input).map(|ip| Host::Ip(IpAddr::V6(ip)));
        }
        if input.contains(':') {
            return parse_bare_ipv6(input).map(|ip| Host::Ip(IpAddr::V6(ip)));
        }
        reject_forbidden_chars(input, input)?;
        let ascii = to_ascii(input)?;
        reject_forbidden_chars(input, &ascii)?;
        let name = strip_root_dot(input, &ascii)?;
        if ends_in_number(name) {
            return parse_ipv4(name)
                .map(|ip| Host::Ip(IpAddr::V4(ip)))
                .ok_or_else(|| HostError::InvalidIpv4 {
                    input: shown(input),
                });
        }
        validate_dns_name(input, name).map(Host::Name)
    }
}

/// Refuse empty input, and input too long to be a host, before any work.
fn check_input_size(input: &str) -> Result<(), HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    if input.len() > MAX_INPUT_BYTES {
        return Err(HostError::InputTooLong { len: input.len() });
    }
    Ok(())
}

/// `[...]` is an IPv6 literal and nothing else (RFC 3986 IP-literal); a
/// bracketed name or IPv4 address is a trick, not a host.
fn parse_bracketed_ipv6(input: &str) -> Result<Ipv6Addr, HostError> {
    let inner = input
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .ok_or_else(|| HostError::Brackets {
            input: shown(input),
        })?;
    if inner.contains('%') {
        return Err(HostError::ZoneId {
            input: shown(input),
        });
    }
    Ipv6Addr::from_str(inner).map_err(|_| HostError::Brackets {
        input: shown(input),
    })
}

/// An unbracketed host with a ':' can only be an IPv6 literal (as an SNI or a
/// policy might carry it). Zone ids name a local interface: refused outright.
fn parse_bare_ipv6(input: &str) -> Result<Ipv6Addr, HostError> {
    if input.contains('%') {
        return Err(HostError::ZoneId {
            input: shown(input),
        });
    }
    Ipv6Addr::from_str(input).map_err(|_| HostError::InvalidIpv6 {
        input: shown(input),
    })
}

/// Is `ch` allowed in host text as it reaches (or leaves) IDNA? ASCII is
/// limited to what a canonical name may hold (any case); whitespace and
/// control characters are refused at every code point, Unicode or not; other
/// Unicode is left for UTS #46 to map or reject.
fn is_allowed_host_char(ch: char) -> bool {
    if ch.is_ascii() {
        ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')
    } else {
        !ch.is_whitespace() && !ch.is_control()
    }
}

/// What a canonical `DomainName` is made of: [a-z0-9-_] and the dots between labels.
fn is_canonical_name_char(ch: char) -> bool {
    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '-' | '_' | '.')
}

/// Check `text` (the raw input, or its IDNA output) character by character,
/// naming the first offender. Run on the IDNA output too, because UTS #46 maps
/// look-alikes such as U+FF0A '＊' to their ASCII forms.
fn reject_forbidden_chars(input: &str, text: &str) -> Result<(), HostError> {
    match text.chars().find(|&ch| !is_allowed_host_char(ch)) {
        None => Ok(()),
        Some('*') => Err(HostError::Wildcard {
            input: shown(input),
        }),
        Some(ch) => Err(HostError::ForbiddenChar {
            input: shown(input),
            ch,
        }),
    }
}

/// UTS #46 ToASCII as the WHATWG URL standard runs it: lowercases, maps
/// full-width forms and the ideographic full stop, punycodes Unicode labels
/// and validates `xn--` labels. Hyphen positions are not checked because real
/// names (e.g. CDN nodes `r1---sn-abc.example`) break that rule; lengths are
/// checked afterwards with clearer errors.
fn to_ascii(input: &str) -> Result<String, HostError> {
    Uts46::new()
        .to_ascii(
            input.as_bytes(),
            AsciiDenyList::URL,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| HostError::Idna {
            input: shown(input),
        })
}

/// Drop one trailing root dot (`example.com.` is `example.com`); more than one,
/// or nothing left, is malformed.
fn strip_root_dot<'a>(input: &str, ascii: &'a str) -> Result<&'a str, HostError> {
    let name = ascii.strip_suffix('.').unwrap_or(ascii);
    if name.is_empty() || name.ends_with('.') {
        return Err(HostError::EmptyLabel {
            input: shown(input),
        });
    }
    Ok(name)
}

/// WHATWG "ends in a number": a host whose last label is numeric is an IPv4
/// address or an error, never a DNS name (`foo.123` must not reach a resolver
/// that might read it differently). Stricter than WHATWG, a last label of
/// '-' and digits counts too, because `strtoul`-based `inet_aton` accepts
/// signs (glibc reads "-0" as 0.0.0.0).
///
/// This is about syntax, not value: `0x100000000` ends in a number (and is
/// then refused as out of range), it must not fall through to DNS.
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    let unsigned = last.strip_prefix('-').unwrap_or(last);
    is_decimal_digits(unsigned) || is_hex_number(unsigned)
}

/// One or more ASCII digits (decimal, or octal with a leading 0 — "08" counts
/// as numeric even though it is not a valid octal part).
fn is_decimal_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// `0x`/`0X` followed by zero or more hex digits, whatever its value.
fn is_hex_number(text: &str) -> bool {
    strip_hex_prefix(text).is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn strip_hex_prefix(text: &str) -> Option<&str> {
    text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"))
}

/// IPv4 in every `inet_aton` form (WHATWG IPv4 parser): 1 to 4 parts, each
/// decimal, octal (leading 0) or hex (0x); the last part fills the remaining
/// bytes. `127.1`, `0x7f.1`, `0177.0.0.1` and `2130706433` are all 127.0.0.1.
fn parse_ipv4(name: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = name.split('.').collect();
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (octet, part) in octets.iter_mut().zip(leading) {
        *octet = u8::try_from(parse_ipv4_number(part)?).ok()?;
    }
    // The last part must fit in the bytes the leading parts left free: its
    // big-endian bytes that overlap a leading part must be zero.
    let tail = parse_ipv4_number(last)?.to_be_bytes();
    if tail.iter().take(leading.len()).any(|&byte| byte != 0) {
        return None;
    }
    for (octet, byte) in octets.iter_mut().zip(tail).skip(leading.len()) {
        *octet = byte;
    }
    Some(Ipv4Addr::from(octets))
}

/// One `inet_aton` part: `0x`/`0X` prefix = hex, other leading `0` = octal,
/// else decimal. No signs, no whitespace, no empty part; values above
/// u32::MAX are refused rather than wrapped. A bare `0x` is 0, as in WHATWG.
fn parse_ipv4_number(part: &str) -> Option<u32> {
    if part.is_empty() {
        return None;
    }
    let (radix, digits) = match strip_hex_prefix(part) {
        Some(hex) => (16, hex),
        None if part.len() > 1 => match part.strip_prefix('0') {
            Some(octal) => (8, octal),
            None => (10, part),
        },
        None => (10, part),
    };
    digits.chars().try_fold(0u32, |value, ch| {
        let digit = ch.to_digit(radix)?;
        value.checked_mul(radix)?.checked_add(digit)
    })
}

/// Final shape check of the IDNA output: label and total lengths, and (again,
/// so the `DomainName` invariant never rests on IDNA's lowercasing alone)
/// only [a-z0-9-_] in labels.
fn validate_dns_name(input: &str, name: &str) -> Result<DomainName, HostError> {
    if let Some(ch) = name.chars().find(|&ch| !is_canonical_name_char(ch)) {
        return Err(HostError::ForbiddenChar {
            input: shown(input),
            ch,
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(HostError::NameTooLong {
            input: shown(input),
            len: name.len(),
        });
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel {
                input: shown(input),
            });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong {
                input: shown(input),
                len: label.len(),
            });
        }
    }
    Ok(DomainName(name.to_owned()))
}

/// Names as-is, IPv4 dotted quad, IPv6 in brackets "[::1]" (authority form).
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name.as_str()),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// A normalised host and the port it is reached on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The normalised host.
    pub host: Host,
    /// The port, 1..=65535 (the default port when the text had none).
    pub port: u16,
}

impl HostPort {
    /// From a parsed `http::uri::Authority`; `default_port` when it has none.
    /// Rejects userinfo ("user:pw@host") and port 0.
    ///
    /// `http` splits host from port; the port text is checked here because
    /// `Authority::port()` silently returns `None` for `:99999` or `:8a`,
    /// which would otherwise fall back to the default port.
    pub fn from_authority(
        authority: &http::uri::Authority,
        default_port: u16,
    ) -> Result<HostPort, HostError> {
        let text = authority.as_str();
        // Checked before `Authority::host()`, which indexes the text after
        // any '@' and assumes it is non-empty.
        if text.is_empty() {
            return Err(HostError::Empty);
        }
        if text.contains('@') {
            // Only what follows the '@': the rest is a password.
            let host_part = text.rsplit('@').next().unwrap_or_default();
            return Err(HostError::Userinfo {
                input: shown(host_part),
            });
        }
        let host_text = authority.host();
        let after_host = text
            .strip_prefix(host_text)
            .ok_or_else(|| unexpected_after_host(text))?;
        let port = parse_port(text, after_host, default_port)?;
        let host = Host::parse(host_text)?;
        Ok(HostPort { host, port })
    }

    /// Parse "host[:port]" text (e.g. a CONNECT target or Host header) via `http::uri::Authority`, then as above.
    pub fn parse(input: &str, default_port: u16) -> Result<HostPort, HostError> {
        if input.is_empty() {
            return Err(HostError::Empty);
        }
        let authority =
            Authority::from_str(input).map_err(|error| HostError::InvalidAuthority {
                input: shown(input),
                reason: error.to_string(),
            })?;
        HostPort::from_authority(&authority, default_port)
    }
}

fn unexpected_after_host(text: &str) -> HostError {
    HostError::InvalidAuthority {
        input: shown(text),
        reason: "unexpected text after the host".to_owned(),
    }
}

/// The text after the host: nothing or an empty port (RFC 3986 §3.2.3: the
/// scheme's default), or ':' and decimal digits giving 1..=65535.
fn parse_port(text: &str, after_host: &str, default_port: u16) -> Result<u16, HostError> {
    let digits = match after_host.strip_prefix(':') {
        Some(digits) => digits,
        None if after_host.is_empty() => "",
        None => return Err(unexpected_after_host(text)),
    };
    let port = if digits.is_empty() {
        default_port
    } else if digits.bytes().all(|b| b.is_ascii_digit()) {
        digits
            .parse::<u16>()
            .map_err(|_| HostError::InvalidPort { input: shown(text) })?
    } else {
        return Err(HostError::InvalidPort { input: shown(text) });
    };
    if port == 0 {
        return Err(HostError::PortZero { input: shown(text) });
    }
    Ok(port)
}

/// "host:port", IPv6 bracketed: `[::1]:443`.
impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests;
