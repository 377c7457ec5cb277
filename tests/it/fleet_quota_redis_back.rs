//! Strict fleet quotas and a Redis outage, through real processes: allocations granted by
//! per-node counting while Redis is down hold no lease; once Redis is back their node
//! registers them (adopted leases, `a:<node>`), over the quota if need be, so another node
//! refuses the user without any restart; as they end the count falls back to 0, never
//! below.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::admin_http::scrape_parsed;
use crate::common::redis::{Node, TestRedis, start_fleet, wait_until};
use crate::common::{RawClient, udp_transport};
use stun::attributes::ATTR_LIFETIME;
use stun::message::{METHOD_ALLOCATE, METHOD_REFRESH};

fn allocate(node: SocketAddr) -> (RawClient, Option<u16>) {
    let mut c = RawClient::new(node, "alice", "wonderland");
    let code = c.request(METHOD_ALLOCATE, &[udp_transport()]).code();
    (c, code)
}

fn metric(n: &Node, key: &str) -> Option<f64> {
    scrape_parsed(n.admin).get(key).copied()
}

fn strict(n: &Node) -> bool {
    metric(n, "turnd_fleet_quota_mode{mode=\"fleet\"}") == Some(1.0)
}

#[test]
fn allocations_granted_while_redis_was_down_take_leases_when_it_is_back() {
    let mut redis = TestRedis::start();
    let nodes = start_fleet(&redis, "", "[allocation]\nuser-quota = 2\n");
    assert!(
        wait_until(Duration::from_secs(20), || nodes.iter().all(strict)),
        "fleet quotas never came on"
    );
    let (a, b) = (&nodes[0], &nodes[1]);

    redis.kill();
    let down = wait_until(Duration::from_secs(20), || {
        metric(a, "turnd_fleet_quota_mode{mode=\"node\"}") == Some(1.0)
    });
    assert!(down, "node A does not count per node with Redis down");
    // Two allocations on A, by per-node counting (and so no third).
    let (mut a1, code) = allocate(a.addr());
    assert_eq!(code, None, "first allocation, Redis down");
    let (mut a2, code) = allocate(a.addr());
    assert_eq!(code, None, "second allocation, Redis down");
    let (_, code) = allocate(a.addr());
    assert_eq!(code, Some(486), "the node's own count still holds");

    redis.restart();
    let back = Instant::now();
    let registered = wait_until(Duration::from_secs(30), || redis.leases("alice") == 2);
    println!(
        "leases of the allocations granted while Redis was down registered {:?} after its restart",
        back.elapsed()
    );
    assert!(
        registered,
        "A's allocations hold {} leases in Redis, not 2",
        redis.leases("alice")
    );
    assert!(
        wait_until(Duration::from_secs(20), || strict(b)),
        "node B does not count across the fleet again"
    );
    let (_, code) = allocate(b.addr());
    assert_eq!(code, Some(486), "the user's quota is used up on A");
    assert!(metric(a, "turnd_fleet_adopted_leases_total").is_some_and(|n| n >= 2.0));

    // They end as any allocation: the count falls to 0, never below.
    let r = a1.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
    assert_eq!(r.code(), None, "refresh 0");
    assert!(
        wait_until(Duration::from_secs(10), || redis.leases("alice") == 1),
        "one ended: {} leases",
        redis.leases("alice")
    );
    let (mut b1, code) = allocate(b.addr());
    assert_eq!(code, None, "one left on A, one on B");
    let r = a2.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
    assert_eq!(r.code(), None, "refresh 0");
    let r = b1.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
    assert_eq!(r.code(), None, "refresh 0");
    assert!(
        wait_until(Duration::from_secs(10), || redis.leases("alice") == 0),
        "all ended: {} leases",
        redis.leases("alice")
    );
    // A few heartbeats later it is still 0 (no count written back, none negative).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(redis.leases("alice"), 0);
    let (_, code) = allocate(b.addr());
    assert_eq!(code, None);
}
