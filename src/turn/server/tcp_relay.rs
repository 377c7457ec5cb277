//! TCP allocations ([RFC 6062](https://www.rfc-editor.org/rfc/rfc6062)): the relayed address
//! is a TCP listener; Connect opens a connection to a peer, a peer connecting in is announced
//! with ConnectionAttempt, and ConnectionBind on a new client connection joins the two.
//!
//! The decisions live here (who may connect where, which ids are live, the 30-second bind
//! window); the driver connects, accepts and pipes bytes. Connect goes through the same
//! peer policy as UDP permissions.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tracing::debug;

use super::super::allocation::Relay;
use super::super::error::RequestError;
use super::super::ports::Family;
use super::super::quota::QuotaHold;
use super::super::{
    CONNECTION_ID_WORKER_SHIFT, ConnectionId, FiveTuple, Io, RelayId, Time, Transport,
};
use super::{Authed, BIND_ATTEMPTS, Request, Server};
use crate::auth::{Key, display_user};
use crate::stun::{Class, Integrity, Message, MessageWriter, attr, method};

/// RFC 6062 §5.2/§5.3: a peer data connection not bound within 30 seconds is closed.
pub const BIND_WINDOW: Duration = Duration::from_secs(30);

/// A request whose answer waits for the driver (Connect, ConnectionBind).
struct Parked {
    id: ConnectionId,
    method: u16,
    txid: [u8; 12],
    key: Key,
    integrity: Integrity,
    fingerprint: bool,
}

enum State {
    /// Connect sent to the driver; the response waits for the outcome.
    Connecting(Parked),
    /// Connected (or accepted), waiting for ConnectionBind until the deadline.
    Pending(Instant),
    /// Joined with a client data connection.
    Bound,
}

struct PeerConn {
    control: FiveTuple,
    peer: SocketAddr,
    state: State,
}

/// The TCP-relay state of one worker's server.
#[derive(Default)]
pub(super) struct TcpRelay {
    conns: FxHashMap<ConnectionId, PeerConn>,
    timers: BinaryHeap<Reverse<(Instant, ConnectionId)>>,
    next: u32,
    prefix: u32,
    /// ConnectionBind requests waiting for the owning worker, by data connection.
    parked: FxHashMap<FiveTuple, Parked>,
    /// The connection to each (control connection, peer): 446 for a second one.
    by_pair: FxHashMap<(FiveTuple, SocketAddr), ConnectionId>,
    /// Live connections per control connection, capped at `max_permissions`.
    per_control: FxHashMap<FiveTuple, usize>,
}

impl TcpRelay {
    fn insert(&mut self, id: ConnectionId, c: PeerConn) {
        self.by_pair.insert((c.control, c.peer), id);
        *self.per_control.entry(c.control).or_insert(0) += 1;
        self.conns.insert(id, c);
    }

    fn remove(&mut self, id: ConnectionId) -> Option<PeerConn> {
        let c = self.conns.remove(&id)?;
        self.by_pair.remove(&(c.control, c.peer));
        if let Some(n) = self.per_control.get_mut(&c.control) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_control.remove(&c.control);
            }
        }
        Some(c)
    }

    fn count(&self, control: &FiveTuple) -> usize {
        self.per_control.get(control).copied().unwrap_or(0)
    }
}

impl Server {
    /// Tells the core which worker it runs on; CONNECTION-IDs carry it in their top byte.
    pub fn set_worker_index(&mut self, index: usize) {
        self.tcp.prefix = ((index & 0x3FF) as u32) << CONNECTION_ID_WORKER_SHIFT;
    }

    fn new_connection_id(&mut self) -> ConnectionId {
        loop {
            self.tcp.next = (self.tcp.next + 1) & ((1 << CONNECTION_ID_WORKER_SHIFT) - 1);
            let id = self.tcp.prefix | self.tcp.next;
            if self.tcp.next != 0 && !self.tcp.conns.contains_key(&id) {
                return id;
            }
        }
    }

    /// Live peer data connections (connecting, pending or bound) owned by this core.
    pub fn peer_connection_count(&self) -> usize {
        self.tcp.conns.len()
    }

    /// Allocate with REQUESTED-TRANSPORT TCP (RFC 6062 §5.1): only on a TCP or TLS client
    /// connection (else 400), and without DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN
    /// (else 400).
    pub(super) fn handle_allocate_tcp(
        &mut self,
        req: Request<'_>,
        io: &mut impl Io,
    ) -> Result<(), RequestError> {
        let Request { now, ft, msg, auth } = req;
        let bad = ft.transport == Transport::Udp
            || [
                attr::DONT_FRAGMENT,
                attr::EVEN_PORT,
                attr::RESERVATION_TOKEN,
                attr::ADDITIONAL_ADDRESS_FAMILY,
            ]
            .iter()
            .any(|t| msg.get(*t).is_some());
        if bad {
            return Err(RequestError::BadRequest);
        }
        let family: Family = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => Family::V4,
            Some([b, _, _, _]) if Family::from_attr(*b).is_some() => {
                Family::from_attr(*b).unwrap_or(Family::V4)
            }
            Some([_, _, _, _]) => {
                return Err(RequestError::AddressFamilyNotSupported);
            }
            Some(_) => return Err(RequestError::BadRequest),
        };
        if self.cfg.relay_ips[family.index()].is_none() {
            return Err(RequestError::AddressFamilyNotSupported);
        }
        let username = msg
            .get(attr::USERNAME)
            .and_then(|u| std::str::from_utf8(u).ok())
            .unwrap_or_default()
            .to_string();
        if let Some(alternates) = self.draining.or(self.redirect) {
            return self.refuse_draining(ft, msg, auth, alternates, io);
        }
        let quota_user = display_user(&username, self.cfg.rest_separator).to_string();
        if self.park_for_lease(req, &quota_user, 1, true, io)? {
            return Ok(());
        }
        let quota = QuotaHold::acquire(&self.cfg.quotas, &quota_user, ft.client.ip())?;
        let mut relay = None;
        for _ in 0..BIND_ATTEMPTS {
            let random = self.random();
            let Some((bind_ip, port)) = self.lock_ports().take(family, now.mono, random) else {
                break;
            };
            let Some(adv_ip) = self.advertised_ip(family, bind_ip) else {
                self.lock_ports().release(family, bind_ip, port);
                break;
            };
            let id = RelayId(self.next_relay);
            self.next_relay += 1;
            let bound = SocketAddr::new(bind_ip, port);
            if io.listen_relay_tcp(id, bound).is_ok() {
                relay = Some(Relay {
                    id,
                    family,
                    port,
                    bound,
                    advertised: SocketAddr::new(adv_ip, port),
                });
                break;
            }
            self.lock_ports().release(family, bind_ip, port);
        }
        let Some(relay) = relay else {
            return Err(RequestError::InsufficientCapacity);
        };
        let mut relays = [None, None];
        relays[family.index()] = Some(relay);
        let (slot, lifetime) = self.grant(req, relays, username, quota, true, false);
        let mut w = self.writer(msg, Class::Success);
        w.xor_address(attr::XOR_RELAYED_ADDRESS, relay.advertised)
            .u32_attr(attr::LIFETIME, lifetime.as_secs() as u32)
            .xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
        self.seal_and_send(ft, msg, Some(auth), io);
        self.cache_last(slot, msg.transaction_id(), now.mono);
        Ok(())
    }

    fn park(&self, id: ConnectionId, msg: &Message<'_>, auth: &Authed) -> Parked {
        Parked {
            id,
            method: msg.method(),
            txid: msg.transaction_id(),
            key: auth.key.clone(),
            integrity: auth.integrity,
            fingerprint: msg.has_fingerprint(),
        }
    }

    /// Answers a parked request: success with CONNECTION-ID, or the error `code`.
    fn answer_parked(
        &mut self,
        to: &FiveTuple,
        p: &Parked,
        code: Option<RequestError>,
        io: &mut impl Io,
    ) {
        let class = if code.is_some() {
            Class::Error
        } else {
            Class::Success
        };
        let mut w = MessageWriter::new(&mut self.out, p.method, class, p.txid);
        match code {
            Some(c) => {
                w.error_code(c.code(), c.reason());
                self.stats.error_responses += 1;
            }
            None if p.method == method::CONNECT => {
                w.u32_attr(attr::CONNECTION_ID, p.id);
            }
            None => {}
        }
        if let Some(s) = &self.cfg.live.software {
            w.attr(attr::SOFTWARE, s.as_bytes());
        }
        match p.integrity {
            Integrity::Sha1 => w.integrity(p.key.as_bytes()),
            Integrity::Sha256 => w.integrity_sha256(p.key.as_bytes()),
        };
        if p.fingerprint {
            w.fingerprint();
        }
        io.send_to_client(to, &self.out);
    }

    /// Connect (RFC 6062 §5.2): 437 without an allocation on this connection, 400 without a
    /// valid XOR-PEER-ADDRESS or on a UDP allocation, 403 when the peer policy refuses the
    /// address (the same check as CreatePermission), 446 when a connection to that peer is
    /// already being made or live, 447 when the driver cannot start it.
    pub(super) fn handle_connect(
        &mut self,
        req: Request<'_>,
        io: &mut impl Io,
    ) -> Result<(), RequestError> {
        let Request { ft, msg, auth, .. } = req;
        let slot = self.allocation_slot(ft)?;
        let Some(a) = self.slots.get(slot).and_then(|s| s.as_ref()) else {
            return Ok(());
        };
        if !a.tcp {
            return Err(RequestError::BadRequest);
        }
        let peer = match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Some(Ok(p)) => p,
            _ => return Err(RequestError::BadRequest),
        };
        if let Err(code) = self.check_peer(slot, peer) {
            debug!(client = %ft.client, peer = %peer, code = code.code(), "connect refused");
            return Err(code);
        }
        let Some(from) = self
            .slots
            .get(slot)
            .and_then(|s| s.as_ref())
            .and_then(|a| a.relay_for(&peer))
            .map(|r| r.bound)
        else {
            return Err(RequestError::PeerAddressFamilyMismatch);
        };
        if self.tcp.by_pair.contains_key(&(*ft, peer)) {
            return Err(RequestError::ConnectionAlreadyExists);
        }
        if self.tcp.count(ft) >= self.cfg.max_permissions {
            return Err(RequestError::InsufficientCapacity);
        }
        let id = self.new_connection_id();
        let parked = self.park(id, msg, auth);
        self.tcp.insert(
            id,
            PeerConn {
                control: *ft,
                peer,
                state: State::Connecting(parked),
            },
        );
        if !io.connect_peer(id, from, peer) {
            self.tcp.remove(id);
            return Err(RequestError::ConnectionTimeoutOrFailure);
        }
        Ok(())
    }

    /// The outcome of [`Io::connect_peer`]. Returns whether the core keeps the connection
    /// (false: the driver closes it, e.g. the allocation ended meanwhile).
    pub fn handle_peer_connected(
        &mut self,
        now: Time,
        id: ConnectionId,
        ok: bool,
        io: &mut impl Io,
    ) -> bool {
        let Some(c) = self.tcp.conns.get_mut(&id) else {
            return false;
        };
        let control = c.control;
        let deadline = now.mono + BIND_WINDOW;
        let parked = match std::mem::replace(&mut c.state, State::Pending(deadline)) {
            State::Connecting(p) => p,
            other => {
                c.state = other;
                return false;
            }
        };
        if ok {
            self.tcp.timers.push(Reverse((deadline, id)));
            self.answer_parked(&control, &parked, None, io);
        } else {
            self.tcp.remove(id);
            self.answer_parked(
                &control,
                &parked,
                Some(RequestError::ConnectionTimeoutOrFailure),
                io,
            );
        }
        ok
    }

    /// A peer connected to a TCP relayed address (RFC 6062 §5.3). Without a permission for
    /// the peer's IP the driver must close it (None); otherwise the client hears of it in a
    /// ConnectionAttempt indication and has 30 seconds to bind it.
    pub fn handle_peer_connection(
        &mut self,
        now: Time,
        relay: RelayId,
        peer: SocketAddr,
        io: &mut impl Io,
    ) -> Option<ConnectionId> {
        let &slot = self.by_relay.get(&relay)?;
        let a = self.slots.get(slot)?.as_ref()?;
        if !a.tcp || !a.has_permission(&peer.ip(), now.mono) {
            debug!(%peer, "peer connection refused: no permission");
            return None;
        }
        let control = a.five_tuple;
        if self.tcp.count(&control) >= self.cfg.max_permissions
            || self.tcp.by_pair.contains_key(&(control, peer))
        {
            debug!(%peer, "peer connection refused: too many connections");
            return None;
        }
        let id = self.new_connection_id();
        let deadline = now.mono + BIND_WINDOW;
        self.tcp.insert(
            id,
            PeerConn {
                control,
                peer,
                state: State::Pending(deadline),
            },
        );
        self.tcp.timers.push(Reverse((deadline, id)));
        let txid = self.random_txid();
        let mut w = MessageWriter::new(
            &mut self.out,
            method::CONNECTION_ATTEMPT,
            Class::Indication,
            txid,
        );
        w.xor_address(attr::XOR_PEER_ADDRESS, peer)
            .u32_attr(attr::CONNECTION_ID, id);
        io.send_to_client(&control, &self.out);
        Some(id)
    }

    /// ConnectionBind (RFC 6062 §5.4) on a new client connection: 400 over UDP, on a
    /// connection that holds an allocation, or without CONNECTION-ID. The id may belong to
    /// another worker, so the answer waits for [`Server::handle_connection_claimed`].
    pub(super) fn handle_connection_bind(
        &mut self,
        req: Request<'_>,
        io: &mut impl Io,
    ) -> Result<(), RequestError> {
        let Request { ft, msg, auth, .. } = req;
        let id = match msg.u32_attr(attr::CONNECTION_ID) {
            Some(Ok(id)) => id,
            _ => return Err(RequestError::BadRequest),
        };
        if ft.transport == Transport::Udp
            || self.by_tuple.contains_key(ft)
            || self.tcp.parked.contains_key(ft)
        {
            return Err(RequestError::BadRequest);
        }
        let Some(user) = msg
            .get(attr::USERNAME)
            .and_then(|u| std::str::from_utf8(u).ok())
        else {
            return Err(RequestError::BadRequest);
        };
        let parked = self.park(id, msg, auth);
        self.tcp.parked.insert(*ft, parked);
        io.claim_connection(id, ft, user);
        Ok(())
    }

    /// On the worker owning `id`: hands a pending peer connection to a ConnectionBind from
    /// `username`. 400 when `id` names no pending connection, 441 when the allocation
    /// belongs to someone else.
    pub fn take_connection(
        &mut self,
        id: ConnectionId,
        username: &str,
    ) -> Result<(), RequestError> {
        let c = self.tcp.conns.get(&id).ok_or(RequestError::BadRequest)?;
        if !matches!(c.state, State::Pending(_)) {
            return Err(RequestError::BadRequest);
        }
        let owner = self
            .by_tuple
            .get(&c.control)
            .and_then(|&s| self.slots.get(s))
            .and_then(|s| s.as_ref())
            .ok_or(RequestError::BadRequest)?;
        if owner.username != username {
            return Err(RequestError::WrongCredentials);
        }
        if let Some(c) = self.tcp.conns.get_mut(&id) {
            c.state = State::Bound;
        }
        Ok(())
    }

    /// The owner's answer to a parked ConnectionBind on `data`. On success the response is
    /// queued and the driver joins the connections; returns whether it did.
    pub fn handle_connection_claimed(
        &mut self,
        data: &FiveTuple,
        id: ConnectionId,
        result: Result<(), RequestError>,
        io: &mut impl Io,
    ) -> bool {
        let Some(p) = self.tcp.parked.remove(data) else {
            return false;
        };
        if p.id != id {
            self.tcp.parked.insert(*data, p);
            return false;
        }
        match result {
            Ok(()) => {
                self.answer_parked(data, &p, None, io);
                io.bind_data_connection(id, data);
                true
            }
            Err(code) => {
                self.answer_parked(data, &p, Some(code), io);
                false
            }
        }
    }

    /// A peer data connection (or its client side) closed in the driver.
    pub fn handle_peer_connection_closed(&mut self, id: ConnectionId) {
        self.tcp.remove(id);
    }

    /// Forgets a ConnectionBind parked for a client connection that closed.
    pub(super) fn tcp_forget(&mut self, data: &FiveTuple) {
        self.tcp.parked.remove(data);
    }

    pub(super) fn tcp_poll_timeout(&self) -> Option<Instant> {
        self.tcp.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Closes peer data connections left unbound past their 30 seconds.
    pub(super) fn tcp_handle_timeout(&mut self, now: Instant, io: &mut impl Io) {
        while let Some(&Reverse((t, id))) = self.tcp.timers.peek() {
            if t > now {
                break;
            }
            self.tcp.timers.pop();
            let expired = self
                .tcp
                .conns
                .get(&id)
                .is_some_and(|c| matches!(c.state, State::Pending(d) if d <= now));
            if expired {
                self.tcp.remove(id);
                debug!(id, "peer data connection not bound in time");
                io.close_peer_connection(id);
            }
        }
    }

    /// Closes every data connection of the allocation on `control` (it is being deleted).
    pub(super) fn tcp_end_allocation(&mut self, control: &FiveTuple, io: &mut impl Io) {
        if self.tcp.count(control) == 0 {
            return;
        }
        let ids: Vec<ConnectionId> = self
            .tcp
            .conns
            .iter()
            .filter(|(_, c)| c.control == *control)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.tcp.remove(id);
            io.close_peer_connection(id);
        }
    }
}
