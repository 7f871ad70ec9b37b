//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz): each hands one
//! hostile parser what a peer or a policy author controls, as the proxy
//! does, and must return, never panic. Built only with the `fuzzing`
//! feature.

use std::sync::OnceLock;
use std::time::Duration;

use http::Method;

use crate::connect::check_opening;
use crate::host::{Host, HostPort};
use crate::policy::{Policy, Target};
use crate::sniff::read_opening;

/// Host normalisation, as request targets, Host headers, SNI and rules
/// give names.
pub fn host(text: &str) {
    if let Ok(host) = Host::parse(text) {
        // Normalising is idempotent: the normal form parses to itself.
        let again = Host::parse(&host.to_string()).expect("a normal form parses");
        assert_eq!(again, host, "{text:?}");
    }
    let _ = HostPort::parse(text, 443);
}

/// The policy loader, on any file.
pub fn policy(text: &str) {
    let _ = Policy::from_yaml("fuzz.yaml", text);
}

/// The ClientHello sniffer, on a tunnel's first bytes, and the check a
/// tunnel to `allowed.test:443` makes of what it finds.
pub fn client_hello(bytes: &[u8]) {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    });
    let target = HostPort::parse("allowed.test:443", 443).expect("a target");
    let mut client = bytes;
    let (opening, _) = runtime.block_on(read_opening(&mut client, Duration::from_secs(1)));
    let _ = check_opening(&opening, &target);
}

/// Path decisions (canonical forms, deny rules that must match every
/// spelling), on a policy with path and method rules.
pub fn path(text: &str) {
    // What the proxy decides on is the URI's path: no query, no fragment.
    let text = text.split(['?', '#']).next().unwrap_or_default();
    static POLICY: OnceLock<Policy> = OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        Policy::from_yaml(
            "fuzz.yaml",
            "version: 1\nmode: limited\nallow:\n  - host: allowed.test\n    paths: [\"/public/**\", \"/api/v1/*\"]\ndeny:\n  - host: allowed.test\n    paths: [\"/public/admin/**\"]\n",
        )
        .expect("the fuzz policy loads")
    });
    let host = Host::parse("allowed.test").expect("a host");
    let target = Target {
        host: &host,
        port: 443,
    };
    let decision = policy.decide_request(target, &Method::GET, text);
    // Whatever the spelling, nothing under the denied prefix is allowed.
    if text.to_ascii_lowercase().starts_with("/public/admin/") {
        assert!(!decision.permits(), "{text:?} passed the deny rule");
    }
}
