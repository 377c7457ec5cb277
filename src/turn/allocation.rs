//! One allocation: its relay sockets, permissions, channels, lifetime and counters.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::bandwidth::TokenBucket;
use super::ports::Family;
use super::quota::QuotaHold;
use super::stats::DROP_REASONS;
use super::{FastPathEntry, FiveTuple, KernelCounts, RelayId, Time};
use crate::quality::Quality;

/// RFC 8656 §9: a permission lasts 300 seconds unless refreshed.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 §12: a channel binding lasts 600 seconds unless refreshed.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 §12: after a binding expires, its number and peer stay reserved for 5 minutes.
pub const CHANNEL_QUARANTINE: Duration = Duration::from_secs(300);
/// How long a response is kept to answer a retransmission (RFC 8489 §6.3.1: 40 s for UDP).
pub const RETRANSMIT_WINDOW: Duration = Duration::from_secs(40);
const RETRANSMIT_CACHE: usize = 8;

#[derive(Clone, Copy, Debug)]
pub struct Relay {
    pub id: RelayId,
    pub family: Family,
    pub port: u16,
    /// The address the socket is bound to.
    pub bound: SocketAddr,
    /// The address put in XOR-RELAYED-ADDRESS (differs behind 1:1 NAT).
    pub advertised: SocketAddr,
}

#[derive(Clone, Copy, Debug)]
pub struct Channel {
    pub peer: SocketAddr,
    pub expires: Instant,
}

/// Relayed traffic counters, plain integers owned by the worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_from_peer: u64,
    pub bytes_from_peer: u64,
    pub dropped_no_permission: u64,
    /// Dropped packets by [`super::stats::DropReason`], both directions.
    pub drops: [u64; DROP_REASONS],
}

#[derive(Debug)]
pub struct Allocation {
    pub five_tuple: FiveTuple,
    /// Index 0: IPv4 relay, 1: IPv6 relay (a dual allocation has both).
    pub relays: [Option<Relay>; 2],
    pub username: String,
    /// Unix expiry of a REST credential.
    pub credential_expiry: Option<u64>,
    pub expires: Instant,
    pub created: Instant,
    pub created_unix: u64,
    pub permissions: FxHashMap<IpAddr, Instant>,
    pub channels: FxHashMap<u16, Channel>,
    pub channel_by_peer: FxHashMap<SocketAddr, u16>,
    /// Recent responses by transaction, for retransmissions (RFC 8656 §7.2).
    pub responses: VecDeque<([u8; 12], Instant, Vec<u8>)>,
    /// The earliest deadline already queued in the server's timer heap.
    pub scheduled: Option<Instant>,
    pub counters: Counters,
    /// An RFC 6062 TCP allocation: the relay is a TCP listener, no Send or channels.
    pub tcp: bool,
    /// Unique in the worker's life: the id of the first relay socket.
    pub id: u64,
    /// The allocation's count in the quotas, given back when the allocation is dropped, and
    /// the bandwidth limit granted at Allocate (its `bps` is reserved in the quotas).
    pub quota: QuotaHold,
    /// Holds a lease in the fleet's store (strict fleet quotas), given back when it ends.
    pub leased: bool,
    /// Client to peer, and peer to client (RFC 8656 leaves rate limiting to the server).
    pub bucket_to_peer: TokenBucket,
    pub bucket_to_client: TokenBucket,
    /// Call quality (`telemetry.enabled`): made on the first relayed packet, so an idle
    /// allocation carries only this pointer.
    pub quality: Option<Box<Quality>>,
    /// The channels installed in the kernel fast path (`server.kernel-offload`), what the
    /// kernel relayed for this allocation (already part of `counters`), and the last
    /// reading of its current kernel counter slot.
    pub fast: Vec<FastPathEntry>,
    pub kernel: KernelCounts,
    pub kernel_seen: KernelCounts,
}

/// What [`Allocation::new`] needs: the granted relays, the authenticated user and the
/// lifetime the Allocate response states.
pub struct NewAllocation {
    pub five_tuple: FiveTuple,
    pub relays: [Option<Relay>; 2],
    pub username: String,
    pub credential_expiry: Option<u64>,
    pub now: Time,
    pub lifetime: Duration,
    /// The allocation's count in the quotas; its rate is the bandwidth limit.
    pub quota: QuotaHold,
    /// An RFC 6062 TCP allocation.
    pub tcp: bool,
}

impl Allocation {
    pub fn new(n: NewAllocation) -> Allocation {
        let primary = n.relays.iter().flatten().next().map_or(0, |r| r.id.0);
        Allocation {
            five_tuple: n.five_tuple,
            relays: n.relays,
            username: n.username,
            credential_expiry: n.credential_expiry,
            expires: n.now.mono + n.lifetime,
            created: n.now.mono,
            created_unix: n.now.unix,
            permissions: FxHashMap::default(),
            channels: FxHashMap::default(),
            channel_by_peer: FxHashMap::default(),
            responses: VecDeque::new(),
            scheduled: None,
            counters: Counters::default(),
            tcp: n.tcp,
            id: primary,
            bucket_to_peer: TokenBucket::new(n.quota.rate(), n.now.mono),
            bucket_to_client: TokenBucket::new(n.quota.rate(), n.now.mono),
            quota: n.quota,
            leased: false,
            quality: None,
            fast: Vec::new(),
            kernel: KernelCounts::default(),
            kernel_seen: KernelCounts::default(),
        }
    }

    pub fn relay_for(&self, peer: &SocketAddr) -> Option<&Relay> {
        self.relays[Family::of(peer.ip()).index()].as_ref()
    }

    pub fn has_permission(&self, ip: &IpAddr, now: Instant) -> bool {
        self.permissions.get(ip).is_some_and(|&e| now < e)
    }

    /// The peer of a live channel.
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels
            .get(&number)
            .filter(|c| now < c.expires)
            .map(|c| c.peer)
    }

    /// The live channel bound to a peer, if any.
    pub fn channel_for(&self, peer: &SocketAddr, now: Instant) -> Option<u16> {
        let n = *self.channel_by_peer.get(peer)?;
        self.channels.get(&n).filter(|c| now < c.expires).map(|_| n)
    }

    /// The cached response of a retransmitted request.
    pub fn cached_response(&self, txid: &[u8; 12], now: Instant) -> Option<&[u8]> {
        self.responses
            .iter()
            .find(|(t, exp, _)| t == txid && now < *exp)
            .map(|(_, _, r)| r.as_slice())
    }

    pub fn cache_response(&mut self, txid: [u8; 12], now: Instant, response: &[u8]) {
        while self.responses.len() >= RETRANSMIT_CACHE
            || self
                .responses
                .front()
                .is_some_and(|(_, exp, _)| *exp <= now)
        {
            self.responses.pop_front();
        }
        self.responses
            .push_back((txid, now + RETRANSMIT_WINDOW, response.to_vec()));
    }

    /// Drops expired permissions and channels past their quarantine.
    pub fn sweep(&mut self, now: Instant) {
        self.permissions.retain(|_, e| now < *e);
        let before = self.channels.len();
        self.channels
            .retain(|_, c| now < c.expires + CHANNEL_QUARANTINE);
        if self.channels.len() != before {
            let channels = &self.channels;
            self.channel_by_peer.retain(|_, n| channels.contains_key(n));
        }
    }

    /// Live permissions.
    pub fn live_permissions(&self, now: Instant) -> usize {
        self.permissions.values().filter(|e| now < **e).count()
    }

    /// Live channel bindings.
    pub fn live_channels(&self, now: Instant) -> usize {
        self.channels.values().filter(|c| now < c.expires).count()
    }

    /// The next moment something of this allocation ends.
    pub fn next_deadline(&self) -> Instant {
        let mut d = self.expires;
        for e in self.permissions.values() {
            d = d.min(*e);
        }
        for c in self.channels.values() {
            d = d.min(c.expires + CHANNEL_QUARANTINE);
        }
        d
    }
}
