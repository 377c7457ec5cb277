//! Caps through the real server, each answered with its RFC 8656 code: allocations per client
//! IP (486), per user (486), in total (508), permissions per allocation (508) and channels per
//! allocation (508); and an exhausted relay port range answers 508 until a port frees up.

use crate::common;

use std::net::SocketAddr;

use common::{RawClient, TestServer, peer_attr, udp_transport};
use stun::attributes::{ATTR_CHANNEL_NUMBER, ATTR_LIFETIME};
use stun::message::{
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH,
};

fn allocate(server: &TestServer, user: &str, pass: &str) -> (RawClient, Option<u16>) {
    let mut c = RawClient::new(server.addr, user, pass);
    let code = c.request(METHOD_ALLOCATE, &[udp_transport()]).code();
    (c, code)
}

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn allocations_per_ip_answers_486() {
    let server = TestServer::start("127.0.0.1", &["--allocations-per-ip", "2"]);
    let (_a, a) = allocate(&server, "alice", "wonderland");
    let (mut b, bc) = allocate(&server, "alice", "wonderland");
    let (_c, c) = allocate(&server, "alice", "wonderland");
    assert_eq!((a, bc, c), (None, None, Some(486)));
    // Ending one allocation gives the place back.
    let r = b.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
    assert_eq!(r.code(), None);
    assert_eq!(allocate(&server, "alice", "wonderland").1, None);
}

#[test]
fn user_and_total_quotas_answer_486_and_508() {
    let server = TestServer::start(
        "127.0.0.1",
        &[
            "--user",
            "alice:wonderland",
            "--user",
            "bob:builder",
            "--user-quota",
            "1",
            "--total-quota",
            "2",
        ],
    );
    let (_a, a) = allocate(&server, "alice", "wonderland");
    let (_a2, a2) = allocate(&server, "alice", "wonderland");
    let (_b, b) = allocate(&server, "bob", "builder");
    let (_b2, b2) = allocate(&server, "bob", "builder");
    assert_eq!((a, a2, b), (None, Some(486), None));
    assert!(matches!(b2, Some(486) | Some(508)), "{b2:?}");
}

#[test]
fn permissions_per_allocation_answers_508() {
    let server = TestServer::start("127.0.0.1", &["--permissions-per-allocation", "2"]);
    let (mut c, code) = allocate(&server, "alice", "wonderland");
    assert_eq!(code, None);
    let perm = |c: &mut RawClient, p: &str| {
        c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer(p))])
            .code()
    };
    assert_eq!(perm(&mut c, "8.8.8.8:1"), None);
    assert_eq!(perm(&mut c, "8.8.4.4:1"), None);
    assert_eq!(perm(&mut c, "1.1.1.1:1"), Some(508));
    assert_eq!(
        perm(&mut c, "8.8.8.8:2"),
        None,
        "refreshing an existing one is fine"
    );
}

#[test]
fn channels_per_allocation_answers_508() {
    let server = TestServer::start("127.0.0.1", &["--channels-per-allocation", "2"]);
    let (mut c, code) = allocate(&server, "alice", "wonderland");
    assert_eq!(code, None);
    let bind = |c: &mut RawClient, n: u16, p: &str| {
        let [hi, lo] = n.to_be_bytes();
        c.request(
            METHOD_CHANNEL_BIND,
            &[
                (ATTR_CHANNEL_NUMBER, vec![hi, lo, 0, 0]),
                peer_attr(peer(p)),
            ],
        )
        .code()
    };
    assert_eq!(bind(&mut c, 0x4000, "8.8.8.8:1"), None);
    assert_eq!(bind(&mut c, 0x4001, "8.8.8.8:2"), None);
    assert_eq!(bind(&mut c, 0x4002, "8.8.8.8:3"), Some(508));
    assert_eq!(bind(&mut c, 0x4001, "8.8.8.8:2"), None, "refresh is fine");
}

#[test]
fn exhausted_port_range_answers_508_and_recovers() {
    let server = TestServer::start("127.0.0.1", &["--min-port", "20300", "--max-port", "20301"]);
    let (mut a, ac) = allocate(&server, "alice", "wonderland");
    let (_b, bc) = allocate(&server, "alice", "wonderland");
    let (_c, cc) = allocate(&server, "alice", "wonderland");
    assert_eq!((ac, bc, cc), (None, None, Some(508)));
    // Still 508 while both are held, from any client.
    assert_eq!(allocate(&server, "alice", "wonderland").1, Some(508));
    // Freeing one port lets the next Allocate through.
    let r = a.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
    assert_eq!(r.code(), None);
    let (_d, dc) = allocate(&server, "alice", "wonderland");
    assert_eq!(dc, None);
    assert_eq!(allocate(&server, "alice", "wonderland").1, Some(508));
}

/// A port held by EVEN-PORT's R bit counts against the user's quota while it is reserved:
/// Allocate(EVEN-PORT R) then Refresh(0), repeated, used to pin a port per cycle whatever the
/// quota (250 of 500 ports in 0.2 s with a quota of 2).
#[test]
fn even_port_reservations_count_against_the_user_quota() {
    const ATTR_EVEN_PORT: stun::attributes::AttrType = stun::attributes::AttrType(0x0018);
    let server = TestServer::start("127.0.0.1", &["--user-quota", "2"]);
    let mut refused = None;
    for cycle in 0..10 {
        let mut c = RawClient::new(server.addr, "alice", "wonderland");
        let r = c.request(
            METHOD_ALLOCATE,
            &[udp_transport(), (ATTR_EVEN_PORT, vec![0x80])],
        );
        if let Some(code) = r.code() {
            refused = Some((cycle, code));
            break;
        }
        let r = c.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
        assert_eq!(r.code(), None);
    }
    // The first cycle holds one allocation and one reservation (the quota); once the
    // allocation is gone its reservation still counts, so the next needs one too many.
    assert_eq!(refused, Some((1, 486)));
    // A plain Allocate still fits beside the one reservation.
    assert_eq!(allocate(&server, "alice", "wonderland").1, None);
}
