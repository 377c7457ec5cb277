//! Helpers for the tools' tests: find (and build) the `turnd` binary of this workspace
//! ([`turnd_bin`]) and start it on loopback; what the load tool's tests read ([`load`]). Starting
//! a server, running a tool to completion, free ports and scratch directories are turnd's
//! own test helpers (`turnd::testing::process`, shared with turnd's integration tests).

pub mod load;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub use turnd::testing::process::{TempDir, free_tcp_port, run_binary};

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

/// A `turnd` process of this workspace's binary ([`turnd_bin`]); see
/// [`turnd::testing::process::TestServer`]. Killed (by its own pid) and reaped on drop.
pub struct TestServer(turnd::testing::process::TestServer);

impl TestServer {
    /// Starts turnd listening on `ip` (a free port) with a test user `alice:wonderland`,
    /// relaying on the same IP; `extra` flags are appended.
    pub fn start(ip: &str, extra: &[&str]) -> TestServer {
        TestServer(turnd::testing::process::TestServer::start_binary(
            turnd_bin(),
            ip,
            extra,
        ))
    }
}

impl Deref for TestServer {
    type Target = turnd::testing::process::TestServer;
    fn deref(&self) -> &Self::Target {
        &self.0
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
