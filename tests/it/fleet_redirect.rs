//! Load-aware redirects across three nodes. A draining node (`POST /drain`) and a node past
//! its load threshold (`redis.redirect-allocations`) answer a new Allocate with 300 (Try
//! Alternate) and an ALTERNATE-SERVER naming another node of the fleet that is healthy.
//! coturn's `turnutils_uclient` follows it (its probe allocation takes the 300, its real
//! allocations go to the alternate); the webrtc-rs `turn` client does not: its `allocate()`
//! fails with the 300 and surfaces no ALTERNATE-SERVER, so the application cannot follow.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::redis::{Node, TestRedis, start_fleet, start_node, wait_until};
use crate::common::{RawClient, turn_client, udp_transport};
use crate::coturn_uclient::{ALICE, EchoPeer, run_uclient, tool};
use stun::attributes::{ATTR_ALTERNATE_SERVER, ATTR_LIFETIME};
use stun::message::{METHOD_ALLOCATE, METHOD_REFRESH};

/// An Allocate's error code and ALTERNATE-SERVER, if any.
fn try_allocate(node: SocketAddr) -> (RawClient, Option<u16>, Option<SocketAddr>) {
    let mut c = RawClient::new(node, "alice", "wonderland");
    let r = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    let mut alt = stun::addr::MappedAddress::default();
    let alt = alt
        .get_from_as(&r.msg, ATTR_ALTERNATE_SERVER)
        .ok()
        .map(|()| SocketAddr::new(alt.ip, alt.port));
    (c, r.code(), alt)
}

/// Waits until `node` redirects, and returns where to.
fn redirected_to(node: &Node) -> SocketAddr {
    let mut target = None;
    let ok = wait_until(Duration::from_secs(10), || {
        let (mut c, code, alt) = try_allocate(node.addr());
        if code.is_none() {
            // Granted before the redirect began: give it back.
            c.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
        }
        target = alt;
        code == Some(300)
    });
    assert!(
        ok,
        "{} does not redirect: {}",
        node.addr(),
        node.get_json("/cluster")
    );
    target.expect("ALTERNATE-SERVER in the 300")
}

fn created_total(n: &Node) -> f64 {
    crate::admin_http::scrape_parsed(n.admin)
        .get("turnd_allocations_created_total")
        .copied()
        .unwrap_or(0.0)
}

#[test]
fn draining_node_redirects_to_a_live_one_and_uclient_follows() {
    tool("turnutils_uclient");
    let redis = TestRedis::start();
    let nodes = start_fleet(&redis, "", "");
    // One live allocation keeps the draining node up (a drain with none left exits).
    let (_keeper, code, _) = try_allocate(nodes[0].addr());
    assert_eq!(code, None);
    let (status, body) = nodes[0].http("POST", "/drain");
    assert_eq!(status, 202, "{body}");

    let to = redirected_to(&nodes[0]);
    assert!(
        to == nodes[1].addr() || to == nodes[2].addr(),
        "ALTERNATE-SERVER {to} is not a live node"
    );
    let seen = wait_until(Duration::from_secs(10), || {
        nodes[1].get_json("/cluster")["nodes"]
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|n| n["draining"] == true && n["healthy"] == false)
            })
    });
    assert!(
        seen,
        "the fleet does not see the drain: {}",
        nodes[1].get_json("/cluster")
    );

    // coturn's client, pointed at the draining node, relays through another one.
    let before: f64 = nodes[1..].iter().map(created_total).sum();
    let on_drained = created_total(&nodes[0]);
    let peer = EchoPeer::start();
    let p = peer.port.to_string();
    let mut args = ALICE.to_vec();
    args.extend(["-e", "127.0.0.1", "-r", &p, "-m", "1"]);
    // -m 1: one client, an RTP and an RTCP session.
    run_uclient(&nodes[0].server, &args, 2);
    let after: f64 = nodes[1..].iter().map(created_total).sum();
    assert!(
        after >= before + 2.0,
        "uclient's RTP/RTCP allocations are not on the alternate"
    );
    assert_eq!(
        created_total(&nodes[0]),
        on_drained,
        "nothing granted on the draining node"
    );
}

#[test]
fn overloaded_node_redirects_until_its_load_drops() {
    let redis = TestRedis::start();
    let busy = start_node(&redis, "redirect-allocations = 1", "", &[]);
    let others = [
        start_node(&redis, "", "", &[]),
        start_node(&redis, "", "", &[]),
    ];
    let (mut keeper, code, _) = try_allocate(busy.addr());
    assert_eq!(code, None, "below the threshold");

    let to = redirected_to(&busy);
    assert!(
        others.iter().any(|n| n.addr() == to),
        "{to} is not another node"
    );

    // The webrtc-rs client gets the 300 as an error and cannot follow it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(async {
        let c = turn_client(&busy.server, "alice", "wonderland").await;
        let r = c.allocate().await.err().map(|e| e.to_string());
        c.close().await.unwrap();
        r
    });
    let err = err.expect("the webrtc-rs client's allocate fails on a 300");
    assert!(err.contains("300"), "{err}");

    // Under the threshold again: granted here.
    let r = keeper.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
    assert_eq!(r.code(), None);
    let granted = wait_until(Duration::from_secs(10), || {
        let (mut c, code, _) = try_allocate(busy.addr());
        if code.is_none() {
            c.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
        }
        code.is_none()
    });
    assert!(granted, "still redirecting: {}", busy.get_json("/cluster"));
}

/// Over TLS the redirect also names the alternate's certificate: ALTERNATE-DOMAIN with the
/// `redis.advertise-domain` the other node published (RFC 8489 §14.16); over UDP it does not.
#[test]
fn tls_clients_get_the_alternates_domain() {
    use crate::common::stream::{StreamClient, TempDir, TestCert, free_tcp_port};
    use stun::attributes::ATTR_ALTERNATE_DOMAIN;

    let redis = TestRedis::start();
    let dir = TempDir::new("fleet-tls-redirect");
    let cert = TestCert::new(&dir);
    let tls: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let tls_s = tls.to_string();
    let busy = start_node(
        &redis,
        "redirect-allocations = 1",
        "",
        &[
            "--tls-listen",
            &tls_s,
            "--cert",
            cert.cert.to_str().unwrap(),
            "--key",
            cert.key.to_str().unwrap(),
        ],
    );
    let other = start_node(&redis, "advertise-domain = \"turn-2.example.com\"", "", &[]);
    let (_keeper, code, _) = try_allocate(busy.addr());
    assert_eq!(code, None);
    assert_eq!(redirected_to(&busy), other.addr());

    let mut c = StreamClient::tls(tls, cert.client_config(true, &[]));
    let r = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(r.code(), Some(300), "over TLS");
    let domain = r
        .msg
        .get(ATTR_ALTERNATE_DOMAIN)
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    assert_eq!(domain.as_deref(), Some("turn-2.example.com"));

    let mut udp = RawClient::new(busy.addr(), "alice", "wonderland");
    let r = udp.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(r.code(), Some(300));
    assert!(
        r.msg.get(ATTR_ALTERNATE_DOMAIN).is_err(),
        "no ALTERNATE-DOMAIN over UDP"
    );
}
