//! The relay port pool, shared by the workers of one server (setup path only: taken at
//! Allocate, given back when an allocation ends), and RESERVATION-TOKENs (RFC 8656 §7.2).

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::quota::QuotaHold;

/// How long a port reserved by EVEN-PORT (R bit) waits for its RESERVATION-TOKEN
/// (RFC 8656 §14.9 suggests about 30 seconds).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// An address family: the relays, relay IPs and port pools of a server come one per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family's slot in a per-family array: 0 for IPv4, 1 for IPv6.
    pub const fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// The family of an address as given (an IPv4-mapped IPv6 address is IPv6).
    pub const fn of(ip: std::net::IpAddr) -> Family {
        match ip {
            std::net::IpAddr::V4(_) => Family::V4,
            std::net::IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of REQUESTED-ADDRESS-FAMILY's first byte (RFC 8656 §18.8), if known.
    pub const fn from_attr(byte: u8) -> Option<Family> {
        match byte {
            0x01 => Some(Family::V4),
            0x02 => Some(Family::V6),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Reservation {
    family: Family,
    port: u16,
    expires: Instant,
    /// The reservation's own count in the quotas (it holds a port as an allocation does),
    /// given back when the reservation expires or is cancelled, or handed to the claimer.
    hold: Option<QuotaHold>,
    /// The quota user whose fleet lease the reservation holds (strict fleet quotas), if
    /// one: handed to a claimer of that user, or given back through
    /// [`RelayPorts::take_lapsed_leases`] when the reservation ends unclaimed.
    lease: Option<String>,
}

/// A reservation taken over by [`PortPool::claim`]: its port, and what it counted for.
#[derive(Debug)]
pub struct Claimed {
    pub family: Family,
    pub port: u16,
    pub hold: Option<QuotaHold>,
    /// The user whose fleet lease came with it.
    pub lease: Option<String>,
}

/// Free/used ports of one range, per family, and the reserved ones.
#[derive(Debug)]
pub struct PortPool {
    min: u16,
    max: u16,
    used: [Vec<u64>; 2],
    in_use: [usize; 2],
    reservations: FxHashMap<u64, Reservation>,
    /// Fleet leases (their users) of reservations that ended unclaimed, for the core to
    /// give back.
    lapsed: Vec<String>,
}

impl PortPool {
    pub fn new(min: u16, max: u16) -> PortPool {
        let (min, max) = if min <= max { (min, max) } else { (max, min) };
        let words = (max as usize - min as usize) / 64 + 1;
        PortPool {
            min,
            max,
            used: [vec![0; words], vec![0; words]],
            in_use: [0, 0],
            reservations: FxHashMap::default(),
            lapsed: Vec::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.max as usize - self.min as usize + 1
    }

    /// Ports taken (including reserved ones) in a family.
    pub fn in_use(&self, family: Family) -> usize {
        self.in_use[family.index()]
    }

    fn is_used(&self, family: Family, port: u16) -> bool {
        let i = (port - self.min) as usize;
        self.used[family.index()][i / 64] & (1 << (i % 64)) != 0
    }

    fn mark(&mut self, family: Family, port: u16, used: bool) {
        let i = (port - self.min) as usize;
        let bit = 1u64 << (i % 64);
        let word = &mut self.used[family.index()][i / 64];
        let was = *word & bit != 0;
        if used && !was {
            *word |= bit;
            self.in_use[family.index()] += 1;
        } else if !used && was {
            *word &= !bit;
            self.in_use[family.index()] -= 1;
        }
    }

    fn in_range(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    /// Takes a free port, searching from a random point so ports are hard to guess.
    pub fn take(&mut self, family: Family, now: Instant, random: u64) -> Option<u16> {
        self.expire_reservations(now);
        let n = self.capacity();
        let start = (random % n as u64) as usize;
        (0..n)
            .map(|k| self.min + ((start + k) % n) as u16)
            .find(|&p| !self.is_used(family, p))
            .inspect(|&p| self.mark(family, p, true))
    }

    /// Takes an even port; with `reserve_next`, also the port above it, held under a
    /// reservation token for [`RESERVATION_LIFETIME`].
    pub fn take_even(
        &mut self,
        family: Family,
        reserve_next: Option<u64>,
        now: Instant,
        random: u64,
    ) -> Option<u16> {
        self.expire_reservations(now);
        let n = self.capacity();
        let start = (random % n as u64) as usize;
        let found = (0..n)
            .map(|k| self.min + ((start + k) % n) as u16)
            .find(|&p| {
                p % 2 == 0
                    && !self.is_used(family, p)
                    && (reserve_next.is_none()
                        || (p < u16::MAX && self.in_range(p + 1) && !self.is_used(family, p + 1)))
            })?;
        self.mark(family, found, true);
        if let Some(token) = reserve_next {
            self.mark(family, found + 1, true);
            self.reservations.insert(
                token,
                Reservation {
                    family,
                    port: found + 1,
                    expires: now + RESERVATION_LIFETIME,
                    hold: None,
                    lease: None,
                },
            );
        }
        Some(found)
    }

    /// Counts a reservation made by [`PortPool::take_even`] in the quotas until it ends,
    /// with the fleet lease of user `lease` if it holds one. False (and the hold given back)
    /// when there is no such reservation.
    pub fn hold_reservation(&mut self, token: u64, hold: QuotaHold, lease: Option<String>) -> bool {
        match self.reservations.get_mut(&token) {
            Some(r) => {
                r.hold = Some(hold);
                r.lease = lease;
                true
            }
            None => {
                if let Some(user) = lease {
                    self.lapsed.push(user);
                }
                false
            }
        }
    }

    /// Claims a reserved port by its token; the port stays taken, now by the caller, who
    /// also gets the reservation's quota hold and fleet lease.
    pub fn claim(&mut self, token: u64, now: Instant) -> Option<Claimed> {
        self.expire_reservations(now);
        self.reservations.remove(&token).map(|r| Claimed {
            family: r.family,
            port: r.port,
            hold: r.hold,
            lease: r.lease,
        })
    }

    /// Ends the reservations whose time is up, giving back their ports and quota counts.
    pub fn expire(&mut self, now: Instant) {
        self.expire_reservations(now);
    }

    pub fn release(&mut self, family: Family, port: u16) {
        if self.in_range(port) {
            self.mark(family, port, false);
        }
    }

    /// Drops a reservation (when the allocation that made it fails, or its time is up),
    /// freeing its port; its fleet lease goes on the lapsed list.
    pub fn cancel(&mut self, token: u64) {
        if let Some(r) = self.reservations.remove(&token) {
            self.mark(r.family, r.port, false);
            if let Some(user) = r.lease {
                self.lapsed.push(user);
            }
        }
    }

    fn expire_reservations(&mut self, now: Instant) {
        if self.reservations.is_empty() {
            return;
        }
        let expired: Vec<u64> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            self.cancel(t);
        }
    }
}

/// The relay ports of every relay address: one [`PortPool`] per address, so a node with
/// several relay addresses per family (coturn's repeated `relay-ip`) is not capped at one
/// port range. A new relay takes a port from the address of its family with the most free
/// ports (the first such address on a tie); ports are released to the address they were
/// taken from.
#[derive(Debug)]
pub struct RelayPorts {
    /// Per relay (bind) address, its ports. Only the family side of each pool that matches
    /// the address is used.
    pools: Vec<(std::net::IpAddr, PortPool)>,
    min: u16,
    max: u16,
}

impl RelayPorts {
    /// Ports `min..=max` on each of `ips` (bind addresses, in order; duplicates merged).
    pub fn new(min: u16, max: u16, ips: &[std::net::IpAddr]) -> RelayPorts {
        let mut pools: Vec<(std::net::IpAddr, PortPool)> = Vec::new();
        for ip in ips {
            if !pools.iter().any(|(a, _)| a == ip) {
                pools.push((*ip, PortPool::new(min, max)));
            }
        }
        RelayPorts { pools, min, max }
    }

    /// Ports per relay address.
    pub fn capacity(&self) -> usize {
        self.max.abs_diff(self.min) as usize + 1
    }

    /// Ports taken (reserved ones included) over every address of `family`.
    pub fn in_use(&self, family: Family) -> usize {
        self.family_pools(family)
            .map(|(_, p)| p.in_use(family))
            .sum()
    }

    /// The relay addresses of `family`, in order.
    pub fn addresses(&self, family: Family) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        self.family_pools(family).map(|(ip, _)| ip)
    }

    fn family_pools(&self, family: Family) -> impl Iterator<Item = (std::net::IpAddr, &PortPool)> {
        self.pools
            .iter()
            .filter(move |(ip, _)| Family::of(*ip) == family)
            .map(|(ip, p)| (*ip, p))
    }

    /// The address of `family` with the most free ports, and its pool.
    fn emptiest(
        &mut self,
        family: Family,
        now: Instant,
    ) -> Option<&mut (std::net::IpAddr, PortPool)> {
        for (_, p) in self.pools.iter_mut() {
            p.expire(now);
        }
        self.pools
            .iter_mut()
            .filter(|(ip, _)| Family::of(*ip) == family)
            .fold(
                None,
                |best: Option<&mut (std::net::IpAddr, PortPool)>, e| match best {
                    Some(b) if b.1.in_use(family) <= e.1.in_use(family) => Some(b),
                    _ => Some(e),
                },
            )
    }

    /// A free port on a relay address of `family` (see [`PortPool::take`]).
    pub fn take(
        &mut self,
        family: Family,
        now: Instant,
        random: u64,
    ) -> Option<(std::net::IpAddr, u16)> {
        let (ip, pool) = self.emptiest(family, now)?;
        pool.take(family, now, random).map(|port| (*ip, port))
    }

    /// An even port (and a reservation of the next one) on a relay address of `family`
    /// (see [`PortPool::take_even`]); the least used address with a pair free.
    pub fn take_even(
        &mut self,
        family: Family,
        reserve_next: Option<u64>,
        now: Instant,
        random: u64,
    ) -> Option<(std::net::IpAddr, u16)> {
        let mut order: Vec<usize> = (0..self.pools.len())
            .filter(|&i| Family::of(self.pools[i].0) == family)
            .collect();
        order.sort_by_key(|&i| self.pools[i].1.in_use(family));
        for i in order {
            let (ip, pool) = &mut self.pools[i];
            if let Some(port) = pool.take_even(family, reserve_next, now, random) {
                return Some((*ip, port));
            }
        }
        None
    }

    /// See [`PortPool::hold_reservation`].
    pub fn hold_reservation(&mut self, token: u64, hold: QuotaHold, lease: Option<String>) -> bool {
        let i = self
            .pools
            .iter()
            .position(|(_, p)| p.reservations.contains_key(&token));
        match (i, self.pools.first_mut()) {
            (Some(i), _) => self.pools[i].1.hold_reservation(token, hold, lease),
            // No such reservation: the pool of the first address takes the lease back.
            (None, Some((_, p))) => p.hold_reservation(token, hold, lease),
            (None, None) => false,
        }
    }

    /// See [`PortPool::claim`]; also says on which address the port is.
    pub fn claim(&mut self, token: u64, now: Instant) -> Option<(std::net::IpAddr, Claimed)> {
        self.pools
            .iter_mut()
            .find_map(|(ip, p)| p.claim(token, now).map(|c| (*ip, c)))
    }

    /// The user whose fleet lease the live reservation `token` holds, if any.
    pub fn reservation_lease(&self, token: u64) -> Option<&str> {
        self.pools
            .iter()
            .find_map(|(_, p)| p.reservations.get(&token))
            .and_then(|r| r.lease.as_deref())
    }

    /// The fleet leases of reservations that ended unclaimed since the last call (one entry
    /// per lease, its user), for the core to give back.
    pub fn take_lapsed_leases(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (_, p) in self.pools.iter_mut() {
            if out.is_empty() {
                out = std::mem::take(&mut p.lapsed);
            } else {
                out.append(&mut p.lapsed);
            }
        }
        out
    }

    /// Gives the live reservations that count in the quotas but hold no fleet lease one,
    /// when `leased(user)` says their user's quota is counted across the fleet; returns their
    /// users (one entry per reservation), for the driver to register.
    pub fn adopt_reservations(&mut self, leased: impl Fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for (_, p) in self.pools.iter_mut() {
            for r in p.reservations.values_mut() {
                if let (None, Some(h)) = (&r.lease, &r.hold)
                    && leased(h.user())
                {
                    r.lease = Some(h.user().to_owned());
                    out.push(h.user().to_owned());
                }
            }
        }
        out
    }

    /// Ends the reservations whose time is up on every address.
    pub fn expire(&mut self, now: Instant) {
        for (_, p) in self.pools.iter_mut() {
            p.expire(now);
        }
    }

    /// Gives `port` back to the address `ip` it was taken on.
    pub fn release(&mut self, family: Family, ip: std::net::IpAddr, port: u16) {
        if let Some((_, p)) = self.pools.iter_mut().find(|(a, _)| *a == ip) {
            p.release(family, port);
        }
    }

    /// Drops a reservation, freeing its port.
    pub fn cancel(&mut self, token: u64) {
        for (_, p) in self.pools.iter_mut() {
            p.cancel(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_addresses_per_family_each_have_the_whole_range() {
        let now = Instant::now();
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let mut r = RelayPorts::new(50000, 50001, &[a, b, v6, a]);
        assert_eq!(r.addresses(Family::V4).collect::<Vec<_>>(), [a, b]);
        let mut got: Vec<(std::net::IpAddr, u16)> = (0..4)
            .map(|i| r.take(Family::V4, now, i).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, [(a, 50000), (a, 50001), (b, 50000), (b, 50001)]);
        assert_eq!(r.take(Family::V4, now, 0), None);
        assert_eq!(r.in_use(Family::V4), 4);
        // Spread: the second allocation went to the other address.
        r.release(Family::V4, b, 50001);
        assert_eq!(r.take(Family::V4, now, 0), Some((b, 50001)));
        assert_eq!(r.take(Family::V6, now, 0).map(|(ip, _)| ip), Some(v6));
        // A reservation is claimed on the address it was made on.
        let mut r = RelayPorts::new(50000, 50003, &[a, b]);
        r.take(Family::V4, now, 0);
        let (ip, even) = r.take_even(Family::V4, Some(5), now, 0).unwrap();
        assert_eq!(ip, b, "the emptier address");
        let (cip, c) = r.claim(5, now).unwrap();
        let (fam, port) = (c.family, c.port);
        assert_eq!((fam, cip, port), (Family::V4, b, even + 1));
    }

    #[test]
    fn takes_every_port_once_then_none() {
        let now = Instant::now();
        let mut p = PortPool::new(50000, 50009);
        let mut got: Vec<u16> = (0..10)
            .map(|i| p.take(Family::V4, now, i * 7).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (50000..=50009).collect::<Vec<_>>());
        assert_eq!(p.take(Family::V4, now, 3), None);
        // The other family has its own ports.
        assert!(p.take(Family::V6, now, 3).is_some());
        p.release(Family::V4, 50004);
        assert_eq!(p.take(Family::V4, now, 0), Some(50004));
    }

    #[test]
    fn even_port_with_reservation() {
        let now = Instant::now();
        let mut p = PortPool::new(50000, 50003);
        let even = p.take_even(Family::V4, Some(42), now, 1).unwrap();
        assert_eq!(even % 2, 0);
        assert_eq!(p.in_use(Family::V4), 2);
        assert_eq!(
            p.claim(42, now).map(|c| (c.family, c.port)),
            Some((Family::V4, even + 1))
        );
        assert!(p.claim(42, now).is_none());
        assert_eq!(p.in_use(Family::V4), 2);
    }

    #[test]
    fn reservation_expires_and_frees_its_port() {
        let now = Instant::now();
        let mut p = PortPool::new(50000, 50001);
        assert_eq!(p.take_even(Family::V4, Some(7), now, 0), Some(50000));
        assert_eq!(p.take(Family::V4, now, 0), None);
        let later = now + RESERVATION_LIFETIME;
        assert_eq!(p.take(Family::V4, later, 0), Some(50001));
        assert!(p.claim(7, later).is_none());
    }

    #[test]
    fn a_reservation_counts_in_the_quotas_until_it_expires() {
        use crate::turn::quota::Quotas;
        use std::sync::Arc;
        let q = Arc::new(Quotas::new(0, 0));
        let ip = "192.0.2.7".parse().unwrap();
        let now = Instant::now();
        let mut p = PortPool::new(50000, 50003);
        p.take_even(Family::V4, Some(9), now, 0).unwrap();
        assert!(p.hold_reservation(9, QuotaHold::acquire(&q, "u", ip).unwrap(), None));
        assert!(!p.hold_reservation(10, QuotaHold::acquire(&q, "u", ip).unwrap(), None));
        assert_eq!((q.user_count("u"), q.ip_count(ip)), (1, 1));
        p.expire(now + RESERVATION_LIFETIME);
        assert_eq!((q.user_count("u"), q.ip_count(ip), q.total()), (0, 0, 0));
    }

    #[test]
    fn full_range_edges() {
        let now = Instant::now();
        let mut p = PortPool::new(65535, 65535);
        assert_eq!(p.take_even(Family::V4, Some(1), now, 0), None);
        assert_eq!(p.take(Family::V4, now, 0), Some(65535));
    }
}
