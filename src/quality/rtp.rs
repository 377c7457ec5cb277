//! One RTP stream as the relay sees it: sequence tracking and loss as RFC 3550 A.1 and A.3
//! do them (wrap-around, reordering; duplicates recognised in a 64-packet window),
//! interarrival jitter as A.8 does, with the clock rate inferred from the stream itself
//! (timestamp units per second of arrival, snapped to the usual rates), and per-second
//! bitrate and frames per second (marker bits).

use super::demux::{RTCP_SLOTS, RtpHeader};
use super::{Direction, Kind};

/// RFC 3550 A.1's constants.
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
const MIN_SEQUENTIAL: u8 = 2;

/// Clock rates a stream's inferred rate snaps to (RFC 7587 §4.1: Opus is 48 kHz; RFC 6184
/// and the other video formats use 90 kHz; G.711 8 kHz, G.722 and wideband 16 kHz).
pub const CLOCK_RATES: [u32; 5] = [8_000, 16_000, 32_000, 48_000, 90_000];
/// How far (as a fraction) the measured slope may be from a usual rate to snap to it.
const SNAP_TOLERANCE: f64 = 0.08;
/// The span of arrivals one clock-rate measurement covers.
const INFER_WINDOW_US: u64 = 1_000_000;
const INFER_MIN_PACKETS: u32 = 5;
/// The bitrate, frame-rate and loss window.
pub const REPORT_WINDOW_US: u64 = 1_000_000;

/// The kind of media a clock rate means.
pub fn kind_of(clock_rate: u32) -> Kind {
    match clock_rate {
        90_000 => Kind::Video,
        0 => Kind::Unknown,
        _ => Kind::Audio,
    }
}

/// The usual rate within [`SNAP_TOLERANCE`] of a measured one.
pub fn snap(rate: f64) -> Option<u32> {
    CLOCK_RATES
        .iter()
        .copied()
        .find(|&r| (rate / f64::from(r) - 1.0).abs() <= SNAP_TOLERANCE)
}

/// One second of a stream, handed to the server-wide histograms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub kind: Kind,
    pub expected: u32,
    pub lost: u32,
    /// Jitter at the end of the window; None while the clock rate is unknown.
    pub jitter_us: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Stream {
    pub ssrc: u32,
    pub dir: Direction,
    pub in_use: bool,
    pub payload_type: u8,
    /// Every RTP packet of the stream relayed, duplicates included.
    pub packets: u64,
    pub bytes: u64,
    pub duplicates: u32,
    /// RTCP packets this SSRC sent in the same direction, by type slot.
    pub rtcp: [u32; RTCP_SLOTS],
    pub first_us: u64,
    pub last_us: u64,

    // RFC 3550 A.1.
    max_seq: u16,
    probation: u8,
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    received: u32,
    /// Bit i: sequence number `max_seq - i` was received.
    seen: u64,

    // RFC 3550 A.8, in timestamp units.
    pub clock_rate: u32,
    jitter: f64,
    prev_arrival_us: u64,
    prev_ts: u32,
    has_prev: bool,

    // Clock-rate inference over the in-order packets.
    ts_ext: i64,
    last_ts: u32,
    ref_us: u64,
    ref_ts_ext: i64,
    ref_packets: u32,
    /// A rate the last window measured that differs from the current one; adopted when the
    /// next window agrees (a single odd window changes nothing).
    candidate: u32,

    // Report window.
    win_start_us: u64,
    win_bytes: u64,
    win_markers: u32,
    win_expected: u32,
    win_received: u32,
    pub bitrate_bps: u64,
    /// Frames per second times 100 over the last window.
    pub fps_x100: u32,
}

impl Stream {
    pub fn new(ssrc: u32, dir: Direction, now_us: u64) -> Stream {
        Stream {
            ssrc,
            dir,
            in_use: true,
            first_us: now_us,
            last_us: now_us,
            ..Stream::default()
        }
    }

    /// RFC 3550 A.1 `init_seq`.
    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = 0x1_0001; // RTP_SEQ_MOD + 1: matches no sequence number
        self.cycles = 0;
        self.received = 0;
        self.seen = 1;
        self.win_expected = 0;
        self.win_received = 0;
    }

    /// RFC 3550 A.1 `update_seq`, with duplicates recognised in the window of the last 64
    /// sequence numbers. Returns whether the packet counts (not a duplicate, not in
    /// probation or a rejected jump) and whether it is the newest so far.
    fn update_seq(&mut self, seq: u16) -> (bool, bool) {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return (true, true);
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return (false, true);
        }
        if udelta == 0 {
            self.duplicates += 1;
            return (false, false);
        }
        if udelta < MAX_DROPOUT {
            // In order, with a permissible gap.
            if seq < self.max_seq {
                self.cycles += 1 << 16;
            }
            self.max_seq = seq;
            self.seen = if udelta >= 64 {
                1
            } else {
                (self.seen << udelta) | 1
            };
            self.received += 1;
            return (true, true);
        }
        if udelta <= u16::MAX - MAX_MISORDER {
            // A very large jump: a restarted sender, unless it is a stray.
            if u32::from(seq) == self.bad_seq {
                self.init_seq(seq);
                self.received += 1;
                return (true, true);
            }
            self.bad_seq = u32::from(seq.wrapping_add(1));
            return (false, false);
        }
        // Late (reordered) or a duplicate of an older packet.
        let back = self.max_seq.wrapping_sub(seq);
        if back < 64 {
            let bit = 1u64 << back;
            if self.seen & bit != 0 {
                self.duplicates += 1;
                return (false, false);
            }
            self.seen |= bit;
        }
        self.received += 1;
        (true, false)
    }

    /// RFC 3550 A.3: packets expected since the first counted one.
    pub fn expected(&self) -> u32 {
        if self.probation > 0 && self.received == 0 {
            return 0;
        }
        (self.cycles + u32::from(self.max_seq))
            .wrapping_sub(self.base_seq)
            .wrapping_add(1)
    }

    /// RFC 3550 A.3: expected minus received, at least 0 (the RFC lets it go negative with
    /// duplicates; those are recognised here).
    pub fn lost(&self) -> u32 {
        self.expected().saturating_sub(self.received)
    }

    pub fn loss_ratio(&self) -> f64 {
        match self.expected() {
            0 => 0.0,
            e => f64::from(self.lost()) / f64::from(e),
        }
    }

    pub fn kind(&self) -> Kind {
        kind_of(self.clock_rate)
    }

    /// Interarrival jitter in microseconds; None while the clock rate is unknown.
    pub fn jitter_us(&self) -> Option<u32> {
        (self.clock_rate != 0).then(|| (self.jitter * 1e6 / f64::from(self.clock_rate)) as u32)
    }

    /// An RTP packet of this stream arrived at `now_us` (microseconds, monotonic).
    /// Returns a finished report window, if this packet closed one.
    pub fn on_packet(&mut self, now_us: u64, h: &RtpHeader, len: usize) -> Option<Window> {
        let first = self.packets == 0;
        self.packets += 1;
        self.bytes += len as u64;
        self.last_us = now_us;
        self.win_bytes += len as u64;
        if h.marker {
            self.win_markers += 1;
        }
        if first {
            self.init_seq(h.seq);
            self.max_seq = h.seq.wrapping_sub(1);
            self.probation = MIN_SEQUENTIAL;
            self.payload_type = h.payload_type;
            self.last_ts = h.timestamp;
            self.ref_us = now_us;
            self.win_start_us = now_us;
        }
        let (counts, newest) = self.update_seq(h.seq);
        if h.payload_type != self.payload_type {
            // A new format (another codec, maybe another clock): measure again.
            self.payload_type = h.payload_type;
            self.restart_inference(now_us);
        }
        if counts || (first && newest) {
            self.infer_clock(now_us, h.timestamp, newest);
            self.jitter_step(now_us, h.timestamp);
        }
        self.close_window(now_us)
    }

    fn restart_inference(&mut self, now_us: u64) {
        self.ref_us = now_us;
        self.ref_ts_ext = self.ts_ext;
        self.ref_packets = 0;
        self.candidate = 0;
    }

    /// Extends the timestamp over the in-order packets and, once a window of arrivals has
    /// passed, compares timestamp units to seconds.
    fn infer_clock(&mut self, now_us: u64, ts: u32, newest: bool) {
        if !newest {
            return;
        }
        self.ts_ext += i64::from(ts.wrapping_sub(self.last_ts) as i32);
        self.last_ts = ts;
        self.ref_packets += 1;
        let span = now_us.saturating_sub(self.ref_us);
        if span < INFER_WINDOW_US || self.ref_packets < INFER_MIN_PACKETS {
            return;
        }
        let rate = (self.ts_ext - self.ref_ts_ext) as f64 * 1e6 / span as f64;
        let snapped = snap(rate);
        self.ref_us = now_us;
        self.ref_ts_ext = self.ts_ext;
        self.ref_packets = 0;
        match snapped {
            Some(r) if r == self.clock_rate => self.candidate = 0,
            Some(r) if self.clock_rate == 0 || self.candidate == r => {
                self.clock_rate = r;
                self.candidate = 0;
                self.jitter = 0.0;
                self.has_prev = false;
            }
            Some(r) => self.candidate = r,
            None => self.candidate = 0,
        }
    }

    /// RFC 3550 A.8: J += (|D| - J) / 16, D the difference of relative transit times.
    fn jitter_step(&mut self, now_us: u64, ts: u32) {
        if self.clock_rate == 0 {
            return;
        }
        if self.has_prev {
            let arrival = now_us.saturating_sub(self.prev_arrival_us) as f64
                * f64::from(self.clock_rate)
                / 1e6;
            let sent = f64::from(ts.wrapping_sub(self.prev_ts) as i32);
            let d = (arrival - sent).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.prev_arrival_us = now_us;
        self.prev_ts = ts;
        self.has_prev = true;
    }

    fn close_window(&mut self, now_us: u64) -> Option<Window> {
        let span = now_us.saturating_sub(self.win_start_us);
        if span < REPORT_WINDOW_US {
            return None;
        }
        self.bitrate_bps = self.win_bytes * 8 * 1_000_000 / span;
        self.fps_x100 = (u64::from(self.win_markers) * 100_000_000 / span) as u32;
        let (expected, received) = (self.expected(), self.received);
        let w = Window {
            kind: self.kind(),
            expected: expected.wrapping_sub(self.win_expected),
            lost: expected
                .wrapping_sub(self.win_expected)
                .saturating_sub(received.wrapping_sub(self.win_received)),
            jitter_us: self.jitter_us(),
        };
        self.win_start_us = now_us;
        self.win_bytes = 0;
        self.win_markers = 0;
        self.win_expected = expected;
        self.win_received = received;
        Some(w)
    }

    /// The bitrate shown at `now_us`: the last window's, or 0 once the stream has been
    /// silent for two windows.
    pub fn bitrate_at(&self, now_us: u64) -> u64 {
        if now_us.saturating_sub(self.last_us) > 2 * REPORT_WINDOW_US {
            0
        } else {
            self.bitrate_bps
        }
    }

    /// Frames per second at `now_us` (marker bits end video frames; audio's mark the start
    /// of a talkspurt, so audio shows none).
    pub fn fps_at(&self, now_us: u64) -> f64 {
        if self.kind() != Kind::Video || now_us.saturating_sub(self.last_us) > 2 * REPORT_WINDOW_US
        {
            0.0
        } else {
            f64::from(self.fps_x100) / 100.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic sender: packet `i` of a stream at `rate` Hz with `per_s` packets a second.
    struct Sender {
        rate: u32,
        per_s: u32,
        seq0: u16,
        ts0: u32,
    }

    impl Sender {
        fn header(&self, i: u32) -> RtpHeader {
            RtpHeader {
                marker: false,
                payload_type: 111,
                seq: self.seq0.wrapping_add(i as u16),
                timestamp: self.ts0.wrapping_add(
                    (u64::from(i) * u64::from(self.rate) / u64::from(self.per_s)) as u32,
                ),
                ssrc: 1,
            }
        }
        /// Send time of packet i, microseconds (starting at 1).
        fn at(&self, i: u32) -> u64 {
            1 + u64::from(i) * 1_000_000 / u64::from(self.per_s)
        }
    }

    const AUDIO: Sender = Sender {
        rate: 48_000,
        per_s: 50,
        seq0: 65_500,
        ts0: u32::MAX - 10_000,
    };

    #[test]
    fn a_clean_stream_across_both_wraps() {
        let mut s = Stream::new(1, Direction::ToPeer, 1);
        for i in 0..500 {
            s.on_packet(AUDIO.at(i), &AUDIO.header(i), 100);
        }
        assert_eq!(s.packets, 500);
        // The first packet is the probation's: A.1 counts from the second.
        assert_eq!(s.expected(), 499);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.clock_rate, 48_000);
        assert_eq!(s.kind(), Kind::Audio);
        assert_eq!(s.jitter_us(), Some(0));
        assert_eq!(s.bitrate_at(s.last_us), 100 * 8 * 50);
    }

    #[test]
    fn gaps_count_as_loss_and_reordering_does_not() {
        let mut s = Stream::new(1, Direction::ToPeer, 1);
        let mut order: Vec<u32> = (0..400).filter(|i| i % 20 != 7).collect();
        // Swap neighbours here and there: late packets, not lost ones.
        for k in (10..370).step_by(37) {
            order.swap(k, k + 1);
        }
        for &i in &order {
            s.on_packet(AUDIO.at(i), &AUDIO.header(i), 100);
        }
        assert_eq!(s.lost(), 20);
        assert_eq!(s.expected(), 399);
        assert!((s.loss_ratio() - 20.0 / 399.0).abs() < 1e-9);
    }

    #[test]
    fn duplicates_are_not_received_twice() {
        let mut s = Stream::new(1, Direction::ToPeer, 1);
        for i in 0..200 {
            s.on_packet(AUDIO.at(i), &AUDIO.header(i), 100);
            if i % 10 == 5 {
                s.on_packet(AUDIO.at(i), &AUDIO.header(i), 100);
            }
            if i % 25 == 24 {
                // An old one again, 3 behind.
                s.on_packet(AUDIO.at(i), &AUDIO.header(i - 3), 100);
            }
        }
        assert_eq!(s.duplicates, 20 + 8);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.packets, 228);
    }

    #[test]
    fn a_large_jump_restarts_only_when_confirmed() {
        let mut s = Stream::new(1, Direction::ToPeer, 1);
        for i in 0..100 {
            s.on_packet(AUDIO.at(i), &AUDIO.header(i), 100);
        }
        // One stray far away: ignored.
        let mut stray = AUDIO.header(100);
        stray.seq = stray.seq.wrapping_add(20_000);
        s.on_packet(AUDIO.at(100), &stray, 100);
        assert_eq!(s.lost(), 0);
        // Two in a row there: the sender restarted, counting starts again.
        let mut next = stray;
        next.seq = next.seq.wrapping_add(1);
        s.on_packet(AUDIO.at(101), &next, 100);
        next.seq = next.seq.wrapping_add(1);
        s.on_packet(AUDIO.at(102), &next, 100);
        assert_eq!(s.expected(), 2);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn jitter_matches_a8_for_alternating_delay() {
        // Every other packet 10 ms late: |D| is 10 ms each time, so J converges to 10 ms.
        let mut s = Stream::new(1, Direction::ToPeer, 1);
        for i in 0..1000 {
            let late = if i % 2 == 1 { 10_000 } else { 0 };
            s.on_packet(AUDIO.at(i) + late, &AUDIO.header(i), 100);
        }
        let j = s.jitter_us().unwrap();
        assert!((9_500..=10_000).contains(&j), "{j}");
    }

    #[test]
    fn video_is_recognised_with_its_frame_rate() {
        // 30 frames a second, 3 packets each, the last with the marker.
        let mut s = Stream::new(9, Direction::ToClient, 1);
        let mut seq = 10u16;
        for f in 0..90u32 {
            for p in 0..3 {
                let h = RtpHeader {
                    marker: p == 2,
                    payload_type: 96,
                    seq,
                    timestamp: 7 + f * 3000,
                    ssrc: 9,
                };
                seq = seq.wrapping_add(1);
                s.on_packet(1 + u64::from(f) * 33_333 + p * 1000, &h, 1000);
            }
        }
        assert_eq!(s.clock_rate, 90_000);
        assert_eq!(s.kind(), Kind::Video);
        let fps = s.fps_at(s.last_us);
        assert!((28.0..=31.0).contains(&fps), "{fps}");
    }

    #[test]
    fn silence_zeroes_the_rates_but_not_the_totals() {
        let mut s = Stream::new(1, Direction::ToPeer, 1);
        for i in 0..200 {
            s.on_packet(AUDIO.at(i), &AUDIO.header(i), 100);
        }
        let later = s.last_us + 3 * REPORT_WINDOW_US;
        assert_eq!(s.bitrate_at(later), 0);
        assert_eq!(s.packets, 200);
        // Speaking again after 10 s of silence (timestamps kept running): no loss, same clock.
        for i in 700..800 {
            let h = RtpHeader {
                seq: AUDIO.header(i - 500).seq,
                ..AUDIO.header(i)
            };
            s.on_packet(AUDIO.at(i), &h, 100);
        }
        assert_eq!(s.lost(), 0);
        assert_eq!(s.clock_rate, 48_000);
    }

    #[test]
    fn a_clock_rate_change_is_followed() {
        let mut s = Stream::new(1, Direction::ToPeer, 1);
        for i in 0..150 {
            s.on_packet(AUDIO.at(i), &AUDIO.header(i), 100);
        }
        assert_eq!(s.clock_rate, 48_000);
        // Same SSRC and payload type, the timestamps now run at 16 kHz (a codec switch
        // that kept its payload type): two windows that agree are needed.
        let base = AUDIO.header(150);
        for k in 0..200u32 {
            let h = RtpHeader {
                seq: base.seq.wrapping_add(k as u16),
                timestamp: base.timestamp.wrapping_add(k * 320),
                ..base
            };
            s.on_packet(AUDIO.at(150 + k), &h, 100);
        }
        assert_eq!(s.clock_rate, 16_000);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn odd_rates_do_not_snap() {
        assert_eq!(snap(47_000.0), Some(48_000));
        assert_eq!(snap(90_500.0), Some(90_000));
        assert_eq!(snap(24_000.0), None);
        assert_eq!(snap(0.0), None);
        assert_eq!(snap(-48_000.0), None);
    }
}
