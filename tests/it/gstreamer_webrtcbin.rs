//! GStreamer's webrtcbin relays through turnd. Its ICE agent is libnice, the one Janus and
//! Kurento use: two webrtcbin elements in one pipeline (`tests/clients/webrtcbin_relay.py`,
//! run by Debian's `/usr/bin/python3` with python3-gi) connect with
//! `ice-transport-policy=relay` and turnd as their only TURN server, send data-channel
//! messages both ways and report the pair libnice selected. Once over UDP and once over TCP to
//! turnd (RFC 8656 §3.1). There is no `turns:` case: libnice (0.1.21) wraps a TURN-over-TLS
//! connection only in the pseudo-SSL of its Google and Office Communicator modes, and in the
//! RFC 5245 mode webrtcbin uses it sends plain STUN over TCP to the `turns:` port (turnd logs
//! "TLS handshake failed ... InvalidContentType" and no candidate is gathered). Meanwhile the
//! test checks in `/sessions` that both relayed addresses are turnd's allocations over that
//! transport and carried data both ways.
//!
//! Both relayed addresses are on 127.0.0.1, so the server runs with `--allow-peer 127.0.0.0/8`.
//!
//! Needs Debian's gstreamer1.0-{nice,plugins-base,plugins-good,plugins-bad}, python3-gi and
//! the gir1.2 typelibs: `bash .ci/setup-clients.sh` installs them, and `.ci/run` calls it.
//! When something is missing the tests fail and say so; they never pass without libnice.

use crate::admin_http;
use crate::clients;

use std::process::Command;
use std::sync::Mutex;

use admin_http::start_with_admin;
use clients::{Driver, assert_relayed, assert_sessions, clients_dir, require, wait_tcp};

/// One pipeline at a time on a 2-core machine.
static ONE_PIPELINE: Mutex<()> = Mutex::new(());

const PYTHON: &str = "/usr/bin/python3";

/// Panics with the setup hint unless the driver can load webrtcbin and libnice.
fn prerequisites() {
    require(
        "GStreamer webrtcbin with libnice under /usr/bin/python3",
        Command::new(PYTHON)
            .arg(clients_dir().join("webrtcbin_relay.py"))
            .arg("--check"),
    );
}

/// Runs the driver against turnd at `url` and checks its report and `/sessions`.
fn relay_through(transport: &str, url_suffix: &str) {
    prerequisites();
    let _one = ONE_PIPELINE.lock().unwrap_or_else(|e| e.into_inner());
    let (server, admin) = start_with_admin(&["--allow-peer", "127.0.0.0/8"]);
    if transport == "tcp" {
        // `--listen` serves TCP on the same address and port as UDP.
        wait_tcp(server.addr);
    }
    let url = format!(
        "turn://alice:wonderland@127.0.0.1:{}{url_suffix}",
        server.addr.port()
    );
    let mut cmd = Command::new(PYTHON);
    cmd.arg(clients_dir().join("webrtcbin_relay.py")).arg(&url);
    let mut driver = Driver::spawn(cmd);
    let report = driver.report();
    let relayed = assert_relayed(&report);
    assert_sessions(admin, server.addr, transport, relayed);
    driver.finish();
}

#[test]
fn webrtcbin_relays_data_channel_over_turn_udp() {
    relay_through("udp", "");
}

#[test]
fn webrtcbin_relays_data_channel_over_turn_tcp() {
    relay_through("tcp", "?transport=tcp");
}
