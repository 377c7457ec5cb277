//! Strict fleet quotas and EVEN-PORT reservations (RFC 8656 §7.2), through three nodes on
//! one Redis with a per-user quota of 2: a reservation holds a lease of its own, so it
//! counts on every node (a reservation on node A and an allocation on node B leave node C
//! refusing a third Allocate); it gives its lease back when it expires unclaimed, and
//! hands it to the allocation that claims it with its RESERVATION-TOKEN (no double count).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::admin_http::scrape_parsed;
use crate::common::redis::{TestRedis, start_fleet, wait_until};
use crate::common::{RawClient, udp_transport};
use stun::attributes::{ATTR_LIFETIME, AttrType};
use stun::message::{METHOD_ALLOCATE, METHOD_REFRESH};

const ATTR_EVEN_PORT: AttrType = AttrType(0x0018);
const ATTR_RESERVATION_TOKEN: AttrType = AttrType(0x0022);

fn allocate(node: SocketAddr, extra: &[(AttrType, Vec<u8>)]) -> (RawClient, Option<u16>) {
    let mut c = RawClient::new(node, "alice", "wonderland");
    let mut attrs = vec![udp_transport()];
    attrs.extend_from_slice(extra);
    let code = c.request(METHOD_ALLOCATE, &attrs).code();
    (c, code)
}

/// An allocation with EVEN-PORT R: the allocation, and the token of its reservation.
fn reserve(node: SocketAddr) -> (RawClient, Vec<u8>) {
    let mut c = RawClient::new(node, "alice", "wonderland");
    let r = c.request(
        METHOD_ALLOCATE,
        &[udp_transport(), (ATTR_EVEN_PORT, vec![0x80])],
    );
    assert_eq!(r.code(), None, "Allocate with EVEN-PORT R");
    let token = r
        .msg
        .get(ATTR_RESERVATION_TOKEN)
        .expect("a RESERVATION-TOKEN");
    (c, token)
}

fn refresh0(c: &mut RawClient) {
    let r = c.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
    assert_eq!(r.code(), None, "refresh 0");
}

fn leases_reach(redis: &TestRedis, want: i64) {
    let ok = wait_until(Duration::from_secs(10), || redis.leases("alice") == want);
    assert!(
        ok,
        "alice holds {} leases, not {want}",
        redis.leases("alice")
    );
}

#[test]
fn a_reservation_holds_a_fleet_lease_until_claimed_or_expired() {
    let redis = TestRedis::start();
    let nodes = start_fleet(&redis, "", "[allocation]\nuser-quota = 2\n");
    let strict = wait_until(Duration::from_secs(20), || {
        nodes.iter().all(|n| {
            scrape_parsed(n.admin).get("turnd_fleet_quota_mode{mode=\"fleet\"}") == Some(&1.0)
        })
    });
    assert!(strict, "fleet quotas never came on");
    let (a, b, c) = (nodes[0].addr(), nodes[1].addr(), nodes[2].addr());

    // Node A: an allocation and its reservation, two leases.
    let reserved = Instant::now();
    let (mut a1, _token) = reserve(a);
    assert_eq!(redis.leases("alice"), 2, "taken before the answer");
    let (_, code) = allocate(b, &[]);
    assert_eq!(code, Some(486), "the reservation on A counts on B");
    // The allocation ends; the reservation keeps its lease.
    refresh0(&mut a1);
    leases_reach(&redis, 1);
    let (mut b1, code) = allocate(b, &[]);
    assert_eq!(code, None, "one reservation on A, one allocation on B");
    let (_, code) = allocate(c, &[]);
    assert_eq!(code, Some(486), "a third Allocate, on C");

    // The reservation expires unclaimed (30 s): its lease goes back, C grants.
    let freed = wait_until(Duration::from_secs(90), || {
        std::thread::sleep(Duration::from_millis(250));
        redis.leases("alice") == 1
    });
    assert!(freed, "the expired reservation's lease was not given back");
    println!(
        "the unclaimed reservation's lease went back {:?} after it was made (lifetime 30 s)",
        reserved.elapsed()
    );
    let (mut c1, code) = allocate(c, &[]);
    assert_eq!(code, None, "C grants once the reservation has expired");
    refresh0(&mut b1);
    refresh0(&mut c1);
    leases_reach(&redis, 0);

    // Claimed by a second client of the same user on A: its lease becomes the claiming
    // allocation's, no new lease is taken (the quota of 2 would refuse one).
    let (mut a2, token) = reserve(a);
    let (mut a3, code) = allocate(a, &[(ATTR_RESERVATION_TOKEN, token)]);
    assert_eq!(code, None, "the claim");
    assert_eq!(redis.leases("alice"), 2, "the claim took over the lease");
    // Held by the claiming allocation alone: one allocation ended, one lease left.
    refresh0(&mut a2);
    leases_reach(&redis, 1);
    let (mut b2, code) = allocate(b, &[]);
    assert_eq!(code, None, "the claimed allocation and one on B");
    let (_, code) = allocate(c, &[]);
    assert_eq!(code, Some(486));
    refresh0(&mut a3);
    refresh0(&mut b2);
    leases_reach(&redis, 0);
}
