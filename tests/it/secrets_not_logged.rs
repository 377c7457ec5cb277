//! Passwords, keys and REST secrets never reach the log or an error message: the server runs
//! with RUST_LOG=trace (log on stdout, errors on stderr, both captured) while clients authenticate (static user, MD5 and wrong password; REST
//! credential, fresh and expired; the TURN REST API endpoint with its key, a wrong one and the
//! admin token), and its captured stderr is searched for every secret. Bad
//! configs that involve secrets stop the server with a message that names the key, not the
//! secret.

use crate::common;

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{RawClient, free_udp_port, run_turnd, udp_transport};
use stun::message::{METHOD_ALLOCATE, METHOD_REFRESH};

const PASSWORD: &str = "pw-Zebra-7391-quartz";
const WRONG: &str = "wrong-Falcon-2284-onyx";
const SECRET: &str = "rest-Secret-Heron-5510";
/// Hex MD5("keyuser:turnd.test:pw-of-keyuser"), given as the user's key.
const KEY_PASSWORD: &str = "pw-of-keyuser";
const ADMIN_TOKEN: &str = "admin-Token-Lynx-4471-garnet";
const API_KEY: &str = "api-Key-Osprey-9035-basalt";
const WRONG_API_KEY: &str = "api-Wrong-Marten-1187-shale";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("turnd-{}-{name}", std::process::id()))
}

fn md5_hex(user: &str, pass: &str) -> String {
    let key = turnd::auth::long_term_key(
        turnd::auth::PasswordAlgorithm::Md5,
        user,
        common::REALM,
        pass,
    );
    key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn secrets_never_reach_the_log() {
    let port = free_udp_port("127.0.0.1");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let key_hex = md5_hex("keyuser", KEY_PASSWORD);
    let admin: SocketAddr = format!("127.0.0.1:{}", crate::admin_http::free_tcp_port())
        .parse()
        .unwrap();
    let config = temp_path("secrets.toml");
    fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"{addr}\"]\nrealm = \"{}\"\nworkers = 1\n\
             [relay]\nips = [\"127.0.0.1\"]\n\
             [auth]\nusers = [{{ name = \"alice\", password = \"{PASSWORD}\" }}, \
             {{ name = \"keyuser\", key = \"0x{key_hex}\" }}]\nsecrets = [\"{SECRET}\"]\n\
             [log]\nlevel = \"trace\"\n\
             [admin]\nenabled = true\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
             rest-api-keys = [\"{API_KEY}\"]\n",
            common::REALM
        ),
    )
    .unwrap();
    // The log goes to stdout; both streams are captured.
    let log = temp_path("stdout.log");
    let errlog = temp_path("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnd"))
        .args(["--config", config.to_str().unwrap()])
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(&errlog).unwrap())
        .spawn()
        .expect("spawn turnd");
    // Wait until it answers (bounded).
    let mut ready = false;
    for _ in 0..100 {
        let c = RawClient::new(addr, "alice", PASSWORD);
        c.sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        c.send_raw(&common::binding_request());
        if c.recv_raw().is_some() {
            ready = true;
            break;
        }
    }
    assert!(ready, "turnd did not start");

    // Static user: success, then a wrong password.
    let mut ok = RawClient::new(addr, "alice", PASSWORD);
    assert_eq!(ok.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    assert_eq!(ok.request(METHOD_REFRESH, &[]).code(), None);
    let mut bad = RawClient::new(addr, "alice", WRONG);
    assert_eq!(
        bad.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        Some(401)
    );
    // A user configured by key.
    let mut k = RawClient::new(addr, "keyuser", KEY_PASSWORD);
    assert_eq!(k.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    // REST: a fresh credential works, an expired one does not.
    let (user, rest_pw) = turnd::auth::rest_credential(SECRET, "carol", unix_now() + 600, ':');
    let mut r = RawClient::new(addr, &user, &rest_pw);
    assert_eq!(r.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    let (old_user, old_pw) = turnd::auth::rest_credential(SECRET, "dave", unix_now() - 60, ':');
    let mut e = RawClient::new(addr, &old_user, &old_pw);
    assert_eq!(
        e.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        Some(401)
    );

    // The TURN REST API endpoint: a credential minted, a wrong key and the token refused.
    let (status, body) = crate::admin_http::http(
        admin,
        "POST",
        &format!("/turn?service=turn&username=erin&api={API_KEY}&key={API_KEY}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let minted: serde_json::Value = serde_json::from_str(&body).unwrap();
    let minted_pw = minted["password"].as_str().unwrap().to_string();
    let (status, _) = crate::admin_http::http(
        admin,
        "GET",
        &format!("/turn?service=turn&username=erin&key={WRONG_API_KEY}"),
        None,
    );
    assert_eq!(status, 403);
    let (status, _) = crate::admin_http::http(
        admin,
        "GET",
        &format!("/turn?service=turn&username=erin&key={ADMIN_TOKEN}"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(status, 403);

    let _ = child.kill();
    let _ = child.wait();
    let text = fs::read_to_string(&log).unwrap() + &fs::read_to_string(&errlog).unwrap();
    let _ = fs::remove_file(&log);
    let _ = fs::remove_file(&errlog);
    let _ = fs::remove_file(&config);
    // The log did capture the sessions, at trace level.
    assert!(text.contains("allocation created"), "log:\n{text}");
    assert!(text.contains("authentication failed"), "log:\n{text}");
    assert!(
        text.contains("wrong key"),
        "the refused /turn request is logged:\n{text}"
    );
    for (what, secret) in [
        ("password", PASSWORD.to_string()),
        ("wrong password", WRONG.to_string()),
        ("REST secret", SECRET.to_string()),
        ("REST password", rest_pw.clone()),
        ("expired REST password", old_pw.clone()),
        ("MD5 key", key_hex.clone()),
        ("MD5 key of alice", md5_hex("alice", PASSWORD)),
        ("key user's password", KEY_PASSWORD.to_string()),
        ("admin token", ADMIN_TOKEN.to_string()),
        ("REST API key", API_KEY.to_string()),
        ("wrong REST API key", WRONG_API_KEY.to_string()),
        ("password /turn minted", minted_pw.clone()),
    ] {
        assert!(!text.contains(&secret), "the log contains the {what}");
    }
}

#[test]
fn config_errors_about_secrets_do_not_echo_them() {
    let cases = [
        format!("[auth]\nsecrets = [\"{SECRET}\", \"{SECRET}\"]\n"),
        format!(
            "[auth]\nusers = [{{ name = \"alice\", password = \"{PASSWORD}\", key = \"0x{}\" }}]\n",
            md5_hex("alice", PASSWORD)
        ),
        format!("[auth]\nusers = [{{ name = \"alice\", key = \"{PASSWORD}\" }}]\n"),
    ];
    for (i, toml) in cases.iter().enumerate() {
        let path = temp_path(&format!("bad-{i}.toml"));
        fs::write(&path, toml).unwrap();
        let (code, out, err) = run_turnd(
            &["--config", path.to_str().unwrap()],
            Duration::from_secs(20),
        );
        let _ = fs::remove_file(&path);
        assert_eq!(code, Some(2), "case {i} must stop the server: {err}");
        assert!(err.contains("auth."), "case {i} names the key: {err}");
        for secret in [SECRET, PASSWORD] {
            assert!(
                !err.contains(secret) && !out.contains(secret),
                "case {i} echoes a secret: {err}"
            );
        }
        assert!(
            !err.contains(&md5_hex("alice", PASSWORD)),
            "case {i}: {err}"
        );
    }
}
