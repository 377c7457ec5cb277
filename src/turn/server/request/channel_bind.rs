//! ChannelBind (RFC 8656 §11): a channel number bound to a peer, and its quarantine.

use super::*;

impl Server {
    pub(in crate::turn::server) fn handle_channel_bind(
        &mut self,
        now: Time,
        ft: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authed,
        io: &mut impl Io,
    ) -> Result<(), RequestError> {
        let Some(&slot) = self.by_tuple.get(ft) else {
            return Err(RequestError::AllocationMismatch);
        };
        if self
            .slots
            .get(slot)
            .and_then(|s| s.as_ref())
            .is_some_and(|a| a.tcp)
        {
            // RFC 6062 §5.1: a TCP allocation relays over data connections, not channels.
            return Err(RequestError::BadRequest);
        }
        let number = match msg.get(attr::CHANNEL_NUMBER) {
            Some([a, b, _, _]) => u16::from_be_bytes([*a, *b]),
            _ => return Err(RequestError::BadRequest),
        };
        // RFC 8656 §12 (RFC 5766 §11 without strict): a number outside the range gets 400.
        if !channel_data::is_bindable(number, self.cfg.strict_channel_numbers) {
            return Err(RequestError::BadRequest);
        }
        let peer = match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Some(Ok(p)) => p,
            _ => return Err(RequestError::BadRequest),
        };
        self.check_peer(slot, peer)?;
        let max = self.cfg.max_permissions;
        let max_channels = self.cfg.limits.max_channels;
        let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return Ok(());
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
            return Err(RequestError::BadRequest);
        }
        if !a.permissions.contains_key(&peer.ip()) && a.permissions.len() >= max {
            a.sweep(t);
            if a.permissions.len() >= max {
                return Err(RequestError::InsufficientCapacity);
            }
        }
        // A new number counts against the channel cap; quarantined numbers still hold state.
        if !a.channels.contains_key(&number) && a.channels.len() >= max_channels {
            a.sweep(t);
            if a.channels.len() >= max_channels {
                return Err(RequestError::InsufficientCapacity);
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
        Ok(())
    }
}
