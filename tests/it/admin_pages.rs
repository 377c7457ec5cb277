//! The operator's pages through the real server and a real browser (headless Chromium driven
//! by `tests/browser/admin_pages.mjs`):
//!
//! - the self-test page, opened by a one-time link from `turnd selftest-link`, connects every
//!   advertised transport (UDP, TCP, TLS) relay-only through turnd, carries data and media, and
//!   shows turnd's own view of those allocations; the server's trace log holds no token, no
//!   link and no minted credential;
//! - with a TLS listener whose certificate is for another name (and another key), the page
//!   reports that transport failed, with the reason, while UDP and TCP connect;
//! - the status page, opened while a test client relays traffic, lists the sessions (REST user
//!   without its timestamp) and draws a non-empty plot; without the token or the login cookie
//!   every page and its data answer 401.
//!
//! Screenshots go to the test's temporary directory (copied to `$TURND_SCREENSHOT_DIR` when
//! set). Needs what `tests/it/browser.rs` needs (`bash .ci/setup-browser.sh`).

use crate::admin_http::free_tcp_port;
use crate::browser::{ONE_BROWSER, prerequisites, run_node_driver};
use crate::common::{RawClient, free_udp_port, run_turnd, udp_transport};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use stun::attributes::ATTR_XOR_RELAYED_ADDRESS;
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND};
use turnd::testing::process::TempDir;

const TOKEN: &str = "pages-Token-Kestrel-2291-agate";
const SECRET: &str = "pages-Secret-Wren-6620-jasper";
/// base64(SHA-256(SubjectPublicKeyInfo)) of `tests/browser/tls/cert.pem`: the browser trusts
/// that key (`--ignore-certificate-errors-spki-list`) as an operator's browser trusts a real
/// certificate. `openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der |
/// openssl dgst -sha256 -binary | base64`
const TEST_CERT_SPKI: &str = "KJf/PZ/fKUVUKcfbzbmLPrHZ6ZKJaz59U+qgsb0e7iM=";
/// What the self-test page sends through each transport's data channel.
const BULK_BYTES: u64 = 2 * 1024 * 1024;

/// turnd started from a config file with its log (trace) captured; killed by pid on drop.
struct LoggedServer {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
}

impl LoggedServer {
    /// UDP and TCP on a free port of 127.0.0.1, the admin listener, a REST secret; `tls` adds a
    /// TLS listener with that (certificate, key).
    fn start(dir: &TempDir, tls: Option<(&Path, &Path)>) -> LoggedServer {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port("127.0.0.1"))
            .parse()
            .unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let tls_section = match tls {
            Some((cert, key)) => format!(
                "[tls]\nlisten = [\"127.0.0.1:{}\"]\ncert = \"{}\"\nkey = \"{}\"\n",
                free_tcp_port(),
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let config = dir.write(
            "turnserver.toml",
            &format!(
                "[server]\nlisten = [\"{addr}\"]\nrealm = \"{}\"\nworkers = 2\n\
                 [relay]\nips = [\"127.0.0.1\"]\n\
                 [peers]\nallow = [\"127.0.0.0/8\"]\n\
                 [auth]\nusers = [{{ name = \"alice\", password = \"wonderland\" }}]\n\
                 secrets = [\"{SECRET}\"]\n\
                 {tls_section}\
                 [log]\nlevel = \"trace\"\n\
                 [admin]\nenabled = true\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n",
                crate::common::REALM
            ),
        );
        let log = dir.0.join("turnd.log");
        let child = Command::new(env!("CARGO_BIN_EXE_turnd"))
            .args(["--config", config.to_str().expect("utf-8 path")])
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnd");
        let server = LoggedServer {
            child,
            addr,
            admin,
            config,
            log,
        };
        // Serving once it answers a Binding request (the admin listener is bound before).
        let probe = RawClient::new(addr, "alice", "wonderland");
        probe
            .sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            probe.send_raw(&crate::common::binding_request());
            if probe.recv_raw().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "turnd did not start");
        }
        server
    }

    fn base(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Stops the server and returns its log.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer: status, head (lower-cased names), body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// The value of the session cookie that `Set-Cookie` sets.
    fn cookie(&self) -> Option<String> {
        let set = self.header("set-cookie")?;
        let first = set.split(';').next()?;
        let (k, v) = first.split_once('=')?;
        (k == "turnd_admin" && !v.is_empty()).then(|| v.to_string())
    }
}

/// One request with optional extra header lines and a form body.
fn request(admin: SocketAddr, method: &str, path: &str, headers: &[String], form: &str) -> Answer {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !form.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            form.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(form);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .expect("a status");
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn form_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs the pages driver and fails with its report when the driver itself broke.
fn drive(opts: Value) -> Value {
    let out = run_node_driver("admin_pages.mjs", &[&opts.to_string()]);
    assert!(
        out["driverError"].is_null(),
        "pages driver: {}",
        serde_json::to_string_pretty(&out).unwrap_or_default()
    );
    out
}

/// Checks the screenshot is a PNG and copies it to `$TURND_SCREENSHOT_DIR` when set.
fn keep_screenshot(path: &Path) {
    let bytes = std::fs::read(path).expect("the page's screenshot");
    assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
    if let Some(dir) = std::env::var_os("TURND_SCREENSHOT_DIR") {
        let name = path.file_name().expect("a file name");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::copy(path, Path::new(&dir).join(name));
    }
    eprintln!("screenshot: {}", path.display());
}

/// The self-test's row for `transport`.
fn row<'a>(report: &'a Value, transport: &str) -> &'a Value {
    let pretty = serde_json::to_string_pretty(report).unwrap_or_default();
    let rows = report["results"].as_array().expect("results");
    let found: Vec<&Value> = rows
        .iter()
        .filter(|r| r["transport"] == transport)
        .collect();
    assert_eq!(found.len(), 1, "one {transport} row:\n{pretty}");
    found[0]
}

/// A transport that connected: data both ways, media, and turnd's own view of two allocations
/// of that transport that carried the bulk transfer.
fn assert_connected(report: &Value, transport: &str) {
    let r = row(report, transport);
    let pretty = serde_json::to_string_pretty(r).unwrap_or_default();
    assert_eq!(r["connected"], true, "{transport}:\n{pretty}");
    assert!(r["error"].is_null(), "{transport}:\n{pretty}");
    assert_eq!(r["pingsAnswered"], 10, "{transport}:\n{pretty}");
    assert_eq!(r["bulkBytes"].as_u64(), Some(BULK_BYTES), "{pretty}");
    assert!(r["connectMs"].as_f64().is_some_and(|x| x > 0.0), "{pretty}");
    assert!(r["rttMs"].as_f64().is_some_and(|x| x >= 0.0), "{pretty}");
    assert!(
        r["throughputMbps"].as_f64().is_some_and(|x| x > 0.0),
        "{pretty}"
    );
    assert!(
        r["media"]["videoPackets"].as_u64().is_some_and(|n| n > 0),
        "the generated video arrived:\n{pretty}"
    );
    // The pair's local candidates are relayed by turnd over this transport.
    for c in r["relayed"].as_array().expect("relayed") {
        assert_eq!(c["type"], "relay", "{pretty}");
        assert_eq!(c["relayProtocol"], transport, "{pretty}");
    }
    // turnd's view: two allocations of this transport; what one sent to its peer (the other)
    // includes the bulk transfer.
    let view = r["server"].as_array().expect("turnd's view");
    assert_eq!(view.len(), 2, "two allocations seen by turnd:\n{pretty}");
    for s in view {
        assert_eq!(s["transport"], transport, "{pretty}");
    }
    let most = view
        .iter()
        .filter_map(|s| s["bytes_to_peer"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(most >= BULK_BYTES, "turnd relayed the bulk data:\n{pretty}");
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn selftest_page_connects_every_transport_and_logs_no_secret() {
    let chromium = prerequisites();
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("selftest-page");
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/tls");
    let server = LoggedServer::start(&dir, Some((&tls.join("cert.pem"), &tls.join("key.pem"))));

    // A one-time link from the command line: the ticket rides in the fragment, no token.
    let (code, link, err) = run_turnd(
        &[
            "selftest-link",
            "--config",
            server.config.to_str().unwrap(),
            "--ttl",
            "120",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "selftest-link: {err}");
    let link = link.trim().to_string();
    let (before, ticket) = link.split_once("&ticket=").expect("a ticket in the link");
    assert_eq!(before, format!("{}/login#next=/selftest", server.base()));
    assert!(!link.contains(TOKEN), "the link carries no token: {link}");

    let shot = dir.0.join("selftest.png");
    let report = drive(json!({
        "mode": "selftest",
        "base": server.base(),
        "link": link,
        "chromium": chromium.to_string_lossy(),
        "screenshot": shot.to_string_lossy(),
        "spki": TEST_CERT_SPKI,
    }));
    keep_screenshot(&shot);
    let pretty = serde_json::to_string_pretty(&report).unwrap_or_default();
    assert!(report["error"].is_null(), "{pretty}");
    assert_eq!(
        report["results"].as_array().map(Vec::len),
        Some(3),
        "UDP, TCP and TLS advertised:\n{pretty}"
    );
    for t in ["udp", "tcp", "tls"] {
        assert_connected(&report, t);
    }
    let cookie = report["cookies"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "turnd_admin"))
        .expect("the login cookie");
    assert_eq!(cookie["httpOnly"], true, "{pretty}");
    assert_eq!(cookie["sameSite"], "Strict", "{pretty}");

    // One credential per URI: a REST user of its own, short-lived, whose sessions ended with
    // its test.
    let usernames: Vec<&str> = report["usernames"]
        .as_array()
        .expect("the run's usernames")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(usernames.len(), 3, "{pretty}");
    assert!(
        report["sessionsEnded"].as_u64() >= Some(6),
        "two allocations per URI ended: {pretty}"
    );
    let mut passwords = Vec::new();
    for username in &usernames {
        let (expiry, user) = username.split_once(':').expect("<expiry>:<user>");
        assert!(user.starts_with("selftest-"), "{username}");
        let expiry: u64 = expiry.parse().expect("expiry");
        assert!(
            expiry <= unix_now() + 90,
            "a short-lived credential: {username}"
        );
        passwords.push(turnd::auth::rest_credential(SECRET, user, expiry, ':').1);
        let left = request(
            server.admin,
            "GET",
            &format!("/sessions?user={user}"),
            &[format!("Authorization: Bearer {TOKEN}")],
            "",
        );
        assert_eq!(left.status, 200);
        assert_eq!(left.body.trim(), "[]", "{user}'s sessions were ended");
    }

    // The link worked once.
    let again = request(
        server.admin,
        "POST",
        "/login",
        &[],
        &format!("ticket={}", form_escape(ticket)),
    );
    assert_eq!(again.status, 401, "a used link is refused");
    assert!(again.cookie().is_none());
    // The login form: the token in the body sets the cookie, which opens the pages.
    let login = request(
        server.admin,
        "POST",
        "/login",
        &[],
        &format!("token={}&next=%2Fstatus", form_escape(TOKEN)),
    );
    assert_eq!(login.status, 303, "{}", login.body);
    assert_eq!(login.header("location").as_deref(), Some("/status"));
    let set = login.header("set-cookie").expect("Set-Cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let session = login.cookie().expect("the session cookie");
    let status = request(
        server.admin,
        "GET",
        "/status.json",
        &[format!("Cookie: turnd_admin={session}")],
        "",
    );
    assert_eq!(status.status, 200, "{}", status.body);
    // A token in the URL opens nothing.
    let in_url = request(
        server.admin,
        "GET",
        &format!("/status?token={TOKEN}"),
        &[],
        "",
    );
    assert_eq!(in_url.status, 401);

    let log = server.stop();
    // The log did record the requests, by path, at trace level.
    assert!(
        log.contains("admin request") && log.contains("path=/selftest/credential"),
        "requests are logged:\n{}",
        &log[..log.len().min(4000)]
    );
    assert!(log.contains("pages login"), "logins are logged");
    for (what, secret) in [
        ("admin token", TOKEN.to_string()),
        ("one-time link's ticket", ticket.to_string()),
        ("first self-test password", passwords[0].clone()),
        ("second self-test password", passwords[1].clone()),
        ("third self-test password", passwords[2].clone()),
        ("session cookie", session),
        ("REST secret", SECRET.to_string()),
    ] {
        assert!(!log.contains(&secret), "the log contains the {what}");
    }
}

#[test]
fn selftest_page_reports_a_tls_listener_with_a_certificate_for_another_name() {
    let chromium = prerequisites();
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("selftest-wrong-cert");
    // A certificate for another name, with a key of its own (not the one the browser trusts).
    let ck = rcgen::generate_simple_self_signed(vec!["wrong-name.invalid".to_string()])
        .expect("a certificate");
    let cert = dir.write("wrong-cert.pem", &ck.cert.pem());
    let key = dir.write("wrong-key.pem", &ck.signing_key.serialize_pem());
    let server = LoggedServer::start(&dir, Some((&cert, &key)));
    let shot = dir.0.join("selftest-wrong-cert.png");
    let report = drive(json!({
        "mode": "selftest",
        "base": server.base(),
        "token": TOKEN,
        "chromium": chromium.to_string_lossy(),
        "screenshot": shot.to_string_lossy(),
        "spki": TEST_CERT_SPKI,
    }));
    keep_screenshot(&shot);
    let pretty = serde_json::to_string_pretty(&report).unwrap_or_default();
    assert!(report["error"].is_null(), "{pretty}");
    assert_eq!(
        report["results"].as_array().map(Vec::len),
        Some(3),
        "{pretty}"
    );
    assert_connected(&report, "udp");
    assert_connected(&report, "tcp");
    let tls = row(&report, "tls");
    assert_eq!(tls["connected"], false, "{pretty}");
    let reason = tls["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("no relay candidate") || reason.contains("ICE errors"),
        "the failure says why: {reason:?}\n{pretty}"
    );
    // The page shows it.
    let shown = report["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["transport"] == "tls"))
        .and_then(|r| r["text"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        shown.contains("failed") && shown.contains(reason.split(';').next().unwrap_or("?")),
        "{shown}"
    );
    drop(server);
}

/// Two REST-credential clients relay ChannelData to each other's relayed address until
/// `stop` is set (bounded: at most 90 s).
fn load(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let expiry = unix_now() + 600;
    let (user, pass) = turnd::auth::rest_credential(SECRET, "loaduser", expiry, ':');
    let mut a = RawClient::new(addr, &user, &pass);
    let mut b = RawClient::new(addr, &user, &pass);
    let relayed = |c: &mut RawClient| {
        let r = c.request(METHOD_ALLOCATE, &[udp_transport()]);
        assert_eq!(r.code(), None, "allocate");
        r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS)[0]
    };
    let (ra, rb) = (relayed(&mut a), relayed(&mut b));
    let bind = |c: &mut RawClient, peer: SocketAddr| {
        let r = c.request(
            METHOD_CHANNEL_BIND,
            &crate::admin_http::channel_bind_attrs(0x4000, peer),
        );
        assert_eq!(r.code(), None, "channel bind");
    };
    bind(&mut a, rb);
    bind(&mut b, ra);
    std::thread::spawn(move || {
        let data = crate::admin_http::channel_data(0x4000, &[0x5a; 1000]);
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut sent = 0u64;
        let drain = |s: &UdpSocket| {
            let _ = s.set_nonblocking(true);
            let mut buf = [0u8; 2048];
            while s.recv_from(&mut buf).is_ok() {}
        };
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            for _ in 0..10 {
                a.send_raw(&data);
                b.send_raw(&data);
                sent += 2;
            }
            drain(&a.sock);
            drain(&b.sock);
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    })
}

#[test]
fn status_page_shows_sessions_and_a_plot_under_load_and_nothing_without_the_token() {
    let dir = TempDir::new("status-page");
    let server = LoggedServer::start(&dir, None);

    // Nothing without the token or the cookie; a forged cookie does not help.
    for (method, path) in [
        ("GET", "/status"),
        ("GET", "/selftest"),
        ("GET", "/status.json"),
        ("GET", "/sessions"),
        ("POST", "/selftest/credential"),
        ("POST", "/selftest/end"),
    ] {
        for headers in [
            vec![],
            vec!["Cookie: turnd_admin=1999999999.00000000000000000000000000000000.0000000000000000000000000000000000000000000000000000000000000000".to_string()],
            vec![format!("Authorization: Bearer {TOKEN}x")],
        ] {
            let a = request(server.admin, method, path, &headers, "");
            assert_eq!(a.status, 401, "{method} {path} {headers:?}: {}", a.body);
            assert!(!a.body.contains("\"sessions\""), "{method} {path}");
        }
    }
    // The token opens nothing from a URL, only from the login form's body.
    let in_url = request(
        server.admin,
        "POST",
        &format!("/login?token={TOKEN}&next=%2Fstatus"),
        &[],
        "",
    );
    assert_eq!(in_url.status, 401);
    assert!(in_url.cookie().is_none());
    // No link without the admin listener and a token.
    let (code, out, err) = run_turnd(&["selftest-link"], Duration::from_secs(20));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("admin listener is off"), "{err}");
    let page = request(server.admin, "GET", "/status", &[], "");
    assert!(
        page.body.contains("<form id=\"login\""),
        "the 401 page is the login form"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(server.addr, stop.clone());
    let chromium = prerequisites();
    let report = {
        let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
        let shot = dir.0.join("status.png");
        let r = drive(json!({
            "mode": "status",
            "base": server.base(),
            "token": TOKEN,
            "chromium": chromium.to_string_lossy(),
            "screenshot": shot.to_string_lossy(),
            "minSessions": 2,
        }));
        keep_screenshot(&shot);
        r
    };
    stop.store(true, Ordering::Relaxed);
    let sent = loader.join().expect("load thread");
    let pretty = serde_json::to_string_pretty(&report).unwrap_or_default();
    assert!(sent > 0);
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "both sessions listed:\n{pretty}");
    for r in rows {
        let text = r.as_str().unwrap_or_default();
        assert!(text.contains("loaduser"), "the user: {text}");
        assert!(!text.contains(':'), "no REST timestamp: {text}");
        assert!(text.contains("udp"), "{text}");
        assert!(text.contains("bit/s"), "the session's bandwidth: {text}");
    }
    assert!(
        report["plot"]["bandwidthPoints"].as_u64() >= Some(2),
        "{pretty}"
    );
    assert!(report["plot"]["maxBps"].as_f64() > Some(0.0), "{pretty}");
    assert!(
        report["plot"]["maxAllocations"].as_f64() >= Some(2.0),
        "{pretty}"
    );
    let series = report["plotSeries"].as_array().expect("plot series");
    assert!(
        series
            .iter()
            .any(|s| s["series"] == "bandwidth" && s["points"].as_u64() >= Some(2)),
        "{pretty}"
    );
    assert_eq!(report["totals"]["allocations"], 2, "{pretty}");
    // No /cluster on a single server: no nodes section.
    assert_eq!(report["nodesShown"], false, "{pretty}");

    // The data behind it, with the bearer token.
    let data = request(
        server.admin,
        "GET",
        "/status.json",
        &[format!("Authorization: Bearer {TOKEN}")],
        "",
    );
    assert_eq!(data.status, 200);
    let data: Value = serde_json::from_str(&data.body).expect("JSON");
    assert_eq!(data["sessions"].as_array().map(Vec::len), Some(2));
    assert!(data["sessions"][0].get("username").is_none());
    assert!(data["history"]["samples"].as_array().map(Vec::len) >= Some(2));
    drop(server);
}
