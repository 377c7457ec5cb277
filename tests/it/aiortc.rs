//! aiortc relays through turnd. Two aiortc RTCPeerConnections (ICE by aioice) in one process
//! (`tests/clients/aiortc_relay.py`, run from the virtualenv `tests/clients/.venv`) connect
//! with `iceTransportPolicy` "relay" and turnd as their only ICE server, send data-channel
//! messages both ways and report the pair aioice nominated. Once each over
//! `turn:…?transport=udp`, `turn:…?transport=tcp` and `turns:localhost:…?transport=tcp`
//! (RFC 8656 §3.1, RFC 7443). Meanwhile the test checks in `/sessions` that both relayed
//! addresses are turnd's allocations over that transport and carried data both ways.
//!
//! For `turns:` aioice verifies the server's certificate with Python's default TLS context;
//! the driver runs with `SSL_CERT_FILE` naming the test's self-signed certificate (rcgen, for
//! localhost), so the chain and the host name are checked against it, not skipped.
//!
//! Both relayed addresses are on 127.0.0.1, so the server runs with `--allow-peer 127.0.0.0/8`.
//!
//! Needs aiortc (pinned in `tests/clients/requirements.txt`) in `tests/clients/.venv`:
//! `bash .ci/setup-clients.sh` makes it, and `.ci/run` calls it. When it is missing the tests
//! fail and say so; they never pass without aiortc.

use crate::admin_http;
use crate::clients;
use crate::common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use admin_http::start_with_admin;
use clients::{Driver, assert_relayed, assert_sessions, clients_dir, require, wait_tcp};
use common::stream::{TempDir, TestCert, free_tcp_port};

/// One pair of peer connections at a time on a 2-core machine.
static ONE_PAIR: Mutex<()> = Mutex::new(());

fn python() -> PathBuf {
    clients_dir().join(".venv/bin/python")
}

/// Panics with the setup hint unless the virtualenv has aiortc.
fn prerequisites() {
    require(
        "aiortc in tests/clients/.venv",
        Command::new(python())
            .arg(clients_dir().join("aiortc_relay.py"))
            .arg("--check"),
    );
}

/// Runs the driver against `url` and checks its report and turnd's `/sessions`.
fn relay_through(
    url: &str,
    admin: SocketAddr,
    listener: SocketAddr,
    transport: &str,
    ca: Option<&TestCert>,
) {
    let mut cmd = Command::new(python());
    cmd.arg(clients_dir().join("aiortc_relay.py"))
        .args([url, "alice", "wonderland"]);
    if let Some(ca) = ca {
        cmd.env("SSL_CERT_FILE", &ca.cert);
    }
    let mut driver = Driver::spawn(cmd);
    let report = driver.report();
    let relayed = assert_relayed(&report);
    assert_sessions(admin, listener, transport, relayed);
    driver.finish();
}

#[test]
fn aiortc_relays_data_channel_over_turn_udp() {
    prerequisites();
    let _one = ONE_PAIR.lock().unwrap_or_else(|e| e.into_inner());
    let (server, admin) = start_with_admin(&["--allow-peer", "127.0.0.0/8"]);
    let url = format!("turn:127.0.0.1:{}?transport=udp", server.addr.port());
    relay_through(&url, admin, server.addr, "udp", None);
}

#[test]
fn aiortc_relays_data_channel_over_turn_tcp() {
    prerequisites();
    let _one = ONE_PAIR.lock().unwrap_or_else(|e| e.into_inner());
    // `--listen` serves TCP on the same address and port as UDP.
    let (server, admin) = start_with_admin(&["--allow-peer", "127.0.0.0/8"]);
    wait_tcp(server.addr);
    let url = format!("turn:127.0.0.1:{}?transport=tcp", server.addr.port());
    relay_through(&url, admin, server.addr, "tcp", None);
}

#[test]
fn aiortc_relays_data_channel_over_turns_tls() {
    prerequisites();
    let _one = ONE_PAIR.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("aiortc-tls");
    let cert = TestCert::new(&dir);
    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let tls_listen = tls_addr.to_string();
    let (server, admin) = start_with_admin(&[
        "--allow-peer",
        "127.0.0.0/8",
        "--tls-listen",
        &tls_listen,
        "--cert",
        cert.cert.to_str().expect("utf-8 path"),
        "--key",
        cert.key.to_str().expect("utf-8 path"),
    ]);
    wait_tcp(tls_addr);
    let url = format!("turns:localhost:{}?transport=tcp", tls_addr.port());
    relay_through(&url, admin, tls_addr, "tls", Some(&cert));
    drop(server);
}
