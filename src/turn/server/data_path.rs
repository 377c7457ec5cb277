//! The data path, both directions: ChannelData and Send indications from clients to peers
//! (RFC 8656 §11-12), and datagrams from peers back to clients as ChannelData or Data
//! indications. One table lookup per packet, no allocation, no lock.

use super::*;

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
    telemetry: bool,
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
    if telemetry {
        observe(a, &mut stats.quality, now, Direction::ToPeer, payload);
    }
    io.send_to_peer(id, peer, payload);
}

/// Hands a relayed payload to the allocation's call-quality observer, made on its first
/// packet (the one allocation it ever does).
#[inline(always)]
fn observe(
    a: &mut Allocation,
    stats: &mut QualityStats,
    now: Instant,
    dir: Direction,
    payload: &[u8],
) {
    a.quality
        .get_or_insert_with(|| Box::new(Quality::new(now)))
        .observe(now, dir, payload, stats);
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

impl Server {
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
        if self.cfg.live.telemetry {
            observe(
                a,
                &mut self.stats.quality,
                now,
                Direction::ToClient,
                &buf[start..end],
            );
        }
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
        // A Data indication written in place around the payload (RFC 8656 §11.6); the
        // driver's headroom and tailroom (checked above) always leave it space.
        let txid = self.random_txid();
        if let Some(msg) = crate::stun::data_indication_in_place(buf, start..end, txid, peer) {
            io.send_to_client(&client, &buf[msg]);
        }
    }

    pub(super) fn handle_channel_data(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        data: &[u8],
        io: &mut impl Io,
    ) {
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
        forward_to_peer(
            &mut self.stats,
            a,
            now,
            peer,
            payload,
            self.cfg.live.telemetry,
            io,
        );
    }

    /// Send indication (RFC 8656 §11.3): no authentication, no answer; dropped unless a
    /// permission exists.
    pub(super) fn handle_send(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        msg: &Message<'_>,
        io: &mut impl Io,
    ) {
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
        if self.cfg.live.policy.is_own_address(peer) {
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
        forward_to_peer(
            &mut self.stats,
            a,
            now,
            peer,
            data,
            self.cfg.live.telemetry,
            io,
        );
    }
}
