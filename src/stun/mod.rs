//! The STUN wire format ([RFC 8489](https://www.rfc-editor.org/rfc/rfc8489)) with the TURN
//! additions of [RFC 8656](https://www.rfc-editor.org/rfc/rfc8656).
//!
//! [`Message`] borrows the datagram: parsing never allocates and never panics, whatever the
//! input. [`MessageWriter`] encodes into a caller's reusable buffer. ChannelData framing lives
//! in [`channel_data`], stream framing (TCP/TLS) in [`framing`].

#![forbid(unsafe_code)]

pub mod attr;
pub mod channel_data;
pub mod framing;
mod writer;

pub use writer::{MessageWriter, data_indication_in_place};

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// RFC 8489 §5: the fixed magic cookie.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// RFC 8489 §14.7: FINGERPRINT is the CRC-32 XORed with this constant ("STUN").
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;
pub const HEADER_LEN: usize = 20;

/// STUN methods (RFC 8489 §18.2, RFC 8656 §17, RFC 6062 §6.1).
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
    pub const CONNECT: u16 = 0x00A;
    pub const CONNECTION_BIND: u16 = 0x00B;
    pub const CONNECTION_ATTEMPT: u16 = 0x00C;
}

/// The two class bits of the message type (RFC 8489 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0x000,
            Class::Indication => 0x010,
            Class::Success => 0x100,
            Class::Error => 0x110,
        }
    }
}

/// Packs a method and a class into the 14-bit message type.
pub fn message_type(method: u16, class: Class) -> u16 {
    let m = method & 0x0FFF;
    ((m & 0x0F80) << 2) | ((m & 0x0070) << 1) | (m & 0x000F) | class.bits()
}

fn split_type(t: u16) -> (u16, Class) {
    let method = ((t & 0x3E00) >> 2) | ((t & 0x00E0) >> 1) | (t & 0x000F);
    let class = match t & 0x0110 {
        0x000 => Class::Request,
        0x010 => Class::Indication,
        0x100 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// Why a datagram is not a well-formed STUN message. Malformed messages are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header, or an attribute runs past the end.
    Truncated,
    /// The top two bits are not zero: not STUN (maybe ChannelData).
    NotStun,
    BadMagicCookie,
    /// The header length is not a multiple of 4 or disagrees with the datagram.
    BadLength,
    /// An attribute whose value has the wrong size for its type.
    BadAttribute(u16),
    /// Something other than nothing follows FINGERPRINT.
    FingerprintNotLast,
    FingerprintMismatch,
}

/// Which integrity attribute authenticated a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrity {
    Sha1,
    Sha256,
}

/// A parsed STUN message borrowing its datagram.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    raw: &'a [u8],
    method: u16,
    class: Class,
    /// End of the attributes that count: everything after MESSAGE-INTEGRITY(-SHA256) but
    /// FINGERPRINT is ignored (RFC 8489 §14.5, §14.6).
    mi_offset: Option<usize>,
    mi256_offset: Option<usize>,
    has_fingerprint: bool,
}

impl<'a> Message<'a> {
    /// Parses and checks one whole message (a datagram, or a frame cut by the deframer):
    /// header, attribute bounds, sizes of the integrity attributes, and FINGERPRINT if present.
    pub fn parse(raw: &'a [u8]) -> Result<Message<'a>, ParseError> {
        if raw.len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        if raw[0] & 0xC0 != 0 {
            return Err(ParseError::NotStun);
        }
        let t = u16::from_be_bytes([raw[0], raw[1]]);
        let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
        if u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) != MAGIC_COOKIE {
            return Err(ParseError::BadMagicCookie);
        }
        if !len.is_multiple_of(4) || HEADER_LEN + len != raw.len() {
            return Err(ParseError::BadLength);
        }
        let (method, class) = split_type(t);
        let mut msg = Message {
            raw,
            method,
            class,
            mi_offset: None,
            mi256_offset: None,
            has_fingerprint: false,
        };
        let mut pos = HEADER_LEN;
        while pos < raw.len() {
            if msg.has_fingerprint {
                return Err(ParseError::FingerprintNotLast);
            }
            let (ty, value, next) = read_tlv(raw, pos)?;
            match ty {
                attr::MESSAGE_INTEGRITY
                    if msg.mi_offset.is_none() && msg.mi256_offset.is_none() =>
                {
                    if value.len() != 20 {
                        return Err(ParseError::BadAttribute(ty));
                    }
                    msg.mi_offset = Some(pos);
                }
                attr::MESSAGE_INTEGRITY_SHA256 if msg.mi256_offset.is_none() => {
                    if value.len() < 16 || value.len() > 32 || value.len() % 4 != 0 {
                        return Err(ParseError::BadAttribute(ty));
                    }
                    msg.mi256_offset = Some(pos);
                }
                attr::FINGERPRINT => {
                    if next != raw.len() {
                        return Err(ParseError::FingerprintNotLast);
                    }
                    if value.len() != 4 {
                        return Err(ParseError::BadAttribute(ty));
                    }
                    let expected = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                    if crc32fast::hash(&raw[..pos]) ^ FINGERPRINT_XOR != expected {
                        return Err(ParseError::FingerprintMismatch);
                    }
                    msg.has_fingerprint = true;
                }
                _ => {}
            }
            pos = next;
        }
        Ok(msg)
    }

    pub fn method(&self) -> u16 {
        self.method
    }

    pub fn class(&self) -> Class {
        self.class
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.raw[8..20]);
        id
    }

    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    pub fn has_fingerprint(&self) -> bool {
        self.has_fingerprint
    }

    pub fn has_integrity(&self) -> bool {
        self.mi_offset.is_some() || self.mi256_offset.is_some()
    }

    /// The attributes that count, in order: those after MESSAGE-INTEGRITY are skipped, except
    /// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT (RFC 8489 §14.5).
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            raw: self.raw,
            pos: HEADER_LEN,
            after_mi: false,
            after_mi256: false,
        }
    }

    /// The first counted attribute of this type.
    pub fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.attributes().find(|(t, _)| *t == ty).map(|(_, v)| v)
    }

    /// Every counted attribute of this type (several XOR-PEER-ADDRESS, say).
    pub fn get_all(&self, ty: u16) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.attributes()
            .filter(move |(t, _)| *t == ty)
            .map(|(_, v)| v)
    }

    /// Decodes an XOR-encoded address attribute (XOR-MAPPED, XOR-PEER, XOR-RELAYED).
    pub fn xor_address(&self, ty: u16) -> Option<Result<SocketAddr, ParseError>> {
        self.get(ty).map(|v| {
            decode_xor_address(v, &self.transaction_id()).ok_or(ParseError::BadAttribute(ty))
        })
    }

    /// A 32-bit attribute (LIFETIME, say).
    pub fn u32_attr(&self, ty: u16) -> Option<Result<u32, ParseError>> {
        self.get(ty).map(|v| {
            if v.len() == 4 {
                Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
            } else {
                Err(ParseError::BadAttribute(ty))
            }
        })
    }

    /// Verifies MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, in constant time.
    /// Returns which one matched, or `None` if there is none or it does not match.
    pub fn verify_integrity(&self, key: &[u8]) -> Option<Integrity> {
        if let Some(off) = self.mi256_offset {
            let tag = attr_value(self.raw, off)?;
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).ok()?;
            self.feed_prefix(&mut mac, off, tag.len());
            return mac
                .verify_truncated_left(tag)
                .ok()
                .map(|_| Integrity::Sha256);
        }
        let off = self.mi_offset?;
        let tag = attr_value(self.raw, off)?;
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).ok()?;
        self.feed_prefix(&mut mac, off, 20);
        mac.verify_slice(tag).ok().map(|_| Integrity::Sha1)
    }

    /// Feeds the bytes an integrity attribute at `off` covers, with the header length
    /// rewritten to end just after that attribute (RFC 8489 §14.5).
    fn feed_prefix<M: Mac>(&self, mac: &mut M, off: usize, tag_len: usize) {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.raw[..HEADER_LEN]);
        let len = (off - HEADER_LEN + 4 + tag_len) as u16;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        mac.update(&header);
        mac.update(&self.raw[HEADER_LEN..off]);
    }
}

fn read_tlv(raw: &[u8], pos: usize) -> Result<(u16, &[u8], usize), ParseError> {
    let h = raw.get(pos..pos + 4).ok_or(ParseError::Truncated)?;
    let ty = u16::from_be_bytes([h[0], h[1]]);
    let len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let start = pos + 4;
    let value = raw.get(start..start + len).ok_or(ParseError::Truncated)?;
    let next = start + ((len + 3) & !3);
    if next > raw.len() {
        return Err(ParseError::Truncated);
    }
    Ok((ty, value, next))
}

fn attr_value(raw: &[u8], pos: usize) -> Option<&[u8]> {
    read_tlv(raw, pos).ok().map(|(_, v, _)| v)
}

/// Iterator over the attributes of a [`Message`] that count.
pub struct Attributes<'a> {
    raw: &'a [u8],
    pos: usize,
    after_mi: bool,
    after_mi256: bool,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while self.pos < self.raw.len() {
            let (ty, value, next) = read_tlv(self.raw, self.pos).ok()?;
            self.pos = next;
            let counted = match ty {
                attr::FINGERPRINT => true,
                attr::MESSAGE_INTEGRITY_SHA256 => !self.after_mi256,
                _ => !self.after_mi && !self.after_mi256,
            };
            match ty {
                attr::MESSAGE_INTEGRITY => self.after_mi = true,
                attr::MESSAGE_INTEGRITY_SHA256 => self.after_mi256 = true,
                _ => {}
            }
            if counted {
                return Some((ty, value));
            }
        }
        None
    }
}

/// Decodes an XOR-encoded address (RFC 8489 §14.2).
pub fn decode_xor_address(v: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match (v[1], v.len()) {
        (0x01, 8) => {
            let x = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x)), port))
        }
        (0x02, 20) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&v[4..20]);
            let mask = xor_mask(txid);
            for (x, m) in b.iter_mut().zip(mask) {
                *x ^= m;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), port))
        }
        _ => None,
    }
}

/// Decodes a plain address (MAPPED-ADDRESS, ALTERNATE-SERVER).
pub fn decode_address(v: &[u8]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]);
    match (v[1], v.len()) {
        (0x01, 8) => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(v[4], v[5], v[6], v[7])),
            port,
        )),
        (0x02, 20) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&v[4..20]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), port))
        }
        _ => None,
    }
}

fn xor_mask(txid: &[u8; 12]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m[4..].copy_from_slice(txid);
    m
}

/// Writes the value of an XOR-encoded address into `out` and returns its length (8 or 20).
pub fn encode_xor_address(addr: SocketAddr, txid: &[u8; 12], out: &mut [u8; 20]) -> usize {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[0] = 0;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = 0x01;
            out[4..8].copy_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
            8
        }
        IpAddr::V6(ip) => {
            out[1] = 0x02;
            let mask = xor_mask(txid);
            for (i, (b, m)) in ip.octets().iter().zip(mask).enumerate() {
                out[4 + i] = b ^ m;
            }
            20
        }
    }
}

/// Decodes ERROR-CODE into (code, reason). RFC 8489 §14.8: the class is 3 to 6 and the
/// number 0 to 99; anything else is not a valid code (None).
pub fn decode_error_code(v: &[u8]) -> Option<(u16, &str)> {
    if v.len() < 4 {
        return None;
    }
    let class = (v[2] & 0x07) as u16;
    let number = v[3] as u16;
    if !(3..=6).contains(&class) || number > 99 {
        return None;
    }
    let code = class * 100 + number;
    let reason = std::str::from_utf8(&v[4..]).ok()?;
    Some((code, reason))
}

/// Whether an attribute type is comprehension-required (RFC 8489 §14: 0x0000-0x7FFF).
pub fn is_comprehension_required(ty: u16) -> bool {
    ty < 0x8000
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod prop_tests;
