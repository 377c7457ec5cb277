//! Channels: ChannelBind 0x4000 to a loopback peer, ChannelData both ways with that number,
//! an out-of-range number and a number already bound to another peer refused with 400; then
//! Refresh with LIFETIME 0 deletes the allocation and the next Refresh gets 437.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{RawClient, TestServer, peer_attr, peer_socket, udp_transport};
use stun::attributes::{ATTR_CHANNEL_NUMBER, ATTR_LIFETIME};
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_REFRESH};

fn channel_bind(c: &mut RawClient, channel: u16, peer: SocketAddr) -> Option<u16> {
    let [hi, lo] = channel.to_be_bytes();
    c.request(
        METHOD_CHANNEL_BIND,
        &[(ATTR_CHANNEL_NUMBER, vec![hi, lo, 0, 0]), peer_attr(peer)],
    )
    .code()
}

fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + data.len());
    v.extend(channel.to_be_bytes());
    v.extend((data.len() as u16).to_be_bytes());
    v.extend(data);
    v
}

/// Receives datagrams until a ChannelData message arrives (or about five seconds pass) and
/// returns (channel, data); the data is cut to the length field (padding dropped).
fn recv_channel_data(c: &RawClient) -> Option<(u16, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let Some(raw) = c.recv_raw() else {
            continue;
        };
        if raw.len() >= 4 && (0x40..=0x4F).contains(&raw[0]) {
            let channel = u16::from_be_bytes([raw[0], raw[1]]);
            let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
            assert!(raw.len() >= 4 + len, "ChannelData shorter than its length");
            return Some((channel, raw[4..4 + len].to_vec()));
        }
    }
    None
}

#[test]
fn channel_bind_relays_channel_data_and_refresh_zero_deletes() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    assert_eq!(
        c.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        None,
        "allocate"
    );
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    let other = peer_socket("127.0.0.1");
    let other_addr = other.local_addr().unwrap();

    assert_eq!(channel_bind(&mut c, 0x4000, peer_addr), None, "bind 0x4000");
    // Binding the same number to the same peer again refreshes it.
    assert_eq!(
        channel_bind(&mut c, 0x4000, peer_addr),
        None,
        "rebind 0x4000"
    );

    let mut buf = [0u8; 1500];
    for i in 0..5u32 {
        let msg = format!("over the channel {i}");
        c.send_raw(&channel_data(0x4000, msg.as_bytes()));
        let (n, relayed) = peer.recv_from(&mut buf).expect("the peer receives");
        assert_eq!(&buf[..n], msg.as_bytes());
        assert_eq!(relayed.ip().to_string(), "127.0.0.1");

        let reply = format!("back over the channel {i}");
        peer.send_to(reply.as_bytes(), relayed).unwrap();
        let (channel, data) = recv_channel_data(&c).expect("ChannelData");
        assert_eq!(channel, 0x4000);
        assert_eq!(data, reply.as_bytes());
    }

    assert_eq!(
        channel_bind(&mut c, 0x3FFF, other_addr),
        Some(400),
        "0x3FFF is below the channel range"
    );
    assert_eq!(
        channel_bind(&mut c, 0x4000, other_addr),
        Some(400),
        "0x4000 is already bound to another peer"
    );
    assert_eq!(
        channel_bind(&mut c, 0x4001, peer_addr),
        Some(400),
        "the peer already has channel 0x4000"
    );

    assert_eq!(
        c.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])])
            .code(),
        None,
        "Refresh with LIFETIME 0"
    );
    assert_eq!(
        c.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0x02, 0x58])])
            .code(),
        Some(437),
        "the allocation is gone"
    );
}
