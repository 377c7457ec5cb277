//! `turnd-load --burst K` sends each allocation's packets K at a time, back to back, and
//! with `--gso` each burst as one UDP_SEGMENT message (the echo peers answering in kind,
//! the client sockets reading with UDP_GRO); the packets still go through the real turnd
//! one by one and come back. Tiny bounded loads, no timing assertions: the reported shape
//! and that packets were delivered (loss under 50% is a hang guard only).

use std::collections::HashMap;
use std::time::Duration;

use crate::common::load::{num, small_load};
use crate::common::{TestServer, run_binary as run};

/// Runs a small load with `extra` flags against `server` and checks it was delivered.
fn load(server: &TestServer, extra: &[&str]) -> HashMap<String, String> {
    let addr = server.addr.to_string();
    small_load(&addr, "alice:wonderland", 4, 400, server.pid(), extra)
}

/// Every packet sent left in a whole burst of `k` (short sends, on a full socket buffer,
/// are counted as send errors or unsent packets, and break bursts).
fn assert_whole_bursts(r: &HashMap<String, String>, k: f64) {
    assert_eq!(num(r, "burst"), k);
    if num(r, "send_errors") == 0.0 && num(r, "unsent") == 0.0 {
        assert_eq!(num(r, "sent"), k * num(r, "bursts"), "{r:?}");
    }
    assert!(num(r, "bursts") > 0.0, "{r:?}");
}

fn turnd() -> TestServer {
    TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.0/8"])
}

#[test]
fn bursts_of_four_relay_through_turnd_with_channels_and_echo_peers() {
    let server = turnd();
    let r = load(&server, &["--burst", "4"]);
    assert_whole_bursts(&r, 4.0);
    assert_eq!(r["gso"], "0");
    assert_eq!(num(&r, "gso_sends"), 0.0);
    assert!(num(&r, "peer_received") > 0.0, "the echo peers got nothing");
}

#[test]
fn bursts_of_four_sent_with_gso_relay_through_turnd_and_come_back() {
    let server = turnd();
    let r = load(&server, &["--burst", "4", "--gso"]);
    assert_whole_bursts(&r, 4.0);
    assert_eq!(r["gso"], "1", "{r:?}");
    // One UDP_SEGMENT message per burst.
    if num(&r, "send_errors") == 0.0 {
        assert_eq!(num(&r, "gso_sends"), num(&r, "bursts"), "{r:?}");
    }
    assert!(num(&r, "peer_received") > 0.0, "the echo peers got nothing");
}

#[test]
fn bursts_with_gso_relay_between_pairs_with_send_indications() {
    let server = turnd();
    let r = load(
        &server,
        &[
            "--burst",
            "4",
            "--gso",
            "--mode",
            "send",
            "--topology",
            "pair",
        ],
    );
    assert_whole_bursts(&r, 4.0);
    assert_eq!(r["gso"], "1", "{r:?}");
    assert!(num(&r, "gso_sends") > 0.0, "{r:?}");
    assert_eq!(num(&r, "relayed"), 2.0 * num(&r, "received"));
}

#[test]
fn bursts_over_tcp_are_messages_written_back_to_back() {
    let server = turnd();
    let r = load(
        &server,
        &["--burst", "4", "--transport", "tcp", "--size", "204"],
    );
    assert_eq!(r["transport"], "Tcp");
    assert_whole_bursts(&r, 4.0);
    assert_eq!(num(&r, "broken"), 0.0);
}

#[test]
fn gso_is_refused_over_tcp_and_bursts_are_bounded() {
    for (flags, msg) in [
        (
            &["--gso", "--transport", "tcp"][..],
            "--gso applies to --transport udp only",
        ),
        (&["--burst", "65"][..], "--burst"),
        (&["--burst", "0"][..], "--burst"),
    ] {
        let mut args = vec!["--user", "a:b", "--duration", "1"];
        args.extend_from_slice(flags);
        let (code, _out, err) = run(
            env!("CARGO_BIN_EXE_turnd-load"),
            &args,
            Duration::from_secs(30),
        );
        assert_ne!(code, Some(0), "{flags:?} accepted");
        assert!(err.contains(msg), "{flags:?}: {err}");
    }
}
