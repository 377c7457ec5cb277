//! CreatePermission (RFC 8656 §9), and the peer check it shares with ChannelBind.

use super::*;

impl Server {
    /// Reads the XOR-PEER-ADDRESS values and checks each against the allocation's
    /// families and the peer policy; Err is the error code to answer.
    pub(in crate::turn::server) fn check_peer(
        &self,
        slot: usize,
        peer: SocketAddr,
    ) -> Result<(), RequestError> {
        let a = self
            .slots
            .get(slot)
            .and_then(|s| s.as_ref())
            .ok_or(RequestError::AllocationMismatch)?;
        if a.relay_for(&peer).is_none() {
            return Err(RequestError::PeerAddressFamilyMismatch);
        }
        if !self.cfg.live.policy.is_allowed_addr(peer) {
            return Err(RequestError::Forbidden);
        }
        Ok(())
    }

    pub(in crate::turn::server) fn handle_create_permission(
        &mut self,
        req: Request<'_>,
        io: &mut impl Io,
    ) -> Result<(), RequestError> {
        let Request { now, ft, msg, auth } = req;
        let slot = self.allocation_slot(ft)?;
        let txid = msg.transaction_id();
        let mut peers: [Option<IpAddr>; 32] = [None; 32];
        let mut n = 0;
        for v in msg.get_all(attr::XOR_PEER_ADDRESS) {
            let Some(peer) = decode_xor_address(v, &txid) else {
                return Err(RequestError::BadRequest);
            };
            if let Err(code) = self.check_peer(slot, peer) {
                debug!(client = %ft.client, peer = %peer.ip(), code = code.code(), "permission refused");
                return Err(code);
            }
            if n == peers.len() {
                return Err(RequestError::BadRequest);
            }
            peers[n] = Some(peer.ip());
            n += 1;
        }
        if n == 0 {
            return Err(RequestError::BadRequest);
        }
        let max = self.cfg.max_permissions;
        let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return Ok(());
        };
        let new = peers[..n]
            .iter()
            .flatten()
            .filter(|ip| !a.permissions.contains_key(ip))
            .count();
        if a.permissions.len() + new > max {
            a.sweep(now.mono);
            if a.permissions.len() + new > max {
                return Err(RequestError::InsufficientCapacity);
            }
        }
        for ip in peers[..n].iter().flatten() {
            a.permissions.insert(*ip, now.mono + PERMISSION_LIFETIME);
        }
        self.sync_fast_path(slot, now.mono, io);
        self.writer(msg, Class::Success);
        self.seal_and_send(ft, msg, Some(auth), io);
        self.cache_last(slot, txid, now.mono);
        self.schedule(slot);
        Ok(())
    }
}
