use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// RFC 5769 §2.1
const SAMPLE_REQUEST: &str = "
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf";

// RFC 5769 §2.2
const SAMPLE_IPV4_RESPONSE: &str = "
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96";

// RFC 5769 §2.3
const SAMPLE_IPV6_RESPONSE: &str = "
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c";

// RFC 5769 §2.4
const SAMPLE_LONG_TERM: &str = "
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

#[test]
fn rfc5769_sample_request() {
    let raw = hex(SAMPLE_REQUEST);
    let m = Message::parse(&raw).unwrap();
    assert_eq!(m.method(), method::BINDING);
    assert_eq!(m.class(), Class::Request);
    assert!(m.has_fingerprint());
    assert_eq!(m.get(attr::USERNAME), Some(&b"evtj:h6vY"[..]));
    assert_eq!(m.get(attr::SOFTWARE), Some(&b"STUN test client"[..]));
    assert_eq!(
        m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"),
        Some(Integrity::Sha1)
    );
    assert_eq!(m.verify_integrity(b"wrong"), None);
}

#[test]
fn rfc5769_sample_ipv4_response() {
    let raw = hex(SAMPLE_IPV4_RESPONSE);
    let m = Message::parse(&raw).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(),
        "192.0.2.1:32853".parse().unwrap()
    );
    assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt").is_some());
}

#[test]
fn rfc5769_sample_ipv6_response() {
    let raw = hex(SAMPLE_IPV6_RESPONSE);
    let m = Message::parse(&raw).unwrap();
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(),
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap()
    );
    assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt").is_some());
}

#[test]
fn rfc5769_long_term_authentication() {
    use md5::{Digest, Md5};
    let raw = hex(SAMPLE_LONG_TERM);
    let m = Message::parse(&raw).unwrap();
    let user = m.get(attr::USERNAME).unwrap();
    assert_eq!(
        std::str::from_utf8(user).unwrap(),
        "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}"
    );
    assert_eq!(m.get(attr::REALM), Some(&b"example.org"[..]));
    assert_eq!(
        m.get(attr::NONCE),
        Some(&b"f//499k954d6OL34oL9FSTvy64sA"[..])
    );
    let mut h = Md5::new();
    h.update(user);
    h.update(b":example.org:TheMatrIX");
    let key = h.finalize();
    assert_eq!(m.verify_integrity(&key), Some(Integrity::Sha1));
}

#[test]
fn writer_round_trip_with_both_integrities_and_fingerprint() {
    let txid = [7u8; 12];
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, method::ALLOCATE, Class::Success, txid);
    w.xor_address(
        attr::XOR_RELAYED_ADDRESS,
        "[2001:db8::1]:5000".parse().unwrap(),
    )
    .xor_address(
        attr::XOR_MAPPED_ADDRESS,
        "203.0.113.9:40000".parse().unwrap(),
    )
    .u32_attr(attr::LIFETIME, 600)
    .attr(attr::SOFTWARE, b"x")
    .integrity(b"key")
    .integrity_sha256(b"key")
    .fingerprint();
    let raw = w.finish().to_vec();
    let m = Message::parse(&raw).unwrap();
    assert_eq!(m.method(), method::ALLOCATE);
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.transaction_id(), txid);
    assert_eq!(
        m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap(),
        "[2001:db8::1]:5000".parse().unwrap()
    );
    assert_eq!(m.u32_attr(attr::LIFETIME).unwrap().unwrap(), 600);
    assert_eq!(m.get(attr::SOFTWARE), Some(&b"x"[..]));
    // SHA-256 is preferred when both are present.
    assert_eq!(m.verify_integrity(b"key"), Some(Integrity::Sha256));
    assert_eq!(m.verify_integrity(b"other"), None);
}

#[test]
fn sha1_integrity_alone_round_trips() {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, method::REFRESH, Class::Request, [1; 12]);
    w.u32_attr(attr::LIFETIME, 0).integrity(b"k");
    let raw = w.finish().to_vec();
    assert_eq!(
        Message::parse(&raw).unwrap().verify_integrity(b"k"),
        Some(Integrity::Sha1)
    );
}

#[test]
fn attributes_after_integrity_are_ignored() {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, method::BINDING, Class::Request, [1; 12]);
    w.attr(attr::USERNAME, b"u")
        .integrity(b"k")
        .attr(attr::REALM, b"evil");
    let raw = w.finish().to_vec();
    let m = Message::parse(&raw).unwrap();
    assert_eq!(m.get(attr::USERNAME), Some(&b"u"[..]));
    assert_eq!(m.get(attr::REALM), None);
    // The integrity still verifies: it covers only what precedes it.
    assert!(m.verify_integrity(b"k").is_some());
}

#[test]
fn parse_errors() {
    let raw = hex(SAMPLE_REQUEST);
    assert_eq!(
        Message::parse(&raw[..10]).unwrap_err(),
        ParseError::Truncated
    );
    let mut bad = raw.clone();
    bad[0] |= 0x40;
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::NotStun);
    let mut bad = raw.clone();
    bad[4] = 0;
    assert_eq!(
        Message::parse(&bad).unwrap_err(),
        ParseError::BadMagicCookie
    );
    let mut bad = raw.clone();
    bad[3] = 0x57;
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::BadLength);
    assert_eq!(
        Message::parse(&raw[..raw.len() - 4]).unwrap_err(),
        ParseError::BadLength
    );
    let mut bad = raw.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert_eq!(
        Message::parse(&bad).unwrap_err(),
        ParseError::FingerprintMismatch
    );
    // An attribute whose length runs past the end.
    let mut bad = raw.clone();
    bad[22] = 0;
    bad[23] = 0xF0;
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::Truncated);
    // MESSAGE-INTEGRITY of the wrong size.
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, method::BINDING, Class::Request, [1; 12]);
    w.attr(attr::MESSAGE_INTEGRITY, &[0; 16]);
    let raw2 = w.finish().to_vec();
    assert_eq!(
        Message::parse(&raw2).unwrap_err(),
        ParseError::BadAttribute(attr::MESSAGE_INTEGRITY)
    );
    // Something after FINGERPRINT.
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, method::BINDING, Class::Request, [1; 12]);
    w.fingerprint().attr(attr::SOFTWARE, b"late");
    let raw3 = w.finish().to_vec();
    assert_eq!(
        Message::parse(&raw3).unwrap_err(),
        ParseError::FingerprintNotLast
    );
}

#[test]
fn message_type_round_trips_for_every_method_and_class() {
    for m in 0..0x1000u16 {
        for c in [
            Class::Request,
            Class::Indication,
            Class::Success,
            Class::Error,
        ] {
            assert_eq!(split_type(message_type(m, c)), (m, c));
        }
    }
    assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
    assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
    assert_eq!(message_type(method::SEND, Class::Indication), 0x0016);
}

#[test]
fn error_code_round_trip() {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, method::ALLOCATE, Class::Error, [1; 12]);
    w.error_code(438, "Stale Nonce");
    let raw = w.finish().to_vec();
    let m = Message::parse(&raw).unwrap();
    assert_eq!(
        decode_error_code(m.get(attr::ERROR_CODE).unwrap()),
        Some((438, "Stale Nonce"))
    );
}

#[test]
fn channel_data_parse() {
    assert_eq!(
        channel_data::parse(&[0x40, 0x00, 0x00, 0x02, 9, 8, 0, 0]),
        Some((0x4000, &[9u8, 8][..]))
    );
    assert_eq!(channel_data::parse(&[0x40, 0x00, 0x00, 0x05, 1]), None);
    assert_eq!(channel_data::parse(&[0x40]), None);
    assert_eq!(
        channel_data::parse(&[0x4F, 0xFF, 0x00, 0x00]),
        Some((0x4FFF, &[][..]))
    );
    // RFC 5766 §11's numbers above RFC 8656 §12's range are ChannelData too.
    assert_eq!(
        channel_data::parse(&[0x50, 0x00, 0x00, 0x01, 7]),
        Some((0x5000, &[7u8][..]))
    );
    assert_eq!(
        channel_data::parse(&[0x7F, 0xFF, 0x00, 0x00]),
        Some((0x7FFF, &[][..]))
    );
    // Top bits 00 (STUN), 10 and 11 are not ChannelData.
    for first in [0x3F, 0x80, 0xBF, 0xC0, 0xFF] {
        assert_eq!(
            channel_data::parse(&[first, 0xFF, 0x00, 0x00]),
            None,
            "{first:#x}"
        );
    }
    assert!(channel_data::is_bindable(0x7FFF, false));
    assert!(!channel_data::is_bindable(0x7FFF, true));
    assert!(channel_data::is_bindable(0x4FFF, true));
    assert!(!channel_data::is_bindable(0x5000, true));
    assert!(!channel_data::is_bindable(0x3FFF, false));
    assert!(!channel_data::is_bindable(0x8000, false));
}

#[test]
fn framing_cuts_stun_and_padded_channel_data() {
    use framing::{Frame, next_frame};
    let raw = hex(SAMPLE_REQUEST);
    assert_eq!(next_frame(&raw), Frame::Complete(raw.len()));
    assert_eq!(next_frame(&raw[..3]), Frame::NeedMore(4));
    assert_eq!(next_frame(&raw[..30]), Frame::NeedMore(raw.len()));
    assert_eq!(
        next_frame(&[0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]),
        Frame::NeedMore(12)
    );
    assert_eq!(
        next_frame(&[0x40, 0x01, 0x00, 0x04, 1, 2, 3, 4, 0x40]),
        Frame::Complete(8)
    );
    // RFC 5766 §11's numbers cut the same way on streams.
    assert_eq!(
        next_frame(&[0x7F, 0xFF, 0x00, 0x01, 9, 0, 0, 0, 0x50]),
        Frame::Complete(8)
    );
    assert_eq!(next_frame(&[0x50, 0x00, 0x00, 0x05]), Frame::NeedMore(12));
    assert_eq!(next_frame(&[0x80, 0, 0, 0]), Frame::Invalid);
    assert_eq!(next_frame(&[0xFF, 0, 0, 0]), Frame::Invalid);
    assert_eq!(next_frame(&[0x00, 0x01, 0x00, 0x03]), Frame::Invalid);
}

#[test]
fn every_truncation_and_bit_flip_of_the_vectors_is_handled() {
    for v in [
        SAMPLE_REQUEST,
        SAMPLE_IPV4_RESPONSE,
        SAMPLE_IPV6_RESPONSE,
        SAMPLE_LONG_TERM,
    ] {
        let raw = hex(v);
        for n in 0..raw.len() {
            let _ = Message::parse(&raw[..n]);
        }
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut b = raw.clone();
                b[i] ^= 1 << bit;
                if let Ok(m) = Message::parse(&b) {
                    let _ = m.attributes().count();
                    let _ = m.verify_integrity(b"k");
                    let _ = m.xor_address(attr::XOR_MAPPED_ADDRESS);
                }
            }
        }
    }
}

/// The in-place Data indication is the message the writer builds, byte for byte, for every
/// payload length's padding and both families.
#[test]
fn data_indication_in_place_matches_the_writer() {
    for peer in ["203.0.113.9:4000", "[2001:db8::9]:4000"] {
        let peer: std::net::SocketAddr = peer.parse().unwrap();
        for len in [0usize, 1, 2, 3, 4, 5, 160] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let txid = [len as u8; 12];
            let mut want = Vec::new();
            MessageWriter::new(&mut want, method::DATA, Class::Indication, txid)
                .xor_address(attr::XOR_PEER_ADDRESS, peer)
                .attr(attr::DATA, &payload);
            let mut buf = vec![0xEE; 48 + len + 3];
            buf[48..48 + len].copy_from_slice(&payload);
            let r = super::data_indication_in_place(&mut buf, 48..48 + len, txid, peer).unwrap();
            assert_eq!(&buf[r], &want[..], "{peer} {len}");
            // Too little room before or after: refused, nothing written out of bounds.
            let mut tight = vec![0u8; 8 + len];
            assert!(super::data_indication_in_place(&mut tight, 8..8 + len, txid, peer).is_none());
        }
    }
}
