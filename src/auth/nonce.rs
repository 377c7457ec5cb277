//! Stateless nonces (RFC 8489 §9.2).
//!
//! Layout (37 ASCII characters, so a 401 stays small: it is the answer a spoofed request
//! earns, see `turn::rate_limit`):
//!
//! ```text
//! obMatJos2 | gAAA               | 65f1a2b3     | 16 chars base64url, no padding
//! cookie    | security features  | expiry, hex  | HMAC-SHA256(key, expiry BE32 || client IP)[..12]
//! ```
//!
//! The expiry is unix seconds (saturating at 2106); 96 bits of MAC leave a forger one chance
//! in 2^96 per try within a nonce's lifetime.
//!
//! The security-feature set has only bit 0, "Password algorithms", set (RFC 8489 §18.1), which
//! tells clients that this server supports PASSWORD-ALGORITHMS and bid-down protection. The
//! client IP is bound in so a nonce leaked from one client is useless to another; IPv4-mapped
//! IPv6 addresses are bound as their IPv4 form, so dual-stack sockets do not matter.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The RFC 8489 §9.2 nonce cookie that announces the security-feature set.
pub const NONCE_COOKIE: &str = "obMatJos2";

/// base64 of the 24-bit security-feature set 0x80 0x00 0x00 (only "Password algorithms").
const FEATURES: &str = "gAAA";
const EXPIRY_HEX_LEN: usize = 8;
/// Bytes of the HMAC-SHA256 output kept in the nonce.
const MAC_LEN: usize = 12;
/// base64url without padding of `MAC_LEN` bytes.
const MAC_B64_LEN: usize = 16;

const MAC_START: usize = NONCE_COOKIE.len() + FEATURES.len() + EXPIRY_HEX_LEN;

/// Length in bytes of every nonce this server mints.
pub const NONCE_LEN: usize = MAC_START + MAC_B64_LEN;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8; 32], expiry: u32, client: IpAddr) -> HmacSha256 {
    // HMAC accepts keys of any length; the error branch cannot be taken.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 accepts any key length"),
    };
    mac.update(&expiry.to_be_bytes());
    match client.to_canonical() {
        IpAddr::V4(a) => mac.update(&a.octets()),
        IpAddr::V6(a) => mac.update(&a.octets()),
    }
    mac
}

/// A nonce for `client` that stays valid until `unix_now + lifetime_secs` (inclusive).
pub(crate) fn mint(key: &[u8; 32], lifetime_secs: u64, unix_now: u64, client: IpAddr) -> String {
    let expiry = u32::try_from(unix_now.saturating_add(lifetime_secs)).unwrap_or(u32::MAX);
    let tag = mac(key, expiry, client).finalize().into_bytes();
    let truncated = tag.get(..MAC_LEN).unwrap_or_default();
    let mut out = String::with_capacity(NONCE_LEN);
    out.push_str(NONCE_COOKIE);
    out.push_str(FEATURES);
    out.push_str(&format!("{expiry:08x}"));
    URL_SAFE_NO_PAD.encode_string(truncated, &mut out);
    out
}

/// Whether `nonce` is one that `mint` produced with `key` for `client` and has not expired at
/// `unix_now`. Total on arbitrary input.
pub(crate) fn check(key: &[u8; 32], nonce: &[u8], unix_now: u64, client: IpAddr) -> bool {
    if nonce.len() != NONCE_LEN {
        return false;
    }
    let Some(rest) = nonce
        .strip_prefix(NONCE_COOKIE.as_bytes())
        .and_then(|r| r.strip_prefix(FEATURES.as_bytes()))
    else {
        return false;
    };
    let Some((hex, tag_b64)) = rest.split_at_checked(EXPIRY_HEX_LEN) else {
        return false;
    };
    let Some(expiry) = parse_lower_hex(hex) else {
        return false;
    };
    if tag_b64.len() != MAC_B64_LEN {
        return false;
    }
    // The default engine config rejects non-zero trailing bits, so each tag has one spelling.
    let Ok(tag) = URL_SAFE_NO_PAD.decode(tag_b64) else {
        return false;
    };
    if tag.len() != MAC_LEN {
        return false;
    }
    let authentic = mac(key, expiry, client).verify_truncated_left(&tag).is_ok();
    authentic && u64::from(expiry) >= unix_now
}

/// Exactly 8 lowercase hex digits as a u32.
fn parse_lower_hex(hex: &[u8]) -> Option<u32> {
    if hex.len() != EXPIRY_HEX_LEN {
        return None;
    }
    hex.iter().try_fold(0u32, |acc, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u32::from(digit))
    })
}

/// Whether `nonce` starts with the RFC 8489 cookie followed by a security-feature set whose
/// "Password algorithms" bit (the most significant bit) is set.
pub fn nonce_has_password_algorithms(nonce: &[u8]) -> bool {
    let Some(rest) = nonce.strip_prefix(NONCE_COOKIE.as_bytes()) else {
        return false;
    };
    let Some(features) = rest.get(..4) else {
        return false;
    };
    let mut bits = [0u8; 3];
    match STANDARD.decode_slice(features, &mut bits) {
        Ok(3) => bits[0] & 0x80 != 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn matches_independent_vectors() {
        // Computed with Python's hmac/hashlib/base64 (see the module docs for the layout).
        assert_eq!(
            mint(&KEY, 600, 1000, ip("192.0.2.1")),
            "obMatJos2gAAA00000640fLIshMmxFLhcPJ-j"
        );
        assert_eq!(
            mint(&KEY, 600, 1000, ip("2001:db8::1")),
            "obMatJos2gAAA00000640jxW6cU-rnsoCQv4C"
        );
    }

    #[test]
    fn shape() {
        let n = mint(&KEY, 600, 1_700_000_000, ip("192.0.2.1"));
        assert_eq!(n.len(), NONCE_LEN);
        assert_eq!(NONCE_LEN, 37);
        assert!(n.starts_with("obMatJos2gAAA"));
        assert!(n.is_ascii());
        assert!(nonce_has_password_algorithms(n.as_bytes()));
    }

    #[test]
    fn round_trip_and_expiry_boundary() {
        let n = mint(&KEY, 600, 1000, ip("192.0.2.1"));
        assert!(check(&KEY, n.as_bytes(), 1000, ip("192.0.2.1")));
        assert!(check(&KEY, n.as_bytes(), 0, ip("192.0.2.1")));
        assert!(check(&KEY, n.as_bytes(), 1600, ip("192.0.2.1")));
        assert!(!check(&KEY, n.as_bytes(), 1601, ip("192.0.2.1")));
        assert!(!check(&KEY, n.as_bytes(), u64::MAX, ip("192.0.2.1")));
    }

    #[test]
    fn expiry_saturates() {
        let n = mint(&KEY, u64::MAX, u64::MAX - 1, ip("192.0.2.1"));
        assert!(n.contains("ffffffff"));
        assert!(check(
            &KEY,
            n.as_bytes(),
            u64::from(u32::MAX),
            ip("192.0.2.1")
        ));
        assert!(!check(&KEY, n.as_bytes(), u64::MAX, ip("192.0.2.1")));
    }

    #[test]
    fn mapped_client_is_the_same_client() {
        let n = mint(&KEY, 600, 1000, ip("::ffff:192.0.2.1"));
        assert!(check(&KEY, n.as_bytes(), 1000, ip("192.0.2.1")));
        let m = mint(&KEY, 600, 1000, ip("192.0.2.1"));
        assert_eq!(n, m);
        assert!(check(&KEY, m.as_bytes(), 1000, ip("::ffff:192.0.2.1")));
        // IPv4-compatible is a different IPv6 address, not the same client.
        assert!(!check(&KEY, m.as_bytes(), 1000, ip("::192.0.2.1")));
    }

    #[test]
    fn bound_to_client_and_key() {
        let n = mint(&KEY, 600, 1000, ip("192.0.2.1"));
        assert!(!check(&KEY, n.as_bytes(), 1000, ip("192.0.2.2")));
        assert!(!check(&KEY, n.as_bytes(), 1000, ip("2001:db8::1")));
        assert!(!check(&[8; 32], n.as_bytes(), 1000, ip("192.0.2.1")));
    }

    #[test]
    fn extended_expiry_is_rejected() {
        let n = mint(&KEY, 600, 1000, ip("192.0.2.1"));
        let forged = n.replace("00000640", "00000fff");
        assert_eq!(forged.len(), NONCE_LEN);
        assert!(!check(&KEY, forged.as_bytes(), 1000, ip("192.0.2.1")));
    }

    #[test]
    fn every_single_byte_change_is_rejected() {
        let n = mint(&KEY, 600, 1000, ip("192.0.2.1")).into_bytes();
        for i in 0..n.len() {
            for replacement in [b'0', b'A', b'a', b'f', b'-', b'_', b'~', 0x00, 0xff] {
                if n.get(i) == Some(&replacement) {
                    continue;
                }
                let mut t = n.clone();
                if let Some(b) = t.get_mut(i) {
                    *b = replacement;
                }
                assert!(
                    !check(&KEY, &t, 1000, ip("192.0.2.1")),
                    "byte {i} -> {replacement:#x}"
                );
            }
        }
    }

    #[test]
    fn uppercase_hex_and_noncanonical_base64_rejected() {
        let n = mint(&KEY, 0, 0xabc, ip("192.0.2.1"));
        let upper = n.replacen("00000abc", "00000ABC", 1);
        assert_ne!(upper, n);
        assert!(!check(&KEY, upper.as_bytes(), 0, ip("192.0.2.1")));
        let padded = format!("{n}==");
        assert!(!check(&KEY, padded.as_bytes(), 0, ip("192.0.2.1")));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let client = ip("192.0.2.1");
        let long = vec![b'a'; 1000];
        let mut invalid_utf8 = mint(&KEY, 600, 1000, client).into_bytes();
        if let Some(b) = invalid_utf8.last_mut() {
            *b = 0xff;
        }
        let mut multibyte = "obMatJos2gAAA".as_bytes().to_vec();
        multibyte.extend_from_slice("é".repeat(19).as_bytes());
        for g in [
            &b""[..],
            b"o",
            b"obMatJos2",
            b"obMatJos2gAAA",
            b"obMatJos2gAAA00000640",
            &long,
            &invalid_utf8,
            &multibyte,
            &[0xff; NONCE_LEN],
            &[0; NONCE_LEN],
        ] {
            assert!(!check(&KEY, g, 0, client));
            let _ = nonce_has_password_algorithms(g);
        }
    }

    #[test]
    fn password_algorithms_bit() {
        assert!(nonce_has_password_algorithms(b"obMatJos2gAAA"));
        assert!(nonce_has_password_algorithms(b"obMatJos2wAAAanything"));
        assert!(!nonce_has_password_algorithms(b"obMatJos2AAAA"));
        assert!(!nonce_has_password_algorithms(b"obMatJos2QAAA"));
        assert!(!nonce_has_password_algorithms(b"obMatJos2gAA"));
        assert!(!nonce_has_password_algorithms(b"obMatJos2g!AA"));
        assert!(!nonce_has_password_algorithms(b"xbMatJos2gAAA"));
        assert!(!nonce_has_password_algorithms(b""));
        assert!(!nonce_has_password_algorithms(&[0xff; 20]));
    }
}
