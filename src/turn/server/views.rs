//! What the admin side reads of the server: counts, gauges, sessions, and ending a session.

use super::*;

impl Server {
    pub fn allocation_count(&self) -> usize {
        self.by_tuple.len()
    }

    /// The relayed addresses of the allocation on a 5-tuple, for tests and the admin side.
    pub fn relayed_addresses(&self, ft: &FiveTuple) -> Vec<SocketAddr> {
        self.alloc(ft)
            .map(|a| a.relays.iter().flatten().map(|r| r.advertised).collect())
            .unwrap_or_default()
    }

    /// The traffic counters of the allocation on a 5-tuple.
    pub fn counters(&self, ft: &FiveTuple) -> Option<Counters> {
        self.alloc(ft).map(|a| a.counters)
    }

    /// Live allocations by transport, permissions and channels, for the metrics scrape.
    /// Walks every allocation: admin path only.
    pub fn gauges(&self, now: Instant) -> Gauges {
        let mut g = Gauges::default();
        for a in self.slots.iter().flatten() {
            g.allocations[transport_slot(a.five_tuple.transport)] += 1;
            g.permissions += a.live_permissions(now) as u64;
            g.channels += a.live_channels(now) as u64;
        }
        g
    }

    /// Every live allocation as the admin API shows it, optionally only those of `user`
    /// (a REST user without its timestamp).
    pub fn sessions(&self, now: Instant, user: Option<&str>) -> Vec<SessionInfo> {
        self.slots
            .iter()
            .flatten()
            .filter(|a| {
                user.is_none_or(|u| display_user(&a.username, self.cfg.rest_separator) == u)
            })
            .map(|a| self.session_info(a, now))
            .collect()
    }

    /// The allocation with this id (see [`SessionInfo::id`]).
    pub fn session(&self, id: u64, now: Instant) -> Option<SessionInfo> {
        self.slots
            .iter()
            .flatten()
            .find(|a| a.id == id)
            .map(|a| self.session_info(a, now))
    }

    /// Ends the allocation with this id now: its relay sockets close, its quotas are given
    /// back, and its client's next request gets 437 (RFC 8656 §7: no allocation on the
    /// 5-tuple). False when there is no such allocation. `now` is the time it ends at.
    pub fn end_session(&mut self, id: u64, now: Instant, io: &mut impl Io) -> bool {
        let slot = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|a| a.id == id));
        match slot {
            Some(s) => {
                self.delete(s, EndReason::Admin, now, io);
                true
            }
            None => false,
        }
    }

    fn session_info(&self, a: &Allocation, now: Instant) -> SessionInfo {
        let c = &a.counters;
        SessionInfo {
            id: a.id,
            user: display_user(&a.username, self.cfg.rest_separator).to_string(),
            username: a.username.clone(),
            client: a.five_tuple.client,
            server: a.five_tuple.server,
            transport: a.five_tuple.transport,
            relayed: a.relays.iter().flatten().map(|r| r.advertised).collect(),
            started_unix: a.created_unix,
            lifetime_left_secs: a.expires.saturating_duration_since(now).as_secs(),
            peers: a.live_permissions(now),
            channels: a.live_channels(now),
            max_bps: a.quota.rate().bps,
            packets_to_peer: c.packets_to_peer,
            bytes_to_peer: c.bytes_to_peer,
            packets_from_peer: c.packets_from_peer,
            bytes_from_peer: c.bytes_from_peer,
            drops: c.drops,
            tcp_relay: a.tcp,
            kernel_channels: a.fast.len(),
            kernel: a.kernel,
            quality: match &a.quality {
                Some(q) => Some(q.report(now)),
                // Nothing relayed yet: an idle report, unless telemetry is off.
                None if self.cfg.live.telemetry && !a.tcp => Some(Quality::new(now).report(now)),
                None => None,
            },
        }
    }
}
