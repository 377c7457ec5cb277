//! Running the real `turnd` binary (and other programs) from integration tests: start it on
//! loopback with a test user, wait until it answers, end it by its pid; run a program to
//! completion under a time limit; free ports and scratch directories. Shared by turnd's own
//! integration tests (`tests/it/common`) and the tools' (`tools/tests/it/common`), which
//! differ only in how they find the binary.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::stun::{Class, MessageWriter, method};

/// The realm of the test server.
pub const REALM: &str = "turnd.test";

/// A `turnd` process; killed (by its own pid) and reaped on drop.
pub struct TestServer {
    child: Option<Child>,
    pub addr: SocketAddr,
}

/// A port that was free a moment ago for both UDP and TCP (turnd listens on both). Tests
/// that fix a relay port range use 20000-20999: outside the kernel's ephemeral range
/// (32768-60999), where client sockets of tests running alongside could take it.
pub fn free_udp_port(ip: &str) -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind((ip, 0)).expect("bind a UDP socket on the test IP");
        let port = udp.local_addr().expect("a bound address").port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port on 127.0.0.1")
        .port()
}

impl TestServer {
    /// Starts the turnd binary `bin` listening on `ip` (a free port) with a test user
    /// `alice:wonderland` (unless `extra` names `--user` or `--auth-secret`), two workers
    /// (unless `--workers`), relaying on the same IP (unless `--relay-ip`); `extra` flags are
    /// appended. Tries five ports before it gives up.
    pub fn start_binary(bin: &Path, ip: &str, extra: &[&str]) -> TestServer {
        for _ in 0..5 {
            let port = free_udp_port(ip);
            let addr = SocketAddr::new(ip.parse().expect("an IP address"), port);
            let mut args: Vec<String> = vec![
                "--listen".into(),
                addr.to_string(),
                "--realm".into(),
                REALM.into(),
            ];
            if !extra.contains(&"--workers") {
                args.extend(["--workers".into(), "2".into()]);
            }
            if !extra.contains(&"--relay-ip") {
                args.extend(["--relay-ip".into(), ip.into()]);
            }
            if !extra
                .iter()
                .any(|a| *a == "--user" || *a == "--auth-secret")
            {
                args.extend(["--user".into(), "alice:wonderland".into()]);
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut child = Command::new(bin)
                .args(&args)
                .env("RUST_LOG", "turnd=debug")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn turnd");
            let mut server = TestServer { child: None, addr };
            if server.wait_ready(&mut child) {
                server.child = Some(child);
                return server;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("turnd did not start");
    }

    /// Polls with Binding requests until the server answers (or the process exits, or 20
    /// seconds pass).
    fn wait_ready(&self, child: &mut Child) -> bool {
        let sock = UdpSocket::bind(if self.addr.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        })
        .expect("bind a loopback UDP socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set a read timeout");
        let mut req = Vec::new();
        MessageWriter::new(&mut req, method::BINDING, Class::Request, [7; 12]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            let _ = sock.send_to(&req, self.addr);
            let mut buf = [0u8; 1500];
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && n >= 20
                && buf[0] == 0x01
                && buf[1] == 0x01
            {
                return true;
            }
        }
        false
    }

    /// The server's pid (0 once it has exited and been reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal to the server (by its pid).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status();
    }

    /// Waits for the process to exit and returns its status code; kills it (by its pid)
    /// and returns `None` if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `bin` with `args` to completion and returns (exit code, stdout, stderr). The process
/// is killed (by its pid) if it is still running after `limit`; the code is then `None` (as
/// it is when it dies by a signal).
pub fn run_binary(
    bin: impl AsRef<Path>,
    args: &[&str],
    limit: Duration,
) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut child = Command::new(bin.as_ref())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let timed_out = matches!(child.try_wait(), Ok(None));
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait();
    (
        status.ok().filter(|_| !timed_out).and_then(|st| st.code()),
        out_reader.join().unwrap_or_default(),
        err_reader.join().unwrap_or_default(),
    )
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty directory under the system's temporary directory, named after `tag`,
    /// this process and a counter.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "turnd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create a temporary directory");
        TempDir(p)
    }

    /// Writes `text` to the file `name` in the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write a file in the temporary directory");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
