//! Helpers for the service-lifecycle tests (reload, drain, sd_notify): a config file the test
//! can rewrite, and a `turnd` started under a fake service manager: `$NOTIFY_SOCKET` points at
//! a unix datagram socket the test reads, so the test knows when the server is ready, has
//! reloaded or is draining without guessing from time.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::{REALM, RawClient, free_udp_port, peer_attr, udp_transport};
use stun::message::{METHOD_ALLOCATE, METHOD_CREATE_PERMISSION};

/// Hang guard for anything the server is expected to do soon.
pub const GUARD: Duration = Duration::from_secs(30);

/// A scratch directory unique to this process and call; removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "turnd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        // Write then rename, so the server never reads a half-written file.
        let tmp = self.path(&format!("{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `turnd` on 127.0.0.1 started with `--config` and `$NOTIFY_SOCKET`; killed by its pid on
/// drop.
pub struct NotifiedServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    notify: UnixDatagram,
    /// Where the notify socket lives: a path, or `@name` in the abstract namespace.
    pub notify_name: String,
    /// The server's stdout (its log), line by line, when started with
    /// [`NotifiedServer::start_capturing_log`].
    pub log: Option<std::sync::mpsc::Receiver<String>>,
}

impl NotifiedServer {
    /// Starts turnd with the config file `config` (flags add a free loopback port, the test
    /// realm and two workers) and waits for READY=1. With `abstract_socket` the notify
    /// socket is in the abstract namespace.
    pub fn start(
        scratch: &Scratch,
        config: &std::path::Path,
        abstract_socket: bool,
    ) -> NotifiedServer {
        Self::start_with(scratch, config, abstract_socket, false)
    }

    /// [`NotifiedServer::start`] with the server's stdout read into [`NotifiedServer::log`].
    pub fn start_capturing_log(scratch: &Scratch, config: &std::path::Path) -> NotifiedServer {
        Self::start_with(scratch, config, false, true)
    }

    fn start_with(
        scratch: &Scratch,
        config: &std::path::Path,
        abstract_socket: bool,
        capture: bool,
    ) -> NotifiedServer {
        for attempt in 0..5 {
            let (notify, notify_name) = if abstract_socket {
                use std::os::linux::net::SocketAddrExt;
                let name = format!(
                    "turnd-test-notify-{}-{}",
                    std::process::id(),
                    scratch.0.file_name().unwrap().to_str().unwrap()
                );
                let name = format!("{name}-{attempt}");
                let addr =
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
                (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
            } else {
                let p = scratch.path(&format!("notify-{attempt}.sock"));
                (
                    UnixDatagram::bind(&p).unwrap(),
                    p.to_str().unwrap().to_owned(),
                )
            };
            notify
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let port = free_udp_port("127.0.0.1");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut child = Command::new(env!("CARGO_BIN_EXE_turnd"))
                .args([
                    "--config",
                    config.to_str().unwrap(),
                    "--listen",
                    &addr.to_string(),
                    "--relay-ip",
                    "127.0.0.1",
                    "--realm",
                    REALM,
                    "--workers",
                    "2",
                ])
                .env("NOTIFY_SOCKET", &notify_name)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(if capture {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn turnd");
            let log = child.stdout.take().map(|out| {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    use std::io::BufRead;
                    for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                });
                rx
            });
            let mut server = NotifiedServer {
                child: Some(child),
                addr,
                notify,
                notify_name,
                log,
            };
            if server.expect_notify("READY=1").is_some() {
                return server;
            }
            // Most likely the port was taken between probing and binding: try another.
            drop(server);
        }
        panic!("turnd did not report READY=1");
    }

    /// The next notification, if one arrives within [`GUARD`] while the process lives.
    pub fn recv_notify(&mut self) -> Option<String> {
        let deadline = Instant::now() + GUARD;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                // Exited: drain what it sent before exiting.
                return self
                    .notify
                    .recv(&mut buf)
                    .ok()
                    .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    }

    /// Reads notifications until one whose first line is `first_line`; returns it whole.
    pub fn expect_notify(&mut self, first_line: &str) -> Option<String> {
        while let Some(m) = self.recv_notify() {
            if m.lines().next() == Some(first_line) {
                return Some(m);
            }
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal to the server by its pid.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -s {sig} failed");
    }

    /// Sends SIGHUP and returns the READY=1 message that ends the reload (its STATUS line
    /// says whether the reload worked).
    pub fn reload(&mut self) -> String {
        self.signal("HUP");
        let r = self.expect_notify("RELOADING=1").expect("RELOADING=1");
        assert!(r.contains("MONOTONIC_USEC="), "{r}");
        self.expect_notify("READY=1")
            .expect("READY=1 after a reload")
    }

    /// Waits (up to `within`) for the process to exit; its exit code, or None if it had to be
    /// killed or died by a signal.
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

    /// Log lines up to and including the first that contains `needle` (None if none comes
    /// within [`GUARD`]).
    pub fn log_until(&self, needle: &str) -> Option<Vec<String>> {
        let rx = self.log.as_ref().expect("started with start_capturing_log");
        let mut lines = Vec::new();
        while let Ok(line) = rx.recv_timeout(GUARD) {
            let found = line.contains(needle);
            lines.push(line);
            if found {
                return Some(lines);
            }
        }
        None
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for NotifiedServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A REST credential (username, password) for `secret`, valid for an hour.
pub fn rest_credential(secret: &str, user: &str) -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    turnd::auth::rest_credential(secret, user, now + 3600, ':')
}

/// Allocates with (user, pass); returns the client and the error code (None on success).
pub fn try_allocate(server: SocketAddr, user: &str, pass: &str) -> (RawClient, Option<u16>) {
    let mut c = RawClient::new(server, user, pass);
    let r = c.request(METHOD_ALLOCATE, &[udp_transport()]);
    let code = r.code();
    (c, code)
}

/// A client with an allocation and a permission for `peer`.
pub fn allocated_with_permission(
    server: SocketAddr,
    user: &str,
    pass: &str,
    peer: SocketAddr,
) -> RawClient {
    let (mut c, code) = try_allocate(server, user, pass);
    assert_eq!(code, None, "Allocate as {user}");
    let r = c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer)]);
    assert_eq!(r.code(), None, "CreatePermission");
    c
}

/// One datagram each way through the client's allocation and `peer`.
pub fn relay_round_trip(c: &RawClient, peer: &UdpSocket, tag: &str) {
    let peer_addr = peer.local_addr().unwrap();
    let out = format!("to peer {tag}");
    c.send_raw(&crate::common::send_indication(peer_addr, out.as_bytes()));
    let mut buf = [0u8; 1500];
    let (n, relayed) = peer.recv_from(&mut buf).expect("the peer receives");
    assert_eq!(&buf[..n], out.as_bytes());
    let back = format!("to client {tag}");
    peer.send_to(back.as_bytes(), relayed).unwrap();
    let (from, data) = crate::common::recv_data_indication(c).expect("a Data indication");
    assert_eq!(from, peer_addr);
    assert_eq!(data, back.as_bytes());
}
