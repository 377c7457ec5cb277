//! `turnd-load --burst K` sends each allocation's packets K at a time, back to back, and
//! with `--gso` each burst as one UDP_SEGMENT message (the echo peers answering in kind,
//! the client sockets reading with UDP_GRO); the packets still go through the real turnd
//! one by one and come back. Tiny bounded loads, no timing assertions: the reported shape
//! and that packets were delivered (loss under 50% is a hang guard only).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestServer, run_binary as run};

fn result_line(stdout: &str) -> HashMap<String, String> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in:\n{stdout}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn num(r: &HashMap<String, String>, k: &str) -> f64 {
    r.get(k)
        .unwrap_or_else(|| panic!("no {k}"))
        .parse()
        .unwrap_or_else(|_| panic!("{k} is not a number: {:?}", r.get(k)))
}

/// Runs a small load with `extra` flags against `server` and checks it was delivered.
fn load(server: &TestServer, extra: &[&str]) -> HashMap<String, String> {
    let addr = server.addr.to_string();
    let pid = server.pid().to_string();
    let mut args = vec![
        "--server",
        &addr,
        "--user",
        "alice:wonderland",
        "--allocations",
        "4",
        "--rate",
        "400",
        "--duration",
        "1",
        "--drain",
        "3",
        "--threads",
        "1",
        "--peers",
        "1",
        "--server-pid",
        &pid,
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = run(
        env!("CARGO_BIN_EXE_turnd-load"),
        &args,
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "turnd-load failed:\n{out}\n{err}");
    let r = result_line(&out);
    assert_eq!(num(&r, "ready"), 4.0, "{out}\n{err}");
    let (sent, received) = (num(&r, "sent"), num(&r, "received"));
    assert!(sent > 0.0, "{out}");
    assert!(received > 0.0, "nothing came back:\n{out}\n{err}");
    assert!(received <= sent, "{out}");
    assert!(num(&r, "loss_pct") < 50.0, "{out}\n{err}");
    r
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
