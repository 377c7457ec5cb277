//! Allocate (RFC 8656 §7), UDP relays: the relayed addresses of one or two families,
//! EVEN-PORT and RESERVATION-TOKEN, and the refusal while draining.

use super::*;

/// A UDP Allocate's attributes, read and checked against each other (RFC 8656 §7.2).
#[derive(Debug, PartialEq)]
struct AllocateRequest {
    dont_fragment: bool,
    /// EVEN-PORT, with its R bit (reserve the next port too).
    even_port: Option<bool>,
    /// RESERVATION-TOKEN: claim a port reserved by an earlier EVEN-PORT.
    token: Option<u64>,
    /// REQUESTED-ADDRESS-FAMILY.
    requested: Option<Family>,
    /// ADDITIONAL-ADDRESS-FAMILY (IPv6): a dual allocation.
    additional: bool,
}

impl AllocateRequest {
    fn parse(msg: &Message<'_>) -> Result<AllocateRequest, RequestError> {
        let even_port = match msg.get(attr::EVEN_PORT) {
            None => None,
            Some([b, ..]) => Some(b & 0x80 != 0),
            Some([]) => return Err(RequestError::BadRequest),
        };
        let token = match msg.get(attr::RESERVATION_TOKEN) {
            None => None,
            Some(v) => Some(u64::from_be_bytes(
                v.try_into().map_err(|_| RequestError::BadRequest)?,
            )),
        };
        let requested = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some([b, _, _, _]) => {
                Some(Family::from_attr(*b).ok_or(RequestError::AddressFamilyNotSupported)?)
            }
            Some(_) => return Err(RequestError::BadRequest),
        };
        let additional = match msg.get(attr::ADDITIONAL_ADDRESS_FAMILY) {
            None => false,
            Some([attr::FAMILY_IPV6, _, _, _]) => true,
            Some(_) => return Err(RequestError::BadRequest),
        };
        // These combinations are contradictory. A reservation (EVEN-PORT with R) holds the
        // next port of one family, and one RESERVATION-TOKEN cannot name ports of two:
        // refused with a dual allocation, as coturn does.
        if (token.is_some() && (even_port.is_some() || requested.is_some() || additional))
            || (requested.is_some() && additional)
            || (additional && even_port == Some(true))
        {
            return Err(RequestError::BadRequest);
        }
        Ok(AllocateRequest {
            dont_fragment: msg.get(attr::DONT_FRAGMENT).is_some(),
            even_port,
            token,
            requested,
            additional,
        })
    }
}

impl Server {
    pub(in crate::turn::server) fn handle_allocate(
        &mut self,
        req: Request<'_>,
        io: &mut impl Io,
    ) -> Result<(), RequestError> {
        let Request { now, ft, msg, auth } = req;
        if self.by_tuple.contains_key(ft) {
            return Err(RequestError::AllocationMismatch);
        }
        match msg.get(attr::REQUESTED_TRANSPORT) {
            Some([p, _, _, _]) if *p == attr::TRANSPORT_UDP => {}
            Some([p, _, _, _]) if *p == attr::TRANSPORT_TCP => {
                return self.handle_allocate_tcp(req, io);
            }
            Some([_, _, _, _]) => {
                return Err(RequestError::UnsupportedTransportProtocol);
            }
            _ => return Err(RequestError::BadRequest),
        }
        let AllocateRequest {
            dont_fragment,
            even_port,
            token,
            requested,
            additional,
        } = AllocateRequest::parse(msg)?;
        let mut family = requested.unwrap_or(Family::V4);
        if self.cfg.relay_ips[family.index()].is_none() {
            return Err(RequestError::AddressFamilyNotSupported);
        }
        let username = msg
            .get(attr::USERNAME)
            .and_then(|u| std::str::from_utf8(u).ok())
            .unwrap_or_default()
            .to_string();
        if let Some(alternates) = self.draining.or(self.redirect) {
            return self.refuse_draining(ft, msg, auth, alternates, io);
        }
        let quota_user = display_user(&username, self.cfg.rest_separator).to_string();
        // Strict fleet quotas: a reservation holds a fleet lease of its own (an Allocate that
        // makes one asks for two), which the claim of a user's own reservation takes over;
        // any other claim asks for one. Its local count was taken with the reservation.
        let lease_waiting = token
            .is_some_and(|t| self.lock_ports().reservation_lease(t) == Some(quota_user.as_str()));
        let count = if even_port == Some(true) { 2 } else { 1 };
        if !lease_waiting && self.park_for_lease(req, &quota_user, count, token.is_none(), io)? {
            return Ok(());
        }
        let ip = ft.client.ip();
        // Reservations whose time is up give their quota counts back first.
        self.lock_ports().expire(now.mono);
        let opts = RelayOptions { dont_fragment };
        let mut new_token = None;
        let (primary, quota, lease_claimed) = if let Some(t) = token {
            let Some((bind_ip, claimed)) = self.lock_ports().claim(t, now.mono) else {
                return Err(RequestError::InsufficientCapacity);
            };
            let (fam, port) = (claimed.family, claimed.port);
            // The reservation's lease becomes the allocation's when it is the same user's
            // (no double count); another user's goes back.
            let lease_claimed = match claimed.lease {
                Some(u) if u == quota_user => true,
                Some(u) => {
                    io.release_lease(&u);
                    false
                }
                None => false,
            };
            // The reservation's count becomes the allocation's when it is the same client's.
            let quota = match claimed.hold {
                Some(h) if h.is_for(&quota_user, ip) => Ok(h),
                _ => QuotaHold::acquire(&self.cfg.quotas, &quota_user, ip),
            };
            let quota = match quota {
                Ok(q) => q,
                Err(code) => {
                    self.lock_ports().release(fam, bind_ip, port);
                    if lease_claimed {
                        io.release_lease(&quota_user);
                    }
                    return Err(code);
                }
            };
            family = fam;
            let r = self.bind_port(fam, bind_ip, port, opts, io);
            if r.is_none() {
                self.lock_ports().release(fam, bind_ip, port);
                if lease_claimed {
                    io.release_lease(&quota_user);
                }
            }
            (r, quota, lease_claimed)
        } else {
            let quota = QuotaHold::acquire(&self.cfg.quotas, &quota_user, ip)?;
            // A reservation holds a port as an allocation does, so it counts as one against
            // the user's, the IP's and the total quota while it lasts.
            let reserve = if even_port == Some(true) {
                match QuotaHold::acquire(&self.cfg.quotas, &quota_user, ip) {
                    Ok(h) => Some((self.rng.next_u64(), h)),
                    Err(code) => return Err(code),
                }
            } else {
                None
            };
            let token = reserve.as_ref().map(|(t, _)| *t);
            let r = self.open_relay(now.mono, family, even_port.is_some(), token, opts, io);
            if let (Some(_), Some((t, hold))) = (&r, reserve) {
                // One of the resumed Allocate's leases, when it has them.
                let lease = self.take_lease(&quota_user).then(|| quota_user.clone());
                self.lock_ports().hold_reservation(t, hold, lease);
                self.note_reservation(now.mono + RESERVATION_LIFETIME);
                new_token = Some(t);
            }
            (r, quota, false)
        };
        let Some(primary) = primary else {
            return Err(RequestError::InsufficientCapacity);
        };
        let mut relays = [None, None];
        relays[family.index()] = Some(primary);
        let mut address_error = None;
        if additional {
            let v6 = Family::V6;
            if self.cfg.relay_ips[v6.index()].is_none() {
                address_error = Some(RequestError::AddressFamilyNotSupported);
            } else if let Some(r) =
                self.open_relay(now.mono, v6, even_port.is_some(), None, opts, io)
            {
                relays[v6.index()] = Some(r);
            } else {
                address_error = Some(RequestError::InsufficientCapacity);
            }
        }
        let (slot, lifetime) = self.grant(req, relays, username, quota, false, lease_claimed);
        let mut w = self.writer(msg, Class::Success);
        for r in relays.iter().flatten() {
            w.xor_address(attr::XOR_RELAYED_ADDRESS, r.advertised);
        }
        if let Some(code) = address_error {
            w.error_code_family(
                attr::ADDRESS_ERROR_CODE,
                attr::FAMILY_IPV6,
                code.code(),
                code.reason(),
            );
        }
        w.u32_attr(attr::LIFETIME, lifetime.as_secs() as u32);
        if let Some(t) = new_token {
            w.attr(attr::RESERVATION_TOKEN, &t.to_be_bytes());
        }
        w.xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
        self.seal_and_send(ft, msg, Some(auth), io);
        self.cache_last(slot, msg.transaction_id(), now.mono);
        Ok(())
    }

    /// Allocate while draining or redirecting. RFC 8489 §14.15: the ALTERNATE-SERVER's
    /// family MUST be that of the request's source address, so a client of a family without
    /// an alternate gets 508. ALTERNATE-DOMAIN (§14.16) goes only to clients over TLS, and
    /// only when the fleet names the alternate's certificate: a (D)TLS client checks the
    /// new server's certificate against it (RFC 8489 §10).
    pub(in crate::turn::server) fn refuse_draining(
        &mut self,
        ft: &FiveTuple,
        msg: &Message<'_>,
        auth: &Authed,
        alternates: [Option<SocketAddr>; 2],
        io: &mut impl Io,
    ) -> Result<(), RequestError> {
        let family = Family::of(ft.client.ip().to_canonical());
        let Some(alt) = alternates[family.index()] else {
            return Err(RequestError::InsufficientCapacity);
        };
        let domain = match ft.transport {
            Transport::Tls => self.alternate_domain.clone(),
            _ => None,
        };
        let mut w = self.writer(msg, Class::Error);
        w.error_code(
            RequestError::TryAlternate.code(),
            RequestError::TryAlternate.reason(),
        )
        .address(attr::ALTERNATE_SERVER, alt);
        if let Some(domain) = &domain {
            w.attr(attr::ALTERNATE_DOMAIN, domain.as_bytes());
        }
        self.stats.error_responses += 1;
        self.seal_and_send(ft, msg, Some(auth), io);
        Ok(())
    }

    /// Takes a port and binds a relay socket on it, trying other ports when one is taken.
    pub(in crate::turn::server) fn open_relay(
        &mut self,
        now: Instant,
        family: Family,
        even: bool,
        reserve: Option<u64>,
        opts: RelayOptions,
        io: &mut impl Io,
    ) -> Option<Relay> {
        for _ in 0..BIND_ATTEMPTS {
            let random = self.random();
            let (ip, port) = {
                let mut pool = self.lock_ports();
                if even {
                    pool.take_even(family, reserve, now, random)
                } else {
                    pool.take(family, now, random)
                }
            }?;
            match self.bind_port(family, ip, port, opts, io) {
                Some(r) => return Some(r),
                None => {
                    let mut pool = self.lock_ports();
                    pool.release(family, ip, port);
                    if let Some(t) = reserve {
                        pool.cancel(t);
                    }
                }
            }
        }
        None
    }

    pub(in crate::turn::server) fn bind_port(
        &mut self,
        family: Family,
        bind_ip: IpAddr,
        port: u16,
        opts: RelayOptions,
        io: &mut impl Io,
    ) -> Option<Relay> {
        let adv_ip = self.advertised_ip(family, bind_ip)?;
        let id = RelayId(self.next_relay);
        self.next_relay += 1;
        let bound = SocketAddr::new(bind_ip, port);
        match io.bind_relay(id, bound, opts) {
            Ok(()) => Some(Relay {
                id,
                family,
                port,
                bound,
                advertised: SocketAddr::new(adv_ip, port),
            }),
            Err(BindError::AddrInUse) | Err(BindError::Other) => {
                debug!(%bound, "relay bind failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(build: impl Fn(&mut MessageWriter)) -> Result<AllocateRequest, RequestError> {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, method::ALLOCATE, Class::Request, [1; 12]);
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        build(&mut w);
        AllocateRequest::parse(&Message::parse(&buf).unwrap())
    }

    #[test]
    fn reads_each_attribute() {
        let r = parse(|w| {
            w.attr(attr::EVEN_PORT, &[0x80])
                .attr(attr::DONT_FRAGMENT, &[])
                .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        });
        assert_eq!(
            r,
            Ok(AllocateRequest {
                dont_fragment: true,
                even_port: Some(true),
                token: None,
                requested: Some(Family::V6),
                additional: false,
            })
        );
        let r = parse(|w| {
            w.attr(attr::RESERVATION_TOKEN, &7u64.to_be_bytes());
        });
        assert_eq!(r.map(|r| r.token), Ok(Some(7)));
    }

    #[test]
    fn malformed_and_contradictory_attributes_are_refused() {
        use RequestError::*;
        type Build<'a> = &'a dyn Fn(&mut MessageWriter);
        let cases: [(Build, RequestError); 7] = [
            (
                &|w| {
                    w.attr(attr::EVEN_PORT, &[]);
                },
                BadRequest,
            ),
            (
                &|w| {
                    w.attr(attr::RESERVATION_TOKEN, &[1, 2, 3]);
                },
                BadRequest,
            ),
            (
                &|w| {
                    w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[9, 0, 0, 0]);
                },
                AddressFamilyNotSupported,
            ),
            (
                &|w| {
                    w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[1, 0, 0, 0]);
                },
                BadRequest,
            ),
            (
                &|w| {
                    w.attr(attr::RESERVATION_TOKEN, &[0; 8])
                        .attr(attr::EVEN_PORT, &[0]);
                },
                BadRequest,
            ),
            (
                &|w| {
                    w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0])
                        .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
                },
                BadRequest,
            ),
            (
                &|w| {
                    w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0])
                        .attr(attr::EVEN_PORT, &[0x80]);
                },
                BadRequest,
            ),
        ];
        for (i, (build, want)) in cases.into_iter().enumerate() {
            assert_eq!(parse(build), Err(want), "case {i}");
        }
    }
}
