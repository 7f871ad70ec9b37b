//! Request paths as policy path rules see them.
//!
//! A path rule must match what the upstream server will serve, not just the
//! bytes of the request. Percent-escapes of unreserved characters are decoded
//! (RFC 3986 §2.3 says they are equivalent) so `/%61dmin` cannot dodge a deny
//! rule on `/admin`. Paths that servers disagree about — dot segments, empty
//! segments, encoded or back slashes, `;` parameters, NUL, broken escapes —
//! are [`RequestPath::Ambiguous`]: no allow rule matches them and every deny
//! rule with paths does, so ambiguity always fails closed.

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
    if path.contains(['\\', ';', '\0']) || path.contains("%2F") || path.contains("%5C") {
        return true;
    }
    if path.contains("%00") {
        return true;
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    segments
        .iter()
        .enumerate()
        .any(|(i, s)| *s == "." || *s == ".." || (s.is_empty() && i != last))
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
        ] {
            assert_eq!(RequestPath::classify(p), RequestPath::Ambiguous, "{p}");
        }
    }
}
