//! Where the tools may send traffic: loopback, and the two benchmarking ranges that
//! `bench/offload.sh` puts on a veth pair between network namespaces of its own, with no
//! route out of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether the load tool and the floor may send to (or listen on) `ip`: a loopback address,
/// or one from the benchmarking ranges 198.18.0.0/15 (RFC 2544 §C.2.2) and 2001:2::/48
/// (RFC 5180 §8), which are never routed on the Internet.
pub fn bench_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || in_198_18(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_loopback() || in_198_18(v4),
            None => v6.is_loopback() || in_2001_2(v6),
        },
    }
}

/// The text for error messages naming what [`bench_address`] accepts.
pub const BENCH_ADDRESSES: &str =
    "loopback (127.0.0.0/8, ::1) or the benchmarking ranges 198.18.0.0/15 and 2001:2::/48";

fn in_198_18(v4: Ipv4Addr) -> bool {
    let [a, b, _, _] = v4.octets();
    a == 198 && (b & 0xfe) == 18
}

fn in_2001_2(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0
}

/// The loopback address of `ip`'s family.
pub fn loopback_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> bool {
        bench_address(s.parse().expect("address"))
    }

    #[test]
    fn loopback_and_the_benchmarking_ranges_are_accepted() {
        for s in [
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "198.18.0.1",
            "198.19.255.255",
            "2001:2::1",
            "2001:2:0:ffff::2",
            "::ffff:198.18.0.3",
            "::ffff:127.0.0.1",
        ] {
            assert!(ok(s), "{s} should be accepted");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for s in [
            "198.17.255.255",
            "198.20.0.0",
            "10.0.0.1",
            "192.168.1.1",
            "8.8.8.8",
            "0.0.0.0",
            "::",
            "2001:2:1::1",
            "2001:3::1",
            "2001:db8::1",
            "fe80::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!ok(s), "{s} should be refused");
        }
    }
}
