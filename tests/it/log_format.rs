//! `log.format = "json"` writes one JSON object per line on stdout; "text" (the default)
//! writes plain lines. The level comes from `log.level` when RUST_LOG is not set.

use crate::common;
use crate::lifecycle_util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::free_udp_port;
use lifecycle_util::{GUARD, Scratch};

/// Starts turnd with `config`, returns its first log line that mentions "listening", and
/// ends the process by its pid. Retries on another port when the probed one was taken (it is
/// probed free for UDP, and turnd also listens for TCP on it).
fn listening_line(config: &str) -> String {
    (0..5)
        .find_map(|_| try_listening_line(config))
        .expect("a log line about listening")
}

fn try_listening_line(config: &str) -> Option<String> {
    let scratch = Scratch::new("log-format");
    let path = scratch.write("turnd.toml", config);
    let listen = format!("127.0.0.1:{}", free_udp_port("127.0.0.1"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnd"))
        .args(["--config", path.to_str().unwrap(), "--listen", &listen])
        .args(["--relay-ip", "127.0.0.1", "--user", "alice:wonderland"])
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn turnd");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut found = None;
    while let Ok(line) = rx.recv_timeout(GUARD) {
        if line.contains("listening") {
            found = Some(line);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    found
}

#[test]
fn json_lines() {
    let line = listening_line("[log]\nformat = \"json\"\nlevel = \"info\"\n");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["fields"]["message"], "listening", "{line}");
    let transport = v["fields"]["transport"].as_str().unwrap_or_default();
    assert!(["udp", "tcp"].contains(&transport), "{line}");
}

#[test]
fn text_lines_by_default() {
    let line = listening_line("[log]\nlevel = \"info\"\n");
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_err(),
        "{line}"
    );
    assert!(
        line.contains("INFO") && line.contains("listening"),
        "{line}"
    );
}

#[test]
fn unknown_format_is_a_config_error() {
    let scratch = Scratch::new("log-format-bad");
    let path = scratch.write("turnd.toml", "[log]\nformat = \"xml\"\n");
    let (code, _, stderr) = common::run_turnd(
        &["check-config", path.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_ne!(code, Some(0));
    assert!(stderr.contains("log.format"), "{stderr}");
}
