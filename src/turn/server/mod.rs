//! One worker's TURN server, sans I/O: the allocation tables, dispatch of what arrives, and
//! the timers. Each job has its own room: [`data_path`] (both directions), [`auth`] (the
//! credential check and the answers before it), `request/` (one file per request),
//! [`tcp_relay`] (RFC 6062), [`views`] (what the admin side reads).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha12Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::allocation::{
    Allocation, CHANNEL_LIFETIME, CHANNEL_QUARANTINE, Channel, Counters, NewAllocation,
    PERMISSION_LIFETIME, Relay,
};
use super::error::RequestError;
use super::peer_policy::PeerPolicy;
use super::ports::{Family, RESERVATION_LIFETIME, RelayPorts};
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
use crate::quality::{Direction, Leg, Quality, QualityStats};
use crate::stun::{
    Class, HEADER_LEN, Integrity, Message, MessageWriter, attr, channel_data, decode_xor_address,
    method,
};

mod auth;
mod data_path;
mod fast_path;
mod fleet;
mod lease;
mod request;
mod tcp_relay;
mod views;

/// An authenticated request on its way to its handler: when it came, from where, the
/// message, and the credential that signed it.
#[derive(Clone, Copy)]
struct Request<'a> {
    now: Time,
    ft: &'a FiveTuple,
    msg: &'a Message<'a>,
    auth: &'a Authed,
}

/// How many times Allocate tries another port when a bind finds it taken.
const BIND_ATTEMPTS: usize = 8;

use auth::Authed;
pub use auth::challenge_len;
pub use fleet::{AllocationEvent, AllocationEventKind, MAX_PENDING_EVENTS, QualitySummary};
pub use lease::{DEFAULT_LEASE_TIMEOUT, LeaseAnswer, LeaseRequest, LeaseStats, MAX_PARKED};

/// Everything one worker's server needs; shared parts are behind `Arc`.
pub struct ServerConfig {
    /// What a reload may change ([`Server::reconfigure`] swaps it): credentials, peer
    /// policy, lifetimes, SOFTWARE and the other request switches. Its policy carries the
    /// server's own addresses. Its quota limits are those last set on `quotas`, which holds
    /// the limits in force (shared by every worker).
    pub live: Reconfigure,
    /// The relay ports of every relay address (several per family allowed).
    pub ports: Arc<Mutex<RelayPorts>>,
    pub quotas: Arc<Quotas>,
    /// Per family (0: IPv4, 1: IPv6): the relay IP to bind and the IP to advertise.
    pub relay_ips: [Option<(IpAddr, IpAddr)>; 2],
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
    /// The parked path of strict fleet quotas.
    pub leases: LeaseStats,
    /// Call-quality counters and histograms ([`crate::quality`]).
    pub quality: QualityStats,
}

/// Why an allocation ended, for the log line.
#[derive(Clone, Copy, Debug)]
pub enum EndReason {
    Refreshed0,
    Expired,
    Shutdown,
    /// Ended through the admin API.
    Admin,
    /// Its credential was revoked in the shared store.
    Revoked,
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
    /// Set by a fleet driver while this node is over its load threshold: Allocate is
    /// answered as while draining, reversibly ([`Server::set_redirect`]).
    redirect: Option<[Option<SocketAddr>; 2]>,
    /// ALTERNATE-DOMAIN for redirected TLS clients.
    alternate_domain: Option<String>,
    /// Allocation events for a fleet driver, when it asked for them.
    events: fleet::EventLog,
    /// Allocates parked for a fleet lease (strict fleet quotas).
    leases: lease::Leases,
    /// The policy of the file (with the own addresses), before the shared store's peer
    /// ranges are added on top ([`Server::set_store`]).
    file_policy: PeerPolicy,
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
    /// Observe relayed payloads for call quality (`telemetry.enabled`, [`crate::quality`]).
    pub telemetry: bool,
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
            file_policy: cfg.live.policy.clone(),
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
            redirect: None,
            alternate_domain: None,
            events: Default::default(),
            leases: Default::default(),
            tcp: Default::default(),
        }
    }

    /// Swaps in reloaded settings (see [`Reconfigure`]). The quota limits live in the
    /// [`Quotas`] every worker shares, so their live counts carry over unchanged.
    pub fn reconfigure(&mut self, r: Reconfigure) {
        // The shared store's view is not the file's: it carries over.
        let store = self.cfg.live.auth.store().clone();
        // The listeners do not change on reload: neither does the own-address rule.
        let own = self.cfg.live.policy.own_addresses().to_vec();
        self.cfg.quotas.set_limits(r.user_quota, r.total_quota);
        self.file_policy = r.policy.clone().with_own_addresses(own);
        let policy = fleet::with_store_ranges(&self.file_policy, &store);
        let auth = Arc::new((*r.auth).clone().with_store(store));
        self.cfg.live = Reconfigure { policy, auth, ..r };
    }

    /// Stops granting new allocations; existing ones go on relaying and may be refreshed.
    /// From now on Allocate is answered with 300 (Try Alternate) and an ALTERNATE-SERVER of
    /// the client's address family from `alternates` (RFC 8656 §7.2, RFC 8489 §10), or with
    /// 508 (Insufficient Capacity) when there is none of that family.
    pub fn drain(&mut self, alternates: &[SocketAddr]) {
        let mut by_family = [None, None];
        for a in alternates {
            by_family[Family::of(a.ip()).index()].get_or_insert(*a);
        }
        self.draining = Some(by_family);
    }

    /// Whether [`Server::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            leases: self.leases.stats,
            ..self.stats
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

    /// The earliest moment [`Server::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let alloc = self.timers.peek().map(|Reverse((t, _))| *t);
        [self.tcp_poll_timeout(), self.leases.poll_timeout()]
            .into_iter()
            .fold(alloc, |a, b| match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
    }

    /// Expires permissions, channels and allocations whose time has come.
    pub fn handle_timeout(&mut self, now: Time, io: &mut impl Io) {
        self.tcp_handle_timeout(now.mono, io);
        self.expire_parked(now, io);
        self.expire_reservations(now.mono, io);
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
                self.delete(slot, EndReason::Expired, now.mono, io);
                continue;
            }
            a.sweep(now.mono);
            self.sync_fast_path(slot, now.mono, io);
            self.schedule(slot);
        }
    }

    /// Ends every allocation (shutdown) at `now`.
    pub fn close_all(&mut self, now: Instant, io: &mut impl Io) {
        self.abandon_all_parked();
        let slots: Vec<usize> = self.by_tuple.values().copied().collect();
        for s in slots {
            self.delete(s, EndReason::Shutdown, now, io);
        }
    }

    /// Ends the allocation on a 5-tuple now (its transport connection closed).
    pub fn close_tuple(&mut self, ft: &FiveTuple, now: Instant, io: &mut impl Io) {
        self.tcp_forget(ft);
        self.abandon_parked(ft);
        if let Some(&s) = self.by_tuple.get(ft) {
            self.delete(s, EndReason::Shutdown, now, io);
        }
    }

    // ----------------------------------------------------------- data path

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
            self.send_unauth_error(now.mono, ft, msg, RequestError::BadRequest, io);
            return;
        }
        // A retransmission of an Allocate parked for its fleet lease: the answer is on its
        // way, and goes out once.
        if m == method::ALLOCATE && self.leases.is_parked(ft, msg.transaction_id()) {
            self.leases.stats.retransmits += 1;
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
            w.error_code(
                RequestError::UnknownAttribute.code(),
                RequestError::UnknownAttribute.reason(),
            )
            .attr(attr::UNKNOWN_ATTRIBUTES, &v[..2 * n_unknown]);
            self.count_error(m, RequestError::UnknownAttribute);
            self.seal_and_send(ft, msg, Some(&auth), io);
            return;
        }
        let req = Request {
            now,
            ft,
            msg,
            auth: &auth,
        };
        let done = match m {
            method::ALLOCATE => {
                let r = self.handle_allocate(req, io);
                // Reservations that ended meanwhile give their fleet leases back.
                self.give_back_lapsed(io);
                r
            }
            method::REFRESH => self.handle_refresh(req, io),
            method::CREATE_PERMISSION => self.handle_create_permission(req, io),
            method::CONNECT => self.handle_connect(req, io),
            method::CONNECTION_BIND => self.handle_connection_bind(req, io),
            _ => self.handle_channel_bind(req, io),
        };
        // Each request's failure is answered here, its one mapping to the wire.
        if let Err(e) = done {
            self.send_error(ft, msg, e, Some(&auth), io);
        }
    }

    /// Makes the allocation an Allocate was granted (UDP relays, or an RFC 6062 TCP relay)
    /// and installs it; returns its slot and lifetime. It holds a fleet lease when it took
    /// over a claimed reservation's (`lease_claimed`) or the resumed Allocate has one left.
    fn grant(
        &mut self,
        req: Request<'_>,
        relays: [Option<Relay>; 2],
        username: String,
        quota: QuotaHold,
        tcp: bool,
        lease_claimed: bool,
    ) -> (usize, Duration) {
        let sep = self.cfg.rest_separator;
        let leased = lease_claimed || self.take_lease(display_user(&username, sep));
        let lifetime = self.lifetime(req.msg);
        let alloc = Allocation::new(NewAllocation {
            five_tuple: *req.ft,
            relays,
            username,
            credential_expiry: req.auth.expiry,
            now: req.now,
            lifetime,
            quota,
            tcp,
        });
        let slot = self.install(alloc, lifetime);
        if let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) {
            a.leased = leased;
        }
        self.record_event(slot, AllocationEventKind::Created, req.now.unix, None);
        if let Some(ev) = self.events.pending.last_mut() {
            ev.lifetime_secs = lifetime.as_secs();
        }
        (slot, lifetime)
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
                .min(self.cfg.live.max_lifetime)
                .max(self.cfg.live.default_lifetime),
            _ => self.cfg.live.default_lifetime,
        }
    }

    /// The slot of the allocation on a 5-tuple; RFC 8656 §7 answers 437 when there is none.
    fn allocation_slot(&self, ft: &FiveTuple) -> Result<usize, RequestError> {
        self.by_tuple
            .get(ft)
            .copied()
            .ok_or(RequestError::AllocationMismatch)
    }

    /// The address advertised for a relay bound on `bind_ip`: the first relay address of a
    /// family may be advertised as another (1:1 NAT); the others as themselves.
    fn advertised_ip(&self, family: Family, bind_ip: IpAddr) -> Option<IpAddr> {
        match self.cfg.relay_ips[family.index()] {
            Some((bind, adv)) if bind == bind_ip => Some(adv),
            Some(_) => Some(bind_ip),
            None => None,
        }
    }

    fn lock_ports(&self) -> std::sync::MutexGuard<'_, RelayPorts> {
        match self.cfg.ports.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    // ------------------------------------------------------------- helpers

    /// Starts a response to `msg` in the scratch buffer.
    fn writer(&mut self, msg: &Message<'_>, class: Class) -> MessageWriter<'_> {
        MessageWriter::new(&mut self.out, msg.method(), class, msg.transaction_id())
    }

    fn send_error(
        &mut self,
        ft: &FiveTuple,
        msg: &Message<'_>,
        err: RequestError,
        auth: Option<&Authed>,
        io: &mut impl Io,
    ) {
        let mut w = self.writer(msg, Class::Error);
        w.error_code(err.code(), err.reason());
        self.count_error(msg.method(), err);
        self.seal_and_send(ft, msg, auth, io);
    }

    fn count_error(&mut self, method: u16, err: RequestError) {
        self.stats.error_responses += 1;
        self.stats.errors_by_method[method_slot(method)][code_slot(err.code())] += 1;
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
            if let Some(s) = &self.cfg.live.software {
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

    fn delete(&mut self, slot: usize, why: EndReason, now: Instant, io: &mut impl Io) {
        let Some(a) = self.slots.get_mut(slot).and_then(|s| s.take()) else {
            return;
        };
        self.free_slots.push(slot);
        self.by_tuple.remove(&a.five_tuple);
        let mut a = a;
        Server::end_fast_path(&mut self.stats, &mut a, io);
        self.tcp_end_allocation(&a.five_tuple, io);
        {
            let mut pool = match self.cfg.ports.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for r in a.relays.iter().flatten() {
                pool.release(r.family, r.bound.ip(), r.port);
            }
        }
        for r in a.relays.iter().flatten() {
            self.by_relay.remove(&r.id);
            io.close_relay(r.id);
        }
        // Dropping `a` at the end gives its quota counts back; a fleet lease goes back too.
        if a.leased {
            io.release_lease(display_user(&a.username, self.cfg.rest_separator));
        }
        self.stats.allocations_deleted += 1;
        if self.events.enabled {
            let unix = a.created_unix + now.saturating_duration_since(a.created).as_secs();
            let ev = fleet::event_of(&a, AllocationEventKind::Ended, unix, Some(why));
            self.push_event(ev);
        }
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
            seconds = now.saturating_duration_since(a.created).as_secs(),
            reason = ?why,
            "allocation deleted"
        );
        if let Some(q) = &a.quality {
            let s = q.summary();
            let (client_p50, client_p95) = s.rtt_ms(Leg::Client);
            let (peer_p50, peer_p95) = s.rtt_ms(Leg::Peer);
            info!(
                session = a.id,
                client = %a.five_tuple.client,
                user = display_user(&a.username, self.cfg.rest_separator),
                duration_secs = now.saturating_duration_since(a.created).as_secs(),
                bytes_to_peer = c.bytes_to_peer,
                bytes_from_peer = c.bytes_from_peer,
                state = s.state(),
                client_rtt_p50_ms = client_p50,
                client_rtt_p95_ms = client_p95,
                peer_rtt_p50_ms = peer_p50,
                peer_rtt_p95_ms = peer_p95,
                checks_unanswered = s.checks_unanswered(),
                streams = %s,
                "call quality"
            );
        }
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
