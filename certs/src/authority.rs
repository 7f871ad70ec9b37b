//! Creating a CA (`tollgate ca init`) and loading one for the proxy.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, SecureRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::SigningKey;
use rustls::RootCertStore;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::x509::X509Name;

use crate::error::{CertError, OneLine};
use crate::files::{self, CaFiles};
use crate::issuer::{self, LeafIssuer, RandomFailed};
use crate::roots;
use crate::LeafName;

/// A new CA is valid for 10 years (the issue asks for it): long enough that
/// sandboxes' trust stores rarely need updating, short enough to expire.
const CA_VALIDITY: Duration = Duration::days(3650);
/// Certificates start a minute in the past so that a client whose clock is a
/// little behind ours still accepts them (the issue: "backdated a minute").
pub(crate) const BACKDATE: Duration = Duration::seconds(60);
/// X.520 ub-common-name: a commonName is at most 64 characters (RFC 5280 Appendix A).
pub(crate) const MAX_COMMON_NAME_CHARS: usize = 64;
/// Organisation of a CA made by `ca init`, so it is recognisable in trust stores.
const CA_ORGANIZATION: &str = "tollgate";
/// Warn at load when the CA has less than this left: leaves cannot outlive it.
const CA_EXPIRY_WARNING: Duration = Duration::days(30);
/// The name a self-check leaf is issued for; `.invalid` is reserved (RFC 6761 §6.4).
const SELF_CHECK_NAME: &str = "tollgate-self-check.invalid";
/// The string types rcgen can write back into the issuer name of a leaf.
const REPRODUCIBLE_STRING_TAGS: [Tag; 6] = [
    Tag::Utf8String,
    Tag::PrintableString,
    Tag::Ia5String,
    Tag::T61String,
    Tag::BmpString,
    Tag::UniversalString,
];

/// Creates a new CA in `dir` (see the crate docs for the contract).
///
/// Creates `dir` with mode 0700 if it does not exist, then writes `ca.crt`
/// (0644) and `ca.key` (0600). Refuses, touching nothing, if either file
/// already exists. The key is ECDSA P-256; the certificate has CA:TRUE with
/// path length 0, a 10-year validity starting a minute ago, and a common name
/// like `tollgate CA (buildhost, 2025-01-31)`.
pub fn create_ca(dir: &Path) -> Result<CaFiles, CertError> {
    let files = CaFiles::in_dir(dir);
    files::ensure_ca_dir(dir)?;
    files::refuse_existing(&files)?;
    let rng = crypto_provider().secure_random;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
    let now = OffsetDateTime::now_utc();
    let serial = issuer::random_serial(rng).map_err(generate_error)?;
    let instance = random_u64(rng).map_err(generate_error)?;
    let mut params = ca_params(&ca_common_name(&host_name(), now), instance, now);
    params.serial_number = Some(serial);
    let cert = params.self_signed(&key).map_err(generate_error)?;
    let nonce = random_u64(rng).map_err(generate_error)?;
    // Linking refuses existing files too, so a concurrent `ca init` that
    // slipped in since the check above is not overwritten either.
    files::write_ca_files(dir, &files, &cert.pem(), &key.serialize_pem(), nonce)?;
    Ok(files)
}

fn generate_error(e: impl fmt::Display) -> CertError {
    CertError::Generate {
        reason: OneLine::new(e),
    }
}

/// The parameters of a new CA certificate.
///
/// `instance` goes into the organizational unit so that two CAs made on one
/// host on one day still have different subjects: clients find a root by
/// subject name, and two roots with the same name but different keys make
/// them pick the wrong one and fail with a bad signature.
fn ca_params(common_name: &str, instance: u64, now: OffsetDateTime) -> CertificateParams {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, CA_ORGANIZATION);
    name.push(
        DnType::OrganizationalUnitName,
        format!("instance {instance:016x}"),
    );
    name.push(DnType::CommonName, common_name);
    let mut params = CertificateParams::default();
    params.distinguished_name = name;
    // Path length 0: this CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params
}

/// `tollgate CA (<hostname>, <date>)`, with the host name shortened so the
/// whole name fits the 64-character limit on a commonName.
fn ca_common_name(host: &str, now: OffsetDateTime) -> String {
    let date = format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let fixed = "tollgate CA (, )".chars().count() + date.chars().count();
    let host: String = host
        .chars()
        .take(MAX_COMMON_NAME_CHARS.saturating_sub(fixed))
        .collect();
    format!("tollgate CA ({host}, {date})")
}

/// This machine's host name, for telling CAs of different machines apart.
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .map(|name| name.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown host".to_string())
}

fn random_u64(rng: &dyn SecureRandom) -> Result<u64, RandomFailed> {
    let mut bytes = [0u8; 8];
    rng.fill(&mut bytes).map_err(|_| RandomFailed)?;
    Ok(u64::from_le_bytes(bytes))
}

/// The crypto provider used for everything: ring, as the workspace configures rustls.
pub(crate) fn crypto_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A loaded, checked CA, ready to sign leaves.
pub struct Authority {
    pub(crate) ca: LoadedCa,
    /// The one key every leaf certifies (generated at load, see [`LeafIssuer`]).
    pub(crate) leaf_key: KeyPair,
    /// `leaf_key` as rustls uses it in handshakes.
    pub(crate) leaf_signer: Arc<dyn SigningKey>,
}

/// The parts of a CA that minting needs.
pub(crate) struct LoadedCa {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    pub(crate) cert_der: CertificateDer<'static>,
    pub(crate) cert_pem: String,
    pub(crate) not_after: OffsetDateTime,
    pub(crate) cert_path: PathBuf,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("cert", &self.ca.cert_path)
            .field("not_after", &self.ca.not_after)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads `ca.crt` and `ca.key` from `dir` and checks that they make a CA
    /// that can issue certificates clients will accept.
    ///
    /// Refuses a missing file, a key accessible by group/others or owned by
    /// another user, PEM that is not a certificate / private key, a
    /// certificate that is not a CA or has expired, and a key that does not
    /// match the certificate. Finally it issues one throw-away leaf and
    /// verifies it against the CA with webpki, so a CA that loads is one whose
    /// leaves verify.
    pub fn load(dir: &Path) -> Result<Authority, CertError> {
        let files = CaFiles::in_dir(dir);
        let cert_bytes = files::read_ca_cert(&files.cert, dir)?;
        let key_bytes = files::read_ca_key(&files.key, dir)?;
        let cert_der = single_certificate(&files.cert, &cert_bytes)?;
        let ca = loaded_ca(&files, cert_der, &key_bytes)?;
        let (leaf_key, leaf_signer) = leaf_key()?;
        self_check(&ca, &leaf_key).map_err(|reason| CertError::CaUnusable {
            path: files.cert.clone(),
            reason,
        })?;
        warn_if_expiring_soon(&ca);
        Ok(Authority {
            ca,
            leaf_key,
            leaf_signer,
        })
    }

    /// The CA certificate, PEM (one block, ending in a newline).
    pub fn cert_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.ca.cert_der.clone()
    }

    /// The minting cache in front of this CA, holding at most `capacity`
    /// hosts (at least 1).
    pub fn into_issuer(self, capacity: usize) -> LeafIssuer {
        LeafIssuer::new(self, capacity)
    }
}

/// Generates the key all leaves will certify, for rcgen and for rustls.
fn leaf_key() -> Result<(KeyPair, Arc<dyn SigningKey>), CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
    let signer = crypto_provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .map_err(generate_error)?;
    Ok((key, signer))
}

/// The one certificate in `ca.crt`; more than one is refused, since which of
/// them is the CA would be a guess.
fn single_certificate(path: &Path, text: &[u8]) -> Result<CertificateDer<'static>, CertError> {
    let not_a_cert = |reason: String| CertError::NotACertificate {
        path: path.to_path_buf(),
        reason: OneLine::new(reason),
    };
    let mut certs = roots::pem_certificates(text).map_err(not_a_cert)?;
    match certs.len() {
        1 => Ok(certs.remove(0)),
        n => Err(not_a_cert(format!("it holds {n} certificates"))),
    }
}

/// Checks the CA certificate and its key, and builds the issuer that signs
/// every leaf from them.
fn loaded_ca(
    files: &CaFiles,
    cert_der: CertificateDer<'static>,
    key_pem: &[u8],
) -> Result<LoadedCa, CertError> {
    let bad_cert = |reason: OneLine| CertError::BadCertificate {
        path: files.cert.clone(),
        reason,
    };
    let unusable = |reason: OneLine| CertError::CaUnusable {
        path: files.cert.clone(),
        reason,
    };
    let cert = parse_certificate(&cert_der).map_err(bad_cert)?;
    check_is_usable_ca(&files.cert, &cert)?;
    let key = private_key(&files.key, key_pem)?;
    let public_key = &cert.public_key().subject_public_key;
    if public_key.unused_bits != 0 || key.public_key_raw() != public_key.data.as_ref() {
        return Err(CertError::KeyMismatch {
            key: files.key.clone(),
            cert: files.cert.clone(),
        });
    }
    check_reproducible_name(cert.subject()).map_err(|r| unusable(r.into()))?;
    let not_after = cert.validity().not_after.to_datetime();
    // rcgen takes the subject, key usages and subject key identifier from the
    // certificate, so that leaves name this CA as their issuer and carry its
    // key identifier.
    let issuer = Issuer::from_ca_cert_der(&cert_der, key)
        .map_err(|e| unusable(OneLine::new(format!("rcgen cannot issue from it: {e}"))))?;
    Ok(LoadedCa {
        issuer,
        cert_pem: roots::certificate_pem(&cert_der),
        cert_der,
        not_after,
        cert_path: files.cert.clone(),
    })
}

/// Parses a DER certificate with x509-parser, refusing trailing bytes.
pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, OneLine> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing data after the certificate".into()),
        Err(e) => Err(OneLine::new(e)),
    }
}

/// Refuses a certificate that is not a CA, may not sign certificates or TLS
/// server certificates, or has expired.
fn check_is_usable_ca(path: &Path, cert: &X509Certificate<'_>) -> Result<(), CertError> {
    let bad = |reason: String| CertError::BadCertificate {
        path: path.to_path_buf(),
        reason: OneLine::new(reason),
    };
    // x509-parser keeps an extension it cannot parse as a ParseError, which
    // its accessors would report as "absent", i.e. "no restriction".
    for (oid, name) in [
        (OID_X509_EXT_BASIC_CONSTRAINTS, "basicConstraints"),
        (OID_X509_EXT_KEY_USAGE, "keyUsage"),
        (OID_X509_EXT_EXTENDED_KEY_USAGE, "extendedKeyUsage"),
        (OID_X509_EXT_SUBJECT_KEY_IDENTIFIER, "subjectKeyIdentifier"),
    ] {
        let extension = cert
            .get_extension_unique(&oid)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        if extension.is_some_and(|ext| ext.parsed_extension().error().is_some()) {
            return Err(bad(format!("malformed {name}")));
        }
    }
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| bad(format!("basicConstraints: {e}")))?
        .is_some_and(|ext| ext.value.ca);
    if !is_ca {
        return Err(CertError::NotACa {
            path: path.to_path_buf(),
        });
    }
    let key_usage = cert
        .key_usage()
        .map_err(|e| bad(format!("keyUsage: {e}")))?;
    if key_usage.is_some_and(|ext| !ext.value.key_cert_sign()) {
        return Err(CertError::CaCannotSign {
            path: path.to_path_buf(),
        });
    }
    let extended_key_usage = cert
        .extended_key_usage()
        .map_err(|e| bad(format!("extendedKeyUsage: {e}")))?;
    if extended_key_usage.is_some_and(|ext| !ext.value.server_auth && !ext.value.any) {
        return Err(CertError::CaNotForServers {
            path: path.to_path_buf(),
        });
    }
    let now = OffsetDateTime::now_utc();
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if not_before > now {
        // Not refused: the clock may be what is wrong. Clients that check the
        // root's validity (OpenSSL does) will refuse until then.
        tracing::warn!(
            cert = %path.display(),
            not_before = %format_time(not_before),
            "the CA certificate is not valid yet; check this machine's clock"
        );
    }
    if not_after <= now {
        return Err(CertError::CaExpired {
            path: path.to_path_buf(),
            not_after: format_time(not_after),
        });
    }
    Ok(())
}

/// Parses `ca.key`. The key's bytes never appear in an error message.
fn private_key(path: &Path, text: &[u8]) -> Result<KeyPair, CertError> {
    let refuse = |reason: &str| CertError::NotAPrivateKey {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let der = PrivateKeyDer::from_pem_slice(text).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            refuse("no -----BEGIN PRIVATE KEY----- block")
        }
        _ => refuse("malformed PEM"),
    })?;
    match der {
        PrivateKeyDer::Pkcs8(_) => {}
        PrivateKeyDer::Sec1(_) => return Err(refuse("it is a SEC1 EC key, not PKCS#8")),
        PrivateKeyDer::Pkcs1(_) => return Err(refuse("it is a PKCS#1 RSA key, not PKCS#8")),
        _ => return Err(refuse("unknown key format")),
    }
    KeyPair::try_from(&der).map_err(|_| refuse("not an ECDSA, Ed25519 or RSA key ring can use"))
}

/// Refuses a CA subject that rcgen cannot write back byte for byte as the
/// issuer of a leaf, before rcgen sees it: rcgen panics on an empty RDN,
/// fails on a multi-valued one, keeps one value per attribute type, and its
/// DER writer asserts on attribute types whose first arcs are out of range.
/// [`self_check`] catches any other difference.
fn check_reproducible_name(name: &X509Name<'_>) -> Result<(), &'static str> {
    let mut seen: Vec<Vec<u64>> = Vec::new();
    for rdn in name.iter() {
        let mut attributes = rdn.iter();
        let attribute = match (attributes.next(), attributes.next()) {
            (Some(attribute), None) => attribute,
            (None, _) => return Err("its subject has an empty RDN"),
            (Some(_), Some(_)) => return Err("its subject has a multi-valued RDN"),
        };
        let arcs: Vec<u64> = attribute
            .attr_type()
            .iter()
            .map(Iterator::collect)
            .unwrap_or_default();
        if !writable_oid(&arcs) {
            return Err("its subject has an attribute type tollgate cannot reproduce");
        }
        if seen.contains(&arcs) {
            return Err("its subject repeats an attribute type");
        }
        seen.push(arcs);
        if !REPRODUCIBLE_STRING_TAGS.contains(&attribute.attr_value().tag()) {
            return Err("its subject uses a string encoding tollgate cannot reproduce");
        }
    }
    Ok(())
}

/// Whether rcgen's DER writer (yasna) accepts an OID: it asserts at least two
/// arcs, a first arc of 0, 1 or 2, a second arc below 40 under 0 and 1, and
/// a first subidentifier that fits in a u64.
fn writable_oid(arcs: &[u64]) -> bool {
    match arcs {
        [0 | 1, second, ..] => *second < 40,
        [2, second, ..] => *second < u64::MAX - 80,
        _ => false,
    }
}

/// Issues one leaf and checks it the way a client would: its issuer field is
/// the CA's subject byte for byte, and webpki verifies it against a root store
/// holding only this CA.
fn self_check(ca: &LoadedCa, leaf_key: &KeyPair) -> Result<(), OneLine> {
    let provider = crypto_provider();
    let name = LeafName::Dns(SELF_CHECK_NAME.to_string());
    let leaf = issuer::sign_leaf(ca, leaf_key, &name, provider.secure_random)
        .map_err(|e| OneLine::new(format!("signing a test certificate: {e}")))?;
    let leaf_cert = parse_certificate(&leaf.cert_der)
        .map_err(|e| OneLine::new(format!("reading a test certificate: {e}")))?;
    let ca_cert = parse_certificate(&ca.cert_der)?;
    if leaf_cert.issuer().as_raw() != ca_cert.subject().as_raw() {
        return Err("its subject name does not survive re-encoding".into());
    }
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.cert_der.clone())
        .map_err(|e| OneLine::new(format!("not a usable trust anchor: {e}")))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider))
        .build()
        .map_err(|e| OneLine::new(format!("building a verifier: {e}")))?;
    let server_name = ServerName::try_from(SELF_CHECK_NAME).map_err(OneLine::new)?;
    verifier
        .verify_server_cert(&leaf.cert_der, &[], &server_name, &[], UnixTime::now())
        .map_err(|e| OneLine::new(format!("a test certificate does not verify: {e}")))?;
    Ok(())
}

fn warn_if_expiring_soon(ca: &LoadedCa) {
    if ca.not_after - OffsetDateTime::now_utc() < CA_EXPIRY_WARNING {
        tracing::warn!(
            cert = %ca.cert_path.display(),
            not_after = %format_time(ca.not_after),
            "the CA expires soon; after that no intercepted connection will verify: run `tollgate ca init` in a new directory and give sandboxes the new certificate"
        );
    }
}

/// `2035-01-31 12:00:00 UTC`
pub(crate) fn format_time(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn common_name_fits_the_x520_limit() {
        let now = OffsetDateTime::now_utc();
        let long = "h".repeat(300);
        let cn = ca_common_name(&long, now);
        assert!(cn.chars().count() <= MAX_COMMON_NAME_CHARS, "{cn}");
        assert!(cn.starts_with("tollgate CA (hhh"));
        let short = ca_common_name("box", now);
        assert!(short.starts_with("tollgate CA (box, 20"), "{short}");
    }

    /// Every prefix and every single-byte corruption of a real CA certificate
    /// goes through all that `load` does with it after reading the files,
    /// self-check included: refused or accepted, never a panic.
    #[test]
    fn corrupt_ca_certificates_never_panic() {
        let tmp = TempDir::new("corrupt");
        let files = create_ca(&tmp.path).unwrap();
        let key_pem = std::fs::read(&files.key).unwrap();
        let der = CertificateDer::from_pem_file(&files.cert).unwrap().to_vec();
        let (leaf_key, _) = leaf_key().unwrap();
        let attempt = |bytes: &[u8]| -> Result<(), String> {
            let ca =
                loaded_ca(&files, bytes.to_vec().into(), &key_pem).map_err(|e| e.to_string())?;
            self_check(&ca, &leaf_key).map_err(|e| e.to_string())
        };
        attempt(&der).unwrap();
        for end in 0..der.len() {
            assert!(attempt(&der[..end]).is_err(), "prefix of {end} bytes");
        }
        for i in 0..der.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut copy = der.clone();
                copy[i] ^= flip;
                let _ = attempt(&copy);
            }
        }
    }

    #[test]
    fn oids_rcgen_cannot_write_are_refused() {
        assert!(writable_oid(&[2, 5, 4, 3]));
        assert!(writable_oid(&[1, 39]));
        assert!(writable_oid(&[2, 999, 1]));
        for bad in [
            &[][..],
            &[2],
            &[3, 16, 55],
            &[0, 40],
            &[1, 40],
            &[2, u64::MAX - 80],
        ] {
            assert!(!writable_oid(bad), "{bad:?}");
        }
    }
}
