//! Statistics of one worker's core: plain integers bumped on the packet path (no atomics, no
//! lock), read from the admin side through the worker's control channel and summed there.
//! Every label set is fixed at compile time (methods, error codes, drop reasons, transports),
//! so nothing grows with sessions or users.

use std::net::SocketAddr;

use super::Transport;
use crate::stun::method;

/// Why a relayed packet was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// No permission for the peer's IP (RFC 8656 §9: the server MUST drop it).
    NoPermission = 0,
    /// ChannelData on a channel number not bound (RFC 8656 §12.4).
    NoChannel = 1,
    /// Over the allocation's bandwidth limit.
    Bandwidth = 2,
    /// ChannelData or Send from a 5-tuple without an allocation.
    NoAllocation = 3,
    /// No relay of the peer's family, or a datagram too large to frame.
    Unroutable = 4,
}

pub const DROP_REASONS: usize = 5;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::NoPermission,
        DropReason::NoChannel,
        DropReason::Bandwidth,
        DropReason::NoAllocation,
        DropReason::Unroutable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoPermission => "no_permission",
            DropReason::NoChannel => "no_channel",
            DropReason::Bandwidth => "bandwidth",
            DropReason::NoAllocation => "no_allocation",
            DropReason::Unroutable => "unroutable",
        }
    }
}

/// Request methods counted by name; anything else is "other".
pub const METHODS: [(u16, &str); 7] = [
    (method::BINDING, "binding"),
    (method::ALLOCATE, "allocate"),
    (method::REFRESH, "refresh"),
    (method::CREATE_PERMISSION, "create_permission"),
    (method::CHANNEL_BIND, "channel_bind"),
    (method::CONNECT, "connect"),
    (method::CONNECTION_BIND, "connection_bind"),
];
/// Slots for [`METHODS`] plus "other".
pub const METHOD_SLOTS: usize = METHODS.len() + 1;

/// Error codes counted by value; anything else is "other".
pub const CODES: [u16; 15] = [
    300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 446, 447, 486, 508,
];
/// Slots for [`CODES`], 500 and "other".
pub const CODE_SLOTS: usize = CODES.len() + 2;

pub fn method_slot(m: u16) -> usize {
    METHODS
        .iter()
        .position(|(v, _)| *v == m)
        .unwrap_or(METHODS.len())
}

pub fn method_name(slot: usize) -> &'static str {
    METHODS.get(slot).map_or("other", |(_, n)| n)
}

pub fn code_slot(code: u16) -> usize {
    if code == 500 {
        return CODES.len();
    }
    CODES
        .iter()
        .position(|c| *c == code)
        .unwrap_or(CODES.len() + 1)
}

/// The label of a code slot: the code, or "other".
pub fn code_name(slot: usize) -> String {
    match slot {
        s if s < CODES.len() => CODES[s].to_string(),
        s if s == CODES.len() => "500".to_string(),
        _ => "other".to_string(),
    }
}

/// Relayed data of one worker, in coturn's terms: `rcv` from clients, `sent` to clients,
/// `peer_rcv` from peers, `peer_sent` to peers; packets and payload bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub rcvp: u64,
    pub rcvb: u64,
    pub sentp: u64,
    pub sentb: u64,
    pub peer_rcvp: u64,
    pub peer_rcvb: u64,
    pub peer_sentp: u64,
    pub peer_sentb: u64,
}

impl Traffic {
    pub fn add(&mut self, o: &Traffic) {
        self.rcvp += o.rcvp;
        self.rcvb += o.rcvb;
        self.sentp += o.sentp;
        self.sentb += o.sentb;
        self.peer_rcvp += o.peer_rcvp;
        self.peer_rcvb += o.peer_rcvb;
        self.peer_sentp += o.peer_sentp;
        self.peer_sentb += o.peer_sentb;
    }
}

/// Point-in-time gauges of one worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Live allocations by client transport: UDP, TCP, TLS.
    pub allocations: [u64; 3],
    /// Live permissions over all allocations.
    pub permissions: u64,
    /// Live channel bindings over all allocations.
    pub channels: u64,
}

pub fn transport_slot(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

/// coturn's `type` label values for allocations.
pub const TRANSPORT_NAMES: [&str; 3] = ["UDP", "TCP", "TLS"];

/// One allocation as the admin API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionInfo {
    /// Unique in this worker's life (the allocation's first relay id).
    pub id: u64,
    /// The user, a REST user without its timestamp.
    pub user: String,
    /// The USERNAME as sent.
    pub username: String,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
    pub relayed: Vec<SocketAddr>,
    pub started_unix: u64,
    pub lifetime_left_secs: u64,
    pub peers: usize,
    pub channels: usize,
    pub max_bps: u64,
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_from_peer: u64,
    pub bytes_from_peer: u64,
    pub drops: [u64; DROP_REASONS],
    /// An RFC 6062 TCP allocation: its data is piped between connections, never through
    /// the packet path, so call quality does not see it.
    pub tcp_relay: bool,
    /// Call quality, once something was relayed with `telemetry.enabled`.
    pub quality: Option<crate::quality::QualityReport>,
    /// Channels in the kernel fast path now, and what it relayed (part of the totals
    /// above; `server.kernel-offload`).
    pub kernel_channels: usize,
    pub kernel: super::KernelCounts,
}
