//! Refresh (RFC 8656 §8): a new lifetime, or with 0 the end of the allocation or of one
//! family of a dual allocation.

use super::*;

/// A Refresh's attributes.
#[derive(Debug, PartialEq)]
struct RefreshRequest {
    /// REQUESTED-ADDRESS-FAMILY: with a zero lifetime, the family of a dual allocation to end.
    family: Option<Family>,
    /// LIFETIME as asked; 0 ends the allocation.
    lifetime: Option<u32>,
}

impl RefreshRequest {
    fn parse(msg: &Message<'_>) -> Result<RefreshRequest, RequestError> {
        let family = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some([b, _, _, _]) => {
                Some(Family::from_attr(*b).ok_or(RequestError::PeerAddressFamilyMismatch)?)
            }
            Some(_) => return Err(RequestError::PeerAddressFamilyMismatch),
        };
        let lifetime = msg.u32_attr(attr::LIFETIME).and_then(Result::ok);
        Ok(RefreshRequest { family, lifetime })
    }
}

impl Server {
    pub(in crate::turn::server) fn handle_refresh(
        &mut self,
        req: Request<'_>,
        io: &mut impl Io,
    ) -> Result<(), RequestError> {
        let Request { now, ft, msg, auth } = req;
        let slot = self.allocation_slot(ft)?;
        let RefreshRequest { family, lifetime } = RefreshRequest::parse(msg)?;
        let Some(a) = self.slots.get(slot).and_then(|s| s.as_ref()) else {
            return Ok(());
        };
        if family.is_some_and(|f| a.relays[f.index()].is_none()) {
            return Err(RequestError::PeerAddressFamilyMismatch);
        }
        let dual = a.relays.iter().flatten().count() == 2;
        let zero = lifetime == Some(0);
        let lifetime = if zero {
            Duration::ZERO
        } else {
            self.lifetime(msg)
        };
        let txid = msg.transaction_id();
        if zero {
            match (family, dual) {
                (Some(f), true) => self.close_family(slot, f, now.mono, io),
                _ => self.delete(slot, EndReason::Refreshed0, now.mono, io),
            }
        } else if let Some(a) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) {
            a.expires = now.mono + lifetime;
            a.credential_expiry = auth.expiry.or(a.credential_expiry);
            self.sync_fast_path(slot, now.mono, io);
        }
        if !zero && self.events.enabled {
            self.record_event(slot, AllocationEventKind::Refreshed, now.unix, None);
            if let Some(ev) = self.events.pending.last_mut() {
                ev.lifetime_secs = lifetime.as_secs();
            }
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
        now: Instant,
        io: &mut impl Io,
    ) {
        let Some(r) = self
            .slots
            .get_mut(slot)
            .and_then(|s| s.as_mut())
            .and_then(|a| a.relays[family.index()].take())
        else {
            return;
        };
        // The family's channels leave the kernel before its socket closes.
        self.sync_fast_path(slot, now, io);
        self.by_relay.remove(&r.id);
        io.close_relay(r.id);
        self.lock_ports().release(r.family, r.bound.ip(), r.port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_and_lifetime() {
        let parse = |build: &dyn Fn(&mut MessageWriter)| {
            let mut buf = Vec::new();
            build(&mut MessageWriter::new(
                &mut buf,
                method::REFRESH,
                Class::Request,
                [3; 12],
            ));
            RefreshRequest::parse(&Message::parse(&buf).unwrap())
        };
        assert_eq!(
            parse(&|w| {
                w.u32_attr(attr::LIFETIME, 0)
                    .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
            }),
            Ok(RefreshRequest {
                family: Some(Family::V6),
                lifetime: Some(0)
            })
        );
        assert_eq!(
            parse(&|_| {}),
            Ok(RefreshRequest {
                family: None,
                lifetime: None
            })
        );
        assert_eq!(
            parse(&|w| {
                w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0]);
            }),
            Err(RequestError::PeerAddressFamilyMismatch)
        );
    }
}
