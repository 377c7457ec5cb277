//! Simulated fleet hooks: the shared store's view swapped in ([`Server::set_store`]) with
//! its users, secrets, revocations and peer ranges, reversible redirects with
//! ALTERNATE-DOMAIN for TLS clients ([`Server::set_redirect`]), and allocation events.

use std::collections::BTreeMap;

use super::*;
use crate::auth::StoreView;
use crate::auth::store::StoreValue;

fn view(entries: &[(&str, &str)]) -> Arc<StoreView> {
    let map: BTreeMap<String, StoreValue> = entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), StoreValue::Text((*v).to_owned())))
        .collect();
    Arc::new(StoreView::build(REALM, &map))
}

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn store_users_revocations_and_peer_ranges_apply_to_new_and_live_allocations() {
    let mut sim = sim();
    let gorst_key =
        crate::auth::long_term_key(crate::auth::PasswordAlgorithm::Md5, "gorst", REALM, "hero");
    let user_key = format!("turn/realm/{REALM}/user/gorst/key");
    let mut gorst = Client::new(ft(2000), "gorst", "hero");
    assert_eq!(
        gorst.allocate(&mut sim).code(),
        Some(401),
        "not in the store yet"
    );

    let now = sim.now();
    let v = view(&[(user_key.as_str(), hex(gorst_key.as_bytes()).as_str())]);
    assert_eq!(sim.server.set_store(v, now, &mut sim.io), 0);
    let mut gorst = Client::new(ft(2001), "gorst", "hero");
    assert!(gorst.allocate(&mut sim).is_ok(), "a store user allocates");
    let mut alice = Client::new(ft(2002), "alice", "wonderland");
    assert!(
        alice.allocate(&mut sim).is_ok(),
        "the file's users still do"
    );
    // A reload keeps the store's view.
    sim.server.reconfigure(Reconfigure {
        auth: Arc::new(Authenticator::new(AuthConfig {
            realm: REALM.into(),
            users: vec![("alice".into(), UserSecret::Password("wonderland".into()))],
            secrets: vec![],
            rest_separator: ':',
            nonce_lifetime_secs: 600,
            nonce_key: [9; 32],
        })),
        policy: PeerPolicy::new(vec!["8.8.0.0/16".parse().unwrap()], vec![]),
        user_quota: 0,
        total_quota: 0,
        default_lifetime: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
        software: None,
        mapped_address: false,
        enforce_credential_expiry: true,
        strict_channel_numbers: false,
        telemetry: true,
    });
    let mut after_reload = Client::new(ft(2004), "gorst", "hero");
    assert!(
        after_reload.allocate(&mut sim).is_ok(),
        "a reload keeps the store's users"
    );

    // Peer ranges: the store denies a range the file allows.
    let p = peer("8.8.4.4:9000");
    assert!(permit(&mut gorst, &mut sim, &[p]).is_ok());
    let denied = format!("turn/realm/{REALM}/denied-peer-ip");
    let v = view(&[
        (user_key.as_str(), hex(gorst_key.as_bytes()).as_str()),
        (denied.as_str(), "8.8.4.0-8.8.4.255"),
    ]);
    sim.server.set_store(v, now, &mut sim.io);
    assert_eq!(permit(&mut gorst, &mut sim, &[p]).code(), Some(403));
    assert!(permit(&mut gorst, &mut sim, &[peer("8.8.5.5:1")]).is_ok());

    // Revoked: the live allocation ends, new requests get 401.
    sim.server.capture_events(true);
    let revoked = format!("turnd/revoked/{REALM}/gorst");
    let v = view(&[
        (user_key.as_str(), hex(gorst_key.as_bytes()).as_str()),
        (revoked.as_str(), "0"),
    ]);
    assert_eq!(
        sim.server.set_store(v, now, &mut sim.io),
        2,
        "gorst's two allocations end"
    );
    assert_eq!(sim.server.allocation_count(), 1, "alice's stays");
    let (events, lost) = sim.server.take_events();
    assert_eq!(lost, 0);
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e.kind, AllocationEventKind::Ended);
        assert!(matches!(e.reason, Some(EndReason::Revoked)));
        assert_eq!(e.username, "gorst");
    }
    let mut again = Client::new(ft(2003), "gorst", "hero");
    assert_eq!(again.allocate(&mut sim).code(), Some(401));
}

#[test]
fn redirect_is_reversible_and_names_the_domain_to_tls_clients_only() {
    let mut sim = sim();
    let alt: SocketAddr = "192.0.2.77:3478".parse().unwrap();
    sim.server
        .set_redirect(Some(&[alt]), Some("turn-2.example.com".into()));
    assert!(sim.server.is_redirecting());
    let mut udp = Client::new(ft(3000), "alice", "wonderland");
    let r = udp.allocate(&mut sim);
    assert_eq!(r.code(), Some(300));
    assert!(r.msg().get(attr::ALTERNATE_SERVER).is_some());
    assert!(
        r.msg().get(attr::ALTERNATE_DOMAIN).is_none(),
        "not over TLS"
    );

    let mut tls_ft = ft(3001);
    tls_ft.transport = Transport::Tls;
    let mut tls = Client::new(tls_ft, "alice", "wonderland");
    let r = tls.request(&mut sim, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(r.code(), Some(300));
    assert_eq!(
        r.msg().get(attr::ALTERNATE_DOMAIN),
        Some(&b"turn-2.example.com"[..])
    );

    sim.server.set_redirect(None, None);
    assert!(!sim.server.is_redirecting());
    let mut c = Client::new(ft(3002), "alice", "wonderland");
    assert!(c.allocate(&mut sim).is_ok());
}

#[test]
fn events_record_created_refreshed_and_ended_with_counters() {
    let mut sim = sim();
    sim.server.capture_events(true);
    let mut c = Client::new(ft(4000), "alice", "wonderland");
    assert!(c.allocate(&mut sim).is_ok());
    let r = c.request(&mut sim, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0);
    });
    assert!(r.is_ok());
    let (events, _) = sim.server.take_events();
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [AllocationEventKind::Created, AllocationEventKind::Ended]
    );
    assert_eq!(events[0].unix, UNIX0);
    assert_eq!(events[0].lifetime_secs, 600);
    assert!(matches!(events[1].reason, Some(EndReason::Refreshed0)));
    // Off: nothing kept.
    sim.server.capture_events(false);
    let mut c = Client::new(ft(4001), "alice", "wonderland");
    assert!(c.allocate(&mut sim).is_ok());
    assert!(sim.server.take_events().0.is_empty());
}
