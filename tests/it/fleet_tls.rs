//! The fleet over `rediss://`: a Redis that speaks only TLS, its certificate checked against
//! `redis.tls-ca-file`; a user written there allocates on the node. Without the CA (the
//! system's trust roots) the node does not trust it and says Redis is down, and serves its
//! file's users all the same.

use std::time::Duration;

use crate::common::redis::{TestRedis, coturn_key, start_node, wait_until};
use crate::common::{REALM, RawClient, udp_transport};

fn allocate_code(node: std::net::SocketAddr, user: &str, pass: &str) -> Option<u16> {
    let mut c = RawClient::new(node, user, pass);
    c.request(stun::message::METHOD_ALLOCATE, &[udp_transport()])
        .code()
}

#[test]
fn rediss_with_the_operators_ca() {
    let redis = TestRedis::start_tls();
    let ca = redis.ca_file().unwrap().to_str().unwrap().to_owned();
    let node = start_node(&redis, &format!("tls-ca-file = \"{ca}\""), "", &[]);
    redis.cli(&[
        "SET",
        &format!("turn/realm/{REALM}/user/gorst/key"),
        &coturn_key("gorst", "hero"),
    ]);
    let ok = wait_until(Duration::from_secs(10), || {
        allocate_code(node.addr(), "gorst", "hero").is_none()
    });
    assert!(
        ok,
        "the user in the TLS Redis: {}",
        node.get_json("/cluster")
    );
    assert_eq!(node.get_json("/cluster")["redis_up"], true);

    // The system's trust roots do not know the test's certificate: Redis counts as down.
    let untrusting = start_node(&redis, "", "", &[]);
    std::thread::sleep(Duration::from_secs(2));
    let c = untrusting.get_json("/cluster");
    assert_eq!(c["redis_up"], false, "{c}");
    assert_eq!(allocate_code(untrusting.addr(), "gorst", "hero"), Some(401));
    assert_eq!(
        allocate_code(untrusting.addr(), "alice", "wonderland"),
        None
    );
}
