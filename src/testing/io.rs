//! The core's [`Io`] for code that drives it without the network driver: [`SimIo`], a
//! simulated driver that keeps every call for the tests to look at, and [`CountingIo`], which
//! only counts, for what the core costs without sockets.

use std::collections::HashSet;
use std::hint::black_box;
use std::net::SocketAddr;

use super::LastToClient;
use crate::turn::{
    BindError, ConnectionId, FastPathEntry, FiveTuple, Io, KernelCounts, LeaseRequest,
    PEER_HEADROOM, PEER_TAILROOM, RelayId, RelayOptions,
};

/// A simulated driver: keeps what the core sent and asked for, in order, and fails the binds
/// of the addresses in [`SimIo::taken`], as if another process held them.
#[derive(Default)]
pub struct SimIo {
    pub to_client: Vec<(FiveTuple, Vec<u8>)>,
    pub to_peer: Vec<(RelayId, SocketAddr, Vec<u8>)>,
    /// UDP relay sockets bound.
    pub bound: Vec<(RelayId, SocketAddr)>,
    pub closed: Vec<RelayId>,
    /// Addresses some other process holds: binding them fails with AddrInUse.
    pub taken: HashSet<SocketAddr>,
    /// RFC 6062 calls.
    pub tcp: TcpCalls,
    /// A fleet store to ask for leases (strict fleet quotas): requests are kept in
    /// `lease_requests` as (id, user, user quota, total quota, leases wanted) for the test
    /// to answer.
    pub lease_store: bool,
    pub lease_requests: Vec<(u64, String, u32, u32, u32)>,
    /// Users whose leases were given back, in order.
    pub lease_releases: Vec<String>,
    /// A kernel fast path to offer channels to; its calls in order ("install", "remove"),
    /// the allocations whose counts were taken ("end"), and the counts it reports per
    /// allocation id.
    pub fast_path: bool,
    pub fast_calls: Vec<(&'static str, FastPathEntry)>,
    pub fast_ended: Vec<u64>,
    pub kernel_counts: std::collections::HashMap<u64, KernelCounts>,
}

impl SimIo {
    /// The fast path's entries now: installs and rewrites minus removals, by route.
    pub fn fast_entries(&self) -> Vec<FastPathEntry> {
        let mut live: Vec<FastPathEntry> = Vec::new();
        for (call, e) in &self.fast_calls {
            live.retain(|l| !l.same_route(e));
            if *call == "install" {
                live.push(*e);
            }
        }
        live
    }
}

/// What the core asked of the driver's TCP side (RFC 6062).
#[derive(Default)]
pub struct TcpCalls {
    pub listens: Vec<(RelayId, SocketAddr)>,
    pub connects: Vec<(ConnectionId, SocketAddr, SocketAddr)>,
    pub closed: Vec<ConnectionId>,
    pub claims: Vec<(ConnectionId, FiveTuple, String)>,
    pub binds: Vec<(ConnectionId, FiveTuple)>,
}

impl Io for SimIo {
    fn send_to_client(&mut self, to: &FiveTuple, data: &[u8]) {
        self.to_client.push((*to, data.to_vec()));
    }
    fn send_to_peer(&mut self, relay: RelayId, peer: SocketAddr, data: &[u8]) {
        self.to_peer.push((relay, peer, data.to_vec()));
    }
    fn bind_relay(
        &mut self,
        relay: RelayId,
        addr: SocketAddr,
        _: RelayOptions,
    ) -> Result<(), BindError> {
        if self.taken.contains(&addr) {
            return Err(BindError::AddrInUse);
        }
        self.bound.push((relay, addr));
        Ok(())
    }
    fn close_relay(&mut self, relay: RelayId) {
        self.closed.push(relay);
    }
    fn listen_relay_tcp(&mut self, relay: RelayId, addr: SocketAddr) -> Result<(), BindError> {
        self.tcp.listens.push((relay, addr));
        Ok(())
    }
    fn connect_peer(&mut self, id: ConnectionId, from: SocketAddr, peer: SocketAddr) -> bool {
        self.tcp.connects.push((id, from, peer));
        true
    }
    fn close_peer_connection(&mut self, id: ConnectionId) {
        self.tcp.closed.push(id);
    }
    fn claim_connection(&mut self, id: ConnectionId, data: &FiveTuple, username: &str) {
        self.tcp.claims.push((id, *data, username.to_string()));
    }
    fn bind_data_connection(&mut self, id: ConnectionId, data: &FiveTuple) {
        self.tcp.binds.push((id, *data));
    }
    fn request_lease(&mut self, l: LeaseRequest<'_>) -> bool {
        if self.lease_store {
            self.lease_requests.push((
                l.id,
                l.user.to_owned(),
                l.user_quota,
                l.total_quota,
                l.count,
            ));
        }
        self.lease_store
    }
    fn release_lease(&mut self, user: &str) {
        self.lease_releases.push(user.to_owned());
    }
    fn fast_path(&self) -> bool {
        self.fast_path
    }
    fn install_fast_path(&mut self, entry: &FastPathEntry) {
        self.fast_calls.push(("install", *entry));
    }
    fn remove_fast_path(&mut self, entry: &FastPathEntry) {
        self.fast_calls.push(("remove", *entry));
    }
    fn end_fast_path(&mut self, alloc: u64) -> Option<KernelCounts> {
        self.fast_ended.push(alloc);
        self.kernel_counts.remove(&alloc)
    }
}

/// An [`Io`] that counts what the core sends and keeps the last STUN message to a client (for
/// the setup requests of a [`TestClient`](super::TestClient) to read), in a buffer with room
/// for the largest, so that relaying allocates nothing: what the core costs without sockets.
pub struct CountingIo {
    /// Messages to clients (ChannelData included), and datagrams to peers.
    pub to_client: u64,
    pub to_peer: u64,
    /// The last STUN message to a client, and where it went.
    pub last: Vec<u8>,
    pub last_to: Option<FiveTuple>,
    /// Relay sockets bound, in order.
    pub relays: Vec<RelayId>,
}

impl Default for CountingIo {
    fn default() -> CountingIo {
        CountingIo {
            to_client: 0,
            to_peer: 0,
            last: Vec::with_capacity(PEER_HEADROOM + 65536 + PEER_TAILROOM),
            last_to: None,
            relays: Vec::new(),
        }
    }
}

impl Io for CountingIo {
    fn send_to_client(&mut self, to: &FiveTuple, data: &[u8]) {
        self.to_client += 1;
        // STUN messages start with two zero bits (RFC 8489 §5); ChannelData does not.
        if data.first().is_some_and(|b| b & 0xC0 == 0) {
            self.last.clear();
            self.last.extend_from_slice(data);
            self.last_to = Some(*to);
        }
        black_box(data);
    }
    fn send_to_peer(&mut self, _: RelayId, _: SocketAddr, data: &[u8]) {
        self.to_peer += 1;
        black_box(data);
    }
    fn bind_relay(&mut self, r: RelayId, _: SocketAddr, _: RelayOptions) -> Result<(), BindError> {
        self.relays.push(r);
        Ok(())
    }
    fn close_relay(&mut self, _: RelayId) {}
}

impl LastToClient for CountingIo {
    fn last_to_client(&self) -> &[u8] {
        &self.last
    }
}
