//! Relaying between two allocations of the same worker without the kernel.
//!
//! When a client's datagram goes to a peer address that is the relay socket of another
//! allocation on the same worker (both sides relay-only, the common browser case), the
//! driver hands it to that allocation's [`crate::turn::Server::handle_peer`] directly, with the
//! sending relay socket's address as the peer: exactly what the receiving socket would have
//! read from the kernel. Behind 1:1 NAT (`relay.external-ips`) clients name each other's
//! relayed addresses by the advertised IP, which the kernel could not deliver here (it takes
//! a NAT that loops the datagram back); the driver matches those too, and the receiver sees
//! the sender's advertised address, as such a NAT would show it. The core has checked the sender's permission for the destination
//! before asking to send (RFC 8656 §12: a client's data goes only to permitted peers) and
//! checks the receiver's permission for the sender in `handle_peer` (RFC 8656 §11.2 and §12:
//! data from a peer without a permission is dropped), so both sides are checked as if the
//! datagram had crossed the kernel.

use std::net::SocketAddr;

use crate::turn::{PEER_HEADROOM, PEER_TAILROOM, RelayId};

/// Datagrams held for local delivery within one batch; more go through the kernel.
const LOCAL_BATCH: usize = 64;
/// Bytes held for local delivery within one batch (headroom and tail room included).
const LOCAL_BYTES: usize = 128 * 1024;

#[derive(Clone, Copy)]
struct Local {
    to: RelayId,
    from: SocketAddr,
    off: usize,
    len: usize,
}

/// Datagrams from one of the worker's relay sockets to another, kept until the end of the
/// batch that produced them (the core cannot be entered again from inside its own call).
#[derive(Default)]
pub(in crate::net) struct LocalQueue {
    arena: Box<[u8]>,
    used: usize,
    items: Vec<Local>,
}

impl LocalQueue {
    pub(in crate::net) fn new() -> LocalQueue {
        LocalQueue {
            arena: vec![0u8; LOCAL_BYTES].into_boxed_slice(),
            used: 0,
            items: Vec::with_capacity(LOCAL_BATCH),
        }
    }

    /// Keeps `data` for relay `to` as coming from `from`, with room around it for the core
    /// to write a header in place; false when the queue is full.
    pub(in crate::net) fn push(&mut self, to: RelayId, from: SocketAddr, data: &[u8]) -> bool {
        if self.items.len() >= LOCAL_BATCH {
            return false;
        }
        let off = self.used;
        let need = PEER_HEADROOM + data.len() + PEER_TAILROOM;
        // The whole span, tail room included, must fit.
        let Some(span) = self.arena.get_mut(off..off + need) else {
            return false;
        };
        span[PEER_HEADROOM..PEER_HEADROOM + data.len()].copy_from_slice(data);
        self.items.push(Local {
            to,
            from,
            off,
            len: data.len(),
        });
        self.used += need;
        true
    }

    pub(in crate::net) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Hands every kept datagram to `deliver(to, from, buf, payload range)` in order, then
    /// empties the queue.
    pub(in crate::net) fn drain(
        &mut self,
        mut deliver: impl FnMut(RelayId, SocketAddr, &mut [u8], std::ops::Range<usize>),
    ) {
        for l in &self.items {
            let end = l.off + PEER_HEADROOM + l.len + PEER_TAILROOM;
            if let Some(buf) = self.arena.get_mut(l.off..end) {
                deliver(l.to, l.from, buf, PEER_HEADROOM..PEER_HEADROOM + l.len);
            }
        }
        self.items.clear();
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_datagrams_with_room_around_them_in_order() {
        let mut q = LocalQueue::new();
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert!(q.is_empty());
        assert!(q.push(RelayId(7), from, b"abc"));
        assert!(q.push(RelayId(8), from, b"hello"));
        let mut seen = Vec::new();
        q.drain(|to, f, buf, range| {
            assert!(range.start >= PEER_HEADROOM && range.end + PEER_TAILROOM <= buf.len());
            seen.push((to, f, buf[range].to_vec()));
        });
        assert_eq!(
            seen,
            vec![
                (RelayId(7), from, b"abc".to_vec()),
                (RelayId(8), from, b"hello".to_vec())
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn the_tail_room_fits_too() {
        let mut q = LocalQueue::new();
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        // Exactly the arena, and two bytes more than leaves room for the tail.
        let exact = LOCAL_BYTES - PEER_HEADROOM - PEER_TAILROOM;
        assert!(!q.push(RelayId(1), from, &vec![0u8; exact + 2]));
        assert!(q.push(RelayId(1), from, &vec![7u8; exact]));
        let mut n = 0;
        q.drain(|_, _, buf, range| {
            assert_eq!(buf[range].len(), exact);
            n += 1;
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn refuses_when_full() {
        let mut q = LocalQueue::new();
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert!(!q.push(RelayId(1), from, &vec![0u8; LOCAL_BYTES]));
        for _ in 0..LOCAL_BATCH {
            assert!(q.push(RelayId(1), from, b"x"));
        }
        assert!(!q.push(RelayId(1), from, b"x"));
        q.drain(|_, _, _, _| {});
        assert!(q.push(RelayId(1), from, b"x"));
    }
}
