//! What a fleet driver (`src/fleet/`, Redis) hands the core and takes from it, sans I/O:
//! the shared store's view (users, secrets, revocations), the end of revoked allocations,
//! redirects of new allocations away from a loaded node, and allocation events.
//!
//! The core never waits on the store: a new view is swapped in whole, and lookups read the
//! last one (DESIGN.md principle 2).

use super::*;
use crate::auth::StoreView;

/// Most allocation events held between two [`Server::take_events`]; past it new events are
/// counted as lost rather than held (the store may be down for a while).
pub const MAX_PENDING_EVENTS: usize = 65_536;

/// What happened to an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocationEventKind {
    Created,
    Refreshed,
    Ended,
}

impl AllocationEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocationEventKind::Created => "created",
            AllocationEventKind::Refreshed => "refreshed",
            AllocationEventKind::Ended => "ended",
        }
    }
}

/// One allocation event, for the fleet's event stream.
#[derive(Clone, Debug)]
pub struct AllocationEvent {
    pub kind: AllocationEventKind,
    /// The allocation's id on its worker ([`SessionInfo::id`]).
    pub id: u64,
    pub unix: u64,
    pub username: String,
    pub client: SocketAddr,
    pub transport: &'static str,
    pub relayed: Vec<SocketAddr>,
    pub lifetime_secs: u64,
    pub bytes_to_peer: u64,
    pub bytes_from_peer: u64,
    pub packets_to_peer: u64,
    pub packets_from_peer: u64,
    /// Why it ended (`Ended` only).
    pub reason: Option<EndReason>,
    /// The session's call quality (`Ended` only, when telemetry observed it).
    pub quality: Option<QualitySummary>,
}

/// An ended session's call quality, as its "call quality" log line gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct QualitySummary {
    /// At the last relayed packet (`active`, `media_stalled`, ...).
    pub state: &'static str,
    /// RTT p50 and p95 per leg in milliseconds; -1 without samples.
    pub client_rtt_ms: (f64, f64),
    pub peer_rtt_ms: (f64, f64),
    pub checks_unanswered: u32,
    /// The RTP streams, `;`-separated: `ssrc/direction/kind packets lost loss% jitter_ms`.
    pub streams: String,
}

/// Events captured by a core, when a driver asked for them.
#[derive(Default)]
pub(super) struct EventLog {
    pub(super) enabled: bool,
    pub(super) pending: Vec<AllocationEvent>,
    pub(super) lost: u64,
}

impl Server {
    /// Swaps in a new view of the shared store: new requests authenticate against it (a
    /// reload keeps it). Then ends the live allocations whose credential it revokes, and
    /// returns how many.
    pub fn set_store(&mut self, store: Arc<StoreView>, now: Time, io: &mut impl Io) -> usize {
        self.cfg.live.policy = with_store_ranges(&self.file_policy, &store);
        let auth = (*self.cfg.live.auth).clone().with_store(store);
        self.cfg.live.auth = Arc::new(auth);
        self.end_revoked(now, io)
    }

    /// Ends every allocation whose credential the store's view revokes at `now`.
    pub fn end_revoked(&mut self, now: Time, io: &mut impl Io) -> usize {
        let store = self.cfg.live.auth.store().clone();
        if store.revoked_count() == 0 {
            return 0;
        }
        let sep = self.cfg.rest_separator;
        let revoked: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let a = s.as_ref()?;
                let user = display_user(&a.username, sep);
                store
                    .is_revoked(&a.username, user, Some(now.unix))
                    .then_some(i)
            })
            .collect();
        for &slot in &revoked {
            self.delete(slot, EndReason::Revoked, now.mono, io);
        }
        revoked.len()
    }

    /// Answers new Allocates with 300 and an ALTERNATE-SERVER of the client's family from
    /// `alternates` (None: grant them again), as a drain does, but reversibly: a node over
    /// its load threshold sends new clients to a less loaded one. `domain` goes out as
    /// ALTERNATE-DOMAIN to clients over TLS (RFC 8489 §14.16). A drain takes precedence.
    pub fn set_redirect(&mut self, alternates: Option<&[SocketAddr]>, domain: Option<String>) {
        self.redirect = alternates.map(|alts| {
            let mut by_family = [None, None];
            for a in alts {
                by_family[Family::of(a.ip()).index()].get_or_insert(*a);
            }
            by_family
        });
        self.alternate_domain = domain;
    }

    /// Whether new Allocates are redirected (a drain or [`Server::set_redirect`]).
    pub fn is_redirecting(&self) -> bool {
        self.draining.is_some() || self.redirect.is_some()
    }

    /// Starts (or stops) keeping allocation events for [`Server::take_events`].
    pub fn capture_events(&mut self, on: bool) {
        self.events.enabled = on;
        if !on {
            self.events.pending = Vec::new();
        }
    }

    /// The events since the last call, and how many were lost to the cap since then.
    pub fn take_events(&mut self) -> (Vec<AllocationEvent>, u64) {
        let lost = std::mem::take(&mut self.events.lost);
        (std::mem::take(&mut self.events.pending), lost)
    }

    /// Records an event of the allocation in `slot`, when events are captured.
    pub(super) fn record_event(
        &mut self,
        slot: usize,
        kind: AllocationEventKind,
        unix: u64,
        reason: Option<EndReason>,
    ) {
        if !self.events.enabled {
            return;
        }
        let Some(a) = self.slots.get(slot).and_then(|s| s.as_ref()) else {
            return;
        };
        let ev = event_of(a, kind, unix, reason);
        self.push_event(ev);
    }

    pub(super) fn push_event(&mut self, ev: AllocationEvent) {
        if self.events.pending.len() >= MAX_PENDING_EVENTS {
            self.events.lost += 1;
            return;
        }
        self.events.pending.push(ev);
    }
}

/// The file's peer policy with the store's peer ranges (coturn's `allowed-peer-ip` and
/// `denied-peer-ip`) added; a range that does not parse is skipped.
pub(super) fn with_store_ranges(file: &PeerPolicy, store: &StoreView) -> PeerPolicy {
    if store.allowed_peers.is_empty() && store.denied_peers.is_empty() {
        return file.clone();
    }
    let parse = |list: &[String]| -> Vec<crate::turn::peer_policy::Cidr> {
        list.iter()
            .filter_map(|r| crate::turn::peer_policy::parse_range(r).ok())
            .flatten()
            .collect()
    };
    file.clone()
        .with_rules(&parse(&store.allowed_peers), &parse(&store.denied_peers))
}

pub(super) fn event_of(
    a: &Allocation,
    kind: AllocationEventKind,
    unix: u64,
    reason: Option<EndReason>,
) -> AllocationEvent {
    let c = &a.counters;
    AllocationEvent {
        kind,
        id: a.id,
        unix,
        username: a.username.clone(),
        client: a.five_tuple.client,
        transport: a.five_tuple.transport.as_str(),
        relayed: a.relays.iter().flatten().map(|r| r.advertised).collect(),
        lifetime_secs: 0,
        bytes_to_peer: c.bytes_to_peer,
        bytes_from_peer: c.bytes_from_peer,
        packets_to_peer: c.packets_to_peer,
        packets_from_peer: c.packets_from_peer,
        reason,
        quality: match (kind, &a.quality) {
            (AllocationEventKind::Ended, Some(q)) => {
                let s = q.summary();
                Some(QualitySummary {
                    state: s.state(),
                    client_rtt_ms: s.rtt_ms(crate::quality::Leg::Client),
                    peer_rtt_ms: s.rtt_ms(crate::quality::Leg::Peer),
                    checks_unanswered: s.checks_unanswered(),
                    streams: s.to_string(),
                })
            }
            _ => None,
        },
    }
}
