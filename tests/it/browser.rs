//! A real browser relays through turnd: headless Chromium (Debian's `chromium`, driven by
//! playwright-core through `tests/browser/webrtc_relay.mjs`) connects two RTCPeerConnections
//! with `iceTransportPolicy: "relay"` whose only ICE server is turnd, sends data-channel
//! messages both ways and reports the selected candidate pair from getStats(). Once each over
//! UDP, TCP and TLS (RFC 8656 §3.1 client-to-server transports; RFC 7443 for `turns:`). The
//! two allocations relay to each other inside turnd, without the kernel (`/metrics`).
//!
//! Both relayed addresses are on 127.0.0.1, so the server runs with `--allow-peer 127.0.0.0/8`
//! (loopback peers are denied by default).
//!
//! Needs `/usr/bin/chromium` (or `$TURND_CHROMIUM`), `node` and `tests/browser/node_modules`:
//! `bash .ci/setup-browser.sh` installs them, and `.ci/run` calls it. When something is
//! missing the tests fail and say so; they never pass without a browser.

use crate::admin_http;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use admin_http::{scrape_parsed, start_with_admin};
use serde_json::Value;

/// One browser at a time: three Chromiums at once on a 2-core machine that also builds and
/// tests other things would only make each of them slower.
pub(crate) static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// Hang guard around the whole driver (browser launch plus the page's own 60 s guard).
const DRIVER_LIMIT: Duration = Duration::from_secs(180);

const SETUP_HINT: &str = "run `bash .ci/setup-browser.sh` (installs Debian's chromium and \
                          playwright-core from tests/browser/package-lock.json)";

pub(crate) fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The Chromium binary; panics with the setup hint when the browser or the driver's
/// dependencies are missing.
pub(crate) fn prerequisites() -> PathBuf {
    let chromium =
        PathBuf::from(std::env::var("TURND_CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    assert!(
        chromium.is_file(),
        "browser test: {} not found; {SETUP_HINT}",
        chromium.display()
    );
    let pw = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(
        pw.is_file(),
        "browser test: {} not found; {SETUP_HINT}",
        pw.display()
    );
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        matches!(node, Ok(s) if s.success()),
        "browser test: `node` does not run ({node:?}); {SETUP_HINT}"
    );
    chromium
}

/// Runs the two-peer driver against `url` and returns its JSON report.
fn run_driver(chromium: &Path, url: &str) -> Value {
    let chromium = chromium.to_string_lossy();
    run_node_driver("webrtc_relay.mjs", &[url, "alice", "wonderland", &chromium])
}

/// Runs the node script `script` of `tests/browser` with `args` and returns the JSON object
/// it prints last. The driver is killed by its pid if it outlives [`DRIVER_LIMIT`].
pub(crate) fn run_node_driver(script: &str, args: &[&str]) -> Value {
    let mut child = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + DRIVER_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("browser driver still running after {DRIVER_LIMIT:?}, killed\nstdout: {stdout}\nstderr: {stderr}")
    });
    assert!(
        status.success(),
        "browser driver failed ({status})\nstdout: {stdout}\nstderr: {stderr}"
    );
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    let line = line.unwrap_or_else(|| {
        panic!("browser driver printed no JSON\nstdout: {stdout}\nstderr: {stderr}")
    });
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("browser driver output is not JSON ({e}): {line}"))
}

/// Asserts that data went both ways over a relay/relay pair allocated over `transport`
/// (`relayProtocol` of the local candidate: "udp", "tcp" or "tls") from turnd at `url`.
fn assert_relayed(report: &Value, url: &str, transport: &str) {
    let pretty = serde_json::to_string_pretty(report).unwrap_or_default();
    assert!(
        report["error"].is_null(),
        "browser reported an error:\n{pretty}"
    );
    assert_eq!(
        report["pc1ReceivedAll"], true,
        "pc1 missed messages:\n{pretty}"
    );
    assert_eq!(
        report["pc2ReceivedAll"], true,
        "pc2 missed messages:\n{pretty}"
    );
    let selected = report["selected"].as_array().expect("selected pairs");
    assert_eq!(selected.len(), 2, "{pretty}");
    for (i, pair) in selected.iter().enumerate() {
        let local = &pair["local"];
        let remote = &pair["remote"];
        // Neither the pair's state nor its bytesReceived is asserted: Chromium shows
        // "in-progress" while a consent check (RFC 7675) is outstanding, and when each side
        // has two relayed candidates (one per local network) the two sides may select
        // different pairs, so data arrives on a pair other than the one sending.
        assert!(
            pair["bytesSent"].as_u64().is_some_and(|n| n > 0),
            "pc{}: nothing sent on the selected pair:\n{pretty}",
            i + 1
        );
        assert_eq!(local["candidateType"], "relay", "pc{}:\n{pretty}", i + 1);
        assert_eq!(remote["candidateType"], "relay", "pc{}:\n{pretty}", i + 1);
        assert_eq!(local["relayProtocol"], transport, "pc{}:\n{pretty}", i + 1);
        assert_eq!(local["url"], url, "pc{}:\n{pretty}", i + 1);
        // turnd relays on 127.0.0.1 (TestServer passes --relay-ip 127.0.0.1).
        assert_eq!(local["address"], "127.0.0.1", "pc{}:\n{pretty}", i + 1);
        assert_eq!(remote["address"], "127.0.0.1", "pc{}:\n{pretty}", i + 1);
        // The remote candidate is one of the relayed addresses the other side gathered.
        let other = relay_ports(&report["candidates"][1 - i]);
        let port = remote["port"].as_u64().expect("remote port");
        assert!(
            other.contains(&port),
            "pc{}: remote port {port} is not one of pc{}'s relay candidates {other:?}:\n{pretty}",
            i + 1,
            2 - i
        );
    }
}

/// Ports of the `typ relay` candidates in a list of candidate lines
/// (`candidate:F C proto prio addr port typ relay ...`).
fn relay_ports(candidates: &Value) -> Vec<u64> {
    let lines = candidates.as_array().map(Vec::as_slice).unwrap_or(&[]);
    lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.as_str()?.split_whitespace().collect();
            (f.get(6) == Some(&"typ") && f.get(7) == Some(&"relay")).then_some(())?;
            f.get(5)?.parse().ok()
        })
        .collect()
}

/// Both peer connections relay through turnd, so their packets (ICE checks, DTLS, SCTP) go
/// from one allocation to the other: turnd hands them over without the kernel, on one worker
/// or across two.
fn assert_relayed_inside(admin: SocketAddr) {
    let m = scrape_parsed(admin);
    let path = |p: &str| {
        m.get(&format!(
            "turnd_relay_internal_datagrams_total{{path=\"{p}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    let inside = path("same_worker") + path("other_worker");
    // At the least the ICE checks both ways and the DTLS handshake.
    assert!(inside >= 10.0, "datagrams relayed inside turnd: {inside}");
}

/// Polls until something accepts TCP connections on `addr` (hang guard: 20 s).
fn wait_tcp(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing accepts TCP connections on {addr}");
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free TCP port")
}

#[test]
fn browser_relays_data_channel_over_turn_udp() {
    let chromium = prerequisites();
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let (server, admin) = start_with_admin(&["--allow-peer", "127.0.0.0/8"]);
    let url = format!("turn:127.0.0.1:{}?transport=udp", server.addr.port());
    let report = run_driver(&chromium, &url);
    assert_relayed(&report, &url, "udp");
    assert_relayed_inside(admin);
}

#[test]
fn browser_relays_data_channel_over_turn_tcp() {
    let chromium = prerequisites();
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    // `--listen` serves TCP on the same address and port as UDP.
    let (server, admin) = start_with_admin(&["--allow-peer", "127.0.0.0/8"]);
    wait_tcp(server.addr);
    let url = format!("turn:127.0.0.1:{}?transport=tcp", server.addr.port());
    let report = run_driver(&chromium, &url);
    assert_relayed(&report, &url, "tcp");
    assert_relayed_inside(admin);
}

#[test]
fn browser_relays_data_channel_over_turns_tls() {
    let chromium = prerequisites();
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    // A self-signed certificate for localhost; Chromium runs with --ignore-certificate-errors.
    let tls_dir = browser_dir().join("tls");
    let cert = tls_dir.join("cert.pem");
    let key = tls_dir.join("key.pem");
    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let tls_listen = tls_addr.to_string();
    let (server, admin) = start_with_admin(&[
        "--allow-peer",
        "127.0.0.0/8",
        "--tls-listen",
        &tls_listen,
        "--cert",
        cert.to_str().expect("utf-8 path"),
        "--key",
        key.to_str().expect("utf-8 path"),
    ]);
    wait_tcp(tls_addr);
    let url = format!("turns:localhost:{}?transport=tcp", tls_addr.port());
    let report = run_driver(&chromium, &url);
    assert_relayed(&report, &url, "tls");
    assert_relayed_inside(admin);
    drop(server);
}
