//! `turnd-load --kernel-load IFACE` (bench/offload.sh --kernel-load): frames from a packet
//! socket, echo peers and the clients' receiving side in XDP on the tool's interface. Run
//! through the real turnd between two network namespaces this test makes (a veth pair,
//! addresses from 198.18.0.0/15, no route out), with turnd on sockets and with its own
//! kernel fast path: the round trips come back counted and timed. Needs root (namespaces,
//! XDP), as CI has. The loss bound is a hang guard at a rate far below what the link
//! carries, not a timing check.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::load::{num, result_line};
use crate::common::{run_binary, turnd_bin};

const SERVER: &str = "198.18.0.1";
const CLIENT: &str = "198.18.0.2";
const PEERS: &str = "198.18.0.3,198.18.0.4";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by `vs0` (server) and `vl0` (load), deleted on drop.
struct Link {
    server: String,
    load: String,
}

impl Link {
    fn new() -> Link {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "tkl{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let link = Link {
            server: format!("{tag}s"),
            load: format!("{tag}l"),
        };
        let (s, l) = (link.server.as_str(), link.load.as_str());
        ip(&["netns", "add", s]);
        ip(&["netns", "add", l]);
        ip(&[
            "link", "add", "vs0", "netns", s, "type", "veth", "peer", "name", "vl0", "netns", l,
        ]);
        ip(&["-n", s, "addr", "add", "198.18.0.1/24", "dev", "vs0"]);
        for a in [CLIENT, "198.18.0.3", "198.18.0.4"] {
            ip(&["-n", l, "addr", "add", &format!("{a}/24"), "dev", "vl0"]);
        }
        for (ns, dev) in [(s, "vs0"), (l, "vl0")] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            // What --kernel-load needs of both ends (bench/offload.sh sets the same).
            let out = Command::new("ip")
                .args([
                    "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "gro", "on",
                ])
                .output()
                .expect("run ethtool (apt-get install ethtool)");
            assert!(
                out.status.success(),
                "ethtool: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        link
    }

    /// turnd in the server namespace, with `extra` flags; killed by its pid on drop.
    fn turnd(&self, extra: &[&str]) -> Server {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server])
            .arg(turnd_bin())
            .args([
                "--listen",
                &format!("{SERVER}:3478"),
                "--relay-ip",
                SERVER,
                "--realm",
                "bench.test",
                "--user",
                "alice:wonderland",
                "--allow-peer",
                "198.18.0.0/15",
                "--min-port",
                "10000",
                "--max-port",
                "29999",
                "--log-level",
                "warn",
                "--unauth-rate",
                "0",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnd");
        Server(child)
    }

    /// turnd-load in the load namespace; its exit code, stdout and stderr.
    fn load(&self, extra: &[&str]) -> (Option<i32>, String, String) {
        let mut args = vec![
            "netns",
            "exec",
            &self.load,
            env!("CARGO_BIN_EXE_turnd-load"),
            "--server",
            "198.18.0.1:3478",
            "--client-ip",
            CLIENT,
            "--peer-ip",
            PEERS,
            "--user",
            "alice:wonderland",
        ];
        args.extend_from_slice(extra);
        run_binary("ip", &args, Duration::from_secs(60))
    }

    /// Waits (bounded) until a tiny socket load gets through the server.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, _, _) = self.load(&[
                "-n",
                "1",
                "--rate",
                "100",
                "--duration",
                "0.2",
                "--drain",
                "0.5",
                "--threads",
                "1",
                "--peers",
                "1",
                "--setup-timeout",
                "2",
            ]);
            if code == Some(0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "turnd did not start in the namespace"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn xdp_on(&self, ns: &str, dev: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", ns, "link", "show", dev])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.server, &self.load] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGKILL by its pid (`ip netns exec` execs turnd): no drain.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kernel_load(link: &Link) -> std::collections::HashMap<String, String> {
    let (code, out, err) = link.load(&[
        "-n",
        "20",
        "--rate",
        "2000",
        "--duration",
        "1",
        "--drain",
        "2",
        "--kernel-load",
        "vl0",
    ]);
    assert_eq!(
        code,
        Some(0),
        "turnd-load --kernel-load failed:\n{out}\n{err}"
    );
    let r = result_line(&out);
    assert_eq!(num(&r, "ready"), 20.0, "{out}");
    let (sent, received) = (num(&r, "sent"), num(&r, "received"));
    // 2,000 per second for a second, paced from the start of the window.
    assert!((1500.0..=2001.0).contains(&sent), "{out}");
    assert!(received <= sent, "{out}");
    assert!(received >= 0.9 * sent, "round trips lost:\n{out}\n{err}");
    // Every round trip passed an echo peer, which is the program on vl0.
    assert!(num(&r, "peer_received") >= received, "{out}");
    assert_eq!(num(&r, "relayed"), num(&r, "peer_received") + received);
    assert!(num(&r, "p50_us") > 0.0, "no round-trip times:\n{out}");
    // The program is detached when the tool is done.
    assert!(
        !link.xdp_on(&link.load, "vl0"),
        "the tool left its program attached"
    );
    r
}

#[test]
fn kernel_load_relays_through_turnd_on_sockets() {
    let link = Link::new();
    let _server = link.turnd(&[]);
    link.wait_ready();
    kernel_load(&link);
}

#[test]
fn kernel_load_relays_through_turnds_kernel_fast_path() {
    let link = Link::new();
    let _server = link.turnd(&["--kernel-offload", "on"]);
    link.wait_ready();
    assert!(
        link.xdp_on(&link.server, "vs0"),
        "turnd attached nothing to vs0"
    );
    kernel_load(&link);
}

#[test]
fn kernel_load_refuses_what_it_cannot_send() {
    for extra in [
        &["--mode", "send"][..],
        &["--topology", "pair"][..],
        &["--burst", "4"][..],
        &["--transport", "tcp"][..],
    ] {
        let mut args = vec![
            "--server",
            "198.18.0.1:3478",
            "--user",
            "a:b",
            "--kernel-load",
            "vl0",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = run_binary(
            env!("CARGO_BIN_EXE_turnd-load"),
            &args,
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(1), "{extra:?}:\n{out}\n{err}");
        assert!(err.contains("--kernel-load takes"), "{extra:?}: {err}");
    }
}
