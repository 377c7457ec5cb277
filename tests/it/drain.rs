//! Drain: SIGTERM (or a first SIGINT) stops new allocations (508, or 300 Try Alternate with
//! ALTERNATE-SERVER when `server.alternate-server` is set) while existing allocations keep
//! relaying and refreshing; the process exits 0 when the last allocation ends, or when
//! `server.drain-timeout` passes, and at once on a second SIGINT.

use crate::common;
use crate::lifecycle_util;

use std::net::SocketAddr;

use common::{RawClient, peer_socket};
use lifecycle_util::{
    GUARD, NotifiedServer, Scratch, allocated_with_permission, relay_round_trip, try_allocate,
};
use stun::attributes::{ATTR_ALTERNATE_SERVER, ATTR_LIFETIME};
use stun::message::METHOD_REFRESH;

const BASE: &str = "[auth]\nusers = [{ name = \"alice\", password = \"wonderland\" }]\n\
                    [peers]\nallow = [\"127.0.0.1/32\"]\n";

fn refresh(c: &mut RawClient, secs: u32) -> Option<u16> {
    c.request(
        METHOD_REFRESH,
        &[(ATTR_LIFETIME, secs.to_be_bytes().to_vec())],
    )
    .code()
}

#[test]
fn sigterm_refuses_new_allocations_keeps_relaying_and_exits_when_the_last_ends() {
    let scratch = Scratch::new("drain");
    let path = scratch.write(
        "turnd.toml",
        &format!("{BASE}[server]\ndrain-timeout = 3600\n"),
    );
    let mut server = NotifiedServer::start(&scratch, &path, false);
    let peer = peer_socket("127.0.0.1");
    let mut live = allocated_with_permission(
        server.addr,
        "alice",
        "wonderland",
        peer.local_addr().unwrap(),
    );
    relay_round_trip(&live, &peer, "before drain");

    server.signal("TERM");
    let stopping = server.expect_notify("STOPPING=1").expect("STOPPING=1");
    assert!(stopping.contains("draining 1 allocations"), "{stopping}");

    let (_, code) = try_allocate(server.addr, "alice", "wonderland");
    assert_eq!(code, Some(508), "no alternate configured: 508");
    relay_round_trip(&live, &peer, "while draining");
    assert_eq!(refresh(&mut live, 600), None, "refresh still works");
    relay_round_trip(&live, &peer, "after refresh");
    assert!(
        server.is_running(),
        "the drain waits for the live allocation"
    );

    // The last allocation ends: the process exits 0 long before the drain timeout.
    assert_eq!(refresh(&mut live, 0), None);
    assert_eq!(server.wait_exit(GUARD), Some(0));
}

#[test]
fn drain_timeout_ends_the_process_with_allocations_live() {
    let scratch = Scratch::new("drain-timeout");
    let path = scratch.write(
        "turnd.toml",
        &format!("{BASE}[server]\ndrain-timeout = 1\n[allocation]\ndefault-lifetime = 3600\n"),
    );
    let mut server = NotifiedServer::start(&scratch, &path, false);
    let peer = peer_socket("127.0.0.1");
    let live = allocated_with_permission(
        server.addr,
        "alice",
        "wonderland",
        peer.local_addr().unwrap(),
    );
    relay_round_trip(&live, &peer, "before drain");
    server.signal("TERM");
    server.expect_notify("STOPPING=1").expect("STOPPING=1");
    // The allocation would live an hour: only the one-second drain timeout ends the process.
    assert_eq!(server.wait_exit(GUARD), Some(0));
}

#[test]
fn sigint_drains_with_alternate_server_and_a_second_sigint_exits() {
    let scratch = Scratch::new("drain-alternate");
    let path = scratch.write(
        "turnd.toml",
        &format!(
            "{BASE}[server]\ndrain-timeout = 3600\n\
             alternate-server = [\"127.0.0.1:3479\", \"[::1]:3479\"]\n"
        ),
    );
    let mut server = NotifiedServer::start(&scratch, &path, false);
    let peer = peer_socket("127.0.0.1");
    let live = allocated_with_permission(
        server.addr,
        "alice",
        "wonderland",
        peer.local_addr().unwrap(),
    );

    server.signal("INT");
    server.expect_notify("STOPPING=1").expect("STOPPING=1");
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    let r = c.request(stun::message::METHOD_ALLOCATE, &[common::udp_transport()]);
    assert_eq!(r.code(), Some(300), "Try Alternate");
    let mut alt = stun::addr::MappedAddress::default();
    alt.get_from_as(&r.msg, ATTR_ALTERNATE_SERVER)
        .expect("ALTERNATE-SERVER");
    assert_eq!(
        SocketAddr::new(alt.ip, alt.port),
        "127.0.0.1:3479".parse::<SocketAddr>().unwrap(),
        "the alternate of the client's family"
    );
    relay_round_trip(&live, &peer, "while draining");

    server.signal("INT");
    assert_eq!(
        server.wait_exit(GUARD),
        Some(0),
        "a second SIGINT exits at once"
    );
}
