//! The admin API drives the lifecycle: `POST /reload` runs the reload SIGHUP runs and
//! answers with its outcome (200 with the keys that need a restart; 422 naming the key when
//! the file does not load, with the old config kept), and `POST /drain` starts the drain
//! SIGTERM starts (new Allocates get 508, the live allocation keeps relaying, and the process
//! exits 0 once `server.drain-timeout` passes).

use crate::admin_http;
use crate::common;
use crate::lifecycle_util;

use std::net::SocketAddr;

use admin_http::{TOKEN, free_tcp_port, http};
use common::peer_socket;
use lifecycle_util::{
    GUARD, NotifiedServer, Scratch, allocated_with_permission, relay_round_trip, rest_credential,
    try_allocate,
};

fn admin_section(admin: SocketAddr) -> String {
    format!("[admin]\nenabled = true\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n")
}

fn config(admin: SocketAddr, secret: &str, extra: &str) -> String {
    format!(
        "[auth]\nsecrets = [\"{secret}\"]\n[peers]\nallow = [\"127.0.0.1/32\"]\n{extra}{}",
        admin_section(admin)
    )
}

fn post_json(admin: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http(admin, "POST", path, Some(TOKEN));
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, json)
}

#[test]
fn reload_through_the_api_applies_a_new_secret_and_reports_failures() {
    let scratch = Scratch::new("admin-reload");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let path = scratch.write("turnd.toml", &config(admin, "old-secret", ""));
    let server = NotifiedServer::start(&scratch, &path, false);
    let peer = peer_socket("127.0.0.1");
    let (user, pass) = rest_credential("old-secret", "alice");
    let live = allocated_with_permission(server.addr, &user, &pass, peer.local_addr().unwrap());
    relay_round_trip(&live, &peer, "before reload");

    // The token is needed, and only POST reloads.
    assert_eq!(http(admin, "POST", "/reload", None).0, 401);
    assert_eq!(http(admin, "GET", "/reload", Some(TOKEN)).0, 405);

    let (new_user, new_pass) = rest_credential("new-secret", "bob");
    assert_eq!(try_allocate(server.addr, &new_user, &new_pass).1, Some(401));
    std::fs::write(&path, config(admin, "new-secret", "")).unwrap();
    let (status, body) = post_json(admin, "/reload");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"], true, "{body}");
    assert_eq!(body["needs_restart"], serde_json::json!([]), "{body}");
    // The answer comes after the reload is applied.
    assert_eq!(try_allocate(server.addr, &new_user, &new_pass).1, None);
    let (old_user, old_pass) = rest_credential("old-secret", "carol");
    assert_eq!(try_allocate(server.addr, &old_user, &old_pass).1, Some(401));
    relay_round_trip(&live, &peer, "after reload");

    // /credentials signs with the secret in force now.
    let (status, body) = http(admin, "GET", "/credentials?user=dave", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let ice: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (u, p) = (
        ice["username"].as_str().unwrap(),
        ice["credential"].as_str().unwrap(),
    );
    assert_eq!(try_allocate(server.addr, u, p).1, None, "{body}");

    // A key that needs a restart is reported; the rest applies.
    std::fs::write(
        &path,
        config(admin, "new-secret", "[tcp]\nidle-timeout = 120\n"),
    )
    .unwrap();
    let (status, body) = post_json(admin, "/reload");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["needs_restart"], serde_json::json!(["tcp"]), "{body}");

    // A file that does not validate: 422 naming the key, nothing applied.
    std::fs::write(
        &path,
        format!(
            "[auth]\nsecrets = [\"x\"]\n[relay]\nmin-port = 60000\nmax-port = 50000\n{}",
            admin_section(admin)
        ),
    )
    .unwrap();
    let (status, body) = post_json(admin, "/reload");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["reloaded"], false, "{body}");
    assert_eq!(body["key"], "relay.min-port", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("relay.min-port"),
        "{body}"
    );
    let (x_user, x_pass) = rest_credential("x", "erin");
    assert_eq!(try_allocate(server.addr, &x_user, &x_pass).1, Some(401));
    let (user2, pass2) = rest_credential("new-secret", "frank");
    assert_eq!(try_allocate(server.addr, &user2, &pass2).1, None);
    relay_round_trip(&live, &peer, "after failed reload");
}

#[test]
fn drain_through_the_api_refuses_new_allocations_and_exits_0_when_the_last_ends() {
    let scratch = Scratch::new("admin-drain");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let path = scratch.write(
        "turnd.toml",
        &config(admin, "drain-secret", "[server]\ndrain-timeout = 3600\n"),
    );
    let mut server = NotifiedServer::start(&scratch, &path, false);
    let peer = peer_socket("127.0.0.1");
    let (user, pass) = rest_credential("drain-secret", "alice");
    let mut live = allocated_with_permission(server.addr, &user, &pass, peer.local_addr().unwrap());
    relay_round_trip(&live, &peer, "before drain");

    assert_eq!(http(admin, "POST", "/drain", None).0, 401);
    assert_eq!(http(admin, "DELETE", "/drain", Some(TOKEN)).0, 405);
    let (status, body) = post_json(admin, "/drain");
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["draining"], true, "{body}");
    let stopping = server.expect_notify("STOPPING=1").expect("STOPPING=1");
    assert!(stopping.contains("draining 1 allocations"), "{stopping}");
    // Asking again changes nothing.
    let (status, body) = post_json(admin, "/drain");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["started_now"], false, "{body}");

    let (user2, pass2) = rest_credential("drain-secret", "bob");
    assert_eq!(
        try_allocate(server.addr, &user2, &pass2).1,
        Some(508),
        "new allocations are refused while draining"
    );
    relay_round_trip(&live, &peer, "while draining");
    assert!(
        server.is_running(),
        "the drain waits for the live allocation"
    );
    let r = live.request(
        stun::message::METHOD_REFRESH,
        &[(stun::attributes::ATTR_LIFETIME, 0u32.to_be_bytes().to_vec())],
    );
    assert_eq!(r.code(), None);
    assert_eq!(server.wait_exit(GUARD), Some(0));
}

#[test]
fn drain_through_the_api_exits_0_after_the_drain_timeout() {
    let scratch = Scratch::new("admin-drain-timeout");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let path = scratch.write(
        "turnd.toml",
        &config(
            admin,
            "drain-secret",
            "[server]\ndrain-timeout = 1\n[allocation]\ndefault-lifetime = 3600\n",
        ),
    );
    let mut server = NotifiedServer::start(&scratch, &path, false);
    let peer = peer_socket("127.0.0.1");
    let (user, pass) = rest_credential("drain-secret", "alice");
    let live = allocated_with_permission(server.addr, &user, &pass, peer.local_addr().unwrap());
    relay_round_trip(&live, &peer, "before drain");
    let (status, body) = post_json(admin, "/drain");
    assert_eq!(status, 202, "{body}");
    // The allocation would live an hour: only the one-second drain timeout ends the process.
    assert_eq!(server.wait_exit(GUARD), Some(0));
}
