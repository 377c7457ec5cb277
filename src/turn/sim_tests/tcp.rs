//! RFC 6062 in the simulator: TCP allocations, Connect (including to addresses the peer
//! policy denies: nothing can leave the simulator, so this is where private and loopback
//! targets are tried), ConnectionAttempt, ConnectionBind and the 30-second bind window.

use std::net::SocketAddr;

use super::*;
use crate::stun::{Class, attr, method};
use crate::turn::error::RequestError;

fn tcp_ft(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Tcp,
        ..ft(port)
    }
}

fn allocate_tcp(c: &mut Client, sim: &mut Sim) -> Resp {
    c.request(sim, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    })
}

fn connect(c: &mut Client, sim: &mut Sim, p: SocketAddr) -> Resp {
    c.request(sim, method::CONNECT, &move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, p);
    })
}

fn connection_id(r: &[u8]) -> u32 {
    crate::stun::Message::parse(r)
        .unwrap()
        .u32_attr(attr::CONNECTION_ID)
        .unwrap()
        .unwrap()
}

/// Sends the request and returns the single message the core sent back (if any).
fn send_one(
    sim: &mut Sim,
    c: &mut Client,
    m: u16,
    attrs: &dyn Fn(&mut MessageWriter),
) -> Vec<Vec<u8>> {
    let txid = c.txid();
    let req = c.build(m, txid, attrs);
    sim.client_send(c.ft, &req)
}

#[test]
fn tcp_allocation_only_over_streams_and_without_udp_options() {
    let mut sim = sim();
    let mut udp = Client::new(ft(1000), "alice", "wonderland");
    assert_eq!(
        allocate_tcp(&mut udp, &mut sim).code(),
        Some(400),
        "TCP over UDP"
    );
    let mut c = Client::new(tcp_ft(1001), "alice", "wonderland");
    let r = c.request(&mut sim, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80, 0, 0, 0]);
    });
    assert_eq!(r.code(), Some(400), "EVEN-PORT with TCP");
    let r = c.request(&mut sim, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0])
            .attr(attr::DONT_FRAGMENT, &[]);
    });
    assert_eq!(r.code(), Some(400), "DONT-FRAGMENT with TCP");
    assert!(sim.io.tcp.listens.is_empty());
    let r = allocate_tcp(&mut c, &mut sim);
    assert!(r.is_ok(), "{:?}", r.code());
    assert_eq!(sim.io.tcp.listens.len(), 1);
    assert_eq!(r.relayed()[0].port(), sim.io.tcp.listens[0].1.port());
    // No channels on a TCP allocation.
    assert_eq!(
        bind(&mut c, &mut sim, 0x4000, peer("1.1.1.1:9")).code(),
        Some(400)
    );
    // Connect on a UDP allocation: 400; without an allocation: 437.
    let mut u = Client::new(tcp_ft(1002), "alice", "wonderland");
    assert_eq!(
        connect(&mut u, &mut sim, peer("1.1.1.1:9")).code(),
        Some(437)
    );
    assert!(u.allocate(&mut sim).is_ok());
    assert_eq!(
        connect(&mut u, &mut sim, peer("1.1.1.1:9")).code(),
        Some(400)
    );
    // Deleting the allocation closes its relay listener.
    let r = c.request(&mut sim, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0);
    });
    assert!(r.is_ok());
    assert!(sim.io.closed.contains(&sim.io.tcp.listens[0].0));
}

#[test]
fn connect_to_denied_addresses_is_refused_like_permissions() {
    let mut sim = sim();
    let mut c = Client::new(tcp_ft(2000), "alice", "wonderland");
    assert!(allocate_tcp(&mut c, &mut sim).is_ok());
    for denied in [
        "127.0.0.1:80",
        "10.1.2.3:22",
        "192.168.1.1:80",
        "169.254.169.254:80",
        "100.64.0.1:80",
        "0.0.0.0:80",
        "[::ffff:127.0.0.1]:80",
        "[::ffff:10.0.0.1]:80",
        "[64:ff9b::a00:1]:80",
    ] {
        let p = peer(denied);
        let r = connect(&mut c, &mut sim, p);
        // An IPv6 peer on an IPv4 allocation may be refused for its family first; either
        // way no connection is attempted.
        assert!(
            matches!(r.code(), Some(403) | Some(443)),
            "{denied}: {:?}",
            r.code()
        );
        let cp = permit(&mut c, &mut sim, &[p]);
        assert_eq!(
            cp.code(),
            r.code(),
            "{denied}: Connect and CreatePermission agree"
        );
    }
    assert!(
        sim.io.tcp.connects.is_empty(),
        "no connection toward a denied address"
    );
    // Missing XOR-PEER-ADDRESS: 400.
    let r = c.request(&mut sim, method::CONNECT, &|_| {});
    assert_eq!(r.code(), Some(400));
}

#[test]
fn connect_then_bind_and_446_447() {
    let mut sim = sim();
    sim.server.set_worker_index(3);
    let mut c = Client::new(tcp_ft(3000), "alice", "wonderland");
    assert!(allocate_tcp(&mut c, &mut sim).is_ok());
    let p = peer("8.8.8.8:443");
    // The Connect response waits for the driver.
    let out = send_one(&mut sim, &mut c, method::CONNECT, &move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, p);
    });
    assert!(out.is_empty(), "no answer before the connection outcome");
    let (id, from, to) = sim.io.tcp.connects[0];
    assert_eq!(connection_owner(id), 3, "the id names the worker");
    assert_eq!(to, p);
    assert_eq!(
        from, sim.io.tcp.listens[0].1,
        "connects from the relayed address"
    );
    // A second Connect to the same peer while the first is under way: 446.
    assert_eq!(connect(&mut c, &mut sim, p).code(), Some(446));
    sim.io.to_client.clear();
    let now = sim.now();
    assert!(sim.server.handle_peer_connected(now, id, true, &mut sim.io));
    let (to_ft, resp) = sim.io.to_client.pop().unwrap();
    assert_eq!(to_ft, c.ft);
    let r = Resp(resp);
    assert!(r.is_ok());
    assert_eq!(connection_id(&r.0), id);
    assert_eq!(
        connect(&mut c, &mut sim, p).code(),
        Some(446),
        "pending: still 446"
    );

    // ConnectionBind on a new connection by another user: 441; by the owner: bound.
    let mut d = Client::new(tcp_ft(3001), "bob", "builder");
    d.nonce = c.nonce.clone();
    let out = send_one(&mut sim, &mut d, method::CONNECTION_BIND, &move |w| {
        w.u32_attr(attr::CONNECTION_ID, id);
    });
    assert!(out.is_empty(), "the answer waits for the owner");
    let (cid, data, user) = sim.io.tcp.claims.pop().unwrap();
    assert_eq!((cid, data, user.as_str()), (id, d.ft, "bob"));
    assert_eq!(
        sim.server.take_connection(id, "bob"),
        Err(RequestError::WrongCredentials)
    );
    sim.io.to_client.clear();
    assert!(!sim.server.handle_connection_claimed(
        &d.ft,
        id,
        Err(RequestError::WrongCredentials),
        &mut sim.io
    ));
    assert_eq!(Resp(sim.io.to_client.pop().unwrap().1).code(), Some(441));

    let mut e = Client::new(tcp_ft(3002), "alice", "wonderland");
    e.nonce = c.nonce.clone();
    let out = send_one(&mut sim, &mut e, method::CONNECTION_BIND, &move |w| {
        w.u32_attr(attr::CONNECTION_ID, id);
    });
    assert!(out.is_empty(), "the answer waits for the owner");
    assert_eq!(sim.server.take_connection(id, "alice"), Ok(()));
    assert_eq!(
        sim.server.take_connection(id, "alice"),
        Err(RequestError::BadRequest),
        "bound once"
    );
    sim.io.to_client.clear();
    assert!(
        sim.server
            .handle_connection_claimed(&e.ft, id, Ok(()), &mut sim.io)
    );
    let (to_ft, resp) = sim.io.to_client.pop().unwrap();
    assert_eq!(to_ft, e.ft);
    assert!(Resp(resp).is_ok());
    assert_eq!(sim.io.tcp.binds, vec![(id, e.ft)]);

    // A failed connection: 447, and the peer can be tried again.
    let q = peer("8.8.4.4:443");
    let out = send_one(&mut sim, &mut c, method::CONNECT, &move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, q);
    });
    assert!(out.is_empty());
    let (id2, _, _) = *sim.io.tcp.connects.last().unwrap();
    sim.io.to_client.clear();
    let now = sim.now();
    assert!(
        !sim.server
            .handle_peer_connected(now, id2, false, &mut sim.io)
    );
    assert_eq!(Resp(sim.io.to_client.pop().unwrap().1).code(), Some(447));
    let out = send_one(&mut sim, &mut c, method::CONNECT, &move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, q);
    });
    assert!(out.is_empty(), "a new attempt starts");

    // The allocation ends: its data connections are closed.
    sim.io.tcp.closed.clear();
    sim.server.close_tuple(&c.ft, sim.now().mono, &mut sim.io);
    assert!(sim.io.tcp.closed.contains(&id));
    assert_eq!(sim.server.peer_connection_count(), 0);
}

#[test]
fn incoming_peer_needs_permission_and_bind_window_closes() {
    let mut sim = sim();
    let mut c = Client::new(tcp_ft(4000), "alice", "wonderland");
    assert!(allocate_tcp(&mut c, &mut sim).is_ok());
    let relay = sim.io.tcp.listens[0].0;
    let p = peer("9.9.9.9:50000");
    let now = sim.now();
    assert_eq!(
        sim.server
            .handle_peer_connection(now, relay, p, &mut sim.io),
        None,
        "no permission: refused"
    );
    assert!(permit(&mut c, &mut sim, &[p]).is_ok());
    sim.io.to_client.clear();
    let now = sim.now();
    let id = sim
        .server
        .handle_peer_connection(now, relay, p, &mut sim.io)
        .expect("accepted");
    let (to, ind) = sim.io.to_client.pop().unwrap();
    assert_eq!(to, c.ft);
    let m = crate::stun::Message::parse(&ind).unwrap();
    assert_eq!(m.method(), method::CONNECTION_ATTEMPT);
    assert_eq!(m.class(), Class::Indication);
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(Ok(p)));
    assert_eq!(connection_id(&ind), id);
    // Unbound for 30 seconds: closed.
    sim.advance(29);
    assert!(!sim.io.tcp.closed.contains(&id));
    sim.advance(2);
    assert!(sim.io.tcp.closed.contains(&id));
    assert_eq!(
        sim.server.take_connection(id, "alice"),
        Err(RequestError::BadRequest)
    );
}

#[test]
fn peer_connections_per_allocation_are_capped() {
    let mut sim = sim();
    let mut c = Client::new(tcp_ft(5000), "alice", "wonderland");
    assert!(allocate_tcp(&mut c, &mut sim).is_ok());
    // max_permissions is 8 in the simulator: 8 Connects may be under way at once.
    for i in 0..8u8 {
        let p = SocketAddr::new(std::net::IpAddr::from([8, 8, 8, i]), 443);
        let out = send_one(&mut sim, &mut c, method::CONNECT, &move |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, p);
        });
        assert!(out.is_empty(), "connect {i} starts");
    }
    assert_eq!(
        connect(&mut c, &mut sim, peer("9.9.9.9:443")).code(),
        Some(508)
    );
    // One finishes (fails): room for another.
    let (id, _, _) = sim.io.tcp.connects[0];
    let now = sim.now();
    sim.server
        .handle_peer_connected(now, id, false, &mut sim.io);
    let out = send_one(&mut sim, &mut c, method::CONNECT, &|w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer("9.9.9.9:443"));
    });
    assert!(out.is_empty());
    assert_eq!(sim.server.peer_connection_count(), 8);
}
