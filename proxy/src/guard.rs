//! Internal-address guard (DESIGN.md, invariant 2).
//!
//! Every address the proxy is about to dial, whether it came from DNS, from a
//! static `hosts` entry or from an IP literal in the request, is classified
//! here first. Anything that is not globally routable is refused unless the
//! policy's `allow_internal` covers it, so a sandbox cannot use the proxy to
//! reach the host's loopback, the LAN, or a cloud metadata service.
//!
//! The ranges are data ([`INTERNAL_RANGES`]) taken from the IANA IPv4 and IPv6
//! Special-Purpose Address Registries (RFC 6890) and the IANA IPv6 address
//! space registry. An address matching several entries gets the most specific
//! one (longest prefix), so table order does not matter.
//!
//! IPv6 forms that embed or reach an IPv4 address (mapped, compatible, NAT64,
//! 6to4, Teredo) are refused as a whole: a sandbox never needs them to reach
//! a public host. An operator who exempts one of them with `allow_internal`
//! (a NAT64 prefix on an IPv6-only host) exempts the IPv6 range, not every
//! IPv4 address behind it: the embedded IPv4 address must pass the IPv4
//! rules too, or `64:ff9b::127.0.0.1` would reach the host's loopback.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

/// Which non-public range an address falls in; the reason a dial was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternalRange {
    /// 0.0.0.0/8
    ThisNetwork,
    /// 0.0.0.0/32 and ::/128
    Unspecified,
    /// 127.0.0.0/8 and ::1/128
    Loopback,
    /// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16
    Private,
    /// 100.64.0.0/10
    Cgnat,
    /// 169.254.0.0/16 and fe80::/10
    LinkLocal,
    /// 192.0.0.0/24 and 2001::/23
    IetfProtocol,
    /// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20
    Documentation,
    /// 192.88.99.0/24
    SixToFourRelay,
    /// 198.18.0.0/15 and 2001:2::/48
    Benchmarking,
    /// 224.0.0.0/4 and ff00::/8
    Multicast,
    /// 240.0.0.0/4, and IPv6 outside the global unicast block 2000::/3
    Reserved,
    /// 255.255.255.255/32
    Broadcast,
    /// fc00::/7
    UniqueLocal,
    /// fec0::/10
    SiteLocal,
    /// ::ffff:0:0/96
    Ipv4Mapped,
    /// ::/96
    Ipv4Compatible,
    /// 64:ff9b::/96 and 64:ff9b:1::/48
    Nat64,
    /// 2002::/16
    SixToFour,
    /// 2001::/32
    Teredo,
    /// 100::/64
    Discard,
    /// 2001:10::/28 and 2001:20::/28
    Orchid,
}

impl InternalRange {
    /// A short phrase for deny messages and the audit log, naming the range so
    /// a policy author can tell what was hit and what `allow_internal` would
    /// have to cover.
    pub fn describe(self) -> &'static str {
        match self {
            InternalRange::ThisNetwork => "\"this network\" (0.0.0.0/8)",
            InternalRange::Unspecified => {
                "unspecified address (0.0.0.0, ::), which reaches the local host"
            }
            InternalRange::Loopback => "loopback (127.0.0.0/8, ::1)",
            InternalRange::Private => {
                "private network (RFC 1918: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)"
            }
            InternalRange::Cgnat => "shared address space / carrier-grade NAT (100.64.0.0/10)",
            InternalRange::LinkLocal => {
                "link-local (169.254.0.0/16, incl. cloud metadata 169.254.169.254; fe80::/10)"
            }
            InternalRange::IetfProtocol => "IETF protocol assignments (192.0.0.0/24, 2001::/23)",
            InternalRange::Documentation => {
                "documentation (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20)"
            }
            InternalRange::SixToFourRelay => "6to4 relay anycast (192.88.99.0/24)",
            InternalRange::Benchmarking => "benchmarking (198.18.0.0/15, 2001:2::/48)",
            InternalRange::Multicast => "multicast (224.0.0.0/4, ff00::/8)",
            InternalRange::Reserved => {
                "reserved (240.0.0.0/4; IPv6 outside the global unicast block 2000::/3)"
            }
            InternalRange::Broadcast => "limited broadcast (255.255.255.255)",
            InternalRange::UniqueLocal => "unique local IPv6 (fc00::/7)",
            InternalRange::SiteLocal => "deprecated site-local IPv6 (fec0::/10)",
            InternalRange::Ipv4Mapped => {
                "IPv4-mapped IPv6 (::ffff:0:0/96), refused whatever IPv4 address it embeds"
            }
            InternalRange::Ipv4Compatible => "deprecated IPv4-compatible IPv6 (::/96)",
            InternalRange::Nat64 => {
                "NAT64 (64:ff9b::/96, 64:ff9b:1::/48), which reaches an embedded IPv4 address"
            }
            InternalRange::SixToFour => "6to4 (2002::/16), which reaches an embedded IPv4 address",
            InternalRange::Teredo => "Teredo (2001::/32), which reaches an embedded IPv4 address",
            InternalRange::Discard => "discard-only IPv6 (100::/64)",
            InternalRange::Orchid => "ORCHID (2001:10::/28, 2001:20::/28)",
        }
    }
}

impl fmt::Display for InternalRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// An IPv4 network for the table. `new_assert` only panics on a prefix length
/// over 32, and because the table is a `const` that would be a compile error,
/// never a runtime panic.
const fn v4(a: u8, b: u8, c: u8, d: u8, prefix_len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix_len))
}

/// An IPv6 network for the table, from its address as a 128-bit number
/// (same compile-time guarantee as [`v4`]).
const fn v6(bits: u128, prefix_len: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::from_bits(bits), prefix_len))
}

use InternalRange::*;

/// Every non-public range, with its source. Most-specific match wins.
#[rustfmt::skip]
pub const INTERNAL_RANGES: &[(IpNet, InternalRange)] = &[
    // ---- IPv4: IANA IPv4 Special-Purpose Address Registry (RFC 6890) ----
    (v4(0, 0, 0, 0, 8), ThisNetwork),            // RFC 791 §3.2, RFC 1122 §3.2.1.3
    (v4(0, 0, 0, 0, 32), Unspecified),           // RFC 1122 §3.2.1.3 ("this host"; Linux dials loopback)
    (v4(10, 0, 0, 0, 8), Private),               // RFC 1918
    (v4(100, 64, 0, 0, 10), Cgnat),              // RFC 6598
    (v4(127, 0, 0, 0, 8), Loopback),             // RFC 1122 §3.2.1.3
    (v4(169, 254, 0, 0, 16), LinkLocal),         // RFC 3927 (cloud metadata lives here)
    (v4(172, 16, 0, 0, 12), Private),            // RFC 1918
    (v4(192, 0, 0, 0, 24), IetfProtocol),        // RFC 6890 §2.2.2
    (v4(192, 0, 2, 0, 24), Documentation),       // RFC 5737 (TEST-NET-1)
    (v4(192, 88, 99, 0, 24), SixToFourRelay),    // RFC 3068, deprecated by RFC 7526
    (v4(192, 168, 0, 0, 16), Private),           // RFC 1918
    (v4(198, 18, 0, 0, 15), Benchmarking),       // RFC 2544
    (v4(198, 51, 100, 0, 24), Documentation),    // RFC 5737 (TEST-NET-2)
    (v4(203, 0, 113, 0, 24), Documentation),     // RFC 5737 (TEST-NET-3)
    (v4(224, 0, 0, 0, 4), Multicast),            // RFC 5771
    (v4(240, 0, 0, 0, 4), Reserved),             // RFC 1112 §4
    (v4(255, 255, 255, 255, 32), Broadcast),     // RFC 919 §7, RFC 8190

    // ---- IPv6: IANA IPv6 Special-Purpose Address Registry (RFC 6890) ----
    (v6(0, 128), Unspecified),                                      // RFC 4291 §2.5.2
    (v6(1, 128), Loopback),                                         // RFC 4291 §2.5.3
    (v6(0, 96), Ipv4Compatible),                                    // RFC 4291 §2.5.5.1 (deprecated)
    (v6(0xffff_0000_0000, 96), Ipv4Mapped),                         // RFC 4291 §2.5.5.2
    (v6(0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96), Nat64),     // RFC 6052
    (v6(0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48), Nat64),     // RFC 8215
    (v6(0x0100_0000_0000_0000_0000_0000_0000_0000, 64), Discard),   // RFC 6666
    (v6(0x2001_0000_0000_0000_0000_0000_0000_0000, 23), IetfProtocol), // RFC 2928
    (v6(0x2001_0000_0000_0000_0000_0000_0000_0000, 32), Teredo),    // RFC 4380
    (v6(0x2001_0002_0000_0000_0000_0000_0000_0000, 48), Benchmarking), // RFC 5180
    (v6(0x2001_0010_0000_0000_0000_0000_0000_0000, 28), Orchid),    // RFC 4843 (deprecated)
    (v6(0x2001_0020_0000_0000_0000_0000_0000_0000, 28), Orchid),    // RFC 7343 (ORCHIDv2)
    (v6(0x2001_0db8_0000_0000_0000_0000_0000_0000, 32), Documentation), // RFC 3849
    (v6(0x2002_0000_0000_0000_0000_0000_0000_0000, 16), SixToFour), // RFC 3056
    (v6(0x3fff_0000_0000_0000_0000_0000_0000_0000, 20), Documentation), // RFC 9637
    (v6(0xfc00_0000_0000_0000_0000_0000_0000_0000, 7), UniqueLocal), // RFC 4193
    (v6(0xfe80_0000_0000_0000_0000_0000_0000_0000, 10), LinkLocal), // RFC 4291 §2.5.6
    (v6(0xfec0_0000_0000_0000_0000_0000_0000_0000, 10), SiteLocal), // RFC 3879 (deprecated)
    (v6(0xff00_0000_0000_0000_0000_0000_0000_0000, 8), Multicast),  // RFC 4291 §2.7

    // ---- IPv6: everything outside 2000::/3, the only block IANA allocates
    // for global unicast (RFC 4291 §2.4, IANA IPv6 Address Space registry).
    // Catches unassigned space such as 4000::/2 or 5f00::/16 (SRv6, RFC 9602)
    // that no public host uses. ----
    (v6(0x0000_0000_0000_0000_0000_0000_0000_0000, 3), Reserved),
    (v6(0x4000_0000_0000_0000_0000_0000_0000_0000, 2), Reserved),
    (v6(0x8000_0000_0000_0000_0000_0000_0000_0000, 1), Reserved),
];

/// None = a public address that may be dialled.
pub fn classify(ip: std::net::IpAddr) -> Option<InternalRange> {
    INTERNAL_RANGES
        .iter()
        .filter(|(net, _)| net_contains(net, ip))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|&(_, range)| range)
}

/// Literal containment: an IPv4 network never contains an IPv6 address, so an
/// IPv4-mapped address is judged as IPv6.
fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpNet::V4(net), IpAddr::V4(ip)) => net.contains(&ip),
        (IpNet::V6(net), IpAddr::V6(ip)) => net.contains(&ip),
        _ => false,
    }
}

/// The guard the proxy runs on every address before dialling it.
#[derive(Debug, Clone, Default)]
pub struct AddressGuard {
    /// The policy's `allow_internal` CIDRs: internal addresses an operator
    /// explicitly wants reachable (e.g. a package mirror on the LAN).
    allow_internal: Vec<IpNet>,
}

impl AddressGuard {
    /// A guard exempting `allow_internal` (the policy's CIDRs); an empty list
    /// exempts nothing.
    pub fn new(allow_internal: Vec<ipnet::IpNet>) -> AddressGuard {
        AddressGuard { allow_internal }
    }

    /// Ok if public, or internal but inside one of the allow_internal CIDRs
    /// (matched literally, on the address as given) and, for an IPv6 form
    /// that embeds IPv4 addresses, each of those passes the IPv4 rules too.
    ///
    /// "Literally" means no unwrapping: `127.0.0.0/8` does not exempt
    /// `::ffff:127.0.0.1`; an operator who really wants that must list the
    /// IPv6 form as well.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let Some(range) = classify(ip) else {
            return Ok(());
        };
        // Linux dials the unspecified address as this host's loopback: no
        // exemption (`allow_internal: [0.0.0.0/8]`) can mean that.
        if ip.is_unspecified() {
            return Err(Refusal::Unspecified);
        }
        if !self.is_exempt(ip) {
            return Err(Refusal::Internal(range));
        }
        let IpAddr::V6(ip) = ip else {
            return Ok(());
        };
        for embedded in embedded_ipv4(range, ip).into_iter().flatten() {
            match classify(IpAddr::V4(embedded)) {
                Some(range) if !self.is_exempt(IpAddr::V4(embedded)) => {
                    return Err(Refusal::Embedded { embedded, range });
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.allow_internal.iter().any(|net| net_contains(net, ip))
    }
}

/// Why the guard refused an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Refusal {
    /// 0.0.0.0 or ::, which reach this host's loopback, exempt or not.
    #[error("the unspecified address, which reaches this host's own loopback; never dialled")]
    Unspecified,
    /// The address is in this range and `allow_internal` does not cover it.
    #[error("{0}; allow it with allow_internal if intended")]
    Internal(InternalRange),
    /// `allow_internal` covers the IPv6 address, but not the internal IPv4
    /// address it embeds and reaches.
    #[error(
        "exempt by allow_internal but reaches the embedded IPv4 address {embedded}, \
         which is {range}; add {embedded} to allow_internal as well if intended"
    )]
    Embedded {
        embedded: Ipv4Addr,
        range: InternalRange,
    },
}

/// The IPv4 addresses an IPv6 address of `range` embeds, and so reaches
/// through a translator or tunnel: none for ranges that embed nothing, two
/// for Teredo (server and client).
fn embedded_ipv4(range: InternalRange, ip: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let o = ip.octets();
    let last_32_bits = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match range {
        // RFC 4291 §2.5.5 and, for 64:ff9b::/96, RFC 6052 §2.2's /96 row.
        Ipv4Mapped | Ipv4Compatible => [Some(last_32_bits), None],
        Nat64 if ip.segments()[..3] == NAT64_LOCAL_USE_PREFIX => {
            // RFC 6052 §2.2, /48 row: bits 48..63 and 72..87, around the
            // u-octet (bits 64..71). RFC 8215 lets an operator pick a longer
            // prefix inside 64:ff9b:1::/48; the /48 layout is the one its
            // length names.
            [Some(Ipv4Addr::new(o[6], o[7], o[9], o[10])), None]
        }
        Nat64 => [Some(last_32_bits), None],
        // RFC 3056 §2: 2002:V4ADDR::/48, bits 16..47.
        SixToFour => [Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])), None],
        // RFC 4380 §4: the server in bits 32..63, the client's address
        // inverted (every bit flipped) in bits 96..127.
        Teredo => [
            Some(Ipv4Addr::new(o[4], o[5], o[6], o[7])),
            Some(Ipv4Addr::from(!u32::from(last_32_bits))),
        ],
        _ => [None, None],
    }
}

/// The first three 16-bit groups of 64:ff9b:1::/48 (RFC 8215).
const NAT64_LOCAL_USE_PREFIX: [u16; 3] = [0x0064, 0xff9b, 0x0001];

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// Assert every (address, expected class) pair, reporting all failures.
    fn check_classes(cases: &[(&str, Option<InternalRange>)]) {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|&(addr, want)| {
                let got = classify(ip(addr));
                (got != want).then(|| format!("{addr}: want {want:?}, got {got:?}"))
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    const PUBLIC: Option<InternalRange> = None;

    #[test]
    fn ipv4_range_boundaries() {
        check_classes(&[
            ("0.0.0.0", Some(Unspecified)),
            ("0.0.0.1", Some(ThisNetwork)),
            ("0.255.255.255", Some(ThisNetwork)),
            ("1.0.0.0", PUBLIC),
            ("9.255.255.255", PUBLIC),
            ("10.0.0.0", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("11.0.0.0", PUBLIC),
            ("100.63.255.255", PUBLIC),
            ("100.64.0.0", Some(Cgnat)),
            ("100.127.255.255", Some(Cgnat)),
            ("100.128.0.0", PUBLIC),
            ("126.255.255.255", PUBLIC),
            ("127.0.0.0", Some(Loopback)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.255", Some(Loopback)),
            ("128.0.0.0", PUBLIC),
            ("169.253.255.255", PUBLIC),
            ("169.254.0.0", Some(LinkLocal)),
            ("169.254.169.254", Some(LinkLocal)),
            ("169.254.255.255", Some(LinkLocal)),
            ("169.255.0.0", PUBLIC),
            ("172.15.255.255", PUBLIC),
            ("172.16.0.0", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.0", PUBLIC),
            ("191.255.255.255", PUBLIC),
            ("192.0.0.0", Some(IetfProtocol)),
            ("192.0.0.255", Some(IetfProtocol)),
            ("192.0.1.0", PUBLIC),
            ("192.0.1.255", PUBLIC),
            ("192.0.2.0", Some(Documentation)),
            ("192.0.2.255", Some(Documentation)),
            ("192.0.3.0", PUBLIC),
            ("192.88.98.255", PUBLIC),
            ("192.88.99.0", Some(SixToFourRelay)),
            ("192.88.99.255", Some(SixToFourRelay)),
            ("192.88.100.0", PUBLIC),
            ("192.167.255.255", PUBLIC),
            ("192.168.0.0", Some(Private)),
            ("192.168.255.255", Some(Private)),
            ("192.169.0.0", PUBLIC),
            ("198.17.255.255", PUBLIC),
            ("198.18.0.0", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("198.20.0.0", PUBLIC),
            ("198.51.99.255", PUBLIC),
            ("198.51.100.0", Some(Documentation)),
            ("198.51.100.255", Some(Documentation)),
            ("198.51.101.0", PUBLIC),
            ("203.0.112.255", PUBLIC),
            ("203.0.113.0", Some(Documentation)),
            ("203.0.113.255", Some(Documentation)),
            ("203.0.114.0", PUBLIC),
            ("223.255.255.255", PUBLIC),
            ("224.0.0.0", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("240.0.0.0", Some(Reserved)),
            ("255.255.255.254", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
        ]);
    }

    #[test]
    fn ipv4_public_addresses() {
        check_classes(&[
            ("8.8.8.8", PUBLIC),
            ("1.1.1.1", PUBLIC),
            ("9.9.9.9", PUBLIC),
            ("151.101.1.69", PUBLIC),
            ("140.82.112.3", PUBLIC),
            // Globally reachable anycast blocks near special ones (AS112, AMT).
            ("192.31.196.1", PUBLIC),
            ("192.52.193.1", PUBLIC),
            ("192.175.48.1", PUBLIC),
        ]);
    }

    #[test]
    fn ipv6_range_boundaries() {
        check_classes(&[
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("::2", Some(Ipv4Compatible)),
            ("::127.0.0.1", Some(Ipv4Compatible)),
            ("::8.8.8.8", Some(Ipv4Compatible)),
            ("::255.255.255.255", Some(Ipv4Compatible)),
            ("::1:0:0", Some(Reserved)),
            ("::fffe:ffff:ffff", Some(Reserved)),
            ("::ffff:0:0", Some(Ipv4Mapped)),
            ("::ffff:8.8.8.8", Some(Ipv4Mapped)),
            ("::ffff:1.1.1.1", Some(Ipv4Mapped)),
            ("::ffff:127.0.0.1", Some(Ipv4Mapped)),
            ("::ffff:169.254.169.254", Some(Ipv4Mapped)),
            ("::ffff:255.255.255.255", Some(Ipv4Mapped)),
            ("::1:0:0:0", Some(Reserved)),
            ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
            ("64:ff9b::", Some(Nat64)),
            ("64:ff9b::8.8.8.8", Some(Nat64)),
            ("64:ff9b::127.0.0.1", Some(Nat64)),
            ("64:ff9b::ffff:ffff", Some(Nat64)),
            ("64:ff9b::1:0:0", Some(Reserved)),
            ("64:ff9b:0:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
            ("64:ff9b:1::", Some(Nat64)),
            ("64:ff9b:1::808:808", Some(Nat64)),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", Some(Nat64)),
            ("64:ff9b:2::", Some(Reserved)),
            ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
            ("100::", Some(Discard)),
            ("100::ffff:ffff:ffff:ffff", Some(Discard)),
            ("100:0:0:1::", Some(Reserved)),
            ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
            ("2000::", PUBLIC),
            ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PUBLIC),
            ("2001::", Some(Teredo)),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some(Teredo)),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Some(Teredo)),
            ("2001:1::", Some(IetfProtocol)),
            ("2001:1::1", Some(IetfProtocol)),
            ("2001:1:ffff:ffff:ffff:ffff:ffff:ffff", Some(IetfProtocol)),
            ("2001:2::", Some(Benchmarking)),
            ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Some(Benchmarking)),
            ("2001:2:1::", Some(IetfProtocol)),
            ("2001:f:ffff:ffff:ffff:ffff:ffff:ffff", Some(IetfProtocol)),
            ("2001:10::", Some(Orchid)),
            ("2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", Some(Orchid)),
            ("2001:20::", Some(Orchid)),
            ("2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", Some(Orchid)),
            ("2001:30::", Some(IetfProtocol)),
            ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", Some(IetfProtocol)),
            ("2001:200::", PUBLIC),
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", PUBLIC),
            ("2001:db8::", Some(Documentation)),
            (
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                Some(Documentation),
            ),
            ("2001:db9::", PUBLIC),
            ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PUBLIC),
            ("2002::", Some(SixToFour)),
            ("2002:7f00:1::", Some(SixToFour)),
            ("2002:808:808::1", Some(SixToFour)),
            ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(SixToFour)),
            ("2003::", PUBLIC),
            ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PUBLIC),
            ("3fff::", Some(Documentation)),
            (
                "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
                Some(Documentation),
            ),
            ("3fff:1000::", PUBLIC),
            ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PUBLIC),
            ("4000::", Some(Reserved)),
            ("5f00::1", Some(Reserved)),
            ("8000::", Some(Reserved)),
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
            ("fc00::", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(UniqueLocal)),
            ("fe00::", Some(Reserved)),
            ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
            ("fe80::", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(LinkLocal)),
            ("fec0::", Some(SiteLocal)),
            ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(SiteLocal)),
            ("ff00::", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Multicast)),
        ]);
    }

    #[test]
    fn ipv6_public_addresses() {
        check_classes(&[
            ("2606:4700:4700::1111", PUBLIC),
            ("2001:4860:4860::8888", PUBLIC),
            ("2620:fe::fe", PUBLIC),
            ("2a00:1450:4001:80b::200e", PUBLIC),
        ]);
    }

    #[test]
    fn table_is_well_formed() {
        for (net, range) in INTERNAL_RANGES {
            assert_eq!(net.addr(), net.network(), "{net} has host bits set");
            assert!(
                classify(net.network()).is_some(),
                "{net} ({range:?}) first address"
            );
            assert!(
                classify(net.broadcast()).is_some(),
                "{net} ({range:?}) last address"
            );
            assert!(!range.describe().is_empty());
            assert!(!range.describe().contains('\n'));
        }
    }

    #[test]
    fn describe_names_metadata_address() {
        assert!(LinkLocal.describe().contains("169.254.169.254"));
        assert_eq!(LinkLocal.to_string(), LinkLocal.describe());
    }

    #[test]
    fn default_guard_refuses_every_internal_address() {
        let guard = AddressGuard::default();
        assert_eq!(
            guard.check(ip("127.0.0.1")),
            Err(Refusal::Internal(Loopback))
        );
        assert_eq!(
            guard.check(ip("169.254.169.254")),
            Err(Refusal::Internal(LinkLocal))
        );
        assert_eq!(
            guard.check(ip("::ffff:8.8.8.8")),
            Err(Refusal::Internal(Ipv4Mapped))
        );
        assert_eq!(
            guard.check(ip("64:ff9b::8.8.8.8")),
            Err(Refusal::Internal(Nat64))
        );
        assert_eq!(guard.check(ip("8.8.8.8")), Ok(()));
        assert_eq!(guard.check(ip("2606:4700:4700::1111")), Ok(()));
    }

    /// Red team: `allow_internal: [0.0.0.0/8]` let 0.0.0.0 through, which
    /// Linux dials as loopback.
    #[test]
    fn the_unspecified_address_is_never_exempt() {
        let guard = AddressGuard::new(vec![net("0.0.0.0/8"), net("::/128")]);
        assert_eq!(guard.check(ip("0.0.0.0")), Err(Refusal::Unspecified));
        assert_eq!(guard.check(ip("::")), Err(Refusal::Unspecified));
        assert_eq!(guard.check(ip("0.0.0.1")), Ok(()));
        let default = AddressGuard::default();
        assert_eq!(default.check(ip("0.0.0.0")), Err(Refusal::Unspecified));
    }

    #[test]
    fn allow_internal_exact_host() {
        let guard = AddressGuard::new(vec![net("127.0.0.1/32")]);
        assert_eq!(guard.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(
            guard.check(ip("127.0.0.2")),
            Err(Refusal::Internal(Loopback))
        );
        assert_eq!(
            guard.check(ip("::ffff:127.0.0.1")),
            Err(Refusal::Internal(Ipv4Mapped))
        );
        assert_eq!(guard.check(ip("::1")), Err(Refusal::Internal(Loopback)));
        assert_eq!(guard.check(ip("8.8.8.8")), Ok(()));
    }

    #[test]
    fn allow_internal_slash_8() {
        let guard = AddressGuard::new(vec![net("10.0.0.0/8")]);
        assert_eq!(guard.check(ip("10.0.0.0")), Ok(()));
        assert_eq!(guard.check(ip("10.1.2.3")), Ok(()));
        assert_eq!(guard.check(ip("10.255.255.255")), Ok(()));
        assert_eq!(
            guard.check(ip("172.16.0.1")),
            Err(Refusal::Internal(Private))
        );
        assert_eq!(
            guard.check(ip("192.168.1.1")),
            Err(Refusal::Internal(Private))
        );
        assert_eq!(
            guard.check(ip("::ffff:10.1.2.3")),
            Err(Refusal::Internal(Ipv4Mapped))
        );
    }

    #[test]
    fn allow_internal_ipv6_host() {
        let guard = AddressGuard::new(vec![net("::1/128"), net("fd00::/8")]);
        assert_eq!(guard.check(ip("::1")), Ok(()));
        assert_eq!(guard.check(ip("fd12::1")), Ok(()));
        assert_eq!(
            guard.check(ip("fc00::1")),
            Err(Refusal::Internal(UniqueLocal))
        );
        assert_eq!(
            guard.check(ip("127.0.0.1")),
            Err(Refusal::Internal(Loopback))
        );
        assert_eq!(
            guard.check(ip("::2")),
            Err(Refusal::Internal(Ipv4Compatible))
        );
    }

    #[test]
    fn allow_internal_not_covering() {
        let guard = AddressGuard::new(vec![net("192.168.1.0/24")]);
        assert_eq!(guard.check(ip("192.168.1.77")), Ok(()));
        assert_eq!(
            guard.check(ip("192.168.2.1")),
            Err(Refusal::Internal(Private))
        );
        assert_eq!(
            guard.check(ip("192.168.0.255")),
            Err(Refusal::Internal(Private))
        );
    }

    /// (allow_internal, address, whether the guard lets it through) for the
    /// IPv6 forms that embed an IPv4 address: exempting the IPv6 range is not
    /// enough, the embedded IPv4 address must pass the IPv4 rules as well.
    /// Decodings: mapped, compatible and NAT64 64:ff9b::/96 carry the IPv4
    /// address in the last 32 bits (RFC 4291 §2.5.5, RFC 6052 §2.2);
    /// 64:ff9b:1::/48 in bits 48..63 and 72..87 around the u-octet (RFC 6052
    /// §2.2, /48 row); 6to4 in bits 16..47 (RFC 3056 §2); Teredo has the
    /// server in bits 32..63 and the client, inverted, in the last 32 bits
    /// (RFC 4380 §4).
    const EMBEDDED_CASES: &[(&[&str], &str, bool)] = &[
        // IPv4-mapped.
        (&["::ffff:0:0/96"], "::ffff:169.254.169.254", false),
        (&["::ffff:0:0/96"], "::ffff:127.0.0.1", false),
        (&["::ffff:0:0/96"], "::ffff:8.8.8.8", true),
        (
            &["::ffff:0:0/96", "169.254.169.254/32"],
            "::ffff:169.254.169.254",
            true,
        ),
        (
            &["::ffff:169.254.169.254/128"],
            "::ffff:169.254.169.254",
            false,
        ),
        (&["::/0"], "::ffff:10.0.0.1", false),
        (&["::/0", "0.0.0.0/0"], "::ffff:10.0.0.1", true),
        // IPv4-compatible (deprecated).
        (&["::/96"], "::127.0.0.1", false),
        (&["::/96"], "::8.8.8.8", true),
        // NAT64, well-known prefix.
        (&["64:ff9b::/96"], "64:ff9b::127.0.0.1", false),
        (&["64:ff9b::/96"], "64:ff9b::169.254.169.254", false),
        (&["64:ff9b::/96"], "64:ff9b::8.8.8.8", true),
        (&["64:ff9b::/96", "10.0.0.0/8"], "64:ff9b::10.1.2.3", true),
        (
            &["64:ff9b::/96", "10.0.0.0/8"],
            "64:ff9b::192.168.0.1",
            false,
        ),
        (&["10.0.0.0/8"], "64:ff9b::10.1.2.3", false),
        // NAT64, local-use prefix: 64:ff9b:1:AABB:CC:DD00:: is AA.BB.CC.DD.
        (&["64:ff9b:1::/48"], "64:ff9b:1:7f00:0:100::", false),
        (&["64:ff9b:1::/48"], "64:ff9b:1:a9fe:a9:fe00::", false),
        (&["64:ff9b:1::/48"], "64:ff9b:1:808:8:800::", true),
        // The /96 spelling of 8.8.8.8 decodes, per the /48 layout, to 0.0.0.0.
        (&["64:ff9b:1::/48"], "64:ff9b:1::808:808", false),
        // 6to4.
        (&["2002::/16"], "2002:7f00:1::", false),
        (&["2002::/16"], "2002:a9fe:a9fe::1", false),
        (&["2002::/16"], "2002:808:808::1", true),
        (&["2002::/16", "127.0.0.0/8"], "2002:7f00:1::", true),
        // Teredo: server 8.8.8.8, client 8.8.4.4 (f7f7:fbfb inverted).
        (&["2001::/32"], "2001:0:808:808::f7f7:fbfb", true),
        // Client 127.0.0.1 (80ff:fffe inverted).
        (&["2001::/32"], "2001:0:808:808::80ff:fffe", false),
        // Server 10.0.0.1.
        (&["2001::/32"], "2001:0:a00:1::f7f7:fbfb", false),
        (
            &["2001::/32", "10.0.0.0/8"],
            "2001:0:a00:1::f7f7:fbfb",
            true,
        ),
        // RFC 4380's example: server 65.54.227.120, client 192.0.2.45, a
        // documentation address.
        (
            &["2001::/32"],
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            false,
        ),
        (
            &["2001::/32", "192.0.2.0/24"],
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            true,
        ),
    ];

    #[test]
    fn embedded_ipv4_must_pass_the_ipv4_rules_too() {
        let failures: Vec<String> = EMBEDDED_CASES
            .iter()
            .filter_map(|&(allow, addr, want)| {
                let guard = AddressGuard::new(allow.iter().map(|n| net(n)).collect());
                let got = guard.check(ip(addr));
                (got.is_ok() != want).then(|| {
                    format!(
                        "{addr} with allow_internal {allow:?}: want allowed={want}, got {got:?}"
                    )
                })
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn refusal_names_the_embedded_address_and_the_fix() {
        let guard = AddressGuard::new(vec![net("64:ff9b::/96"), net("2001::/32")]);
        let refusal = guard.check(ip("64:ff9b::127.0.0.1")).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Embedded {
                embedded: "127.0.0.1".parse().unwrap(),
                range: Loopback
            }
        );
        let text = refusal.to_string();
        assert!(text.contains("embedded IPv4 address 127.0.0.1"), "{text}");
        assert!(text.contains("add 127.0.0.1 to allow_internal"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        // Teredo: the client (inverted last 32 bits) is decoded, not only the
        // server.
        assert_eq!(
            guard.check(ip("2001:0:808:808::5601:56fe")),
            Err(Refusal::Embedded {
                embedded: "169.254.169.1".parse().unwrap(),
                range: LinkLocal
            })
        );
        assert_eq!(
            Refusal::Internal(Nat64).to_string(),
            format!(
                "{}; allow it with allow_internal if intended",
                Nat64.describe()
            )
        );
    }

    #[test]
    fn allow_internal_with_host_bits_and_v4_everything() {
        // A CIDR written with host bits still covers its whole network.
        let guard = AddressGuard::new(vec![net("10.1.2.3/16")]);
        assert_eq!(guard.check(ip("10.1.255.255")), Ok(()));
        assert_eq!(guard.check(ip("10.2.0.0")), Err(Refusal::Internal(Private)));
        // Even 0.0.0.0/0 never exempts an IPv6 form of an IPv4 address.
        let guard = AddressGuard::new(vec![net("0.0.0.0/0")]);
        assert_eq!(guard.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(
            guard.check(ip("::ffff:127.0.0.1")),
            Err(Refusal::Internal(Ipv4Mapped))
        );
        assert_eq!(
            guard.check(ip("::127.0.0.1")),
            Err(Refusal::Internal(Ipv4Compatible))
        );
        assert_eq!(
            guard.check(ip("2002:7f00:1::")),
            Err(Refusal::Internal(SixToFour))
        );
    }
}
