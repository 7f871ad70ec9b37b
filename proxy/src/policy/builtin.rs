//! Policies shipped inside the binary (the repo's `policies/` directory,
//! embedded at build time so the binary needs no files beside it).

/// Names `--policy` accepts besides a file path.
pub const BUILTIN_NAMES: [&str; 3] = ["off", "unrestricted", "common-dependencies"];

/// The YAML text of a built-in policy.
pub fn source(name: &str) -> Option<&'static str> {
    match name {
        "off" => Some(include_str!("../../../policies/off.yaml")),
        "unrestricted" => Some(include_str!("../../../policies/unrestricted.yaml")),
        "common-dependencies" => Some(include_str!("../../../policies/common-dependencies.yaml")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    #[test]
    fn every_builtin_loads() {
        for name in BUILTIN_NAMES {
            let policy = Policy::load(name).unwrap();
            assert_eq!(policy.origin(), format!("builtin:{name}"));
        }
    }

    /// The preset is the shared data file, each entry as `**.<domain>`. The
    /// file lives beside the repo (../shared); a checkout without it skips.
    #[test]
    fn common_dependencies_matches_the_shared_list() {
        let list = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/common-dependencies.txt"
        );
        let Ok(text) = std::fs::read_to_string(list) else {
            eprintln!("SKIP: {list} not present");
            return;
        };
        let expected: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|d| format!("**.{d}"))
            .collect();
        assert_eq!(expected.len(), 71, "the shared list says 71 entries");
        let shipped: Vec<String> = source("common-dependencies")
            .unwrap()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .map(|p| p.trim_matches('"').to_owned())
            .collect();
        assert_eq!(shipped, expected);
    }
}
