//! Refresh (RFC 8656 §8): a new lifetime, or with 0 the end of the allocation or of one
//! family of a dual allocation.

use super::*;

impl Server {
    pub(in crate::turn::server) fn handle_refresh(
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
        let family = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some([b, _, _, _]) if Family::from_attr(*b).is_some() => Family::from_attr(*b),
            Some(_) => {
                return Err(RequestError::PeerAddressFamilyMismatch);
            }
        };
        let Some(a) = self.slots.get(slot).and_then(|s| s.as_ref()) else {
            return Ok(());
        };
        if family.is_some_and(|f| a.relays[f.index()].is_none()) {
            return Err(RequestError::PeerAddressFamilyMismatch);
        }
        let dual = a.relays.iter().flatten().count() == 2;
        let zero = matches!(msg.u32_attr(attr::LIFETIME), Some(Ok(0)));
        let lifetime = if zero {
            Duration::ZERO
        } else {
            self.lifetime(msg)
        };
        let txid = msg.transaction_id();
        if zero {
            match (family, dual) {
                (Some(f), true) => self.close_family(slot, f, io),
                _ => self.delete(slot, EndReason::Refreshed0, io),
            }
        } else if let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) {
            a.expires = now.mono + lifetime;
            a.credential_expiry = auth.expiry.or(a.credential_expiry);
        }
        let mut w = self.writer(msg, Class::Success);
        w.u32_attr(attr::LIFETIME, lifetime.as_secs() as u32);
        self.seal_and_send(ft, msg, Some(auth), io);
        if !zero || self.slots.get(slot).is_some_and(|s| s.is_some()) {
            self.cache_last(slot, txid, now.mono);
            self.schedule(slot);
        }
        Ok(())
    }

    /// Deletes one family of a dual allocation (Refresh with LIFETIME 0 and
    /// REQUESTED-ADDRESS-FAMILY).
    pub(in crate::turn::server) fn close_family(
        &mut self,
        slot: usize,
        family: Family,
        io: &mut impl Io,
    ) {
        let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return;
        };
        if let Some(r) = a.relays[family.index()].take() {
            self.by_relay.remove(&r.id);
            io.close_relay(r.id);
            self.lock_ports().release(r.family, r.port);
        }
    }
}
