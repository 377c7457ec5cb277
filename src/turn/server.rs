//! The request handlers and the data path of one worker's TURN server.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha12Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use super::allocation::{
    Allocation, CHANNEL_LIFETIME, CHANNEL_QUARANTINE, Channel, Counters, NewAllocation,
    PERMISSION_LIFETIME, Relay,
};
use super::error::{self, reason};
use super::peer_policy::PeerPolicy;
use super::ports::{Family, PortPool};
use super::quota::{QuotaHold, Quotas};
use super::rate_limit::ResponseLimiter;
use super::stats::{
    CODE_SLOTS, DROP_REASONS, DropReason, Gauges, METHOD_SLOTS, SessionInfo, Traffic, code_slot,
    method_slot, transport_slot,
};
use super::{
    BindError, FiveTuple, Io, PEER_HEADROOM, PEER_TAILROOM, RelayId, RelayOptions, Time, Transport,
};
use crate::auth::{AuthError, Authenticator, Key, PasswordAlgorithm, display_user};
use crate::stun::{
    Class, HEADER_LEN, Integrity, MAGIC_COOKIE, Message, MessageWriter, attr, channel_data,
    decode_xor_address, encode_xor_address, message_type, method,
};

#[path = "tcp_relay.rs"]
mod tcp_relay;

/// PASSWORD-ALGORITHMS as this server sends it: SHA-256 preferred, then MD5
/// (RFC 8489 §14.11), each with empty parameters.
const PASSWORD_ALGORITHMS_VALUE: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];
/// RFC 8489 §14.3: USERNAME is less than 513 bytes.
const MAX_USERNAME: usize = 513;
/// How many times Allocate tries another port when a bind finds it taken.
const BIND_ATTEMPTS: usize = 8;

/// The size of this server's 401 to a request with FINGERPRINT: the unit in which the
/// unauthenticated-answer allowance (`limits.unauth-rate`, `limits.unauth-burst`) is counted.
pub fn challenge_len(realm: &str) -> usize {
    let attr = |len: usize| 4 + len.next_multiple_of(4);
    HEADER_LEN
        + attr(4 + reason(error::UNAUTHENTICATED).len())
        + attr(realm.len())
        + attr(crate::auth::NONCE_LEN)
        + attr(PASSWORD_ALGORITHMS_VALUE.len())
        + attr(4)
}

/// Everything one worker's server needs; shared parts are behind `Arc`.
pub struct ServerConfig {
    pub auth: Arc<Authenticator>,
    pub policy: PeerPolicy,
    pub ports: Arc<Mutex<PortPool>>,
    pub quotas: Arc<Quotas>,
    /// Per family (0: IPv4, 1: IPv6): the relay IP to bind and the IP to advertise.
    pub relay_ips: [Option<(IpAddr, IpAddr)>; 2],
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    /// SOFTWARE for authenticated responses; None sends none.
    pub software: Option<String>,
    pub mapped_address: bool,
    pub enforce_credential_expiry: bool,
    /// ChannelBind grants only RFC 8656 §12's 0x4000-0x4FFF; false: RFC 5766 §11's
    /// 0x4000-0x7FFF (`server.strict-channel-numbers`).
    pub strict_channel_numbers: bool,
    pub rest_separator: char,
    /// Most permissions one allocation may hold.
    pub max_permissions: usize,
    /// Random bytes from the driver: seeds transaction ids and reservation tokens.
    pub secret: [u8; 32],
    /// Abuse limits (the `[limits]` config section).
    pub limits: Limits,
    /// The budget of responses to unauthenticated requests per source, one table shared by
    /// every worker (`limits.unauth-rate`, `limits.unauth-burst`).
    pub unauth_limiter: Arc<ResponseLimiter>,
}

/// Limits against reflection and state exhaustion (`[limits]` in the config).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Most channel bindings (live or in their RFC 8656 §12 quarantine) per allocation;
    /// over it ChannelBind gets 508.
    pub max_channels: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_channels: 1024 }
    }
}

/// Server-wide counters of one worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub malformed: u64,
    pub requests: u64,
    pub error_responses: u64,
    pub auth_failures: u64,
    pub allocations_created: u64,
    pub allocations_deleted: u64,
    pub relayed_to_peer: u64,
    pub relayed_from_peer: u64,
    pub dropped: u64,
    /// Unauthenticated responses not sent: the source was over its budget.
    pub rate_limited: u64,
    /// MESSAGE-INTEGRITY checks computed by the authenticate path, decoy checks for unknown
    /// users included (one per signed request from a static user, known or not).
    pub integrity_checks: u64,
    /// Relayed data by direction (coturn's rcv/sent/peer_rcv/peer_sent).
    pub traffic: Traffic,
    /// Dropped relayed packets by [`DropReason`].
    pub drops: [u64; DROP_REASONS],
    /// Requests by method slot ([`super::stats::METHODS`]).
    pub requests_by_method: [u64; METHOD_SLOTS],
    /// Error responses by method slot and code slot ([`super::stats::CODES`]).
    pub errors_by_method: [[u64; CODE_SLOTS]; METHOD_SLOTS],
}

/// Adds to a traffic counter on the packet path. Compiled out under
/// `RUSTFLAGS="--cfg turnd_no_stats"`, which exists only to measure what counting costs
/// (`examples/relay_cost.rs`); never build a server that way.
#[inline(always)]
fn bump(counter: &mut u64, n: u64) {
    #[cfg(not(turnd_no_stats))]
    {
        *counter += n;
    }
    #[cfg(turnd_no_stats)]
    {
        let _ = (counter, n);
    }
}

/// The client-to-peer half of the data path, after the allocation and the peer are known
/// (from a channel or a Send indication): the permission (RFC 8656 §12: data goes only to a
/// permitted peer), the relay socket of the peer's family, the bandwidth limit, the
/// counters, then the send. Always inlined: as a call it cost 32 more instructions per
/// packet pair (callgrind over `examples/relay_cost.rs`), inlined the same as the two copies
/// it replaces.
#[inline(always)]
fn forward_to_peer(
    stats: &mut Stats,
    a: &mut Allocation,
    now: Instant,
    peer: SocketAddr,
    payload: &[u8],
    io: &mut impl Io,
) {
    let len = payload.len();
    if !a.has_permission(&peer.ip(), now) {
        count_drop(stats, Some(&mut a.counters), DropReason::NoPermission);
        return;
    }
    let Some(id) = a.relay_for(&peer).map(|r| r.id) else {
        count_drop(stats, Some(&mut a.counters), DropReason::Unroutable);
        return;
    };
    if !a.bucket_to_peer.allow(now, len) {
        count_drop(stats, Some(&mut a.counters), DropReason::Bandwidth);
        return;
    }
    bump(&mut a.counters.packets_to_peer, 1);
    bump(&mut a.counters.bytes_to_peer, len as u64);
    bump(&mut stats.relayed_to_peer, 1);
    bump(&mut stats.traffic.peer_sentp, 1);
    bump(&mut stats.traffic.peer_sentb, len as u64);
    io.send_to_peer(id, peer, payload);
}

/// Counts a dropped relayed packet, on the server and (when known) on its allocation.
fn count_drop(stats: &mut Stats, counters: Option<&mut Counters>, why: DropReason) {
    stats.dropped += 1;
    stats.drops[why as usize] += 1;
    if let Some(c) = counters {
        c.drops[why as usize] += 1;
        if why == DropReason::NoPermission {
            c.dropped_no_permission += 1;
        }
    }
}

/// The result of a successful authentication.
struct Authed {
    key: Key,
    integrity: Integrity,
    expiry: Option<u64>,
}

/// Why an allocation ended, for the log line.
#[derive(Clone, Copy, Debug)]
pub enum EndReason {
    Refreshed0,
    Expired,
    Shutdown,
    /// Ended through the admin API.
    Admin,
}

pub struct Server {
    cfg: ServerConfig,
    slots: Vec<Option<Allocation>>,
    free_slots: Vec<usize>,
    by_tuple: FxHashMap<FiveTuple, usize>,
    by_relay: FxHashMap<RelayId, usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    next_relay: u64,
    /// Relay ports, Data indication transaction ids and reservation tokens: values a client
    /// sees or must not guess, so a CSPRNG (ChaCha12) seeded from the driver's OS randomness.
    rng: ChaCha12Rng,
    out: Vec<u8>,
    stats: Stats,
    /// RFC 6062 peer data connections.
    tcp: tcp_relay::TcpRelay,
    /// Set by [`Server::drain`]: Allocate is refused, per client family (0: IPv4, 1: IPv6)
    /// with a 300 pointing at that alternate server, or 508 where there is none.
    draining: Option<[Option<SocketAddr>; 2]>,
}

/// What a reload may change on a live server without ending any allocation or rebinding any
/// socket. Applied by [`Server::reconfigure`]; new requests see it, existing allocations keep
/// their relays, permissions and channels.
#[derive(Clone, Debug)]
pub struct Reconfigure {
    /// New users, REST secrets and realm. Build it with the running nonce key so the
    /// nonces already handed out stay valid, and with the running REST separator.
    pub auth: Arc<Authenticator>,
    pub policy: PeerPolicy,
    pub user_quota: u32,
    pub total_quota: u32,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub software: Option<String>,
    pub mapped_address: bool,
    pub enforce_credential_expiry: bool,
    pub strict_channel_numbers: bool,
}

impl Server {
    pub fn new(cfg: ServerConfig) -> Server {
        // The seed is derived from the secret rather than being it, so nothing the generator
        // gives out relates to the other uses of the secret.
        let seed: [u8; 32] = Sha256::new()
            .chain_update(b"turnd relay rng")
            .chain_update(cfg.secret)
            .finalize()
            .into();
        Server {
            rng: ChaCha12Rng::from_seed(seed),
            cfg,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_tuple: FxHashMap::default(),
            by_relay: FxHashMap::default(),
            timers: BinaryHeap::new(),
            next_relay: 1,
            out: Vec::with_capacity(1500),
            stats: Stats::default(),
            draining: None,
            tcp: Default::default(),
        }
    }

    /// Swaps in reloaded settings (see [`Reconfigure`]). The quota limits live in the
    /// [`Quotas`] every worker shares, so their live counts carry over unchanged.
    pub fn reconfigure(&mut self, r: Reconfigure) {
        self.cfg.auth = r.auth;
        // The listeners do not change on reload: neither does the own-address rule.
        let own = self.cfg.policy.own_addresses().to_vec();
        self.cfg.policy = r.policy.with_own_addresses(own);
        self.cfg.quotas.set_limits(r.user_quota, r.total_quota);
        self.cfg.default_lifetime = r.default_lifetime;
        self.cfg.max_lifetime = r.max_lifetime;
        self.cfg.software = r.software;
        self.cfg.mapped_address = r.mapped_address;
        self.cfg.enforce_credential_expiry = r.enforce_credential_expiry;
        self.cfg.strict_channel_numbers = r.strict_channel_numbers;
    }

    /// Stops granting new allocations; existing ones go on relaying and may be refreshed.
    /// From now on Allocate is answered with 300 (Try Alternate) and an ALTERNATE-SERVER of
    /// the client's address family from `alternates` (RFC 8656 §7.2, RFC 8489 §10), or with
    /// 508 (Insufficient Capacity) when there is none of that family.
    pub fn drain(&mut self, alternates: &[SocketAddr]) {
        let mut by_family = [None, None];
        for a in alternates {
            by_family[usize::from(a.is_ipv6())].get_or_insert(*a);
        }
        self.draining = Some(by_family);
    }

    /// Whether [`Server::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn allocation_count(&self) -> usize {
        self.by_tuple.len()
    }

    /// The relayed addresses of the allocation on a 5-tuple, for tests and the admin side.
    pub fn relayed_addresses(&self, ft: &FiveTuple) -> Vec<SocketAddr> {
        self.alloc(ft)
            .map(|a| a.relays.iter().flatten().map(|r| r.advertised).collect())
            .unwrap_or_default()
    }

    /// The traffic counters of the allocation on a 5-tuple.
    pub fn counters(&self, ft: &FiveTuple) -> Option<Counters> {
        self.alloc(ft).map(|a| a.counters)
    }

    /// Live allocations by transport, permissions and channels, for the metrics scrape.
    /// Walks every allocation: admin path only.
    pub fn gauges(&self, now: Instant) -> Gauges {
        let mut g = Gauges::default();
        for a in self.slots.iter().flatten() {
            g.allocations[transport_slot(a.five_tuple.transport)] += 1;
            g.permissions += a.live_permissions(now) as u64;
            g.channels += a.live_channels(now) as u64;
        }
        g
    }

    /// Every live allocation as the admin API shows it, optionally only those of `user`
    /// (a REST user without its timestamp).
    pub fn sessions(&self, now: Instant, user: Option<&str>) -> Vec<SessionInfo> {
        self.slots
            .iter()
            .flatten()
            .filter(|a| {
                user.is_none_or(|u| display_user(&a.username, self.cfg.rest_separator) == u)
            })
            .map(|a| self.session_info(a, now))
            .collect()
    }

    /// The allocation with this id (see [`SessionInfo::id`]).
    pub fn session(&self, id: u64, now: Instant) -> Option<SessionInfo> {
        self.slots
            .iter()
            .flatten()
            .find(|a| a.id == id)
            .map(|a| self.session_info(a, now))
    }

    /// Ends the allocation with this id now: its relay sockets close, its quotas are given
    /// back, and its client's next request gets 437 (RFC 8656 §7: no allocation on the
    /// 5-tuple). False when there is no such allocation.
    pub fn end_session(&mut self, id: u64, io: &mut impl Io) -> bool {
        let slot = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|a| a.id == id));
        match slot {
            Some(s) => {
                self.delete(s, EndReason::Admin, io);
                true
            }
            None => false,
        }
    }

    fn session_info(&self, a: &Allocation, now: Instant) -> SessionInfo {
        let c = &a.counters;
        SessionInfo {
            id: a.id,
            user: display_user(&a.username, self.cfg.rest_separator).to_string(),
            username: a.username.clone(),
            client: a.five_tuple.client,
            server: a.five_tuple.server,
            transport: a.five_tuple.transport,
            relayed: a.relays.iter().flatten().map(|r| r.advertised).collect(),
            started_unix: a.created_unix,
            lifetime_left_secs: a.expires.saturating_duration_since(now).as_secs(),
            peers: a.live_permissions(now),
            channels: a.live_channels(now),
            max_bps: a.quota.rate().bps,
            packets_to_peer: c.packets_to_peer,
            bytes_to_peer: c.bytes_to_peer,
            packets_from_peer: c.packets_from_peer,
            bytes_from_peer: c.bytes_from_peer,
            drops: c.drops,
        }
    }

    fn alloc(&self, ft: &FiveTuple) -> Option<&Allocation> {
        let &i = self.by_tuple.get(ft)?;
        self.slots.get(i)?.as_ref()
    }

    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A transaction id for a message this server starts (Data indications, RFC 6062
    /// ConnectionAttempt).
    fn random_txid(&mut self) -> [u8; 12] {
        let mut txid = [0u8; 12];
        self.rng.fill_bytes(&mut txid);
        txid
    }

    // ---------------------------------------------------------------- input

    /// A datagram (or a frame cut from a stream) from a client.
    pub fn handle_client(&mut self, now: Time, ft: FiveTuple, data: &[u8], io: &mut impl Io) {
        let Some(&first) = data.first() else {
            return;
        };
        if channel_data::is_channel_data(first) {
            self.handle_channel_data(now.mono, &ft, data, io);
            return;
        }
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed += 1;
                debug!(client = %ft.client, error = ?e, "dropped malformed message");
                return;
            }
        };
        match msg.class() {
            Class::Request => {
                self.stats.requests += 1;
                self.stats.requests_by_method[method_slot(msg.method())] += 1;
                self.handle_request(now, &ft, &msg, io);
            }
            Class::Indication if msg.method() == method::SEND => {
                self.handle_send(now.mono, &ft, &msg, io)
            }
            _ => {}
        }
    }

    /// A datagram from a peer to a relay socket. The payload is `buf[payload]`;
    /// the driver leaves [`PEER_HEADROOM`] bytes before it and [`PEER_TAILROOM`] after it so
    /// the header can be written in place.
    pub fn handle_peer(
        &mut self,
        now: Time,
        relay: RelayId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: std::ops::Range<usize>,
        io: &mut impl Io,
    ) {
        let (start, end) = (payload.start, payload.end);
        let len = end.saturating_sub(start);
        if start < PEER_HEADROOM || end + PEER_TAILROOM > buf.len() || len > 0xFFFF - 64 {
            count_drop(&mut self.stats, None, DropReason::Unroutable);
            return;
        }
        let Some(&slot) = self.by_relay.get(&relay) else {
            return;
        };
        let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return;
        };
        let now = now.mono;
        bump(&mut self.stats.traffic.peer_rcvp, 1);
        bump(&mut self.stats.traffic.peer_rcvb, len as u64);
        if !a.has_permission(&peer.ip(), now) {
            count_drop(
                &mut self.stats,
                Some(&mut a.counters),
                DropReason::NoPermission,
            );
            return;
        }
        if !a.bucket_to_client.allow(now, len) {
            count_drop(
                &mut self.stats,
                Some(&mut a.counters),
                DropReason::Bandwidth,
            );
            return;
        }
        bump(&mut a.counters.packets_from_peer, 1);
        bump(&mut a.counters.bytes_from_peer, len as u64);
        bump(&mut self.stats.relayed_from_peer, 1);
        bump(&mut self.stats.traffic.sentp, 1);
        bump(&mut self.stats.traffic.sentb, len as u64);
        let client = a.five_tuple;
        let stream = client.transport != Transport::Udp;
        if let Some(number) = a.channel_for(&peer, now) {
            // RFC 8656 §12.5: ChannelData over a stream is padded to 4 bytes.
            let pad = if stream { (4 - len % 4) % 4 } else { 0 };
            buf[start - 4..start].copy_from_slice(&channel_data::header(number, len as u16));
            buf[end..end + pad].fill(0);
            io.send_to_client(&client, &buf[start - 4..end + pad]);
            return;
        }
        // A Data indication written in place around the payload (RFC 8656 §11.6).
        let txid = self.random_txid();
        let mut xaddr = [0u8; 20];
        let alen = encode_xor_address(peer, &txid, &mut xaddr);
        let pad = (4 - len % 4) % 4;
        let prefix = HEADER_LEN + 4 + alen + 4;
        let h = start - prefix;
        let body_len = (prefix - HEADER_LEN + len + pad) as u16;
        buf[h..h + 2].copy_from_slice(&message_type(method::DATA, Class::Indication).to_be_bytes());
        buf[h + 2..h + 4].copy_from_slice(&body_len.to_be_bytes());
        buf[h + 4..h + 8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf[h + 8..h + 20].copy_from_slice(&txid);
        let mut p = h + 20;
        buf[p..p + 2].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
        buf[p + 2..p + 4].copy_from_slice(&(alen as u16).to_be_bytes());
        buf[p + 4..p + 4 + alen].copy_from_slice(&xaddr[..alen]);
        p += 4 + alen;
        buf[p..p + 2].copy_from_slice(&attr::DATA.to_be_bytes());
        buf[p + 2..p + 4].copy_from_slice(&(len as u16).to_be_bytes());
        buf[end..end + pad].fill(0);
        io.send_to_client(&client, &buf[h..end + pad]);
    }

    /// The earliest moment [`Server::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let alloc = self.timers.peek().map(|Reverse((t, _))| *t);
        match (alloc, self.tcp_poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires permissions, channels and allocations whose time has come.
    pub fn handle_timeout(&mut self, now: Time, io: &mut impl Io) {
        self.tcp_handle_timeout(now.mono, io);
        while let Some(&Reverse((t, slot))) = self.timers.peek() {
            if t > now.mono {
                break;
            }
            self.timers.pop();
            let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
                continue;
            };
            if a.scheduled != Some(t) {
                continue;
            }
            a.scheduled = None;
            if a.expires <= now.mono {
                self.delete(slot, EndReason::Expired, io);
                continue;
            }
            a.sweep(now.mono);
            self.schedule(slot);
        }
    }

    /// Ends every allocation (shutdown).
    pub fn close_all(&mut self, io: &mut impl Io) {
        let slots: Vec<usize> = self.by_tuple.values().copied().collect();
        for s in slots {
            self.delete(s, EndReason::Shutdown, io);
        }
    }

    /// Ends the allocation on a 5-tuple now (its transport connection closed).
    pub fn close_tuple(&mut self, ft: &FiveTuple, io: &mut impl Io) {
        self.tcp_forget(ft);
        if let Some(&s) = self.by_tuple.get(ft) {
            self.delete(s, EndReason::Shutdown, io);
        }
    }

    // ----------------------------------------------------------- data path

    fn handle_channel_data(&mut self, now: Instant, ft: &FiveTuple, data: &[u8], io: &mut impl Io) {
        let Some((number, payload)) = channel_data::parse(data) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(a) = self
            .by_tuple
            .get(ft)
            .and_then(|&slot| self.slots.get_mut(slot))
            .and_then(|s| s.as_mut())
        else {
            count_drop(&mut self.stats, None, DropReason::NoAllocation);
            return;
        };
        let len = payload.len();
        bump(&mut self.stats.traffic.rcvp, 1);
        bump(&mut self.stats.traffic.rcvb, len as u64);
        let Some(peer) = a.channel_peer(number, now) else {
            count_drop(
                &mut self.stats,
                Some(&mut a.counters),
                DropReason::NoChannel,
            );
            return;
        };
        forward_to_peer(&mut self.stats, a, now, peer, payload, io);
    }

    /// Send indication (RFC 8656 §11.3): no authentication, no answer; dropped unless a
    /// permission exists.
    fn handle_send(&mut self, now: Instant, ft: &FiveTuple, msg: &Message<'_>, io: &mut impl Io) {
        let Some(&slot) = self.by_tuple.get(ft) else {
            count_drop(&mut self.stats, None, DropReason::NoAllocation);
            return;
        };
        let (Some(Ok(peer)), Some(data)) =
            (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
        else {
            return;
        };
        if msg.attributes().any(|(t, _)| !attr::is_understood(t)) {
            return;
        }
        // A permission is per IP; the server's own listen ports on that IP stay closed.
        if self.cfg.policy.is_own_address(peer) {
            self.stats.dropped += 1;
            return;
        }
        let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return;
        };
        if a.tcp {
            return;
        }
        let len = data.len();
        bump(&mut self.stats.traffic.rcvp, 1);
        bump(&mut self.stats.traffic.rcvb, len as u64);
        forward_to_peer(&mut self.stats, a, now, peer, data, io);
    }

    // ------------------------------------------------------------ requests

    fn handle_request(&mut self, now: Time, ft: &FiveTuple, msg: &Message<'_>, io: &mut impl Io) {
        let m = msg.method();
        if m == method::BINDING {
            self.handle_binding(now.mono, ft, msg, io);
            return;
        }
        if !matches!(
            m,
            method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND
                | method::CONNECT
                | method::CONNECTION_BIND
        ) {
            self.send_unauth_error(now.mono, ft, msg, error::BAD_REQUEST, io);
            return;
        }
        // A retransmission gets the answer the original got (RFC 8489 §6.3.1).
        if let Some(a) = self.alloc(ft) {
            let txid = msg.transaction_id();
            if let Some(r) = a.cached_response(&txid, now.mono) {
                io.send_to_client(ft, r);
                return;
            }
        }
        let Some(auth) = self.authenticate(now, ft, msg, io) else {
            return;
        };
        let mut unknown = [0u16; 16];
        let mut n_unknown = 0;
        for (t, _) in msg.attributes() {
            if !attr::is_understood(t)
                && n_unknown < unknown.len()
                && !unknown[..n_unknown].contains(&t)
            {
                unknown[n_unknown] = t;
                n_unknown += 1;
            }
        }
        if n_unknown > 0 {
            let mut v = [0u8; 32];
            for (i, t) in unknown[..n_unknown].iter().enumerate() {
                v[2 * i..2 * i + 2].copy_from_slice(&t.to_be_bytes());
            }
            let mut w = self.writer(msg, Class::Error);
            w.error_code(error::UNKNOWN_ATTRIBUTE, reason(error::UNKNOWN_ATTRIBUTE))
                .attr(attr::UNKNOWN_ATTRIBUTES, &v[..2 * n_unknown]);
            self.count_error(m, error::UNKNOWN_ATTRIBUTE);
            self.seal_and_send(ft, msg, Some(&auth), io);
            return;
        }
        match m {
            method::ALLOCATE => self.handle_allocate(now, ft, msg, &auth, io),
            method::REFRESH => self.handle_refresh(now, ft, msg, &auth, io),
            method::CREATE_PERMISSION => self.handle_create_permission(now, ft, msg, &auth, io),
            method::CONNECT => self.handle_connect(ft, msg, &auth, io),
            method::CONNECTION_BIND => self.handle_connection_bind(ft, msg, &auth, io),
            _ => self.handle_channel_bind(now, ft, msg, &auth, io),
        }
    }

    /// Binding (RFC 8489 §6.3.1): stateless, unauthenticated.
    fn handle_binding(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        msg: &Message<'_>,
        io: &mut impl Io,
    ) {
        let mut unknown = [0u8; 32];
        let mut n = 0;
        for (t, _) in msg.attributes() {
            if !attr::is_understood(t) && n < unknown.len() {
                unknown[n..n + 2].copy_from_slice(&t.to_be_bytes());
                n += 2;
            }
        }
        let mapped = self.cfg.mapped_address;
        let mut w = self.writer(msg, if n > 0 { Class::Error } else { Class::Success });
        if n > 0 {
            w.error_code(error::UNKNOWN_ATTRIBUTE, reason(error::UNKNOWN_ATTRIBUTE))
                .attr(attr::UNKNOWN_ATTRIBUTES, &unknown[..n]);
        } else {
            w.xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
            if mapped {
                w.address(attr::MAPPED_ADDRESS, ft.client);
            }
        }
        if self.seal_and_send_unauth(now, ft, msg, io) && n > 0 {
            self.count_error(method::BINDING, error::UNKNOWN_ATTRIBUTE);
        }
    }

    /// The long-term credential mechanism (RFC 8489 §9.2.4). Sends the error and returns
    /// None when the request does not pass.
    ///
    /// The nonce is checked after the integrity, as §9.2.4 orders it: a stale nonce on a
    /// request whose MESSAGE-INTEGRITY is valid gets its 438 whatever the source's budget for
    /// unauthenticated answers, because the request proves its sender holds the key.
    fn authenticate(
        &mut self,
        now: Time,
        ft: &FiveTuple,
        msg: &Message<'_>,
        io: &mut impl Io,
    ) -> Option<Authed> {
        if !msg.has_integrity() {
            self.challenge(now, ft, msg, error::UNAUTHENTICATED, false, io);
            return None;
        }
        let (Some(realm), Some(nonce)) = (msg.get(attr::REALM), msg.get(attr::NONCE)) else {
            self.send_unauth_error(now.mono, ft, msg, error::BAD_REQUEST, io);
            return None;
        };
        let Some(user) = msg.get(attr::USERNAME) else {
            // USERHASH (RFC 8489 §14.4) is not supported: a client that sent only the hash
            // is challenged, so it can retry with USERNAME.
            if msg.get(attr::USERHASH).is_some() {
                self.challenge(now, ft, msg, error::UNAUTHENTICATED, false, io);
            } else {
                self.send_unauth_error(now.mono, ft, msg, error::BAD_REQUEST, io);
            }
            return None;
        };
        let Ok(user) = std::str::from_utf8(user) else {
            self.send_unauth_error(now.mono, ft, msg, error::BAD_REQUEST, io);
            return None;
        };
        if user.len() >= MAX_USERNAME {
            self.send_unauth_error(now.mono, ft, msg, error::BAD_REQUEST, io);
            return None;
        }
        let algorithms = msg.get(attr::PASSWORD_ALGORITHMS);
        let algorithm = msg.get(attr::PASSWORD_ALGORITHM);
        let alg = match (algorithms, algorithm) {
            (None, None) => PasswordAlgorithm::Md5,
            (Some(list), Some(one)) if list == PASSWORD_ALGORITHMS_VALUE => match one {
                [0x00, 0x01, 0x00, 0x00] => PasswordAlgorithm::Md5,
                [0x00, 0x02, 0x00, 0x00] => PasswordAlgorithm::Sha256,
                _ => {
                    self.send_unauth_error(now.mono, ft, msg, error::BAD_REQUEST, io);
                    return None;
                }
            },
            _ => {
                self.send_unauth_error(now.mono, ft, msg, error::BAD_REQUEST, io);
                return None;
            }
        };
        if realm != self.cfg.auth.realm().as_bytes() {
            self.stats.auth_failures += 1;
            self.challenge(now, ft, msg, error::UNAUTHENTICATED, false, io);
            return None;
        }
        let has_alloc = self.by_tuple.contains_key(ft);
        let candidates = match self.cfg.auth.lookup(user, alg, now.unix) {
            Ok(c) => Some(c),
            Err(AuthError::Expired)
                if !self.cfg.enforce_credential_expiry
                    && has_alloc
                    && msg.method() != method::ALLOCATE =>
            {
                // The operator lets live sessions outlast their credential, as coturn does.
                self.cfg.auth.lookup(user, alg, 0).ok()
            }
            Err(_) => None,
        };
        // RFC 8489 §9.2.4: the response carries MESSAGE-INTEGRITY-SHA256 when the request
        // named its password algorithm, MESSAGE-INTEGRITY otherwise.
        let integrity = if algorithms.is_some() {
            Integrity::Sha256
        } else {
            Integrity::Sha1
        };
        let found = match candidates {
            Some(c) => {
                let expiry = c.expiry;
                let checks = &mut self.stats.integrity_checks;
                c.keys
                    .into_iter()
                    .find(|k| {
                        *checks += 1;
                        msg.verify_integrity(k.as_bytes()).is_some()
                    })
                    .map(|key| Authed {
                        key,
                        integrity,
                        expiry,
                    })
            }
            None => {
                // Unknown (or expired) user: check against a decoy key all the same, so the
                // answer takes as long as for a known user with a wrong password and timing
                // does not reveal which usernames exist. The outcome is discarded.
                self.stats.integrity_checks += 1;
                let decoy = self.cfg.auth.decoy_key(alg);
                let _ = std::hint::black_box(msg.verify_integrity(decoy.as_bytes()));
                None
            }
        };
        let Some(auth) = found else {
            self.stats.auth_failures += 1;
            debug!(client = %ft.client, user = display_user(user, self.cfg.rest_separator), "authentication failed");
            self.challenge(now, ft, msg, error::UNAUTHENTICATED, false, io);
            return None;
        };
        if !self.cfg.auth.check_nonce(nonce, now.unix, ft.client.ip()) {
            self.challenge(now, ft, msg, error::STALE_NONCE, true, io);
            return None;
        }
        if self.alloc(ft).is_some_and(|a| a.username != user) {
            self.send_error(ft, msg, error::WRONG_CREDENTIALS, Some(&auth), io);
            return None;
        }
        Some(auth)
    }

    /// 401 or 438 with a fresh nonce: the smallest answer that lets a client go on. Drawn
    /// from the source's budget unless `proven` (the request carried valid integrity).
    fn challenge(
        &mut self,
        now: Time,
        ft: &FiveTuple,
        msg: &Message<'_>,
        code: u16,
        proven: bool,
        io: &mut impl Io,
    ) {
        let nonce = self.cfg.auth.mint_nonce(now.unix, ft.client.ip());
        let auth = self.cfg.auth.clone();
        let mut w = self.writer(msg, Class::Error);
        w.error_code(code, reason(code))
            .attr(attr::REALM, auth.realm().as_bytes())
            .attr(attr::NONCE, nonce.as_bytes())
            .attr(attr::PASSWORD_ALGORITHMS, &PASSWORD_ALGORITHMS_VALUE);
        let sent = if proven {
            self.seal_and_send(ft, msg, None, io);
            true
        } else {
            self.seal_and_send_unauth(now.mono, ft, msg, io)
        };
        if sent {
            self.count_error(msg.method(), code);
        }
    }

    fn handle_allocate(
        &mut self,
        now: Time,
        ft: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authed,
        io: &mut impl Io,
    ) {
        if self.by_tuple.contains_key(ft) {
            self.send_error(ft, msg, error::ALLOCATION_MISMATCH, Some(auth), io);
            return;
        }
        let fail = |s: &mut Self, code, io: &mut _| s.send_error(ft, msg, code, Some(auth), io);
        match msg.get(attr::REQUESTED_TRANSPORT) {
            Some([p, _, _, _]) if *p == attr::TRANSPORT_UDP => {}
            Some([p, _, _, _]) if *p == attr::TRANSPORT_TCP => {
                return self.handle_allocate_tcp(now, ft, msg, auth, io);
            }
            Some([_, _, _, _]) => return fail(self, error::UNSUPPORTED_TRANSPORT_PROTOCOL, io),
            _ => return fail(self, error::BAD_REQUEST, io),
        }
        let dont_fragment = msg.get(attr::DONT_FRAGMENT).is_some();
        let even_port = match msg.get(attr::EVEN_PORT) {
            None => None,
            Some([b, ..]) => Some(b & 0x80 != 0),
            Some([]) => return fail(self, error::BAD_REQUEST, io),
        };
        let token = match msg.get(attr::RESERVATION_TOKEN) {
            None => None,
            Some(v) if v.len() == 8 => {
                let mut t = [0u8; 8];
                t.copy_from_slice(v);
                Some(u64::from_be_bytes(t))
            }
            Some(_) => return fail(self, error::BAD_REQUEST, io),
        };
        let requested = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some([attr::FAMILY_IPV4, _, _, _]) => Some(0),
            Some([attr::FAMILY_IPV6, _, _, _]) => Some(1),
            Some([_, _, _, _]) => return fail(self, error::ADDRESS_FAMILY_NOT_SUPPORTED, io),
            Some(_) => return fail(self, error::BAD_REQUEST, io),
        };
        let additional = match msg.get(attr::ADDITIONAL_ADDRESS_FAMILY) {
            None => false,
            Some([attr::FAMILY_IPV6, _, _, _]) => true,
            Some(_) => return fail(self, error::BAD_REQUEST, io),
        };
        // RFC 8656 §7.2: these combinations are contradictory. A reservation (EVEN-PORT with
        // R) holds the next port of one family, and one RESERVATION-TOKEN cannot name ports of
        // two: refused with a dual allocation, as coturn does.
        if (token.is_some() && (even_port.is_some() || requested.is_some() || additional))
            || (requested.is_some() && additional)
            || (additional && even_port == Some(true))
        {
            return fail(self, error::BAD_REQUEST, io);
        }
        let mut family: Family = requested.unwrap_or(0);
        if self.cfg.relay_ips[family].is_none() {
            return fail(self, error::ADDRESS_FAMILY_NOT_SUPPORTED, io);
        }
        let username = msg
            .get(attr::USERNAME)
            .and_then(|u| std::str::from_utf8(u).ok())
            .unwrap_or_default()
            .to_string();
        if let Some(alternates) = self.draining {
            return self.refuse_draining(ft, msg, auth, alternates, io);
        }
        let quota_user = display_user(&username, self.cfg.rest_separator).to_string();
        let ip = ft.client.ip();
        // Reservations whose time is up give their quota counts back first.
        self.lock_ports().expire(now.mono);
        let opts = RelayOptions { dont_fragment };
        let mut new_token = None;
        let (primary, quota) = if let Some(t) = token {
            let Some((fam, port, held)) = self.lock_ports().claim(t, now.mono) else {
                return fail(self, error::INSUFFICIENT_CAPACITY, io);
            };
            // The reservation's count becomes the allocation's when it is the same client's.
            let quota = match held {
                Some(h) if h.is_for(&quota_user, ip) => Ok(h),
                _ => QuotaHold::acquire(&self.cfg.quotas, &quota_user, ip),
            };
            let quota = match quota {
                Ok(q) => q,
                Err(code) => {
                    self.lock_ports().release(fam, port);
                    return fail(self, code, io);
                }
            };
            family = fam;
            let r = self.bind_port(fam, port, opts, io);
            if r.is_none() {
                self.lock_ports().release(fam, port);
            }
            (r, quota)
        } else {
            let quota = match QuotaHold::acquire(&self.cfg.quotas, &quota_user, ip) {
                Ok(q) => q,
                Err(code) => return fail(self, code, io),
            };
            // A reservation holds a port as an allocation does, so it counts as one against
            // the user's, the IP's and the total quota while it lasts.
            let reserve = if even_port == Some(true) {
                match QuotaHold::acquire(&self.cfg.quotas, &quota_user, ip) {
                    Ok(h) => Some((self.rng.next_u64(), h)),
                    Err(code) => return fail(self, code, io),
                }
            } else {
                None
            };
            let token = reserve.as_ref().map(|(t, _)| *t);
            let r = self.open_relay(now.mono, family, even_port.is_some(), token, opts, io);
            if let (Some(_), Some((t, hold))) = (&r, reserve) {
                self.lock_ports().hold_reservation(t, hold);
                new_token = Some(t);
            }
            (r, quota)
        };
        let Some(primary) = primary else {
            return fail(self, error::INSUFFICIENT_CAPACITY, io);
        };
        let mut relays = [None, None];
        relays[family] = Some(primary);
        let mut address_error = None;
        if additional {
            if self.cfg.relay_ips[1].is_none() {
                address_error = Some(error::ADDRESS_FAMILY_NOT_SUPPORTED);
            } else if let Some(r) =
                self.open_relay(now.mono, 1, even_port.is_some(), None, opts, io)
            {
                relays[1] = Some(r);
            } else {
                address_error = Some(error::INSUFFICIENT_CAPACITY);
            }
        }
        let lifetime = self.lifetime(msg);
        let alloc = Allocation::new(NewAllocation {
            five_tuple: *ft,
            relays,
            username,
            credential_expiry: auth.expiry,
            now,
            lifetime,
            allocate_txid: msg.transaction_id(),
            quota,
            tcp: false,
        });
        let txid = alloc.allocate_txid;
        let slot = self.install(alloc, lifetime);

        let mut w = self.writer(msg, Class::Success);
        for r in relays.iter().flatten() {
            w.xor_address(attr::XOR_RELAYED_ADDRESS, r.advertised);
        }
        if let Some(code) = address_error {
            w.error_code_family(
                attr::ADDRESS_ERROR_CODE,
                attr::FAMILY_IPV6,
                code,
                reason(code),
            );
        }
        w.u32_attr(attr::LIFETIME, lifetime.as_secs() as u32);
        if let Some(t) = new_token {
            w.attr(attr::RESERVATION_TOKEN, &t.to_be_bytes());
        }
        w.xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
        self.seal_and_send(ft, msg, Some(auth), io);
        self.cache_last(slot, txid, now.mono);
    }

    /// Allocate while draining. RFC 8489 §14.15: the ALTERNATE-SERVER's family MUST be
    /// that of the request's source address, so a client of a family without an alternate
    /// gets 508. No ALTERNATE-DOMAIN: it is only needed for (D)TLS redirects to another
    /// certificate (RFC 8489 §10), and no alternate is configured by name.
    fn refuse_draining(
        &mut self,
        ft: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authed,
        alternates: [Option<SocketAddr>; 2],
        io: &mut impl Io,
    ) {
        let family = usize::from(ft.client.ip().to_canonical().is_ipv6());
        let Some(alt) = alternates[family] else {
            return self.send_error(ft, msg, error::INSUFFICIENT_CAPACITY, Some(auth), io);
        };
        let mut w = self.writer(msg, Class::Error);
        w.error_code(error::TRY_ALTERNATE, reason(error::TRY_ALTERNATE))
            .address(attr::ALTERNATE_SERVER, alt);
        self.stats.error_responses += 1;
        self.seal_and_send(ft, msg, Some(auth), io);
    }

    /// Puts a new allocation in a slot, indexes it by 5-tuple and relay, logs it and
    /// schedules its timers. Returns the slot.
    fn install(&mut self, alloc: Allocation, lifetime: Duration) -> usize {
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        for r in alloc.relays.iter().flatten() {
            self.by_relay.insert(r.id, slot);
        }
        self.by_tuple.insert(alloc.five_tuple, slot);
        let ft = alloc.five_tuple;
        info!(
            client = %ft.client,
            transport = ft.transport.as_str(),
            relayed = %DisplayRelays { relays: &alloc.relays, bound: false },
            bound = %DisplayRelays { relays: &alloc.relays, bound: true },
            relay_transport = if alloc.tcp { "tcp" } else { "udp" },
            user = display_user(&alloc.username, self.cfg.rest_separator),
            lifetime = lifetime.as_secs(),
            "allocation created"
        );
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Some(alloc);
        }
        self.stats.allocations_created += 1;
        self.schedule(slot);
        slot
    }

    /// RFC 8656 §7.2/§8: min(requested, maximum), but never below the default.
    fn lifetime(&self, msg: &Message<'_>) -> Duration {
        match msg.u32_attr(attr::LIFETIME) {
            Some(Ok(secs)) => Duration::from_secs(secs as u64)
                .min(self.cfg.max_lifetime)
                .max(self.cfg.default_lifetime),
            _ => self.cfg.default_lifetime,
        }
    }

    fn lock_ports(&self) -> std::sync::MutexGuard<'_, PortPool> {
        match self.cfg.ports.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes a port and binds a relay socket on it, trying other ports when one is taken.
    fn open_relay(
        &mut self,
        now: Instant,
        family: Family,
        even: bool,
        reserve: Option<u64>,
        opts: RelayOptions,
        io: &mut impl Io,
    ) -> Option<Relay> {
        for _ in 0..BIND_ATTEMPTS {
            let random = self.random();
            let port = {
                let mut pool = self.lock_ports();
                if even {
                    pool.take_even(family, reserve, now, random)
                } else {
                    pool.take(family, now, random)
                }
            }?;
            match self.bind_port(family, port, opts, io) {
                Some(r) => return Some(r),
                None => {
                    let mut pool = self.lock_ports();
                    pool.release(family, port);
                    if let Some(t) = reserve {
                        pool.cancel(t);
                    }
                }
            }
        }
        None
    }

    fn bind_port(
        &mut self,
        family: Family,
        port: u16,
        opts: RelayOptions,
        io: &mut impl Io,
    ) -> Option<Relay> {
        let (bind_ip, adv_ip) = self.cfg.relay_ips[family]?;
        let id = RelayId(self.next_relay);
        self.next_relay += 1;
        let bound = SocketAddr::new(bind_ip, port);
        match io.bind_relay(id, bound, opts) {
            Ok(()) => Some(Relay {
                id,
                family,
                port,
                bound,
                advertised: SocketAddr::new(adv_ip, port),
            }),
            Err(BindError::AddrInUse) | Err(BindError::Other) => {
                debug!(%bound, "relay bind failed");
                None
            }
        }
    }

    fn handle_refresh(
        &mut self,
        now: Time,
        ft: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authed,
        io: &mut impl Io,
    ) {
        let Some(&slot) = self.by_tuple.get(ft) else {
            self.send_error(ft, msg, error::ALLOCATION_MISMATCH, Some(auth), io);
            return;
        };
        let family = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some([attr::FAMILY_IPV4, _, _, _]) => Some(0),
            Some([attr::FAMILY_IPV6, _, _, _]) => Some(1),
            Some(_) => {
                self.send_error(ft, msg, error::PEER_ADDRESS_FAMILY_MISMATCH, Some(auth), io);
                return;
            }
        };
        let Some(a) = self.slots.get(slot).and_then(|s| s.as_ref()) else {
            return;
        };
        if family.is_some_and(|f| a.relays[f].is_none()) {
            self.send_error(ft, msg, error::PEER_ADDRESS_FAMILY_MISMATCH, Some(auth), io);
            return;
        }
        let dual = a.relays.iter().flatten().count() == 2;
        let zero = matches!(msg.u32_attr(attr::LIFETIME), Some(Ok(0)));
        let lifetime = if zero {
            Duration::ZERO
        } else {
            self.lifetime(msg)
        };
        let txid = msg.transaction_id();
        if zero {
            match (family, dual) {
                (Some(f), true) => self.close_family(slot, f, io),
                _ => self.delete(slot, EndReason::Refreshed0, io),
            }
        } else if let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) {
            a.expires = now.mono + lifetime;
            a.credential_expiry = auth.expiry.or(a.credential_expiry);
        }
        let mut w = self.writer(msg, Class::Success);
        w.u32_attr(attr::LIFETIME, lifetime.as_secs() as u32);
        self.seal_and_send(ft, msg, Some(auth), io);
        if !zero || self.slots.get(slot).is_some_and(|s| s.is_some()) {
            self.cache_last(slot, txid, now.mono);
            self.schedule(slot);
        }
    }

    /// Deletes one family of a dual allocation (Refresh with LIFETIME 0 and
    /// REQUESTED-ADDRESS-FAMILY).
    fn close_family(&mut self, slot: usize, family: Family, io: &mut impl Io) {
        let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return;
        };
        if let Some(r) = a.relays[family].take() {
            self.by_relay.remove(&r.id);
            io.close_relay(r.id);
            self.lock_ports().release(r.family, r.port);
        }
    }

    /// Reads the XOR-PEER-ADDRESS values and checks each against the allocation's
    /// families and the peer policy; Err is the error code to answer.
    fn check_peer(&self, slot: usize, peer: SocketAddr) -> Result<(), u16> {
        let a = self
            .slots
            .get(slot)
            .and_then(|s| s.as_ref())
            .ok_or(error::ALLOCATION_MISMATCH)?;
        if a.relay_for(&peer).is_none() {
            return Err(error::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        if !self.cfg.policy.is_allowed_addr(peer) {
            return Err(error::FORBIDDEN);
        }
        Ok(())
    }

    fn handle_create_permission(
        &mut self,
        now: Time,
        ft: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authed,
        io: &mut impl Io,
    ) {
        let Some(&slot) = self.by_tuple.get(ft) else {
            self.send_error(ft, msg, error::ALLOCATION_MISMATCH, Some(auth), io);
            return;
        };
        let txid = msg.transaction_id();
        let mut peers: [Option<IpAddr>; 32] = [None; 32];
        let mut n = 0;
        for v in msg.get_all(attr::XOR_PEER_ADDRESS) {
            let Some(peer) = decode_xor_address(v, &txid) else {
                self.send_error(ft, msg, error::BAD_REQUEST, Some(auth), io);
                return;
            };
            if let Err(code) = self.check_peer(slot, peer) {
                debug!(client = %ft.client, peer = %peer.ip(), code, "permission refused");
                self.send_error(ft, msg, code, Some(auth), io);
                return;
            }
            if n == peers.len() {
                self.send_error(ft, msg, error::BAD_REQUEST, Some(auth), io);
                return;
            }
            peers[n] = Some(peer.ip());
            n += 1;
        }
        if n == 0 {
            self.send_error(ft, msg, error::BAD_REQUEST, Some(auth), io);
            return;
        }
        let max = self.cfg.max_permissions;
        let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return;
        };
        let new = peers[..n]
            .iter()
            .flatten()
            .filter(|ip| !a.permissions.contains_key(ip))
            .count();
        if a.permissions.len() + new > max {
            a.sweep(now.mono);
            if a.permissions.len() + new > max {
                self.send_error(ft, msg, error::INSUFFICIENT_CAPACITY, Some(auth), io);
                return;
            }
        }
        for ip in peers[..n].iter().flatten() {
            a.permissions.insert(*ip, now.mono + PERMISSION_LIFETIME);
        }
        self.writer(msg, Class::Success);
        self.seal_and_send(ft, msg, Some(auth), io);
        self.cache_last(slot, txid, now.mono);
        self.schedule(slot);
    }

    fn handle_channel_bind(
        &mut self,
        now: Time,
        ft: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authed,
        io: &mut impl Io,
    ) {
        let Some(&slot) = self.by_tuple.get(ft) else {
            self.send_error(ft, msg, error::ALLOCATION_MISMATCH, Some(auth), io);
            return;
        };
        if self
            .slots
            .get(slot)
            .and_then(|s| s.as_ref())
            .is_some_and(|a| a.tcp)
        {
            // RFC 6062 §5.1: a TCP allocation relays over data connections, not channels.
            return self.send_error(ft, msg, error::BAD_REQUEST, Some(auth), io);
        }
        let number = match msg.get(attr::CHANNEL_NUMBER) {
            Some([a, b, _, _]) => u16::from_be_bytes([*a, *b]),
            _ => return self.send_error(ft, msg, error::BAD_REQUEST, Some(auth), io),
        };
        // RFC 8656 §12 (RFC 5766 §11 without strict): a number outside the range gets 400.
        if !channel_data::is_bindable(number, self.cfg.strict_channel_numbers) {
            return self.send_error(ft, msg, error::BAD_REQUEST, Some(auth), io);
        }
        let peer = match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Some(Ok(p)) => p,
            _ => return self.send_error(ft, msg, error::BAD_REQUEST, Some(auth), io),
        };
        if let Err(code) = self.check_peer(slot, peer) {
            return self.send_error(ft, msg, code, Some(auth), io);
        }
        let max = self.cfg.max_permissions;
        let max_channels = self.cfg.limits.max_channels;
        let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return;
        };
        let t = now.mono;
        // RFC 8656 §11.2: a number stays with its peer (and a peer with its number) while
        // bound and for 5 minutes after.
        let number_taken = a
            .channels
            .get(&number)
            .is_some_and(|c| c.peer != peer && t < c.expires + CHANNEL_QUARANTINE);
        let peer_taken = a.channel_by_peer.get(&peer).is_some_and(|&other| {
            other != number
                && a.channels
                    .get(&other)
                    .is_some_and(|c| t < c.expires + CHANNEL_QUARANTINE)
        });
        if number_taken || peer_taken {
            return self.send_error(ft, msg, error::BAD_REQUEST, Some(auth), io);
        }
        if !a.permissions.contains_key(&peer.ip()) && a.permissions.len() >= max {
            a.sweep(t);
            if a.permissions.len() >= max {
                return self.send_error(ft, msg, error::INSUFFICIENT_CAPACITY, Some(auth), io);
            }
        }
        // A new number counts against the channel cap; quarantined numbers still hold state.
        if !a.channels.contains_key(&number) && a.channels.len() >= max_channels {
            a.sweep(t);
            if a.channels.len() >= max_channels {
                return self.send_error(ft, msg, error::INSUFFICIENT_CAPACITY, Some(auth), io);
            }
        }
        if let Some(old) = a.channels.get(&number).filter(|c| c.peer != peer) {
            a.channel_by_peer.remove(&old.peer);
        }
        if let Some(old) = a
            .channel_by_peer
            .get(&peer)
            .copied()
            .filter(|&n| n != number)
        {
            a.channels.remove(&old);
        }
        a.channels.insert(
            number,
            Channel {
                peer,
                expires: t + CHANNEL_LIFETIME,
            },
        );
        a.channel_by_peer.insert(peer, number);
        a.permissions.insert(peer.ip(), t + PERMISSION_LIFETIME);
        let txid = msg.transaction_id();
        self.writer(msg, Class::Success);
        self.seal_and_send(ft, msg, Some(auth), io);
        self.cache_last(slot, txid, t);
        self.schedule(slot);
    }

    // ------------------------------------------------------------- helpers

    /// Starts a response to `msg` in the scratch buffer.
    fn writer(&mut self, msg: &Message<'_>, class: Class) -> MessageWriter<'_> {
        MessageWriter::new(&mut self.out, msg.method(), class, msg.transaction_id())
    }

    /// Whether an answer of `answer` bytes to the unauthenticated request `msg` may go to
    /// this client now. Over UDP the source may be spoofed, so such answers draw on the
    /// source's byte budget (see [`super::rate_limit`]) unless the source has proved it is
    /// real: its address (an IPv6 one by its /64) holds an authenticated allocation, on any
    /// worker. Streams have a handshake and are not limited.
    fn unauth_answer_allowed(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        msg: &Message<'_>,
        answer: usize,
    ) -> bool {
        if ft.transport != Transport::Udp
            || self
                .cfg
                .unauth_limiter
                .allow(ft.client.ip(), now, msg.raw().len(), answer)
            || self.cfg.quotas.ip_count(ft.client.ip()) > 0
        {
            return true;
        }
        self.stats.rate_limited += 1;
        false
    }

    /// An error to a request that is not (yet) authenticated: subject to the source's budget.
    fn send_unauth_error(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        msg: &Message<'_>,
        code: u16,
        io: &mut impl Io,
    ) {
        let mut w = self.writer(msg, Class::Error);
        w.error_code(code, reason(code));
        if self.seal_and_send_unauth(now, ft, msg, io) {
            self.count_error(msg.method(), code);
        }
    }

    /// Seals the answer in the scratch buffer as [`Server::seal_and_send`] does for an
    /// unauthenticated request, and sends it if the source's budget allows; says whether it
    /// was sent.
    fn seal_and_send_unauth(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        msg: &Message<'_>,
        io: &mut impl Io,
    ) -> bool {
        let mut w = MessageWriter::resume(&mut self.out, msg.transaction_id());
        if msg.has_fingerprint() {
            w.fingerprint();
        }
        let len = self.out.len();
        if !self.unauth_answer_allowed(now, ft, msg, len) {
            return false;
        }
        io.send_to_client(ft, &self.out);
        true
    }

    fn send_error(
        &mut self,
        ft: &FiveTuple,
        msg: &Message<'_>,
        code: u16,
        auth: Option<&Authed>,
        io: &mut impl Io,
    ) {
        let mut w = self.writer(msg, Class::Error);
        w.error_code(code, reason(code));
        self.count_error(msg.method(), code);
        self.seal_and_send(ft, msg, auth, io);
    }

    fn count_error(&mut self, method: u16, code: u16) {
        self.stats.error_responses += 1;
        self.stats.errors_by_method[method_slot(method)][code_slot(code)] += 1;
    }

    /// Appends SOFTWARE (authenticated answers only), the integrity attribute matching the
    /// request's, and FINGERPRINT if the request had one; then sends the scratch buffer.
    fn seal_and_send(
        &mut self,
        ft: &FiveTuple,
        msg: &Message<'_>,
        auth: Option<&Authed>,
        io: &mut impl Io,
    ) {
        let mut w = MessageWriter::resume(&mut self.out, msg.transaction_id());
        if let Some(a) = auth {
            if let Some(s) = &self.cfg.software {
                w.attr(attr::SOFTWARE, s.as_bytes());
            }
            match a.integrity {
                Integrity::Sha1 => w.integrity(a.key.as_bytes()),
                Integrity::Sha256 => w.integrity_sha256(a.key.as_bytes()),
            };
        }
        if msg.has_fingerprint() {
            w.fingerprint();
        }
        io.send_to_client(ft, &self.out);
    }

    /// Keeps the response just sent for retransmissions of its request.
    fn cache_last(&mut self, slot: usize, txid: [u8; 12], now: Instant) {
        if let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) {
            a.cache_response(txid, now, &self.out);
        }
    }

    /// Queues the allocation's next deadline unless an earlier one is already queued.
    fn schedule(&mut self, slot: usize) {
        let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return;
        };
        let d = a.next_deadline();
        if a.scheduled.is_none_or(|s| d < s) {
            a.scheduled = Some(d);
            self.timers.push(Reverse((d, slot)));
        }
    }

    fn delete(&mut self, slot: usize, why: EndReason, io: &mut impl Io) {
        let Some(a) = self.slots.get_mut(slot).and_then(|s| s.take()) else {
            return;
        };
        self.free_slots.push(slot);
        self.by_tuple.remove(&a.five_tuple);
        self.tcp_end_allocation(&a.five_tuple, io);
        {
            let mut pool = match self.cfg.ports.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for r in a.relays.iter().flatten() {
                pool.release(r.family, r.port);
            }
        }
        for r in a.relays.iter().flatten() {
            self.by_relay.remove(&r.id);
            io.close_relay(r.id);
        }
        // Dropping `a` at the end gives its quota counts back.
        self.stats.allocations_deleted += 1;
        let c = a.counters;
        info!(
            client = %a.five_tuple.client,
            transport = a.five_tuple.transport.as_str(),
            relayed = %DisplayRelays { relays: &a.relays, bound: false },
            user = display_user(&a.username, self.cfg.rest_separator),
            bytes_to_peer = c.bytes_to_peer,
            bytes_from_peer = c.bytes_from_peer,
            packets_to_peer = c.packets_to_peer,
            packets_from_peer = c.packets_from_peer,
            dropped = c.drops.iter().sum::<u64>(),
            started_unix = a.created_unix,
            seconds = a.created.elapsed().as_secs(),
            reason = ?why,
            "allocation deleted"
        );
    }
}

/// The advertised relayed addresses, or with `bound` the addresses the sockets are bound to
/// (they differ behind 1:1 NAT), comma-separated for the log.
struct DisplayRelays<'a> {
    relays: &'a [Option<Relay>; 2],
    bound: bool,
}

impl std::fmt::Display for DisplayRelays<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.relays.iter().flatten().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let addr = if self.bound { r.bound } else { r.advertised };
            write!(f, "{addr}")?;
        }
        Ok(())
    }
}
