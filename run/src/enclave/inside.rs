//! The inside contract: what every sandbox finds that tollgate put there —
//! where the proxy listens, the variables that point clients at it and at
//! the CA bundle, the resolver that fails fast, the bundle itself. The one
//! list from which "set by tollgate" is derived.

use std::net::{Ipv4Addr, SocketAddr};

use tollgate_certs::CertError;
use tollgate_sandbox::NewFile;

/// Where the proxy listens inside every sandbox (DESIGN.md).
pub const PROXY_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 3128);
/// The system CA file of Debian-family bases, replaced by our bundle.
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the bundle also lives under its own name.
pub const BUNDLE_FILE: &str = "/etc/tollgate/ca-bundle.pem";
/// A resolver that answers at once: nothing listens on port 53 of the
/// sandbox's loopback, so look-ups fail fast instead of timing out, and
/// names are only ever resolved by the proxy, after the policy allowed them.
const RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables every common client reads for its proxy.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];
/// What is never sent through the proxy (it would refuse it anyway).
const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];
const NO_PROXY: &str = "localhost,127.0.0.1,::1";
/// Every variable common clients read for a CA bundle (DESIGN.md).
const CA_VARIABLES: [&str; 8] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "CARGO_HTTP_CAINFO",
    "npm_config_cafile",
];
/// Variables of the host passed in when set: they describe the terminal
/// and the language, never credentials.
const FROM_HOST: [&str; 2] = ["TERM", "LANG"];

/// Variables tollgate sets inside and no configuration may override: the
/// proxy and CA variables. (`PATH` and `HOME` are defaults, which an
/// environment may change.)
pub fn set_by_tollgate() -> impl Iterator<Item = &'static str> {
    PROXY_VARIABLES
        .into_iter()
        .chain(NO_PROXY_VARIABLES)
        .chain(CA_VARIABLES)
}

/// The environment every sandboxed command starts from: a minimal one (the
/// host's may hold credentials) pointing every common client at the proxy,
/// and at the CA bundle when intercepting.
pub fn environment(intercepting: bool) -> Vec<(String, String)> {
    let proxy = format!("http://{PROXY_ADDR}");
    let mut env = vec![
        ("PATH".to_owned(), PATH.to_owned()),
        ("HOME".to_owned(), "/root".to_owned()),
    ];
    env.extend(NO_PROXY_VARIABLES.map(|k| (k.to_owned(), NO_PROXY.to_owned())));
    env.extend(PROXY_VARIABLES.map(|k| (k.to_owned(), proxy.clone())));
    if intercepting {
        env.extend(CA_VARIABLES.map(|k| (k.to_owned(), BUNDLE_FILE.to_owned())));
    }
    for key in FROM_HOST {
        if let Ok(value) = std::env::var(key) {
            env.push((key.to_owned(), value));
        }
    }
    env
}

/// The files every sandbox gets: a resolver that fails fast, and with
/// interception, the CA bundle over the system's and under its own name.
pub fn files(ca_pem: Option<&str>) -> Result<Vec<NewFile>, CertError> {
    let mut files = vec![NewFile::new("/etc/resolv.conf", RESOLV_CONF)];
    if let Some(pem) = ca_pem {
        let bundle = tollgate_certs::trust_bundle(pem)?.into_bytes();
        files.push(NewFile::new(SYSTEM_CA_FILE, bundle.clone()));
        files.push(NewFile::new(BUNDLE_FILE, bundle));
    }
    Ok(files)
}

/// `base` with `overrides` applied: a key in both takes the override's
/// value, in the base's position; new keys follow in order.
pub fn merge(
    base: Vec<(String, String)>,
    overrides: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut env = base;
    for (key, value) in overrides {
        match env.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => env.push((key, value)),
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_set_inside_is_in_the_set_by_tollgate_list_or_a_default() {
        let set: Vec<&str> = set_by_tollgate().collect();
        for (key, _) in environment(true) {
            assert!(
                set.contains(&key.as_str())
                    || ["PATH", "HOME"].contains(&key.as_str())
                    || FROM_HOST.contains(&key.as_str()),
                "{key} is set inside but not listed"
            );
        }
        assert!(environment(false)
            .iter()
            .all(|(k, _)| !CA_VARIABLES.contains(&k.as_str())));
    }

    #[test]
    fn overrides_replace_in_place_and_append_the_rest() {
        let merged = merge(
            vec![("A".into(), "1".into()), ("B".into(), "2".into())],
            vec![("B".into(), "x".into()), ("C".into(), "3".into())],
        );
        assert_eq!(
            merged,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x".into()),
                ("C".into(), "3".into())
            ]
        );
    }
}
