//! An allocation limited by `--max-bps` and offered about four times its limit, in each
//! direction, is delivered at about the limit: bytes counted over a few seconds, with a wide
//! tolerance (0.5x to 1.5x of limit x time + burst), never a timing race. The excess is
//! dropped and counted (per allocation, by reason), not queued.

use crate::admin_http;
use crate::common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use admin_http::{channel_bind_attrs, channel_data, get_json, start_with_admin};
use common::{RawClient, peer_socket, udp_transport};
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND};

/// 800 kbit/s = 100,000 bytes/s each way.
const MAX_BPS: u64 = 800_000;
const RATE: f64 = (MAX_BPS / 8) as f64;
/// The default burst: a quarter second at the limit.
const BURST: f64 = RATE / 4.0;
const PAYLOAD: usize = 1000;
const WINDOW: Duration = Duration::from_secs(3);

/// Sends from `from` to `to` at about 4x the limit for [`WINDOW`] while a thread counts the
/// bytes `counter` receives; returns (offered bytes, delivered bytes, seconds sent).
fn offer(send: &dyn Fn(&[u8]), counter: UdpSocket, unwrap: fn(&[u8]) -> usize) -> (f64, f64, f64) {
    counter
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let delivered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (delivered, done) = (delivered.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            // Bounded: stops once the sender is done and a read times out, or after 30 s.
            let hang_guard = Instant::now() + Duration::from_secs(30);
            while Instant::now() < hang_guard {
                match counter.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        delivered.fetch_add(unwrap(&buf[..n]) as u64, Ordering::Relaxed);
                    }
                    Err(_) if done.load(Ordering::Relaxed) => return,
                    Err(_) => {}
                }
            }
        })
    };
    let payload = vec![0x5A; PAYLOAD];
    let start = Instant::now();
    let mut offered = 0f64;
    let mut packets = 0u32;
    while start.elapsed() < WINDOW && packets < 20_000 {
        let target = 4.0 * RATE * start.elapsed().as_secs_f64();
        while offered < target && packets < 20_000 {
            send(&payload);
            offered += PAYLOAD as f64;
            packets += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = start.elapsed().as_secs_f64();
    // Let what was let through arrive, then stop the reader.
    std::thread::sleep(Duration::from_millis(500));
    done.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    (offered, delivered.load(Ordering::Relaxed) as f64, secs)
}

fn check(direction: &str, offered: f64, delivered: f64, secs: f64) {
    let allowed = RATE * secs + BURST;
    eprintln!(
        "{direction}: offered {offered} B, delivered {delivered} B in {secs:.2} s \
         (limit x time + burst = {allowed:.0} B)"
    );
    assert!(
        offered > 2.0 * allowed,
        "{direction}: the sender must offer well over the limit (offered {offered})"
    );
    assert!(
        delivered <= 1.5 * allowed,
        "{direction}: delivered {delivered} B, more than 1.5 x {allowed:.0}"
    );
    assert!(
        delivered >= 0.5 * allowed,
        "{direction}: delivered {delivered} B, less than 0.5 x {allowed:.0}"
    );
}

#[test]
fn traffic_over_max_bps_is_delivered_at_the_limit() {
    let bps = MAX_BPS.to_string();
    let (server, admin) =
        start_with_admin(&["--allow-peer", "127.0.0.1/32", "--max-bps", bps.as_str()]);
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    assert_eq!(c.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(
        c.request(METHOD_CHANNEL_BIND, &channel_bind_attrs(0x4000, peer_addr))
            .code(),
        None
    );
    // Learn the relayed address from one packet.
    c.send_raw(&channel_data(0x4000, b"hello"));
    let mut buf = [0u8; 64];
    let (_, relayed): (usize, SocketAddr) = peer.recv_from(&mut buf).expect("first packet");

    // Client -> peer.
    let client_sock = c.sock.try_clone().unwrap();
    let server_addr = server.addr;
    let send_up = move |p: &[u8]| {
        let _ = client_sock.send_to(&channel_data(0x4000, p), server_addr);
    };
    let (offered, delivered, secs) = offer(&send_up, peer.try_clone().unwrap(), |d| d.len());
    check("client->peer", offered, delivered, secs);

    // Peer -> client, counted as ChannelData payload.
    let peer_tx = peer.try_clone().unwrap();
    let send_down = move |p: &[u8]| {
        let _ = peer_tx.send_to(p, relayed);
    };
    let (offered, delivered, secs) = offer(&send_down, c.sock.try_clone().unwrap(), |d| {
        if d.len() >= 4 && d[0] == 0x40 {
            u16::from_be_bytes([d[2], d[3]]) as usize
        } else {
            0
        }
    });
    check("peer->client", offered, delivered, secs);

    // The allocation shows its limit and the drops, counted by reason.
    let sessions = get_json(admin, "/sessions");
    let s = &sessions[0];
    assert_eq!(s["max_bps"], MAX_BPS);
    assert!(s["dropped"]["bandwidth"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["dropped"]["no_permission"], 0);
}

#[test]
fn zero_max_bps_means_no_limit() {
    let (server, admin) = start_with_admin(&["--allow-peer", "127.0.0.1/32"]);
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    assert_eq!(c.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(
        c.request(METHOD_CHANNEL_BIND, &channel_bind_attrs(0x4000, peer_addr))
            .code(),
        None
    );
    // 200 packets of 1000 bytes back to back, each waited for: far over any burst, none
    // dropped for bandwidth.
    let mut buf = [0u8; 2048];
    for _ in 0..200 {
        c.send_raw(&channel_data(0x4000, &[7u8; 1000]));
        let (n, _) = peer.recv_from(&mut buf).expect("the peer receives");
        assert_eq!(n, 1000);
    }
    let s = &get_json(admin, "/sessions")[0];
    assert_eq!(s["max_bps"], 0);
    assert_eq!(s["dropped"]["bandwidth"], 0);
    assert_eq!(s["packets_to_peer"], 200);
}
