//! A bad configuration stops the binary at start, with a non-zero exit and the offending key
//! named on stderr: an unknown key in a config file, min-port above max-port on the command
//! line, a value of the wrong type in a config file. `turnd credentials` exits 0 with JSON.

use crate::common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{free_udp_port, run_turnd};

const LIMIT: Duration = Duration::from_secs(20);

/// A config file under the temp dir with a name unique to this process and call; removed
/// on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(contents: &str) -> TempConfig {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "turnd-startup-errors-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap();
        TempConfig(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Serve flags that would otherwise start a working server on a free loopback port, so that
/// only the error under test can stop it.
fn listen_args() -> Vec<String> {
    vec![
        "--listen".into(),
        format!("127.0.0.1:{}", free_udp_port("127.0.0.1")),
        "--relay-ip".into(),
        "127.0.0.1".into(),
        "--user".into(),
        "alice:wonderland".into(),
    ]
}

fn expect_config_error(args: &[&str], key: &str) {
    let (code, stdout, stderr) = run_turnd(args, LIMIT);
    let code = code.unwrap_or_else(|| panic!("turnd {args:?} did not exit (stderr: {stderr})"));
    assert_ne!(code, 0, "turnd {args:?} must fail; stdout: {stdout}");
    assert!(
        stderr.contains("config error"),
        "turnd {args:?}: stderr does not say config error: {stderr}"
    );
    assert!(
        stderr.contains(key),
        "turnd {args:?}: stderr does not name {key}: {stderr}"
    );
}

#[test]
fn unknown_key_in_config_file() {
    let cfg = TempConfig::new("[server]\nbogus = 1\n");
    let mut args = vec!["--config".to_owned(), cfg.path().to_owned()];
    args.extend(listen_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect_config_error(&args, "bogus");
}

#[test]
fn min_port_above_max_port() {
    let mut args = listen_args();
    args.extend(["--min-port", "60000", "--max-port", "50000"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect_config_error(&args, "min-port");
}

#[test]
fn wrong_type_in_config_file() {
    let cfg = TempConfig::new("[relay]\nmin-port = \"x\"\n");
    let mut args = vec!["--config".to_owned(), cfg.path().to_owned()];
    args.extend(listen_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect_config_error(&args, "min-port");
}

#[test]
fn credentials_subcommand_prints_json() {
    let (code, stdout, stderr) = run_turnd(
        &[
            "credentials",
            "--secret",
            "s3cret",
            "--user",
            "dave",
            "--ttl",
            "60",
        ],
        LIMIT,
    );
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("valid JSON");
    let urls = v["urls"].as_array().expect("urls is an array");
    assert!(
        !urls.is_empty() && urls.iter().all(|u| u.is_string()),
        "{stdout}"
    );
    let username = v["username"].as_str().expect("username");
    assert!(username.ends_with(":dave"), "{username}");
    assert!(
        username.split_once(':').unwrap().0.parse::<u64>().is_ok(),
        "{username}"
    );
    assert!(!v["credential"].as_str().expect("credential").is_empty());
}
