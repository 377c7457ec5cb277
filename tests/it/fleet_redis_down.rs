//! Redis killed (SIGKILL) for ten seconds while traffic flows through three nodes: no
//! relayed packet is lost; a user that lives only in Redis still allocates and refreshes on
//! every node (the last good copy); `/metrics` says Redis is down and quotas are counted per
//! node; once Redis is back the nodes reconnect and count across the fleet again, without a
//! restart.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::admin_http::{channel_bind_attrs, channel_data, scrape_parsed};
use crate::common::redis::{Node, TestRedis, coturn_key, start_fleet, wait_until};
use crate::common::{REALM, RawClient, allocate_same_family, peer_socket, udp_transport};
use stun::attributes::ATTR_LIFETIME;
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_REFRESH};

/// Round trips per node: one every 10 ms, about 13 s, across the 10 s outage.
const ROUNDS: u32 = 1300;

/// Client -> relay -> peer -> relay -> client, in lock step; returns how many round trips
/// did not come back within five seconds (a generous bound on a busy machine: loopback
/// drops nothing unless a socket buffer overflows).
fn traffic(mut client: RawClient, peer: UdpSocket) -> u32 {
    let relayed = allocate_same_family(&mut client);
    let peer_addr = peer.local_addr().unwrap();
    let r = client.request(METHOD_CHANNEL_BIND, &channel_bind_attrs(0x4000, peer_addr));
    assert_eq!(r.code(), None, "channel bind");
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client
        .sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut lost = 0;
    let mut buf = [0u8; 1500];
    for i in 0..ROUNDS {
        let payload = i.to_be_bytes();
        client.send_raw(&channel_data(0x4000, &payload));
        match peer.recv_from(&mut buf) {
            Ok((n, from)) if buf[..n] == payload && from == relayed => {
                peer.send_to(&payload, relayed).unwrap();
                let back = client
                    .recv_raw()
                    .is_some_and(|d| d.len() >= 8 && d[4..8] == payload);
                if !back {
                    lost += 1;
                }
            }
            _ => lost += 1,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    lost
}

fn metric(n: &Node, key: &str) -> Option<f64> {
    scrape_parsed(n.admin).get(key).copied()
}

fn allocate_and_refresh(node: SocketAddr, user: &str, pass: &str) -> bool {
    let mut c = RawClient::new(node, user, pass);
    if c.request(METHOD_ALLOCATE, &[udp_transport()])
        .code()
        .is_some()
    {
        return false;
    }
    let ok = c
        .request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 2, 0x58])])
        .code()
        .is_none();
    c.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
    ok
}

#[test]
fn redis_down_ten_seconds_loses_no_packet() {
    let mut redis = TestRedis::start();
    let nodes = start_fleet(&redis, "", "");
    redis.cli(&[
        "SET",
        &format!("turn/realm/{REALM}/user/gorst/key"),
        &coturn_key("gorst", "hero"),
    ]);
    for n in &nodes {
        let ok = wait_until(Duration::from_secs(10), || {
            allocate_and_refresh(n.addr(), "gorst", "hero")
        });
        assert!(ok, "gorst cannot allocate on {}", n.addr());
    }

    let flows: Vec<_> = nodes
        .iter()
        .map(|n| {
            let client = RawClient::new(n.addr(), "gorst", "hero");
            let peer = peer_socket("127.0.0.1");
            std::thread::spawn(move || traffic(client, peer))
        })
        .collect();

    std::thread::sleep(Duration::from_secs(1));
    redis.kill();
    let killed = Instant::now();
    for n in &nodes {
        let down = wait_until(Duration::from_secs(8), || {
            metric(n, "turnd_redis_up") == Some(0.0)
                && metric(n, "turnd_fleet_quota_mode{mode=\"node\"}") == Some(1.0)
        });
        assert!(down, "{} does not report Redis down", n.addr());
        assert!(
            allocate_and_refresh(n.addr(), "gorst", "hero"),
            "the Redis user is refused on {} while Redis is down",
            n.addr()
        );
    }
    let rest = Duration::from_secs(10).saturating_sub(killed.elapsed());
    std::thread::sleep(rest);
    redis.restart();

    let lost: Vec<u32> = flows.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        lost,
        vec![0, 0, 0],
        "round trips lost per node, of {ROUNDS} each"
    );

    for n in &nodes {
        let back = wait_until(Duration::from_secs(20), || {
            metric(n, "turnd_redis_up") == Some(1.0)
                && metric(n, "turnd_fleet_quota_mode{mode=\"fleet\"}") == Some(1.0)
                && n.get_json("/cluster")["nodes"]
                    .as_array()
                    .is_some_and(|a| a.len() == 3)
        });
        assert!(
            back,
            "{} did not rejoin: {}",
            n.addr(),
            n.get_json("/cluster")
        );
        assert!(allocate_and_refresh(n.addr(), "gorst", "hero"));
    }
}
