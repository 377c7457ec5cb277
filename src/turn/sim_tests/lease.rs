//! Strict fleet quotas in the core: an Allocate parked for its lease ([`Server::handle_lease_reply`])
//! is granted, refused with 486 or 508, or decided by per-node counting when no answer
//! comes in time; a retransmission is not parked twice; a client gone meanwhile leaves the
//! lease to the driver; the parked set is capped.

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
    assert_eq!(s.io.lease_requests, vec![(1, "alice".to_owned(), 2, 10)]);
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
