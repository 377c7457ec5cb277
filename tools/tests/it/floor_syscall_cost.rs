//! `turnd-floor --syscall-cost` measures the kernel's CPU cost per loopback datagram in
//! its cases (one socket; 100 sockets; 100 sockets with GSO bursts, with and without GRO)
//! and prints one line per case with numbers; a tiny count keeps it short. No assertion
//! on the figures themselves: only that every datagram sent was read back, that the GSO
//! cases did send GSO messages, and that the costs are numbers.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::run_binary as run;

#[test]
fn syscall_cost_prints_one_line_per_case_with_numbers() {
    let (code, out, err) = run(
        env!("CARGO_BIN_EXE_turnd-floor"),
        &["--syscall-cost", "--syscall-cost-count", "2000"],
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    let cases: Vec<HashMap<&str, &str>> = out
        .lines()
        .filter_map(|l| l.strip_prefix("syscall-cost "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .collect()
        })
        .collect();
    let names: Vec<&str> = cases.iter().map(|c| c["case"]).collect();
    assert_eq!(names, ["a", "b", "c4", "c8", "c4gro", "c8gro"], "{out}");
    for c in &cases {
        let n = |k: &str| -> f64 {
            c.get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} missing or not a number in {c:?}"))
        };
        assert!(n("sent") >= 2000.0, "{c:?}");
        assert_eq!(
            n("received"),
            n("sent"),
            "datagrams lost on loopback: {c:?}"
        );
        for k in ["cpu_us_per_datagram", "wall_us_per_datagram"] {
            assert!(n(k).is_finite() && n(k) >= 0.0, "{c:?}");
        }
        assert!(n("wall_us_per_datagram") > 0.0, "{c:?}");
        let segments = n("segments");
        if segments > 1.0 {
            // One UDP_SEGMENT message per burst of `segments` datagrams.
            assert_eq!(n("gso_sends") * segments, n("sent"), "{c:?}");
        } else {
            assert_eq!(n("gso_sends"), 0.0, "{c:?}");
        }
    }
    assert_eq!(cases[0]["sockets"], "1");
    assert_eq!(cases[1]["sockets"], "100");
}
