//! Channel numbers through the real server. By default ChannelBind grants RFC 5766 §11's
//! 0x4000-0x7FFF (coturn 4.6's `turnutils_uclient` and other older clients pick at random
//! from it): 0x7FFF and 0x5000 relay both ways over UDP and TCP, and between two allocations
//! of the server. With `--strict-channel-numbers` only RFC 8656 §12's 0x4000-0x4FFF is
//! granted: 0x5000 gets 400, and ChannelData for it on a stream is dropped without breaking
//! the framing. A reload (SIGHUP) switches it for the ChannelBinds that follow, and a channel
//! bound before goes on relaying.

use crate::common;
use crate::lifecycle_util;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::stream::{StreamClient, channel_data_padded, relayed};
use common::{
    RawClient, TestServer, allocate_same_family, binding_request, peer_attr, peer_socket,
    udp_transport,
};
use stun::attributes::ATTR_CHANNEL_NUMBER;
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND};

fn number_attr(channel: u16) -> (stun::attributes::AttrType, Vec<u8>) {
    let [hi, lo] = channel.to_be_bytes();
    (ATTR_CHANNEL_NUMBER, vec![hi, lo, 0, 0])
}

fn bind(c: &mut RawClient, channel: u16, peer: SocketAddr) -> Option<u16> {
    c.request(
        METHOD_CHANNEL_BIND,
        &[number_attr(channel), peer_attr(peer)],
    )
    .code()
}

fn bind_stream(c: &mut StreamClient, channel: u16, peer: SocketAddr) -> Option<u16> {
    c.request(
        METHOD_CHANNEL_BIND,
        &[number_attr(channel), peer_attr(peer)],
    )
    .code()
}

fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = channel.to_be_bytes().to_vec();
    v.extend((data.len() as u16).to_be_bytes());
    v.extend(data);
    v
}

/// The next ChannelData datagram to `c` (about five seconds at most): (number, data).
fn recv_channel_data(c: &RawClient) -> Option<(u16, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let Some(raw) = c.recv_raw() else {
            continue;
        };
        if raw.len() >= 4 && raw[0] & 0xC0 == 0x40 {
            let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
            assert!(raw.len() >= 4 + len, "ChannelData shorter than its length");
            return Some((
                u16::from_be_bytes([raw[0], raw[1]]),
                raw[4..4 + len].to_vec(),
            ));
        }
    }
    None
}

/// Client -> peer over `channel` and back, `rounds` times.
fn echo_over_udp(c: &RawClient, channel: u16, peer: &UdpSocket, relay: SocketAddr) {
    let mut buf = [0u8; 1500];
    for i in 0..3 {
        let out = format!("to the peer on {channel:#06x}, {i}");
        c.send_raw(&channel_data(channel, out.as_bytes()));
        let (n, from) = peer.recv_from(&mut buf).expect("the peer receives");
        assert_eq!(&buf[..n], out.as_bytes());
        assert_eq!(from, relay);
        let back = format!("from the peer on {channel:#06x}, {i}");
        peer.send_to(back.as_bytes(), relay).unwrap();
        assert_eq!(
            recv_channel_data(c),
            Some((channel, back.into_bytes())),
            "ChannelData back on {channel:#06x}"
        );
    }
}

#[test]
fn channels_up_to_0x7fff_relay_both_ways_over_udp() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let relay = allocate_same_family(&mut c);
    let (p, q) = (peer_socket("127.0.0.1"), peer_socket("127.0.0.1"));
    let (pa, qa) = (p.local_addr().unwrap(), q.local_addr().unwrap());
    assert_eq!(bind(&mut c, 0x7FFF, pa), None, "bind 0x7FFF");
    assert_eq!(bind(&mut c, 0x5000, qa), None, "bind 0x5000");
    // 0x8000 and up are not channel numbers (their first byte is not TURN's).
    assert_eq!(bind(&mut c, 0x8000, qa), Some(400), "bind 0x8000");
    echo_over_udp(&c, 0x7FFF, &p, relay);
    echo_over_udp(&c, 0x5000, &q, relay);
}

#[test]
fn channels_up_to_0x7fff_relay_both_ways_over_tcp() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);
    let mut c = StreamClient::tcp(server.addr);
    let alloc = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(alloc.code(), None, "allocate over TCP");
    let relay = relayed(&alloc);
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(bind_stream(&mut c, 0x7FFF, peer_addr), None, "bind 0x7FFF");
    let mut buf = [0u8; 1500];
    // Odd lengths: the padding is cut correctly both ways.
    for i in 0..4usize {
        let out = vec![b'a' + i as u8; 5 + i];
        c.send_raw(&channel_data_padded(0x7FFF, &out));
        let (n, from) = peer.recv_from(&mut buf).expect("the peer receives");
        assert_eq!((&buf[..n], from), (&out[..], relay));
        let back = vec![b'z' - i as u8; 1 + i];
        peer.send_to(&back, relay).unwrap();
        let f = c.recv_frame().expect("ChannelData");
        assert_eq!(&f[..2], &[0x7F, 0xFF]);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]) as usize, back.len());
        assert_eq!(f.len() % 4, 0, "padded on a stream");
        assert_eq!(&f[4..4 + back.len()], &back[..]);
    }
    c.send_raw(&binding_request());
    let f = c.recv_frame().expect("binding response");
    assert_eq!(&f[..2], &[0x01, 0x01], "still in frame");
}

/// Two allocations of the same server, each with a channel to the other's relayed address:
/// the datagram between them takes the server's internal path and arrives with the
/// receiver's number.
#[test]
fn channels_up_to_0x7fff_between_two_allocations() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);
    let mut a = RawClient::new(server.addr, "alice", "wonderland");
    let mut b = RawClient::new(server.addr, "alice", "wonderland");
    let (ra, rb) = (allocate_same_family(&mut a), allocate_same_family(&mut b));
    assert_eq!(bind(&mut a, 0x7FFF, rb), None);
    assert_eq!(bind(&mut b, 0x6000, ra), None);
    for i in 0..3 {
        let m = format!("a to b {i}");
        a.send_raw(&channel_data(0x7FFF, m.as_bytes()));
        assert_eq!(recv_channel_data(&b), Some((0x6000, m.into_bytes())));
        let m = format!("b to a {i}");
        b.send_raw(&channel_data(0x6000, m.as_bytes()));
        assert_eq!(recv_channel_data(&a), Some((0x7FFF, m.into_bytes())));
    }
}

#[test]
fn strict_channel_numbers_refuse_0x5000_over_udp_and_tcp() {
    let server = TestServer::start(
        "127.0.0.1",
        &["--allow-peer", "127.0.0.1/32", "--strict-channel-numbers"],
    );
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let relay = allocate_same_family(&mut c);
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(bind(&mut c, 0x5000, peer_addr), Some(400), "bind 0x5000");
    assert_eq!(bind(&mut c, 0x7FFF, peer_addr), Some(400), "bind 0x7FFF");
    assert_eq!(bind(&mut c, 0x4FFF, peer_addr), None, "bind 0x4FFF");
    echo_over_udp(&c, 0x4FFF, &peer, relay);

    let mut t = StreamClient::tcp(server.addr);
    let alloc = t.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(alloc.code(), None, "allocate over TCP");
    let relay = relayed(&alloc);
    assert_eq!(bind_stream(&mut t, 0x5000, peer_addr), Some(400));
    assert_eq!(bind_stream(&mut t, 0x4000, peer_addr), None);
    // ChannelData on the refused number is dropped; the stream stays in frame and the
    // bound number relays.
    t.send_raw(&channel_data_padded(0x5000, b"dropped"));
    t.send_raw(&channel_data_padded(0x4000, b"relayed"));
    let mut buf = [0u8; 1500];
    let (n, from) = peer.recv_from(&mut buf).expect("the peer receives");
    assert_eq!((&buf[..n], from), (&b"relayed"[..], relay));
    t.send_raw(&binding_request());
    let f = t.recv_frame().expect("binding response");
    assert_eq!(&f[..2], &[0x01, 0x01], "still in frame");
}

#[test]
fn reload_switches_strict_channel_numbers_for_new_channel_binds() {
    let scratch = lifecycle_util::Scratch::new("channel-numbers-reload");
    let config = |strict: bool| {
        format!(
            "[server]\nstrict-channel-numbers = {strict}\n\
             [auth]\nusers = [{{ name = \"alice\", password = \"wonderland\" }}]\n\
             [peers]\nallow = [\"127.0.0.1/32\"]\n"
        )
    };
    let path = scratch.write("turnd.toml", &config(false));
    let mut server = lifecycle_util::NotifiedServer::start(&scratch, &path, false);
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let relay = allocate_same_family(&mut c);
    let (p, q) = (peer_socket("127.0.0.1"), peer_socket("127.0.0.1"));
    let (pa, qa) = (p.local_addr().unwrap(), q.local_addr().unwrap());
    assert_eq!(bind(&mut c, 0x6000, pa), None, "bind 0x6000 before");

    scratch.write("turnd.toml", &config(true));
    let status = server.reload();
    assert!(status.contains("STATUS=config reloaded"), "{status}");
    assert_eq!(bind(&mut c, 0x5000, qa), Some(400), "bind 0x5000 after");
    assert_eq!(bind(&mut c, 0x4001, qa), None, "bind 0x4001 after");
    echo_over_udp(&c, 0x6000, &p, relay);
    echo_over_udp(&c, 0x4001, &q, relay);

    scratch.write("turnd.toml", &config(false));
    let status = server.reload();
    assert!(status.contains("STATUS=config reloaded"), "{status}");
    let r = peer_socket("127.0.0.1");
    assert_eq!(bind(&mut c, 0x7FFF, r.local_addr().unwrap()), None);
    echo_over_udp(&c, 0x7FFF, &r, relay);
}
