//! Three turnd nodes on one Redis: a user written with `redis-cli` in coturn's layout
//! (`turn/realm/<realm>/user/<name>/key`, hex MD5 key) allocates on every node without a
//! restart, a password change takes effect on all three, REST secrets in coturn's set
//! (`turn/realm/<realm>/secret`) verify REST credentials on every node, and coturn's
//! `denied-peer-ip` set refuses peers on every node.

use std::time::{Duration, Instant};

use crate::common::redis::{TestRedis, coturn_key, start_fleet, wait_until};
use crate::common::{REALM, RawClient, udp_transport};

fn allocate_code(node: std::net::SocketAddr, user: &str, pass: &str) -> Option<u16> {
    let mut c = RawClient::new(node, user, pass);
    c.request(stun::message::METHOD_ALLOCATE, &[udp_transport()])
        .code()
}

#[test]
fn coturn_users_and_password_changes_reach_every_node() {
    let redis = TestRedis::start();
    let nodes = start_fleet(&redis, "", "");
    let key = format!("turn/realm/{REALM}/user/gorst/key");

    // Unknown everywhere before it is written.
    for n in &nodes {
        assert_eq!(allocate_code(n.addr(), "gorst", "hero"), Some(401));
    }
    let written = Instant::now();
    redis.cli(&["SET", &key, &coturn_key("gorst", "hero")]);
    for n in &nodes {
        let ok = wait_until(Duration::from_secs(10), || {
            allocate_code(n.addr(), "gorst", "hero").is_none()
        });
        assert!(ok, "gorst cannot allocate on {}", n.addr());
    }
    println!(
        "user written with redis-cli allocates on 3 nodes after {} ms",
        written.elapsed().as_millis()
    );

    // A password change: the old one is refused and the new one accepted on every node.
    redis.cli(&["SET", &key, &coturn_key("gorst", "villain")]);
    for n in &nodes {
        let ok = wait_until(Duration::from_secs(10), || {
            allocate_code(n.addr(), "gorst", "villain").is_none()
        });
        assert!(ok, "new password refused on {}", n.addr());
        assert_eq!(
            allocate_code(n.addr(), "gorst", "hero"),
            Some(401),
            "old password on {}",
            n.addr()
        );
    }

    // Deleted: refused everywhere again.
    redis.cli(&["DEL", &key]);
    for n in &nodes {
        let ok = wait_until(Duration::from_secs(10), || {
            allocate_code(n.addr(), "gorst", "villain") == Some(401)
        });
        assert!(ok, "deleted user still allocates on {}", n.addr());
    }

    // REST secrets from coturn's set, two at once.
    redis.cli(&[
        "SADD",
        &format!("turn/realm/{REALM}/secret"),
        "logen",
        "bloody9",
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for secret in ["logen", "bloody9"] {
        let (user, pass) = turnd::auth::mint_rest_credential(secret, "ninefingers", now, 600, ':');
        for n in &nodes {
            let ok = wait_until(Duration::from_secs(10), || {
                allocate_code(n.addr(), &user, &pass).is_none()
            });
            assert!(
                ok,
                "REST credential of secret {secret} refused on {}",
                n.addr()
            );
        }
    }
    // The file's static user is untouched by the store.
    for n in &nodes {
        assert_eq!(allocate_code(n.addr(), "alice", "wonderland"), None);
    }
    // coturn's denied-peer-ip set (a range here) refuses a peer the file allows
    // (127.0.0.0/8), on every node; removed, the peer is allowed again.
    let permission = |node: std::net::SocketAddr| {
        let mut c = RawClient::new(node, "alice", "wonderland");
        crate::common::allocate_same_family(&mut c);
        c.request(
            stun::message::METHOD_CREATE_PERMISSION,
            &[crate::common::peer_attr("127.0.0.9:4000".parse().unwrap())],
        )
        .code()
    };
    for n in &nodes {
        assert_eq!(permission(n.addr()), None, "the file allows loopback peers");
    }
    let denied = format!("turn/realm/{REALM}/denied-peer-ip");
    redis.cli(&["SADD", &denied, "127.0.0.8-127.0.0.10"]);
    for n in &nodes {
        let ok = wait_until(Duration::from_secs(10), || {
            permission(n.addr()) == Some(403)
        });
        assert!(ok, "denied-peer-ip from Redis not applied on {}", n.addr());
    }
    redis.cli(&["DEL", &denied]);
    for n in &nodes {
        let ok = wait_until(Duration::from_secs(10), || permission(n.addr()).is_none());
        assert!(
            ok,
            "peer still refused on {} after the range was removed",
            n.addr()
        );
    }

    let m = crate::admin_http::scrape_parsed(nodes[0].admin);
    assert_eq!(m.get("turnd_redis_up"), Some(&1.0), "{m:?}");
    assert_eq!(m.get("turnd_fleet_store_secrets"), Some(&2.0));
}
