//! `ca init` and loading a CA: file modes, refusal to overwrite, and every
//! way a CA directory can be wrong, each with its one-line message.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{assert_message, cert_from_pem_file, mode, new_ca, TempDir};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyIdMethod,
    KeyPair, KeyUsagePurpose,
};
use tollgate_certs::{create_ca, Authority, CaFiles, CertError};

#[test]
fn create_ca_writes_the_files_with_their_modes_and_refuses_a_second_time() {
    let tmp = TempDir::new("create");
    let dir = tmp.join("state/certs"); // parents missing too
    let files = create_ca(&dir).unwrap();
    assert_eq!(files, CaFiles::in_dir(&dir));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&files.cert), 0o644);
    assert_eq!(mode(&files.key), 0o600);
    let cert = fs::read_to_string(&files.cert).unwrap();
    let key = fs::read_to_string(&files.key).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    // No temporary files are left behind.
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ca.crt", "ca.key"]);

    let err = create_ca(&dir).unwrap_err();
    assert!(matches!(err, CertError::CaExists { .. }), "{err:?}");
    assert_message(&err, &["ca.crt already exists", "refusing to overwrite"]);
    assert_eq!(fs::read_to_string(&files.cert).unwrap(), cert);
    assert_eq!(fs::read_to_string(&files.key).unwrap(), key);
    assert_eq!(mode(&files.key), 0o600);
}

#[test]
fn create_ca_keeps_an_existing_directory_as_it_is() {
    let tmp = TempDir::new("existing-dir");
    fs::set_permissions(&tmp.path, fs::Permissions::from_mode(0o750)).unwrap();
    create_ca(&tmp.path).unwrap();
    assert_eq!(mode(&tmp.path), 0o750);
}

#[test]
fn create_ca_refuses_a_file_as_its_directory() {
    let tmp = TempDir::new("file-as-dir");
    let file = tmp.join("certs");
    fs::write(&file, "").unwrap();
    let err = create_ca(&file).unwrap_err();
    assert_message(&err, &["/certs exists and is not a directory"]);
}

#[test]
fn create_ca_refuses_when_only_the_key_exists() {
    let tmp = TempDir::new("key-only");
    fs::write(tmp.join("ca.key"), "mine").unwrap();
    let err = create_ca(&tmp.path).unwrap_err();
    assert_message(&err, &["ca.key already exists"]);
    assert!(!tmp.join("ca.crt").exists());
    assert_eq!(fs::read_to_string(tmp.join("ca.key")).unwrap(), "mine");
}

#[test]
fn created_ca_has_the_contracted_properties_and_loads() {
    let (_tmp, dir) = new_ca("roundtrip");
    let authority = Authority::load(&dir).unwrap();
    let from_file = cert_from_pem_file(&dir.join("ca.crt"));
    assert_eq!(authority.cert_der(), from_file);
    assert_eq!(
        authority.cert_pem(),
        fs::read_to_string(dir.join("ca.crt")).unwrap()
    );
    // ECDSA P-256 key (PKCS#8 with id-ecPublicKey and prime256v1).
    let key = KeyPair::from_pem(&fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    // basicConstraints: critical, CA:TRUE, pathlen 0 (30 06 01 01 FF 02 01 00).
    let der = from_file.as_ref();
    let basic_constraints = [
        0x06, 0x03, 0x55, 0x1D, 0x13, 0x01, 0x01, 0xFF, 0x04, 0x08, 0x30, 0x06, 0x01, 0x01, 0xFF,
        0x02, 0x01, 0x00,
    ];
    assert!(
        der.windows(basic_constraints.len())
            .any(|w| w == basic_constraints),
        "CA:TRUE, pathlen:0 not found"
    );
    assert!(
        String::from_utf8_lossy(der).contains("tollgate CA ("),
        "common name"
    );
}

#[test]
fn load_refuses_a_missing_directory() {
    let tmp = TempDir::new("missing");
    let dir = tmp.join("nope");
    let err = Authority::load(&dir).unwrap_err();
    assert!(matches!(err, CertError::MissingCaFile { .. }), "{err:?}");
    let dir_text = dir.display().to_string();
    assert_message(
        &err,
        &[
            &format!("{dir_text}/ca.crt does not exist"),
            &format!("run `tollgate ca init --dir {dir_text}`"),
        ],
    );
}

#[test]
fn load_refuses_a_missing_key() {
    let (_tmp, dir) = new_ca("missing-key");
    fs::remove_file(dir.join("ca.key")).unwrap();
    let err = Authority::load(&dir).unwrap_err();
    assert_message(&err, &["/ca.key does not exist", "tollgate ca init --dir"]);
}

#[test]
fn load_refuses_a_key_readable_by_others() {
    let (_tmp, dir) = new_ca("mode");
    let key = dir.join("ca.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Authority::load(&dir).unwrap_err();
    assert!(matches!(err, CertError::KeyPermissions { .. }), "{err:?}");
    let key_text = key.display().to_string();
    assert_message(
        &err,
        &[
            &format!("{key_text} can be read or written by group or others (mode 0644)"),
            &format!("run chmod 600 {key_text}"),
        ],
    );
    // Group-readable alone is refused too.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    assert_message(&Authority::load(&dir).unwrap_err(), &["(mode 0640)"]);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
    Authority::load(&dir).unwrap();
}

#[test]
fn load_refuses_a_key_owned_by_another_user() {
    let (_tmp, dir) = new_ca("owner");
    let key = dir.join("ca.key");
    let me = nix::unistd::geteuid().as_raw();
    if me == 0 {
        std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    } else {
        // Without root, point ca.key at a file root owns.
        fs::remove_file(&key).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &key).unwrap();
    }
    let err = Authority::load(&dir).unwrap_err();
    assert!(matches!(err, CertError::KeyOwner { .. }), "{err:?}");
    assert_message(
        &err,
        &[
            "is owned by uid",
            &format!("not by the current user (uid {me})"),
        ],
    );
}

#[test]
fn load_refuses_a_garbage_certificate() {
    let (_tmp, dir) = new_ca("garbage-cert");
    fs::write(dir.join("ca.crt"), "this is not a certificate\n").unwrap();
    let err = Authority::load(&dir).unwrap_err();
    assert!(matches!(err, CertError::NotACertificate { .. }), "{err:?}");
    assert_message(
        &err,
        &["/ca.crt does not hold exactly one PEM certificate (no -----BEGIN CERTIFICATE----- block)"],
    );

    // Well-formed PEM around bytes that are not a certificate.
    fs::write(
        dir.join("ca.crt"),
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = Authority::load(&dir).unwrap_err();
    assert!(matches!(err, CertError::BadCertificate { .. }), "{err:?}");
    assert_message(&err, &["/ca.crt holds a certificate tollgate cannot read"]);
}

#[test]
fn load_refuses_a_file_with_two_certificates() {
    let (_tmp, dir) = new_ca("two-certs");
    let one = fs::read_to_string(dir.join("ca.crt")).unwrap();
    fs::write(dir.join("ca.crt"), format!("{one}{one}")).unwrap();
    let err = Authority::load(&dir).unwrap_err();
    assert_message(&err, &["it holds 2 certificates"]);
}

#[test]
fn load_refuses_a_garbage_key() {
    let (_tmp, dir) = new_ca("garbage-key");
    let key = dir.join("ca.key");
    fs::write(&key, "garbage\n").unwrap();
    let err = Authority::load(&dir).unwrap_err();
    assert!(matches!(err, CertError::NotAPrivateKey { .. }), "{err:?}");
    assert_message(
        &err,
        &["/ca.key does not hold an unencrypted PKCS#8 PEM private key (no -----BEGIN PRIVATE KEY----- block)"],
    );

    // A PKCS#8 block whose contents are not a key: the bytes are not echoed.
    fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IHNlY3JldA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = Authority::load(&dir).unwrap_err();
    assert_message(
        &err,
        &["/ca.key does not hold an unencrypted PKCS#8 PEM private key"],
    );
    assert!(!err.to_string().contains("secret"));
}

#[test]
fn load_refuses_a_certificate_that_is_not_a_ca() {
    let tmp = TempDir::new("not-ca");
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["server.example".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    write_ca(&tmp, &cert.pem(), &key.serialize_pem());
    let err = Authority::load(&tmp.path).unwrap_err();
    assert!(matches!(err, CertError::NotACa { .. }), "{err:?}");
    assert_message(
        &err,
        &["/ca.crt is not a CA certificate (no basicConstraints CA:TRUE)"],
    );
}

#[test]
fn load_refuses_a_ca_whose_key_usage_forbids_signing_certificates() {
    let tmp = TempDir::new("no-certsign");
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    write_ca(&tmp, &cert.pem(), &key.serialize_pem());
    let err = Authority::load(&tmp.path).unwrap_err();
    assert_message(&err, &["keyUsage without keyCertSign"]);
}

#[test]
fn load_refuses_a_ca_limited_to_other_purposes() {
    let tmp = TempDir::new("eku");
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::EmailProtection];
    let cert = params.self_signed(&key).unwrap();
    write_ca(&tmp, &cert.pem(), &key.serialize_pem());
    let err = Authority::load(&tmp.path).unwrap_err();
    assert_message(&err, &["extendedKeyUsage without serverAuth"]);
}

#[test]
fn load_refuses_a_key_that_does_not_match_the_certificate() {
    let (_tmp, dir) = new_ca("mismatch");
    fs::write(
        dir.join("ca.key"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let err = Authority::load(&dir).unwrap_err();
    assert!(matches!(err, CertError::KeyMismatch { .. }), "{err:?}");
    assert_message(
        &err,
        &["/ca.key does not match the public key in", "/ca.crt"],
    );
}

#[test]
fn load_refuses_an_expired_ca() {
    let tmp = TempDir::new("expired");
    let key = KeyPair::generate().unwrap();
    let mut params = ca_params();
    params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    write_ca(&tmp, &cert.pem(), &key.serialize_pem());
    let err = Authority::load(&tmp.path).unwrap_err();
    assert!(matches!(err, CertError::CaExpired { .. }), "{err:?}");
    assert_message(&err, &["expired on 2002-01-01 00:00:00 UTC"]);
}

#[test]
fn load_refuses_a_directory_where_a_file_should_be() {
    let (_tmp, dir) = new_ca("dir-as-file");
    fs::remove_file(dir.join("ca.crt")).unwrap();
    fs::create_dir(dir.join("ca.crt")).unwrap();
    let err = Authority::load(&dir).unwrap_err();
    assert_message(&err, &["/ca.crt is not a regular file"]);
}

/// A CA not made by tollgate: PrintableString attributes, an Ed25519 key and
/// a subject key identifier computed some other way. Its leaves must name it
/// byte for byte and carry its key identifier.
#[test]
fn load_accepts_a_foreign_ca_and_its_leaves_verify() {
    use tollgate_certs::{CertificateAuthority, LeafName};
    let tmp = TempDir::new("foreign");
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = ca_params();
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CountryName,
        DnValue::PrintableString("DE".try_into().unwrap()),
    );
    name.push(DnType::OrganizationName, "Example Corp");
    name.push(
        DnType::CommonName,
        DnValue::PrintableString("Example Interception CA".try_into().unwrap()),
    );
    params.distinguished_name = name;
    params.key_identifier_method = KeyIdMethod::PreSpecified(vec![7; 20]);
    let cert = params.self_signed(&key).unwrap();
    write_ca(&tmp, &cert.pem(), &key.serialize_pem());

    let authority = Authority::load(&tmp.path).unwrap();
    let ca = authority.cert_der();
    let issuer = authority.into_issuer(8);
    let config = issuer
        .server_config(&LeafName::Dns("intranet.example".into()))
        .unwrap();
    let client =
        common::handshake(common::client_trusting(ca, &[]), config, "intranet.example").unwrap();
    let leaf = client.peer_certificates().unwrap()[0].clone();
    // AKI keyIdentifier [0] = the CA's 20 bytes of 7.
    let mut aki = vec![0x30, 0x16, 0x80, 0x14];
    aki.extend([7u8; 20]);
    assert!(
        leaf.windows(aki.len()).any(|w| w == aki),
        "AKI must repeat the CA's SKI"
    );
}

/// Subjects rcgen cannot write back byte for byte as the issuer of a leaf are
/// refused with a message, never a panic. The certificates are rcgen's with
/// a few bytes changed; a root's own signature is not checked by anyone.
#[test]
fn load_refuses_a_ca_whose_subject_cannot_be_reproduced() {
    // O and CN merged into one SET, same total length: the SET and the O
    // value grow by the two bytes of the second SET's header.
    assert_subject_refused(
        "multi-valued",
        &[DnType::OrganizationName, DnType::CommonName],
        &[
            0x31, 0x0D, 0x30, 0x0B, 0x06, 0x03, 0x55, 0x04, 0x0A, 0x0C, 0x04,
        ],
        &[
            0x31, 0x1C, 0x30, 0x0D, 0x06, 0x03, 0x55, 0x04, 0x0A, 0x0C, 0x06,
        ],
        "its subject has a multi-valued RDN",
    );
    // OU turned into a second O.
    assert_subject_refused(
        "repeated",
        &[DnType::OrganizationName, DnType::OrganizationalUnitName],
        &[0x06, 0x03, 0x55, 0x04, 0x0B],
        &[0x06, 0x03, 0x55, 0x04, 0x0A],
        "its subject repeats an attribute type",
    );
    // 2.999.1: a valid OID whose first subidentifier takes two bytes; without
    // the check, rcgen's DER writer panics on it.
    assert_subject_refused(
        "oid",
        &[DnType::CustomDnType(vec![2, 5, 4, 99])],
        &[0x06, 0x03, 0x55, 0x04, 0x63],
        &[0x06, 0x03, 0x88, 0x37, 0x01],
        "its subject has an attribute type tollgate cannot reproduce",
    );
    // UTF8String "1234" turned into a NumericString.
    assert_subject_refused(
        "string-type",
        &[DnType::CommonName],
        &[0x0C, 0x04, 0x31, 0x32, 0x33, 0x34],
        &[0x12, 0x04, 0x31, 0x32, 0x33, 0x34],
        "its subject uses a string encoding tollgate cannot reproduce",
    );
}

/// Makes a CA whose subject has `types` with the values "1234", "bbbb", ...,
/// replaces `from` by `to` in its issuer and subject, and expects `load` to
/// refuse it with `expected`.
fn assert_subject_refused(label: &str, types: &[DnType], from: &[u8], to: &[u8], expected: &str) {
    let tmp = TempDir::new(label);
    let key = KeyPair::generate().unwrap();
    let mut params = ca_params();
    let mut name = DistinguishedName::new();
    for (i, dn_type) in types.iter().enumerate() {
        let value = if i == 0 { "1234" } else { "bbbb" };
        name.push(dn_type.clone(), DnValue::Utf8String(value.to_string()));
    }
    params.distinguished_name = name;
    let mut der = params.self_signed(&key).unwrap().der().to_vec();
    let mut patched = 0;
    for at in 0..=der.len() - from.len() {
        if &der[at..at + from.len()] == from {
            der[at..at + from.len()].copy_from_slice(to);
            patched += 1;
        }
    }
    assert_eq!(patched, 2, "{label}: issuer and subject");
    let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", der));
    write_ca(&tmp, &cert_pem, &key.serialize_pem());
    let err = Authority::load(&tmp.path).unwrap_err();
    assert!(
        matches!(err, CertError::CaUnusable { .. }),
        "{label}: {err:?}"
    );
    assert_message(
        &err,
        &["cannot issue certificates that verify against it", expected],
    );
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn write_ca(tmp: &TempDir, cert_pem: &str, key_pem: &str) {
    fs::write(tmp.join("ca.crt"), cert_pem).unwrap();
    let key = tmp.join("ca.key");
    fs::write(&key, key_pem).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
}
