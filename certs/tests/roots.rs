//! Trust bundle for sandboxes and roots for upstream verification.

mod common;

use std::fs;

use common::{assert_message, new_ca, TempDir};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tollgate_certs::{trust_bundle, upstream_roots, Authority, CertError};

fn system_root_count() -> usize {
    rustls_native_certs::load_native_certs().certs.len()
}

#[test]
fn trust_bundle_holds_the_system_roots_then_our_ca() {
    let (_tmp, dir) = new_ca("bundle");
    let authority = Authority::load(&dir).unwrap();
    let bundle = trust_bundle(authority.cert_pem()).unwrap();
    assert!(bundle.ends_with(authority.cert_pem()), "our CA comes last");
    assert_eq!(bundle.matches(authority.cert_pem()).count(), 1);

    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bundle.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let system = system_root_count();
    if system == 0 {
        eprintln!(
            "SKIPPED PART: the system CA store is empty here, so only our CA could be checked"
        );
        assert_eq!(certs.len(), 1);
        return;
    }
    assert!(certs.len() >= 2, "at least one system root and ours");
    let native = rustls_native_certs::load_native_certs().certs;
    assert!(certs.contains(&native[0]), "a system root is in the bundle");
    assert_eq!(certs.last().unwrap(), &authority.cert_der());
}

#[test]
fn trust_bundle_refuses_something_that_is_not_a_certificate() {
    let err = trust_bundle("hello").unwrap_err();
    assert!(matches!(err, CertError::BundleCa { .. }), "{err:?}");
    assert_message(&err, &["not a PEM certificate"]);
}

#[test]
fn upstream_roots_adds_every_certificate_of_each_file() {
    let (_tmp, dir_a) = new_ca("upstream-a");
    let (_tmp2, dir_b) = new_ca("upstream-b");
    let tmp = TempDir::new("upstream");
    let both = tmp.join("corp.pem");
    let a = fs::read_to_string(dir_a.join("ca.crt")).unwrap();
    let b = fs::read_to_string(dir_b.join("ca.crt")).unwrap();
    fs::write(&both, format!("# corporate roots\n{a}\n{b}")).unwrap();

    let system = upstream_roots(&[]).unwrap().len();
    let with_extra = upstream_roots(&[both]).unwrap();
    assert_eq!(with_extra.len(), system + 2);
    if system == 0 {
        eprintln!("SKIPPED PART: the system CA store is empty here");
    }
}

#[test]
fn upstream_roots_refuses_a_garbage_or_empty_file_naming_it() {
    let tmp = TempDir::new("upstream-bad");
    let garbage = tmp.join("garbage.pem");
    fs::write(&garbage, "not a certificate at all\n").unwrap();
    let err = upstream_roots(std::slice::from_ref(&garbage)).unwrap_err();
    assert!(matches!(err, CertError::UpstreamCa { .. }), "{err:?}");
    assert_message(
        &err,
        &[
            &format!("--upstream-ca {}", garbage.display()),
            "no -----BEGIN CERTIFICATE----- block",
        ],
    );

    let empty = tmp.join("empty.pem");
    fs::write(&empty, "").unwrap();
    let err = upstream_roots(std::slice::from_ref(&empty)).unwrap_err();
    assert_message(&err, &[&format!("--upstream-ca {}", empty.display())]);

    // A PEM block whose DER is not a certificate.
    let bad_der = tmp.join("bad-der.pem");
    fs::write(
        &bad_der,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = upstream_roots(std::slice::from_ref(&bad_der)).unwrap_err();
    assert_message(
        &err,
        &[
            &bad_der.display().to_string(),
            "certificate #1 is not a usable CA",
        ],
    );

    let missing = tmp.join("missing.pem");
    let err = upstream_roots(std::slice::from_ref(&missing)).unwrap_err();
    assert_message(&err, &[&missing.display().to_string()]);
}
