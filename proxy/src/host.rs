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
mod tests {
    use super::*;

    fn v4(s: &str) -> Host {
        Host::Ip(IpAddr::V4(s.parse().unwrap()))
    }

    fn v6(s: &str) -> Host {
        Host::Ip(IpAddr::V6(s.parse().unwrap()))
    }

    fn name(s: &str) -> Host {
        Host::Name(DomainName(s.to_owned()))
    }

    /// Assert every (input, expected) pair, reporting all failures at once.
    fn check_ok(cases: &[(&str, Host)]) {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|(input, want)| match Host::parse(input) {
                Ok(got) if &got == want => None,
                other => Some(format!("{input:?}: want Ok({want:?}), got {other:?}")),
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// A predicate picking out one `HostError` variant.
    type IsKind = fn(&HostError) -> bool;

    /// Assert every input fails with an error of the expected kind.
    fn check_err(cases: &[(&str, IsKind)]) {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|(input, is_expected)| match Host::parse(input) {
                Err(error) if is_expected(&error) => None,
                other => Some(format!("{input:?}: unexpected {other:?}")),
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    fn is_ipv4(e: &HostError) -> bool {
        matches!(e, HostError::InvalidIpv4 { .. })
    }
    fn is_empty_label(e: &HostError) -> bool {
        matches!(e, HostError::EmptyLabel { .. })
    }
    fn is_brackets(e: &HostError) -> bool {
        matches!(e, HostError::Brackets { .. })
    }
    fn is_ipv6(e: &HostError) -> bool {
        matches!(e, HostError::InvalidIpv6 { .. })
    }
    fn is_zone(e: &HostError) -> bool {
        matches!(e, HostError::ZoneId { .. })
    }
    fn is_idna(e: &HostError) -> bool {
        matches!(e, HostError::Idna { .. })
    }
    fn is_forbidden(e: &HostError) -> bool {
        matches!(e, HostError::ForbiddenChar { .. })
    }
    fn is_wildcard(e: &HostError) -> bool {
        matches!(e, HostError::Wildcard { .. })
    }

    #[test]
    fn ipv4_every_inet_aton_form() {
        check_ok(&[
            ("127.0.0.1", v4("127.0.0.1")),
            ("2130706433", v4("127.0.0.1")),
            ("0x7f.1", v4("127.0.0.1")),
            ("0X7F.1", v4("127.0.0.1")),
            ("0x7F000001", v4("127.0.0.1")),
            ("0x7f000001", v4("127.0.0.1")),
            ("017700000001", v4("127.0.0.1")),
            ("0177.0.0.1", v4("127.0.0.1")),
            ("0177.0.0.01", v4("127.0.0.1")),
            ("0x7f.0x0.0x0.0x1", v4("127.0.0.1")),
            ("0x7f.0.0.1", v4("127.0.0.1")),
            ("127.1", v4("127.0.0.1")),
            ("127.0.1", v4("127.0.0.1")),
            ("127.0.0.1.", v4("127.0.0.1")),
            ("127.1.", v4("127.0.0.1")),
            ("2130706433.", v4("127.0.0.1")),
            // Leading zeros mean octal, as inet_aton reads them.
            ("0127.0.0.1", v4("87.0.0.1")),
            ("000000000000000000127.0.0.1", v4("87.0.0.1")),
            ("010.0.0.1", v4("8.0.0.1")),
            ("0", v4("0.0.0.0")),
            ("0.0.0.0", v4("0.0.0.0")),
            ("00", v4("0.0.0.0")),
            ("0x", v4("0.0.0.0")),
            ("0x0", v4("0.0.0.0")),
            ("4294967295", v4("255.255.255.255")),
            ("0xffffffff", v4("255.255.255.255")),
            ("037777777777", v4("255.255.255.255")),
            ("255.255.255.255", v4("255.255.255.255")),
            ("1.16777215", v4("1.255.255.255")),
            ("1.0xffffff", v4("1.255.255.255")),
            ("1.2.65535", v4("1.2.255.255")),
            ("1.2.0xffff", v4("1.2.255.255")),
            ("1.2.3.0xff", v4("1.2.3.255")),
            ("1.2.3.0377", v4("1.2.3.255")),
            ("169.254.169.254", v4("169.254.169.254")),
            ("2852039166", v4("169.254.169.254")),
            ("0xa9fea9fe", v4("169.254.169.254")),
            ("0251.0376.0251.0376", v4("169.254.169.254")),
            ("169.254.43518", v4("169.254.169.254")),
            ("8.8.8.8", v4("8.8.8.8")),
            // UTS #46 maps full-width digits and dots before the IPv4 check,
            // as browsers do: these are addresses, not names.
            ("１２７．０．０．１", v4("127.0.0.1")),
            ("127。0。0。1", v4("127.0.0.1")),
            ("０ｘ７ｆ．１", v4("127.0.0.1")),
        ]);
    }

    #[test]
    fn ipv4_invalid_neighbours() {
        check_err(&[
            ("1.2.3.256", is_ipv4),
            ("256.0.0.1", is_ipv4),
            ("1.256.0.1", is_ipv4),
            ("1.2.3.999", is_ipv4),
            ("1.2.3.0x100", is_ipv4),
            ("1.2.3.0400", is_ipv4),
            ("1.2.65536", is_ipv4),
            ("1.2.0x10000", is_ipv4),
            ("1.16777216", is_ipv4),
            ("1.0x1000000", is_ipv4),
            ("4294967296", is_ipv4),
            ("0x100000000", is_ipv4),
            ("040000000000", is_ipv4),
            ("99999999999999999999999", is_ipv4),
            ("0x1ffffffffffffffffffff", is_ipv4),
            ("1.2.3.4.5", is_ipv4),
            ("foo.0x100000000", is_ipv4),
            ("foo.0xffffffffffffffffffffffffffffffff", is_ipv4),
            ("foo.99999999999999999999", is_ipv4),
            ("0.0.0.0.0", is_ipv4),
            ("08", is_ipv4),
            ("09.1.1.1", is_ipv4),
            ("1.2.3.08", is_ipv4),
            ("0x7g.1", is_ipv4),
            ("1..2", is_ipv4),
            (".1.2.3", is_ipv4),
            ("foo.123", is_ipv4),
            ("foo.0x1", is_ipv4),
            ("foo.0x", is_ipv4),
            ("example.com.123", is_ipv4),
            ("example.com.0", is_ipv4),
            ("foo.123.", is_ipv4),
            // Signs, which strtoul-based inet_aton would accept.
            ("-1", is_ipv4),
            ("-0", is_ipv4),
            ("foo.-1", is_ipv4),
            ("-1.2.3.4", is_ipv4),
            ("1.-2.3.4", is_ipv4),
            ("1.2.3.-4", is_ipv4),
            ("-0x7f.1", is_ipv4),
            ("+1.2.3.4", is_forbidden),
            ("1.2.3.+4", is_forbidden),
            (" 127.0.0.1", is_forbidden),
            ("127.0.0.1 ", is_forbidden),
            ("127.0.0.1\n", is_forbidden),
            ("\t127.1", is_forbidden),
            // More than one trailing dot is never an address.
            ("127.0.0.1..", is_empty_label),
        ]);
    }

    #[test]
    fn numeric_labels_that_are_not_last_are_names() {
        check_ok(&[
            ("123.example.com", name("123.example.com")),
            ("0x7f.example", name("0x7f.example")),
            ("1e100.net", name("1e100.net")),
            ("foo.0xg", name("foo.0xg")),
            ("0xg", name("0xg")),
            ("0x1g.com", name("0x1g.com")),
            ("foo.1a", name("foo.1a")),
            ("foo.1-2", name("foo.1-2")),
            ("foo.1_", name("foo.1_")),
            ("127.0.0.1.example", name("127.0.0.1.example")),
        ]);
    }

    #[test]
    fn names_case_and_trailing_dot() {
        check_ok(&[
            ("example.com", name("example.com")),
            ("EXAMPLE.COM", name("example.com")),
            ("ExAmPlE.CoM", name("example.com")),
            ("example.com.", name("example.com")),
            ("EXAMPLE.COM.", name("example.com")),
            ("localhost", name("localhost")),
            ("localhost.", name("localhost")),
            ("a", name("a")),
            ("_dmarc.example.com", name("_dmarc.example.com")),
            ("my_host.example", name("my_host.example")),
            (
                "r4---sn-abc.googlevideo.com",
                name("r4---sn-abc.googlevideo.com"),
            ),
            ("-leading.example", name("-leading.example")),
            ("trailing-.example", name("trailing-.example")),
        ]);
        check_err(&[
            ("example.com..", is_empty_label),
            ("example.com...", is_empty_label),
            (".", is_empty_label),
            ("..", is_empty_label),
            (".example.com", is_empty_label),
            ("a..b", is_empty_label),
            ("example.com。。", is_empty_label),
        ]);
        assert_eq!(Host::parse(""), Err(HostError::Empty));
    }

    #[test]
    fn idna_to_punycode() {
        check_ok(&[
            ("bücher.example", name("xn--bcher-kva.example")),
            ("BÜCHER.EXAMPLE", name("xn--bcher-kva.example")),
            ("xn--bcher-kva.example", name("xn--bcher-kva.example")),
            ("XN--BCHER-KVA.EXAMPLE", name("xn--bcher-kva.example")),
            ("Xn--Bcher-Kva.Example.", name("xn--bcher-kva.example")),
            ("münchen.de", name("xn--mnchen-3ya.de")),
            ("ÄÖÜ.DE", name("xn--4ca0bs.de")),
            ("faß.de", name("xn--fa-hia.de")),
            ("日本語.jp", name("xn--wgv71a119e.jp")),
            ("ｅｘａｍｐｌｅ．ｃｏｍ", name("example.com")),
            ("ＥＸＡＭＰＬＥ．ＣＯＭ", name("example.com")),
            ("example。com", name("example.com")),
            ("example.com。", name("example.com")),
            ("example｡com", name("example.com")),
            // UTS #46 deletes "ignored" code points: the canonical form is
            // what any compliant client would look up.
            ("ex\u{ad}ample.com", name("example.com")),
            ("ex\u{200b}ample.com", name("example.com")),
        ]);
        check_err(&[
            ("xn--", is_idna),
            ("xn--a.example", is_idna),
            ("xn--bcher-kva-.example", is_idna),
            ("xn--zz-.example", is_idna),
            // Look-alikes that UTS #46 maps to forbidden ASCII.
            ("a／b.com", is_idna),
            ("ａ＠b.com", is_idna),
            ("a％41.com", is_idna),
            ("［::1］", is_ipv6),
            ("［example.com］", is_idna),
            ("::１", is_ipv6),
            ("\u{ad}", is_empty_label),
        ]);
    }

    #[test]
    fn every_rejected_character() {
        let forbidden = [
            '%', '/', '\\', '@', ' ', '\t', '\n', '\r', '\0', '\u{1}', '\u{1f}', '\u{7f}',
            '\u{85}', '\u{a0}', '\u{2028}', '\u{3000}', '#', '?', '!', '$', '&', '\'', '(', ')',
            '+', ',', ';', '=', '"', '<', '>', '^', '`', '{', '|', '}', '~', '[', ']',
        ];
        for ch in forbidden {
            for input in [
                format!("exa{ch}mple.com"),
                format!("{ch}example.com"),
                format!("example.com{ch}"),
            ] {
                let got = Host::parse(&input);
                let ok = match ch {
                    '[' | ']' if input.starts_with('[') || input.ends_with(']') => {
                        matches!(got, Err(HostError::Brackets { .. }))
                    }
                    _ => {
                        got == Err(HostError::ForbiddenChar {
                            input: input.clone(),
                            ch,
                        })
                    }
                };
                assert!(ok, "{input:?}: {got:?}");
            }
        }
        check_err(&[
            ("*", is_wildcard),
            ("*.example.com", is_wildcard),
            ("**.example.com", is_wildcard),
            ("foo*.example.com", is_wildcard),
            ("example.*", is_wildcard),
            ("[*::1]", is_wildcard),
            ("＊.example.com", is_wildcard),
            ("example.com:443", is_ipv6),
            ("a:b", is_ipv6),
            ("user:pw@example.com", is_ipv6),
            ("user@example.com", is_forbidden),
            ("example.com%2e", is_forbidden),
            ("%65xample.com", is_forbidden),
        ]);
    }

    #[test]
    fn label_and_name_length_limits() {
        let label63 = "a".repeat(63);
        let label64 = "a".repeat(64);
        check_ok(&[
            (&format!("{label63}.com"), name(&format!("{label63}.com"))),
            (&format!("{label63}.com."), name(&format!("{label63}.com"))),
        ]);
        assert!(matches!(
            Host::parse(&format!("{label64}.com")),
            Err(HostError::LabelTooLong { len: 64, .. })
        ));
        assert!(matches!(
            Host::parse(&format!("www.{}", label64.to_uppercase())),
            Err(HostError::LabelTooLong { len: 64, .. })
        ));

        // 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253.
        let name253 = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
        assert_eq!(name253.len(), 253);
        let name254 = format!("{name253}b");
        check_ok(&[
            (&name253, name(&name253)),
            (&format!("{name253}."), name(&name253)),
        ]);
        assert!(matches!(
            Host::parse(&name254),
            Err(HostError::NameTooLong { len: 254, .. })
        ));
        assert!(matches!(
            Host::parse(&format!("{name254}.")),
            Err(HostError::NameTooLong { len: 254, .. })
        ));

        // Limits apply to the punycode, not the Unicode input.
        let short_unicode = "ü".repeat(60);
        assert!(matches!(
            Host::parse(&format!("{short_unicode}.example")),
            Err(HostError::LabelTooLong { .. })
        ));

        let huge = "a".repeat(MAX_INPUT_BYTES + 1);
        assert_eq!(
            Host::parse(&huge),
            Err(HostError::InputTooLong {
                len: MAX_INPUT_BYTES + 1
            })
        );
        assert!(Host::parse(&"ü".repeat(5000)).is_err());
    }

    #[test]
    fn ipv6_forms() {
        check_ok(&[
            ("[::1]", v6("::1")),
            ("::1", v6("::1")),
            ("[::]", v6("::")),
            ("::", v6("::")),
            ("[0:0:0:0:0:0:0:1]", v6("::1")),
            ("[2001:DB8::1]", v6("2001:db8::1")),
            ("2001:db8::1", v6("2001:db8::1")),
            (
                "[2606:4700:4700:0000:0000:0000:0000:1111]",
                v6("2606:4700:4700::1111"),
            ),
            // Mapped and compatible forms stay V6: the guard refuses them.
            ("[::ffff:127.0.0.1]", v6("::ffff:127.0.0.1")),
            ("::ffff:127.0.0.1", v6("::ffff:127.0.0.1")),
            ("[::ffff:7f00:1]", v6("::ffff:127.0.0.1")),
            ("[::FFFF:169.254.169.254]", v6("::ffff:169.254.169.254")),
            ("[::127.0.0.1]", v6("::127.0.0.1")),
            ("[64:ff9b::8.8.8.8]", v6("64:ff9b::808:808")),
        ]);
        check_err(&[
            ("[::1", is_brackets),
            ("::1]", is_brackets),
            ("[]", is_brackets),
            ("[[::1]]", is_brackets),
            ("[example.com]", is_brackets),
            ("[127.0.0.1]", is_brackets),
            ("[2130706433]", is_brackets),
            ("[::1]:80", is_brackets),
            ("[::1].", is_brackets),
            ("[ ::1]", is_brackets),
            ("fe80::1%eth0", is_zone),
            ("fe80::1%25eth0", is_zone),
            ("[fe80::1%eth0]", is_zone),
            ("[fe80::1%25eth0]", is_zone),
            (":::1", is_ipv6),
            ("1:2:3:4:5:6:7:8:9", is_ipv6),
            ("::ffff:127.1", is_ipv6),
            ("::ffff:0x7f.0.0.1", is_ipv6),
            ("::ffff:0177.0.0.1", is_ipv6),
            ("::1.", is_ipv6),
            ("::1 ", is_ipv6),
            ("::g", is_ipv6),
        ]);
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "example.com",
            "xn--bcher-kva.example",
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "[::1]",
            "[::]",
            "[::ffff:127.0.0.1]",
            "[2001:db8::1]",
            "[fe80::1]",
        ] {
            let host = Host::parse(input).unwrap();
            assert_eq!(host.to_string(), input);
            assert_eq!(Host::parse(&host.to_string()).unwrap(), host);
        }
        assert_eq!(Host::parse("::1").unwrap().to_string(), "[::1]");
        assert_eq!(Host::parse("0x7f.1").unwrap().to_string(), "127.0.0.1");
        assert_eq!(
            Host::parse("BÜCHER.example.").unwrap().to_string(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            Host::parse("[2001:DB8:0:0:0:0:0:1]").unwrap().to_string(),
            "[2001:db8::1]"
        );
    }

    fn hp(host: Host, port: u16) -> HostPort {
        HostPort { host, port }
    }

    #[test]
    fn hostport_with_and_without_port() {
        let cases = [
            ("example.com", hp(name("example.com"), 80)),
            ("example.com:8080", hp(name("example.com"), 8080)),
            ("EXAMPLE.COM.:443", hp(name("example.com"), 443)),
            ("example.com:", hp(name("example.com"), 80)),
            ("example.com:0080", hp(name("example.com"), 80)),
            ("example.com:65535", hp(name("example.com"), 65535)),
            ("example.com:1", hp(name("example.com"), 1)),
            ("127.1:3128", hp(v4("127.0.0.1"), 3128)),
            ("2130706433", hp(v4("127.0.0.1"), 80)),
            ("[::1]", hp(v6("::1"), 80)),
            ("[::1]:443", hp(v6("::1"), 443)),
            ("[::ffff:127.0.0.1]:443", hp(v6("::ffff:127.0.0.1"), 443)),
            (
                "xn--bcher-kva.example:443",
                hp(name("xn--bcher-kva.example"), 443),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(HostPort::parse(input, 80), Ok(want.clone()), "{input:?}");
            let authority: Authority = input.parse().unwrap();
            assert_eq!(
                HostPort::from_authority(&authority, 80),
                Ok(want),
                "{input:?}"
            );
        }
    }

    #[test]
    fn hostport_from_uri_authority() {
        let uri: http::Uri = "https://Example.COM./path?q=1".parse().unwrap();
        let authority = uri.authority().unwrap();
        assert_eq!(
            HostPort::from_authority(authority, 443),
            Ok(hp(name("example.com"), 443))
        );
        let uri: http::Uri = "http://user:pw@example.com:8080/".parse().unwrap();
        assert!(matches!(
            HostPort::from_authority(uri.authority().unwrap(), 80),
            Err(HostError::Userinfo { .. })
        ));
    }

    #[test]
    fn hostport_rejections() {
        let userinfo: IsKind = |e| matches!(e, HostError::Userinfo { .. });
        let port_zero: IsKind = |e| matches!(e, HostError::PortZero { .. });
        let bad_port: IsKind = |e| matches!(e, HostError::InvalidPort { .. });
        let bad_authority: IsKind = |e| matches!(e, HostError::InvalidAuthority { .. });
        let cases: [(&str, IsKind); 25] = [
            ("user:pw@example.com", userinfo),
            ("user@example.com", userinfo),
            ("user@example.com:443", userinfo),
            ("@example.com", userinfo),
            ("evil.example@127.0.0.1:80", userinfo),
            ("example.com:0", port_zero),
            ("example.com:00", port_zero),
            ("[::1]:0", port_zero),
            ("example.com:65536", bad_port),
            ("example.com:99999999999999999999", bad_port),
            ("example.com:8a", bad_port),
            ("example.com:+80", bad_port),
            ("example.com:-1", bad_port),
            ("example.com:0x50", bad_port),
            ("a:b:c", bad_authority),
            ("example.com:80:80", bad_authority),
            ("exa mple.com", bad_authority),
            ("example.com/path", bad_authority),
            ("example.com?q", bad_authority),
            ("bücher.example", bad_authority),
            ("[::1]x:80", bad_authority),
            ("[::1", bad_authority),
            ("example.com%2f", bad_authority),
            ("[fe80::1%25eth0]:80", is_zone),
            ("*.example.com:443", is_wildcard),
        ];
        for (input, is_expected) in cases {
            let got = HostPort::parse(input, 80);
            assert!(
                matches!(&got, Err(e) if is_expected(e)),
                "{input:?}: {got:?}"
            );
        }
        assert_eq!(HostPort::parse("", 80), Err(HostError::Empty));
        assert!(matches!(
            HostPort::parse("1.2.3.256:80", 80),
            Err(HostError::InvalidIpv4 { .. })
        ));
        assert!(matches!(
            HostPort::parse("example.com", 0),
            Err(HostError::PortZero { .. })
        ));
    }

    #[test]
    fn hostport_display_round_trips() {
        for input in [
            "example.com:443",
            "127.0.0.1:80",
            "[::1]:3128",
            "[::ffff:127.0.0.1]:443",
        ] {
            let parsed = HostPort::parse(input, 1).unwrap();
            assert_eq!(parsed.to_string(), input);
            assert_eq!(HostPort::parse(&parsed.to_string(), 1).unwrap(), parsed);
        }
        assert_eq!(
            HostPort::parse("0x7f.1", 8080).unwrap().to_string(),
            "127.0.0.1:8080"
        );
    }

    #[test]
    fn error_messages_are_one_line_and_name_the_input() {
        let inputs = [
            "exa\nmple.com",
            "1.2.3.256",
            "[example.com]",
            "fe80::1%eth0",
            "*.example.com",
            "xn--",
            "a..b",
        ];
        for input in inputs {
            let message = Host::parse(input).unwrap_err().to_string();
            assert!(!message.contains('\n'), "{message:?}");
            assert!(message.contains(&format!("{input:?}")), "{message:?}");
        }
        let long = format!("{}\u{1}", "é".repeat(500));
        let message = Host::parse(&long).unwrap_err().to_string();
        assert!(message.len() < 300, "{message}");
        // Credentials in an authority are refused without repeating them:
        // the message goes to logs.
        let message = HostPort::parse("alice:SECRET@example.com", 80)
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"example.com\""), "{message}");
        assert!(
            !message.contains("SECRET") && !message.contains("alice"),
            "{message}"
        );
    }
}
