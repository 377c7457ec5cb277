//! The kernel fast path's authority (`server.kernel-offload`): which channels of an
//! allocation the driver may let the kernel relay, kept in step with the permission, the
//! channel and the allocation they depend on, and the kernel's counters credited back.
//!
//! A channel is offered to the kernel only when all of these hold: the client came over UDP
//! to a listener on a specific address (the kernel needs the address to answer from), the
//! allocation has no bandwidth limit (the limit is enforced here, on the socket path), the
//! channel is bound and its peer has a live permission. The entry carries the earliest of
//! the channel's, the permission's and the allocation's expiries, so the kernel stops on its
//! own the moment any of them lapses; a refresh moves the expiry forward, a sweep or an end
//! takes the entry out.

use super::*;
use crate::turn::{FastPathEntry, KernelCounts};

impl Server {
    /// Brings the allocation's kernel entries in line with its channels and permissions.
    pub(super) fn sync_fast_path(&mut self, slot: usize, now: Instant, io: &mut impl Io) {
        if !io.fast_path() {
            return;
        }
        let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return;
        };
        let want = wanted_entries(a, now);
        if want.is_empty() && a.fast.is_empty() {
            return;
        }
        for old in &a.fast {
            if !want.iter().any(|w| w.same_route(old)) {
                io.remove_fast_path(old);
            }
        }
        for w in &want {
            if !a.fast.iter().any(|old| old == w) {
                io.install_fast_path(w);
            }
        }
        let ended = !a.fast.is_empty() && want.is_empty();
        a.fast = want;
        if ended && let Some(k) = io.end_fast_path(a.id) {
            credit(&mut self.stats, a, k);
            // The slot went back; a later entry starts a new one from zero.
            a.kernel_seen = KernelCounts::default();
        }
    }

    /// Takes every kernel entry of an allocation that is ending out, and credits its last
    /// kernel counts.
    pub(super) fn end_fast_path(stats: &mut Stats, a: &mut Allocation, io: &mut impl Io) {
        if a.fast.is_empty() {
            return;
        }
        for e in std::mem::take(&mut a.fast) {
            io.remove_fast_path(&e);
        }
        if let Some(k) = io.end_fast_path(a.id) {
            credit(stats, a, k);
            a.kernel_seen = KernelCounts::default();
        }
    }

    /// Adds what the kernel relayed since the last call to the allocations' counters and
    /// the server's totals. `read` gives an allocation's kernel counts so far (by
    /// allocation id), as the driver reads them from the kernel's maps.
    pub fn credit_kernel_counts(&mut self, mut read: impl FnMut(u64) -> Option<KernelCounts>) {
        let stats = &mut self.stats;
        for a in self.slots.iter_mut().flatten() {
            if a.fast.is_empty() {
                continue;
            }
            if let Some(k) = read(a.id) {
                credit(stats, a, k);
            }
        }
    }
}

/// The entries an allocation should have in the kernel now.
fn wanted_entries(a: &Allocation, now: Instant) -> Vec<FastPathEntry> {
    let ft = &a.five_tuple;
    if ft.transport != Transport::Udp
        || a.tcp
        || ft.server.ip().is_unspecified()
        || a.quota.rate().bps != 0
        || now >= a.expires
    {
        return Vec::new();
    }
    let mut want = Vec::new();
    for (&channel, c) in &a.channels {
        if now >= c.expires {
            continue;
        }
        let Some(&permission) = a.permissions.get(&c.peer.ip()) else {
            continue;
        };
        if now >= permission {
            continue;
        }
        let Some(relay) = a.relay_for(&c.peer) else {
            continue;
        };
        want.push(FastPathEntry {
            alloc: a.id,
            client: *ft,
            channel,
            relay: relay.bound,
            peer: c.peer,
            expires: c.expires.min(permission).min(a.expires),
        });
    }
    want
}

/// Adds the kernel's counts beyond those already credited to the allocation and the totals.
/// `k` is the reading of the allocation's current counter slot.
fn credit(stats: &mut Stats, a: &mut Allocation, k: KernelCounts) {
    let d = k.since(&a.kernel_seen);
    a.kernel_seen = a.kernel_seen.max(k);
    a.kernel.add(&d);
    let c = &mut a.counters;
    c.packets_to_peer += d.packets_to_peer;
    c.bytes_to_peer += d.bytes_to_peer;
    c.packets_from_peer += d.packets_from_peer;
    c.bytes_from_peer += d.bytes_from_peer;
    stats.relayed_to_peer += d.packets_to_peer;
    stats.relayed_from_peer += d.packets_from_peer;
    let t = &mut stats.traffic;
    t.rcvp += d.packets_to_peer;
    t.rcvb += d.bytes_to_peer;
    t.peer_sentp += d.packets_to_peer;
    t.peer_sentb += d.bytes_to_peer;
    t.peer_rcvp += d.packets_from_peer;
    t.peer_rcvb += d.bytes_from_peer;
    t.sentp += d.packets_from_peer;
    t.sentb += d.bytes_from_peer;
}
