//! A wrong password gets 401 and no allocation.

use crate::common;

use common::{RawClient, TestServer, udp_transport};
use stun::message::METHOD_ALLOCATE;

#[tokio::test]
async fn turn_client_with_wrong_password_is_refused() {
    let server = TestServer::start("127.0.0.1", &[]);
    let client = common::turn_client(&server, "alice", "not-the-password").await;
    let err = client.allocate().await.err().expect("allocation must fail");
    assert!(err.to_string().contains("401"), "{err}");
    client.close().await.unwrap();
}

#[test]
fn raw_client_sees_401_with_realm_and_nonce_then_401_again() {
    let server = TestServer::start("127.0.0.1", &[]);
    let mut c = RawClient::new(server.addr, "alice", "nope");
    let r = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(r.code(), Some(401));
    assert!(c.nonce.is_some());
    let mut c = RawClient::new(server.addr, "nobody", "nope");
    assert_eq!(
        c.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        Some(401)
    );
    let mut ok = RawClient::new(server.addr, "alice", "wonderland");
    assert_eq!(ok.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
}
