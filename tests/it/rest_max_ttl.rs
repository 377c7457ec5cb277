//! `auth.max-rest-ttl`: a REST username whose expiry is further ahead than the ceiling is
//! refused like a bad credential (401): by default (a day and an hour) an expiry two days
//! out and one of 2^64-1 are refused while one an hour out allocates; a configured ceiling
//! applies, and a reload changes it for new requests. `/credentials` mints nothing longer.

use crate::admin_http;
use crate::common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use admin_http::{TOKEN, http};
use common::stream::TempDir;
use common::{RawClient, TestServer, udp_transport};
use stun::message::METHOD_ALLOCATE;

const SECRET: &str = "north";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The answer to an authenticated Allocate with a REST credential expiring at `expiry`:
/// None for success, else the error code.
fn allocate(server: &TestServer, expiry: u64) -> Option<u16> {
    let (user, pass) = turnd::auth::rest_credential(SECRET, "carol", expiry, ':');
    let mut raw = RawClient::new(server.addr, &user, &pass);
    let r = raw.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert!(raw.nonce.is_some(), "the first 401 carries a nonce");
    r.code()
}

#[test]
fn default_ceiling_refuses_far_expiries() {
    let server = TestServer::start("127.0.0.1", &["--auth-secret", SECRET]);
    let now = unix_now();
    assert_eq!(
        allocate(&server, now + 3600),
        None,
        "an hour ahead allocates"
    );
    assert_eq!(
        allocate(&server, now + 86_400),
        None,
        "a day ahead (the usual TTL) allocates"
    );
    assert_eq!(
        allocate(&server, now + 2 * 86_400),
        Some(401),
        "two days ahead"
    );
    assert_eq!(allocate(&server, u64::MAX), Some(401), "2^64-1");
}

#[test]
fn configured_ceiling_applies_and_reloads() {
    let dir = TempDir::new("rest-max-ttl");
    let write = |ttl: u64| {
        dir.write(
            "turnd.toml",
            &format!("[auth]\nsecrets = [\"{SECRET}\"]\nmax-rest-ttl = {ttl}\n"),
        )
    };
    let config = write(7200);
    let admin = format!("127.0.0.1:{}", admin_http::free_tcp_port());
    let server = TestServer::start(
        "127.0.0.1",
        &[
            "--config",
            config.to_str().unwrap(),
            "--admin-listen",
            &admin,
            "--admin-token",
            TOKEN,
        ],
    );
    let admin = admin.parse().unwrap();
    let now = unix_now();
    assert_eq!(allocate(&server, now + 3600), None, "within 7200 s");
    assert_eq!(allocate(&server, now + 3 * 3600), Some(401), "past 7200 s");
    // /credentials mints within the ceiling only.
    let (status, body) = http(admin, "GET", "/credentials?user=bob&ttl=7201", Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("auth.max-rest-ttl"), "{body}");
    let (status, body) = http(admin, "GET", "/credentials?user=bob&ttl=7200", Some(TOKEN));
    assert_eq!(status, 200, "{body}");

    // Reload with a lower ceiling: an hour ahead is now too far for new requests.
    write(1800);
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let code = allocate(&server, unix_now() + 3600);
        if code == Some(401) {
            break;
        }
        assert_eq!(code, None);
        assert!(
            Instant::now() < deadline,
            "the reloaded ceiling never applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(allocate(&server, unix_now() + 1200), None, "within 1800 s");
}

#[test]
fn a_ceiling_out_of_range_stops_the_start_naming_the_key() {
    let dir = TempDir::new("rest-max-ttl-bad");
    let config = dir.write("turnd.toml", "[auth]\nmax-rest-ttl = 0\n");
    let (code, _, stderr) = common::run_turnd(
        &["--config", config.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("auth.max-rest-ttl"), "{stderr}");
}
