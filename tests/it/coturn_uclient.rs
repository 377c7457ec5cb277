//! coturn's own test client against turnd: `turnutils_uclient` from Debian's coturn package
//! (4.6, what operators replacing coturn run today) in each of its modes, through the real
//! server on loopback, with `turnutils_peer` as the UDP echo peer where a mode needs one:
//!
//! - UDP with channels, its default: RTP/RTCP allocation pairs (EVEN-PORT with the R bit,
//!   then RESERVATION-TOKEN) and ChannelBinds to numbers it picks at random in RFC 5766's
//!   0x4000-0x7FFF;
//! - `-s`: Send and Data indications instead of channels;
//! - `-t`: the same over TCP;
//! - `-T`: RFC 6062 TCP allocations (Connect, ConnectionAttempt, ConnectionBind), client to
//!   client;
//! - `-W`: REST API credentials (`--auth-secret`);
//! - `-y`: client to client, two allocations of the server relaying to each other, over UDP
//!   and over TCP.
//!
//! Each run must end on its own with exit status 0 and uclient's final statistics showing
//! every message it sent (messages per session times sessions) received back and no loss.
//! Without the coturn tools the tests fail with a hint to run `.ci/setup-coturn.sh`.

use crate::common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, free_udp_port, run_binary};

/// Messages each uclient session sends (`-n`); small, so that a run takes seconds.
pub(crate) const MESSAGES: u32 = 5;
const SECRET: &str = "uclient-rest-secret";
/// Hang guard for one uclient run; a run takes under ten seconds (most of it uclient's
/// own random start delay of up to six seconds).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A coturn tool on PATH; fails with a hint when it is missing.
pub(crate) fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: these tests need Debian's coturn package \
                 (run `bash .ci/setup-coturn.sh`, or `apt-get install coturn`)"
            )
        })
}

/// `turnutils_peer` echoing UDP on a loopback port; killed by its pid and reaped on drop.
pub(crate) struct EchoPeer {
    child: Child,
    pub(crate) port: u16,
}

impl EchoPeer {
    pub(crate) fn start() -> EchoPeer {
        let port = free_udp_port("127.0.0.1");
        let child = Command::new(tool("turnutils_peer"))
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnutils_peer");
        let mut peer = EchoPeer { child, port };
        peer.wait_echo();
        peer
    }

    /// Waits until the peer echoes a datagram, so uclient's first one is not lost to a
    /// socket not bound yet.
    fn wait_echo(&mut self) {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("turnutils_peer exited: {st}");
            }
            let _ = probe.send_to(b"ready?", ("127.0.0.1", self.port));
            if let Ok((n, _)) = probe.recv_from(&mut buf)
                && &buf[..n] == b"ready?"
            {
                return;
            }
        }
        panic!("turnutils_peer did not echo on port {}", self.port);
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// uclient's closing statistics.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Totals {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub send_dropped: u64,
}

/// The number after `key` in `line`.
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads the closing lines of a uclient run:
/// `start_mclient: tot_send_msgs=N, tot_recv_msgs=M` (the one without `msz=`, printed
/// once all sessions have ended) and `Total lost packets L (..%), total send dropped D`.
pub(crate) fn parse_totals(output: &str) -> Option<Totals> {
    let counts = output
        .lines()
        .rev()
        .find(|l| l.contains("start_mclient: tot_send_msgs=") && !l.contains("msz="))?;
    let loss = output
        .lines()
        .rev()
        .find(|l| l.contains("Total lost packets"))?;
    Some(Totals {
        sent: number_after(counts, "tot_send_msgs=")?,
        received: number_after(counts, "tot_recv_msgs=")?,
        lost: number_after(loss, "Total lost packets")?,
        send_dropped: number_after(loss, "total send dropped")?,
    })
}

/// Runs uclient with `args` against `server` and checks that it ends by itself, that its
/// `sessions` sessions sent [`MESSAGES`] each, and that every one came back.
pub(crate) fn run_uclient(server: &TestServer, args: &[&str], sessions: u64) {
    let n = MESSAGES.to_string();
    let port = server.addr.port().to_string();
    let mut argv: Vec<&str> = args.to_vec();
    argv.extend(["-n", &n, "-p", &port, "127.0.0.1"]);
    let bin = tool("turnutils_uclient");
    let (code, stdout, stderr) = run_binary(bin.to_str().unwrap(), &argv, RUN_LIMIT);
    let output = format!("{stdout}{stderr}");
    let shown = || format!("turnutils_uclient {}\n{output}", argv.join(" "));
    assert_eq!(
        code,
        Some(0),
        "uclient failed or was killed after {RUN_LIMIT:?}: {}",
        shown()
    );
    let totals = parse_totals(&output)
        .unwrap_or_else(|| panic!("no closing statistics from uclient: {}", shown()));
    let expected = u64::from(MESSAGES) * sessions;
    assert_eq!(
        totals,
        Totals {
            sent: expected,
            received: expected,
            lost: 0,
            send_dropped: 0,
        },
        "{}",
        shown()
    );
}

fn server(auth: &[&str]) -> TestServer {
    let mut args = vec!["--allow-peer", "127.0.0.0/8"];
    args.extend_from_slice(auth);
    TestServer::start("127.0.0.1", &args)
}

pub(crate) const ALICE: [&str; 4] = ["-u", "alice", "-w", "wonderland"];

/// uclient's default: per client an RTP allocation with EVEN-PORT (R bit) and an RTCP
/// allocation with its RESERVATION-TOKEN, each with a channel to the peer. Four clients:
/// eight channel numbers drawn from 0x4000-0x7FFF.
#[test]
fn udp_channels_with_rtp_rtcp_pairs() {
    tool("turnutils_uclient");
    let s = server(&[]);
    let peer = EchoPeer::start();
    let p = peer.port.to_string();
    let mut args = ALICE.to_vec();
    args.extend(["-e", "127.0.0.1", "-r", &p, "-m", "4"]);
    run_uclient(&s, &args, 4);
}

#[test]
fn udp_send_indications() {
    tool("turnutils_uclient");
    let s = server(&[]);
    let peer = EchoPeer::start();
    let p = peer.port.to_string();
    let mut args = ALICE.to_vec();
    args.extend(["-s", "-e", "127.0.0.1", "-r", &p, "-m", "2"]);
    run_uclient(&s, &args, 2);
}

#[test]
fn tcp_channels() {
    tool("turnutils_uclient");
    let s = server(&[]);
    let peer = EchoPeer::start();
    let p = peer.port.to_string();
    let mut args = ALICE.to_vec();
    args.extend(["-t", "-e", "127.0.0.1", "-r", &p, "-m", "2"]);
    run_uclient(&s, &args, 2);
}

/// `-T` implies `-t -y -c`: pairs of clients, each with a TCP allocation, one connecting to
/// the other's relayed address (Connect, ConnectionAttempt, two ConnectionBinds).
#[test]
fn rfc6062_tcp_relay() {
    tool("turnutils_uclient");
    let s = server(&[]);
    let mut args = ALICE.to_vec();
    args.extend(["-T", "-m", "2"]);
    run_uclient(&s, &args, 2);
}

/// `-W`: uclient mints `<expiry>:<user>` with HMAC-SHA1 of the secret, as app backends do.
#[test]
fn rest_api_secret() {
    tool("turnutils_uclient");
    let s = server(&["--auth-secret", SECRET]);
    let peer = EchoPeer::start();
    let p = peer.port.to_string();
    run_uclient(
        &s,
        &[
            "-W",
            SECRET,
            "-u",
            "uclient",
            "-e",
            "127.0.0.1",
            "-r",
            &p,
            "-m",
            "2",
        ],
        2,
    );
}

/// `-y`: two clients relay to each other's relayed address; RTP/RTCP pairs make four
/// sessions for `-m 2`.
#[test]
fn client_to_client_udp() {
    tool("turnutils_uclient");
    let s = server(&[]);
    let mut args = ALICE.to_vec();
    args.extend(["-y", "-m", "2"]);
    run_uclient(&s, &args, 4);
}

#[test]
fn client_to_client_tcp() {
    tool("turnutils_uclient");
    let s = server(&[]);
    let mut args = ALICE.to_vec();
    args.extend(["-y", "-t", "-m", "2"]);
    run_uclient(&s, &args, 4);
}

/// The statistics reader on uclient's own words: a clean run, a lossy one, and output that
/// ended before the statistics (a failed ChannelBind) giving nothing to pass on.
#[test]
fn uclient_statistics_are_read_exactly() {
    let clean = "\
5: : start_mclient: msz=2, tot_send_msgs=10, tot_recv_msgs=10, tot_send_bytes ~ 1000
6: : start_mclient: tot_send_msgs=20, tot_recv_msgs=20
6: : start_mclient: tot_send_bytes ~ 2000, tot_recv_bytes ~ 2000
6: : Total transmit time is 6
6: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
";
    assert_eq!(
        parse_totals(clean),
        Some(Totals {
            sent: 20,
            received: 20,
            lost: 0,
            send_dropped: 0
        })
    );
    let lossy = "\
9: : start_mclient: tot_send_msgs=20, tot_recv_msgs=17
9: : Total lost packets 3 (15.000000%), total send dropped 1 (4.761905%)
";
    assert_eq!(
        parse_totals(lossy),
        Some(Totals {
            sent: 20,
            received: 17,
            lost: 3,
            send_dropped: 1
        })
    );
    let failed = "0: : channel bind: error 400 (Bad Request)\n";
    assert_eq!(parse_totals(failed), None);
    let mid_run = "3: : start_mclient: msz=2, tot_send_msgs=10, tot_recv_msgs=10, x\n";
    assert_eq!(parse_totals(mid_run), None);
}
