//! Helpers for the tests of the load tool (`turnd-load`) and the floor forwarder
//! (`turnd-floor`): read the tool's `RESULT` line, run a small bounded load, start a floor.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The `RESULT k=v ...` line of the tool's output as a map.
pub fn result_line(stdout: &str) -> HashMap<String, String> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in:\n{stdout}"));
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("k=v");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// A numeric field of a `RESULT` line.
pub fn num(r: &HashMap<String, String>, k: &str) -> f64 {
    r.get(k)
        .unwrap_or_else(|| panic!("no {k}"))
        .parse()
        .unwrap_or_else(|_| panic!("{k} is not a number: {:?}", r.get(k)))
}

/// A small bounded load against `server` (pid `pid`): `allocations` allocations as `user`,
/// `rate` packets per second for 1 s (3 s to drain), one tool thread, one echo socket, then
/// `extra` flags. Checks that the tool exited 0, every allocation was set up and packets came
/// back (loss under 50% is a hang guard, not a timing check); returns the `RESULT` fields.
pub fn small_load(
    server: &str,
    user: &str,
    allocations: u32,
    rate: u32,
    pid: u32,
    extra: &[&str],
) -> HashMap<String, String> {
    let (n, rate, pid) = (allocations.to_string(), rate.to_string(), pid.to_string());
    let mut args = vec![
        "--server",
        server,
        "--user",
        user,
        "--allocations",
        &n,
        "--rate",
        &rate,
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
    let (code, out, err) = super::run_binary(
        env!("CARGO_BIN_EXE_turnd-load"),
        &args,
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "turnd-load failed:\n{out}\n{err}");
    let r = result_line(&out);
    assert_eq!(num(&r, "ready"), f64::from(allocations), "{out}\n{err}");
    let (sent, received) = (num(&r, "sent"), num(&r, "received"));
    assert!(sent > 0.0, "{out}");
    assert!(received > 0.0, "nothing came back:\n{out}\n{err}");
    assert!(received <= sent, "{out}");
    assert!(num(&r, "loss_pct") < 50.0, "{out}\n{err}");
    r
}

/// A running `turnd-floor` on a free loopback port, killed (by its pid) on drop.
pub struct Floor {
    pub child: Child,
    pub addr: String,
    /// Its stderr up to and including the "listening on ..." line.
    pub banner: String,
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `turnd-floor` with one thread and `extra` flags; returns once it is listening.
pub fn start_floor(extra: &[&str]) -> Floor {
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
    // Hang guard only: the floor prints this line once its sockets are bound.
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
