//! ChannelBind (RFC 8656 §11): a channel number bound to a peer, and its quarantine.

use super::*;

/// A ChannelBind's attributes.
#[derive(Debug, PartialEq)]
struct ChannelBindRequest {
    number: u16,
    peer: SocketAddr,
}

impl ChannelBindRequest {
    /// `strict`: only RFC 8656 §12's 0x4000-0x4FFF, else RFC 5766 §11's 0x4000-0x7FFF; a
    /// number outside gets 400.
    fn parse(msg: &Message<'_>, strict: bool) -> Result<ChannelBindRequest, RequestError> {
        let number = match msg.get(attr::CHANNEL_NUMBER) {
            Some([a, b, _, _]) => u16::from_be_bytes([*a, *b]),
            _ => return Err(RequestError::BadRequest),
        };
        if !channel_data::is_bindable(number, strict) {
            return Err(RequestError::BadRequest);
        }
        match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Some(Ok(peer)) => Ok(ChannelBindRequest { number, peer }),
            _ => Err(RequestError::BadRequest),
        }
    }
}

impl Server {
    pub(in crate::turn::server) fn handle_channel_bind(
        &mut self,
        req: Request<'_>,
        io: &mut impl Io,
    ) -> Result<(), RequestError> {
        let Request { now, ft, msg, auth } = req;
        let slot = self.allocation_slot(ft)?;
        if self
            .slots
            .get(slot)
            .and_then(|s| s.as_ref())
            .is_some_and(|a| a.tcp)
        {
            // RFC 6062 §5.1: a TCP allocation relays over data connections, not channels.
            return Err(RequestError::BadRequest);
        }
        let ChannelBindRequest { number, peer } =
            ChannelBindRequest::parse(msg, self.cfg.live.strict_channel_numbers)?;
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
        self.sync_fast_path(slot, t, io);
        let txid = msg.transaction_id();
        self.writer(msg, Class::Success);
        self.seal_and_send(ft, msg, Some(auth), io);
        self.cache_last(slot, txid, t);
        self.schedule(slot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(number: u16, strict: bool) -> Result<ChannelBindRequest, RequestError> {
        let mut buf = Vec::new();
        MessageWriter::new(&mut buf, method::CHANNEL_BIND, Class::Request, [2; 12])
            .attr(
                attr::CHANNEL_NUMBER,
                &[(number >> 8) as u8, number as u8, 0, 0],
            )
            .xor_address(attr::XOR_PEER_ADDRESS, "203.0.113.5:9".parse().unwrap());
        ChannelBindRequest::parse(&Message::parse(&buf).unwrap(), strict)
    }

    #[test]
    fn the_number_range_depends_on_strictness() {
        let peer: SocketAddr = "203.0.113.5:9".parse().unwrap();
        assert_eq!(
            parse(0x4000, true),
            Ok(ChannelBindRequest {
                number: 0x4000,
                peer
            })
        );
        assert_eq!(parse(0x5000, true), Err(RequestError::BadRequest));
        assert!(parse(0x7FFF, false).is_ok());
        assert_eq!(parse(0x8000, false), Err(RequestError::BadRequest));
        assert_eq!(parse(0x3FFF, false), Err(RequestError::BadRequest));
    }
}
