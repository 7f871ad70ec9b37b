//! The command line as a user meets it: help, `policy check`, `policy eval`,
//! exit statuses and one-line errors.

mod common;

use std::process::{Command, Output};

use common::{Scratch, BIN};

#[test]
fn help_is_useful_on_its_own() {
    let (out, _) = text(&tollgate(&["--help"]));
    for word in ["proxy", "policy", "audit", "HTTP_PROXY"] {
        assert!(out.contains(word), "--help lacks {word}: {out}");
    }
    let (out, _) = text(&tollgate(&["proxy", "--help"]));
    for word in [
        "--policy",
        "--listen",
        "unix:PATH",
        "--audit-log",
        "common-dependencies",
        "SIGHUP",
    ] {
        assert!(out.contains(word), "proxy --help lacks {word}: {out}");
    }
    let (out, _) = text(&tollgate(&["policy", "eval", "--help"]));
    assert!(
        out.contains("Exit 0 if all are allowed, 1 if any is denied, 2"),
        "{out}"
    );
}

#[test]
fn policy_check_accepts_good_files_and_names_line_and_column_of_bad_ones() {
    let dir = Scratch::new("check");
    let good = dir.write(
        "good.yaml",
        "version: 1\nmode: limited\nallow: [github.com]\n",
    );
    let bad = dir.write(
        "bad.yaml",
        "version: 1\nmode: limited\nallow:\n  - github.com\n  - \"git*.com\"\n",
    );
    let out = tollgate(&["policy", "check", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out)
        .0
        .contains("mode limited, enforced, 1 allow and 0 deny rules"));

    let out = tollgate(&[
        "policy",
        "check",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(&format!(
            "{}:5:5: allow[1]: `git*.com` is not label-aligned",
            bad.display()
        )),
        "{stdout}"
    );
}

/// What serde_yaml would let through is refused, each on one line naming the
/// file, line and column: a key given twice (YAML keeps the last), a tag
/// (`!unrestricted` would pick the mode), and nesting 100,000 deep (refused
/// at once, not after libyaml's tens of seconds). A UTF-8 byte-order mark is
/// not an error.
#[test]
fn policy_check_refuses_duplicate_keys_tags_and_deep_nesting() {
    let dir = Scratch::new("strict");
    let deep = format!(
        "version: 1\nmode: limited\nallow: {}\n",
        "[".repeat(100_000)
    );
    let cases = [
        (
            "duplicate.yaml",
            "version: 1\nmode: limited\nhosts:\n  a.test: 127.0.0.1\n  a.test: 10.0.0.1\n",
            ":5:3: hosts: duplicate key `a.test`: YAML would keep only the last one, remove one",
        ),
        (
            "tag.yaml",
            "version: 1\nmode: !unrestricted\n",
            ":2:7: YAML tag `!unrestricted`: a policy takes plain values, remove the tag",
        ),
        (
            "core-tag.yaml",
            "version: 1\nmode: limited\nallow: [!!str a.com]\n",
            ":3:9: YAML tag `!!str`",
        ),
        (
            "deep.yaml",
            deep.as_str(),
            ":3:71: nested more than 64 levels deep (a policy needs 4): flatten the document",
        ),
    ];
    for (name, yaml, expected) in cases {
        let file = dir.write(name, yaml);
        let started = std::time::Instant::now();
        let out = tollgate(&["policy", "check", file.to_str().unwrap()]);
        let took = started.elapsed();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {stdout}{stderr}");
        assert!(
            stdout.contains(&format!("{}{expected}", file.display())),
            "{name}: {stdout}"
        );
        assert_eq!(stdout.lines().count(), 1, "{name}: {stdout}");
        assert!(took < std::time::Duration::from_secs(2), "{name}: {took:?}");
    }

    let bom = dir.write("bom.yaml", "\u{feff}version: 1\nmode: limited\n");
    let out = tollgate(&["policy", "check", bom.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
}

#[test]
fn policy_check_reads_builtins_and_refuses_missing_files() {
    let out = tollgate(&[
        "policy",
        "check",
        "common-dependencies",
        "off",
        "unrestricted",
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let out = tollgate(&["policy", "check", "/no/such/policy.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out)
        .0
        .contains("no policy file `/no/such/policy.yaml`"));
}

#[test]
fn policy_eval_prints_a_line_per_url_and_exits_by_outcome() {
    let allowed = tollgate(&[
        "policy",
        "eval",
        "--policy",
        "common-dependencies",
        "https://pypi.org/simple/",
        "http://files.pythonhosted.org/x",
    ]);
    assert_eq!(allowed.status.code(), Some(0));
    let (out, _) = text(&allowed);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("allow"), "{out}");
    assert!(
        lines[0].contains("common-dependencies:**.pypi.org"),
        "{out}"
    );
    assert!(lines[0].ends_with("GET https://pypi.org/simple/"), "{out}");

    let mixed = tollgate(&[
        "policy",
        "eval",
        "--policy",
        "common-dependencies",
        "--method",
        "POST",
        "https://pypi.org/",
        "https://evil.example/",
    ]);
    assert_eq!(mixed.status.code(), Some(1));
    let (out, _) = text(&mixed);
    assert!(out.lines().nth(1).unwrap().starts_with("deny"), "{out}");
    assert!(out.contains("not-allowlisted"), "{out}");
}

#[test]
fn policy_eval_guards_ip_literals_and_static_hosts_without_dns() {
    let dir = Scratch::new("eval");
    let policy = dir.write(
        "p.yaml",
        "version: 1\nmode: unrestricted\nhosts: {meta.test: 169.254.169.254}\n",
    );
    let out = tollgate(&[
        "policy",
        "eval",
        "--policy",
        policy.to_str().unwrap(),
        "http://169.254.169.254/latest/",
        "http://0x7f.1/",
        "http://meta.test/",
        "http://[::1]:8080/",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let (stdout, _) = text(&out);
    assert_eq!(stdout.lines().count(), 4);
    assert!(
        stdout
            .lines()
            .all(|l| l.starts_with("deny") && l.contains("internal-address")),
        "{stdout}"
    );
}

#[test]
fn policy_eval_usage_and_config_errors_exit_2_with_one_line() {
    let cases: [&[&str]; 4] = [
        &[
            "policy",
            "eval",
            "--policy",
            "/no/such.yaml",
            "https://a.example/",
        ],
        &["policy", "eval", "--policy", "off", "ftp://a.example/"],
        &[
            "policy",
            "eval",
            "--policy",
            "off",
            "--method",
            "get",
            "https://a.example/",
        ],
        &[
            "policy",
            "eval",
            "--policy",
            "off",
            "https://user@a.example/",
        ],
    ];
    for args in cases {
        let out = tollgate(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let (_, stderr) = text(&out);
        assert!(stderr.starts_with("tollgate: "), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    assert_eq!(
        tollgate(&["policy", "eval", "--policy", "off"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn audit_mode_policies_report_would_deny() {
    let out = tollgate(&[
        "policy",
        "eval",
        "--policy",
        "policies/example-audit.yaml",
        "https://evil.example/",
    ]);
    let (stdout, _) = text(&out);
    assert!(stdout.starts_with("would_deny"), "{stdout}");
    assert_eq!(out.status.code(), Some(1));
}

// ---------------------------------------------------------------------------
// Helpers of this file

/// `tollgate ARGS` to its end.
fn tollgate(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// (stdout, stderr) as text.
fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
