//! `turnd-floor --batch --gso` (the `floor_gso` server of bench/compare.sh) relays
//! turnd-load's bursts, plain or sent as UDP GSO messages, with its own sends merged into
//! GSO messages and its sockets reading with GRO. Tiny bounded loads, no timing
//! assertions: the floor says it runs with GSO/GRO, and packets come back (loss under 50%
//! is a hang guard only). The floor is ended by its pid when the test ends.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::run_binary as run;

/// A running `turnd-floor`, killed (by its pid) on drop.
struct Floor {
    child: Child,
    addr: String,
    /// Its first line on stderr ("listening on ...").
    banner: String,
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_floor(extra: &[&str]) -> Floor {
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnd-floor"))
        .args(["--listen", &addr, "--threads", "1", "--max-seconds", "120"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn turnd-floor");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(err).lines();
        while let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
    });
    let mut floor = Floor {
        child,
        addr,
        banner: String::new(),
    };
    // Hang guard only: the floor prints its banner once its sockets are bound.
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("turnd-floor printed nothing");
        let done = line.contains("listening on");
        floor.banner.push_str(&line);
        floor.banner.push('\n');
        if done {
            return floor;
        }
    }
}

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

/// A small load with `extra` flags through `floor`, checked for delivery.
fn load(floor: &Floor, extra: &[&str]) -> HashMap<String, String> {
    let pid = floor.child.id().to_string();
    let mut args = vec![
        "--server",
        &floor.addr,
        "--user",
        "bench:bench",
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
    assert_eq!(num(&r, "burst"), 4.0);
    r
}

#[test]
fn floor_gso_relays_bursts_of_four_plain_and_sent_with_gso() {
    let floor = start_floor(&["--batch", "--gso"]);
    assert!(
        floor.banner.contains("batched with UDP GSO/GRO"),
        "the floor runs without GSO/GRO: {}",
        floor.banner
    );
    let r = load(&floor, &["--burst", "4"]);
    assert_eq!(r["gso"], "0");
    assert!(num(&r, "peer_received") > 0.0, "the echo peers got nothing");
    let r = load(&floor, &["--burst", "4", "--gso"]);
    assert_eq!(r["gso"], "1", "{r:?}");
    assert!(num(&r, "gso_sends") > 0.0, "{r:?}");
    assert!(num(&r, "peer_received") > 0.0, "the echo peers got nothing");
}

#[test]
fn floor_gso_relays_send_indications_between_pairs() {
    let floor = start_floor(&["--batch", "--gso"]);
    let r = load(
        &floor,
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
    assert_eq!(num(&r, "relayed"), 2.0 * num(&r, "received"), "{r:?}");
}

#[test]
fn floor_gso_needs_batch() {
    let (code, _out, err) = run(
        env!("CARGO_BIN_EXE_turnd-floor"),
        &["--listen", "127.0.0.1:0", "--gso", "--max-seconds", "1"],
        Duration::from_secs(30),
    );
    assert_ne!(code, Some(0), "--gso without --batch accepted");
    assert!(err.contains("--batch"), "{err}");
}
