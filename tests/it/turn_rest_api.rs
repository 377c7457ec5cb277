//! The TURN REST API endpoint `/turn` (draft-uberti-behave-turn-rest-00) on the admin
//! listener: it answers the request Janus 1.1.2's `turn_rest_api` sends (POST, the same
//! form string as query and body, the key as `api=` and `key=`, no Authorization header) and
//! the draft's GET, with `{"username","password","ttl","uris"}` whose credential allocates on
//! turnd (the webrtc-rs client) and whose URIs name every configured transport; a wrong or
//! missing key is refused, its keys open nothing else of the admin API and the admin token
//! does not open it; requests are rate limited. `/credentials` lists every transport too.

use crate::admin_http::{TOKEN, free_tcp_port, http};
use crate::common::{self, TestServer, turn_client};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use turnd::testing::process::TempDir;

const KEY: &str = "app-backend-key-7f3a9c21e4";
const OTHER_KEY: &str = "janus-key-0b5d6e8f1a2c3d4e";
const SECRET: &str = "rest-secret-4c1f-oriole";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// turnd with REST secret [`SECRET`], the admin listener with the test token and `/turn`
/// behind [`KEY`] and [`OTHER_KEY`] at `rate` requests a second.
fn start(rate: u32) -> (TestServer, SocketAddr, TempDir) {
    let dir = TempDir::new("turn-rest-api");
    let config = dir.write(
        "turnd.toml",
        &format!(
            "[admin]\nrest-api-keys = [\"{KEY}\", \"{OTHER_KEY}\"]\nrest-api-ttl = 7200\n\
             rest-api-rate = {rate}\n"
        ),
    );
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let admin_s = admin.to_string();
    let config_s = config.to_string_lossy().into_owned();
    let server = TestServer::start(
        "127.0.0.1",
        &[
            "--config",
            &config_s,
            "--admin-listen",
            &admin_s,
            "--admin-token",
            TOKEN,
            "--auth-secret",
            SECRET,
        ],
    );
    (server, admin, dir)
}

/// Sends `request` as it is and returns (status, body).
fn raw_http(admin: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// The request Janus 1.1.2 made for `turn_rest_api = "http://127.0.0.1:18099/turn"`,
/// `turn_rest_api_key = "JANUS_KEY"` and a handle whose opaque_id is `janus`, recorded on the
/// wire (`tests/data/janus-turn-rest-request.txt`, its Host made `JANUS_HOST`): a POST whose
/// query and form body are the same string, no Authorization header. Returned with `key`,
/// `admin` and `user` put in (and its Content-Length made right).
fn janus_request(admin: SocketAddr, key: &str, user: &str) -> String {
    let recorded = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/janus-turn-rest-request.txt"
    ))
    .expect("the recorded Janus request");
    let (head, body) = recorded.split_once("\r\n\r\n").expect("head and body");
    assert_eq!(
        head.lines().next(),
        Some(&*format!("POST /turn?{body} HTTP/1.1")),
        "Janus sends the form in the query and in the body"
    );
    assert!(!head.to_ascii_lowercase().contains("authorization"));
    let fill = |s: &str| {
        s.replace("JANUS_KEY", key)
            .replace("username=janus", &format!("username={user}"))
    };
    let body = fill(body);
    let head: Vec<String> = head
        .split("\r\n")
        .map(|l| {
            if l.starts_with("Content-Length:") {
                format!("Content-Length: {}", body.len())
            } else {
                fill(l).replace("JANUS_HOST", &admin.to_string())
            }
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Checks a `/turn` answer's fields and returns (username, password).
fn check_answer(
    v: &serde_json::Value,
    server: &TestServer,
    user: &str,
    ttl: u64,
) -> (String, String) {
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["password", "ttl", "uris", "username"], "{v}");
    assert_eq!(v["ttl"], ttl, "{v}");
    let a = server.addr;
    assert_eq!(
        v["uris"],
        serde_json::json!([
            format!("turn:{a}?transport=udp"),
            format!("turn:{a}?transport=tcp")
        ]),
        "every configured transport"
    );
    let username = v["username"].as_str().expect("username").to_string();
    let password = v["password"].as_str().expect("password").to_string();
    let (expiry, u) = username.split_once(':').expect("<expiry>:<user>");
    assert_eq!(u, user);
    let expiry: u64 = expiry.parse().expect("a unix time");
    let now = unix_now();
    assert!(
        expiry >= now + ttl - 60 && expiry <= now + ttl + 1,
        "expiry {expiry} is not now ({now}) + {ttl}"
    );
    let (u2, p2) = turnd::auth::rest_credential(SECRET, user, expiry, ':');
    assert_eq!(
        (u2, p2),
        (username.clone(), password.clone()),
        "HMAC-SHA1 of the secret"
    );
    (username, password)
}

async fn allocates(server: &TestServer, user: &str, pass: &str) {
    let client = turn_client(server, user, pass).await;
    let relay = client
        .allocate()
        .await
        .unwrap_or_else(|e| panic!("allocate with {user}: {e}"));
    use webrtc_util::Conn;
    assert_eq!(relay.local_addr().unwrap().ip().to_string(), "127.0.0.1");
    relay.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test]
async fn janus_request_gets_a_credential_that_allocates() {
    let (server, admin, _dir) = start(20);
    let (status, body) = raw_http(admin, &janus_request(admin, OTHER_KEY, "janus-4821"));
    assert_eq!(status, 200, "{body}");
    let (user, pass) = check_answer(&json(&body), &server, "janus-4821", 7200);
    allocates(&server, &user, &pass).await;
}

#[tokio::test]
async fn draft_get_with_key_and_ttl() {
    let (server, admin, _dir) = start(20);
    let target = format!("/turn?service=turn&username=mbzrxpgjys&key={KEY}&ttl=600");
    let (status, body) = http(admin, "GET", &target, None);
    assert_eq!(status, 200, "{body}");
    let (user, pass) = check_answer(&json(&body), &server, "mbzrxpgjys", 600);
    allocates(&server, &user, &pass).await;
    // Past auth.max-rest-ttl (90000 by default): refused, as turnd would refuse the credential.
    let target = format!("/turn?service=turn&username=a&key={KEY}&ttl=90001");
    assert_eq!(http(admin, "GET", &target, None).0, 400);
    let target = format!("/turn?service=stun&username=a&key={KEY}");
    assert_eq!(http(admin, "GET", &target, None).0, 400);
    let target = format!("/turn?service=turn&username=a&key={KEY}");
    assert_eq!(http(admin, "DELETE", &target, None).0, 405);
}

#[test]
fn keys_and_the_admin_token_open_only_their_own_routes() {
    let (_server, admin, _dir) = start(50);
    // No key, a wrong key, the admin token in place of a key or as a bearer: refused.
    let (status, body) = http(admin, "GET", "/turn?service=turn&username=x", None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = raw_http(admin, &janus_request(admin, "wrong-key-0000000000", "x"));
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains(KEY) && !body.contains(SECRET), "{body}");
    let target = format!("/turn?service=turn&username=x&key={TOKEN}");
    assert_eq!(http(admin, "GET", &target, Some(TOKEN)).0, 403);
    assert_eq!(http(admin, "GET", "/turn?service=turn", Some(TOKEN)).0, 401);
    // A REST key opens nothing else, whichever way it is sent.
    for path in ["/sessions", "/credentials?user=x", "/metrics"] {
        assert_eq!(http(admin, "GET", path, Some(KEY)).0, 401, "{path}");
        let target = format!(
            "{path}{}key={KEY}",
            if path.contains('?') { '&' } else { '?' }
        );
        assert_eq!(http(admin, "GET", &target, None).0, 401, "{target}");
    }
    // A body over the limit is refused before it is read.
    let big = "POST /turn HTTP/1.1\r\nContent-Length: 4096\r\n\r\n";
    assert_eq!(raw_http(admin, big).0, 413);
}

#[test]
fn requests_are_rate_limited_per_client() {
    // 1 a second, bursts of 2: a third request at once is refused, wrong keys count too.
    let (_server, admin, _dir) = start(1);
    let target = format!("/turn?service=turn&username=x&key={KEY}");
    assert_eq!(http(admin, "GET", &target, None).0, 200);
    assert_eq!(
        http(admin, "GET", "/turn?service=turn&key=nope", None).0,
        403
    );
    let mut refused = false;
    for _ in 0..5 {
        let (status, _) = http(admin, "GET", &target, None);
        assert!(status == 200 || status == 429, "{status}");
        refused |= status == 429;
    }
    assert!(refused, "the burst ran out");
    // The admin API is not limited by it.
    assert_eq!(http(admin, "GET", "/health", Some(TOKEN)).0, 200);
}

#[test]
fn credentials_lists_every_transport() {
    let (server, admin, _dir) = start(20);
    let (status, body) = http(admin, "GET", "/credentials?user=web", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let a = server.addr;
    assert_eq!(
        json(&body)["urls"],
        serde_json::json!([
            format!("turn:{a}?transport=udp"),
            format!("turn:{a}?transport=tcp")
        ])
    );
}

#[test]
fn keys_are_checked_at_load() {
    let dir = TempDir::new("turn-rest-api-bad");
    for (keys, why) in [
        ("\"short\"", "too short"),
        ("\"has&ampersand-0123456\"", "unescaped in a query"),
        (&format!("\"{TOKEN}\""), "the admin token"),
    ] {
        let toml = format!(
            "[auth]\nsecrets = [\"{SECRET}\"]\n[admin]\nenabled = true\ntoken = \"{TOKEN}\"\n\
             rest-api-keys = [{keys}]\n"
        );
        let path = dir.write("bad.toml", &toml);
        let (code, _out, err) = common::run_turnd(
            &["check-config", &path.to_string_lossy()],
            Duration::from_secs(20),
        );
        assert_ne!(code, Some(0), "{why}: {err}");
        assert!(err.contains("admin.rest-api-keys"), "{why}: {err}");
        assert!(!err.contains("ampersand"), "the key is not echoed: {err}");
    }
    // Without the admin token: a listener for /turn alone.
    let toml = format!(
        "[auth]\nsecrets = [\"{SECRET}\"]\n[admin]\nenabled = true\n\
         rest-api-keys = [\"{KEY}\"]\n"
    );
    let path = dir.write("rest-only.toml", &toml);
    let (code, _out, err) = common::run_turnd(
        &["check-config", &path.to_string_lossy()],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_listener_for_turn_alone_needs_no_admin_token() {
    let dir = TempDir::new("turn-rest-api-only");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = dir.write(
        "turnd.toml",
        &format!("[admin]\nenabled = true\nlisten = \"{admin}\"\nrest-api-keys = [\"{KEY}\"]\n"),
    );
    let config_s = config.to_string_lossy().into_owned();
    let _server = TestServer::start(
        "127.0.0.1",
        &["--config", &config_s, "--auth-secret", SECRET],
    );
    let target = format!("/turn?service=turn&username=x&key={KEY}");
    let (status, body) = http(admin, "GET", &target, None);
    assert_eq!(status, 200, "{body}");
    // Nothing else is served, whatever bearer is sent (an empty token matches nothing).
    for token in [None, Some(KEY), Some("")] {
        for path in ["/sessions", "/health", "/metrics", "/credentials?user=x"] {
            assert_eq!(http(admin, "GET", path, token).0, 401, "{path} {token:?}");
        }
    }
}

#[test]
fn the_form_may_come_in_the_body_alone_and_after_the_head() {
    let (server, admin, _dir) = start(20);
    let form = format!("service=turn&username=late&key={KEY}");
    let head = format!(
        "POST /turn HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/x-www-form-urlencoded\
         \r\nContent-Length: {}\r\n\r\n",
        form.len()
    );
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(form.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200 "), "{raw}");
    check_answer(&json(body), &server, "late", 7200);
    // Without the form content type the body is not read as fields: no key.
    let req = format!(
        "POST /turn HTTP/1.1\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    assert_eq!(raw_http(admin, &req).0, 401);
}
