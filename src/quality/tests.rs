//! The observer fed with synthetic relayed traffic: ICE checks both ways, RTP and RTCP.

use super::*;
use std::time::Duration;

fn binding(ty: u16, id: u8) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&ty.to_be_bytes());
    m[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m[8..20].fill(id);
    m
}

fn rtp(ssrc: u32, seq: u16, ts: u32) -> [u8; 60] {
    let mut p = [0u8; 60];
    p[0] = 0x80;
    p[1] = 111;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn checks_time_each_leg_and_the_state_follows() {
    let t0 = Instant::now();
    let mut q = Quality::new(t0);
    let mut st = QualityStats::default();
    assert_eq!(q.state(t0), SessionState::Idle);
    // The client checks the peer: 30 ms on the peer leg.
    q.observe(t0, Direction::ToPeer, &binding(0x0001, 1), &mut st);
    assert_eq!(q.state(t0), SessionState::Connecting);
    q.observe(
        t0 + ms(30),
        Direction::ToClient,
        &binding(0x0101, 1),
        &mut st,
    );
    // The peer checks the client: 12 ms on the client leg.
    q.observe(
        t0 + ms(40),
        Direction::ToClient,
        &binding(0x0001, 2),
        &mut st,
    );
    q.observe(t0 + ms(52), Direction::ToPeer, &binding(0x0101, 2), &mut st);
    assert_eq!(q.state(t0 + ms(60)), SessionState::Connected);
    let r = q.report(t0 + ms(60));
    assert_eq!(r.legs[Leg::Peer as usize].recent_us, Some(30_000));
    assert_eq!(r.legs[Leg::Client as usize].recent_us, Some(12_000));
    assert_eq!(r.checks_unanswered, 0);
    assert_eq!(st.answered, [1, 1]);
    assert_eq!(st.rtt[Leg::Peer as usize].sum, 30_000);

    // Media from the client only: the peer is silent.
    for i in 0..10u16 {
        q.observe(
            t0 + ms(100 + 20 * u64::from(i)),
            Direction::ToPeer,
            &rtp(5, i, u32::from(i) * 960),
            &mut st,
        );
    }
    assert_eq!(q.state(t0 + ms(400)), SessionState::PeerSilent);
    q.observe(t0 + ms(400), Direction::ToClient, &rtp(6, 0, 0), &mut st);
    assert_eq!(q.state(t0 + ms(400)), SessionState::MediaFlowing);
    assert_eq!(q.state(t0 + ms(5000)), SessionState::MediaStopped);
    assert_eq!(st.payloads[0][Class::Rtp as usize], 10);
    assert_eq!(st.payloads[0][Class::Stun as usize], 2);
}

#[test]
fn unanswered_checks_are_counted_once() {
    let t0 = Instant::now();
    let mut q = Quality::new(t0);
    let mut st = QualityStats::default();
    q.observe(t0, Direction::ToClient, &binding(0x0001, 7), &mut st);
    assert_eq!(q.report(t0 + ms(4000)).checks_unanswered, 0);
    assert_eq!(q.state(t0 + ms(6000)), SessionState::ChecksUnanswered);
    assert_eq!(q.report(t0 + ms(6000)).checks_unanswered, 1);
    // A later packet sweeps it out: still one.
    q.observe(t0 + ms(6000), Direction::ToPeer, &[0x16, 0xFE], &mut st);
    let r = q.report(t0 + ms(7000));
    assert_eq!(r.checks_unanswered, 1);
    assert_eq!(r.legs[Leg::Client as usize].unanswered, 1);
    assert_eq!(st.unanswered, [1, 0]);
    // A late answer times nothing.
    q.observe(
        t0 + ms(7000),
        Direction::ToPeer,
        &binding(0x0101, 7),
        &mut st,
    );
    assert_eq!(q.report(t0 + ms(7000)).legs[0].samples, 0);
}

#[test]
fn streams_by_ssrc_and_direction_within_a_bound() {
    let t0 = Instant::now();
    let mut q = Quality::new(t0);
    let mut st = QualityStats::default();
    // The same SSRC both ways is two streams.
    q.observe(t0, Direction::ToPeer, &rtp(1, 0, 0), &mut st);
    q.observe(t0, Direction::ToClient, &rtp(1, 0, 0), &mut st);
    for ssrc in 2..(MAX_STREAMS as u32 + 5) {
        q.observe(t0, Direction::ToPeer, &rtp(ssrc, 0, 0), &mut st);
    }
    let r = q.report(t0);
    assert_eq!(r.streams.len(), MAX_STREAMS);
    assert_eq!(r.streams_untracked, 5);
    assert_eq!(st.streams_untracked, 5);
    // Once the old ones have been silent long enough, new ones take their places.
    q.observe(t0 + ms(11_000), Direction::ToPeer, &rtp(999, 0, 0), &mut st);
    assert!(
        q.report(t0 + ms(11_000))
            .streams
            .iter()
            .any(|s| s.ssrc == 999)
    );
}

#[test]
fn rtcp_is_counted_by_type_and_sender() {
    let t0 = Instant::now();
    let mut q = Quality::new(t0);
    let mut st = QualityStats::default();
    q.observe(t0, Direction::ToPeer, &rtp(77, 0, 0), &mut st);
    let sr = [0x80, 200, 0, 6, 0, 0, 0, 77];
    let rr = [0x81, 201, 0, 7, 0, 0, 0, 78];
    q.observe(t0, Direction::ToPeer, &sr, &mut st);
    q.observe(t0, Direction::ToPeer, &rr, &mut st);
    q.observe(t0, Direction::ToClient, &sr, &mut st);
    let r = q.report(t0);
    assert_eq!(r.streams[0].rtcp[0], 1); // the SR of SSRC 77 towards the peer
    assert_eq!(r.streams[0].rtcp[1], 0);
    assert_eq!(st.rtcp[0][0], 1);
    assert_eq!(st.rtcp[0][1], 1);
    assert_eq!(st.rtcp[1][0], 1);
}

#[test]
fn loss_windows_reach_the_histograms() {
    let t0 = Instant::now();
    let mut q = Quality::new(t0);
    let mut st = QualityStats::default();
    // Three seconds of 48 kHz audio at 50 packets a second, every tenth lost.
    for i in 0..150u32 {
        if i % 10 == 3 {
            continue;
        }
        q.observe(
            t0 + ms(20 * u64::from(i)),
            Direction::ToPeer,
            &rtp(3, i as u16, i * 960),
            &mut st,
        );
    }
    let r = q.report(t0 + ms(3000));
    let s = &r.streams[0];
    assert_eq!(s.kind, Kind::Audio);
    assert_eq!(s.clock_rate, Some(48_000));
    assert_eq!(s.lost, 15);
    let a = Kind::Audio as usize;
    assert!(st.lost[0][a] >= 5, "{:?}", st.lost);
    assert!(st.jitter[0][a].counts.iter().sum::<u64>() >= 1);
    // Summary line.
    let line = q.summary().to_string();
    assert!(
        line.starts_with("3/to_peer/audio packets=135 lost=15 loss=10.07%"),
        "{line}"
    );
}

#[test]
fn bad_input_never_panics() {
    let t0 = Instant::now();
    let mut q = Quality::new(t0);
    let mut st = QualityStats::default();
    let mut x: u32 = 12345;
    for n in 0..5000u64 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let len = (x % 40) as usize;
        let mut p = [0u8; 40];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (x.rotate_left(i as u32) & 0xFF) as u8;
        }
        p[0] = [0x00, 0x01, 0x80, 0x90, 0x16, 0xFF][(n % 6) as usize];
        let dir = if n % 2 == 0 {
            Direction::ToPeer
        } else {
            Direction::ToClient
        };
        q.observe(t0 + ms(n), dir, &p[..len], &mut st);
    }
    let _ = q.report(t0 + ms(6000));
    let _ = q.summary().to_string();
}

#[test]
fn the_state_is_fixed_size_and_small() {
    let size = std::mem::size_of::<Quality>();
    eprintln!("Quality: {size} bytes");
    assert!(size <= 4096, "{size}");
    // What an idle allocation carries: one pointer.
    assert_eq!(std::mem::size_of::<Option<Box<Quality>>>(), 8);
}

#[test]
fn the_fuzz_body_holds_on_random_runs() {
    // The fuzz target's invariants over pseudo-random records, weighted towards the
    // interesting first bytes (STUN, DTLS, RTP/RTCP).
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..300 {
        let mut run = Vec::new();
        for _ in 0..(next() % 60) {
            let len = (next() % 48) as u8;
            run.push(next() as u8);
            run.push(len);
            for k in 0..len {
                let b = next() as u8;
                run.push(match k {
                    0 => [0x00, 0x01, 0x80, 0x81, 0x17, b][(b % 6) as usize],
                    4..=7 if run.len() % 3 == 0 => [0x21, 0x12, 0xA4, 0x42][usize::from(k - 4)],
                    _ => b,
                });
            }
        }
        crate::testing::fuzz::quality(&run);
    }
}
