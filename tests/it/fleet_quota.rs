//! A per-user quota of 2 (`allocation.user-quota`) holds across three nodes: two
//! allocations of one user on two nodes, and the third node answers 486. A freed
//! allocation is given back fleet-wide; a node killed with SIGKILL gives its counts back
//! when its entry expires (`redis.node-ttl`); coturn's realm `user-quota` key in Redis
//! overrides the file's.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::redis::{Node, TestRedis, start_fleet, wait_until};
use crate::common::{REALM, RawClient, udp_transport};
use stun::attributes::ATTR_LIFETIME;
use stun::message::{METHOD_ALLOCATE, METHOD_REFRESH};

fn allocate(node: SocketAddr) -> (RawClient, Option<u16>) {
    let mut c = RawClient::new(node, "alice", "wonderland");
    let code = c.request(METHOD_ALLOCATE, &[udp_transport()]).code();
    (c, code)
}

/// Whether every node's view of the fleet counts `want` allocations in all.
fn fleet_sees(nodes: &[Node], want: u64) -> bool {
    nodes.iter().all(|n| {
        let c = n.get_json("/cluster");
        let total: u64 = c["nodes"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["allocations"].as_u64()).sum())
            .unwrap_or(0);
        total == want
    })
}

#[test]
fn per_user_quota_holds_across_the_fleet() {
    let redis = TestRedis::start();
    let mut nodes = start_fleet(&redis, "", "[allocation]\nuser-quota = 2\n");

    let (mut first, code) = allocate(nodes[0].addr());
    assert_eq!(code, None, "first allocation");
    assert!(wait_until(Duration::from_secs(10), || fleet_sees(
        &nodes, 1
    )));
    let (_second, code) = allocate(nodes[1].addr());
    assert_eq!(code, None, "second allocation, on another node");
    assert!(wait_until(Duration::from_secs(10), || fleet_sees(
        &nodes, 2
    )));
    let (_, code) = allocate(nodes[2].addr());
    assert_eq!(
        code,
        Some(486),
        "third allocation of the user, on the third node"
    );
    let (_, code) = allocate(nodes[0].addr());
    assert_eq!(code, Some(486), "third allocation on the first node");

    // The first one freed (Refresh 0): the third node grants one again.
    let r = first.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
    assert_eq!(r.code(), None, "refresh 0");
    assert!(wait_until(Duration::from_secs(10), || fleet_sees(
        &nodes, 1
    )));
    let (_third, code) = allocate(nodes[2].addr());
    assert_eq!(code, None, "after one was freed");
    assert!(wait_until(Duration::from_secs(10), || fleet_sees(
        &nodes, 2
    )));
    let (_, code) = allocate(nodes[0].addr());
    assert_eq!(code, Some(486));

    // Node 1 (holding one) killed outright: its entry, and with it its count, expires after
    // redis.node-ttl (5 s) without anyone giving it back.
    let dead = nodes.remove(1);
    dead.server.signal("KILL");
    let freed = wait_until(Duration::from_secs(20), || fleet_sees(&nodes, 1));
    assert!(
        freed,
        "the dead node's count did not expire: {}",
        nodes[0].get_json("/cluster")
    );
    let (_fourth, code) = allocate(nodes[0].addr());
    assert_eq!(code, None, "the dead node's lease expired");

    // Two live (one on each node left): at the file's quota of 2. coturn's realm user-quota
    // in Redis (3) overrides it.
    assert!(wait_until(Duration::from_secs(10), || fleet_sees(
        &nodes, 2
    )));
    let (_, code) = allocate(nodes[1].addr());
    assert_eq!(code, Some(486), "at the file's quota");
    redis.cli(&["SET", &format!("turn/realm/{REALM}/user-quota"), "3"]);
    let mut fifth = None;
    let raised = wait_until(Duration::from_secs(10), || {
        let (c, code) = allocate(nodes[1].addr());
        fifth = Some(c);
        code.is_none()
    });
    assert!(raised, "the realm's user-quota from Redis is not applied");
    redis.cli(&["DEL", &format!("turn/realm/{REALM}/user-quota")]);
    drop(dead);
}
