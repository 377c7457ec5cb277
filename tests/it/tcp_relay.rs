//! TURN over TCP (RFC 8656 §3.1): Binding, Allocate, CreatePermission, Send/Data indications
//! and ChannelBind/ChannelData to a UDP peer on loopback, all over one TCP connection on the
//! `--listen` port; ChannelData toward the client is padded to 4 bytes.

use crate::common;

use common::TestServer;
use common::stream::{StreamClient, relay_paths};

#[test]
fn tcp_carries_allocation_permission_send_and_channels() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);
    let mut c = StreamClient::tcp(server.addr);
    relay_paths(&mut c);
}
