//! `turnd-floor --batch --gso --io-uring` (the `floor_gso` server of bench/compare.sh) relays
//! turnd-load's bursts, plain or sent as UDP GSO messages, with its own sends merged into
//! GSO messages and its sockets reading with GRO. Tiny bounded loads, no timing
//! assertions: the floor says it runs with GSO/GRO, and packets come back (loss under 50%
//! is a hang guard only). The floor is ended by its pid when the test ends.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::load::{Floor, num, small_load, start_floor};
use crate::common::run_binary as run;

/// A small load with `extra` flags through `floor`, checked for delivery.
fn load(floor: &Floor, extra: &[&str]) -> HashMap<String, String> {
    let r = small_load(&floor.addr, "bench:bench", 4, 400, floor.child.id(), extra);
    assert_eq!(num(&r, "burst"), 4.0);
    r
}

#[test]
fn floor_gso_relays_bursts_of_four_plain_and_sent_with_gso() {
    let floor = start_floor(&["--batch", "--gso"]);
    assert!(
        floor.banner.contains("batched with UDP GSO/GRO"),
        "the floor runs without GSO/GRO: {}",
        floor.banner
    );
    let r = load(&floor, &["--burst", "4"]);
    assert_eq!(r["gso"], "0");
    assert!(num(&r, "peer_received") > 0.0, "the echo peers got nothing");
    let r = load(&floor, &["--burst", "4", "--gso"]);
    assert_eq!(r["gso"], "1", "{r:?}");
    assert!(num(&r, "gso_sends") > 0.0, "{r:?}");
    assert!(num(&r, "peer_received") > 0.0, "the echo peers got nothing");
}

#[test]
fn floor_gso_relays_send_indications_between_pairs() {
    let floor = start_floor(&["--batch", "--gso"]);
    let r = load(
        &floor,
        &[
            "--burst",
            "4",
            "--gso",
            "--mode",
            "send",
            "--topology",
            "pair",
        ],
    );
    assert_eq!(num(&r, "relayed"), 2.0 * num(&r, "received"), "{r:?}");
}

#[test]
fn floor_gso_with_io_uring_relays_bursts_of_one_and_says_how_it_sends() {
    let floor = start_floor(&["--batch", "--gso", "--io-uring"]);
    // Where io_uring is refused the floor says so and runs as plain --gso.
    let allowed = io_uring::IoUring::new(8).is_ok_and(|r| {
        let mut p = io_uring::Probe::new();
        r.submitter().register_probe(&mut p).is_ok()
            && p.is_supported(io_uring::opcode::SendMsg::CODE)
            && r.params().is_feature_skip_cqe_on_success()
    });
    let said = if allowed {
        "batched with UDP GSO/GRO and io_uring sends"
    } else {
        "io_uring unavailable"
    };
    assert!(floor.banner.contains(said), "{}", floor.banner);
    let r = small_load(&floor.addr, "bench:bench", 4, 400, floor.child.id(), &[]);
    assert!(num(&r, "received") > 0.0, "nothing came back: {r:?}");
    assert!(num(&r, "peer_received") > 0.0, "the echo peers got nothing");
}

#[test]
fn floor_gso_needs_batch() {
    let (code, _out, err) = run(
        env!("CARGO_BIN_EXE_turnd-floor"),
        &["--listen", "127.0.0.1:0", "--gso", "--max-seconds", "1"],
        Duration::from_secs(30),
    );
    assert_ne!(code, Some(0), "--gso without --batch accepted");
    assert!(err.contains("--batch"), "{err}");
}
