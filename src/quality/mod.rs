//! Call quality at the relay, without decrypting anything: the observer the data path feeds
//! with every payload it relays, in both directions.
//!
//! - [`demux`]: RFC 7983's demultiplexing by first byte (STUN, DTLS, RTP, RTCP) and the
//!   header readers (RTP's fixed header, RTCP's first 8 bytes, a STUN Binding's header).
//! - [`rtt`]: ICE Binding transactions matched by id in a bounded table; a request relayed
//!   towards the peer and its answer time the peer leg, one relayed towards the client the
//!   client leg.
//! - [`rtp`]: per RTP stream (SSRC and direction) packets, bytes, bitrate, loss (RFC 3550
//!   A.1/A.3), jitter (A.8) with the clock rate inferred from the stream, frames per second.
//!
//! Loss and jitter are what arrives at the relay: a stream relayed towards the peer shows the
//! client leg's (client to relay), one relayed towards the client the peer leg's.
//!
//! Sans-IO like the core that feeds it: `now` is passed in, no clock is read, and after the
//! state is made (once per allocation, on its first relayed packet) nothing is allocated.

#![forbid(unsafe_code)]

pub mod demux;
pub mod rtp;
pub mod rtt;

use std::fmt;
use std::time::Instant;

use demux::{BindingClass, CLASSES, Class, RTCP_SLOTS, classify};
use rtp::Stream;
use rtt::{LegRtt, RTT_BOUNDS_US, RTT_BUCKETS, Requested, Transactions, bucket, leg_of};

/// Which way a payload crosses the relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client (ChannelData or Send) out of the relay socket to a peer.
    #[default]
    ToPeer = 0,
    /// From a peer into the relay socket and on to the client.
    ToClient = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::ToPeer, Direction::ToClient];

    pub fn reverse(self) -> Direction {
        match self {
            Direction::ToPeer => Direction::ToClient,
            Direction::ToClient => Direction::ToPeer,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToPeer => "to_peer",
            Direction::ToClient => "to_client",
        }
    }

    /// The leg a payload travelling this way crossed before the relay saw it: where its
    /// loss and jitter come from.
    pub fn upstream_leg(self) -> Leg {
        match self {
            Direction::ToPeer => Leg::Client,
            Direction::ToClient => Leg::Peer,
        }
    }
}

/// A leg of the relayed path: client to relay, or relay to peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leg {
    Client = 0,
    Peer = 1,
}

impl Leg {
    pub const ALL: [Leg; 2] = [Leg::Client, Leg::Peer];

    pub fn as_str(self) -> &'static str {
        match self {
            Leg::Client => "client",
            Leg::Peer => "peer",
        }
    }
}

/// The media kind of a stream, from its clock rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Kind {
    Audio = 0,
    Video = 1,
    /// Clock rate not (yet) known.
    #[default]
    Unknown = 2,
}

pub const KINDS: usize = 3;

impl Kind {
    pub const ALL: [Kind; KINDS] = [Kind::Audio, Kind::Video, Kind::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
            Kind::Unknown => "unknown",
        }
    }
}

/// RTP streams tracked per allocation (both directions); more are counted, not tracked.
pub const MAX_STREAMS: usize = 12;
/// A stream silent this long gives its place to a new one when the table is full.
const STREAM_IDLE_US: u64 = 10_000_000;
/// A side that relayed no media for this long is silent.
pub const SILENCE_US: u64 = 3_000_000;
/// How often unanswered checks are swept out (on the packet path, at most this often).
const SWEEP_US: u64 = 1_000_000;

/// What an operator reads at a glance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Nothing relayed yet.
    Idle,
    /// ICE checks crossing, no answer yet.
    Connecting,
    /// Checks answered, no media (RTP, DTLS, or anything else that is not STUN or RTCP) yet.
    Connected,
    /// Media both ways within [`SILENCE_US`].
    MediaFlowing,
    /// Media from the peer only: the client is silent.
    ClientSilent,
    /// Media from the client only: the peer is silent.
    PeerSilent,
    /// Media flowed, none either way within [`SILENCE_US`].
    MediaStopped,
    /// Checks went unanswered and none has been answered; no media.
    ChecksUnanswered,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Idle => "idle",
            SessionState::Connecting => "connecting",
            SessionState::Connected => "connected",
            SessionState::MediaFlowing => "media_flowing",
            SessionState::ClientSilent => "client_silent",
            SessionState::PeerSilent => "peer_silent",
            SessionState::MediaStopped => "media_stopped",
            SessionState::ChecksUnanswered => "checks_unanswered",
        }
    }
}

/// The key of a stream in [`Quality`]'s lookup table: never 0.
fn stream_key(ssrc: u32, dir: Direction) -> u64 {
    (u64::from(ssrc) << 8) | ((dir as u64) << 1) | 1
}

/// A fixed-bucket histogram with its sum, for the Prometheus exposition.
#[derive(Clone, Copy, Debug)]
pub struct Hist<const N: usize> {
    pub counts: [u64; N],
    pub sum: u64,
}

impl<const N: usize> Default for Hist<N> {
    fn default() -> Self {
        Hist {
            counts: [0; N],
            sum: 0,
        }
    }
}

impl<const N: usize> Hist<N> {
    pub fn observe(&mut self, bounds: &[u32], v: u32) {
        let b = bucket(bounds, v).min(N - 1);
        self.counts[b] += 1;
        self.sum += u64::from(v);
    }

    pub fn add(&mut self, o: &Hist<N>) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.sum += o.sum;
    }
}

/// Loss-ratio buckets in parts per million (a window of one stream is one observation).
pub const LOSS_BOUNDS_PPM: [u32; 10] = [
    0, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
];
pub const LOSS_BUCKETS: usize = LOSS_BOUNDS_PPM.len() + 1;
/// Jitter buckets in microseconds.
pub const JITTER_BOUNDS_US: [u32; 10] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 50_000, 100_000, 200_000, 500_000,
];
pub const JITTER_BUCKETS: usize = JITTER_BOUNDS_US.len() + 1;

/// One worker's quality counters and histograms, every label fixed (direction, leg, kind,
/// payload class, RTCP type): nothing grows with sessions.
#[derive(Clone, Copy, Debug, Default)]
pub struct QualityStats {
    /// Relayed payloads by direction and [`Class`].
    pub payloads: [[u64; CLASSES]; 2],
    /// Binding requests relayed, answered and unanswered, by the leg they time.
    pub checks: [u64; 2],
    pub answered: [u64; 2],
    pub unanswered: [u64; 2],
    /// RTT samples by leg, microseconds ([`RTT_BOUNDS_US`]).
    pub rtt: [Hist<RTT_BUCKETS>; 2],
    /// Per stream and report window, by direction and kind: loss ratio (ppm) and jitter (µs).
    pub loss: [[Hist<LOSS_BUCKETS>; KINDS]; 2],
    pub jitter: [[Hist<JITTER_BUCKETS>; KINDS]; 2],
    /// RTP packets expected and lost (RFC 3550 A.3) over closed windows, by direction, kind.
    pub expected: [[u64; KINDS]; 2],
    pub lost: [[u64; KINDS]; 2],
    /// RTCP packets by direction and type slot ([`demux::RTCP_TYPES`]).
    pub rtcp: [[u64; RTCP_SLOTS]; 2],
    /// RTP streams not tracked: their allocation's table was full.
    pub streams_untracked: u64,
}

impl QualityStats {
    pub fn add(&mut self, o: &QualityStats) {
        fn add_all<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for d in 0..2 {
            add_all(&mut self.payloads[d], &o.payloads[d]);
            add_all(&mut self.rtcp[d], &o.rtcp[d]);
            add_all(&mut self.expected[d], &o.expected[d]);
            add_all(&mut self.lost[d], &o.lost[d]);
            self.rtt[d].add(&o.rtt[d]);
            for k in 0..KINDS {
                self.loss[d][k].add(&o.loss[d][k]);
                self.jitter[d][k].add(&o.jitter[d][k]);
            }
        }
        add_all(&mut self.checks, &o.checks);
        add_all(&mut self.answered, &o.answered);
        add_all(&mut self.unanswered, &o.unanswered);
        self.streams_untracked += o.streams_untracked;
    }

    fn window(&mut self, dir: Direction, w: rtp::Window) {
        let (d, k) = (dir as usize, w.kind as usize);
        self.expected[d][k] += u64::from(w.expected);
        self.lost[d][k] += u64::from(w.lost);
        if w.expected > 0 {
            let ppm = (u64::from(w.lost) * 1_000_000 / u64::from(w.expected)) as u32;
            self.loss[d][k].observe(&LOSS_BOUNDS_PPM, ppm);
        }
        if let Some(j) = w.jitter_us {
            self.jitter[d][k].observe(&JITTER_BOUNDS_US, j);
        }
    }
}

/// The quality state of one allocation: fixed size, made on its first relayed packet.
#[derive(Clone, Debug)]
pub struct Quality {
    epoch: Instant,
    payloads: [[u64; CLASSES]; 2],
    legs: [LegRtt; 2],
    tx: Transactions,
    /// [`stream_key`] of each place in `streams` (0: free): the lookup reads these 96 bytes,
    /// not the streams.
    keys: [u64; MAX_STREAMS],
    streams: [Stream; MAX_STREAMS],
    streams_untracked: u32,
    /// RTCP by direction and type slot (the per-sender counts are on the streams).
    rtcp: [[u32; RTCP_SLOTS]; 2],
    /// When each direction last relayed media (RTP, DTLS and unclassified payloads: not
    /// STUN, not RTCP); 0: never.
    last_media_us: [u64; 2],
    last_us: u64,
    next_sweep_us: u64,
}

impl Quality {
    pub fn new(now: Instant) -> Quality {
        Quality {
            epoch: now,
            payloads: [[0; CLASSES]; 2],
            legs: [LegRtt::default(); 2],
            tx: Transactions::default(),
            keys: [0; MAX_STREAMS],
            streams: [Stream::default(); MAX_STREAMS],
            streams_untracked: 0,
            rtcp: [[0; RTCP_SLOTS]; 2],
            last_media_us: [0; 2],
            last_us: 0,
            next_sweep_us: SWEEP_US,
        }
    }

    /// Microseconds since the state was made, from 1 (0 means "never" in the tables).
    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64 + 1
    }

    /// A payload relayed in direction `dir` at `now`. Server-wide figures go to `stats`.
    #[inline]
    pub fn observe(
        &mut self,
        now: Instant,
        dir: Direction,
        payload: &[u8],
        stats: &mut QualityStats,
    ) {
        let now_us = self.micros(now);
        self.last_us = now_us;
        let d = dir as usize;
        let class = classify(payload);
        self.payloads[d][class as usize] += 1;
        stats.payloads[d][class as usize] += 1;
        match class {
            Class::Stun => self.observe_stun(now_us, dir, payload, stats),
            Class::Rtp => {
                self.last_media_us[d] = now_us;
                if let Some(h) = demux::rtp_header(payload)
                    && let Some(s) = self.stream_for(h.ssrc, dir, now_us, stats)
                    && let Some(w) = s.on_packet(now_us, &h, payload.len())
                {
                    stats.window(dir, w);
                }
            }
            Class::Rtcp => {
                // Not media: RTCP goes on while a muted or stopped sender sends nothing.
                if let Some(h) = demux::rtcp_header(payload) {
                    let slot = demux::rtcp_slot(h.packet_type);
                    self.rtcp[d][slot] += 1;
                    stats.rtcp[d][slot] += 1;
                    let key = stream_key(h.sender, dir);
                    if let Some(i) = self.keys.iter().position(|&k| k == key) {
                        self.streams[i].rtcp[slot] += 1;
                    }
                }
            }
            Class::Dtls | Class::Other => self.last_media_us[d] = now_us,
        }
        if now_us >= self.next_sweep_us {
            self.next_sweep_us = now_us + SWEEP_US;
            self.tx.expire(now_us, &mut self.legs, |leg| {
                stats.unanswered[leg as usize] += 1
            });
        }
    }

    fn observe_stun(&mut self, now_us: u64, dir: Direction, p: &[u8], stats: &mut QualityStats) {
        let Some(b) = demux::stun_binding(p) else {
            return;
        };
        match b.class {
            BindingClass::Request => {
                if let Requested::New { evicted } =
                    self.tx.request(now_us, dir, b.txid, &mut self.legs)
                {
                    stats.checks[leg_of(dir) as usize] += 1;
                    if let Some(leg) = evicted {
                        stats.unanswered[leg as usize] += 1;
                    }
                }
            }
            BindingClass::Success | BindingClass::Error => {
                if let Some(a) = self.tx.response(now_us, dir, b.txid, &mut self.legs) {
                    stats.answered[a.leg as usize] += 1;
                    if let Some(us) = a.rtt_us {
                        stats.rtt[a.leg as usize].observe(&RTT_BOUNDS_US, us);
                    }
                }
            }
        }
    }

    /// The stream of `ssrc` in direction `dir`, made if there is room (a free place, or one
    /// silent for [`STREAM_IDLE_US`]).
    fn stream_for(
        &mut self,
        ssrc: u32,
        dir: Direction,
        now_us: u64,
        stats: &mut QualityStats,
    ) -> Option<&mut Stream> {
        let key = stream_key(ssrc, dir);
        let i =
            match self.keys.iter().position(|&k| k == key) {
                Some(i) => i,
                None => {
                    let Some(i) = self.streams.iter().position(|s| {
                        !s.in_use || now_us.saturating_sub(s.last_us) >= STREAM_IDLE_US
                    }) else {
                        self.streams_untracked += 1;
                        stats.streams_untracked += 1;
                        return None;
                    };
                    self.streams[i] = Stream::new(ssrc, dir, now_us);
                    self.keys[i] = key;
                    i
                }
            };
        self.streams.get_mut(i)
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> SessionState {
        self.state_at(self.micros(now))
    }

    fn state_at(&self, now_us: u64) -> SessionState {
        let recent = |d: Direction| {
            let t = self.last_media_us[d as usize];
            t != 0 && now_us.saturating_sub(t) <= SILENCE_US
        };
        match (recent(Direction::ToPeer), recent(Direction::ToClient)) {
            (true, true) => SessionState::MediaFlowing,
            (true, false) => SessionState::PeerSilent,
            (false, true) => SessionState::ClientSilent,
            (false, false) => {
                let answered: u32 = self.legs.iter().map(|l| l.answered).sum();
                let checks: u32 = self.legs.iter().map(|l| l.checks).sum();
                if self.last_media_us.iter().any(|&t| t != 0) {
                    SessionState::MediaStopped
                } else if answered > 0 {
                    SessionState::Connected
                } else if self.unanswered_at(now_us).iter().sum::<u32>() > 0 {
                    SessionState::ChecksUnanswered
                } else if checks > 0 {
                    SessionState::Connecting
                } else {
                    SessionState::Idle
                }
            }
        }
    }

    /// Unanswered checks per leg at `now_us`, those overdue but not yet swept included.
    fn unanswered_at(&self, now_us: u64) -> [u32; 2] {
        let overdue = self.tx.overdue(now_us);
        [
            self.legs[0].unanswered + overdue[0],
            self.legs[1].unanswered + overdue[1],
        ]
    }

    /// What the admin API shows at `now`.
    pub fn report(&self, now: Instant) -> QualityReport {
        let now_us = self.micros(now);
        let unanswered = self.unanswered_at(now_us);
        let legs = [Leg::Client, Leg::Peer].map(|leg| {
            let l = &self.legs[leg as usize];
            LegReport {
                recent_us: (l.samples > 0).then_some(l.last_us),
                smoothed_us: (l.samples > 0).then_some(l.srtt_us),
                p50_us: l.quantile_us(0.5),
                p95_us: l.quantile_us(0.95),
                samples: l.samples,
                checks: l.checks,
                answered: l.answered,
                unanswered: unanswered[leg as usize],
            }
        });
        QualityReport {
            state: self.state_at(now_us),
            legs,
            checks_unanswered: unanswered[0] + unanswered[1],
            payloads: self.payloads,
            streams_untracked: self.streams_untracked,
            streams: self
                .streams
                .iter()
                .filter(|s| s.in_use)
                .map(|s| StreamReport {
                    ssrc: s.ssrc,
                    direction: s.dir,
                    kind: s.kind(),
                    clock_rate: (s.clock_rate != 0).then_some(s.clock_rate),
                    packets: s.packets,
                    bytes: s.bytes,
                    bitrate_bps: s.bitrate_at(now_us),
                    lost: s.lost(),
                    loss_ratio: s.loss_ratio(),
                    jitter_us: s.jitter_us(),
                    fps: s.fps_at(now_us),
                    rtcp: s.rtcp,
                })
                .collect(),
        }
    }

    /// The end-of-session summary for the log, written without collecting anything: the
    /// state at the last relayed packet, RTT p50/p95 per leg, each stream's loss and jitter.
    pub fn summary(&self) -> Summary<'_> {
        Summary { q: self }
    }
}

/// A leg's figures for the admin API.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LegReport {
    pub recent_us: Option<u32>,
    pub smoothed_us: Option<u32>,
    pub p50_us: Option<u32>,
    pub p95_us: Option<u32>,
    pub samples: u32,
    pub checks: u32,
    pub answered: u32,
    pub unanswered: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StreamReport {
    pub ssrc: u32,
    pub direction: Direction,
    pub kind: Kind,
    pub clock_rate: Option<u32>,
    pub packets: u64,
    pub bytes: u64,
    pub bitrate_bps: u64,
    pub lost: u32,
    pub loss_ratio: f64,
    pub jitter_us: Option<u32>,
    pub fps: f64,
    /// RTCP packets this SSRC sent the same way, by type slot.
    pub rtcp: [u32; RTCP_SLOTS],
}

/// One allocation's quality as the admin API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct QualityReport {
    pub state: SessionState,
    /// Index [`Leg::Client`], [`Leg::Peer`].
    pub legs: [LegReport; 2],
    pub checks_unanswered: u32,
    pub payloads: [[u64; CLASSES]; 2],
    pub streams_untracked: u32,
    pub streams: Vec<StreamReport>,
}

/// See [`Quality::summary`].
pub struct Summary<'a> {
    q: &'a Quality,
}

fn ms(us: Option<u32>) -> f64 {
    us.map_or(-1.0, |u| f64::from(u) / 1000.0)
}

impl Summary<'_> {
    pub fn state(&self) -> &'static str {
        self.q.state_at(self.q.last_us).as_str()
    }

    /// RTT p50 and p95 of a leg in milliseconds; -1 without samples.
    pub fn rtt_ms(&self, leg: Leg) -> (f64, f64) {
        let l = &self.q.legs[leg as usize];
        (ms(l.quantile_us(0.5)), ms(l.quantile_us(0.95)))
    }

    pub fn checks_unanswered(&self) -> u32 {
        self.q.unanswered_at(self.q.last_us).iter().sum()
    }
}

/// The streams, `;`-separated: `ssrc/direction/kind packets lost loss% jitter_ms`.
impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.q.streams.iter().filter(|s| s.in_use).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "{}/{}/{} packets={} lost={} loss={:.2}% jitter_ms=",
                s.ssrc,
                s.dir.as_str(),
                s.kind().as_str(),
                s.packets,
                s.lost(),
                s.loss_ratio() * 100.0
            )?;
            match s.jitter_us() {
                Some(j) => write!(f, "{:.1}", f64::from(j) / 1000.0)?,
                None => f.write_str("-")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
