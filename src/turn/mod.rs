//! The TURN allocation manager ([RFC 8656](https://www.rfc-editor.org/rfc/rfc8656)), sans-IO.
//!
//! Input is `(time, five-tuple, bytes)`; output goes through the [`Io`] trait the driver
//! implements (send to a client, send to a peer, open and close a relay socket). Nothing here
//! reads a clock, draws randomness from the OS or touches a socket, so a simulated client,
//! peer and clock can drive it (see `sim_tests`).

#![forbid(unsafe_code)]

mod allocation;
pub mod bandwidth;
pub mod error;
pub mod peer_policy;
pub mod ports;
pub mod quota;
pub mod rate_limit;
mod server;
pub mod stats;

#[cfg(test)]
mod sim_tests;

pub use server::{
    AllocationEvent, AllocationEventKind, DEFAULT_LEASE_TIMEOUT, EndReason, LeaseAnswer,
    LeaseRequest, LeaseStats, Limits, MAX_PARKED, MAX_PENDING_EVENTS, QualitySummary, Reconfigure,
    Server, ServerConfig, Stats, challenge_len,
};

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// The transport between client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// Client address, server address and transport: what identifies an allocation
/// (RFC 8656 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    /// The listener's local address as the driver knows it.
    pub server: SocketAddr,
    pub transport: Transport,
}

/// A point in time as the core sees it: a monotonic instant for lifetimes and the wall clock
/// (seconds since the Unix epoch) for REST credential expiry and nonces.
#[derive(Clone, Copy, Debug)]
pub struct Time {
    pub mono: Instant,
    pub unix: u64,
}

/// Names one relay socket. Never reused within a server's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u64);

/// Options for a relay socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayOptions {
    /// Set the IP DF bit on packets to peers (Allocate carried DONT-FRAGMENT, RFC 8656 §7.2).
    pub dont_fragment: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindError {
    /// The port is taken by someone else; the core tries another.
    AddrInUse,
    Other,
}

/// Bytes the driver leaves free before a peer datagram handed to
/// [`Server::handle_peer`], so a Data indication or ChannelData header can be written in place:
/// STUN header (20) + XOR-PEER-ADDRESS for IPv6 (24) + DATA header (4).
pub const PEER_HEADROOM: usize = 48;
/// Bytes the driver leaves free after a peer datagram, for padding to a multiple of 4.
pub const PEER_TAILROOM: usize = 4;

/// What the core asks of the driver. Sends are fire-and-forget: a full socket buffer drops
/// the datagram, as UDP would.
pub trait Io {
    fn send_to_client(&mut self, to: &FiveTuple, data: &[u8]);
    fn send_to_peer(&mut self, relay: RelayId, peer: SocketAddr, data: &[u8]);
    /// Opens a relay socket bound to `addr`; packets it receives come back through
    /// [`Server::handle_peer`] with this id.
    fn bind_relay(
        &mut self,
        relay: RelayId,
        addr: SocketAddr,
        opts: RelayOptions,
    ) -> Result<(), BindError>;
    fn close_relay(&mut self, relay: RelayId);

    // RFC 6062 TCP allocations. The defaults refuse, for drivers without TCP relaying.

    /// Opens a TCP listening socket on a relayed address (RFC 6062 §5.1); connections it
    /// accepts come back through [`Server::handle_peer_connection`]. [`Io::close_relay`]
    /// closes it.
    fn listen_relay_tcp(&mut self, relay: RelayId, addr: SocketAddr) -> Result<(), BindError> {
        let _ = (relay, addr);
        Err(BindError::Other)
    }
    /// Starts a TCP connection from the relayed address `from` to `peer` (RFC 6062 §5.2),
    /// giving up after the driver's connect timeout; the outcome comes back through
    /// [`Server::handle_peer_connected`]. False when it cannot even be started.
    fn connect_peer(&mut self, id: ConnectionId, from: SocketAddr, peer: SocketAddr) -> bool {
        let _ = (id, from, peer);
        false
    }
    /// Closes peer data connection `id` and, once bound, its client data connection.
    fn close_peer_connection(&mut self, id: ConnectionId) {
        let _ = id;
    }
    /// A ConnectionBind for `id` arrived on client connection `data` (any worker may own
    /// `id`): ask the owner's core ([`Server::take_connection`]) and come back with
    /// [`Server::handle_connection_claimed`].
    fn claim_connection(&mut self, id: ConnectionId, data: &FiveTuple, username: &str) {
        let _ = (id, data, username);
    }
    /// After the ConnectionBind success response queued on `data`, pipe bytes as they are
    /// between `data` and peer data connection `id` (RFC 6062 §5.4).
    fn bind_data_connection(&mut self, id: ConnectionId, data: &FiveTuple) {
        let _ = (id, data);
    }

    // Strict fleet quotas. The defaults have no store: quotas are counted per node.

    /// Asks the fleet's store for a lease for a parked Allocate; the answer comes back
    /// through [`Server::handle_lease_reply`] with `lease.id`. False: there is no store to
    /// ask now (no fleet, or it is down), and the Allocate is decided by per-node counting.
    fn request_lease(&mut self, lease: LeaseRequest<'_>) -> bool {
        let _ = lease;
        false
    }
    /// Gives back a lease held for `user` (its allocation ended, or was not made after all).
    fn release_lease(&mut self, user: &str) {
        let _ = user;
    }

    // The kernel fast path (`server.kernel-offload`). The defaults have none.

    /// Whether the driver has a kernel fast path to offer channels to.
    fn fast_path(&self) -> bool {
        false
    }
    /// Installs a channel in the kernel fast path, or moves its expiry (the same route with
    /// a new `expires`). Called only after the core's own checks; the kernel relays nothing
    /// else.
    fn install_fast_path(&mut self, entry: &FastPathEntry) {
        let _ = entry;
    }
    /// Takes a channel out of the kernel fast path.
    fn remove_fast_path(&mut self, entry: &FastPathEntry) {
        let _ = entry;
    }
    /// The allocation `alloc` has no entry left in the kernel: its kernel counts so far,
    /// after which the driver forgets them.
    fn end_fast_path(&mut self, alloc: u64) -> Option<KernelCounts> {
        let _ = alloc;
        None
    }
}

/// One channel the kernel may relay (see [`Io::install_fast_path`]): ChannelData from
/// `client` on `channel` leaves as UDP from `relay` (the bound address) to `peer`, and UDP
/// from `peer` to `relay` leaves as ChannelData to the client, until `expires`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastPathEntry {
    /// The allocation's id (its counters in the kernel).
    pub alloc: u64,
    pub client: FiveTuple,
    pub channel: u16,
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    /// The earliest of the channel's, the permission's and the allocation's expiries.
    pub expires: Instant,
}

impl FastPathEntry {
    /// The same channel between the same addresses, whatever the expiry.
    pub fn same_route(&self, o: &FastPathEntry) -> bool {
        FastPathEntry {
            expires: o.expires,
            ..*self
        } == *o
    }
}

/// What the kernel relayed for one allocation, counted since its first entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounts {
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_from_peer: u64,
    pub bytes_from_peer: u64,
}

impl KernelCounts {
    /// The counts beyond `earlier` (never negative).
    pub fn since(&self, earlier: &KernelCounts) -> KernelCounts {
        KernelCounts {
            packets_to_peer: self.packets_to_peer.saturating_sub(earlier.packets_to_peer),
            bytes_to_peer: self.bytes_to_peer.saturating_sub(earlier.bytes_to_peer),
            packets_from_peer: self
                .packets_from_peer
                .saturating_sub(earlier.packets_from_peer),
            bytes_from_peer: self.bytes_from_peer.saturating_sub(earlier.bytes_from_peer),
        }
    }

    pub fn add(&mut self, o: &KernelCounts) {
        self.packets_to_peer += o.packets_to_peer;
        self.bytes_to_peer += o.bytes_to_peer;
        self.packets_from_peer += o.packets_from_peer;
        self.bytes_from_peer += o.bytes_from_peer;
    }

    /// Field by field, the larger.
    pub fn max(&self, o: KernelCounts) -> KernelCounts {
        KernelCounts {
            packets_to_peer: self.packets_to_peer.max(o.packets_to_peer),
            bytes_to_peer: self.bytes_to_peer.max(o.bytes_to_peer),
            packets_from_peer: self.packets_from_peer.max(o.packets_from_peer),
            bytes_from_peer: self.bytes_from_peer.max(o.bytes_from_peer),
        }
    }
}

/// CONNECTION-ID (RFC 6062 §6.2.1). The top bits name the worker whose core owns the
/// connection, so a ConnectionBind arriving on any worker can find it.
pub type ConnectionId = u32;

/// Bits of a [`ConnectionId`] below the worker index: room for 1024 workers and 4 million
/// live ids per worker.
pub const CONNECTION_ID_WORKER_SHIFT: u32 = 22;

/// The worker that owns a connection id.
pub fn connection_owner(id: ConnectionId) -> usize {
    (id >> CONNECTION_ID_WORKER_SHIFT) as usize
}

/// The key per-client-IP limits count under: an IPv4 address (IPv4-mapped IPv6 too) as
/// itself, an IPv6 address by its /64, the smallest block one subscriber is normally given.
pub fn client_ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpAddr::V4(a),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & !((1u128 << 64) - 1)).into()),
    }
}
