//! The load tool (`turnd-load`) sets up allocations on the real server, relays its
//! timestamped packets and prints a parseable report; it refuses targets outside loopback and
//! the benchmarking ranges, and places its clients and echo peers where it is told. The
//! floor forwarder (`turnd-floor`) carries the same load. Over TCP and TLS
//! (`--transport tcp|tls`) each allocation has its own stream to the server. Tiny bounded
//! loads, no timing assertions: only that packets came back and the report parses.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::load::{num, result_line, small_load, start_floor};
use crate::common::{TempDir, TestCert, TestServer, free_tcp_port, run_binary as run};

fn load(server: &str, pid: u32, extra: &[&str]) -> HashMap<String, String> {
    let r = small_load(server, "alice:wonderland", 2, 200, pid, extra);
    assert_eq!(num(&r, "allocations"), 2.0);
    for k in [
        "offered_pps",
        "delivered_pps",
        "p50_us",
        "p99_us",
        "p999_us",
        "relayed",
        "server_cpu_s",
        "cpu_s_per_mpkt",
        "setup_server_cpu_s",
        "rss_kib_per_alloc",
        "unsent",
        "broken",
    ] {
        num(&r, k);
    }
    r
}

#[test]
fn load_tool_relays_through_turnd_with_channels_and_echo_peers() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.0/8"]);
    let r = load(&server.addr.to_string(), server.pid(), &[]);
    assert_eq!(r["mode"], "Channel");
    assert_eq!(r["topology"], "Peer");
    assert!(num(&r, "peer_received") > 0.0, "the echo peers got nothing");
}

#[test]
fn load_tool_relays_between_pairs_of_allocations_with_send_indications() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.0/8"]);
    let r = load(
        &server.addr.to_string(),
        server.pid(),
        &["--mode", "send", "--topology", "pair"],
    );
    assert_eq!(r["mode"], "Send");
    assert_eq!(r["topology"], "Pair");
    assert_eq!(num(&r, "relayed"), 2.0 * num(&r, "received"));
}

#[test]
fn load_tool_relays_over_tcp_with_channels_and_echo_peers() {
    // `--listen` serves TCP on the same address as UDP.
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.0/8"]);
    let r = load(
        &server.addr.to_string(),
        server.pid(),
        // 201 bytes: the ChannelData goes padded to 208 (RFC 8656 §12.5), or the server's
        // framing of the stream would break.
        &["--transport", "tcp", "--size", "201"],
    );
    assert_eq!(r["transport"], "Tcp");
    assert_eq!(r["mode"], "Channel");
    assert!(num(&r, "peer_received") > 0.0, "the echo peers got nothing");
    assert_eq!(num(&r, "broken"), 0.0);
}

#[test]
fn load_tool_relays_over_tcp_between_pairs_with_send_indications() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.0/8"]);
    let r = load(
        &server.addr.to_string(),
        server.pid(),
        &["--transport", "tcp", "--mode", "send", "--topology", "pair"],
    );
    assert_eq!(r["transport"], "Tcp");
    assert_eq!(r["topology"], "Pair");
    assert_eq!(num(&r, "relayed"), 2.0 * num(&r, "received"));
    assert_eq!(num(&r, "broken"), 0.0);
}

#[test]
fn load_tool_relays_over_tls_trusting_the_servers_certificate() {
    let dir = TempDir::new("load-tls");
    let cert = TestCert::new(&dir);
    let tls = format!("127.0.0.1:{}", free_tcp_port());
    let server = TestServer::start(
        "127.0.0.1",
        &[
            "--allow-peer",
            "127.0.0.0/8",
            "--tls-listen",
            &tls,
            "--cert",
            cert.cert.to_str().unwrap(),
            "--key",
            cert.key.to_str().unwrap(),
        ],
    );
    let ca = cert.cert.to_str().unwrap();
    let r = load(&tls, server.pid(), &["--transport", "tls", "--ca", ca]);
    assert_eq!(r["transport"], "Tls");
    assert!(num(&r, "peer_received") > 0.0, "the echo peers got nothing");
    let r = load(
        &tls,
        server.pid(),
        &["--transport", "tls", "--insecure", "--topology", "pair"],
    );
    assert_eq!(num(&r, "relayed"), 2.0 * num(&r, "received"));
    // A name the certificate does not carry: the handshake fails, nothing is sent.
    let (code, _out, err) = run(
        env!("CARGO_BIN_EXE_turnd-load"),
        &[
            "--server",
            &tls,
            "--user",
            "alice:wonderland",
            "-n",
            "2",
            "--duration",
            "1",
            "--transport",
            "tls",
            "--ca",
            ca,
            "--tls-name",
            "wrong.example",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("tls handshake"), "{err}");
}

#[test]
fn load_tool_with_rest_credentials() {
    let server = TestServer::start(
        "127.0.0.1",
        &["--allow-peer", "127.0.0.0/8", "--auth-secret", "s3cret"],
    );
    let pid = server.pid().to_string();
    let addr = server.addr.to_string();
    let (code, out, err) = run(
        env!("CARGO_BIN_EXE_turnd-load"),
        &[
            "--server",
            &addr,
            "--secret",
            "s3cret",
            "-n",
            "2",
            "--rate",
            "100",
            "--duration",
            "1",
            "--drain",
            "3",
            "--server-pid",
            &pid,
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(num(&result_line(&out), "received") > 0.0, "{out}\n{err}");
}

#[test]
fn load_tool_reports_failed_setup_with_a_wrong_password() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.0/8"]);
    let addr = server.addr.to_string();
    let (code, _out, err) = run(
        env!("CARGO_BIN_EXE_turnd-load"),
        &[
            "--server",
            &addr,
            "--user",
            "alice:wrong",
            "-n",
            "2",
            "--duration",
            "1",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("Allocate error 401"), "{err}");
}

#[test]
fn load_tool_refuses_non_loopback_servers() {
    let (code, _out, err) = run(
        env!("CARGO_BIN_EXE_turnd-load"),
        &[
            "--server",
            "192.0.2.1:3478",
            "--user",
            "a:b",
            "--duration",
            "1",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("only loopback"), "{err}");
}

#[test]
fn load_tool_refuses_clients_and_peers_outside_loopback_and_the_benchmarking_ranges() {
    for (flag, value) in [
        ("--client-ip", "10.0.0.1"),
        ("--peer-ip", "127.0.0.3,192.0.2.7"),
        ("--peer-ip", "2001:db8::1"),
    ] {
        let (code, _out, err) = run(
            env!("CARGO_BIN_EXE_turnd-load"),
            &["--user", "a:b", "--duration", "1", flag, value],
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(1), "{flag} {value}");
        assert!(err.contains("only loopback"), "{flag} {value}: {err}");
    }
}

/// `--client-ip` and `--peer-ip` place the clients and the echo peers (as bench/offload.sh
/// does in its namespaces, here on other loopback addresses), and the sending window's CPU
/// time is reported, the machine's and the tool's.
#[test]
fn load_tool_places_clients_and_peers_on_the_addresses_given() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.0/8"]);
    let (code, out, err) = run(
        env!("CARGO_BIN_EXE_turnd-load"),
        &[
            "--server",
            &server.addr.to_string(),
            "--user",
            "alice:wonderland",
            "--client-ip",
            "127.0.0.2",
            "--peer-ip",
            "127.0.0.3,127.0.0.4",
            "--peers",
            "2",
            "--threads",
            "1",
            "-n",
            "4",
            "--rate",
            "200",
            "--duration",
            "1",
            "--drain",
            "3",
            "--server-pid",
            &server.pid().to_string(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    let peers = out
        .lines()
        .find_map(|l| l.strip_prefix("echo peers: "))
        .unwrap_or_else(|| panic!("no echo peers line:\n{out}"));
    let ips: Vec<&str> = peers
        .split_whitespace()
        .map(|a| a.rsplit_once(':').map_or(a, |(ip, _)| ip))
        .collect();
    assert_eq!(ips, ["127.0.0.3", "127.0.0.4"], "{out}");
    let r = result_line(&out);
    assert_eq!(num(&r, "ready"), 4.0, "{out}\n{err}");
    assert!(
        num(&r, "peer_received") > 0.0,
        "the echo peers got nothing:\n{out}"
    );
    assert!(num(&r, "received") > 0.0, "nothing came back:\n{out}");
    let window = num(&r, "window_s");
    assert!((window - 1.0).abs() < 1e-6, "{window}");
    let (busy, tool) = (num(&r, "system_busy_s"), num(&r, "tool_window_cpu_s"));
    assert!(
        busy >= 0.0 && tool >= 0.0 && num(&r, "tool_window_user_s") <= tool,
        "{out}"
    );
    num(&r, "system_softirq_s");
    num(&r, "server_window_cpu_s");
}

#[test]
fn floor_forwarder_carries_the_same_load() {
    floor_carries_the_load(&[]);
}

#[test]
fn batched_floor_forwarder_carries_the_same_load() {
    floor_carries_the_load(&["--batch"]);
}

fn floor_carries_the_load(flags: &[&str]) {
    let floor = start_floor(flags);
    let addr = floor.addr.clone();
    for extra in [
        &["--mode", "channel"][..],
        &["--mode", "send", "--topology", "pair"],
    ] {
        let r = load(&addr, floor.child.id(), extra);
        assert!(num(&r, "received") > 0.0);
    }
}
