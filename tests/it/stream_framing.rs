//! Stream framing (RFC 8656 §12.5): a request split across many TCP writes is answered once
//! whole; several messages in one write are each answered, in order; frames of tens of
//! kilobytes pass; bytes that cannot start a STUN or ChannelData message close the
//! connection.

use crate::common;

use std::time::Duration;

use common::stream::{StreamClient, build_request, channel_data_padded};
use common::{TestServer, peer_attr, peer_socket, udp_transport};
use stun::attributes::ATTR_CHANNEL_NUMBER;
use stun::message::{METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND, Message};

fn txid_of(frame: &[u8]) -> [u8; 12] {
    let mut m = Message::new();
    m.unmarshal_binary(frame).expect("a STUN message");
    m.transaction_id.0
}

#[test]
fn split_writes_and_many_messages_per_write() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);
    let mut c = StreamClient::tcp(server.addr);

    // One Binding request written a byte at a time (TCP_NODELAY: separate segments).
    let req = build_request(METHOD_BINDING, &[], None);
    for b in &req.raw {
        c.send_raw(&[*b]);
        std::thread::sleep(Duration::from_millis(1));
    }
    let f = c.recv_frame().expect("a response to the split request");
    assert_eq!(txid_of(&f), req.transaction_id.0);

    // Ten requests in one write: ten responses, in order.
    let reqs: Vec<_> = (0..10)
        .map(|_| build_request(METHOD_BINDING, &[], None))
        .collect();
    let mut all = Vec::new();
    for r in &reqs {
        all.extend_from_slice(&r.raw);
    }
    c.send_raw(&all);
    for r in &reqs {
        let f = c.recv_frame().expect("one response per request");
        assert_eq!(txid_of(&f), r.transaction_id.0);
    }

    // ChannelData frames packed together, the last one split across two writes.
    assert_eq!(c.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    let bind = c.request(
        METHOD_CHANNEL_BIND,
        &[
            (ATTR_CHANNEL_NUMBER, vec![0x40, 0x00, 0, 0]),
            peer_attr(peer_addr),
        ],
    );
    assert_eq!(bind.code(), None);
    let payloads: Vec<Vec<u8>> = (1..=6).map(|n| vec![n as u8; n * 3]).collect();
    let mut packed = Vec::new();
    for p in &payloads {
        packed.extend(channel_data_padded(0x4000, p));
    }
    let cut = packed.len() - 3;
    c.send_raw(&packed[..cut]);
    std::thread::sleep(Duration::from_millis(20));
    c.send_raw(&packed[cut..]);
    let mut buf = vec![0u8; 65536];
    for p in &payloads {
        let (n, _) = peer
            .recv_from(&mut buf)
            .expect("each packed ChannelData is relayed");
        assert_eq!(&buf[..n], &p[..]);
    }

    // Frames far larger than one read, in halves: 30001 bytes of ChannelData, then a Send
    // indication of 40000 bytes.
    let big: Vec<u8> = (0..30_001u32).map(|i| (i % 251) as u8).collect();
    let frame = channel_data_padded(0x4000, &big);
    let (a, b) = frame.split_at(frame.len() / 2);
    c.send_raw(a);
    std::thread::sleep(Duration::from_millis(20));
    c.send_raw(b);
    let (n, _) = peer
        .recv_from(&mut buf)
        .expect("the large ChannelData is relayed");
    assert_eq!(&buf[..n], &big[..]);
    let big2: Vec<u8> = (0..40_000u32).map(|i| (i % 13) as u8).collect();
    c.send_raw(&common::send_indication(peer_addr, &big2));
    let (n, _) = peer
        .recv_from(&mut buf)
        .expect("the large Send indication is relayed");
    assert_eq!(&buf[..n], &big2[..]);
}

#[test]
fn garbage_closes_the_connection() {
    let server = TestServer::start("127.0.0.1", &[]);
    let mut c = StreamClient::tcp(server.addr);
    // 0xC0: neither STUN (00) nor ChannelData (01) in the top two bits.
    c.send_raw(&[0xC0, 0, 0, 4, 1, 2, 3, 4]);
    assert!(
        c.closed_within(Duration::from_secs(10)),
        "server closes a broken stream"
    );
    // The server is still serving others.
    let mut d = StreamClient::tcp(server.addr);
    let req = build_request(METHOD_BINDING, &[], None);
    d.send_raw(&req.raw);
    assert!(d.recv_frame().is_some());
}
