//! Data relayed both ways between a `turn`-crate client and a UDP peer, through the real
//! server: first with Send/Data indications, then over a channel once the client binds one.

use crate::common;

use std::time::Duration;

use common::{TestServer, turn_client};
use tokio::net::UdpSocket;
use webrtc_util::Conn;

#[tokio::test]
async fn data_flows_both_ways_through_indications_and_channel() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);
    let client = turn_client(&server, "alice", "wonderland").await;
    let relay = client.allocate().await.expect("allocate");
    let relayed = relay.local_addr().unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");

    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // The mapped address the server sees for us.
    let mapped = client.send_binding_request().await.unwrap();
    assert_eq!(mapped.ip().to_string(), "127.0.0.1");

    // The pause gives the client's background ChannelBind time to land so later rounds use it.
    common::echo_rounds(&relay, &peer, 20, Duration::from_millis(20)).await;
    relay.close().await.unwrap();
    client.close().await.unwrap();
}
