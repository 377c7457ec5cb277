//! A legitimate allocation keeps relaying with no loss while garbage floods the listener
//! (random bytes, truncated STUN, bad ChannelData, unauthenticated requests from the client's
//! own address) and a stranger floods its relay port. Every echo round must succeed on its
//! first try. The flood is interleaved with the rounds so it is bounded and cannot overflow a
//! socket buffer on a busy machine (this checks that garbage is harmless, not throughput).

use crate::common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{
    RawClient, TestServer, parse_data_indication, peer_attr, peer_socket, send_indication,
    udp_transport,
};
use stun::attributes::ATTR_XOR_RELAYED_ADDRESS;
use stun::message::{METHOD_ALLOCATE, METHOD_CREATE_PERMISSION};

const ROUNDS: usize = 150;
const GARBAGE_PER_ROUND: usize = 40;

struct Xorshift(u64);
impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn garbage(&mut self, i: usize) -> Vec<u8> {
        let len = (self.next() % 300) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
        match i % 4 {
            0 if d.len() >= 20 => {
                // STUN-looking header with a lying length.
                d[0] = 0x00;
                d[1] = 0x03;
                d[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
            }
            1 if d.len() >= 4 => {
                // ChannelData for a channel that is not bound, or with a lying length.
                d[0] = 0x40;
            }
            _ => {}
        }
        d
    }
}

#[test]
fn relaying_survives_garbage_with_no_loss() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    c.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let r = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(r.code(), None);
    let relayed = r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS)[0];
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(
        c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer_addr)])
            .code(),
        None
    );

    let garbage_sockets: Vec<UdpSocket> = ["127.0.0.1", "127.0.0.21", "127.0.0.22"]
        .iter()
        .map(|ip| UdpSocket::bind((*ip, 0)).unwrap())
        .collect();
    let stranger = UdpSocket::bind("127.0.0.23:0").unwrap();
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    let mut buf = vec![0u8; 2048];
    let mut delivered = 0;
    for round in 0..ROUNDS {
        for i in 0..GARBAGE_PER_ROUND {
            let g = rng.garbage(i);
            let _ = garbage_sockets[i % garbage_sockets.len()].send_to(&g, server.addr);
            if i % 4 == 0 {
                // A stranger without permission floods the relay port.
                let _ = stranger.send_to(&g, relayed);
            }
        }
        let out = format!("client->peer {round}");
        c.send_raw(&send_indication(peer_addr, out.as_bytes()));
        let (n, from) = peer.recv_from(&mut buf).expect("peer receives, first try");
        assert_eq!(&buf[..n], out.as_bytes(), "round {round}");
        assert_eq!(from, relayed);

        let back = format!("peer->client {round}");
        peer.send_to(back.as_bytes(), relayed).unwrap();
        // The client's socket sees only the server: the Data indication must be next.
        let raw = c.recv_raw().expect("client receives, first try");
        let (p, data) = parse_data_indication(&raw).expect("a Data indication");
        assert_eq!(
            (p, data.as_slice()),
            (peer_addr, back.as_bytes()),
            "round {round}"
        );
        delivered += 1;
    }
    // Nothing from the stranger or the garbage reached the peer.
    peer.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        peer.recv_from(&mut buf).is_err(),
        "unexpected datagram at the peer"
    );
    println!(
        "{delivered} echo rounds, {} garbage datagrams",
        ROUNDS * GARBAGE_PER_ROUND * 5 / 4
    );
    assert_eq!(delivered, ROUNDS);
}
