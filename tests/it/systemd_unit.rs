//! `systemd/turnd.service` passes `systemd-analyze verify` with no warning, and carries the
//! hardening and service-manager settings the deployment guide promises. The unit is
//! verified from a temp dir with its `/usr/local/bin/turnd` rewritten to the built binary,
//! since verify checks that the commands exist. CI installs systemd-analyze with
//! `.ci/setup-systemd.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = include_str!("../../systemd/turnd.service");

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("turnd-systemd-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `systemd-analyze verify` on `text` saved as turnd.service in `dir`; returns
/// (success, everything it printed).
fn verify(dir: &Path, text: &str) -> (bool, String) {
    let unit = dir.join("turnd.service");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze is installed (run .ci/setup-systemd.sh)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

fn with_built_binary(unit: &str) -> String {
    unit.replace("/usr/local/bin/turnd", env!("CARGO_BIN_EXE_turnd"))
}

#[test]
fn unit_verifies_cleanly() {
    let dir = scratch();
    let (ok, printed) = verify(&dir, &with_built_binary(UNIT));
    assert!(ok && printed.trim().is_empty(), "verify: {printed}");

    // The check can fail: a misspelt directive is reported.
    let broken = with_built_binary(UNIT).replace("NoNewPrivileges=", "NoNewPrivilege=");
    let (ok, printed) = verify(&dir, &broken);
    assert!(!ok || printed.contains("NoNewPrivilege"), "{printed}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The value of the last `key=` line of the unit (later lines override earlier ones).
fn value<'a>(key: &str) -> Vec<&'a str> {
    UNIT.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn unit_is_hardened_and_notifies() {
    let one = |k: &str| -> String {
        let v = value(k);
        assert_eq!(v.len(), 1, "{k} set once: {v:?}");
        v[0].to_owned()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert!(one("ExecStart").starts_with("/usr/local/bin/turnd --config "));
    // Low ports, and the kernel fast path's program (server.kernel-offload): nothing more.
    let caps = "CAP_NET_BIND_SERVICE CAP_BPF CAP_NET_ADMIN";
    assert_eq!(one("CapabilityBoundingSet"), caps);
    assert_eq!(one("AmbientCapabilities"), caps);
    assert!(value("SystemCallFilter").contains(&"bpf"));
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("PrivateTmp"), "yes");
    assert!(one("User") != "root" && !one("User").is_empty());
    let nofile: u64 = one("LimitNOFILE").parse().unwrap();
    assert!(nofile >= 65536, "LimitNOFILE {nofile}");
    // The stop timeout outlasts the default drain timeout, so systemd does not cut a drain.
    let default_drain = turnd::config::Config::default().server.drain_timeout;
    let stop: u64 = one("TimeoutStopSec").parse().unwrap();
    assert!(
        stop > default_drain,
        "TimeoutStopSec {stop} <= {default_drain}"
    );
}
