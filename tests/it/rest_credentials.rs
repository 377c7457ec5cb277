//! REST (time-limited, HMAC) credentials: the `turnd credentials` subcommand mints them, the
//! server accepts them for any of its secrets (rotation), and refuses expired ones and ones
//! minted with a secret it does not know.

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{RawClient, TestServer, run_turnd, turn_client, udp_transport};
use stun::message::METHOD_ALLOCATE;
use webrtc_util::Conn;

const URI: &str = "turn:127.0.0.1:3478?transport=udp";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rest_server() -> TestServer {
    TestServer::start(
        "127.0.0.1",
        &["--auth-secret", "north", "--auth-secret", "south"],
    )
}

/// Runs `turnd credentials` for `secret` and user carol with a 600 s TTL, checks the JSON it
/// prints, and returns (username, credential).
fn mint_with_binary(secret: &str) -> (String, String) {
    let before = unix_now();
    let (code, stdout, stderr) = run_turnd(
        &[
            "credentials",
            "--secret",
            secret,
            "--user",
            "carol",
            "--ttl",
            "600",
            "--uri",
            URI,
        ],
        Duration::from_secs(20),
    );
    let after = unix_now();
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("valid JSON");
    let obj = v.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["credential", "urls", "username"], "{stdout}");
    assert_eq!(v["urls"], serde_json::json!([URI]), "{stdout}");

    let username = v["username"].as_str().expect("username is a string");
    let credential = v["credential"].as_str().expect("credential is a string");
    let (expiry, user) = username.split_once(':').expect("<expiry>:<user>");
    assert_eq!(user, "carol");
    let expiry: u64 = expiry.parse().expect("expiry is a unix time");
    assert!(
        expiry >= before + 600 && expiry <= after + 600,
        "expiry {expiry} is not now+600 (now in {before}..={after})"
    );
    // The credential is base64(HMAC-SHA1(secret, username)), as the library computes it.
    let (u2, p2) = turnd::auth::rest_credential(secret, "carol", expiry, ':');
    assert_eq!((username, credential), (u2.as_str(), p2.as_str()));
    (username.to_owned(), credential.to_owned())
}

async fn allocate_and_close(server: &TestServer, user: &str, pass: &str) {
    let client = turn_client(server, user, pass).await;
    let relay = client
        .allocate()
        .await
        .unwrap_or_else(|e| panic!("allocate with {user}: {e}"));
    let relayed = relay.local_addr().unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    relay.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test]
async fn credential_from_the_subcommand_allocates() {
    let server = rest_server();
    let (user, pass) = mint_with_binary("north");
    allocate_and_close(&server, &user, &pass).await;
}

#[tokio::test]
async fn credential_from_the_second_secret_allocates() {
    let server = rest_server();
    let (user, pass) = mint_with_binary("south");
    allocate_and_close(&server, &user, &pass).await;
}

#[tokio::test]
async fn expired_credential_is_refused_with_401() {
    let server = rest_server();
    let expiry = unix_now() - 3600;
    let (user, pass) = turnd::auth::rest_credential("north", "carol", expiry, ':');

    let mut raw = RawClient::new(server.addr, &user, &pass);
    let r = raw.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert!(raw.nonce.is_some(), "the first 401 carries a nonce");
    assert_eq!(r.code(), Some(401), "expired credential {user}");

    let client = turn_client(&server, &user, &pass).await;
    let err = client.allocate().await.err().expect("allocation must fail");
    assert!(err.to_string().contains("401"), "{err}");
    client.close().await.unwrap();
}

#[tokio::test]
async fn credential_for_an_unknown_secret_is_refused_with_401() {
    let server = rest_server();
    let expiry = unix_now() + 600;
    let (user, pass) = turnd::auth::rest_credential("west", "carol", expiry, ':');

    let mut raw = RawClient::new(server.addr, &user, &pass);
    let r = raw.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert!(raw.nonce.is_some(), "the first 401 carries a nonce");
    assert_eq!(r.code(), Some(401), "credential from an unknown secret");

    let client = turn_client(&server, &user, &pass).await;
    let err = client.allocate().await.err().expect("allocation must fail");
    assert!(err.to_string().contains("401"), "{err}");
    client.close().await.unwrap();

    // The same user and expiry from a secret the server has is fine.
    let (user, pass) = turnd::auth::rest_credential("south", "carol", expiry, ':');
    let mut raw = RawClient::new(server.addr, &user, &pass);
    assert_eq!(
        raw.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        None
    );
}
