use super::*;
use crate::decision::Outcome;

fn policy(yaml: &str) -> Policy {
    Policy::from_yaml("test.yaml", yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn error(yaml: &str) -> String {
    Policy::from_yaml("test.yaml", yaml)
        .unwrap_err()
        .to_string()
}

fn request(p: &Policy, method: &str, host: &str, port: u16, path: &str) -> Decision {
    let host = Host::parse(host).unwrap();
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    p.decide_request(Target { host: &host, port }, &method, path)
}

fn tunnel(p: &Policy, host: &str, port: u16) -> Decision {
    let host = Host::parse(host).unwrap();
    p.decide_tunnel(Target { host: &host, port })
}

fn reason(d: Decision) -> Option<&'static str> {
    d.reason().map(Reason::code)
}

fn get(p: &Policy, host: &str) -> Option<&'static str> {
    reason(request(p, "GET", host, 443, "/"))
}

const PATTERNS: &str = r#"
version: 1
mode: limited
allow:
  - github.com
  - "*.githubusercontent.com"
  - "**.pythonhosted.org"
"#;

#[test]
fn exact_pattern_matches_only_that_host() {
    let p = policy(PATTERNS);
    assert_eq!(get(&p, "github.com"), None);
    assert_eq!(get(&p, "GITHUB.COM."), None);
    assert_eq!(get(&p, "api.github.com"), Some("not-allowlisted"));
    assert_eq!(get(&p, "evilgithub.com"), Some("not-allowlisted"));
    assert_eq!(get(&p, "github.com.evil.example"), Some("not-allowlisted"));
}

#[test]
fn single_star_matches_subdomains_at_any_depth_but_not_the_apex() {
    let p = policy(PATTERNS);
    assert_eq!(get(&p, "raw.githubusercontent.com"), None);
    assert_eq!(get(&p, "a.b.githubusercontent.com"), None);
    assert_eq!(get(&p, "githubusercontent.com"), Some("not-allowlisted"));
    assert_eq!(get(&p, "xgithubusercontent.com"), Some("not-allowlisted"));
}

#[test]
fn double_star_matches_apex_and_subdomains() {
    let p = policy(PATTERNS);
    assert_eq!(get(&p, "pythonhosted.org"), None);
    assert_eq!(get(&p, "files.pythonhosted.org"), None);
    assert_eq!(get(&p, "notpythonhosted.org"), Some("not-allowlisted"));
    assert_eq!(get(&p, "pythonhosted.org.evil"), Some("not-allowlisted"));
}

#[test]
fn decisions_name_the_rule_that_allowed() {
    let p = policy(PATTERNS);
    let d = request(&p, "GET", "files.pythonhosted.org", 443, "/");
    assert_eq!(
        d.grant().unwrap().to_string(),
        "allow[2]:**.pythonhosted.org"
    );
    assert_eq!(d.outcome(), Outcome::Allow);
}

#[test]
fn off_denies_everything() {
    let p = policy("version: 1\nmode: off\nallow: [github.com]\n");
    assert_eq!(get(&p, "github.com"), Some("mode-off"));
    assert_eq!(reason(tunnel(&p, "github.com", 443)), Some("mode-off"));
}

#[test]
fn unrestricted_allows_all_but_the_deny_list_on_any_port() {
    let p = policy("version: 1\nmode: unrestricted\ndeny: [\"**.evil.example\"]\n");
    assert_eq!(
        reason(request(&p, "POST", "anything.example", 8443, "/")),
        None
    );
    assert_eq!(get(&p, "x.evil.example"), Some("denylisted"));
    assert_eq!(
        request(&p, "GET", "a.example", 443, "/").grant(),
        Some(&Grant::Unrestricted)
    );
}

#[test]
fn deny_wins_over_allow() {
    let p =
        policy("version: 1\nmode: limited\nallow: [\"**.github.com\"]\ndeny: [gist.github.com]\n");
    assert_eq!(get(&p, "api.github.com"), None);
    assert_eq!(get(&p, "gist.github.com"), Some("denylisted"));
    assert_eq!(
        reason(tunnel(&p, "gist.github.com", 443)),
        Some("denylisted")
    );
}

#[test]
fn presets_add_the_common_dependencies() {
    let p = policy("version: 1\nmode: limited\npresets: [common-dependencies]\n");
    assert_eq!(get(&p, "pypi.org"), None);
    assert_eq!(get(&p, "files.pythonhosted.org"), None);
    assert_eq!(get(&p, "registry.npmjs.org"), None);
    assert_eq!(get(&p, "evil.example"), Some("not-allowlisted"));
    let d = request(&p, "GET", "github.com", 443, "/");
    assert_eq!(
        d.grant().unwrap().to_string(),
        "common-dependencies:**.github.com"
    );
}

#[test]
fn default_policy_is_common_dependencies() {
    let p = Policy::default_policy().unwrap();
    assert_eq!(p.mode(), Mode::Limited);
    assert_eq!(get(&p, "crates.io"), None);
    assert_eq!(get(&p, "example.com"), Some("not-allowlisted"));
}

#[test]
fn ports_default_to_80_and_443() {
    let p = policy("version: 1\nmode: limited\nallow: [example.com]\n");
    assert_eq!(reason(request(&p, "GET", "example.com", 80, "/")), None);
    assert_eq!(reason(request(&p, "GET", "example.com", 443, "/")), None);
    assert_eq!(
        reason(request(&p, "GET", "example.com", 22, "/")),
        Some("port-not-allowed")
    );
    assert_eq!(
        reason(tunnel(&p, "example.com", 8443)),
        Some("port-not-allowed")
    );
}

#[test]
fn policy_ports_and_rule_ports() {
    let p = policy(
        "version: 1\nmode: limited\nports: [8080]\nallow:\n  - a.example\n  - host: b.example\n    ports: [9000]\n",
    );
    assert_eq!(reason(tunnel(&p, "a.example", 8080)), None);
    assert_eq!(
        reason(tunnel(&p, "a.example", 443)),
        Some("port-not-allowed")
    );
    assert_eq!(reason(tunnel(&p, "b.example", 9000)), None);
    assert_eq!(
        reason(tunnel(&p, "b.example", 8080)),
        Some("port-not-allowed")
    );
}

#[test]
fn global_methods_apply_everywhere() {
    let p = policy("version: 1\nmode: unrestricted\nmethods: [GET, HEAD, OPTIONS]\n");
    assert_eq!(reason(request(&p, "GET", "a.example", 80, "/")), None);
    assert_eq!(
        reason(request(&p, "POST", "a.example", 80, "/")),
        Some("method-not-allowed")
    );
    assert!(p.needs_interception());
    assert!(p.check_enforceable(false).is_err());
    assert!(p.check_enforceable(true).is_ok());
}

#[test]
fn rule_methods_and_paths() {
    let p = policy(
        r#"
version: 1
mode: limited
allow:
  - host: api.github.com
    methods: [GET, HEAD]
    paths: ["/repos/**", "/public/*"]
    ports: [443]
"#,
    );
    let r = |m, path| reason(request(&p, m, "api.github.com", 443, path));
    assert_eq!(r("GET", "/repos/a/b"), None);
    assert_eq!(r("GET", "/public/x"), None);
    assert_eq!(r("GET", "/public/x/y"), Some("path-not-allowed"));
    assert_eq!(r("GET", "/private"), Some("path-not-allowed"));
    assert_eq!(r("GET", "/repos/../private"), Some("path-not-allowed"));
    assert_eq!(r("GET", "/repos%2f..%2fprivate"), Some("path-not-allowed"));
    assert_eq!(r("GET", "/%72epos/a"), None);
    assert_eq!(r("POST", "/repos/a"), Some("method-not-allowed"));
    assert_eq!(
        reason(request(&p, "GET", "api.github.com", 80, "/repos/a")),
        Some("port-not-allowed")
    );
    // A tunnel is decided on host and port; the rule's methods and paths are
    // enforced per request inside it, which is why it needs interception.
    assert_eq!(reason(tunnel(&p, "api.github.com", 443)), None);
    assert!(p.needs_interception());
}

#[test]
fn the_furthest_matching_stage_names_the_denial() {
    let p = policy(
        r#"
version: 1
mode: limited
allow:
  - host: a.example
    ports: [8080]
  - host: a.example
    methods: [GET]
"#,
    );
    assert_eq!(
        reason(request(&p, "POST", "a.example", 443, "/")),
        Some("method-not-allowed")
    );
    assert_eq!(reason(request(&p, "POST", "a.example", 8080, "/")), None);
}

#[test]
fn deny_rules_with_methods_and_paths_fail_closed() {
    let p = policy(
        r#"
version: 1
mode: unrestricted
deny:
  - host: api.example
    methods: [POST]
  - host: admin.example
    paths: ["/admin/**"]
"#,
    );
    assert_eq!(reason(request(&p, "GET", "api.example", 443, "/")), None);
    assert_eq!(
        reason(request(&p, "POST", "api.example", 443, "/")),
        Some("denylisted")
    );
    let admin = |path| reason(request(&p, "GET", "admin.example", 443, path));
    assert_eq!(admin("/admin/x"), Some("denylisted"));
    assert_eq!(admin("/%61dmin/x"), Some("denylisted"));
    assert_eq!(admin("/public/../admin/x"), Some("denylisted"));
    assert_eq!(admin("//admin/x"), Some("denylisted"));
    assert_eq!(admin("/public/x"), None);
    // Not decidable on a tunnel: left to the intercepted requests.
    assert_eq!(reason(tunnel(&p, "api.example", 443)), None);
}

#[test]
fn audit_mode_allows_but_records_would_deny() {
    let p = policy("version: 1\nmode: limited\nenforce: false\nallow: [a.example]\n");
    let d = request(&p, "GET", "b.example", 443, "/");
    assert!(d.permits());
    assert_eq!(d.outcome(), Outcome::WouldDeny);
    assert_eq!(reason(d), Some("not-allowlisted"));
}

#[test]
fn ip_literal_rules_match_every_spelling_of_the_address() {
    let p = policy("version: 1\nmode: limited\nallow: [127.0.0.1, \"::1\"]\n");
    for host in [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f.1",
        "0177.0.0.1",
        "[::1]",
    ] {
        assert_eq!(get(&p, host), None, "{host}");
    }
    assert_eq!(get(&p, "127.0.0.2"), Some("not-allowlisted"));
}

#[test]
fn static_hosts_and_allow_internal_load() {
    let p = policy(
        "version: 1\nmode: limited\nhosts: {registry.test: 127.0.0.1}\nallow_internal: [127.0.0.0/8]\n",
    );
    let name = match Host::parse("registry.test").unwrap() {
        Host::Name(n) => n,
        Host::Ip(_) => unreachable!(),
    };
    assert_eq!(p.static_address(&name), Some("127.0.0.1".parse().unwrap()));
    assert!(p.guard().check("127.0.0.5".parse().unwrap()).is_ok());
    assert!(p.guard().check("10.0.0.1".parse().unwrap()).is_err());
}

#[test]
fn errors_name_file_line_and_column() {
    assert_eq!(
        error("version: 1\nmode: limited\nalow: []\n"),
        "test.yaml:3:1: unknown field `alow`, expected one of `version`, `mode`, `enforce`, \
         `presets`, `allow`, `deny`, `methods`, `ports`, `allow_internal`, `hosts`"
    );
    let e = error("version: 1\nmode: limited\nallow:\n  - github.com\n  - \"git*.com\"\n");
    assert!(e.starts_with("test.yaml:5:5:"), "{e}");
    assert!(e.contains("not label-aligned"), "{e}");
}

#[test]
fn every_bad_input_is_a_clear_error() {
    let cases = [
        ("mode: limited\n", "missing field `version`"),
        (
            "version: 2\nmode: limited\n",
            "unsupported policy version 2",
        ),
        ("version: 1\n", "missing field `mode`"),
        ("version: 1\nmode: limted\n", "unknown variant `limted`"),
        (
            "version: 1\nmode: limited\nallow: [\"*\"]\n",
            "use `mode: unrestricted`",
        ),
        (
            "version: 1\nmode: limited\nallow: [\"*github.com\"]\n",
            "not label-aligned",
        ),
        (
            "version: 1\nmode: limited\nallow: [GitHub.com]\n",
            "write `github.com`",
        ),
        (
            "version: 1\nmode: limited\nallow: [bücher.example]\n",
            "write `xn--bcher-kva.example`",
        ),
        (
            "version: 1\nmode: limited\nallow:\n  - *.a.com\n",
            "must be quoted",
        ),
        (
            "version: 1\nmode: limited\nallow: [{host: a.com, method: [GET]}]\n",
            "unknown field `method`",
        ),
        (
            "version: 1\nmode: limited\nallow: [{host: a.com, methods: [get]}]\n",
            "write `GET`",
        ),
        (
            "version: 1\nmode: limited\nallow: [{host: a.com, methods: []}]\n",
            "empty list",
        ),
        (
            "version: 1\nmode: limited\nallow: [{host: a.com, ports: [0]}]\n",
            "nonzero",
        ),
        (
            "version: 1\nmode: limited\nallow: [{host: a.com, ports: [70000]}]\n",
            "70000",
        ),
        (
            "version: 1\nmode: limited\nallow: [{host: a.com, paths: [\"repos/**\"]}]\n",
            "must start with `/`",
        ),
        (
            "version: 1\nmode: limited\nallow: [{host: a.com, paths: [\"/a/[b\"]}]\n",
            "not a valid glob",
        ),
        (
            "version: 1\nmode: limited\nallow: [{methods: [GET]}]\n",
            "missing field `host`",
        ),
        (
            "version: 1\nmode: limited\nallow: [80]\n",
            "host pattern or a rule",
        ),
        (
            "version: 1\nmode: limited\npresets: [everything]\n",
            "unknown variant `everything`",
        ),
        (
            "version: 1\nmode: limited\nallow_internal: [10.0.0.0/33]\n",
            "invalid IP address",
        ),
        (
            "version: 1\nmode: limited\nhosts: {Reg.test: 127.0.0.1}\n",
            "write `reg.test`",
        ),
        (
            "version: 1\nmode: limited\nhosts: {reg.test: nope}\n",
            "invalid IP address",
        ),
        (
            "version: 1\nmode: limited\nenforce: maybe\n",
            "invalid type",
        ),
        (
            "version: 1\nmode: limited\nmode: off\n",
            "test.yaml:3:1: duplicate key `mode`",
        ),
        ("version: 1\nmode: limited\nmethods: []\n", "empty list"),
        (": :\n", "test.yaml:"),
        ("", "missing field `version`"),
    ];
    for (yaml, expected) in cases {
        let e = error(yaml);
        assert!(e.contains(expected), "{yaml:?}: {e}");
        assert!(e.starts_with("test.yaml"), "{e}");
        assert!(!e.contains('\n'), "multi-line error: {e}");
    }
}

#[test]
fn missing_file_and_unknown_builtin_are_clear() {
    let e = Policy::load("/nonexistent/policy.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no policy file `/nonexistent/policy.yaml`"),
        "{e}"
    );
    assert!(
        e.contains("built-in: off, unrestricted, common-dependencies"),
        "{e}"
    );
}

fn intercepts(p: &Policy, host: &str, port: u16) -> bool {
    let host = Host::parse(host).unwrap();
    p.tunnel_needs_interception(Target { host: &host, port })
}

#[test]
fn only_tunnels_whose_decision_depends_on_the_inside_are_intercepted() {
    let p = policy(
        r#"
version: 1
mode: limited
allow:
  - plain.example
  - host: api.example
    methods: [GET]
  - host: both.example
    paths: ["/public/**"]
  - both.example
deny:
  - host: plain.example
    ports: [8443]
    methods: [POST]
"#,
    );
    assert!(!intercepts(&p, "plain.example", 443));
    // A deny rule that looks inside applies on its port.
    assert!(intercepts(&p, "plain.example", 8443));
    assert!(intercepts(&p, "api.example", 443));
    // An unconditional rule for the host makes interception unnecessary.
    assert!(!intercepts(&p, "both.example", 443));
    // Denied anyway: nothing to look inside.
    assert!(!intercepts(&p, "unknown.example", 443));
}

#[test]
fn global_methods_and_inspecting_deny_rules_intercept_in_unrestricted_mode() {
    let p = policy("version: 1\nmode: unrestricted\nmethods: [GET]\n");
    assert!(intercepts(&p, "any.example", 443));
    let p = policy(
        "version: 1\nmode: unrestricted\ndeny:\n  - host: api.example\n    methods: [POST]\n",
    );
    assert!(intercepts(&p, "api.example", 443));
    assert!(!intercepts(&p, "other.example", 443));
    let p = policy("version: 1\nmode: off\nmethods: [GET]\n");
    assert!(!intercepts(&p, "any.example", 443));
}

#[test]
fn a_utf8_byte_order_mark_is_ignored() {
    let p = policy("\u{feff}version: 1\nmode: limited\nallow: [github.com]\n");
    assert_eq!(get(&p, "github.com"), None);
    // Positions stay those an editor shows: the mark takes no column.
    assert_eq!(
        error("\u{feff}version: 1\nmode: limited\nalow: []\n")
            .split(": unknown")
            .next(),
        Some("test.yaml:3:1")
    );
}

/// (document, the `file:line:column:` the error starts with, then the key it
/// names): a key given twice is refused wherever it is, at the second one.
#[test]
fn duplicate_keys_are_errors_naming_the_key_and_its_line() {
    let cases = [
        (
            "version: 1\nmode: limited\nhosts:\n  a.test: 127.0.0.1\n  b.test: 127.0.0.2\n  a.test: 10.0.0.1\n",
            "test.yaml:6:3:",
            "duplicate key `a.test`",
        ),
        (
            "version: 1\nmode: limited\nhosts: {a.test: 127.0.0.1, \"a.test\": 10.0.0.1}\n",
            "test.yaml:3:28:",
            "duplicate key `a.test`",
        ),
        (
            "version: 1\nmode: limited\nallow: [a.com]\nmode: unrestricted\n",
            "test.yaml:4:1:",
            "duplicate key `mode`",
        ),
        (
            "version: 1\nmode: limited\nallow:\n  - host: a.com\n    ports: [443]\n    host: b.com\n",
            "test.yaml:6:5:",
            "duplicate key `host`",
        ),
    ];
    for (yaml, position, message) in cases {
        let e = error(yaml);
        assert!(e.starts_with(position), "{yaml:?}: {e}");
        assert!(e.contains(message), "{yaml:?}: {e}");
        assert!(e.contains("remove one"), "{yaml:?}: {e}");
        assert!(!e.contains('\n'), "multi-line error: {e}");
    }
}

/// (document, the `file:line:column:` the error starts with, the tag it
/// names): a tag would pick an enum variant (`!unrestricted`) or retype a
/// value behind the reader's back; none is needed in a policy.
#[test]
fn yaml_tags_are_errors_naming_their_line() {
    let cases = [
        (
            "version: 1\nmode: !unrestricted\n",
            "test.yaml:2:7:",
            "`!unrestricted`",
        ),
        (
            "version: 1\nmode: !!str limited\n",
            "test.yaml:2:7:",
            "`!!str`",
        ),
        (
            "version: 1\nmode: limited\nallow: [a.com, !!str b.com]\n",
            "test.yaml:3:16:",
            "`!!str`",
        ),
        (
            "version: 1\nmode: limited\nhosts: {a.test: !ip 127.0.0.1}\n",
            "test.yaml:3:17:",
            "`!ip`",
        ),
        (
            "version: 1\nmode: limited\nallow:\n  - !rule\n    host: a.com\n",
            "test.yaml:4:5:",
            "`!rule`",
        ),
        ("version: 1\n!x mode: limited\n", "test.yaml:2:1:", "`!x`"),
        (
            "--- !policy\nversion: 1\nmode: limited\n",
            "test.yaml:1:5:",
            "`!policy`",
        ),
        (
            "version: 1\nmode: &m !<tag:yaml.org,2002:str> limited\n",
            "test.yaml:2:10:",
            "`!<tag:yaml.org,2002:str>`",
        ),
        ("version: 1\nmode: ! limited\n", "test.yaml:2:7:", "`!`"),
    ];
    for (yaml, position, tag) in cases {
        let e = error(yaml);
        assert!(e.starts_with(position), "{yaml:?}: {e}");
        assert!(e.contains(tag), "{yaml:?}: {e}");
        assert!(e.contains("remove the tag"), "{yaml:?}: {e}");
        assert!(!e.contains('\n'), "multi-line error: {e}");
    }
}

#[test]
fn exclamation_marks_that_are_not_tags_are_fine() {
    let p = policy(
        "version: 1 # v1!\nmode: limited # !!str\nallow:\n  - \"github.com\" # !x\n  - 'a.com' #!y\n\
         deny: [\"b.com\"] # [!z\n",
    );
    assert_eq!(get(&p, "github.com"), None);
    // `!` inside a plain or quoted scalar is text (and here a bad pattern).
    assert!(error("version: 1\nmode: limited\nallow: [a!b.com]\n").contains("a!b.com"));
    assert!(error("version: 1\nmode: limited\nallow: [\"!b.com\"]\n").contains("!b.com"));
}

/// Nesting this deep makes libyaml's scanner quadratic (tens of seconds of
/// CPU on the reload path before serde_yaml's own recursion limit applies):
/// it is refused by a scan of the text, before any parsing.
#[test]
fn deep_nesting_is_refused_before_parsing() {
    const DEPTH: usize = 100_000;
    // (document, the line the limit is passed on)
    let documents = [
        (
            format!("version: 1\nmode: limited\nallow: {}", "[".repeat(DEPTH)),
            3,
        ),
        (
            format!("version: 1\nmode: limited\nallow: {}", "{a: ".repeat(DEPTH)),
            3,
        ),
        (
            format!("version: 1\nmode: limited\nallow:\n{}", "- ".repeat(DEPTH)),
            4,
        ),
        (
            format!("version: 1\nmode: limited\nallow:\n{}", "? ".repeat(DEPTH)),
            4,
        ),
    ];
    for (yaml, line) in &documents {
        let started = std::time::Instant::now();
        let e = error(yaml);
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(1), "{took:?}: {e}");
        assert!(e.starts_with(&format!("test.yaml:{line}:")), "{e}");
        assert!(e.contains("nested more than 64 levels deep"), "{e}");
        assert!(!e.contains('\n'), "multi-line error: {e}");
    }
}

#[test]
fn nesting_up_to_the_limit_is_left_to_the_parser() {
    let brackets = |n: usize| {
        format!(
            "version: 1\nmode: limited\nallow: {}a.com{}\n",
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    // Too deep for a policy, but not for the scan: serde_yaml says why.
    assert!(error(&brackets(63)).contains("host pattern or a rule"));
    assert!(error(&brackets(64)).contains("nested more than 64 levels deep"));
    // Brackets in quotes, comments and block scalars do not count.
    let deep_text = "[".repeat(100);
    // (The patterns themselves are bad: serde_yaml gets to say so.)
    for yaml in [
        format!("version: 1\nmode: limited # {deep_text}\ndeny: [\"{deep_text}\",\n  '{deep_text}']\n"),
        format!("version: 1\nmode: limited\nallow:\n  - |\n    {deep_text}\n\n    {deep_text}\n  - a.com\n"),
    ] {
        let e = error(&yaml);
        assert!(e.contains("not a valid host"), "{e}");
    }
}

/// The strict reading refuses nothing a valid policy may look like: JSON,
/// flow collections over several lines with comments, anchors and aliases,
/// directives and document markers, CRLF line ends.
#[test]
fn every_layout_of_a_valid_policy_still_loads() {
    let layouts = [
        r#"{"version": 1, "mode": "limited", "allow": ["github.com", {"host": "a.com", "ports": [443]}], "hosts": {"r.test": "127.0.0.1"}}"#,
        "version: 1\nmode: limited\nallow: [ # the [registries\n  github.com,   # x!\n  \"a.com\", # \"quoted [\n  {host: b.com,\n   ports: [443]},\n]\nports: &p [80, 443]\ndeny:\n- host: c.com\n  ports: *p\n",
        "%YAML 1.1\n---\nversion: 1\nmode: limited\n...\n",
        "version: 1\r\nmode: limited\r\nallow:\r\n  - 'github.com'\r\n",
    ];
    for yaml in layouts {
        assert_eq!(policy(yaml).mode(), Mode::Limited, "{yaml:?}");
    }
}
