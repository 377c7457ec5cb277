//! The UDP segmentation offloads through the real server. A burst of equal datagrams sent as
//! one GSO message reaches turnd's socket coalesced (GRO), is split back into its datagrams,
//! each handled on its own, and the relayed datagrams leave as GSO messages again. Every
//! datagram arrives once, whole and in order, in both directions, over a channel and as
//! Send/Data indications (whose padding the server writes in place: payload lengths here are
//! not multiples of 4). With `--no-udp-offload` the same traffic arrives the same way and the
//! offload counters stay at zero.

mod admin_http;
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use admin_http::{channel_bind_attrs, channel_data, scrape_parsed, start_with_admin};
use common::{
    RawClient, parse_data_indication, peer_attr, peer_socket, send_indication, udp_transport,
};
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION};

const BURST: usize = 16;
const CHANNEL: u16 = 0x4001;

/// Whether this kernel has UDP GSO and GRO (set on a throwaway socket, as turnd does).
fn kernel_offload() -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let set = |name: libc::c_int, v: libc::c_int| {
        // SAFETY: a pointer to a live c_int and its size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_UDP,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    set(libc::UDP_SEGMENT, 1200) && set(libc::UDP_GRO, 1)
}

/// Sends `datagrams` (all of one length) to `to` as one GSO message when `gso`, else one by one.
fn send_burst(sock: &UdpSocket, to: SocketAddr, datagrams: &[Vec<u8>], gso: bool) {
    if !gso {
        for d in datagrams {
            sock.send_to(d, to).unwrap();
        }
        return;
    }
    let size = datagrams[0].len();
    assert!(datagrams.iter().all(|d| d.len() == size));
    let joined: Vec<u8> = datagrams.concat();
    let SocketAddr::V4(v4) = to else {
        panic!("IPv4 only")
    };
    let mut name = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut iov = libc::iovec {
        iov_base: joined.as_ptr() as *mut libc::c_void,
        iov_len: joined.len(),
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: every pointer refers to a live local of the size given; the control buffer
    // (32 bytes, 8-aligned) holds CMSG_SPACE(2).
    let rc = unsafe {
        let mut h: libc::msghdr = std::mem::zeroed();
        h.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        h.msg_control = cbuf.as_mut_ptr().cast();
        h.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(&h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size as u16);
        libc::sendmsg(sock.as_raw_fd(), &h, 0)
    };
    assert_eq!(
        rc,
        joined.len() as isize,
        "GSO send: {}",
        std::io::Error::last_os_error()
    );
}

/// Reads datagrams from `sock` until `n` arrived (or a generous hang guard passes).
fn recv_n(sock: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while got.len() < n && Instant::now() < deadline {
        if let Ok((len, _)) = sock.recv_from(&mut buf) {
            got.push(buf[..len].to_vec());
        }
    }
    got
}

/// Payloads of `len` bytes, each its index repeated, so a byte of one datagram written into
/// another shows.
fn payloads(len: usize, base: u8) -> Vec<Vec<u8>> {
    (0..BURST).map(|i| vec![base + i as u8; len]).collect()
}

fn counter(m: &std::collections::HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| panic!("{name} exported"))
}

/// Allocates for `c` and returns the relayed address.
fn allocate(c: &mut RawClient) -> SocketAddr {
    let r = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(r.code(), None, "allocate");
    r.xor_addrs(stun::attributes::ATTR_XOR_RELAYED_ADDRESS)[0]
}

/// Relays bursts both ways over a channel and with indications; returns whether the
/// offloads were in use (both directions) according to the server's counters.
fn relay_bursts(extra: &[&str], gso_from_tests: bool) -> (f64, f64) {
    let mut args = vec!["--allow-peer", "127.0.0.1/32"];
    args.extend_from_slice(extra);
    let (server, admin) = start_with_admin(&args);
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();

    // Over a channel: peer to client, then client to peer.
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let relayed = allocate(&mut c);
    let r = c.request(METHOD_CHANNEL_BIND, &channel_bind_attrs(CHANNEL, peer_addr));
    assert_eq!(r.code(), None, "channel bind");
    let down = payloads(203, 1);
    send_burst(&peer, relayed, &down, gso_from_tests);
    let got = recv_n(&c.sock, BURST);
    let expected: Vec<Vec<u8>> = down.iter().map(|p| channel_data(CHANNEL, p)).collect();
    assert_eq!(
        got, expected,
        "ChannelData to the client, in order and whole"
    );

    let up = payloads(201, 40);
    let framed: Vec<Vec<u8>> = up.iter().map(|p| channel_data(CHANNEL, p)).collect();
    send_burst(&c.sock, server.addr, &framed, gso_from_tests);
    let got = recv_n(&peer, BURST);
    assert_eq!(got, up, "datagrams to the peer, in order and whole");

    // With indications (a second allocation, permission only): the server pads each Data
    // indication in place, right before the next datagram of a coalesced read.
    let mut d = RawClient::new(server.addr, "alice", "wonderland");
    let relayed = allocate(&mut d);
    let r = d.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer_addr)]);
    assert_eq!(r.code(), None, "create permission");
    let down = payloads(201, 80);
    send_burst(&peer, relayed, &down, gso_from_tests);
    let got: Vec<(SocketAddr, Vec<u8>)> = recv_n(&d.sock, BURST)
        .iter()
        .map(|raw| parse_data_indication(raw).expect("a Data indication"))
        .collect();
    let expected: Vec<(SocketAddr, Vec<u8>)> =
        down.iter().map(|p| (peer_addr, p.clone())).collect();
    assert_eq!(
        got, expected,
        "Data indications to the client, in order and whole"
    );

    let up = payloads(201, 120);
    let sends: Vec<Vec<u8>> = up.iter().map(|p| send_indication(peer_addr, p)).collect();
    send_burst(&d.sock, server.addr, &sends, gso_from_tests);
    let got = recv_n(&peer, BURST);
    assert_eq!(got, up, "Send indications to the peer, in order and whole");

    let m = scrape_parsed(admin);
    (
        counter(&m, "turnd_udp_gro_datagrams_total"),
        counter(&m, "turnd_udp_gso_datagrams_total"),
    )
}

#[test]
fn bursts_are_split_and_merged_and_arrive_whole_and_in_order() {
    let offload = kernel_offload();
    let (gro, gso) = relay_bursts(&[], offload);
    if offload {
        // Four bursts reached the server as GSO messages, each read whole (GRO) ...
        assert_eq!(gro, (4 * BURST) as f64, "datagrams read coalesced");
        // ... and each left as GSO messages: the four bursts, at least.
        assert!(
            gso >= (4 * BURST) as f64,
            "datagrams sent in GSO messages: {gso}"
        );
    } else {
        assert_eq!((gro, gso), (0.0, 0.0));
    }
}

#[test]
fn without_offload_the_same_traffic_arrives_the_same() {
    let offload = kernel_offload();
    // The test still sends its bursts as GSO messages when it can: the kernel splits them
    // before turnd's sockets, which do not ask for GRO.
    let (gro, gso) = relay_bursts(&["--no-udp-offload"], offload);
    assert_eq!((gro, gso), (0.0, 0.0), "no offload used");
}
