//! Revocation across three nodes: `turnd revoke USER` (the CLI) and `POST /revoke` (the
//! admin API) refuse new requests with 401 and end the user's live allocations on every
//! node; the revocation lapses with the credential (its Redis key expires then), survives
//! a Redis restart (a node started afterwards refuses the user too), and `DELETE /revoke`
//! lifts it. The periodic resync is set to an hour, so what ends the allocations is the
//! change notification, not the backstop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::redis::{Node, TestRedis, start_fleet, start_node, wait_until};
use crate::common::{REALM, RawClient, run_turnd, udp_transport};

const SECRET: &str = "fleet-secret";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rest(user: &str) -> (String, String) {
    turnd::auth::mint_rest_credential(SECRET, user, now(), 3600, ':')
}

fn allocate(node: SocketAddr, user: &str, pass: &str) -> (RawClient, Option<u16>) {
    let mut c = RawClient::new(node, user, pass);
    let code = c
        .request(stun::message::METHOD_ALLOCATE, &[udp_transport()])
        .code();
    (c, code)
}

fn sessions_of(n: &Node, user: &str) -> usize {
    n.get_json(&format!("/sessions?user={user}"))
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn revocation_ends_sessions_on_every_node_and_survives_a_redis_restart() {
    let mut redis = TestRedis::start();
    let extra = format!("[auth]\nsecrets = [\"{SECRET}\"]\n");
    let nodes = start_fleet(&redis, "resync-interval = 3600", &extra);

    // bob (REST) and alice (the file's static user) hold an allocation on every node.
    let (bob_user, bob_pass) = rest("bob");
    let mut live = Vec::new();
    for n in &nodes {
        let (c, code) = allocate(n.addr(), &bob_user, &bob_pass);
        assert_eq!(code, None, "bob allocates on {}", n.addr());
        live.push(c);
        let (c, code) = allocate(n.addr(), "alice", "wonderland");
        assert_eq!(code, None, "alice allocates on {}", n.addr());
        live.push(c);
    }

    // The CLI, with one node's config file: every credential of bob.
    let config = nodes[0].dir.0.join("turnd.toml");
    let started = Instant::now();
    let (code, out, err) = run_turnd(
        &["revoke", "bob", "--config", config.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "turnd revoke: {out}{err}");
    assert!(out.contains("revoked bob"), "{out}");
    for n in &nodes {
        let ended = wait_until(Duration::from_secs(10), || sessions_of(n, "bob") == 0);
        assert!(ended, "bob's allocation still live on {}", n.addr());
    }
    println!(
        "revocation: bob's allocations ended on 3 nodes {} ms after `turnd revoke` was started",
        started.elapsed().as_millis()
    );
    for n in &nodes {
        assert_eq!(
            sessions_of(n, "alice"),
            1,
            "alice untouched on {}",
            n.addr()
        );
        let (bob_user, bob_pass) = rest("bob");
        let (_, code) = allocate(n.addr(), &bob_user, &bob_pass);
        assert_eq!(code, Some(401), "a fresh credential of bob on {}", n.addr());
        let (_, code) = allocate(n.addr(), &rest("carol").0, &rest("carol").1);
        assert_eq!(code, None, "carol unaffected on {}", n.addr());
    }
    // It lapses when every credential of bob minted until now has expired: at most
    // auth.max-rest-ttl (default 90000 s) from now.
    let key = format!("turnd/revoked/{REALM}/bob");
    let ttl: i64 = redis.cli(&["TTL", &key]).trim().parse().unwrap();
    assert!((1..=90_000).contains(&ttl), "TTL of {key}: {ttl}");

    // The admin API: the static user alice, until lifted (ttl=0).
    let (status, body) = nodes[1].http("POST", "/revoke?user=alice&ttl=0");
    assert_eq!(status, 200, "{body}");
    for n in &nodes {
        let ended = wait_until(Duration::from_secs(10), || sessions_of(n, "alice") == 0);
        assert!(ended, "alice's allocation still live on {}", n.addr());
        let (_, code) = allocate(n.addr(), "alice", "wonderland");
        assert_eq!(code, Some(401), "alice after revocation on {}", n.addr());
    }
    assert_eq!(
        redis
            .cli(&["TTL", &format!("turnd/revoked/{REALM}/alice")])
            .trim(),
        "-1"
    );

    // Redis restarted (its append-only file keeps the revocations): the nodes reconnect, and
    // a node started afterwards refuses bob and alice as well.
    redis.restart();
    let late = start_node(&redis, "resync-interval = 3600", &extra, &[]);
    for n in nodes.iter().chain([&late]) {
        let (bob_user, bob_pass) = rest("bob");
        let refused = wait_until(Duration::from_secs(10), || {
            allocate(n.addr(), &bob_user, &bob_pass).1 == Some(401)
                && allocate(n.addr(), "alice", "wonderland").1 == Some(401)
        });
        assert!(
            refused,
            "revocations lost on {} after the Redis restart",
            n.addr()
        );
    }
    let up = wait_until(Duration::from_secs(15), || {
        nodes[2].get_json("/cluster")["redis_up"] == serde_json::json!(true)
    });
    assert!(
        up,
        "node did not reconnect: {}",
        nodes[2].get_json("/cluster")
    );

    // Lifted through the admin API: alice allocates again everywhere.
    let (status, body) = nodes[2].http("DELETE", "/revoke?user=alice");
    assert_eq!(status, 200, "{body}");
    for n in nodes.iter().chain([&late]) {
        let ok = wait_until(Duration::from_secs(10), || {
            allocate(n.addr(), "alice", "wonderland").1.is_none()
        });
        assert!(ok, "alice still refused on {} after the lift", n.addr());
    }
    drop(live);
}

#[test]
fn revoke_without_a_fleet_says_so() {
    let dir = crate::common::stream::TempDir::new("revoke-no-redis");
    let path = dir.write("t.toml", "[server]\nrealm = \"x\"\n");
    let (code, _, err) = run_turnd(
        &["revoke", "bob", "--config", path.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("[redis]"), "{err}");
    // The admin API of a node without [redis]: 404 on the fleet routes.
    let (server, admin) = crate::admin_http::start_with_admin(&[]);
    let (status, _) = crate::admin_http::http(
        admin,
        "POST",
        "/revoke?user=bob",
        Some(crate::admin_http::TOKEN),
    );
    assert_eq!(status, 404);
    let (status, _) =
        crate::admin_http::http(admin, "GET", "/cluster", Some(crate::admin_http::TOKEN));
    assert_eq!(status, 404);
    drop(server);
}
