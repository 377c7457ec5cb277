//! Which peer addresses an allocation may relay to.
//!
//! A TURN relay that forwards to arbitrary addresses is an open proxy into the operator's own
//! networks (loopback, RFC 1918, cloud metadata at 169.254.169.254, ...). The policy therefore
//! denies every special-purpose range by default (see [`default_denied`]) and lets the operator
//! override that with explicit `allow` / `deny` prefixes.
//!
//! Decision procedure for [`PeerPolicy::is_allowed`]:
//!
//! 1. The address is expanded into its *canonical forms* ([`canonical_forms`]): IPv6 addresses
//!    that merely carry an IPv4 address (IPv4-mapped, IPv4-compatible, SIIT, NAT64 well-known
//!    prefix) are replaced by that IPv4 address; IPv6 addresses that tunnel to an IPv4 address
//!    (6to4, Teredo) are checked both as themselves and as every IPv4 address they embed.
//! 2. Every form must be allowed.
//! 3. For one form, the longest operator prefix (allow or deny) that contains it wins; on equal
//!    length deny wins. With no operator match, the built-in deny list applies; with no match
//!    there either, the form is allowed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An IP prefix such as `10.0.0.0/8` or `2001:db8::/32`. A bare address means a host prefix.
///
/// The stored address is always the network address: host bits given to [`Cidr::new`] or in a
/// parsed string (`10.1.2.3/8`) are masked off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

/// Network mask of `prefix` leading one bits in a 32-bit word (`prefix` <= 32).
fn mask_v4(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

/// Network mask of `prefix` leading one bits in a 128-bit word (`prefix` <= 128).
fn mask_v6(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl Cidr {
    /// A prefix of `prefix` bits at `addr`. Fails if `prefix` exceeds the address width (32 or
    /// 128). Host bits of `addr` are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(CidrError(format!(
                "prefix length /{prefix} is longer than the {max} bits of {addr}"
            )));
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix))),
        };
        Ok(Cidr { addr, prefix })
    }

    /// A host prefix (/32 or /128) for one address.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix: max_prefix(addr),
        }
    }

    /// Whether `ip` lies inside this prefix. Always false when the families differ (no
    /// IPv4-mapped translation happens here; [`PeerPolicy`] canonicalises first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let m = mask_v4(self.prefix);
                u32::from(ip) & m == u32::from(net) & m
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let m = mask_v6(self.prefix);
                u128::from(ip) & m == u128::from(net) & m
            }
            _ => false,
        }
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// An IPv6 prefix inside `::ffff:0:0/96` (at least /96) rewritten as the IPv4 prefix it
    /// denotes, since policy decisions never see IPv4-mapped addresses. Other prefixes unchanged.
    fn unmapped(self) -> Cidr {
        if let IpAddr::V6(a) = self.addr
            && self.prefix >= 96
            && let Some(v4) = a.to_ipv4_mapped()
        {
            return Cidr {
                addr: IpAddr::V4(v4),
                prefix: self.prefix - 96,
            };
        }
        self
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `a.b.c.d/n`, `ipv6/n`, or a bare address (host prefix). Surrounding whitespace is
    /// ignored; the prefix length must be plain decimal digits.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let text = s.trim();
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError(format!("invalid address in prefix {s:?}")))?;
        let prefix = match prefix_text {
            None => max_prefix(addr),
            Some(p) => {
                // `u8::from_str` would also accept a leading '+'; insist on digits only.
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError(format!("invalid prefix length in {s:?}")));
                }
                p.parse::<u8>()
                    .map_err(|_| CidrError(format!("prefix length out of range in {s:?}")))?
            }
        };
        Cidr::new(addr, prefix)
    }
}

/// Parses a peer range as coturn writes it (`allowed-peer-ip`, `denied-peer-ip`): one
/// address, a prefix (`a.b.c.d/n`), or an inclusive range `lo-hi` of one family, which
/// becomes the fewest prefixes that cover it exactly (at most 2 per address bit).
pub fn parse_range(s: &str) -> Result<Vec<Cidr>, CidrError> {
    let Some((lo, hi)) = s.trim().split_once('-') else {
        return Ok(vec![s.parse()?]);
    };
    let bad = || CidrError(format!("invalid address range {s:?}"));
    let lo: IpAddr = lo.trim().parse().map_err(|_| bad())?;
    let hi: IpAddr = hi.trim().parse().map_err(|_| bad())?;
    let (lo, hi, width) = match (lo, hi) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            (u128::from(u32::from(a)), u128::from(u32::from(b)), 32u32)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return Err(bad()),
    };
    if lo > hi {
        return Err(bad());
    }
    let to_ip = |v: u128| -> IpAddr {
        if width == 32 {
            IpAddr::V4(Ipv4Addr::from(v as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(v))
        }
    };
    let mut out = Vec::new();
    let mut at = lo;
    loop {
        // The largest aligned block starting at `at` that stays within `hi`.
        let fits = |bits: u32| {
            if bits >= 128 {
                at == 0 && hi == u128::MAX
            } else {
                at + ((1u128 << bits) - 1) <= hi
            }
        };
        let mut bits = at.trailing_zeros().min(width);
        while bits > 0 && !fits(bits) {
            bits -= 1;
        }
        out.push(Cidr::new(to_ip(at), (width - bits) as u8)?);
        if bits >= 128 {
            break;
        }
        match at.checked_add(1u128 << bits) {
            Some(next) if next <= hi => at = next,
            _ => break,
        }
    }
    Ok(out)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
    Cidr {
        addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        prefix,
    }
}

const fn v6(s: [u16; 8], prefix: u8) -> Cidr {
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::new(
            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
        )),
        prefix,
    }
}

/// Special-purpose ranges a relay must not reach unless the operator allows them explicitly.
/// Based on the IANA IPv4/IPv6 Special-Purpose Address Registries (RFC 6890).
static DEFAULT_DENY: [Cidr; 31] = [
    // ---- IPv4 ----
    // "This network" (RFC 791, RFC 1122 §3.2.1.3, RFC 6890).
    v4(0, 0, 0, 0, 8),
    // Private-use (RFC 1918).
    v4(10, 0, 0, 0, 8),
    // Shared address space / carrier-grade NAT (RFC 6598).
    v4(100, 64, 0, 0, 10),
    // Loopback (RFC 1122 §3.2.1.3).
    v4(127, 0, 0, 0, 8),
    // Link-local, including cloud metadata services at 169.254.169.254 (RFC 3927).
    v4(169, 254, 0, 0, 16),
    // Private-use (RFC 1918).
    v4(172, 16, 0, 0, 12),
    // IETF protocol assignments (RFC 6890 §2.1).
    v4(192, 0, 0, 0, 24),
    // Documentation, TEST-NET-1 (RFC 5737).
    v4(192, 0, 2, 0, 24),
    // 6to4 relay anycast (RFC 3068, deprecated by RFC 7526).
    v4(192, 88, 99, 0, 24),
    // Private-use (RFC 1918).
    v4(192, 168, 0, 0, 16),
    // Benchmarking (RFC 2544).
    v4(198, 18, 0, 0, 15),
    // Documentation, TEST-NET-2 (RFC 5737).
    v4(198, 51, 100, 0, 24),
    // Documentation, TEST-NET-3 (RFC 5737).
    v4(203, 0, 113, 0, 24),
    // Multicast (RFC 5771).
    v4(224, 0, 0, 0, 4),
    // Reserved for future use (RFC 1112 §4), including limited broadcast 255.255.255.255
    // (RFC 919, RFC 8190).
    v4(240, 0, 0, 0, 4),
    // ---- IPv6 ----
    // Unspecified address (RFC 4291 §2.5.2).
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128),
    // Loopback (RFC 4291 §2.5.3).
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
    // IPv4-mapped (RFC 4291 §2.5.5.2). Canonicalisation turns these into IPv4 first; listed in
    // case an address ever reaches the list untranslated.
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),
    // IPv4/IPv6 translation, local-use NAT64 prefix (RFC 8215).
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
    // Discard-only (RFC 6666).
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
    // 2001::/23 (IETF protocol assignments, RFC 2928) is listed piecewise so that Teredo,
    // 2001::/32 (RFC 4380), is judged by the IPv4 addresses it embeds instead of wholesale.
    // Anycast service addresses: PCP 2001:1::1 (RFC 7723), TURN 2001:1::2 (RFC 8155),
    // DNS-SD SRP 2001:1::3 (RFC 9665); the rest of 2001:1::/32 is unassigned.
    v6([0x2001, 1, 0, 0, 0, 0, 0, 0], 32),
    // Benchmarking (RFC 5180).
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48),
    // ORCHID, deprecated (RFC 4843).
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28),
    // ORCHIDv2 (RFC 7343).
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28),
    // Documentation (RFC 3849).
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
    // Unique local addresses (RFC 4193).
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
    // Link-local unicast (RFC 4291 §2.5.6).
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    // Site-local unicast, deprecated (RFC 3879).
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
    // Multicast (RFC 4291 §2.7).
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
    // Documentation (RFC 9637).
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
    // Segment Routing (SRv6) SIDs (RFC 9602).
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),
];

/// The built-in deny list consulted when no operator rule matches a form of the address.
pub fn default_denied() -> &'static [Cidr] {
    &DEFAULT_DENY
}

/// The forms under which an address is judged: at most three (Teredo: itself, server, client).
///
/// - IPv4: itself.
/// - IPv4-mapped `::ffff:a.b.c.d`, SIIT `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d` (but not
///   `::` or `::1`) and NAT64 well-known prefix `64:ff9b::a.b.c.d`: only the IPv4 address.
/// - 6to4 `2002:AABB:CCDD::/48`: itself and `AA.BB.CC.DD`.
/// - Teredo `2001:0::/32`: itself, the server IPv4 (bits 32..63) and the client IPv4 (the last
///   32 bits inverted).
/// - Anything else: itself.
pub fn canonical_forms(ip: IpAddr) -> impl Iterator<Item = IpAddr> {
    let forms: [Option<IpAddr>; 3] = match ip {
        IpAddr::V4(_) => [Some(ip), None, None],
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let s = a.segments();
            let low32 = Ipv4Addr::from(bits as u32);
            let high96 = bits >> 32;
            if high96 == 0xffff
                || high96 == 0xffff_0000
                || high96 == 0x0064_ff9b_0000_0000_0000_0000
                || (high96 == 0 && bits > 1)
            {
                // ::ffff:0:0/96, ::ffff:0:0:0/96, 64:ff9b::/96, ::/96 minus :: and ::1.
                [Some(IpAddr::V4(low32)), None, None]
            } else if s[0] == 0x2002 {
                let embedded = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
                [Some(ip), Some(IpAddr::V4(embedded)), None]
            } else if s[0] == 0x2001 && s[1] == 0 {
                let server = Ipv4Addr::from(((bits >> 64) & 0xffff_ffff) as u32);
                let client = Ipv4Addr::from(!(bits as u32));
                [Some(ip), Some(IpAddr::V4(server)), Some(IpAddr::V4(client))]
            } else {
                [Some(ip), None, None]
            }
        }
    };
    forms.into_iter().flatten()
}

/// The relay's peer policy: operator rules over a built-in deny list.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    /// The server's own listen addresses (IP and port): never a peer, whatever the rules,
    /// so a client cannot loop the relay back into the server (RFC 8656 §21.1.4 loops).
    own: Vec<SocketAddr>,
}

impl PeerPolicy {
    /// Operator rules. IPv6 rules written in IPv4-mapped form (`::ffff:10.0.0.0/104`) are
    /// rewritten as the IPv4 prefix they denote, since addresses are canonicalised before they
    /// are matched.
    pub fn new(allow: Vec<Cidr>, deny: Vec<Cidr>) -> PeerPolicy {
        PeerPolicy {
            allow: allow.into_iter().map(Cidr::unmapped).collect(),
            deny: deny.into_iter().map(Cidr::unmapped).collect(),
            own: Vec::new(),
        }
    }

    /// Adds the server's own listen addresses, refused as peers even where an operator rule
    /// allows their IP. Unspecified addresses (0.0.0.0, ::) are skipped: the driver lists the
    /// specific addresses they stand for.
    pub fn with_own_addresses(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        for a in addrs {
            let a = SocketAddr::new(a.ip().to_canonical(), a.port());
            if !a.ip().is_unspecified() && !self.own.contains(&a) {
                self.own.push(a);
            }
        }
        self
    }

    /// More operator rules on top of these (a fleet's shared store adds its peer ranges).
    pub fn with_rules(mut self, allow: &[Cidr], deny: &[Cidr]) -> PeerPolicy {
        self.allow.extend(allow.iter().copied().map(Cidr::unmapped));
        self.deny.extend(deny.iter().copied().map(Cidr::unmapped));
        self
    }

    /// The server's own addresses this policy refuses (see [`PeerPolicy::with_own_addresses`]).
    pub fn own_addresses(&self) -> &[SocketAddr] {
        &self.own
    }

    /// Whether `peer`, under any of its canonical forms, is one of the server's own listen
    /// addresses.
    pub fn is_own_address(&self, peer: SocketAddr) -> bool {
        !self.own.is_empty()
            && canonical_forms(peer.ip()).any(|form| {
                self.own
                    .iter()
                    .any(|o| o.port() == peer.port() && o.ip() == form.to_canonical())
            })
    }

    /// [`PeerPolicy::is_allowed`] for the IP, and not one of the server's own addresses.
    pub fn is_allowed_addr(&self, peer: SocketAddr) -> bool {
        self.is_allowed(peer.ip()) && !self.is_own_address(peer)
    }

    /// Whether a relay may send to, or install a permission for, peer `ip`: every canonical
    /// form of the address must be allowed.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        canonical_forms(ip).all(|form| self.form_allowed(form))
    }

    fn form_allowed(&self, ip: IpAddr) -> bool {
        let longest = |rules: &[Cidr]| {
            rules
                .iter()
                .filter(|c| c.contains(ip))
                .map(|c| c.prefix)
                .max()
        };
        match (longest(&self.allow), longest(&self.deny)) {
            (Some(a), Some(d)) => a > d,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => !DEFAULT_DENY.iter().any(|c| c.contains(ip)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coturn_ranges_become_exact_prefixes() {
        let show = |s: &str| -> Vec<String> {
            parse_range(s)
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(show("172.17.13.200"), ["172.17.13.200/32"]);
        assert_eq!(show("10.0.0.0/8"), ["10.0.0.0/8"]);
        assert_eq!(show("10.0.0.0-10.0.0.255"), ["10.0.0.0/24"]);
        assert_eq!(
            show("172.17.13.133-172.17.14.56"),
            [
                "172.17.13.133/32",
                "172.17.13.134/31",
                "172.17.13.136/29",
                "172.17.13.144/28",
                "172.17.13.160/27",
                "172.17.13.192/26",
                "172.17.14.0/27",
                "172.17.14.32/28",
                "172.17.14.48/29",
                "172.17.14.56/32",
            ]
        );
        assert_eq!(show("0.0.0.0-255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(show("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), ["::/0"]);
        assert_eq!(show("123::45"), ["123::45/128"]);
        for bad in ["1.2.3.4-::1", "1.2.3.5-1.2.3.4", "x-y", "1.2.3.4/33"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
        let cover = parse_range("172.17.13.133-172.17.14.56").unwrap();
        let inside = |ip: &str| cover.iter().any(|c| c.contains(ip.parse().unwrap()));
        assert!(inside("172.17.13.133") && inside("172.17.14.56") && inside("172.17.14.0"));
        assert!(!inside("172.17.13.132") && !inside("172.17.14.57"));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("test prefix")
    }

    fn policy(allow: &[&str], deny: &[&str]) -> PeerPolicy {
        PeerPolicy::new(
            allow.iter().map(|s| cidr(s)).collect(),
            deny.iter().map(|s| cidr(s)).collect(),
        )
    }

    fn forms(s: &str) -> Vec<IpAddr> {
        canonical_forms(ip(s)).collect()
    }

    // ---- Cidr ----

    #[test]
    fn parses_ipv4_prefix() {
        let c = cidr("10.0.0.0/8");
        assert_eq!(c.addr(), ip("10.0.0.0"));
        assert_eq!(c.prefix(), 8);
        assert_eq!(c.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn parses_ipv6_prefix() {
        let c = cidr("2001:db8::/32");
        assert_eq!(c.addr(), ip("2001:db8::"));
        assert_eq!(c.prefix(), 32);
        assert_eq!(c.to_string(), "2001:db8::/32");
    }

    #[test]
    fn bare_address_is_host_prefix() {
        assert_eq!(cidr("192.0.2.7").prefix(), 32);
        assert_eq!(cidr("192.0.2.7").addr(), ip("192.0.2.7"));
        assert_eq!(cidr("2001:db8::7").prefix(), 128);
        assert_eq!(cidr(" 8.8.8.8 ").prefix(), 32);
    }

    #[test]
    fn host_bits_are_masked() {
        let c = cidr("10.1.2.3/8");
        assert_eq!(c.addr(), ip("10.0.0.0"));
        assert_eq!(c, cidr("10.0.0.0/8"));
        assert_eq!(cidr("2001:db8:1:2::5/32").addr(), ip("2001:db8::"));
        assert_eq!(cidr("1.2.3.4/0").addr(), ip("0.0.0.0"));
        assert_eq!(cidr("ffff::1/0").addr(), ip("::"));
        assert_eq!(
            Cidr::new(ip("172.16.9.9"), 12).map(|c| c.addr()),
            Ok(ip("172.16.0.0"))
        );
    }

    #[test]
    fn rejects_bad_prefixes() {
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/256",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0.0/ 8",
            "10.0.0/8",
            "/8",
            "",
            "garbage",
            "10.0.0.0.0",
            "fe80::1%eth0",
            "300.0.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} should be rejected");
        }
        assert!(Cidr::new(ip("10.0.0.0"), 33).is_err());
        assert!(Cidr::new(ip("::"), 129).is_err());
        assert!(Cidr::new(ip("10.0.0.0"), 32).is_ok());
        assert!(Cidr::new(ip("::"), 128).is_ok());
    }

    #[test]
    fn contains_respects_prefix_and_family() {
        let c = cidr("10.0.0.0/8");
        assert!(c.contains(ip("10.255.255.255")));
        assert!(c.contains(ip("10.0.0.0")));
        assert!(!c.contains(ip("11.0.0.0")));
        assert!(!c.contains(ip("::ffff:10.0.0.1")));
        let all4 = cidr("0.0.0.0/0");
        assert!(all4.contains(ip("255.255.255.255")));
        assert!(!all4.contains(ip("::1")));
        let all6 = cidr("::/0");
        assert!(all6.contains(ip("ffff::1")));
        assert!(!all6.contains(ip("1.2.3.4")));
        let host = cidr("192.0.2.1/32");
        assert!(host.contains(ip("192.0.2.1")));
        assert!(!host.contains(ip("192.0.2.2")));
        let v6 = cidr("fe80::/10");
        assert!(v6.contains(ip("febf::1")));
        assert!(!v6.contains(ip("fec0::1")));
    }

    // ---- canonical forms ----

    #[test]
    fn ipv4_forms_are_itself() {
        assert_eq!(forms("8.8.8.8"), vec![ip("8.8.8.8")]);
    }

    #[test]
    fn embedded_ipv4_forms_replace_the_ipv6_address() {
        assert_eq!(forms("::ffff:127.0.0.1"), vec![ip("127.0.0.1")]);
        assert_eq!(forms("::ffff:0:10.0.0.1"), vec![ip("10.0.0.1")]);
        assert_eq!(forms("::127.0.0.1"), vec![ip("127.0.0.1")]);
        assert_eq!(forms("::2"), vec![ip("0.0.0.2")]);
        assert_eq!(forms("64:ff9b::808:808"), vec![ip("8.8.8.8")]);
    }

    #[test]
    fn unspecified_and_loopback_stay_ipv6() {
        assert_eq!(forms("::"), vec![ip("::")]);
        assert_eq!(forms("::1"), vec![ip("::1")]);
    }

    #[test]
    fn tunnel_forms_include_the_ipv6_address() {
        assert_eq!(
            forms("2002:c0a8:101::1"),
            vec![ip("2002:c0a8:101::1"), ip("192.168.1.1")]
        );
        assert_eq!(
            forms("2001:0:a00:1::80ff:fffe"),
            vec![
                ip("2001:0:a00:1::80ff:fffe"),
                ip("10.0.0.1"),
                ip("127.0.0.1")
            ]
        );
    }

    #[test]
    fn near_misses_are_plain_ipv6() {
        // Not ::ffff:0:0/96, not 64:ff9b::/96, not Teredo, not 6to4.
        for s in [
            "::1:ffff:1.2.3.4",
            "64:ff9b:0:1::1",
            "2001:1::1",
            "2003::1",
            "2606:4700::1111",
        ] {
            assert_eq!(forms(s), vec![ip(s)], "{s}");
        }
    }

    // ---- default policy ----

    #[test]
    fn default_policy_denies_special_addresses() {
        let p = PeerPolicy::default();
        for s in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "192.0.0.8",
            "192.88.99.1",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "198.19.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:0:10.0.0.1",
            "::127.0.0.1",
            "::2",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::808:808",
            "100::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "2002:a9fe:a9fe::1",
            // Teredo, server 8.8.8.8, client 127.0.0.1 (!0x7f000001 = 0x80fffffe).
            "2001:0:808:808::80ff:fffe",
            // Teredo, server 10.0.0.1, client 8.8.8.8 (!0x08080808 = 0xf7f7f7f7).
            "2001:0:a00:1::f7f7:f7f7",
            // PCP, TURN (RFC 8155) and DNS-SD anycast.
            "2001:1::1",
            "2001:1::2",
            "2001:1::3",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
            "2001:db8::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "ff0e::1",
            "3fff::1",
            "5f00::1",
        ] {
            assert!(!p.is_allowed(ip(s)), "{s} should be denied by default");
        }
    }

    #[test]
    fn default_policy_allows_public_addresses() {
        let p = PeerPolicy::default();
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.3.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "::ffff:0:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            // Teredo, server 8.8.8.8, client 1.1.1.1 (!0x01010101 = 0xfefefefe).
            "2001:0:808:808::fefe:fefe",
        ] {
            assert!(p.is_allowed(ip(s)), "{s} should be allowed by default");
        }
    }

    #[test]
    fn default_list_is_well_formed() {
        for c in default_denied() {
            assert_eq!(
                Cidr::new(c.addr(), c.prefix()).as_ref(),
                Ok(c),
                "{c} not canonical"
            );
        }
        // Teredo is judged by its embedded addresses, not denied wholesale.
        assert!(
            !default_denied()
                .iter()
                .any(|c| c.contains(ip("2001:0:808:808::fefe:fefe")))
        );
        assert!(
            default_denied()
                .iter()
                .any(|c| c.contains(ip("255.255.255.255")))
        );
    }

    // ---- operator rules ----

    #[test]
    fn operator_allow_overrides_default_for_all_forms() {
        let p = policy(&["127.0.0.1/32"], &[]);
        assert!(p.is_allowed(ip("127.0.0.1")));
        assert!(p.is_allowed(ip("::ffff:127.0.0.1")));
        assert!(p.is_allowed(ip("::127.0.0.1")));
        assert!(!p.is_allowed(ip("127.0.0.2")));
        assert!(!p.is_allowed(ip("::ffff:127.0.0.2")));
        assert!(!p.is_allowed(ip("::1")));
    }

    #[test]
    fn operator_deny_applies_to_all_forms() {
        let p = policy(&[], &["8.8.8.0/24"]);
        assert!(!p.is_allowed(ip("8.8.8.8")));
        assert!(!p.is_allowed(ip("::ffff:8.8.8.8")));
        assert!(!p.is_allowed(ip("64:ff9b::808:808")));
        assert!(!p.is_allowed(ip("2002:808:808::1")));
        assert!(p.is_allowed(ip("8.8.4.4")));
    }

    #[test]
    fn longest_prefix_wins() {
        let p = policy(&["10.0.0.0/8"], &["10.1.0.0/16"]);
        assert!(p.is_allowed(ip("10.2.0.1")));
        assert!(!p.is_allowed(ip("10.1.0.1")));
        let q = policy(&["10.1.2.0/24"], &["10.0.0.0/8"]);
        assert!(q.is_allowed(ip("10.1.2.3")));
        assert!(!q.is_allowed(ip("10.1.3.3")));
    }

    #[test]
    fn tie_goes_to_deny() {
        let p = policy(&["10.0.0.0/8"], &["10.0.0.0/8"]);
        assert!(!p.is_allowed(ip("10.0.0.1")));
        let q = policy(&["8.8.8.8/32"], &["8.8.8.8"]);
        assert!(!q.is_allowed(ip("8.8.8.8")));
    }

    #[test]
    fn operator_allow_all_overrides_default_list() {
        let p = policy(&["0.0.0.0/0", "::/0"], &[]);
        assert!(p.is_allowed(ip("127.0.0.1")));
        assert!(p.is_allowed(ip("fe80::1")));
        assert!(p.is_allowed(ip("2002:7f00:1::1")));
    }

    #[test]
    fn every_tunnel_form_must_be_allowed() {
        // Allowing the 6to4 prefix does not open the private IPv4 address it embeds.
        let p = policy(&["2002::/16"], &[]);
        assert!(!p.is_allowed(ip("2002:c0a8:101::1")));
        // Allowing both does.
        let q = policy(&["2002::/16", "192.168.0.0/16"], &[]);
        assert!(q.is_allowed(ip("2002:c0a8:101::1")));
        // Denying the IPv6 form alone is enough to deny.
        let r = policy(&[], &["2002:808:808::/48"]);
        assert!(!r.is_allowed(ip("2002:808:808::1")));
        assert!(r.is_allowed(ip("8.8.8.8")));
    }

    #[test]
    fn operator_rules_in_mapped_form_match_ipv4() {
        let p = policy(&["::ffff:10.0.0.0/104"], &["::ffff:8.8.8.8"]);
        assert!(p.is_allowed(ip("10.9.9.9")));
        assert!(p.is_allowed(ip("::ffff:10.9.9.9")));
        assert!(!p.is_allowed(ip("8.8.8.8")));
        assert!(!p.is_allowed(ip("::ffff:8.8.8.8")));
    }

    #[test]
    fn operator_rules_of_other_family_do_not_match() {
        let p = policy(&["::/0"], &[]);
        assert!(!p.is_allowed(ip("127.0.0.1")));
        let q = policy(&[], &["0.0.0.0/0"]);
        assert!(q.is_allowed(ip("2606:4700::1111")));
        assert!(!q.is_allowed(ip("::ffff:8.8.8.8")));
    }

    #[test]
    fn own_listen_addresses_are_refused_in_every_form() {
        let sa = |s: &str| -> SocketAddr { s.parse().expect("test socket address") };
        // Even with every address allowed by the operator.
        let p = policy(&["0.0.0.0/0", "::/0"], &[]).with_own_addresses([
            sa("192.0.2.10:3478"),
            sa("[2001:db8::10]:3478"),
            sa("0.0.0.0:5349"),
        ]);
        for s in [
            "192.0.2.10:3478",
            "[::ffff:192.0.2.10]:3478",
            "[::192.0.2.10]:3478",
            "[64:ff9b::c000:20a]:3478",
            "[2002:c000:20a::1]:3478",
            "[2001:db8::10]:3478",
        ] {
            assert!(p.is_own_address(sa(s)), "{s}");
            assert!(!p.is_allowed_addr(sa(s)), "{s}");
        }
        for s in ["192.0.2.10:3479", "192.0.2.11:3478", "198.51.100.1:5349"] {
            assert!(!p.is_own_address(sa(s)), "{s}");
            assert!(p.is_allowed_addr(sa(s)), "{s}");
        }
        assert!(!PeerPolicy::default().is_own_address(sa("192.0.2.10:3478")));
    }
}
