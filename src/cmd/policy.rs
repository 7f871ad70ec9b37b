//! `tollgate policy check` and `tollgate policy eval`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use http::uri::Scheme;
use http::{Method, Uri};
use tollgate_proxy::decision::{Decision, Reason, Verdict};
use tollgate_proxy::host::{Host, HostPort};
use tollgate_proxy::policy::{Policy, Target};

use crate::cli::{CheckArgs, EvalArgs};

pub fn check(args: CheckArgs) -> Result<ExitCode> {
    let mut all_ok = true;
    for file in &args.files {
        let name = file.to_string_lossy();
        match Policy::load(&name) {
            Ok(policy) => println!("ok  {name}: {}", policy.summary()),
            Err(e) => {
                println!("bad {e}");
                all_ok = false;
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn eval(args: EvalArgs) -> Result<ExitCode> {
    let policy = Policy::load(&args.policy)?;
    let method = parse_method(&args.method)?;
    let mut lines = Vec::with_capacity(args.urls.len());
    for url in &args.urls {
        let (target, path) = parse_url(url)?;
        let decision = evaluate(&policy, &target, &method, &path);
        lines.push((decision, format!("{method} {url}")));
    }
    let width = lines.iter().map(|(d, _)| label(d).len()).max().unwrap_or(0);
    let mut any_denied = false;
    for (decision, request) in &lines {
        any_denied |= !matches!(decision.verdict, Verdict::Allow(_));
        println!(
            "{:<10} {:<width$}  {request}",
            decision.outcome().as_str(),
            label(decision)
        );
    }
    Ok(if any_denied {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The policy's decision, then the internal-address guard for what can be
/// known without DNS: IP literals and static `hosts:` entries.
fn evaluate(policy: &Policy, target: &HostPort, method: &Method, path: &str) -> Decision {
    let decision = policy.decide_request(
        Target {
            host: &target.host,
            port: target.port,
        },
        method,
        path,
    );
    let known_address = match &target.host {
        Host::Ip(ip) => Some(*ip),
        Host::Name(name) => policy.static_address(name),
    };
    match known_address.map(|ip| policy.guard().check(ip)) {
        Some(Err(_)) if decision.permits() => Decision::refuse(Reason::InternalAddress),
        _ => decision,
    }
}

fn label(decision: &Decision) -> String {
    match &decision.verdict {
        Verdict::Allow(grant) => grant.to_string(),
        Verdict::Deny(reason) => reason.code().to_owned(),
    }
}

fn parse_method(text: &str) -> Result<Method> {
    let method = Method::from_bytes(text.as_bytes())
        .with_context(|| format!("`{text}` is not an HTTP method"))?;
    if text != text.to_ascii_uppercase() {
        bail!(
            "method `{text}` must be uppercase: write `{}`",
            text.to_ascii_uppercase()
        );
    }
    Ok(method)
}

fn parse_url(url: &str) -> Result<(HostPort, String)> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    let default_port = match uri.scheme() {
        Some(s) if *s == Scheme::HTTP => 80,
        Some(s) if *s == Scheme::HTTPS => 443,
        _ => bail!("`{url}`: only http:// and https:// URLs can be evaluated"),
    };
    let authority = uri
        .authority()
        .with_context(|| format!("`{url}` has no host"))?;
    let target =
        HostPort::from_authority(authority, default_port).with_context(|| format!("`{url}`"))?;
    Ok((target, uri.path().to_owned()))
}
