//! The UDP transport of a worker: the listener and relay sockets in the worker's epoll set,
//! read with `recvmmsg` (and GRO) into one shared set of buffers by one task, and the relay
//! sockets the core binds and closes. What the core answers is queued on the worker's send
//! queue and sent at the end of the batch ([`super::end_batch`]).

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tracing::{debug, error, warn};

use super::epoll::{Epoll, event_buffer};
use super::{DriverIo, Worker, begin_batch, deliver_handover, end_batch};
use crate::net::batch::{RX_BATCH, RecvBatch};
use crate::net::now;
use crate::turn::{BindError, FiveTuple, PEER_TAILROOM, RelayId, RelayOptions, Transport};

/// Ready sockets taken from the epoll set per round.
const EVENTS: usize = 256;
/// Datagrams read per round, over all sockets, before the worker's other tasks (TCP, timers,
/// jobs from other threads) get their turn.
pub(super) const ROUND_BUDGET: usize = 1024;
/// Epoll tokens of the listeners count down from here; relay sockets use their [`RelayId`]
/// (counting up from 1).
pub(super) const LISTENER_TOKEN: u64 = u64::MAX;
/// The epoll token of the hand-over eventfd (no relay has id 0).
pub(super) const HANDOVER_TOKEN: u64 = 0;

/// A relay socket, the address it is bound to and the address clients are told (the
/// external IP behind 1:1 NAT, or the same).
pub(super) struct RelaySocket {
    pub(super) sock: StdUdpSocket,
    addr: SocketAddr,
    advertised: SocketAddr,
}

impl RelaySocket {
    /// The source address another relay socket of this server sees on a datagram this one
    /// sends to `to`: the bound address when `to` is a bound relay address; the advertised
    /// one when `to` is advertised, as a NAT that loops the datagram back would rewrite it.
    pub(super) fn seen_from(&self, to: &SocketAddr) -> SocketAddr {
        if to.ip() == self.addr.ip() {
            self.addr
        } else {
            self.advertised
        }
    }
}

impl DriverIo {
    pub(super) fn bind_udp_relay(
        &mut self,
        relay: RelayId,
        addr: SocketAddr,
        opts: RelayOptions,
    ) -> Result<(), BindError> {
        let sock = match relay_socket(addr, opts) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(BindError::AddrInUse);
            }
            Err(e) => {
                warn!(%addr, error = %e, "cannot open relay socket");
                return Err(BindError::Other);
            }
        };
        // The port as bound (the core always names one, but be exact).
        let bound = sock.local_addr().unwrap_or(addr);
        if self.offload.gro {
            // Best effort: without it the socket reads one datagram at a time.
            self.offload.enable_gro(sock.as_raw_fd());
        }
        if let Err(e) = self.epoll.get_ref().add(sock.as_raw_fd(), relay.0) {
            warn!(%addr, error = %e, "cannot watch relay socket");
            return Err(BindError::Other);
        }
        let advertised = match self.relay_ips[usize::from(bound.is_ipv6())] {
            Some((bind, adv)) if bind == bound.ip() => SocketAddr::new(adv, bound.port()),
            _ => bound,
        };
        if !bound.ip().is_unspecified() {
            self.by_relay_addr.insert(bound, relay);
            self.by_relay_addr.insert(advertised, relay);
            if let Some(h) = &self.handover {
                h.claim(&bound);
            }
        }
        self.relays.insert(
            relay,
            RelaySocket {
                sock,
                addr: bound,
                advertised,
            },
        );
        Ok(())
    }

    /// Closes the relay socket now, so its port can be bound again (by any worker) as soon as
    /// this returns. Datagrams queued from it are sent first.
    pub(super) fn close_udp_relay(&mut self, relay: RelayId) {
        if let Some(r) = self.relays.remove(&relay) {
            if !self.tx.is_empty() {
                self.flush();
            }
            if self.by_relay_addr.get(&r.addr) == Some(&relay) {
                self.by_relay_addr.remove(&r.addr);
                if let Some(h) = &self.handover {
                    h.release(&r.addr);
                }
            }
            if self.by_relay_addr.get(&r.advertised) == Some(&relay) {
                self.by_relay_addr.remove(&r.advertised);
            }
            self.epoll.get_ref().remove(r.sock.as_raw_fd());
            drop(r);
        }
    }
}

fn relay_socket(addr: SocketAddr, opts: RelayOptions) -> std::io::Result<StdUdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if opts.dont_fragment {
        set_dont_fragment(&s, addr.is_ipv6());
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Path MTU discovery "do": the kernel sets DF and never fragments (RFC 8656 §7.2
/// DONT-FRAGMENT). Best effort: a failure leaves the kernel default.
fn set_dont_fragment(s: &Socket, v6: bool) {
    use std::os::fd::AsRawFd;
    let (level, name, val) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: setsockopt on a valid fd with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &val as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!(
            "IP_MTU_DISCOVER failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The UDP data path of one worker. Each round takes the ready sockets from the epoll set
/// and reads each once, at most [`RX_BATCH`] datagrams (the bound on work per socket per
/// wakeup) and [`ROUND_BUDGET`] in all, hands them to the core and flushes the sends they
/// caused. After a round that
/// may have left work behind (a full batch, or more ready sockets than one round takes) it
/// yields to the worker's other tasks before the next; otherwise it waits for the set to
/// become readable again.
pub(super) async fn udp_loop(state: Weak<RefCell<Worker>>, epoll: Rc<AsyncFd<Epoll>>, gro: bool) {
    let mut rx = RecvBatch::with_gro(gro);
    let mut events = event_buffer(EVENTS);
    loop {
        let mut guard = match epoll.readable().await {
            Ok(g) => g,
            Err(e) => {
                error!(error = %e, "worker epoll set failed");
                return;
            }
        };
        let n = epoll.get_ref().poll_now(&mut events);
        let Some(state) = state.upgrade() else {
            return;
        };
        // No socket ready and no parcel waiting: wait again.
        let parcels = state
            .borrow()
            .io
            .handover
            .as_ref()
            .is_some_and(|h| h.waiting());
        if n == 0 && !parcels {
            guard.clear_ready();
            continue;
        }
        let mut more = n == events.len();
        {
            let mut g = state.borrow_mut();
            let w = &mut *g;
            begin_batch(w);
            if let Some(h) = &w.io.handover {
                h.busy();
            }
            // Parcels from other workers first: those handed over before anything this
            // round reads was sent (a reply that came after the hand-over, then a request
            // caused by it) are delivered before it.
            more |= deliver_handover(w, ROUND_BUDGET);
            let mut work = 0;
            for ev in &events[..n] {
                if work >= ROUND_BUDGET {
                    // The sockets not read stay ready (level-triggered): next round.
                    more = true;
                    break;
                }
                let (read, datagrams) = drain_socket(w, ev.u64, &mut rx);
                more |= read == RX_BATCH;
                work += datagrams;
            }
            end_batch(w);
            if let Some(h) = &w.io.handover {
                // Last look for parcels before waiting (senders wake only an idle worker).
                more |= !more && h.going_idle();
            }
        }
        if more {
            drop(guard);
            tokio::task::yield_now().await;
        } else {
            // Every socket was read empty: anything arriving from now on wakes the set's
            // file descriptor again (the readiness tick of this guard is older).
            guard.clear_ready();
        }
    }
}

/// Reads one batch from the socket with epoll token `token` and hands it to the core;
/// returns how many reads the batch held and how many datagrams they carried (more than the
/// reads when GRO coalesced some).
fn drain_socket(w: &mut Worker, token: u64, rx: &mut RecvBatch) -> (usize, usize) {
    if token == HANDOVER_TOKEN {
        // Parcels from other workers: taken at the start of each round.
        if let Some(h) = &w.io.handover {
            h.acknowledge();
        }
        return (0, 0);
    }
    let listener = LISTENER_TOKEN - token;
    let found = w.io.listeners.get(listener as usize);
    let mut datagrams = 0;
    if let Some((local, fd)) = found.map(|(a, s)| (*a, s.as_raw_fd())) {
        let n = rx.recv(fd);
        let t = now();
        for i in 0..n {
            let seg = rx.segment_size(i);
            let Some((client, slot, range)) = rx.datagram(i) else {
                continue;
            };
            let ft = FiveTuple {
                client,
                server: local,
                transport: Transport::Udp,
            };
            let step = segment_step(seg, &range);
            let mut start = range.start;
            // At least once: an empty datagram is a datagram too.
            loop {
                let end = (start + step).min(range.end);
                if let Some(data) = slot.get(start..end) {
                    w.core.handle_client(t, ft, data, &mut w.io);
                }
                datagrams += 1;
                start = end;
                if start >= range.end {
                    break;
                }
            }
            w.io.count_gro(step, &range);
        }
        return (n, datagrams);
    }
    let relay = RelayId(token);
    let Some(fd) = w.io.relays.get(&relay).map(|r| r.sock.as_raw_fd()) else {
        // Closed earlier in this round.
        return (0, 0);
    };
    let n = rx.recv(fd);
    let t = now();
    for i in 0..n {
        let seg = rx.segment_size(i);
        let Some((peer, slot, range)) = rx.datagram(i) else {
            continue;
        };
        let step = segment_step(seg, &range);
        let mut start = range.start;
        // At least once: an empty datagram from a peer is relayed too.
        loop {
            let end = (start + step).min(range.end);
            // The core writes the header in place before the datagram (over the previous
            // one, already handled) and may pad after it: over the next datagram's first
            // bytes, which are put back once this one is sent (every send copies).
            let mut keep = [0u8; PEER_TAILROOM];
            let next = end < range.end;
            if next && let Some(b) = slot.get(end..end + PEER_TAILROOM) {
                keep.copy_from_slice(b);
            }
            w.core
                .handle_peer(t, relay, peer, slot, start..end, &mut w.io);
            if next && let Some(b) = slot.get_mut(end..end + PEER_TAILROOM) {
                b.copy_from_slice(&keep);
            }
            datagrams += 1;
            start = end;
            if start >= range.end {
                break;
            }
        }
        w.io.count_gro(step, &range);
    }
    (n, datagrams)
}

/// The length of each datagram in a read of `range`: the GRO segment size, or all of it.
fn segment_step(seg: Option<usize>, range: &std::ops::Range<usize>) -> usize {
    let len = range.end - range.start;
    seg.filter(|&s| s < len).unwrap_or(len.max(1))
}

impl DriverIo {
    fn count_gro(&mut self, step: usize, range: &std::ops::Range<usize>) {
        let len = range.end - range.start;
        if step < len {
            self.gro_reads += 1;
            self.gro_datagrams += len.div_ceil(step) as u64;
        }
    }
}
