//! The pages' two bearer-less ways in, both HMAC-SHA256 tags that the server checks without
//! storing anything but the one-time links it has seen:
//!
//! - the session cookie the login sets: `<expiry>.<random>.<tag>` under a key drawn at start,
//!   so a restart logs everyone out;
//! - the one-time link `turnd selftest-link` prints: `<expiry>.<nonce>.<tag>` under the
//!   admin token, carried in the URL's fragment (`/login#ticket=...`), which the browser never
//!   sends in a request line: the login page posts it in a form body. Taken once; the server
//!   remembers the nonces it took until they expire.

use std::collections::HashMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Longest a one-time link may live.
pub const MAX_TICKET_TTL: u64 = 3600;
/// How long a login lasts.
pub const SESSION_TTL: u64 = 12 * 3600;
/// One-time links remembered at most; past it new ones are refused until old ones expire.
const MAX_USED: usize = 4096;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tag(key: &[u8], purpose: &str, expiry: u64, nonce: &str) -> Option<Hmac<Sha256>> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).ok()?;
    mac.update(purpose.as_bytes());
    mac.update(b"\0");
    mac.update(expiry.to_string().as_bytes());
    mac.update(b".");
    mac.update(nonce.as_bytes());
    Some(mac)
}

fn sign(key: &[u8], purpose: &str, expiry: u64, nonce: &[u8]) -> String {
    let nonce = hex(nonce);
    let t = tag(key, purpose, expiry, &nonce)
        .map(|m| hex(&m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("{expiry}.{nonce}.{t}")
}

/// Checks a signed value; `(expiry, nonce)` when its tag is right and it has not expired.
fn verify<'a>(key: &[u8], purpose: &str, value: &'a str, now: u64) -> Option<(u64, &'a str)> {
    let mut parts = value.split('.');
    let (Some(expiry), Some(nonce), Some(given), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if nonce.len() != 32 || given.len() != 64 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let expiry: u64 = expiry.parse().ok()?;
    let given: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(given.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    tag(key, purpose, expiry, nonce)?
        .verify_slice(&given)
        .ok()?;
    (now < expiry).then_some((expiry, nonce))
}

const TICKET: &str = "turnd selftest-link";
const COOKIE: &str = "turnd pages session";

/// A one-time link's ticket, valid `ttl` seconds (at most [`MAX_TICKET_TTL`]) from `now`,
/// signed with the admin `token`; `nonce` from the OS's random source.
pub fn mint_ticket(token: &str, now: u64, ttl: u64, nonce: [u8; 16]) -> String {
    sign(
        token.as_bytes(),
        TICKET,
        now + ttl.clamp(1, MAX_TICKET_TTL),
        &nonce,
    )
}

/// Session cookies and the one-time links already taken.
pub struct Keys {
    cookie_key: [u8; 32],
    used: HashMap<String, u64>,
}

impl Keys {
    /// `cookie_key` from the OS's random source.
    pub fn new(cookie_key: [u8; 32]) -> Keys {
        Keys {
            cookie_key,
            used: HashMap::new(),
        }
    }

    /// A new session cookie's value, valid [`SESSION_TTL`] from `now`.
    pub fn session(&self, now: u64, nonce: [u8; 16]) -> String {
        sign(&self.cookie_key, COOKIE, now + SESSION_TTL, &nonce)
    }

    /// Whether `value` is a session cookie of this process that has not expired.
    pub fn session_valid(&self, value: &str, now: u64) -> bool {
        verify(&self.cookie_key, COOKIE, value, now).is_some()
    }

    /// Takes a one-time link's ticket: true once for a right, unexpired ticket signed with
    /// `token`, false ever after (and for anything else).
    pub fn take_ticket(&mut self, token: &str, ticket: &str, now: u64) -> bool {
        if token.is_empty() {
            return false;
        }
        let Some((expiry, nonce)) = verify(token.as_bytes(), TICKET, ticket, now) else {
            return false;
        };
        if expiry > now + MAX_TICKET_TTL {
            return false;
        }
        self.used.retain(|_, e| *e > now);
        if self.used.len() >= MAX_USED || self.used.contains_key(nonce) {
            return false;
        }
        self.used.insert(nonce.to_string(), expiry);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_taken_once_and_expires() {
        let mut k = Keys::new([7; 32]);
        let t = mint_ticket("tok", 1000, 300, [1; 16]);
        assert!(!k.take_ticket("other", &t, 1000), "another token's key");
        assert!(k.take_ticket("tok", &t, 1000));
        assert!(!k.take_ticket("tok", &t, 1001), "once");
        let t2 = mint_ticket("tok", 1000, 300, [2; 16]);
        assert!(!k.take_ticket("tok", &t2, 1300), "expired");
        assert!(!k.take_ticket("", &t2, 1000), "no token configured");
        // Tampering with any part fails.
        let t3 = mint_ticket("tok", 1000, 300, [3; 16]);
        let longer = t3.replacen("1300.", "1900.", 1);
        assert!(!k.take_ticket("tok", &longer, 1000));
        for bad in ["", "1.2", "x.y.z", "1300..", &format!("{t3}.x")] {
            assert!(!k.take_ticket("tok", bad, 1000), "{bad:?}");
        }
        assert!(k.take_ticket("tok", &t3, 1000));
        // The ttl is capped.
        let long = mint_ticket("tok", 1000, 99_999, [4; 16]);
        assert!(long.starts_with(&format!("{}.", 1000 + MAX_TICKET_TTL)));
    }

    #[test]
    fn session_cookies_are_this_process_and_expire() {
        let k = Keys::new([7; 32]);
        let c = k.session(1000, [9; 16]);
        assert!(k.session_valid(&c, 1000));
        assert!(!k.session_valid(&c, 1000 + SESSION_TTL));
        assert!(!Keys::new([8; 32]).session_valid(&c, 1000), "another key");
        let t = mint_ticket("tok", 1000, 300, [1; 16]);
        assert!(!k.session_valid(&t, 1000), "a ticket is no cookie");
        assert!(!k.session_valid("garbage", 1000));
    }
}
