//! The admin HTTP API through the real server: the bearer token is required (and /metrics
//! may be opened to loopback by a setting), /health, /sessions lists and filters live
//! allocations with their addresses and counters, /sessions/{id} shows one, DELETE ends it
//! (the client's next request gets 437 and its quota is free again), /users sums live
//! allocations per user, and /credentials mints a REST credential the server accepts.

use crate::admin_http;
use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use admin_http::{TOKEN, channel_bind_attrs, get_json, http, start_with_admin};
use common::{RawClient, peer_socket, udp_transport};
use stun::attributes::{ATTR_LIFETIME, ATTR_XOR_RELAYED_ADDRESS};
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_REFRESH};

#[test]
fn token_is_required() {
    let (_server, admin) = start_with_admin(&[]);
    for path in [
        "/metrics",
        "/sessions",
        "/health",
        "/sessions/0-1",
        "/credentials?user=a",
    ] {
        let (status, _) = http(admin, "GET", path, None);
        assert_eq!(status, 401, "{path} without a token");
        let (status, _) = http(admin, "GET", path, Some("test-token-0123456789abcdeX"));
        assert_eq!(status, 401, "{path} with a wrong token");
    }
    let (status, _) = http(admin, "DELETE", "/sessions/0-1", None);
    assert_eq!(status, 401);
    assert_eq!(http(admin, "GET", "/health", Some(TOKEN)).0, 200);
    assert_eq!(http(admin, "GET", "/nope", Some(TOKEN)).0, 404);
    assert_eq!(http(admin, "POST", "/sessions", Some(TOKEN)).0, 405);
    assert_eq!(http(admin, "GET", "/sessions/zz", Some(TOKEN)).0, 404);
    assert_eq!(http(admin, "GET", "/sessions/0-999999", Some(TOKEN)).0, 404);
    assert_eq!(http(admin, "DELETE", "/sessions/7-1", Some(TOKEN)).0, 404);
}

#[test]
fn oversized_request_head_is_refused() {
    let (_server, admin) = start_with_admin(&[]);
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let big = format!(
        "GET /health HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    // The server may close before taking it all; only its answer matters.
    let _ = s.write_all(big.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 431 "), "{out:?}");
}

#[test]
fn metrics_can_be_open_on_loopback() {
    let path = std::env::temp_dir().join(format!("turnd-admin-{}.toml", std::process::id()));
    std::fs::write(&path, "[admin]\nmetrics-open-on-loopback = true\n").unwrap();
    let (_server, admin) = start_with_admin(&["--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    let (status, body) = http(admin, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(body.contains("turn_total_allocations"));
    assert_eq!(http(admin, "GET", "/sessions", None).0, 401);
}

#[test]
fn health_reports_workers_and_allocations() {
    let (server, admin) = start_with_admin(&[]);
    let h = get_json(admin, "/health");
    assert_eq!(h["status"], "ok");
    assert_eq!(h["workers"], 2);
    assert_eq!(h["workers_answering"], 2);
    assert_eq!(h["allocations"], 0);
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    assert_eq!(c.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    assert_eq!(get_json(admin, "/health")["allocations"], 1);
}

#[test]
fn sessions_list_show_and_delete() {
    let (server, admin) = start_with_admin(&[
        "--allow-peer",
        "127.0.0.1/32",
        "--user",
        "alice:wonderland",
        "--user",
        "bob:builder",
        "--user-quota",
        "1",
    ]);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut clients = Vec::new();
    for (user, pass) in [("alice", "wonderland"), ("bob", "builder")] {
        let mut c = RawClient::new(server.addr, user, pass);
        let r = c.request(METHOD_ALLOCATE, &[udp_transport()]);
        assert_eq!(r.code(), None);
        let relayed = r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS)[0];
        clients.push((c, relayed));
    }
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    let alice = &mut clients[0].0;
    assert_eq!(
        alice
            .request(METHOD_CHANNEL_BIND, &channel_bind_attrs(0x4000, peer_addr))
            .code(),
        None
    );
    alice.send_raw(&admin_http::channel_data(0x4000, b"0123456789"));
    let mut buf = [0u8; 64];
    assert_eq!(peer.recv_from(&mut buf).unwrap().0, 10);

    let list = get_json(admin, "/sessions");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_ne!(list[0]["id"], list[1]["id"], "ids are unique");
    let a = list.iter().find(|s| s["user"] == "alice").expect("alice");
    assert_eq!(
        a["client"],
        clients[0].0.sock.local_addr().unwrap().to_string()
    );
    assert_eq!(a["server"], server.addr.to_string());
    assert_eq!(a["relayed"][0], clients[0].1.to_string());
    assert_eq!(a["transport"], "udp");
    assert_eq!(a["peers"], 1);
    assert_eq!(a["channels"], 1);
    assert_eq!(a["packets_to_peer"], 1);
    assert_eq!(a["bytes_to_peer"], 10);
    let t = a["started_unix"].as_u64().unwrap();
    assert!(t + 5 >= started && t <= started + 60, "started_unix {t}");
    assert!(a["lifetime_left_seconds"].as_u64().unwrap() > 500);

    // Filter by user.
    let only_bob = get_json(admin, "/sessions?user=bob");
    assert_eq!(only_bob.as_array().unwrap().len(), 1);
    assert_eq!(only_bob[0]["user"], "bob");
    assert_eq!(
        get_json(admin, "/sessions?user=nobody"),
        serde_json::json!([])
    );

    // Per-user totals over live allocations.
    let users = get_json(admin, "/users");
    let u = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "alice")
        .unwrap();
    assert_eq!(u["allocations"], 1);
    assert_eq!(u["bytes_to_peer"], 10);

    // Show one.
    let id = a["id"].as_str().unwrap().to_string();
    let one = get_json(admin, &format!("/sessions/{id}"));
    assert_eq!(one["user"], "alice");
    assert_eq!(one["relayed"], a["relayed"]);

    // End it: gone from the list, the client's next request gets 437, the quota is free.
    let (status, body) = http(admin, "DELETE", &format!("/sessions/{id}"), Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        http(admin, "GET", &format!("/sessions/{id}"), Some(TOKEN)).0,
        404
    );
    assert_eq!(
        http(admin, "DELETE", &format!("/sessions/{id}"), Some(TOKEN)).0,
        404
    );
    let left = get_json(admin, "/sessions");
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["user"], "bob");
    let alice = &mut clients[0].0;
    assert_eq!(
        alice
            .request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0x02, 0x58])])
            .code(),
        Some(437)
    );
    let mut again = RawClient::new(server.addr, "alice", "wonderland");
    assert_eq!(
        again.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        None,
        "alice's quota of 1 is free again"
    );
}

#[test]
fn credentials_need_a_secret() {
    let (_server, admin) = start_with_admin(&[]);
    let (status, body) = http(admin, "GET", "/credentials?user=bob", Some(TOKEN));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("auth.secrets"), "{body}");
}

#[test]
fn credentials_are_minted_and_accepted() {
    let (server, admin) = start_with_admin(&["--auth-secret", "north"]);
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let v = get_json(admin, "/credentials?user=bob&ttl=600");
    let username = v["username"].as_str().unwrap();
    let credential = v["credential"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "bob");
    let expiry: u64 = expiry.parse().unwrap();
    assert!((before + 600..=before + 660).contains(&expiry), "{expiry}");
    let (_, expected) = turnd::auth::rest_credential("north", "bob", expiry, ':');
    assert_eq!(credential, expected);
    assert_eq!(
        v["urls"][0],
        format!("turn:{}?transport=udp", server.addr),
        "{v}"
    );
    let mut c = RawClient::new(server.addr, username, credential);
    assert_eq!(c.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);

    for bad in [
        "/credentials",
        "/credentials?user=",
        "/credentials?user=bob&ttl=0",
        "/credentials?user=bob&ttl=x",
        "/credentials?user=bob&ttl=99999999",
    ] {
        assert_eq!(http(admin, "GET", bad, Some(TOKEN)).0, 400, "{bad}");
    }
}

#[test]
fn admin_misconfiguration_stops_the_start() {
    use std::time::Duration;
    // No token: a config error naming the key.
    let (code, _, err) = common::run_turnd(
        &["--admin-listen", "127.0.0.1:1", "--workers", "1"],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("admin.token"), "{err}");
    // A taken port: the start fails and says which listener.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let udp = common::free_udp_port("127.0.0.1");
    let listen = format!("127.0.0.1:{udp}");
    let (code, _, err) = common::run_turnd(
        &[
            "--listen",
            &listen,
            "--workers",
            "1",
            "--admin-listen",
            &addr,
            "--admin-token",
            TOKEN,
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("admin") && err.contains(&addr), "{err}");
}
