//! Simulated reload ([`Server::reconfigure`]) and drain ([`Server::drain`]).

use super::*;

fn alt_server(r: &Resp) -> Option<SocketAddr> {
    let m = r.msg();
    let v = m.get(attr::ALTERNATE_SERVER)?;
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]);
    let ip: IpAddr = match (v.get(1)?, v.len()) {
        (1, 8) => <[u8; 4]>::try_from(&v[4..8]).ok()?.into(),
        (2, 20) => <[u8; 16]>::try_from(&v[4..20]).ok()?.into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn refresh(c: &mut Client, sim: &mut Sim, secs: u32) -> Resp {
    c.request(sim, method::REFRESH, &move |w| {
        w.u32_attr(attr::LIFETIME, secs);
    })
}

#[test]
fn drain_answers_300_with_the_alternate_of_the_client_family_else_508() {
    let mut sim = sim();
    let mut live = Client::new(ft(1000), "alice", "wonderland");
    assert!(live.allocate(&mut sim).is_ok());
    let p = peer("8.8.8.8:9000");
    assert!(permit(&mut live, &mut sim, &[p]).is_ok());
    assert!(!sim.server.is_draining());

    sim.server.drain(&[
        "[2001:db8::99]:3478".parse().unwrap(),
        "192.0.2.99:3478".parse().unwrap(),
    ]);
    assert!(sim.server.is_draining());
    let mut late = Client::new(ft(1001), "bob", "builder");
    let r = late.allocate(&mut sim);
    assert_eq!(r.code(), Some(300));
    assert_eq!(alt_server(&r), Some("192.0.2.99:3478".parse().unwrap()));
    // The 300 is authenticated like any other answer to an authenticated request.
    assert!(r.msg().get(attr::MESSAGE_INTEGRITY).is_some());

    // Only an IPv6 alternate: an IPv4 client gets 508.
    sim.server.drain(&["[2001:db8::99]:3478".parse().unwrap()]);
    let r = late.allocate(&mut sim);
    assert_eq!(r.code(), Some(508));
    assert_eq!(alt_server(&r), None);
    sim.server.drain(&[]);
    assert_eq!(late.allocate(&mut sim).code(), Some(508));

    // The live allocation relays both ways and refreshes.
    sim.io.to_peer.clear();
    sim.client_send(live.ft, &send_indication(live.ft, p, b"out"));
    assert_eq!(sim.io.to_peer.len(), 1);
    let relay = relay_of(&sim, false);
    assert_eq!(sim.peer_send(relay, p, b"in").len(), 1);
    assert_eq!(refresh(&mut live, &mut sim, 600).code(), None);
    assert_eq!(sim.server.allocation_count(), 1);
    assert_eq!(refresh(&mut live, &mut sim, 0).code(), None);
    assert_eq!(sim.server.allocation_count(), 0);
}

pub(super) fn reconfigure_with(users: &[(&str, &str)], user_quota: u32) -> Reconfigure {
    Reconfigure {
        auth: Arc::new(Authenticator::new(AuthConfig {
            realm: REALM.into(),
            users: users
                .iter()
                .map(|(n, p)| (n.to_string(), UserSecret::Password(p.to_string())))
                .collect(),
            secrets: vec!["rotated".into()],
            rest_separator: ':',
            nonce_lifetime_secs: 600,
            // The running key (see `sim_with`): nonces already issued stay valid.
            nonce_key: [9; 32],
        })),
        policy: PeerPolicy::new(vec![], vec![]),
        user_quota,
        total_quota: 0,
        default_lifetime: Duration::from_secs(300),
        max_lifetime: Duration::from_secs(900),
        software: None,
        mapped_address: false,
        enforce_credential_expiry: true,
        strict_channel_numbers: false,
        telemetry: true,
    }
}

#[test]
fn reconfigure_swaps_credentials_and_keeps_allocations_and_nonces() {
    let mut sim = sim();
    let mut live = Client::new(ft(2000), "alice", "wonderland");
    assert!(live.allocate(&mut sim).is_ok());
    let p = peer("8.8.8.8:9000");
    assert!(permit(&mut live, &mut sim, &[p]).is_ok());
    // carol learns a nonce now, while she is still unknown.
    let mut carol = Client::new(ft(2001), "carol", "new-pw");
    assert_eq!(carol.allocate(&mut sim).code(), Some(401));
    assert!(carol.nonce.is_some());

    sim.server.reconfigure(reconfigure_with(
        &[("alice", "wonderland"), ("carol", "new-pw")],
        0,
    ));

    // Her old nonce is still good: the first try succeeds, no 438.
    let txid = carol.txid();
    let req = carol.build(method::ALLOCATE, txid, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let out = sim.client_send(carol.ft, &req);
    let r = Resp(out.into_iter().next().expect("a response"));
    assert_eq!(
        r.code(),
        None,
        "new user accepted with a nonce from before the reload"
    );
    assert_eq!(r.lifetime(), 300, "the new default lifetime applies");
    // bob was removed.
    let mut bob = Client::new(ft(2002), "bob", "builder");
    assert_eq!(bob.allocate(&mut sim).code(), Some(401));
    // REST credentials of the new secret work.
    let (u, pw) = rest_credential("rotated", "dave", UNIX0 + 3600, ':');
    let mut dave = Client::new(ft(2003), &u, &pw);
    assert!(dave.allocate(&mut sim).is_ok());

    // alice's allocation was not touched.
    sim.io.to_peer.clear();
    sim.client_send(live.ft, &send_indication(live.ft, p, b"still here"));
    assert_eq!(sim.io.to_peer.len(), 1);
    assert_eq!(sim.server.allocation_count(), 3);
}

#[test]
fn reconfigured_quota_counts_the_live_allocations() {
    let mut sim = sim();
    let mut a1 = Client::new(ft(3000), "alice", "wonderland");
    let mut a2 = Client::new(ft(3001), "alice", "wonderland");
    assert!(a1.allocate(&mut sim).is_ok());
    assert!(a2.allocate(&mut sim).is_ok());
    sim.server
        .reconfigure(reconfigure_with(&[("alice", "wonderland")], 2));
    let mut a3 = Client::new(ft(3002), "alice", "wonderland");
    assert_eq!(a3.allocate(&mut sim).code(), Some(486), "two live already");
    assert_eq!(refresh(&mut a1, &mut sim, 0).code(), None);
    assert!(
        a3.allocate(&mut sim).is_ok(),
        "one ended: room for one more"
    );
}

#[test]
fn reconfigure_keeps_the_own_address_rule() {
    let own = ft(1).server;
    let mut sim = sim_with(Opts {
        own: vec![own],
        ..Opts::default()
    });
    let mut c = Client::new(ft(2000), "alice", "wonderland");
    assert!(c.allocate(&mut sim).is_ok());
    // The reloaded policy allows everything, the listen address included by its range.
    let mut r = reconfigure_with(&[("alice", "wonderland")], 0);
    r.policy = PeerPolicy::new(
        vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        vec![],
    );
    sim.server.reconfigure(r);
    assert!(permit(&mut c, &mut sim, &[peer("127.0.0.1:5000")]).is_ok());
    assert_eq!(permit(&mut c, &mut sim, &[own]).code(), Some(403));
}
