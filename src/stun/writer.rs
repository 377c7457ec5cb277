//! Encoding STUN messages into a reusable buffer.

use super::{
    Class, FINGERPRINT_XOR, HEADER_LEN, MAGIC_COOKIE, attr, encode_xor_address, message_type,
};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};

/// Writes a Data indication (RFC 8656 §11.6) in place around a payload already in `buf` at
/// `payload`: the header, XOR-PEER-ADDRESS and DATA's own header go just before it, the
/// padding to 4 bytes just after. Returns the message's range in `buf`, or None when the
/// room before or after the payload is too small (48 bytes before, for an IPv6 peer, and 3 after suffice) or the
/// payload does not fit one attribute. The relay path uses it to send without a copy.
pub fn data_indication_in_place(
    buf: &mut [u8],
    payload: std::ops::Range<usize>,
    txid: [u8; 12],
    peer: SocketAddr,
) -> Option<std::ops::Range<usize>> {
    let (start, end) = (payload.start, payload.end);
    let len = end.checked_sub(start)?;
    let mut xaddr = [0u8; 20];
    let alen = encode_xor_address(peer, &txid, &mut xaddr);
    let pad = (4 - len % 4) % 4;
    let head = HEADER_LEN + 4 + alen + 4;
    let h = start.checked_sub(head)?;
    let body_len = u16::try_from(head - HEADER_LEN + len + pad).ok()?;
    if end + pad > buf.len() {
        return None;
    }
    let mut p = h;
    let mut put = |bytes: &[u8]| {
        buf[p..p + bytes.len()].copy_from_slice(bytes);
        p += bytes.len();
    };
    put(&message_type(super::method::DATA, Class::Indication).to_be_bytes());
    put(&body_len.to_be_bytes());
    put(&MAGIC_COOKIE.to_be_bytes());
    put(&txid);
    put(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    put(&(alen as u16).to_be_bytes());
    put(&xaddr[..alen]);
    put(&attr::DATA.to_be_bytes());
    put(&(len as u16).to_be_bytes());
    buf[end..end + pad].fill(0);
    Some(h..end + pad)
}

/// Writes one message into `out` (cleared first). Attribute values longer than 65535 bytes
/// are cut; callers never build such values.
pub struct MessageWriter<'b> {
    out: &'b mut Vec<u8>,
    txid: [u8; 12],
}

impl<'b> MessageWriter<'b> {
    pub fn new(out: &'b mut Vec<u8>, method: u16, class: Class, txid: [u8; 12]) -> Self {
        out.clear();
        out.extend_from_slice(&message_type(method, class).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&txid);
        MessageWriter { out, txid }
    }

    /// Continues a message already started in `out` (by [`MessageWriter::new`]).
    pub fn resume(out: &'b mut Vec<u8>, txid: [u8; 12]) -> Self {
        MessageWriter { out, txid }
    }

    fn set_len(&mut self, len: usize) {
        let l = (len - HEADER_LEN) as u16;
        self.out[2..4].copy_from_slice(&l.to_be_bytes());
    }

    /// Appends a TLV with zero padding to a multiple of 4.
    pub fn attr(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        let value = &value[..value.len().min(0xFFFF)];
        self.out.extend_from_slice(&ty.to_be_bytes());
        self.out
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.out.extend_from_slice(value);
        let pad = (4 - value.len() % 4) % 4;
        self.out.extend_from_slice(&[0u8; 3][..pad]);
        let len = self.out.len();
        self.set_len(len);
        self
    }

    pub fn u32_attr(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    pub fn xor_address(&mut self, ty: u16, addr: SocketAddr) -> &mut Self {
        let mut buf = [0u8; 20];
        let n = encode_xor_address(addr, &self.txid, &mut buf);
        self.attr(ty, &buf[..n])
    }

    /// A plain (non-XOR) address such as MAPPED-ADDRESS.
    pub fn address(&mut self, ty: u16, addr: SocketAddr) -> &mut Self {
        let mut buf = [0u8; 20];
        buf[2..4].copy_from_slice(&addr.port().to_be_bytes());
        let n = match addr.ip() {
            IpAddr::V4(ip) => {
                buf[1] = 0x01;
                buf[4..8].copy_from_slice(&ip.octets());
                8
            }
            IpAddr::V6(ip) => {
                buf[1] = 0x02;
                buf[4..20].copy_from_slice(&ip.octets());
                20
            }
        };
        self.attr(ty, &buf[..n])
    }

    /// ERROR-CODE (RFC 8489 §14.8).
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        self.error_code_family(attr::ERROR_CODE, 0, code, reason)
    }

    /// An ERROR-CODE-shaped attribute; ADDRESS-ERROR-CODE (RFC 8656 §18.14) puts the
    /// address family in the first byte, ERROR-CODE puts 0 there.
    pub fn error_code_family(&mut self, ty: u16, family: u8, code: u16, reason: &str) -> &mut Self {
        let mut v = [0u8; 4 + 128];
        v[0] = family;
        v[2] = (code / 100) as u8 & 0x07;
        v[3] = (code % 100) as u8;
        let r = reason.as_bytes();
        let n = r.len().min(128);
        v[4..4 + n].copy_from_slice(&r[..n]);
        self.attr(ty, &v[..4 + n])
    }

    /// MESSAGE-INTEGRITY over everything written so far (RFC 8489 §14.5).
    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        let len = self.out.len() + 24;
        self.set_len(len);
        let tag = match <Hmac<Sha1> as KeyInit>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(self.out);
                mac.finalize().into_bytes()
            }
            Err(_) => return self,
        };
        self.attr(attr::MESSAGE_INTEGRITY, &tag)
    }

    /// MESSAGE-INTEGRITY-SHA256, full 32 bytes (RFC 8489 §14.6).
    pub fn integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let len = self.out.len() + 36;
        self.set_len(len);
        let tag = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(self.out);
                mac.finalize().into_bytes()
            }
            Err(_) => return self,
        };
        self.attr(attr::MESSAGE_INTEGRITY_SHA256, &tag)
    }

    /// FINGERPRINT; must come last (RFC 8489 §14.7).
    pub fn fingerprint(&mut self) -> &mut Self {
        let len = self.out.len() + 8;
        self.set_len(len);
        let crc = crc32fast::hash(self.out) ^ FINGERPRINT_XOR;
        self.attr(attr::FINGERPRINT, &crc.to_be_bytes())
    }

    pub fn finish(self) -> &'b [u8] {
        self.out
    }
}
