//! Hostile clients against the core: reflection budget, minimal unauthenticated answers,
//! no state for strangers, caps, and the peer table for Send.

use super::*;
use crate::turn::rate_limit::RateLimit;

fn limited(rate: u32, burst: u32) -> Opts {
    Opts {
        unauth: RateLimit { rate, burst },
        ..Opts::default()
    }
}

fn ft_from(ip: &str, port: u16) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::new(ip.parse().unwrap(), port),
        server: "192.0.2.10:3478".parse().unwrap(),
        transport: Transport::Udp,
    }
}

fn bare(m: u16, txid: u8) -> Vec<u8> {
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, m, Class::Request, [txid; 12]);
    buf
}

/// The attribute types of a message, in order.
fn attr_types(raw: &[u8]) -> Vec<u16> {
    Message::parse(raw)
        .unwrap()
        .attributes()
        .map(|(t, _)| t)
        .collect()
}

/// A 20-byte Allocate earns a 401 several times its size: those draw on the allowance. A
/// Binding's answer is less than twice its request: it pays for itself and is always sent.
#[test]
fn unauthenticated_responses_are_limited_per_source() {
    let mut s = sim_with(limited(1, 5));
    let (mut answered, mut bytes_in, mut bytes_out) = (0, 0, 0);
    for i in 0..50u16 {
        // Many source ports of one address: one budget.
        let req = bare(method::ALLOCATE, i as u8);
        bytes_in += req.len();
        let out = s.client_send(ft_from("198.51.100.7", 1000 + i), &req);
        answered += out.len();
        bytes_out += out.iter().map(Vec::len).sum::<usize>();
    }
    let allowance = 5 * challenge_len(REALM);
    assert!(
        bytes_out <= 2 * bytes_in + allowance,
        "{bytes_out} > 2 x {bytes_in} + {allowance}"
    );
    // The burst, then two 401s for every five bare requests or so.
    assert!((5..30).contains(&answered), "{answered}");
    assert_eq!(s.server.stats().rate_limited as usize, 50 - answered);
    for i in 0..50u16 {
        let out = s.client_send(ft_from("198.51.100.7", 2000 + i), &bare(method::BINDING, 1));
        assert_eq!(out.len(), 1, "a Binding answer pays for itself");
        assert!(out[0].len() <= 40);
    }
    // Another source has its own budget.
    assert_eq!(
        s.client_send(ft_from("198.51.100.8", 1000), &bare(method::ALLOCATE, 1))
            .len(),
        1
    );
    // (The allowance's refill over time is tested in `rate_limit`.)
    let src = ft_from("198.51.100.7", 999);
    // A stream client cannot spoof its source: not limited.
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..src
    };
    for i in 0..20 {
        assert_eq!(s.client_send(tcp, &bare(method::ALLOCATE, i)).len(), 1);
    }
}

/// An address that holds an authenticated allocation has proved it is real: answers to it
/// are not limited, so a spoofer using it cannot starve its next client of a 401.
#[test]
fn an_address_with_an_allocation_is_answered_whatever_the_flood() {
    let mut s = sim_with(limited(1, 2));
    let victim = "198.51.100.20";
    let mut c = Client::new(ft_from(victim, 4000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    // The spoofer's bare Allocates, from every port of the victim's address.
    let mut answered = 0;
    for i in 0..2000u16 {
        answered += s
            .client_send(
                ft_from(victim, 10_000 + i),
                &bare(method::ALLOCATE, i as u8),
            )
            .len();
    }
    assert_eq!(answered, 2000);
    // A new client behind the same address gets its 401 and allocates.
    let mut newcomer = Client::new(ft_from(victim, 4001), "bob", "builder");
    assert!(newcomer.allocate(&mut s).is_ok());
    // Once the address holds no allocation, the budget applies again.
    for c in [&mut c, &mut newcomer] {
        let r = c.request(&mut s, method::REFRESH, &|w| {
            w.u32_attr(attr::LIFETIME, 0);
        });
        assert!(r.is_ok());
    }
    let answered = (0..100u16)
        .map(|i| {
            s.client_send(ft_from(victim, 20_000 + i), &bare(method::ALLOCATE, 1))
                .len()
        })
        .sum::<usize>();
    assert!(answered < 100, "{answered}");
}

/// RFC 8489 §9.2.4 checks the nonce after the integrity: a stale nonce on a request with
/// valid MESSAGE-INTEGRITY gets its 438 even with the source's budget spent, while a stale
/// nonce with a wrong key gets a (budgeted) 401.
#[test]
fn stale_nonce_with_valid_integrity_gets_438_whatever_the_budget() {
    let mut s = sim_with(limited(1, 1));
    let src = ft_from("198.51.100.30", 5000);
    let mut c = Client::new(src, "alice", "wonderland");
    // Learn a nonce (spends the allowance) and let it go stale without allocating.
    let r = c.request(&mut s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[0x07, 0, 0, 0]);
    });
    assert_eq!(r.code(), Some(440));
    for i in 0..20u16 {
        s.client_send(
            ft_from("198.51.100.30", 6000 + i),
            &bare(method::ALLOCATE, 1),
        );
    }
    s.advance(3600);
    for i in 0..40u16 {
        s.client_send(
            ft_from("198.51.100.30", 7000 + i),
            &bare(method::ALLOCATE, 1),
        );
    }
    let txid = c.txid();
    let req = c.build(method::ALLOCATE, txid, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let out = s.client_send(src, &req);
    assert_eq!(out.len(), 1, "438 is answered with the budget spent");
    assert_eq!(Resp(out[0].clone()).code(), Some(438));
    // The same stale nonce under a wrong password: integrity first, so 401, not 438 (this
    // signed request is more than half the 401's size, so it pays for its answer).
    let mut wrong = Client::new(src, "alice", "not-it");
    wrong.nonce = c.nonce.clone();
    let txid = wrong.txid();
    let req = wrong.build(method::ALLOCATE, txid, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let out = s.client_send(src, &req);
    assert_eq!(Resp(out[0].clone()).code(), Some(401));
    // The client recovers with the 438's nonce.
    assert!(c.allocate(&mut s).is_ok());
}

#[test]
fn authenticated_requests_do_not_draw_on_the_budget() {
    let mut s = sim_with(limited(1, 2));
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    // One 401 spends one token; the authenticated Allocate and what follows spend none.
    assert!(c.allocate(&mut s).is_ok());
    for i in 0..20 {
        let p = peer(&format!("8.8.8.{}:1", i % 4 + 1));
        assert!(permit(&mut c, &mut s, &[p]).is_ok(), "{i}");
    }
}

#[test]
fn limiter_disabled_answers_everything() {
    let mut s = sim_with(limited(0, 0));
    for i in 0..500u16 {
        assert_eq!(s.client_send(ft(i), &bare(method::BINDING, 1)).len(), 1);
    }
}

#[test]
fn unauthenticated_answers_carry_nothing_extra_even_with_software_set() {
    let mut s = sim_with(Opts {
        software: Some("turnd-test".into()),
        ..Opts::default()
    });
    // 401: ERROR-CODE, REALM, NONCE, PASSWORD-ALGORITHMS and nothing else.
    let out = s.client_send(ft(1000), &bare(method::ALLOCATE, 1));
    assert_eq!(
        attr_types(&out[0]),
        vec![
            attr::ERROR_CODE,
            attr::REALM,
            attr::NONCE,
            attr::PASSWORD_ALGORITHMS
        ]
    );
    // Binding: XOR-MAPPED-ADDRESS only.
    let out = s.client_send(ft(1000), &bare(method::BINDING, 2));
    assert_eq!(attr_types(&out[0]), vec![attr::XOR_MAPPED_ADDRESS]);
    // 400 to an unknown method: ERROR-CODE only.
    let out = s.client_send(ft(1000), &bare(0x0FF, 3));
    assert_eq!(attr_types(&out[0]), vec![attr::ERROR_CODE]);
    // A wrong password: a fresh challenge, still no SOFTWARE.
    let mut c = Client::new(ft(1001), "alice", "not-the-password");
    let r = c.allocate(&mut s);
    assert_eq!(r.code(), Some(401));
    assert!(!attr_types(&r.0).contains(&attr::SOFTWARE));
    // An authenticated answer does carry SOFTWARE.
    let mut c = Client::new(ft(1002), "alice", "wonderland");
    let r = c.allocate(&mut s);
    assert!(r.is_ok());
    assert_eq!(r.msg().get(attr::SOFTWARE), Some(&b"turnd-test"[..]));
}

/// The largest response/request size ratio any unauthenticated request gets, over every
/// method, both address families, with and without FINGERPRINT and with unknown attributes.
#[test]
fn worst_unauthenticated_amplification_ratio() {
    let mut s = sim_with(limited(0, 0));
    let mut worst = (0.0f64, String::new());
    let methods = [
        method::BINDING,
        method::ALLOCATE,
        method::REFRESH,
        method::CREATE_PERMISSION,
        method::CHANNEL_BIND,
        method::CONNECT,
        0x0FF,
    ];
    for (i, client) in ["198.51.100.7", "2001:db8:ffff::7"].iter().enumerate() {
        for m in methods {
            for variant in 0..4 {
                let mut req = Vec::new();
                let mut w = MessageWriter::new(&mut req, m, Class::Request, [9; 12]);
                if variant & 1 == 1 {
                    for t in 0..16u16 {
                        w.attr(0x7000 + t, &[]);
                    }
                }
                if variant & 2 == 2 {
                    w.fingerprint();
                }
                let out = s.client_send(ft_from(client, 1000 + i as u16), &req);
                for resp in out {
                    let ratio = resp.len() as f64 / req.len() as f64;
                    if ratio > worst.0 {
                        worst = (
                            ratio,
                            format!(
                                "method {m:#05x} variant {variant} from {client}: {} -> {} bytes",
                                req.len(),
                                resp.len()
                            ),
                        );
                    }
                }
            }
        }
    }
    println!(
        "worst unauthenticated amplification: {:.2} ({})",
        worst.0, worst.1
    );
    // The 401 to a bare 20-byte request is the worst case: ERROR-CODE (24), REALM (12),
    // NONCE (44), PASSWORD-ALGORITHMS (12) after the 20-byte header: 112 bytes.
    assert!(worst.0 <= 5.6 + f64::EPSILON, "{worst:?}");
    assert!(worst.1.contains("0x003") || worst.1.contains("0x004") || worst.1.contains("0x008"));
}

#[test]
fn unauthenticated_traffic_creates_no_state() {
    let mut s = sim_with(limited(0, 0));
    let mut buf = Vec::new();
    for i in 0..5000u32 {
        let ip = format!("198.51.{}.{}", (i >> 8) as u8, i as u8);
        let src = ft_from(&ip, (i % 60000) as u16 + 1);
        // Allocate without credentials, with a forged nonce and integrity, and a Send and
        // ChannelData for allocations that do not exist.
        s.client_send(src, &bare(method::ALLOCATE, i as u8));
        let mut w = MessageWriter::new(&mut buf, method::ALLOCATE, Class::Request, [1; 12]);
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::USERNAME, b"alice")
            .attr(attr::REALM, REALM.as_bytes())
            .attr(
                attr::NONCE,
                b"obMatJos2gAAA0000000000000000AAAAAAAAAAAAAAAAAAAAAA",
            )
            .integrity(b"guess");
        s.client_send(src, &buf);
        s.client_send(src, &send_indication(src, peer("8.8.8.8:53"), b"x"));
        s.client_send(src, &channel_data(0x4000, b"x"));
    }
    assert_eq!(s.server.allocation_count(), 0);
    assert!(s.server.poll_timeout().is_none(), "no timers");
    assert!(s.io.bound.is_empty() && s.io.to_peer.is_empty());
    assert_eq!(s.quotas.total(), 0);
}

#[test]
fn channel_cap_answers_508_and_rebinding_is_fine() {
    let mut s = sim_with(Opts {
        limits: Limits { max_channels: 3 },
        ..Opts::default()
    });
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    for i in 0..3u16 {
        let p = peer(&format!("8.8.8.8:{}", 1000 + i));
        assert!(bind(&mut c, &mut s, 0x4000 + i, p).is_ok());
    }
    assert_eq!(
        bind(&mut c, &mut s, 0x4003, peer("8.8.8.8:2000")).code(),
        Some(508)
    );
    // Refreshing a bound channel is not a new one.
    assert!(bind(&mut c, &mut s, 0x4001, peer("8.8.8.8:1001")).is_ok());
    // Once the others expire and leave quarantine (600 + 300 s), room again.
    s.advance(550);
    assert!(bind(&mut c, &mut s, 0x4001, peer("8.8.8.8:1001")).is_ok());
    c.request(&mut s, method::REFRESH, &|_| {});
    s.advance(400);
    c.request(&mut s, method::REFRESH, &|_| {});
    assert!(
        bind(&mut c, &mut s, 0x4003, peer("8.8.8.8:2000"))
            .code()
            .is_none()
    );
}

#[test]
fn allocations_per_ip_cap_answers_486_and_frees_up() {
    let mut s = sim_with(Opts {
        ip_quota: 2,
        ..Opts::default()
    });
    let mut a = Client::new(ft(1000), "alice", "wonderland");
    let mut b = Client::new(ft(1001), "bob", "builder");
    let mut c = Client::new(ft(1002), "alice", "wonderland");
    assert!(a.allocate(&mut s).is_ok());
    assert!(b.allocate(&mut s).is_ok());
    assert_eq!(c.allocate(&mut s).code(), Some(486));
    // Another address is not affected.
    let mut d = Client::new(ft_from("198.51.100.99", 1000), "alice", "wonderland");
    assert!(d.allocate(&mut s).is_ok());
    // Ending one frees a place.
    let r = a.request(&mut s, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0);
    });
    assert!(r.is_ok());
    assert!(c.allocate(&mut s).is_ok());
    // Expiry frees them too: nothing left counted afterwards.
    s.advance(700);
    assert_eq!(s.server.allocation_count(), 0);
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    assert_eq!(s.quotas.ip_count(ip), 0);
}

/// Every canonical form of an address the default policy must refuse.
const REFUSED: &[&str] = &[
    "127.0.0.1:5000",
    "127.1.2.3:5000",
    "[::1]:5000",
    "0.0.0.0:5000",
    "0.1.2.3:5000",
    "[::]:5000",
    "10.0.0.1:5000",
    "172.16.0.1:5000",
    "192.168.1.1:5000",
    "100.64.0.1:5000",
    "[fc00::1]:5000",
    "[fd00::1]:5000",
    "169.254.169.254:80",
    "[fe80::1]:5000",
    "224.0.0.1:5000",
    "239.255.255.250:1900",
    "[ff02::1]:5000",
    "[ff0e::1]:5000",
    "255.255.255.255:5000",
    "[::ffff:127.0.0.1]:5000",
    "[::ffff:10.0.0.1]:5000",
    "[::ffff:169.254.169.254]:80",
    "[::ffff:0:127.0.0.1]:5000",
    "[::127.0.0.1]:5000",
    "[::10.0.0.1]:5000",
    "[64:ff9b::7f00:1]:5000",
    "[64:ff9b::a9fe:a9fe]:80",
    "[64:ff9b:1::808:808]:5000",
    "[2002:7f00:1::1]:5000",
    "[2002:a9fe:a9fe::1]:80",
    "[2002:c0a8:101::1]:5000",
    "[2001:0:808:808::80ff:fffe]:5000",
    "[2001:0:a00:1::f7f7:f7f7]:5000",
    "[2001:1::2]:3478",
    "[2001:db8::1]:5000",
];

fn dual_client(s: &mut Sim, port: u16) -> Client {
    let mut c = Client::new(ft(port), "alice", "wonderland");
    let r = c.request(s, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert!(r.is_ok());
    assert_eq!(r.relayed().len(), 2);
    c
}

#[test]
fn peer_table_is_refused_for_permission_channel_and_send() {
    let mut s = sim();
    let mut c = dual_client(&mut s, 1000);
    for (i, p) in REFUSED.iter().enumerate() {
        let p = peer(p);
        assert_eq!(
            permit(&mut c, &mut s, &[p]).code(),
            Some(403),
            "permission {p}"
        );
        assert_eq!(
            bind(&mut c, &mut s, 0x4000 + i as u16, p).code(),
            Some(403),
            "channel {p}"
        );
        let before = s.io.to_peer.len();
        s.client_send(c.ft, &send_indication(c.ft, p, b"leak?"));
        assert_eq!(s.io.to_peer.len(), before, "send to {p} left the server");
    }
    assert!(s.io.to_peer.is_empty());
    // A public peer on the same allocation does go out, so the harness can see a send.
    let public = peer("8.8.8.8:53");
    assert!(permit(&mut c, &mut s, &[public]).is_ok());
    s.client_send(c.ft, &send_indication(c.ft, public, b"ok"));
    assert_eq!(s.io.to_peer.len(), 1);
}

#[test]
fn own_listen_address_is_refused_even_when_allowed() {
    let own = ft(1).server;
    let mut s = sim_with(Opts {
        allow: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        own: vec![own],
        ..Opts::default()
    });
    let mut c = dual_client(&mut s, 1000);
    let forms = [
        own.to_string(),
        format!("[::ffff:{}]:{}", own.ip(), own.port()),
        format!("[64:ff9b::{}]:{}", own.ip(), own.port()),
        "[2002:c000:20a::1]:3478".to_string(),
    ];
    for f in &forms {
        let p = peer(f);
        assert_eq!(permit(&mut c, &mut s, &[p]).code(), Some(403), "{p}");
        assert_eq!(bind(&mut c, &mut s, 0x4000, p).code(), Some(403), "{p}");
    }
    // Another port on the server's IP is an ordinary peer under this operator policy, and
    // the permission it installs still does not open the listen port to Send.
    let other = SocketAddr::new(own.ip(), 9999);
    assert!(permit(&mut c, &mut s, &[other]).is_ok());
    s.client_send(c.ft, &send_indication(c.ft, own, b"loop?"));
    assert!(s.io.to_peer.is_empty(), "send to the listen port left");
    s.client_send(c.ft, &send_indication(c.ft, other, b"fine"));
    assert_eq!(s.io.to_peer.len(), 1);
    // The private ranges are open here (allow 0/0), the table's loopback among them.
    assert!(permit(&mut c, &mut s, &[peer("127.0.0.1:5000")]).is_ok());
}
