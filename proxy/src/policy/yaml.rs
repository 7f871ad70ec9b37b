//! Reading a policy's YAML strictly, before serde_yaml builds the policy from
//! it.

/// A policy file's text without its UTF-8 byte-order mark, if it has one:
/// some Windows editors write one, and libyaml would read it as part of the
/// first key.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_mark_is_stripped_once() {
        assert_eq!(strip_bom("\u{feff}a: b"), "a: b");
        assert_eq!(strip_bom("a: b"), "a: b");
        assert_eq!(strip_bom("\u{feff}\u{feff}a"), "\u{feff}a");
    }
}
