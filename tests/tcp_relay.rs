//! TURN over TCP (RFC 8656 §3.1): Binding, Allocate, CreatePermission, Send/Data indications
//! and ChannelBind/ChannelData to a UDP peer on loopback, all over one TCP connection on the
//! `--listen` port; ChannelData toward the client is padded to 4 bytes.

mod common;

use common::stream::{StreamClient, channel_data_padded, mapped, relayed};
use common::{
    TestServer, binding_request, parse_data_indication, peer_attr, peer_socket, udp_transport,
};
use stun::attributes::ATTR_CHANNEL_NUMBER;
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION};

/// Runs the whole relay path over `c`; shared by the TCP and TLS tests' shape.
fn relay_over(c: &mut StreamClient) {
    let alloc = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(alloc.code(), None, "allocate over the stream");
    assert_eq!(
        mapped(&alloc),
        c.local,
        "the mapped address is the TCP source"
    );
    let relay = relayed(&alloc);

    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(
        c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer_addr)])
            .code(),
        None
    );

    // Send indication -> peer; peer -> Data indication.
    c.send_raw(&common::send_indication(peer_addr, b"hello peer"));
    let mut buf = [0u8; 1500];
    let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
    assert_eq!(&buf[..n], b"hello peer");
    assert_eq!(from, relay);
    peer.send_to(b"hello client", relay).unwrap();
    let f = c.recv_frame().expect("Data indication");
    assert_eq!(
        parse_data_indication(&f),
        Some((peer_addr, b"hello client".to_vec()))
    );

    // Channel: odd lengths exercise the padding both ways.
    let reply = c.request(
        METHOD_CHANNEL_BIND,
        &[
            (ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0]),
            peer_attr(peer_addr),
        ],
    );
    assert_eq!(reply.code(), None, "channel bind");
    for i in 0..5usize {
        let msg = vec![b'a' + i as u8; 5 + i];
        c.send_raw(&channel_data_padded(0x4001, &msg));
        let (n, _) = peer
            .recv_from(&mut buf)
            .expect("peer receives ChannelData payload");
        assert_eq!(&buf[..n], &msg[..]);
        let back = vec![b'z' - i as u8; 1 + i];
        peer.send_to(&back, relay).unwrap();
        let f = c.recv_frame().expect("ChannelData");
        assert_eq!(&f[..2], &[0x40, 0x01]);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]) as usize, back.len());
        assert_eq!(f.len() % 4, 0, "padded to 4 on a stream");
        assert_eq!(&f[4..4 + back.len()], &back[..]);
    }
    // The stream is still in frame after the padded messages: a Binding gets its answer.
    let b = binding_request();
    c.send_raw(&b);
    let f = c.recv_frame().expect("binding response");
    assert_eq!(&f[..2], &[0x01, 0x01]);
}

#[test]
fn tcp_carries_allocation_permission_send_and_channels() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);
    let mut c = StreamClient::tcp(server.addr);
    relay_over(&mut c);
}
