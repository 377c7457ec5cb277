//! Two network namespaces joined by a veth pair, made and removed by the test: the server's
//! (`vs0`, 198.18.0.1/24 and 2001:2::1/64) and the clients' and peers' (`vl0`, 198.18.0.2-5
//! and 2001:2::2-5). RFC 2544's and RFC 5180's benchmarking ranges, no default route in
//! either namespace: nothing can leave. The load end sends full UDP checksums (tx offload
//! off, as a real wire carries them) and has GRO on, which gives a veth the NAPI that
//! XDP_TX towards it needs.
#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const SERVER4: &str = "198.18.0.1";
pub const SERVER6: &str = "2001:2::1";
/// Client and peer addresses on the load side.
pub const LOAD4: [&str; 4] = ["198.18.0.2", "198.18.0.3", "198.18.0.4", "198.18.0.5"];
pub const LOAD6: [&str; 4] = ["2001:2::2", "2001:2::3", "2001:2::4", "2001:2::5"];

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Pair {
    pub server: String,
    pub load: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ethtool(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool"])
        .args(args)
        .output()
        .expect("run ethtool (apt-get install ethtool)");
    assert!(
        out.status.success(),
        "ethtool {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pair {
    pub fn new() -> Pair {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("tko{}x{n}", std::process::id());
        let pair = Pair {
            server: format!("{tag}s"),
            load: format!("{tag}l"),
        };
        ip(&["netns", "add", &pair.server]);
        ip(&["netns", "add", &pair.load]);
        ip(&[
            "link",
            "add",
            "vs0",
            "netns",
            &pair.server,
            "type",
            "veth",
            "peer",
            "name",
            "vl0",
            "netns",
            &pair.load,
        ]);
        let (s, l) = (pair.server.as_str(), pair.load.as_str());
        ip(&["-n", s, "addr", "add", "198.18.0.1/24", "dev", "vs0"]);
        ip(&[
            "-n",
            s,
            "-6",
            "addr",
            "add",
            "2001:2::1/64",
            "dev",
            "vs0",
            "nodad",
        ]);
        for a in LOAD4 {
            ip(&["-n", l, "addr", "add", &format!("{a}/24"), "dev", "vl0"]);
        }
        for a in LOAD6 {
            ip(&[
                "-n",
                l,
                "-6",
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                "vl0",
                "nodad",
            ]);
        }
        for ns in [s, l] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", s, "link", "set", "vs0", "up"]);
        ip(&["-n", l, "link", "set", "vl0", "up"]);
        ethtool(l, &["-K", "vl0", "tx", "off", "gro", "on"]);
        ethtool(s, &["-K", "vs0", "tx", "off"]);
        pair
    }

    /// Runs `f` on a thread inside the load namespace; sockets it makes stay there.
    pub fn in_load<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_ns(&self.load, f)
    }

    /// Whether an XDP program is attached to the server's `vs0`.
    pub fn xdp_attached(&self) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.server, "link", "show", "vs0"])
            .output()
            .expect("ip link show");
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("prog/xdp") || text.contains(" xdp")
    }

    /// Starts `turnd` in the server namespace with `config` (a file path) and `extra`
    /// flags, and waits until it answers a Binding request on `listen`. None when the
    /// process exits first; its stderr then is in `log`.
    pub fn start_turnd(
        &self,
        config: &Path,
        extra: &[&str],
        listen: SocketAddr,
        log: &Path,
    ) -> Option<Child> {
        self.start_turnd_with(&[], config, extra, listen, log)
    }

    /// As [`Pair::start_turnd`], `turnd` run under `wrapper` (e.g. `setpriv ...`).
    pub fn start_turnd_with(
        &self,
        wrapper: &[&str],
        config: &Path,
        extra: &[&str],
        listen: SocketAddr,
        log: &Path,
    ) -> Option<Child> {
        let mut args: Vec<String> = vec!["netns".into(), "exec".into(), self.server.clone()];
        args.extend(wrapper.iter().map(|s| s.to_string()));
        args.push(env!("CARGO_BIN_EXE_turnd").into());
        args.push("--config".into());
        args.push(config.display().to_string());
        args.push("--user".into());
        args.push("alice:wonderland".into());
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = File::create(log).expect("create the log");
        let mut child = Command::new("ip")
            .args(&args)
            .env("RUST_LOG", "turnd=debug")
            .stdout(out.try_clone().expect("clone the log file"))
            .stderr(out)
            .spawn()
            .expect("spawn turnd");
        let ready = self.in_load(|| {
            let bind = if listen.is_ipv6() {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let sock = UdpSocket::bind(bind).expect("bind");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
                let _ = sock.send_to(&super::binding_request(), listen);
                let mut buf = [0u8; 1500];
                if let Ok((n, _)) = sock.recv_from(&mut buf)
                    && n >= 20
                    && buf[..2] == [0x01, 0x01]
                {
                    return true;
                }
            }
            false
        });
        if ready {
            Some(child)
        } else {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair.
        for ns in [&self.server, &self.load] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that has joined network namespace `ns` (`/run/netns/<ns>`).
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(format!("/run/netns/{ns}")).expect("open the namespace");
            // SAFETY: setns on this thread only, with a namespace file descriptor we own.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the namespace thread")
    })
}

/// Ends a turnd started by [`Pair::start_turnd`] by its pid (SIGKILL) and reaps it.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
