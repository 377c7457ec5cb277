//! Shared by the tests that relay WebRTC stacks we did not write through turnd
//! (`tests/it/gstreamer_webrtcbin.rs`, `tests/it/aiortc.rs`): run a Python driver from this
//! directory, read its JSON report while it keeps its peers connected, check the report and
//! turnd's `/sessions`, then let it go. `.ci/setup-clients.sh` installs what the drivers need.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::admin_http::get_json;

/// Hang guard on a driver's report (its own guard on the exchange is 60 s) and, separately,
/// on its exit once told to finish.
pub const REPORT_LIMIT: Duration = Duration::from_secs(120);
const EXIT_LIMIT: Duration = Duration::from_secs(20);

pub const SETUP_HINT: &str = "run `bash .ci/setup-clients.sh` (installs Debian's GStreamer \
     webrtcbin, libnice and python3-gi, and aiortc from tests/clients/requirements.txt into \
     tests/clients/.venv)";

pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs `program --check`-style probes: panics with the setup hint unless `cmd` exits 0.
pub fn require(what: &str, cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "{what} is not usable ({}): {}{}\n{SETUP_HINT}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("{what} does not run ({e}); {SETUP_HINT}"),
    }
}

/// A running driver: killed by its pid and reaped on drop if it is still there.
pub struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Driver {
    /// Starts `cmd` with its standard streams piped.
    pub fn spawn(mut cmd: Command) -> Driver {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}; {SETUP_HINT}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Driver {
            child,
            stdin,
            lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// The driver's JSON report: the first stdout line that starts with `{`. Panics (after
    /// killing the driver) if none comes within [`REPORT_LIMIT`] or the driver exits first.
    pub fn report(&mut self) -> Value {
        let deadline = Instant::now() + REPORT_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with('{') => {
                    return serde_json::from_str(&line).unwrap_or_else(|e| {
                        let out = self.output();
                        panic!("driver output is not JSON ({e}): {line}\n{out}")
                    });
                }
                Ok(line) => self.stdout.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!(
                        "driver printed no report within {REPORT_LIMIT:?}, killed\n{}",
                        self.output()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!(
                        "driver exited ({status:?}) without a report\n{}",
                        self.output()
                    );
                }
            }
        }
    }

    /// Closes the driver's stdin (its signal to close its peers) and waits for it to exit 0.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + EXIT_LIMIT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    self.kill();
                    panic!(
                        "driver still running {EXIT_LIMIT:?} after its stdin closed, killed\n{}",
                        self.output()
                    );
                }
            }
        };
        assert!(
            status.success(),
            "driver exited with {status}\n{}",
            self.output()
        );
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the driver printed so far (stderr once it has exited).
    fn output(&mut self) -> String {
        let stderr = match self.child.try_wait() {
            Ok(Some(_)) => self
                .stderr
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default(),
            _ => "(still running)".to_string(),
        };
        format!("stdout: {}\nstderr: {stderr}", self.stdout.join("\n"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Asserts on a driver's report that every message arrived both ways and that each side's
/// selected (nominated) pair is relay/relay on 127.0.0.1, the remote end being the other
/// side's local end. Returns the two local relayed addresses.
pub fn assert_relayed(report: &Value) -> [SocketAddr; 2] {
    let pretty = serde_json::to_string_pretty(report).unwrap_or_default();
    assert!(
        report["error"].is_null(),
        "driver reported an error:\n{pretty}"
    );
    assert_eq!(
        report["pc1ReceivedAll"], true,
        "pc1 missed messages:\n{pretty}"
    );
    assert_eq!(
        report["pc2ReceivedAll"], true,
        "pc2 missed messages:\n{pretty}"
    );
    let selected = report["selected"].as_array().expect("selected pairs");
    assert_eq!(selected.len(), 2, "{pretty}");
    let addr = |c: &Value| -> SocketAddr {
        let ip = c["address"].as_str().expect("address");
        let port = c["port"].as_u64().expect("port");
        format!("{ip}:{port}").parse().expect("socket address")
    };
    let mut locals = Vec::new();
    for (i, pair) in selected.iter().enumerate() {
        let n = i + 1;
        assert!(pair.is_object(), "pc{n}: no selected pair:\n{pretty}");
        for end in ["local", "remote"] {
            let c = &pair[end];
            assert_eq!(c["candidateType"], "relay", "pc{n} {end}:\n{pretty}");
            // turnd relays over UDP whatever the client's transport to it (RFC 8656 §3.1).
            assert_eq!(c["transport"], "udp", "pc{n} {end}:\n{pretty}");
            // turnd relays on 127.0.0.1 (TestServer passes --relay-ip 127.0.0.1).
            assert_eq!(c["address"], "127.0.0.1", "pc{n} {end}:\n{pretty}");
        }
        locals.push(addr(&pair["local"]));
    }
    for (i, pair) in selected.iter().enumerate() {
        assert_eq!(
            addr(&pair["remote"]),
            locals[1 - i],
            "pc{}'s remote end is pc{}'s relayed address:\n{pretty}",
            i + 1,
            2 - i
        );
        // And it was signalled as pc{other}'s relay candidate.
        let port = locals[1 - i].port().to_string();
        let cands = report["candidates"][1 - i].as_array().expect("candidates");
        assert!(
            cands.iter().any(|c| {
                let f: Vec<&str> = c.as_str().unwrap_or("").split_whitespace().collect();
                f.get(5) == Some(&port.as_str()) && f.get(7) == Some(&"relay")
            }),
            "pc{}'s relayed port {port} is not among its candidates:\n{pretty}",
            2 - i
        );
    }
    [locals[0], locals[1]]
}

/// Asserts that `/sessions` lists an allocation of user alice over `transport` on turnd's
/// `listener` for each relayed address, and that each carried data both ways.
pub fn assert_sessions(
    admin: SocketAddr,
    listener: SocketAddr,
    transport: &str,
    relayed: [SocketAddr; 2],
) {
    let list = get_json(admin, "/sessions");
    let pretty = serde_json::to_string_pretty(&list).unwrap_or_default();
    let sessions = list.as_array().expect("a list of sessions");
    for addr in relayed {
        let want = addr.to_string();
        let s = sessions
            .iter()
            .find(|s| {
                s["relayed"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|a| a == want.as_str()))
            })
            .unwrap_or_else(|| panic!("no session relays on {want}:\n{pretty}"));
        assert_eq!(s["transport"], transport, "{want}:\n{pretty}");
        assert_eq!(s["server"], listener.to_string(), "{want}:\n{pretty}");
        assert_eq!(s["user"], "alice", "{want}:\n{pretty}");
        for k in [
            "packets_to_peer",
            "bytes_to_peer",
            "packets_from_peer",
            "bytes_from_peer",
        ] {
            assert!(
                s[k].as_u64().is_some_and(|n| n > 0),
                "{want}: {k} is 0:\n{pretty}"
            );
        }
        // The largest message alone is 16 kB each way, on top of ICE, DTLS and SCTP.
        for k in ["bytes_to_peer", "bytes_from_peer"] {
            assert!(
                s[k].as_u64().is_some_and(|n| n > 16_000),
                "{want}: {k} is below one message:\n{pretty}"
            );
        }
    }
}

/// Polls until something accepts TCP connections on `addr` (hang guard: 20 s).
pub fn wait_tcp(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing accepts TCP connections on {addr}");
}
