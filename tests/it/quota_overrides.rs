//! Per-user overrides of the allocation quota and of max-bps (`[allocation.users.NAME]`),
//! REST users counted by the part after the timestamp, the total quota and the bandwidth
//! capacity: over a limit Allocate gets 486 (user quota) or 508 (total quota, capacity), and
//! the room comes back when an allocation ends.

use crate::admin_http;
use crate::common;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use admin_http::{get_json, start_with_admin};
use common::{RawClient, udp_transport};
use stun::attributes::ATTR_LIFETIME;
use stun::message::{METHOD_ALLOCATE, METHOD_REFRESH};

/// A config file with `body`, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(body: &str) -> TempConfig {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("turnd-quota-{}-{nanos}.toml", std::process::id()));
        std::fs::write(&path, body).unwrap();
        TempConfig(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn allocate(server: std::net::SocketAddr, user: &str, pass: &str) -> (RawClient, Option<u16>) {
    let mut c = RawClient::new(server, user, pass);
    let code = c.request(METHOD_ALLOCATE, &[udp_transport()]).code();
    (c, code)
}

fn release(c: &mut RawClient) {
    assert_eq!(
        c.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])])
            .code(),
        None
    );
}

fn rest(user: &str, expiry: u64) -> (String, String) {
    turnd::auth::rest_credential("s3cret", user, expiry, ':')
}

#[test]
fn user_overrides_replace_the_default_quota_and_rate() {
    let cfg = TempConfig::new(
        r#"
[allocation]
user-quota = 1
max-bps = 1000000

[allocation.users.vip]
user-quota = 3
max-bps = 5000000

[allocation.users.carol]
user-quota = 2
"#,
    );
    let (server, admin) = start_with_admin(&[
        "--config",
        cfg.path(),
        "--user",
        "alice:wonderland",
        "--user",
        "vip:pw",
        "--auth-secret",
        "s3cret",
    ]);
    let s = server.addr;

    // The default: one allocation per user.
    let (_a1, code) = allocate(s, "alice", "wonderland");
    assert_eq!(code, None);
    let (_a2, code) = allocate(s, "alice", "wonderland");
    assert_eq!(code, Some(486), "alice is over the default user-quota");

    // vip may hold three.
    let mut vips = Vec::new();
    for i in 0..3 {
        let (c, code) = allocate(s, "vip", "pw");
        assert_eq!(code, None, "vip allocation {i}");
        vips.push(c);
    }
    assert_eq!(allocate(s, "vip", "pw").1, Some(486));

    // REST users are counted without their timestamp: two credentials of carol with
    // different expiries are the same user, with her override of 2.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut carols = Vec::new();
    for i in 0..2 {
        let (u, p) = rest("carol", now + 600 + i);
        let (c, code) = allocate(s, &u, &p);
        assert_eq!(code, None, "carol allocation {i}");
        carols.push(c);
    }
    let (u, p) = rest("carol", now + 900);
    assert_eq!(allocate(s, &u, &p).1, Some(486));
    // A REST dave has no override: the default quota of 1.
    let (u, p) = rest("dave", now + 600);
    let (_d, code) = allocate(s, &u, &p);
    assert_eq!(code, None);
    let (u, p) = rest("dave", now + 700);
    assert_eq!(allocate(s, &u, &p).1, Some(486));

    // Ending one of carol's allocations frees her room.
    release(&mut carols[0]);
    let (u, p) = rest("carol", now + 1000);
    assert_eq!(allocate(s, &u, &p).1, None);

    // The rate override shows on the sessions: vip 5 Mbit/s, alice the default.
    let vip = get_json(admin, "/sessions?user=vip");
    assert_eq!(vip.as_array().unwrap().len(), 3);
    assert!(
        vip.as_array()
            .unwrap()
            .iter()
            .all(|v| v["max_bps"] == 5_000_000)
    );
    let alice = get_json(admin, "/sessions?user=alice");
    assert_eq!(alice[0]["max_bps"], 1_000_000);
    let carol = get_json(admin, "/sessions?user=carol");
    assert_eq!(carol.as_array().unwrap().len(), 2);
}

#[test]
fn total_quota_answers_508_and_frees_up() {
    let (server, _admin) = start_with_admin(&["--total-quota", "2"]);
    let s = server.addr;
    let (mut a, code) = allocate(s, "alice", "wonderland");
    assert_eq!(code, None);
    let (_b, code) = allocate(s, "alice", "wonderland");
    assert_eq!(code, None);
    assert_eq!(allocate(s, "alice", "wonderland").1, Some(508));
    release(&mut a);
    assert_eq!(allocate(s, "alice", "wonderland").1, None);
}

#[test]
fn bandwidth_capacity_answers_508_and_frees_up() {
    let cfg = TempConfig::new(
        r#"
[allocation]
max-bps = 1000000
bps-capacity = 2500000

[allocation.users.big]
max-bps = 2000000
"#,
    );
    let (server, admin) = start_with_admin(&[
        "--config",
        cfg.path(),
        "--user",
        "alice:wonderland",
        "--user",
        "big:pw",
    ]);
    let s = server.addr;
    let (mut a, code) = allocate(s, "alice", "wonderland");
    assert_eq!(code, None, "1 of 2.5 Mbit/s");
    // 1 + 2 > 2.5 Mbit/s.
    assert_eq!(allocate(s, "big", "pw").1, Some(508));
    let (mut a2, code) = allocate(s, "alice", "wonderland");
    assert_eq!(code, None, "2 of 2.5 Mbit/s");
    assert_eq!(allocate(s, "alice", "wonderland").1, Some(508));
    let m = admin_http::http(admin, "GET", "/metrics", Some(admin_http::TOKEN)).1;
    assert!(m.contains("\nturnd_bps_reserved 2000000\n"), "{m}");
    // Both of alice's end: big's 2 Mbit/s fit, and then alice's 1 more does not.
    release(&mut a);
    release(&mut a2);
    let (_big, code) = allocate(s, "big", "pw");
    assert_eq!(code, None, "2 of 2.5 Mbit/s");
    assert_eq!(allocate(s, "alice", "wonderland").1, Some(508));
}
