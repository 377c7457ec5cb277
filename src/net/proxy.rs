//! PROXY protocol version 2 (HAProxy's `proxy-protocol.txt`, §2.2): the header an L4 load
//! balancer puts in front of a TCP stream to carry the real client address.
//!
//! Only the binary version 2 is accepted; with `tcp.proxy-protocol` on, a connection whose
//! first bytes are not a valid v2 header is closed (the receiver must not guess).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature that starts every v2 header.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Signature, version/command, family/protocol, length.
pub const FIXED_LEN: usize = 16;
/// Longest address block plus TLVs accepted (a header is at most 16 + 65535 bytes; real
/// balancers send far less).
const MAX_BODY: usize = 4096;

/// What the fixed part of a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// PROXY (a relayed connection) rather than LOCAL (the balancer's own health check).
    pub proxied: bool,
    /// The family/protocol byte.
    pub family: u8,
    /// Bytes that follow the fixed part.
    pub len: usize,
}

/// Checks the fixed 16 bytes of a v2 header.
pub fn parse_head(b: &[u8; FIXED_LEN]) -> Result<Head, &'static str> {
    if b[..12] != SIGNATURE {
        return Err("not a PROXY v2 header");
    }
    if b[12] >> 4 != 2 {
        return Err("unsupported PROXY version");
    }
    let proxied = match b[12] & 0x0F {
        0 => false,
        1 => true,
        _ => return Err("unknown PROXY command"),
    };
    let len = u16::from_be_bytes([b[14], b[15]]) as usize;
    if len > MAX_BODY {
        return Err("PROXY header too long");
    }
    Ok(Head {
        proxied,
        family: b[13],
        len,
    })
}

/// The source address of a PROXY command's address block; None when the header carries no
/// usable address (LOCAL, UNSPEC, UNIX): then the connection's own address is used.
pub fn source_address(head: &Head, body: &[u8]) -> Result<Option<SocketAddr>, &'static str> {
    if !head.proxied {
        return Ok(None);
    }
    match head.family {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
        0x11 => {
            let a = body.get(..12).ok_or("PROXY IPv4 block too short")?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let port = u16::from_be_bytes([a[8], a[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
        0x21 => {
            let a = body.get(..36).ok_or("PROXY IPv6 block too short")?;
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port)))
        }
        0x00 => Ok(None),
        _ => Err("PROXY family is not TCP over IPv4 or IPv6"),
    }
}

/// Reads exactly one v2 header off the stream (nothing past it) and returns the client
/// address it names, if any.
pub async fn read_header<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Option<SocketAddr>> {
    let mut fixed = [0u8; FIXED_LEN];
    s.read_exact(&mut fixed).await?;
    let head = parse_head(&fixed).map_err(io::Error::other)?;
    let mut body = [0u8; MAX_BODY];
    // parse_head bounds the length; checked again so no header can index past the buffer.
    let body = body
        .get_mut(..head.len)
        .ok_or_else(|| io::Error::other("PROXY header too long"))?;
    s.read_exact(body).await?;
    source_address(&head, body).map_err(io::Error::other)
}

/// Builds a v2 PROXY header for a TCP connection from `src` to `dst` (same family), as a
/// load balancer would; used by tests.
pub fn encode(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut v = SIGNATURE.to_vec();
    v.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            v.push(0x11);
            v.extend(12u16.to_be_bytes());
            v.extend(s.ip().octets());
            v.extend(d.ip().octets());
            v.extend(s.port().to_be_bytes());
            v.extend(d.port().to_be_bytes());
        }
        (s, d) => {
            let six = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            v.push(0x21);
            v.extend(36u16.to_be_bytes());
            v.extend(six(s).octets());
            v.extend(six(d).octets());
            v.extend(s.port().to_be_bytes());
            v.extend(d.port().to_be_bytes());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> io::Result<Option<SocketAddr>> {
        let mut r = bytes;
        read_header(&mut r).await
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn round_trips_ipv4_and_ipv6() {
        let rt = rt();
        let src: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let dst: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        assert_eq!(rt.block_on(read(&encode(src, dst))).unwrap(), Some(src));
        let src6: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
        let dst6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        assert_eq!(rt.block_on(read(&encode(src6, dst6))).unwrap(), Some(src6));
    }

    #[test]
    fn reads_no_byte_past_the_header() {
        let rt = rt();
        let src: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let mut bytes = encode(src, "192.0.2.1:3478".parse().unwrap());
        bytes.extend(b"STUN");
        let mut r = &bytes[..];
        assert_eq!(rt.block_on(read_header(&mut r)).unwrap(), Some(src));
        assert_eq!(r, b"STUN");
    }

    #[test]
    fn local_and_tlvs() {
        let rt = rt();
        let mut local = SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0x00, 0x00]);
        assert_eq!(rt.block_on(read(&local)).unwrap(), None);
        // TLVs after the address block are skipped.
        let src: SocketAddr = "198.51.100.7:1".parse().unwrap();
        let mut h = encode(src, "192.0.2.1:2".parse().unwrap());
        h[15] += 4;
        h.extend([0x04, 0x00, 0x01, 0xAA]);
        assert_eq!(rt.block_on(read(&h)).unwrap(), Some(src));
    }

    #[test]
    fn rejects_garbage() {
        let rt = rt();
        // PROXY v1 text, a STUN header, a truncated header, a bad version, UDP, short block.
        assert!(
            rt.block_on(read(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"))
                .is_err()
        );
        assert!(rt.block_on(read(&[0u8; 20])).is_err());
        assert!(rt.block_on(read(&SIGNATURE)).is_err());
        let mut v1 = SIGNATURE.to_vec();
        v1.extend([0x11, 0x11, 0x00, 0x0C]);
        v1.extend([0u8; 12]);
        assert!(rt.block_on(read(&v1)).is_err());
        let mut udp = SIGNATURE.to_vec();
        udp.extend([0x21, 0x12, 0x00, 0x0C]);
        udp.extend([0u8; 12]);
        assert!(rt.block_on(read(&udp)).is_err());
        let mut short = SIGNATURE.to_vec();
        short.extend([0x21, 0x11, 0x00, 0x04]);
        short.extend([0u8; 4]);
        assert!(rt.block_on(read(&short)).is_err());
        let mut long = SIGNATURE.to_vec();
        long.extend([0x21, 0x11, 0xFF, 0xFF]);
        assert!(rt.block_on(read(&long)).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let rt = rt();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 {
                // A valid signature and version, so the rest of the parser is reached.
                let mut h = SIGNATURE.to_vec();
                h.push(0x20 | (next() % 3) as u8);
                h.push(next() as u8);
                h.extend(((next() % 48) as u16).to_be_bytes());
                h.extend(v);
                v = h;
            }
            let _ = rt.block_on(read(&v));
        }
    }
}
