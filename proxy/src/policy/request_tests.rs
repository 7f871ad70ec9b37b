//! Methods and paths in every spelling a server might treat as the one a
//! rule names (issue: a red team passed `delete` and `/Admin` through rules
//! on `DELETE` and `/admin/**`).

use super::*;

fn policy(yaml: &str) -> Policy {
    Policy::from_yaml("test.yaml", yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn reason(p: &Policy, method: &str, path: &str) -> Option<&'static str> {
    let host = Host::parse("api.example").unwrap();
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    p.decide_request(
        Target {
            host: &host,
            port: 443,
        },
        &method,
        path,
    )
    .reason()
    .map(Reason::code)
}

const DENY_ADMIN: &str = r#"
version: 1
mode: limited
allow:
  - api.example
deny:
  - host: api.example
    methods: [DELETE]
  - host: api.example
    paths: ["/admin/**", "/secret"]
"#;

#[test]
fn a_method_in_another_case_is_a_bad_request_not_a_new_method() {
    let p = policy(DENY_ADMIN);
    assert_eq!(reason(&p, "DELETE", "/x"), Some("denylisted"));
    for method in ["delete", "Delete", "dELETE", "get", "Get", "propfind"] {
        assert_eq!(reason(&p, method, "/x"), Some("bad-request"), "{method}");
    }
    assert_eq!(reason(&p, "GET", "/x"), None);
    assert_eq!(reason(&p, "PROPFIND", "/x"), None);
}

#[test]
fn deny_paths_match_in_any_case() {
    let p = policy(DENY_ADMIN);
    for path in [
        "/admin",
        "/Admin",
        "/ADMIN/users",
        "/aDmIn/x",
        "/%41dmin",
        "/admin/",
    ] {
        assert_eq!(reason(&p, "GET", path), Some("denylisted"), "{path}");
    }
    for path in ["/secret", "/Secret", "/secret/"] {
        assert_eq!(reason(&p, "GET", path), Some("denylisted"), "{path}");
    }
    assert_eq!(reason(&p, "GET", "/administrator"), None);
    assert_eq!(reason(&p, "GET", "/secrets"), None);
}

#[test]
fn spellings_some_server_reads_as_the_denied_path_are_denied() {
    let p = policy(DENY_ADMIN);
    for path in [
        "/admin.",
        "/admin%20",
        "/admin%09",
        "/admin%3Bx",
        "/admin%2e",
        "/%C0%AFadmin",
        "/admin/%C0%AE%C0%AE/x",
    ] {
        assert_eq!(reason(&p, "GET", path), Some("denylisted"), "{path}");
    }
}

#[test]
fn allow_paths_stay_exact_and_ambiguous_paths_match_no_allow_rule() {
    let p = policy(
        "version: 1\nmode: limited\nallow:\n  - host: api.example\n    paths: [\"/public/**\"]\n",
    );
    assert_eq!(reason(&p, "GET", "/public/a"), None);
    for path in ["/Public/a", "/public./a", "/public/a%20", "/public/%C0%AF"] {
        assert_eq!(reason(&p, "GET", path), Some("path-not-allowed"), "{path}");
    }
}
