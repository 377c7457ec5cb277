//! Strict fleet quotas through real processes: nine Allocates of one user (quota 2), three
//! on each of three nodes, sent at the same instant, get exactly two grants, round after
//! round; the others get 486. Each Allocate is parked while its node takes a lease in
//! Redis; the leases go back as the allocations end.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::admin_http::scrape_parsed;
use crate::common::redis::{TestRedis, start_fleet, wait_until};
use crate::common::{REALM, RawClient, udp_transport};
use stun::attributes::ATTR_LIFETIME;
use stun::message::{METHOD_ALLOCATE, METHOD_REFRESH};

const PER_NODE: usize = 3;
const ROUNDS: usize = 4;

#[test]
fn parallel_allocates_over_three_nodes_get_exactly_the_quota() {
    let redis = TestRedis::start();
    let nodes = start_fleet(&redis, "", "[allocation]\nuser-quota = 2\n");
    let strict = wait_until(Duration::from_secs(20), || {
        nodes.iter().all(|n| {
            scrape_parsed(n.admin).get("turnd_fleet_quota_mode{mode=\"fleet\"}") == Some(&1.0)
        })
    });
    assert!(strict, "fleet quotas never came on");
    let lease_key = format!("turnd/lease/{REALM}/user/alice");
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(nodes.len() * PER_NODE));
        let handles: Vec<_> = nodes
            .iter()
            .flat_map(|n| std::iter::repeat_n(n.addr(), PER_NODE))
            .map(|addr| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut c = RawClient::new(addr, "alice", "wonderland");
                    // The nonce first, so that the Allocates themselves go out together.
                    let _ = c.request(METHOD_REFRESH, &[]);
                    barrier.wait();
                    let code = c.request(METHOD_ALLOCATE, &[udp_transport()]).code();
                    (c, code)
                })
            })
            .collect();
        let results: Vec<(RawClient, Option<u16>)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let codes: Vec<Option<u16>> = results.iter().map(|r| r.1).collect();
        let granted = codes.iter().filter(|c| c.is_none()).count();
        let refused = codes.iter().filter(|c| **c == Some(486)).count();
        assert_eq!(
            (granted, refused),
            (2, codes.len() - 2),
            "round {round}: {codes:?}"
        );
        // Redis holds exactly the two leases.
        let held = redis.cli(&["HGETALL", &lease_key]);
        let counts: u64 = held
            .lines()
            .collect::<Vec<_>>()
            .chunks(2)
            .filter(|kv| kv[0].starts_with("c:"))
            .filter_map(|kv| kv.get(1)?.trim().parse::<u64>().ok())
            .sum();
        assert_eq!(counts, 2, "round {round}: {held}");
        // End them (Refresh 0); their leases go back.
        for (mut c, code) in results {
            if code.is_none() {
                let r = c.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
                assert_eq!(r.code(), None, "refresh 0");
            }
        }
        let freed = wait_until(Duration::from_secs(10), || {
            !redis
                .cli(&["HGETALL", &lease_key])
                .lines()
                .any(|l| l.starts_with("c:"))
        });
        assert!(freed, "round {round}: leases not given back");
    }
    for n in &nodes {
        let m = scrape_parsed(n.admin);
        let parked = m
            .get("turnd_fleet_parked_allocates_total{outcome=\"parked\"}")
            .copied()
            .unwrap_or(0.0);
        assert!(parked >= 1.0, "node {} parked nothing", n.addr());
    }
}
