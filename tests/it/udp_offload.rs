//! The UDP segmentation offloads through the real server. A burst of equal datagrams sent as
//! one GSO message reaches turnd's socket coalesced (GRO), is split back into its datagrams,
//! each handled on its own, and the relayed datagrams leave as GSO messages again. Every
//! datagram arrives once, whole and in order, in both directions, over a channel and as
//! Send/Data indications (whose padding the server writes in place: payload lengths here are
//! not multiples of 4). With `--no-udp-offload` the same traffic arrives the same way and the
//! offload counters stay at zero.

use crate::admin_http;
use crate::common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use admin_http::{TOKEN, channel_bind_attrs, channel_data, free_tcp_port, scrape_parsed};
use common::{
    RawClient, allocate_same_family, parse_data_indication, peer_attr, peer_socket, send_indication,
};
use stun::message::{METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION};

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
    let (mut name, namelen) = sockaddr(to);
    let mut iov = libc::iovec {
        iov_base: joined.as_ptr() as *mut libc::c_void,
        iov_len: joined.len(),
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: every pointer refers to a live local of the size given; the control buffer
    // (32 bytes, 8-aligned) holds CMSG_SPACE(2).
    let rc = unsafe {
        let mut h: libc::msghdr = std::mem::zeroed();
        h.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = namelen;
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

/// `to` as the kernel takes it.
fn sockaddr(to: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; the family-specific views written below
    // fit inside it.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        SocketAddr::V4(a) => {
            let v = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), v) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let v = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), v) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
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

/// turnd on `ip` with its admin listener on 127.0.0.1 (the metrics are read there).
fn start_with_admin_on(ip: &str, extra: &[&str]) -> (common::TestServer, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let admin_s = admin.to_string();
    let mut args = vec!["--admin-listen", admin_s.as_str(), "--admin-token", TOKEN];
    args.extend_from_slice(extra);
    (common::TestServer::start(ip, &args), admin)
}

/// Relays bursts both ways over a channel and with indications; returns whether the
/// offloads were in use (both directions) according to the server's counters.
fn relay_bursts(ip: &str, extra: &[&str], gso_from_tests: bool) -> (f64, f64) {
    let allow = if ip.contains(':') {
        "::1/128"
    } else {
        "127.0.0.1/32"
    };
    let mut args = vec!["--allow-peer", allow];
    args.extend_from_slice(extra);
    let (server, admin) = start_with_admin_on(ip, &args);
    let peer = peer_socket(ip);
    let peer_addr = peer.local_addr().unwrap();

    // Over a channel: peer to client, then client to peer.
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let relayed = allocate_same_family(&mut c);
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
    let relayed = allocate_same_family(&mut d);
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
    for ip in ["127.0.0.1", "::1"] {
        let (gro, gso) = relay_bursts(ip, &[], offload);
        check_counts(offload, gro, gso);
    }
}

fn check_counts(offload: bool, gro: f64, gso: f64) {
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
    for ip in ["127.0.0.1", "::1"] {
        let (gro, gso) = relay_bursts(ip, &["--no-udp-offload"], offload);
        assert_eq!((gro, gso), (0.0, 0.0), "no offload used");
    }
}
