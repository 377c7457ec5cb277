//! Reading relayed payloads without decrypting them: the RFC 7983 demultiplexer (by the first
//! byte) and the few header fields that SRTP (RFC 3711 §3.1: the RTP header stays in clear),
//! SRTCP (its first 8 bytes) and ICE's STUN Binding transactions leave readable. Every reader
//! is bounds-checked, never panics and keeps nothing of the payload.

/// What a relayed payload is, by its first byte ([RFC 7983 §7](https://www.rfc-editor.org/rfc/rfc7983#section-7)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// 0-3: STUN (ICE checks, consent freshness).
    Stun = 0,
    /// 20-63: DTLS (the handshake, and SCTP data channels inside it).
    Dtls = 1,
    /// 128-191 whose second byte is not an RTCP packet type.
    Rtp = 2,
    /// 128-191 with a second byte of 192-223 (RFC 5761 §4: RTCP packet types).
    Rtcp = 3,
    /// Anything else (ZRTP's 16-19, the TURN channel range, or not WebRTC at all).
    Other = 4,
}

/// Number of [`Class`] values.
pub const CLASSES: usize = 5;

impl Class {
    pub const ALL: [Class; CLASSES] = [
        Class::Stun,
        Class::Dtls,
        Class::Rtp,
        Class::Rtcp,
        Class::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Stun => "stun",
            Class::Dtls => "dtls",
            Class::Rtp => "rtp",
            Class::Rtcp => "rtcp",
            Class::Other => "other",
        }
    }
}

/// Classifies a payload by its first byte (and, for RTP/RTCP, its second).
pub fn classify(p: &[u8]) -> Class {
    match p.first() {
        Some(0..=3) => Class::Stun,
        Some(20..=63) => Class::Dtls,
        Some(128..=191) => match p.get(1) {
            Some(192..=223) => Class::Rtcp,
            _ => Class::Rtp,
        },
        _ => Class::Other,
    }
}

/// The fields of an RTP fixed header (RFC 3550 §5.1) the estimators use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// Reads an RTP header: version 2, at least 12 bytes plus its CSRC list. None otherwise.
pub fn rtp_header(p: &[u8]) -> Option<RtpHeader> {
    let h: &[u8; 12] = p.get(..12)?.try_into().ok()?;
    if h[0] >> 6 != 2 {
        return None;
    }
    let csrcs = usize::from(h[0] & 0x0F);
    if p.len() < 12 + 4 * csrcs {
        return None;
    }
    Some(RtpHeader {
        marker: h[1] & 0x80 != 0,
        payload_type: h[1] & 0x7F,
        seq: u16::from_be_bytes([h[2], h[3]]),
        timestamp: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        ssrc: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
    })
}

/// The first RTCP packet's type and its sender's SSRC (RFC 3550 §6.4): all SRTCP leaves in
/// clear of a compound packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcpHeader {
    pub packet_type: u8,
    pub sender: u32,
}

/// Reads the first RTCP header: version 2 and at least 8 bytes. None otherwise.
pub fn rtcp_header(p: &[u8]) -> Option<RtcpHeader> {
    let h: &[u8; 8] = p.get(..8)?.try_into().ok()?;
    if h[0] >> 6 != 2 {
        return None;
    }
    Some(RtcpHeader {
        packet_type: h[1],
        sender: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
    })
}

/// RTCP packet types counted by name (RFC 3550 §12.1, RFC 4585 §6.1, RFC 3611); anything
/// else is "other".
pub const RTCP_TYPES: [(u8, &str); 8] = [
    (200, "sr"),
    (201, "rr"),
    (202, "sdes"),
    (203, "bye"),
    (204, "app"),
    (205, "rtpfb"),
    (206, "psfb"),
    (207, "xr"),
];
/// Slots for [`RTCP_TYPES`] plus "other".
pub const RTCP_SLOTS: usize = RTCP_TYPES.len() + 1;

/// The counting slot of an RTCP packet type.
pub fn rtcp_slot(packet_type: u8) -> usize {
    match packet_type {
        200..=207 => usize::from(packet_type - 200),
        _ => RTCP_TYPES.len(),
    }
}

/// The label of an RTCP slot.
pub fn rtcp_name(slot: usize) -> &'static str {
    RTCP_TYPES.get(slot).map_or("other", |(_, n)| n)
}

/// The class of a STUN Binding message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingClass {
    Request,
    Success,
    Error,
}

/// A STUN Binding message crossing the relay (an ICE check, RFC 8445 §7.2, or a consent
/// check, RFC 7675).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub class: BindingClass,
    pub txid: [u8; 12],
}

/// RFC 8489 §5: the magic cookie.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// RFC 8489 §18.2: the Binding method.
const BINDING: u16 = 0x0001;

/// Reads a STUN header when it is a Binding request or response: the two zero bits, the
/// magic cookie, a length that is a multiple of 4 and fits. Indications and other methods
/// give None. Only the header is read; attributes (and their integrity) are the endpoints'.
pub fn stun_binding(p: &[u8]) -> Option<Binding> {
    let h: &[u8; 20] = p.get(..20)?.try_into().ok()?;
    if h[0] & 0xC0 != 0 || h[4..8] != MAGIC_COOKIE {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if len % 4 != 0 || 20 + len > p.len() {
        return None;
    }
    let ty = u16::from_be_bytes([h[0], h[1]]);
    // RFC 8489 §5: the class is bits C1 (0x0100) and C0 (0x0010), the rest is the method.
    if ty & !0x0110 != BINDING {
        return None;
    }
    let class = match ty & 0x0110 {
        0x0000 => BindingClass::Request,
        0x0100 => BindingClass::Success,
        0x0110 => BindingClass::Error,
        _ => return None,
    };
    let mut txid = [0u8; 12];
    txid.copy_from_slice(&h[8..20]);
    Some(Binding { class, txid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_ranges_follow_rfc7983() {
        assert_eq!(classify(&[]), Class::Other);
        assert_eq!(classify(&[0]), Class::Stun);
        assert_eq!(classify(&[3]), Class::Stun);
        assert_eq!(classify(&[4]), Class::Other);
        assert_eq!(classify(&[16]), Class::Other); // ZRTP
        assert_eq!(classify(&[20]), Class::Dtls);
        assert_eq!(classify(&[63]), Class::Dtls);
        assert_eq!(classify(&[64]), Class::Other); // TURN channel
        assert_eq!(classify(&[128]), Class::Rtp);
        assert_eq!(classify(&[0x80, 111]), Class::Rtp);
        assert_eq!(classify(&[0x80, 0x80 | 111]), Class::Rtp); // marker set
        assert_eq!(classify(&[0x80, 200]), Class::Rtcp);
        assert_eq!(classify(&[0x81, 223]), Class::Rtcp);
        assert_eq!(classify(&[0x80, 224]), Class::Rtp);
        assert_eq!(classify(&[191, 0]), Class::Rtp);
        assert_eq!(classify(&[192, 0]), Class::Other);
    }

    #[test]
    fn rtp_header_fields_and_bounds() {
        let mut p = [0u8; 16];
        p[0] = 0x81; // V=2, CC=1
        p[1] = 0x80 | 96;
        p[2..4].copy_from_slice(&0xFFFEu16.to_be_bytes());
        p[4..8].copy_from_slice(&0xDEADBEEFu32.to_be_bytes());
        p[8..12].copy_from_slice(&42u32.to_be_bytes());
        let h = rtp_header(&p).unwrap();
        assert_eq!(
            h,
            RtpHeader {
                marker: true,
                payload_type: 96,
                seq: 0xFFFE,
                timestamp: 0xDEADBEEF,
                ssrc: 42
            }
        );
        // The CSRC list must fit.
        assert_eq!(rtp_header(&p[..15]), None);
        assert_eq!(rtp_header(&p[..11]), None);
        p[0] = 0x40; // version 1
        assert_eq!(rtp_header(&p), None);
    }

    #[test]
    fn rtcp_header_reads_type_and_sender() {
        let p = [0x80, 200, 0, 6, 0, 0, 0, 7];
        assert_eq!(
            rtcp_header(&p),
            Some(RtcpHeader {
                packet_type: 200,
                sender: 7
            })
        );
        assert_eq!(rtcp_header(&p[..7]), None);
        assert_eq!(rtcp_slot(200), 0);
        assert_eq!(rtcp_slot(207), 7);
        assert_eq!(rtcp_slot(199), 8);
        assert_eq!(rtcp_name(8), "other");
    }

    fn stun(ty: u16, len: u16, total: usize) -> Vec<u8> {
        let mut m = vec![0u8; total];
        m[0..2].copy_from_slice(&ty.to_be_bytes());
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m[4..8].copy_from_slice(&MAGIC_COOKIE);
        for (i, b) in m[8..20].iter_mut().enumerate() {
            *b = i as u8;
        }
        m
    }

    #[test]
    fn binding_classes_and_rejections() {
        let r = stun_binding(&stun(0x0001, 0, 20)).unwrap();
        assert_eq!(r.class, BindingClass::Request);
        assert_eq!(r.txid[11], 11);
        assert_eq!(
            stun_binding(&stun(0x0101, 4, 24)).unwrap().class,
            BindingClass::Success
        );
        assert_eq!(
            stun_binding(&stun(0x0111, 0, 20)).unwrap().class,
            BindingClass::Error
        );
        assert_eq!(stun_binding(&stun(0x0011, 0, 20)), None); // indication
        assert_eq!(stun_binding(&stun(0x0003, 0, 20)), None); // Allocate
        assert_eq!(stun_binding(&stun(0x0001, 8, 24)), None); // length past the end
        assert_eq!(stun_binding(&stun(0x0001, 2, 24)), None); // not a multiple of 4
        assert_eq!(stun_binding(&stun(0x0001, 0, 20)[..19]), None);
        let mut m = stun(0x0001, 0, 20);
        m[4] = 0;
        assert_eq!(stun_binding(&m), None); // no cookie
    }
}
