//! A client that stops reading does not make the server's memory grow: its write queue is
//! bounded (`tcp.write-queue-bytes`), messages past it are dropped whole, the stream stays in
//! frame, and the client gets fresh data once it reads again.

use crate::common;

use std::time::{Duration, Instant};

use common::stream::{StreamClient, TempDir, relayed, rss_kib, start_with_config};
use common::{parse_data_indication, peer_attr, peer_socket, udp_transport};
use stun::message::{METHOD_ALLOCATE, METHOD_CREATE_PERMISSION};

const FLOOD: usize = 30_000;
const SIZE: usize = 1000;

#[test]
fn slow_reader_is_bounded() {
    let dir = TempDir::new("slow-reader");
    let server = start_with_config(
        &dir,
        "[tcp]\nwrite-queue-bytes = 65600\n",
        &["--allow-peer", "127.0.0.1/32"],
    );
    let mut c = StreamClient::tcp(server.addr);
    let alloc = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(alloc.code(), None);
    let relay = relayed(&alloc);
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(
        c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer_addr)])
            .code(),
        None
    );

    let before = rss_kib(server.pid());
    let payload = vec![0x5A; SIZE];
    // Paced so the relay socket's receive buffer does not do the dropping for us.
    for i in 0..FLOOD {
        let _ = peer.send_to(&payload, relay);
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Let the server work through what the relay socket holds (Binding round trips over UDP
    // go through the same workers).
    let probe = common::RawClient::new(server.addr, "alice", "wonderland");
    for _ in 0..20 {
        probe.send_raw(&common::binding_request());
        let _ = probe.recv_raw();
    }
    let after = rss_kib(server.pid());
    assert!(
        after < before + 12 * 1024,
        "RSS grew from {before} KiB to {after} KiB for a client that does not read"
    );

    // Now read: every frame is a whole Data indication; some were dropped.
    let mut got = 0usize;
    peer.send_to(b"final", relay).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_final = false;
    while Instant::now() < deadline {
        let f = c.recv_frame().expect("a frame");
        let (from, data) = parse_data_indication(&f).expect("the stream stays in frame");
        assert_eq!(from, peer_addr);
        if data == b"final" {
            saw_final = true;
            break;
        }
        assert_eq!(data.len(), SIZE);
        got += 1;
    }
    if !saw_final {
        // The final datagram may itself have been dropped while the queue was full: send
        // another now that the client reads.
        peer.send_to(b"final", relay).unwrap();
    }
    assert!(
        got < FLOOD,
        "messages past the queue were dropped ({got} delivered)"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !saw_final && Instant::now() < deadline {
        let f = c.recv_frame().expect("a frame");
        let (_, data) = parse_data_indication(&f).expect("in frame");
        saw_final = data == b"final";
    }
    assert!(saw_final, "the reader gets fresh data again");
}
