//! The TURN allocation manager ([RFC 8656](https://www.rfc-editor.org/rfc/rfc8656)), sans-IO.
//!
//! Input is `(time, five-tuple, bytes)`; output goes through the [`Io`] trait the driver
//! implements (send to a client, send to a peer, open and close a relay socket). Nothing here
//! reads a clock, draws randomness from the OS or touches a socket, so a simulated client,
//! peer and clock can drive it (see `sim_tests`).

mod allocation;
pub mod error;
pub mod peer_policy;
pub mod ports;
pub mod quota;
pub mod rate_limit;
mod server;

#[cfg(test)]
mod sim_tests;

pub use server::{Limits, Server, ServerConfig, Stats};

use std::net::SocketAddr;
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
}
