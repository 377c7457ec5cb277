//! SIGHUP reloads the config file without ending any allocation: a new REST secret is
//! accepted (and the removed one refused) while an existing allocation keeps relaying; a
//! config that fails to load changes nothing; a new peer policy and total quota apply to new
//! requests while the live allocation and its permission go on. Reload completion is observed through the
//! server's sd_notify messages (RELOADING=1, then READY=1 with a STATUS).

use crate::common;
use crate::lifecycle_util;

use common::peer_socket;
use lifecycle_util::{
    NotifiedServer, Scratch, allocated_with_permission, relay_round_trip, rest_credential,
    try_allocate,
};

fn config(secret: &str) -> String {
    format!(
        "[auth]\nsecrets = [\"{secret}\"]\n\
         [peers]\nallow = [\"127.0.0.1/32\"]\n"
    )
}

#[test]
fn new_secret_applies_and_live_allocation_keeps_relaying() {
    let scratch = Scratch::new("reload");
    let path = scratch.write("turnd.toml", &config("old-secret"));
    let mut server = NotifiedServer::start(&scratch, &path, false);
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();

    let (user, pass) = rest_credential("old-secret", "alice");
    let live = allocated_with_permission(server.addr, &user, &pass, peer_addr);
    relay_round_trip(&live, &peer, "before reload");
    let (new_user, new_pass) = rest_credential("new-secret", "bob");
    let (_, code) = try_allocate(server.addr, &new_user, &new_pass);
    assert_eq!(code, Some(401), "the new secret is not known yet");

    std::fs::write(&path, config("new-secret")).unwrap();
    let status = server.reload();
    assert!(status.contains("STATUS=config reloaded"), "{status}");

    let (_, code) = try_allocate(server.addr, &new_user, &new_pass);
    assert_eq!(code, None, "a credential of the new secret is accepted");
    let (other_user, other_pass) = rest_credential("old-secret", "carol");
    let (_, code) = try_allocate(server.addr, &other_user, &other_pass);
    assert_eq!(
        code,
        Some(401),
        "the removed secret is refused for new allocations"
    );
    relay_round_trip(&live, &peer, "after reload");

    // A broken file: the reload fails and the config in force stays as it was.
    scratch.write("turnd.toml", "[auth]\nsecrets = [\"unterminated\n");
    let status = server.reload();
    assert!(status.contains("STATUS=reload failed"), "{status}");
    assert!(server.is_running());
    let (user2, pass2) = rest_credential("new-secret", "dave");
    let (_, code) = try_allocate(server.addr, &user2, &pass2);
    assert_eq!(
        code, None,
        "the new secret still works after a failed reload"
    );
    relay_round_trip(&live, &peer, "after failed reload");

    // A file that parses but does not validate is refused the same way.
    scratch.write(
        "turnd.toml",
        "[auth]\nsecrets = [\"x\"]\n[relay]\nmin-port = 60000\nmax-port = 50000\n",
    );
    let status = server.reload();
    assert!(status.contains("STATUS=reload failed"), "{status}");
    assert!(status.contains("relay.min-port"), "{status}");
    let (user3, pass3) = rest_credential("x", "erin");
    let (_, code) = try_allocate(server.addr, &user3, &pass3);
    assert_eq!(code, Some(401), "nothing of the invalid file was applied");
    relay_round_trip(&live, &peer, "after invalid reload");
}

#[test]
fn new_peer_policy_and_quota_apply_to_new_requests_only() {
    let scratch = Scratch::new("reload-policy");
    let users = "[auth]\nusers = [{ name = \"alice\", password = \"wonderland\" }]\n";
    let path = scratch.write(
        "turnd.toml",
        &format!("{users}[peers]\nallow = [\"127.0.0.1/32\"]\n"),
    );
    let mut server = NotifiedServer::start(&scratch, &path, false);
    let peer = peer_socket("127.0.0.1");
    let live = allocated_with_permission(
        server.addr,
        "alice",
        "wonderland",
        peer.local_addr().unwrap(),
    );
    relay_round_trip(&live, &peer, "before reload");

    // Loopback peers no longer allowed; at most one allocation on the server.
    scratch.write(
        "turnd.toml",
        &format!("{users}[allocation]\ntotal-quota = 1\n"),
    );
    let status = server.reload();
    assert!(status.contains("STATUS=config reloaded"), "{status}");

    let (_, code) = try_allocate(server.addr, "alice", "wonderland");
    assert_eq!(
        code,
        Some(508),
        "the live allocation counts against the new total quota"
    );
    let mut live = live;
    let other = peer_socket("127.0.0.1");
    let r = live.request(
        stun::message::METHOD_CREATE_PERMISSION,
        &[common::peer_attr(other.local_addr().unwrap())],
    );
    assert_eq!(
        r.code(),
        Some(403),
        "a new permission follows the new policy"
    );
    // The allocation and its existing permission were not ended.
    relay_round_trip(&live, &peer, "after reload");
}
