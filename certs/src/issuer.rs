//! Minting leaf certificates, once per host, behind a bounded cache.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use lru::LruCache;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::crypto::{CryptoProvider, SecureRandom};
use rustls::pki_types::{CertificateDer, DnsName};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::ServerConfig;
use time::{Duration, OffsetDateTime};

use crate::authority::{self, Authority, LoadedCa, BACKDATE, MAX_COMMON_NAME_CHARS};
use crate::error::{CertError, OneLine};
use crate::{Alpn, CertificateAuthority, LeafName};

/// Leaves live 7 days (the brief's example): short enough that a leaked leaf
/// is useless soon, long enough that a long-running proxy rarely re-mints.
pub const LEAF_VALIDITY: Duration = Duration::days(7);
/// A cached leaf is replaced once it has less than a day left, so no client
/// ever sees one that expires mid-connection.
pub const LEAF_RENEW_MARGIN: Duration = Duration::days(1);
/// 16 random bytes: RFC 5280 §4.1.2.2 allows up to 20 octets, and the CA/B
/// Baseline Requirements §7.1 ask for at least 64 bits of randomness.
const SERIAL_BYTES: usize = 16;
/// TLS sessions kept for resumption, shared by every host's config. rustls's
/// own default is 256 per config, allocated up front (about 30 KiB each);
/// one shared cache keeps 10,000 cached hosts from costing 300 MiB.
const SESSION_CACHE_ENTRIES: usize = 4096;

/// ALPN ids (RFC 7301 registry).
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// One host's minted certificate, as ready server configs.
struct Minted {
    both: Arc<ServerConfig>,
    http1_only: Arc<ServerConfig>,
    /// After this moment the next request mints a fresh leaf.
    renew_after: OffsetDateTime,
}

impl Minted {
    fn config(&self, alpn: Alpn) -> Arc<ServerConfig> {
        match alpn {
            Alpn::H2AndHttp1 => Arc::clone(&self.both),
            Alpn::Http1Only => Arc::clone(&self.http1_only),
        }
    }
}

/// A cache slot: filled exactly once, by whichever caller got there first.
/// The error is a message, not a `CertError`, so every waiter can get a copy.
type Slot = OnceLock<Result<Arc<Minted>, OneLine>>;

/// Mints leaves and caches them per host.
///
/// One ECDSA P-256 key, generated when the CA is loaded, is certified by every
/// leaf (as mitmproxy and hudsucker do): minting is then one signature, not a
/// key generation, and the key never leaves memory. Serial numbers are random,
/// validity runs from a minute ago to [`LEAF_VALIDITY`] from now (never past
/// the CA's own expiry), and a leaf is re-minted once within
/// [`LEAF_RENEW_MARGIN`] of expiring. At most `capacity` hosts are kept; the
/// least recently used is dropped first.
pub struct LeafIssuer {
    ca: LoadedCa,
    leaf_key: KeyPair,
    leaf_signer: Arc<dyn SigningKey>,
    provider: Arc<CryptoProvider>,
    sessions: Arc<dyn StoresServerSessions>,
    cache: Mutex<LruCache<LeafName, Arc<Slot>>>,
    minted: AtomicU64,
}

impl fmt::Debug for LeafIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafIssuer")
            .field("ca", &self.ca.cert_path)
            .field("cached", &self.cached())
            .field("minted", &self.minted())
            .finish_non_exhaustive()
    }
}

impl LeafIssuer {
    pub(crate) fn new(authority: Authority, capacity: usize) -> LeafIssuer {
        LeafIssuer {
            ca: authority.ca,
            leaf_key: authority.leaf_key,
            leaf_signer: authority.leaf_signer,
            provider: Arc::new(authority::crypto_provider()),
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
            // `sparse`: do not allocate `capacity` slots up front.
            cache: Mutex::new(LruCache::sparse(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
            minted: AtomicU64::new(0),
        }
    }

    /// Number of hosts in the cache.
    pub fn cached(&self) -> usize {
        self.lock_cache().len()
    }

    /// Total leaves minted so far.
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    /// The cache, even if a thread panicked while holding it: every update
    /// is a single LRU operation, so the map is never half-changed.
    fn lock_cache(&self) -> MutexGuard<'_, LruCache<LeafName, Arc<Slot>>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot for `name`: the cached one unless it is due for renewal (or
    /// failed), else a fresh empty one put in its place. The lock is held only
    /// for this lookup; minting happens outside it.
    fn slot_for(&self, name: &LeafName, now: OffsetDateTime) -> Arc<Slot> {
        let mut cache = self.lock_cache();
        if let Some(slot) = cache.get(name) {
            let fresh = match slot.get() {
                None => true, // being minted right now: wait for it
                Some(Ok(minted)) => now < minted.renew_after,
                Some(Err(_)) => false,
            };
            if fresh {
                return Arc::clone(slot);
            }
        }
        let slot = Arc::new(Slot::new());
        cache.put(name.clone(), Arc::clone(&slot));
        slot
    }

    /// Drops a failed slot so that the next request retries, unless it has
    /// already been replaced.
    fn forget_failed(&self, name: &LeafName, failed: &Arc<Slot>) {
        let mut cache = self.lock_cache();
        if cache
            .peek(name)
            .is_some_and(|slot| Arc::ptr_eq(slot, failed))
        {
            cache.pop(name);
        }
    }

    /// Mints `name`'s leaf and builds its server configs; on failure, the reason.
    fn mint(&self, name: &LeafName) -> Result<Arc<Minted>, OneLine> {
        let reason = |e: CertError| match e {
            CertError::Mint { reason, .. } => reason,
            other => OneLine::new(other),
        };
        let leaf = sign_leaf(&self.ca, &self.leaf_key, name, self.provider.secure_random)
            .map_err(reason)?;
        let chain = vec![leaf.cert_der, self.ca.cert_der.clone()];
        let certified = CertifiedKey::new(chain, Arc::clone(&self.leaf_signer));
        let both = self.build_server_config(certified, name).map_err(reason)?;
        let mut http1_only = both.clone();
        http1_only.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        self.minted.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Minted {
            both: Arc::new(both),
            http1_only: Arc::new(http1_only),
            renew_after: leaf.renew_after,
        }))
    }

    /// A server config presenting `certified`, offering h2 and HTTP/1.1, and
    /// sharing this issuer's session cache (rustls resumes a session only for
    /// the SNI it was made with, so hosts cannot resume each other's).
    fn build_server_config(
        &self,
        certified: CertifiedKey,
        name: &LeafName,
    ) -> Result<ServerConfig, CertError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| CertError::Mint {
                name: name.to_string(),
                reason: OneLine::new(e),
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        config.session_storage = Arc::clone(&self.sessions);
        Ok(config)
    }
}

impl CertificateAuthority for LeafIssuer {
    fn server_config(&self, name: &LeafName) -> Result<Arc<ServerConfig>, CertError> {
        self.server_config_for(name, Alpn::H2AndHttp1)
    }

    fn server_config_for(
        &self,
        name: &LeafName,
        alpn: Alpn,
    ) -> Result<Arc<ServerConfig>, CertError> {
        // Errors that say something about the request or the CA, not about
        // minting, are returned as they are and never touch the cache.
        subject_of(name)?;
        let now = OffsetDateTime::now_utc();
        check_ca_valid(&self.ca, now)?;
        let slot = self.slot_for(name, now);
        let outcome = slot.get_or_init(|| self.mint(name));
        match outcome {
            Ok(minted) => Ok(minted.config(alpn)),
            Err(reason) => {
                self.forget_failed(name, &slot);
                Err(CertError::Mint {
                    name: name.to_string(),
                    reason: reason.clone(),
                })
            }
        }
    }
}

/// A freshly signed leaf.
pub(crate) struct SignedLeaf {
    pub(crate) cert_der: CertificateDer<'static>,
    pub(crate) renew_after: OffsetDateTime,
}

/// Signs a leaf for `name` certifying `leaf_key`.
pub(crate) fn sign_leaf(
    ca: &LoadedCa,
    leaf_key: &KeyPair,
    name: &LeafName,
    rng: &dyn SecureRandom,
) -> Result<SignedLeaf, CertError> {
    let now = OffsetDateTime::now_utc();
    check_ca_valid(ca, now)?;
    let mint_error = |e: &dyn fmt::Display| CertError::Mint {
        name: name.to_string(),
        reason: OneLine::new(e),
    };
    let mut params = leaf_params(name, now, ca.not_after)?;
    params.serial_number = Some(random_serial(rng).map_err(|e| mint_error(&e))?);
    let cert = params
        .signed_by(leaf_key, &ca.issuer)
        .map_err(|e| mint_error(&e))?;
    Ok(SignedLeaf {
        cert_der: cert.der().clone(),
        renew_after: (now + LEAF_VALIDITY - LEAF_RENEW_MARGIN).min(ca.not_after),
    })
}

/// Refuses to mint once the CA has expired: clients would refuse the leaves.
fn check_ca_valid(ca: &LoadedCa, now: OffsetDateTime) -> Result<(), CertError> {
    if ca.not_after <= now {
        return Err(CertError::CaExpired {
            path: ca.cert_path.clone(),
            not_after: authority::format_time(ca.not_after),
        });
    }
    Ok(())
}

/// The parameters of a leaf for `name`: a SAN naming it (and a CN too, for
/// old clients, when it fits), not a CA, digitalSignature for the ECDSA
/// handshake signature, EKU serverAuth, an authority key identifier, and a
/// validity from a minute ago to [`LEAF_VALIDITY`] from now, capped at the
/// CA's expiry.
fn leaf_params(
    name: &LeafName,
    now: OffsetDateTime,
    ca_not_after: OffsetDateTime,
) -> Result<CertificateParams, CertError> {
    let (san, common_name) = subject_of(name)?;
    let mut subject = DistinguishedName::new();
    if common_name.chars().count() <= MAX_COMMON_NAME_CHARS {
        subject.push(DnType::CommonName, common_name);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.subject_alt_names = vec![san];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = (now + LEAF_VALIDITY).min(ca_not_after);
    Ok(params)
}

/// The SAN and common name for `name`, refusing names no client would accept.
fn subject_of(name: &LeafName) -> Result<(SanType, String), CertError> {
    match name {
        LeafName::Ip(ip) => Ok((SanType::IpAddress(*ip), ip.to_string())),
        LeafName::Dns(host) => {
            // A fully qualified "example.com." is the same host; SANs carry no dot.
            let host = host.strip_suffix('.').unwrap_or(host);
            let invalid = |reason| CertError::InvalidName {
                name: host.to_string(),
                reason,
            };
            DnsName::try_from(host).map_err(|_| {
                invalid(
                    "not a valid DNS name (letters, digits, '-', '_' and dots only; no wildcards)",
                )
            })?;
            let ia5 = host.try_into().map_err(|_| invalid("not ASCII"))?;
            Ok((SanType::DnsName(ia5), host.to_string()))
        }
    }
}

/// The system random number generator failed (rustls's error has no message).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RandomFailed;

impl fmt::Display for RandomFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the system random number generator failed")
    }
}

/// A random positive serial number of exactly [`SERIAL_BYTES`] bytes.
///
/// The top bit is cleared so the DER INTEGER is positive without a padding
/// byte, and the next bit is set so the number is never zero and never loses
/// a leading byte: 126 random bits remain.
pub(crate) fn random_serial(rng: &dyn SecureRandom) -> Result<SerialNumber, RandomFailed> {
    let mut bytes = [0u8; SERIAL_BYTES];
    rng.fill(&mut bytes).map_err(|_| RandomFailed)?;
    bytes[0] = (bytes[0] & 0x7F) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::parse_certificate;
    use crate::test_support::TempDir;
    use std::net::IpAddr;
    use x509_parser::extensions::ParsedExtension;

    fn issuer(label: &str) -> (TempDir, LeafIssuer) {
        let tmp = TempDir::new(label);
        crate::create_ca(&tmp.path).unwrap();
        let issuer = Authority::load(&tmp.path).unwrap().into_issuer(8);
        (tmp, issuer)
    }

    #[test]
    fn leaf_is_a_short_lived_backdated_server_certificate_from_our_ca() {
        let (_tmp, issuer) = issuer("leaf-props");
        let rng = issuer.provider.secure_random;
        let name = LeafName::Dns("api.example.com".into());
        let leaf = sign_leaf(&issuer.ca, &issuer.leaf_key, &name, rng).unwrap();
        let cert = parse_certificate(&leaf.cert_der).unwrap();
        let ca = parse_certificate(&issuer.ca.cert_der).unwrap();
        let now = OffsetDateTime::now_utc();

        assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw());
        let basic_constraints = cert.basic_constraints().unwrap().map(|e| e.value.ca);
        assert_eq!(basic_constraints, Some(false), "basicConstraints CA:FALSE");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth, "EKU serverAuth");
        let key_usage = cert.key_usage().unwrap().map(|e| e.value.key_cert_sign());
        assert_eq!(key_usage, Some(false));
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            issuer.leaf_key.public_key_raw()
        );
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        let backdate = now - not_before;
        assert!(
            backdate >= Duration::seconds(59) && backdate <= Duration::seconds(75),
            "{backdate}"
        );
        let lifetime = not_after - not_before;
        assert!(lifetime <= LEAF_VALIDITY + BACKDATE, "{lifetime}");
        assert!(lifetime >= LEAF_VALIDITY, "{lifetime}");
        // authorityKeyIdentifier = the CA's subjectKeyIdentifier.
        let ca_key_id = ca
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0),
                _ => None,
            })
            .unwrap();
        let mut aki = vec![0x80, ca_key_id.len() as u8];
        aki.extend_from_slice(ca_key_id);
        assert!(leaf.cert_der.windows(aki.len()).any(|w| w == aki), "AKI");
        assert!(leaf.renew_after <= not_after - LEAF_RENEW_MARGIN + Duration::seconds(1));
    }

    #[test]
    fn a_failed_slot_is_replaced_not_served() {
        let (_tmp, issuer) = issuer("failed-slot");
        let name = LeafName::Dns("flaky.example".into());
        let now = OffsetDateTime::now_utc();
        let failed = issuer.slot_for(&name, now);
        assert!(failed.set(Err("boom".into())).is_ok());
        // A caller arriving after the failure gets a fresh slot ...
        let fresh = issuer.slot_for(&name, now);
        assert!(!Arc::ptr_eq(&failed, &fresh));
        // ... which the failed caller's clean-up leaves alone.
        issuer.forget_failed(&name, &failed);
        assert_eq!(issuer.cached(), 1);
        issuer.forget_failed(&name, &fresh);
        assert_eq!(issuer.cached(), 0);
        issuer.server_config(&name).unwrap();
        assert_eq!(issuer.minted(), 1);
    }

    #[test]
    fn a_leaf_near_expiry_is_minted_again_once() {
        let (_tmp, issuer) = issuer("renew");
        let name = LeafName::Dns("renew.example".into());
        let first = issuer.server_config(&name).unwrap();
        assert_eq!(issuer.minted(), 1);
        // Six days and a bit later the cached leaf is due for renewal ...
        let later =
            OffsetDateTime::now_utc() + LEAF_VALIDITY - LEAF_RENEW_MARGIN + Duration::minutes(1);
        let slot = issuer.slot_for(&name, later);
        assert!(slot.get().is_none(), "a fresh slot replaces the stale one");
        // ... and the next request fills the fresh slot, minting once more.
        let second = issuer.server_config(&name).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&second, &issuer.server_config(&name).unwrap()));
        assert_eq!(issuer.minted(), 2);
        assert_eq!(issuer.cached(), 1);
    }

    #[test]
    fn serials_are_positive_16_bytes_and_differ() {
        let rng = authority::crypto_provider().secure_random;
        let a = random_serial(rng).unwrap().to_bytes();
        let b = random_serial(rng).unwrap().to_bytes();
        assert_eq!(a.len(), SERIAL_BYTES);
        assert_eq!(a[0] & 0xC0, 0x40);
        assert_ne!(a, b);
    }

    #[test]
    fn names_that_cannot_be_certified_are_refused() {
        for bad in [
            "",
            "*.example.com",
            "exa mple.com",
            "münchen.de",
            "1.2.3.4",
            "a..b",
            "-a.com",
        ] {
            let err = subject_of(&LeafName::Dns(bad.to_string())).unwrap_err();
            assert!(matches!(err, CertError::InvalidName { .. }), "{bad}: {err}");
        }
        assert!(subject_of(&LeafName::Dns("example.com.".into())).is_ok());
        let ip: IpAddr = "::1".parse().unwrap();
        assert!(subject_of(&LeafName::Ip(ip)).is_ok());
    }

    #[test]
    fn long_names_get_no_common_name() {
        let long = format!("{}.example.com", "a".repeat(60));
        let now = OffsetDateTime::now_utc();
        let params = leaf_params(&LeafName::Dns(long), now, now + Duration::days(365)).unwrap();
        assert!(params.distinguished_name.get(&DnType::CommonName).is_none());
    }

    #[test]
    fn leaves_never_outlive_the_ca() {
        let now = OffsetDateTime::now_utc();
        let ca_end = now + Duration::hours(1);
        let params = leaf_params(&LeafName::Dns("a.example".into()), now, ca_end).unwrap();
        assert_eq!(params.not_after, ca_end);
    }
}
