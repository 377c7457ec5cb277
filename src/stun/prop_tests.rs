//! Property tests of the codec with a small seeded generator (no dependency): random
//! messages round-trip through the writer and the parser, and no byte string makes the
//! parsers panic. Deterministic seeds, so a failure names the case that reproduces it.

use super::*;
use crate::stun::channel_data;
use crate::stun::framing::{Frame, next_frame};

/// xorshift64*: deterministic and good enough to pick lengths and bytes.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn addr(&mut self) -> SocketAddr {
        let port = self.next() as u16;
        if self.below(2) == 0 {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(self.next() as u32)), port)
        } else {
            let hi = u128::from(self.next()) << 64;
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(hi | u128::from(self.next()))),
                port,
            )
        }
    }
}

const CASES: u64 = 3000;

fn class_of(i: u64) -> Class {
    match i % 4 {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    }
}

#[test]
fn message_type_round_trips_for_every_method_and_class() {
    for m in 0..0x1000u16 {
        for c in 0..4 {
            let t = message_type(m, class_of(c));
            assert_eq!(t & 0xC000, 0);
            assert_eq!(split_type(t), (m, class_of(c)));
        }
    }
}

#[test]
fn written_messages_parse_back_to_the_same_attributes() {
    for seed in 1..=CASES {
        let mut g = Gen(seed);
        let method = g.below(0x1000) as u16;
        let class = class_of(g.next());
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&g.bytes(12));
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, method, class, txid);
        let mut expect: Vec<(u16, Vec<u8>)> = Vec::new();
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for _ in 0..g.below(12) {
            match g.below(4) {
                0 => {
                    let a = g.addr();
                    w.xor_address(attr::XOR_PEER_ADDRESS, a);
                    addrs.push(a);
                    expect.push((attr::XOR_PEER_ADDRESS, Vec::new()));
                }
                1 => {
                    let v = g.next() as u32;
                    w.u32_attr(attr::LIFETIME, v);
                    expect.push((attr::LIFETIME, v.to_be_bytes().to_vec()));
                }
                _ => {
                    // Any type but the ones the parser treats specially.
                    let mut t = g.next() as u16;
                    if matches!(
                        t,
                        attr::MESSAGE_INTEGRITY
                            | attr::MESSAGE_INTEGRITY_SHA256
                            | attr::FINGERPRINT
                    ) {
                        t = attr::SOFTWARE;
                    }
                    let len = g.below(70) as usize;
                    let v = g.bytes(len);
                    w.attr(t, &v);
                    expect.push((t, v));
                }
            }
        }
        let key = g.bytes(16);
        let integrity = g.below(3);
        match integrity {
            1 => {
                w.integrity(&key);
            }
            2 => {
                w.integrity_sha256(&key);
            }
            _ => {}
        }
        let fingerprint = g.below(2) == 1;
        if fingerprint {
            w.fingerprint();
        }
        let m = Message::parse(&buf).unwrap_or_else(|e| panic!("seed {seed}: {e:?}"));
        assert_eq!(
            (m.method(), m.class(), m.transaction_id()),
            (method, class, txid)
        );
        assert_eq!(m.has_fingerprint(), fingerprint, "seed {seed}");
        let got: Vec<(u16, &[u8])> = m
            .attributes()
            .filter(|(t, _)| {
                !matches!(
                    *t,
                    attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT
                )
            })
            .collect();
        assert_eq!(got.len(), expect.len(), "seed {seed}");
        let mut next_addr = addrs.iter();
        for ((t, v), (et, ev)) in got.iter().zip(&expect) {
            assert_eq!(t, et, "seed {seed}");
            if *t == attr::XOR_PEER_ADDRESS {
                let a = decode_xor_address(v, &txid);
                assert_eq!(a.as_ref(), next_addr.next(), "seed {seed}");
            } else {
                assert_eq!(v, &ev.as_slice(), "seed {seed}");
            }
        }
        match integrity {
            0 => assert_eq!(m.verify_integrity(&key), None),
            1 => assert_eq!(m.verify_integrity(&key), Some(Integrity::Sha1)),
            _ => assert_eq!(m.verify_integrity(&key), Some(Integrity::Sha256)),
        }
        if integrity != 0 {
            let mut other = key.clone();
            other[0] ^= 1;
            assert_eq!(m.verify_integrity(&other), None, "seed {seed}");
        }
    }
}

#[test]
fn any_bytes_never_panic_the_parsers() {
    for seed in 1..=CASES * 10 {
        let mut g = Gen(seed);
        let len = g.below(120) as usize;
        let mut d = g.bytes(len);
        // Bias a share of cases towards headers that pass the early checks.
        if d.len() >= 20 && g.below(2) == 0 {
            d[0] &= 0x3F;
            d[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            let body = (d.len() - 20) as u16 & !3;
            d.truncate(20 + body as usize);
            d[2..4].copy_from_slice(&body.to_be_bytes());
        }
        exercise(&d);
    }
}

#[test]
fn mutated_valid_messages_never_panic() {
    let mut base = Vec::new();
    MessageWriter::new(&mut base, method::ALLOCATE, Class::Request, [7; 12])
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .xor_address(attr::XOR_PEER_ADDRESS, "[2001:db8::1]:9".parse().unwrap())
        .attr(attr::USERNAME, b"alice")
        .integrity(b"k")
        .integrity_sha256(b"k")
        .fingerprint();
    for seed in 1..=CASES * 10 {
        let mut g = Gen(seed);
        let mut d = base.clone();
        for _ in 0..=g.below(4) {
            let i = g.below(d.len() as u64) as usize;
            match g.below(3) {
                0 => d[i] = g.next() as u8,
                1 => d.truncate(i),
                _ => d.insert(i, g.next() as u8),
            }
            if d.is_empty() {
                break;
            }
        }
        exercise(&d);
    }
}

fn exercise(d: &[u8]) {
    if let Ok(m) = Message::parse(d) {
        for (t, v) in m.attributes() {
            let _ = decode_xor_address(v, &m.transaction_id());
            let _ = decode_address(v);
            let _ = decode_error_code(v);
            let _ = m.u32_attr(t);
        }
        let _ = m.verify_integrity(b"k");
        let _ = m.xor_address(attr::XOR_PEER_ADDRESS);
    }
    let _ = channel_data::parse(d);
    match next_frame(d) {
        Frame::Complete(n) => assert!(n <= d.len()),
        Frame::NeedMore(n) => assert!(n > d.len()),
        Frame::Invalid => {}
    }
}

#[test]
fn error_code_decoding_accepts_only_valid_codes() {
    // Found by the stun_message fuzzer: number 255 decoded as code 955.
    assert_eq!(decode_error_code(&[0, 0, 4, 1]), Some((401, "")));
    assert_eq!(decode_error_code(&[0, 0, 6, 99]), Some((699, "")));
    assert_eq!(decode_error_code(&[0, 0, 4, 100]), None);
    assert_eq!(decode_error_code(&[0, 0, 7, 255]), None);
    assert_eq!(decode_error_code(&[0, 0, 2, 0]), None);
    assert_eq!(decode_error_code(&[0, 0, 4]), None);
    for class in 0..8u8 {
        for number in 0..=255u8 {
            if let Some((code, _)) = decode_error_code(&[0, 0, class, number]) {
                assert!((300..=699).contains(&code));
            }
        }
    }
}
