//! `turnd probe` as an operator runs it, a real process against real servers on loopback:
//! turnd over UDP, TCP and TLS (a certificate trusted with `--ca`) and coturn's
//! `turnserver` over UDP and TCP each exit 0 with every round trip relayed; a wrong password
//! exits 4, a server whose peer policy denies the probe's (loopback) relayed addresses exits
//! 5 at CreatePermission, a closed port exits 3, a bandwidth limit that drops most round
//! trips exits 6, and a bad command line exits 2, each saying why. The JSON report is read
//! for the outcome, the steps and the relay figures.

use crate::common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::stream::{TempDir, TestCert, free_tcp_port};
use common::{REALM, TestServer, free_udp_port, run_turnd};
use turnd::stun::{Class, MessageWriter, method};

/// Hang guard for one probe run; its own --timeout is 20 s, plus the release.
const LIMIT: Duration = Duration::from_secs(60);
const COUNT: u32 = 5;

/// Runs `turnd probe URI ARGS --json` and returns (exit code, the report, stdout+stderr).
fn probe(uri: &str, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let count = COUNT.to_string();
    let mut argv = vec!["probe", uri, "--json", "--timeout", "20", "--count", &count];
    argv.extend_from_slice(args);
    let (code, stdout, stderr) = run_turnd(&argv, LIMIT);
    let shown = format!("turnd {}\n{stdout}{stderr}", argv.join(" "));
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}): {shown}"));
    (code, report, shown)
}

/// Checks a run that must succeed: exit 0, outcome ok, every step ok in order, every
/// round trip back.
fn assert_ok(uri: &str, args: &[&str]) {
    let (code, r, shown) = probe(uri, args);
    assert_eq!(code, Some(0), "{shown}");
    assert_eq!(r["outcome"], "ok", "{shown}");
    assert_eq!(r["exit_code"], 0, "{shown}");
    let steps: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["ok"], true, "{shown}");
            s["step"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        steps,
        [
            "resolve",
            "connect",
            "allocate",
            "allocate",
            "permission",
            "send-indication",
            "channel-bind",
            "relay",
            "release"
        ],
        "{shown}"
    );
    assert_eq!(r["relay"]["sent"], COUNT, "{shown}");
    assert_eq!(r["relay"]["received"], COUNT, "{shown}");
    assert_eq!(r["relay"]["loss_percent"], 0.0, "{shown}");
    assert!(
        r["relay"]["rtt_ms"]["avg"].as_f64().unwrap() > 0.0,
        "{shown}"
    );
}

/// Checks a run that must fail with `code` and `outcome` at `step`, its error naming
/// `because`; the human output names the reason too.
fn assert_fails(uri: &str, args: &[&str], code: i32, outcome: &str, step: &str, because: &str) {
    let (got, r, shown) = probe(uri, args);
    assert_eq!(got, Some(code), "{shown}");
    assert_eq!(r["outcome"], outcome, "{shown}");
    assert_eq!(r["exit_code"], code, "{shown}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(because),
        "error {error:?} lacks {because:?}: {shown}"
    );
    let failed: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["ok"] == false)
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(failed, [step], "{shown}");

    // Without --json: the step marked FAIL and the result line with the exit code.
    let mut argv = vec!["probe", uri, "--timeout", "20", "--count", "2"];
    argv.extend_from_slice(args);
    let (got, stdout, _) = run_turnd(&argv, LIMIT);
    assert_eq!(got, Some(code), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains(step)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("(exit {code})")) && stdout.contains(because),
        "{stdout}"
    );
}

fn turnd_allowing_loopback(extra: &[&str]) -> TestServer {
    let mut args = vec!["--allow-peer", "127.0.0.0/8"];
    args.extend_from_slice(extra);
    TestServer::start("127.0.0.1", &args)
}

const ALICE: [&str; 4] = ["--user", "alice", "--password", "wonderland"];

#[test]
fn turnd_over_udp_tcp_and_tls() {
    let dir = TempDir::new("probe-tls");
    let cert = TestCert::new(&dir);
    let tls_port = free_tcp_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let s = turnd_allowing_loopback(&[
        "--tls-listen",
        &tls_listen,
        "--cert",
        cert.cert.to_str().unwrap(),
        "--key",
        cert.key.to_str().unwrap(),
    ]);
    let port = s.addr.port();
    assert_ok(&format!("turn:127.0.0.1:{port}"), &ALICE);
    assert_ok(&format!("turn:127.0.0.1:{port}?transport=udp"), &ALICE);
    assert_ok(&format!("turn:127.0.0.1:{port}?transport=tcp"), &ALICE);
    let mut with_ca = ALICE.to_vec();
    with_ca.extend(["--ca", cert.cert.to_str().unwrap()]);
    assert_ok(&format!("turns:localhost:{tls_port}"), &with_ca);
    assert_ok(&format!("turns:127.0.0.1:{tls_port}"), &with_ca);

    // The TLS step says what was negotiated.
    let (_, r, shown) = probe(&format!("turns:localhost:{tls_port}"), &with_ca);
    let connect = r["steps"][1]["detail"].as_str().unwrap();
    assert!(connect.contains("ALPN stun.turn"), "{shown}");

    // A certificate the probe does not trust is a connectivity failure that names TLS.
    let other_dir = TempDir::new("probe-other-ca");
    let other = TestCert::new(&other_dir);
    let mut wrong_ca = ALICE.to_vec();
    wrong_ca.extend(["--ca", other.cert.to_str().unwrap()]);
    assert_fails(
        &format!("turns:localhost:{tls_port}"),
        &wrong_ca,
        3,
        "connectivity",
        "connect",
        "TLS",
    );
}

#[test]
fn rest_secret_minted_locally() {
    let s = turnd_allowing_loopback(&["--auth-secret", "probe-secret"]);
    let uri = format!("turn:127.0.0.1:{}", s.addr.port());
    assert_ok(&uri, &["--secret", "probe-secret", "--user", "monitor"]);
    assert_ok(&uri, &["--secret", "probe-secret"]);
    assert_fails(
        &uri,
        &["--secret", "another-secret"],
        4,
        "auth",
        "allocate",
        "401",
    );
}

#[test]
fn wrong_password_is_an_auth_failure() {
    let s = turnd_allowing_loopback(&[]);
    for transport in ["udp", "tcp"] {
        let uri = format!("turn:127.0.0.1:{}?transport={transport}", s.addr.port());
        assert_fails(
            &uri,
            &["--user", "alice", "--password", "not-wonderland"],
            4,
            "auth",
            "allocate",
            "401",
        );
    }
}

/// turnd's default peer policy denies loopback: the probe's two relayed addresses are on
/// 127.0.0.1, so CreatePermission gets 403 and the probe says it is the peer policy.
#[test]
fn denied_peer_is_a_relay_failure() {
    let s = TestServer::start("127.0.0.1", &[]);
    for transport in ["udp", "tcp"] {
        let uri = format!("turn:127.0.0.1:{}?transport={transport}", s.addr.port());
        assert_fails(&uri, &ALICE, 5, "relay", "permission", "403");
        let (_, r, _) = probe(&uri, &ALICE);
        assert!(r["error"].as_str().unwrap().contains("peer policy"), "{r}");
        // The two allocations were made (and released) before the refusal.
        let steps = r["steps"].as_array().unwrap();
        assert_eq!(steps.last().unwrap()["step"], "release", "{r}");
    }
}

#[test]
fn closed_port_is_a_connectivity_failure() {
    let port = free_udp_port("127.0.0.1");
    for transport in ["udp", "tcp"] {
        let uri = format!("turn:127.0.0.1:{port}?transport={transport}");
        assert_fails(&uri, &ALICE, 3, "connectivity", "connect", "refused");
    }
    let uri = format!("turns:127.0.0.1:{port}");
    assert_fails(
        &uri,
        &["--user", "a", "--password", "b", "--insecure"],
        3,
        "connectivity",
        "connect",
        "refused",
    );
}

/// A per-allocation bandwidth limit of 100 bytes/s with room for one 1000-byte packet: the
/// first round trip gets through, the next ones are dropped, so the probe exits 6 (loss),
/// not 5 (nothing relayed).
#[test]
fn loss_above_the_limit_exits_6() {
    let s = turnd_allowing_loopback(&["--max-bps", "800", "--bps-burst", "1200"]);
    let uri = format!("turn:127.0.0.1:{}", s.addr.port());
    let mut args = ALICE.to_vec();
    args.extend(["--size", "1000"]);
    let (code, r, shown) = probe(&uri, &args);
    assert_eq!(code, Some(6), "{shown}");
    assert_eq!(r["outcome"], "loss", "{shown}");
    let received = r["relay"]["received"].as_u64().unwrap();
    assert!(received >= 1 && received < u64::from(COUNT), "{shown}");
    // With --max-loss 100 the same loss is accepted.
    args.extend(["--max-loss", "100"]);
    let (code, _, shown) = probe(&uri, &args);
    assert_eq!(code, Some(0), "{shown}");
}

#[test]
fn usage_errors_exit_2() {
    for (args, because) in [
        (
            vec!["probe", "stun:127.0.0.1", "--user", "a", "--password", "b"],
            "turn:",
        ),
        (vec!["probe", "turn:127.0.0.1:3478"], "no credential"),
        (vec!["probe", "turn:127.0.0.1", "--password", "b"], "--user"),
        (
            vec![
                "probe",
                "turn:127.0.0.1",
                "--user",
                "a",
                "--password",
                "b",
                "--secret",
                "s",
            ],
            "not both",
        ),
        (
            vec![
                "probe",
                "turn:127.0.0.1",
                "--user",
                "a",
                "--password",
                "b",
                "--insecure",
            ],
            "turns:",
        ),
        (
            vec![
                "probe",
                "turns:127.0.0.1",
                "--user",
                "a",
                "--password",
                "b",
                "--ca",
                "/nonexistent/ca.pem",
            ],
            "/nonexistent/ca.pem",
        ),
    ] {
        let (code, stdout, stderr) = run_turnd(&args, LIMIT);
        assert_eq!(code, Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stdout.contains(because), "{args:?}: {stdout}{stderr}");
    }
    // clap's own usage errors exit 2 as well.
    let (code, _, stderr) = run_turnd(&["probe", "turn:h", "--count", "0"], LIMIT);
    assert_eq!(code, Some(2), "{stderr}");
}

/// coturn's `turnserver` (Debian's coturn package, installed by `.ci/setup-coturn.sh`),
/// started by the test on loopback with a long-term user and loopback peers allowed.
struct Coturn {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Coturn {
    fn start() -> Coturn {
        let bin = which("turnserver");
        let dir = TempDir::new("probe-coturn");
        let port = free_udp_port("127.0.0.1");
        let pid = dir.0.join("turnserver.pid");
        let db = dir.0.join("turndb");
        let log = std::fs::File::create(dir.0.join("turnserver.log")).unwrap();
        let child = Command::new(bin)
            .args([
                "-n",
                "--listening-ip",
                "127.0.0.1",
                "--relay-ip",
                "127.0.0.1",
            ])
            .args(["--listening-port", &port.to_string()])
            .args(["--min-port", "20800", "--max-port", "20899"])
            .args([
                "--realm",
                REALM,
                "--lt-cred-mech",
                "--user",
                "alice:wonderland",
            ])
            .args([
                "--allow-loopback-peers",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
            ])
            .arg("--pidfile")
            .arg(&pid)
            .arg("--userdb")
            .arg(&db)
            .args(["--log-file", "stdout", "--simple-log"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnserver");
        let mut c = Coturn {
            child,
            port,
            _dir: dir,
        };
        c.wait_ready();
        c
    }

    /// Polls with Binding requests until coturn answers (20 s at most).
    fn wait_ready(&mut self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut req = Vec::new();
        MessageWriter::new(&mut req, method::BINDING, Class::Request, [5; 12]);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("turnserver exited: {st}");
            }
            let _ = sock.send_to(&req, ("127.0.0.1", self.port));
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && n >= 20
                && buf[..2] == [0x01, 0x01]
            {
                return;
            }
        }
        panic!("turnserver did not answer on port {}", self.port);
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: this test needs Debian's coturn package \
                 (run `bash .ci/setup-coturn.sh`, or `apt-get install coturn`)"
            )
        })
}

#[test]
fn coturn_over_udp_and_tcp() {
    let c = Coturn::start();
    assert_ok(&format!("turn:127.0.0.1:{}", c.port), &ALICE);
    assert_ok(&format!("turn:127.0.0.1:{}?transport=tcp", c.port), &ALICE);
    assert_fails(
        &format!("turn:127.0.0.1:{}", c.port),
        &["--user", "alice", "--password", "nope"],
        4,
        "auth",
        "allocate",
        "401",
    );
}

/// Over IPv6 the probe asks for IPv6 relayed addresses (the server here relays on ::1 only).
#[test]
fn turnd_over_ipv6() {
    let s = TestServer::start("::1", &["--allow-peer", "::1/128"]);
    let port = s.addr.port();
    for transport in ["udp", "tcp"] {
        let uri = format!("turn:[::1]:{port}?transport={transport}");
        assert_ok(&uri, &ALICE);
        let (_, r, shown) = probe(&uri, &ALICE);
        let a = r["steps"][2]["detail"].as_str().unwrap();
        assert!(a.contains("relayed address [::1]:"), "{shown}");
    }
}
