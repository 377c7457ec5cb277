//! A REST credential that expires ends the allocation's ability to refresh (and to add
//! permissions): with `auth.enforce-credential-expiry` (the default) the same credential that
//! allocated gets 401 once its expiry has passed.

use crate::common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{RawClient, TestServer, peer_attr, udp_transport};
use stun::message::{METHOD_ALLOCATE, METHOD_CREATE_PERMISSION, METHOD_REFRESH};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn expired_rest_credential_cannot_refresh() {
    let server = TestServer::start("127.0.0.1", &["--auth-secret", "north"]);
    // A credential a couple of seconds from expiry; if the machine is so slow that it expired
    // before the Allocate, try again with a longer one.
    let mut allocated = None;
    for ttl in [2u64, 5, 15, 40] {
        let expiry = unix_now() + ttl;
        let (user, pass) = turnd::auth::rest_credential("north", "carol", expiry, ':');
        let mut c = RawClient::new(server.addr, &user, &pass);
        if c.request(METHOD_ALLOCATE, &[udp_transport()])
            .code()
            .is_none()
        {
            allocated = Some((c, expiry));
            break;
        }
    }
    let (mut c, expiry) = allocated.expect("allocate with a fresh REST credential");
    // Wait (bounded) until the credential has expired by the wall clock both sides read.
    let deadline = Instant::now() + Duration::from_secs(60);
    while unix_now() <= expiry + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(unix_now() > expiry + 1);
    assert_eq!(c.request(METHOD_REFRESH, &[]).code(), Some(401), "refresh");
    let peer = "8.8.8.8:53".parse().unwrap();
    assert_eq!(
        c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer)])
            .code(),
        Some(401),
        "permission"
    );
}
