//! `turnd-load --rtp` sends RTP-shaped payloads: turnd's call-quality telemetry sees RTP
//! streams (one per allocation each way, none left untracked), and the tool
//! still measures its round trips. `--rtp` over TCP, or with payloads too small for both
//! headers, is refused.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::common::load::{num, small_load};
use crate::common::{TestServer, run_binary as run};

const TOKEN: &str = "tools-test-token-0123456789";

/// `GET /metrics` from turnd's admin listener.
fn metrics(admin: &str) -> String {
    let mut s = TcpStream::connect(admin).expect("admin listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn rtp_payloads_are_seen_as_rtp_streams_by_turnd() {
    let admin = format!(
        "127.0.0.1:{}",
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let server = TestServer::start(
        "127.0.0.1",
        &[
            "--allow-peer",
            "127.0.0.0/8",
            "--admin-listen",
            &admin,
            "--admin-token",
            TOKEN,
        ],
    );
    let r = small_load(
        &server.addr.to_string(),
        "alice:wonderland",
        2,
        200,
        server.pid(),
        &["--rtp", "--size", "100"],
    );
    assert!(num(&r, "received") > 0.0);
    let m = metrics(&admin);
    let rtp_up = sample(
        &m,
        "turnd_quality_payloads_total{direction=\"to_peer\",class=\"rtp\"}",
    );
    assert_eq!(rtp_up, num(&r, "sent"), "every packet sent is RTP to turnd");
    let other = sample(
        &m,
        "turnd_quality_payloads_total{direction=\"to_peer\",class=\"other\"}",
    );
    assert_eq!(other, 0.0);
    assert_eq!(sample(&m, "turnd_quality_streams_untracked_total"), 0.0);
}

#[test]
fn rtp_needs_udp_and_room_for_both_headers() {
    for extra in [
        &["--rtp", "--size", "27"][..],
        &["--rtp", "--transport", "tcp"][..],
    ] {
        let mut args = vec![
            "--server",
            "127.0.0.1:3478",
            "--user",
            "a:b",
            "--duration",
            "1",
        ];
        args.extend_from_slice(extra);
        let (code, _out, err) = run(
            env!("CARGO_BIN_EXE_turnd-load"),
            &args,
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(1), "{extra:?}");
        assert!(err.contains("--rtp needs"), "{err}");
    }
}
