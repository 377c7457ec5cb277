//! Strict fleet quotas in the core: an Allocate parked for its lease ([`Server::handle_lease_reply`])
//! is granted, refused with 486 or 508, or decided by per-node counting when no answer
//! comes in time; a retransmission is not parked twice; a client gone meanwhile leaves the
//! lease to the driver; the parked set is capped. A reservation (EVEN-PORT with R) holds a
//! lease of its own, handed to its claimer or given back when it ends unclaimed; what was
//! granted by per-node counting is adopted when the driver asks.

use super::*;

fn strict(user_quota: u32, total_quota: u32) -> Sim {
    let mut s = sim_with(Opts {
        user_quota,
        total_quota,
        // Many clients learn their nonce in no time here.
        unauth: super::super::rate_limit::RateLimit {
            rate: 1_000_000,
            burst: 1_000_000,
        },
        ..Opts::default()
    });
    s.io.lease_store = true;
    s
}

/// A client that knows its nonce, and the signed bytes of one Allocate of it.
fn ready(sim: &mut Sim, ft: FiveTuple) -> (Client, Vec<u8>) {
    let mut c = Client::new(ft, "alice", "wonderland");
    let txid = c.txid();
    let probe = c.build(method::ALLOCATE, txid, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let out = sim.client_send(ft, &probe);
    let r = Resp(out[0].clone());
    assert_eq!(r.code(), Some(401));
    c.nonce = r.msg().get(attr::NONCE).map(|n| n.to_vec());
    let txid = c.txid();
    let req = c.build(method::ALLOCATE, txid, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    (c, req)
}

/// Like [`ready`], with the Allocate's attributes of the caller's choice.
fn ready_with(
    sim: &mut Sim,
    ft: FiveTuple,
    user: &str,
    pass: &str,
    attrs: &dyn Fn(&mut MessageWriter),
) -> (Client, Vec<u8>) {
    let mut c = Client::new(ft, user, pass);
    let txid = c.txid();
    let probe = c.build(method::ALLOCATE, txid, attrs);
    let out = sim.client_send(ft, &probe);
    let r = Resp(out[0].clone());
    assert_eq!(r.code(), Some(401));
    c.nonce = r.msg().get(attr::NONCE).map(|n| n.to_vec());
    let txid = c.txid();
    let req = c.build(method::ALLOCATE, txid, attrs);
    (c, req)
}

fn reserve_attrs(w: &mut MessageWriter) {
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(attr::EVEN_PORT, &[0x80]);
}

fn refresh0(c: &mut Client, s: &mut Sim) {
    let r = c.request(s, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0);
    });
    assert!(r.is_ok(), "refresh 0: {:?}", r.code());
}

fn reply(sim: &mut Sim, id: u64, answer: LeaseAnswer) -> (bool, Vec<Vec<u8>>) {
    sim.io.to_client.clear();
    let now = sim.now();
    let taken = sim.server.handle_lease_reply(now, id, answer, &mut sim.io);
    (taken, sim.io.to_client.drain(..).map(|(_, d)| d).collect())
}

fn code(out: &[Vec<u8>]) -> Option<u16> {
    assert_eq!(out.len(), 1, "one answer");
    Resp(out[0].clone()).code()
}

#[test]
fn a_granted_lease_makes_the_allocation_which_gives_it_back_when_it_ends() {
    let mut s = strict(2, 10);
    let (mut c, req) = ready(&mut s, ft(4000));
    assert!(
        s.client_send(c.ft, &req).is_empty(),
        "parked: no answer yet"
    );
    assert_eq!(s.io.lease_requests, vec![(1, "alice".to_owned(), 2, 10, 1)]);
    assert_eq!(s.server.parked_count(), 1);
    assert_eq!(
        s.quotas.user_count("alice"),
        0,
        "nothing taken while parked"
    );

    // The client retransmits while parked: not parked twice, not answered twice.
    assert!(s.client_send(c.ft, &req).is_empty());
    assert_eq!(s.io.lease_requests.len(), 1);
    assert_eq!(s.server.stats().leases.retransmits, 1);

    let (taken, out) = reply(&mut s, 1, LeaseAnswer::Granted);
    assert!(taken);
    assert_eq!(code(&out), None, "granted");
    let granted = out[0].clone();
    assert_eq!(s.quotas.user_count("alice"), 1);
    assert_eq!(s.server.parked_count(), 0);
    // The same reply again is not the core's any more.
    assert!(!reply(&mut s, 1, LeaseAnswer::Granted).0);
    // A retransmission now gets the cached success.
    assert_eq!(s.client_send(c.ft, &req), vec![granted]);

    let r = c.request(&mut s, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0);
    });
    assert!(r.is_ok());
    assert_eq!(s.io.lease_releases, vec!["alice".to_owned()]);
    assert_eq!(s.quotas.user_count("alice"), 0);
    let l = s.server.stats().leases;
    assert_eq!((l.parked, l.granted, l.refused, l.timeouts), (1, 1, 0, 0));
}

#[test]
fn refusals_answer_486_for_the_user_and_508_for_the_total() {
    let mut s = strict(2, 10);
    let (c, req) = ready(&mut s, ft(4001));
    assert!(s.client_send(c.ft, &req).is_empty());
    let (taken, out) = reply(&mut s, 1, LeaseAnswer::UserQuota);
    assert!(taken);
    assert_eq!(code(&out), Some(486));
    let m = Message::parse(&out[0]).unwrap();
    assert!(
        m.get(attr::MESSAGE_INTEGRITY).is_some(),
        "signed as any answer to an authenticated request"
    );

    let (c2, req2) = ready(&mut s, ft(4002));
    assert!(s.client_send(c2.ft, &req2).is_empty());
    assert_eq!(
        code(&reply(&mut s, 2, LeaseAnswer::TotalQuota).1),
        Some(508)
    );
    assert_eq!((s.quotas.total(), s.server.allocation_count()), (0, 0));
    assert!(s.io.lease_releases.is_empty(), "nothing was held");
    // A refused Allocate sent again is a new request: parked again.
    assert!(s.client_send(c.ft, &req).is_empty());
    assert_eq!(s.io.lease_requests.len(), 3);
}

#[test]
fn no_answer_in_time_or_no_store_falls_back_to_per_node_counting() {
    let mut s = strict(1, 0);
    let (c, req) = ready(&mut s, ft(4003));
    assert!(s.client_send(c.ft, &req).is_empty());
    // The default timeout (redis.command-timeout-ms) is 500 ms: a second later it is decided.
    s.io.to_client.clear();
    s.advance(1);
    let out: Vec<Vec<u8>> = s.io.to_client.drain(..).map(|(_, d)| d).collect();
    assert_eq!(code(&out), None, "granted by per-node counting");
    assert_eq!(s.server.stats().leases.timeouts, 1);
    // The late answer is the driver's to give back.
    assert!(!reply(&mut s, 1, LeaseAnswer::Granted).0);

    // Per node, the user's quota of 1 is used: refused before it is even parked.
    let (c2, req2) = ready(&mut s, ft(4004));
    assert_eq!(code(&s.client_send(c2.ft, &req2)), Some(486));
    assert_eq!(s.io.lease_requests.len(), 1);

    // The store down (the driver declines): decided at once, per node.
    s.io.lease_store = false;
    s.quotas.set_limits(2, 0);
    let (c3, req3) = ready(&mut s, ft(4005));
    assert_eq!(code(&s.client_send(c3.ft, &req3)), None);
    // The allocation granted per node holds no lease: nothing to give back when it ends.
    s.server.close_all(s.now().mono, &mut s.io);
    assert!(s.io.lease_releases.is_empty());

    // "Unavailable" from the driver: per node too.
    s.io.lease_store = true;
    let (c4, req4) = ready(&mut s, ft(4006));
    assert!(s.client_send(c4.ft, &req4).is_empty());
    let id = s.io.lease_requests.last().unwrap().0;
    assert_eq!(code(&reply(&mut s, id, LeaseAnswer::Unavailable).1), None);
    assert_eq!(s.server.stats().leases.unavailable, 1);
}

#[test]
fn a_client_gone_meanwhile_leaves_the_lease_to_the_driver() {
    let mut s = strict(5, 0);
    let mut tcp_ft = ft(4007);
    tcp_ft.transport = Transport::Tcp;
    let (c, req) = ready(&mut s, tcp_ft);
    assert!(s.client_send(c.ft, &req).is_empty());
    // Its connection closes before the answer.
    let now = s.now().mono;
    s.server.close_tuple(&tcp_ft, now, &mut s.io);
    let (taken, out) = reply(&mut s, 1, LeaseAnswer::Granted);
    assert!(
        !taken && out.is_empty(),
        "nothing to answer, the driver gives it back"
    );
    assert_eq!(s.server.stats().leases.abandoned, 1);

    // Two Allocates of one 5-tuple parked at once: the first is granted, the second gets
    // 437 and its lease goes back at once.
    let (mut c, req) = ready(&mut s, ft(4008));
    let txid = c.txid();
    let req2 = c.build(method::ALLOCATE, txid, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert!(s.client_send(c.ft, &req).is_empty());
    assert!(s.client_send(c.ft, &req2).is_empty());
    let ids: Vec<u64> = s.io.lease_requests[1..].iter().map(|r| r.0).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(code(&reply(&mut s, ids[0], LeaseAnswer::Granted).1), None);
    assert_eq!(
        code(&reply(&mut s, ids[1], LeaseAnswer::Granted).1),
        Some(437)
    );
    assert_eq!(s.io.lease_releases, vec!["alice".to_owned()]);
    assert_eq!(s.quotas.user_count("alice"), 1);
}

#[test]
fn the_parked_set_is_capped_and_no_quota_parks_nothing() {
    let mut s = strict(0, 100_000);
    for i in 0..MAX_PARKED {
        let (c, req) = ready(&mut s, ft(10_000 + i as u16));
        assert!(s.client_send(c.ft, &req).is_empty());
    }
    assert_eq!(s.server.parked_count(), MAX_PARKED);
    let (c, req) = ready(&mut s, ft(9_999));
    assert_eq!(
        code(&s.client_send(c.ft, &req)),
        None,
        "past the cap: per node"
    );
    assert_eq!(s.server.stats().leases.overflow, 1);
    assert_eq!(s.io.lease_requests.len(), MAX_PARKED);

    // No quota in force: nothing to ask the store.
    let mut s = strict(0, 0);
    let (c, req) = ready(&mut s, ft(4009));
    assert_eq!(code(&s.client_send(c.ft, &req)), None);
    assert!(s.io.lease_requests.is_empty());
}

#[test]
fn a_reservation_holds_a_lease_of_its_own_and_hands_it_to_its_claimer() {
    let mut s = strict(3, 0);
    let (mut c1, req) = ready_with(&mut s, ft(4100), "alice", "wonderland", &reserve_attrs);
    assert!(s.client_send(c1.ft, &req).is_empty(), "parked");
    assert_eq!(
        s.io.lease_requests,
        vec![(1, "alice".to_owned(), 3, 0, 2)],
        "two leases asked at once: the allocation's and the reservation's"
    );
    let (_, out) = reply(&mut s, 1, LeaseAnswer::Granted);
    assert_eq!(code(&out), None);
    let token = Resp(out[0].clone())
        .msg()
        .get(attr::RESERVATION_TOKEN)
        .unwrap()
        .to_vec();
    assert_eq!(s.quotas.user_count("alice"), 2);
    assert!(s.io.lease_releases.is_empty(), "both leases are held");

    // The allocation ends: its lease goes back, the reservation keeps its own.
    refresh0(&mut c1, &mut s);
    assert_eq!(s.io.lease_releases, vec!["alice".to_owned()]);

    // Claimed by the same user from another 5-tuple: no new lease is asked, the
    // reservation's becomes the allocation's.
    let mut c2 = Client::new(ft(4101), "alice", "wonderland");
    let claim = token.clone();
    let r = c2.request(&mut s, method::ALLOCATE, &move |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &claim);
    });
    assert!(r.is_ok(), "{:?}", r.code());
    assert_eq!(s.io.lease_requests.len(), 1, "no lease asked for the claim");
    assert_eq!(s.io.lease_releases.len(), 1);
    assert_eq!(s.quotas.user_count("alice"), 1);
    // Past the reservation's lifetime nothing lapses: it was claimed.
    s.advance(31);
    assert_eq!(s.io.lease_releases.len(), 1);
    // Ended, the claimed allocation gives that lease back: two granted, two given back.
    refresh0(&mut c2, &mut s);
    assert_eq!(s.io.lease_releases, vec!["alice".to_owned(); 2]);
    assert_eq!(s.quotas.user_count("alice"), 0);
}

#[test]
fn an_unclaimed_reservation_gives_its_lease_back_when_it_ends() {
    let mut s = strict(3, 0);
    let (mut c1, req) = ready_with(&mut s, ft(4110), "alice", "wonderland", &reserve_attrs);
    assert!(s.client_send(c1.ft, &req).is_empty());
    assert_eq!(code(&reply(&mut s, 1, LeaseAnswer::Granted).1), None);
    refresh0(&mut c1, &mut s);
    assert_eq!(s.io.lease_releases.len(), 1);
    assert_eq!(s.quotas.user_count("alice"), 1, "the reservation's count");
    // Nothing touches the port pool meanwhile: the core's own timer ends the reservation,
    // and with it its local count and its lease.
    s.advance(29);
    assert_eq!(s.io.lease_releases.len(), 1, "not before its time");
    s.advance(2);
    assert_eq!(s.io.lease_releases, vec!["alice".to_owned(); 2]);
    assert_eq!(s.quotas.user_count("alice"), 0);

    // Claimed by another user: alice's lease goes back at the claim, and bob's claim asks
    // for a lease of its own.
    let (c3, req) = ready_with(&mut s, ft(4111), "alice", "wonderland", &reserve_attrs);
    assert!(s.client_send(c3.ft, &req).is_empty());
    let id = s.io.lease_requests.last().unwrap().0;
    let (_, out) = reply(&mut s, id, LeaseAnswer::Granted);
    let token = Resp(out[0].clone())
        .msg()
        .get(attr::RESERVATION_TOKEN)
        .unwrap()
        .to_vec();
    let (bob, claim) = ready_with(&mut s, ft(4112), "bob", "builder", &move |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &token);
    });
    assert!(s.client_send(bob.ft, &claim).is_empty(), "parked");
    let (id, user, _, _, count) = s.io.lease_requests.last().unwrap().clone();
    assert_eq!((user.as_str(), count), ("bob", 1));
    let released = s.io.lease_releases.len();
    assert_eq!(code(&reply(&mut s, id, LeaseAnswer::Granted).1), None);
    assert_eq!(
        s.io.lease_releases[released..],
        ["alice".to_owned()],
        "the reservation's lease, alice's, went back"
    );
    assert_eq!(s.quotas.user_count("bob"), 1);
    s.server.close_all(s.now().mono, &mut s.io);
    assert_eq!(s.io.lease_releases.last().map(String::as_str), Some("bob"));
}

#[test]
fn leases_granted_but_not_held_go_back() {
    // Locally the user may hold 2; one is held already. The store grants the two leases an
    // Allocate with a reservation asks for, but the reservation's local count is refused:
    // 486, and both leases go back.
    let mut s = strict(2, 0);
    let (c0, req) = ready(&mut s, ft(4120));
    assert!(s.client_send(c0.ft, &req).is_empty());
    assert_eq!(code(&reply(&mut s, 1, LeaseAnswer::Granted).1), None);
    let (c1, req) = ready_with(&mut s, ft(4121), "alice", "wonderland", &reserve_attrs);
    assert!(s.client_send(c1.ft, &req).is_empty());
    let (id, _, _, _, count) = s.io.lease_requests.last().unwrap().clone();
    assert_eq!(count, 2);
    assert_eq!(code(&reply(&mut s, id, LeaseAnswer::Granted).1), Some(486));
    assert_eq!(s.io.lease_releases, vec!["alice".to_owned(); 2]);
    assert_eq!(s.quotas.user_count("alice"), 1);
}

#[test]
fn what_per_node_counting_granted_is_adopted_once() {
    let mut s = strict(3, 0);
    // The store down: granted by per-node counting, no lease.
    s.io.lease_store = false;
    let (c1, req) = ready(&mut s, ft(4130));
    assert_eq!(code(&s.client_send(c1.ft, &req)), None);
    let (mut c2, req) = ready_with(&mut s, ft(4131), "alice", "wonderland", &reserve_attrs);
    assert_eq!(code(&s.client_send(c2.ft, &req)), None);
    assert_eq!(
        s.quotas.user_count("alice"),
        3,
        "two allocations, one reservation"
    );
    assert!(s.io.lease_requests.is_empty());

    // The store back: the driver has them adopted, all three, once.
    s.io.lease_store = true;
    assert_eq!(s.server.adopt_unleased(false), vec!["alice".to_owned(); 3]);
    assert!(s.server.adopt_unleased(false).is_empty());
    assert!(s.server.adopt_unleased(true).is_empty(), "all hold one now");

    // From now on they give their leases back as they end: the allocation now, the
    // reservation when its time is up.
    refresh0(&mut c2, &mut s);
    assert_eq!(s.io.lease_releases, vec!["alice".to_owned()]);
    s.advance(31);
    assert_eq!(s.io.lease_releases.len(), 2);

    // An Allocate that took its lease in the store is not adopted again.
    let (c3, req) = ready(&mut s, ft(4132));
    assert!(s.client_send(c3.ft, &req).is_empty());
    let id = s.io.lease_requests.last().unwrap().0;
    assert_eq!(code(&reply(&mut s, id, LeaseAnswer::Granted).1), None);
    assert!(s.server.adopt_unleased(true).is_empty());

    // No answer in time (the store slow): per node, flagged, adopted at the next call.
    let (c4, req) = ready(&mut s, ft(4133));
    assert!(s.client_send(c4.ft, &req).is_empty());
    s.advance(1);
    assert_eq!(s.server.stats().leases.timeouts, 1);
    assert_eq!(s.server.adopt_unleased(false), vec!["alice".to_owned()]);

    // Without a quota in force nothing is counted in the store, so nothing is adopted.
    let mut s = strict(0, 0);
    let (c, req) = ready(&mut s, ft(4134));
    assert_eq!(code(&s.client_send(c.ft, &req)), None);
    assert!(s.server.adopt_unleased(true).is_empty());
}
