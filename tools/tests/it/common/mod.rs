//! Shared helpers for the tools' tests: start the real `turnd` binary on loopback (found with
//! [`turnd_bin`]), end it by its pid, run a tool to completion, and what the load tool's
//! tests read ([`load`]).

pub mod load;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use turnd::stun::{Class, MessageWriter, method};

/// The realm of the test server.
pub const REALM: &str = "turnd.test";

/// The `turnd` binary of this workspace, built by the cargo that runs the tests (once per
/// test binary) so that it is there and up to date: `<target>/<profile>/turnd`.
///
/// Cargo builds the binaries of the packages under test only (`CARGO_BIN_EXE_<name>` is not
/// set across packages): `cargo test --workspace` builds turnd's, `cargo test -p
/// turnd-tools` does not, and a binary left by an older build would be stale. So this asks
/// cargo for it, with the target directory and profile of this test binary
/// (`<target>/<profile>/deps/<test>-<hash>`). It builds turnd's binary as turnd's own
/// integration tests have it built (`cargo test -p turnd --no-run --test <one of them>`):
/// with the features dev-dependencies add, the very build `cargo test --workspace` made, so
/// there cargo finds it fresh and builds nothing (`cargo build --bin turnd` would build
/// another, and a second copy of the dependencies whose features differ).
pub fn turnd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("a test binary in <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("<target>/<profile>");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let cargo = || {
            let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            c.stdin(Stdio::null()).arg("--quiet");
            // What cargo set for this test binary is not what it sets when it builds (some
            // build scripts watch `CARGO_PKG_NAME` or `CARGO_MANIFEST_DIR`): left in, every
            // build would look changed to the next one.
            for (key, _) in std::env::vars_os() {
                if key.to_str().is_some_and(set_by_cargo_for_tests) {
                    c.env_remove(key);
                }
            }
            c
        };
        let mut build = cargo();
        match turnd_test_target(cargo().arg("metadata"), &manifest) {
            Some(test) => build.args(["test", "--no-run", "--test", &test]),
            None => build.args(["build", "--bin", "turnd"]),
        };
        build
            .args(["-p", "turnd", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir);
        // The dev and test profiles build into `debug`, release and bench into `release`,
        // every other profile into its own name.
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                build.arg("--release");
            }
            Some(profile) => {
                build.args(["--profile", profile]);
            }
            None => panic!("no profile in {}", profile_dir.display()),
        }
        let out = build.output().expect("run cargo to build turnd");
        assert!(
            out.status.success(),
            "building turnd failed ({build:?}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join("turnd");
        assert!(bin.is_file(), "no turnd binary at {}", bin.display());
        bin
    })
}

/// Whether cargo sets the environment variable `key` for the test binaries it runs (see
/// "Environment variables Cargo sets for crates" in the Cargo book).
fn set_by_cargo_for_tests(key: &str) -> bool {
    [
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

/// The name of an integration test of the turnd package, from `cargo metadata`
/// (`metadata` is that command, to be completed); `None` if it names none.
fn turnd_test_target(metadata: &mut Command, manifest: &Path) -> Option<String> {
    let out = metadata
        .args(["--no-deps", "--format-version", "1", "--manifest-path"])
        .arg(manifest)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let turnd = v["packages"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "turnd")?;
    let test = turnd["targets"].as_array()?.iter().find(|t| {
        t["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"))
    })?;
    Some(test["name"].as_str()?.to_owned())
}

/// A `turnd` process; killed (by its own pid) and reaped on drop.
pub struct TestServer {
    child: Option<Child>,
    pub addr: SocketAddr,
}

/// A port that was free a moment ago for both UDP and TCP (turnd listens on both).
pub fn free_udp_port(ip: &str) -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind((ip, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

/// A TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestServer {
    /// Starts turnd listening on `ip` (a free port) with a test user `alice:wonderland`,
    /// relaying on the same IP; `extra` flags are appended.
    pub fn start(ip: &str, extra: &[&str]) -> TestServer {
        for _ in 0..5 {
            let port = free_udp_port(ip);
            let addr = SocketAddr::new(ip.parse().expect("an IP address"), port);
            let mut args: Vec<String> = vec![
                "--listen".into(),
                addr.to_string(),
                "--realm".into(),
                REALM.into(),
                "--workers".into(),
                "2".into(),
                "--relay-ip".into(),
                ip.into(),
            ];
            if !extra
                .iter()
                .any(|a| *a == "--user" || *a == "--auth-secret")
            {
                args.extend(["--user".into(), "alice:wonderland".into()]);
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut child = Command::new(turnd_bin())
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

    /// Polls with Binding requests until the server answers (or the process exits).
    fn wait_ready(&self, child: &mut Child) -> bool {
        let sock = UdpSocket::bind(if self.addr.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        })
        .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
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

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
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
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
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
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "turnd-tools-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    pub fn new(dir: &TempDir) -> TestCert {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        TestCert {
            cert: dir.write("cert.pem", &ck.cert.pem()),
            key: dir.write("key.pem", &ck.signing_key.serialize_pem()),
        }
    }
}
