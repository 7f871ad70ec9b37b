//! Request paths as policy path rules see them.
//!
//! A path rule must match what the upstream server will serve, not just the
//! bytes of the request. Percent-escapes of unreserved characters are decoded
//! (RFC 3986 §2.3 says they are equivalent) so `/%61dmin` cannot dodge a deny
//! rule on `/admin`. Paths that servers disagree about — dot segments, empty
//! segments, encoded or back slashes, `;` parameters (plain or encoded), NUL,
//! broken escapes, escapes that are not UTF-8 or are overlong UTF-8 (`%C0%AF`
//! is `/` to some decoders), segments ending in a dot or in an encoded space
//! or control character (stripped by some servers, so `/admin.` and
//! `/admin%20` reach `/admin`) — are [`RequestPath::Ambiguous`]: no allow
//! rule matches them and every deny rule with paths does, so ambiguity
//! always fails closed.

/// A request path classified for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestPath {
    Clear(String),
    Ambiguous,
}

impl RequestPath {
    /// Classifies the path component of a request target (no query).
    pub fn classify(raw: &str) -> RequestPath {
        match decode_unreserved(raw) {
            Some(path) if !is_ambiguous(&path) => RequestPath::Clear(path),
            _ => RequestPath::Ambiguous,
        }
    }
}

/// Decodes escapes of unreserved characters and upper-cases the others;
/// `None` for a malformed escape.
fn decode_unreserved(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte != b'%' {
            out.push(char::from(byte));
            i += 1;
            continue;
        }
        let hi = hex_value(*bytes.get(i + 1)?)?;
        let lo = hex_value(*bytes.get(i + 2)?)?;
        let decoded = hi << 4 | lo;
        if is_unreserved(decoded) {
            out.push(char::from(decoded));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
        }
        i += 3;
    }
    Some(out)
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn is_ambiguous(path: &str) -> bool {
    if !path.starts_with('/') || !path.is_ascii() {
        return true;
    }
    if path.contains(['\\', ';', '\0'])
        || ["%2F", "%5C", "%3B", "%00"]
            .iter()
            .any(|e| path.contains(e))
    {
        return true;
    }
    if !escapes_are_utf8(path) {
        return true;
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().any(|(i, s)| {
        *s == "." || *s == ".." || (s.is_empty() && i != last) || ends_in_something_stripped(s)
    })
}

/// A segment ending in a dot, or in an escaped space or control character.
fn ends_in_something_stripped(segment: &str) -> bool {
    if segment.ends_with('.') {
        return true;
    }
    let Some(escape) = segment
        .len()
        .checked_sub(3)
        .and_then(|at| segment.get(at..))
    else {
        return false;
    };
    let value = escape
        .strip_prefix('%')
        .and_then(|hex| u8::from_str_radix(hex, 16).ok());
    value.is_some_and(|byte| byte <= b' ' || byte == 0x7f)
}

/// The bytes the escapes stand for (runs of them, between other characters)
/// are UTF-8, and not overlong: Rust's UTF-8 check refuses overlong forms and
/// surrogates.
fn escapes_are_utf8(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let value = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            let Some(value) = value else {
                return false;
            };
            decoded.push(value);
            i += 3;
        } else {
            decoded.push(byte);
            i += 1;
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clear(p: &str) -> RequestPath {
        RequestPath::Clear(p.to_string())
    }

    #[test]
    fn plain_paths_are_clear() {
        assert_eq!(RequestPath::classify("/"), clear("/"));
        assert_eq!(RequestPath::classify("/a/b/"), clear("/a/b/"));
        assert_eq!(RequestPath::classify("/a.b/c~d"), clear("/a.b/c~d"));
        assert_eq!(RequestPath::classify("/a%20b/c"), clear("/a%20b/c"));
        assert_eq!(RequestPath::classify("/caf%C3%A9"), clear("/caf%C3%A9"));
        assert_eq!(
            RequestPath::classify("/.well-known/x"),
            clear("/.well-known/x")
        );
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_normalised() {
        assert_eq!(RequestPath::classify("/%61dmin"), clear("/admin"));
        assert_eq!(RequestPath::classify("/%7Euser"), clear("/~user"));
        assert_eq!(RequestPath::classify("/a%20b"), clear("/a%20b"));
        assert_eq!(RequestPath::classify("/a%3fb"), clear("/a%3Fb"));
    }

    #[test]
    fn paths_servers_disagree_about_are_ambiguous() {
        for p in [
            "/public/../private",
            "/public/%2e%2e/private",
            "/public/%2E./private",
            "/./private",
            "/private/.",
            "/public%2fprivate",
            "/public%2Fprivate",
            "/public%5cprivate",
            "/public\\private",
            "//private",
            "/public//x",
            "/admin;jsessionid=1",
            "/a%00",
            "/a%",
            "/a%4",
            "/a%zz",
            "relative",
            "",
            "/admin.",
            "/admin./x",
            "/admin%20",
            "/admin%09/x",
            "/admin%7f",
            "/admin%3Bx",
            "/admin%3bx",
            "/%C0%AFadmin",
            "/%c0%ae%c0%ae/admin",
            "/%E0%80%AFadmin",
            "/%ED%A0%80",
            "/%FF",
            "/%C3",
        ] {
            assert_eq!(RequestPath::classify(p), RequestPath::Ambiguous, "{p}");
        }
    }
}
