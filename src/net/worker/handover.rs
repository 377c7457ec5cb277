//! Relaying between two allocations on different workers without the kernel.
//!
//! [`super::local`] hands a datagram from one relay socket to another when both belong to
//! the same worker. When the receiving relay socket belongs to another worker (the kernel
//! hashes each client to a worker, so two browsers of one call land on different workers as
//! often as not), the datagram is handed over here instead: the sending worker copies it
//! into a parcel from a shared pool and pushes the parcel on the receiving worker's inbox,
//! a bounded lock-free queue; at the end of its round it wakes that worker if it is idle
//! (an eventfd in the receiver's epoll set). A busy receiver takes its parcels at the start
//! of each round and looks once more before it goes idle, so it needs no wakeup.
//! The receiver hands each parcel to the allocation's core as a datagram read from its
//! relay socket, with the sender's relay address as the peer, so permissions are checked
//! on both sides exactly as for [`super::local`].
//!
//! Which worker owns a relay address is a table of one byte per port and family (the
//! relay ports are one range, and each family has one relay address): written by the
//! owning worker when it binds and closes a relay socket, read with a plain atomic load on
//! the packet path. Nothing here takes a lock. When the table is stale (the allocation
//! just ended), the receiver finds no relay socket and drops the parcel, as the kernel
//! drops a datagram to a closed port. When the pool or the inbox is full, or the datagram
//! is larger than a parcel, the datagram goes through the kernel as before.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering, fence};

use crossbeam_queue::ArrayQueue;

use crate::turn::{PEER_HEADROOM, PEER_TAILROOM};

/// Parcels in flight per worker (the inbox's bound, and the pool's share).
const PARCELS_PER_WORKER: usize = 512;
/// Bytes of one parcel's buffer: room for a datagram of a typical path MTU with the core's
/// head and tail room around it.
const PARCEL_BYTES: usize = 2048;
/// The largest datagram a parcel carries; larger ones go through the kernel.
pub(in crate::net) const PARCEL_PAYLOAD: usize = PARCEL_BYTES - PEER_HEADROOM - PEER_TAILROOM;
/// Workers the owner table can name (one byte, 0 meaning none).
const MAX_WORKERS: usize = u8::MAX as usize;

/// One datagram handed from one worker to another.
pub(in crate::net) struct Parcel {
    /// The receiving relay address (bound address of the receiving socket).
    pub(in crate::net) to: SocketAddr,
    /// The sending relay address: the peer the receiver sees.
    pub(in crate::net) from: SocketAddr,
    len: usize,
    buf: [u8; PARCEL_BYTES],
}

impl Parcel {
    /// The buffer, and where the datagram is in it (head and tail room around it).
    pub(in crate::net) fn payload(&mut self) -> (&mut [u8], std::ops::Range<usize>) {
        let range = PEER_HEADROOM..PEER_HEADROOM + self.len;
        (&mut self.buf[..], range)
    }
}

struct Inbox {
    queue: ArrayQueue<Box<Parcel>>,
    /// Set by the receiver when it is about to wait for its epoll set, cleared by it when
    /// a round starts and by the one sender that wakes it.
    idle: AtomicBool,
    wake: OwnedFd,
}

/// What all workers share: the owner table, the inboxes and the parcel pool.
pub(crate) struct Handover {
    /// The relay addresses per family, (bound, advertised); specified addresses only.
    ips: [Option<(IpAddr, IpAddr)>; 2],
    /// Per family, per port: the owning worker + 1, or 0.
    owners: [Box<[AtomicU8]>; 2],
    /// The family's other relay addresses (several per family), each advertised as itself,
    /// with their own owner tables; looked up after the first (a short scan).
    extra: Vec<(IpAddr, Box<[AtomicU8]>)>,
    inboxes: Vec<Inbox>,
    pool: ArrayQueue<Box<Parcel>>,
    /// Parcels allocated so far (the pool fills as parcels are first needed).
    created: AtomicUsize,
}

impl Handover {
    /// The hand-over for `workers` workers relaying on `relay_ips` (bound and advertised
    /// address per family) and on the `extra` relay addresses of either family; `None` when
    /// there is nothing to hand over (one worker, or more workers than the table can name).
    pub(crate) fn new(
        workers: usize,
        relay_ips: [Option<(IpAddr, IpAddr)>; 2],
        extra: &[IpAddr],
    ) -> io::Result<Option<Arc<Handover>>> {
        if !(2..=MAX_WORKERS).contains(&workers) {
            return Ok(None);
        }
        let ips = relay_ips.map(|ip| ip.filter(|(bound, _)| !bound.is_unspecified()));
        if ips.iter().all(Option::is_none) {
            return Ok(None);
        }
        let table = |present: bool| -> Box<[AtomicU8]> {
            let n = if present {
                usize::from(u16::MAX) + 1
            } else {
                0
            };
            (0..n).map(|_| AtomicU8::new(0)).collect()
        };
        let mut inboxes = Vec::with_capacity(workers);
        for _ in 0..workers {
            inboxes.push(Inbox {
                queue: ArrayQueue::new(PARCELS_PER_WORKER),
                idle: AtomicBool::new(true),
                wake: eventfd()?,
            });
        }
        let extra = extra
            .iter()
            .filter(|ip| {
                !ip.is_unspecified() && !ips.iter().flatten().any(|(bound, _)| bound == *ip)
            })
            .map(|ip| (*ip, table(true)))
            .collect();
        Ok(Some(Arc::new(Handover {
            owners: [table(ips[0].is_some()), table(ips[1].is_some())],
            extra,
            ips,
            inboxes,
            pool: ArrayQueue::new(PARCELS_PER_WORKER * workers),
            created: AtomicUsize::new(0),
        })))
    }

    /// The owner slot of a relay address (bound or advertised), if it is one.
    fn slot(&self, addr: &SocketAddr) -> Option<&AtomicU8> {
        let fam = usize::from(addr.is_ipv6());
        let ip = addr.ip();
        let port = usize::from(addr.port());
        if let Some((bound, advertised)) = self.ips[fam]
            && (ip == bound || ip == advertised)
        {
            return self.owners[fam].get(port);
        }
        let (_, owners) = self.extra.iter().find(|(e, _)| *e == ip)?;
        owners.get(port)
    }

    fn parcel(&self) -> Option<Box<Parcel>> {
        if let Some(p) = self.pool.pop() {
            return Some(p);
        }
        // Grow up to the pool's capacity; past it, the kernel carries the datagram.
        let cap = self.pool.capacity();
        let mut n = self.created.load(Ordering::Relaxed);
        loop {
            if n >= cap {
                return None;
            }
            match self
                .created
                .compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        Some(Box::new(Parcel {
            to: SocketAddr::from(([0, 0, 0, 0], 0)),
            from: SocketAddr::from(([0, 0, 0, 0], 0)),
            len: 0,
            buf: [0; PARCEL_BYTES],
        }))
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One worker's end of the hand-over.
pub(crate) struct HandoverPort {
    shared: Arc<Handover>,
    me: usize,
    /// Workers this one pushed parcels to since its last [`HandoverPort::notify`].
    pending: Vec<bool>,
    /// Datagrams handed to other workers.
    pub(in crate::net) sent: u64,
}

impl HandoverPort {
    pub(crate) fn new(shared: Arc<Handover>, me: usize) -> HandoverPort {
        let n = shared.inboxes.len();
        HandoverPort {
            shared,
            me,
            pending: vec![false; n],
            sent: 0,
        }
    }

    /// The eventfd that becomes readable when parcels wait for this worker.
    pub(in crate::net) fn wake_fd(&self) -> RawFd {
        self.shared
            .inboxes
            .get(self.me)
            .map_or(-1, |i| i.wake.as_raw_fd())
    }

    /// Records that this worker's relay socket is bound to `addr`.
    pub(in crate::net) fn claim(&self, addr: &SocketAddr) {
        if let Some(s) = self.shared.slot(addr) {
            s.store(self.me as u8 + 1, Ordering::Release);
        }
    }

    /// Records that this worker's relay socket on `addr` is closed.
    pub(in crate::net) fn release(&self, addr: &SocketAddr) {
        if let Some(s) = self.shared.slot(addr) {
            let _ = s.compare_exchange(self.me as u8 + 1, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Hands `data`, sent from relay address `from` to `to`, to the worker whose relay
    /// socket `to` is; false when `to` is not another worker's relay socket or the parcel
    /// cannot go (then the kernel carries it).
    pub(in crate::net) fn send(&mut self, to: SocketAddr, from: SocketAddr, data: &[u8]) -> bool {
        if data.len() > PARCEL_PAYLOAD {
            return false;
        }
        let Some(owner) = self.shared.slot(&to) else {
            return false;
        };
        let w = owner.load(Ordering::Acquire) as usize;
        if w == 0 || w - 1 == self.me {
            return false;
        }
        let dst = w - 1;
        let Some(inbox) = self.shared.inboxes.get(dst) else {
            return false;
        };
        let Some(mut p) = self.shared.parcel() else {
            return false;
        };
        p.to = to;
        p.from = from;
        p.len = data.len();
        p.buf[PEER_HEADROOM..PEER_HEADROOM + data.len()].copy_from_slice(data);
        if let Err(p) = inbox.queue.push(p) {
            // The receiver is behind: give the parcel back and let the kernel queue it.
            let _ = self.shared.pool.push(p);
            return false;
        }
        if let Some(flag) = self.pending.get_mut(dst) {
            *flag = true;
        }
        self.sent += 1;
        true
    }

    /// Wakes the idle workers this one handed parcels to since the last call.
    pub(in crate::net) fn notify(&mut self) {
        if !self.pending.contains(&true) {
            return;
        }
        // Pairs with the fence in `going_idle`: either the receiver sees the parcels pushed
        // before this, or this sees the receiver idle and wakes it.
        fence(Ordering::SeqCst);
        for (dst, flag) in self.pending.iter_mut().enumerate() {
            if !std::mem::take(flag) {
                continue;
            }
            let Some(inbox) = self.shared.inboxes.get(dst) else {
                continue;
            };
            if inbox.idle.load(Ordering::Relaxed) && inbox.idle.swap(false, Ordering::AcqRel) {
                let one: u64 = 1;
                // SAFETY: writes 8 bytes from a live u64 to an eventfd this struct owns.
                // A full counter (EAGAIN) means the receiver is woken anyway.
                unsafe {
                    libc::write(
                        inbox.wake.as_raw_fd(),
                        (&one as *const u64).cast::<libc::c_void>(),
                        8,
                    )
                };
            }
        }
    }

    /// A round starts: senders need not wake this worker until it goes idle again.
    pub(in crate::net) fn busy(&self) {
        if let Some(inbox) = self.shared.inboxes.get(self.me) {
            inbox.idle.store(false, Ordering::Relaxed);
        }
    }

    /// The worker is about to wait for its epoll set: from now on a sender wakes it. True
    /// when parcels came in since its last drain (then it must not wait, but drain).
    pub(in crate::net) fn going_idle(&self) -> bool {
        let Some(inbox) = self.shared.inboxes.get(self.me) else {
            return false;
        };
        inbox.idle.store(true, Ordering::Relaxed);
        // Pairs with the fence in `notify`.
        fence(Ordering::SeqCst);
        !inbox.queue.is_empty()
    }

    /// Whether parcels wait in this worker's inbox.
    pub(in crate::net) fn waiting(&self) -> bool {
        self.shared
            .inboxes
            .get(self.me)
            .is_some_and(|i| !i.queue.is_empty())
    }

    /// Consumes a wakeup (the eventfd became readable).
    pub(in crate::net) fn acknowledge(&self) {
        let Some(inbox) = self.shared.inboxes.get(self.me) else {
            return;
        };
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from an eventfd this struct owns; EAGAIN
        // (nothing written) is harmless.
        unsafe {
            libc::read(
                inbox.wake.as_raw_fd(),
                (&mut v as *mut u64).cast::<libc::c_void>(),
                8,
            )
        };
    }

    /// Takes up to `budget` parcels from this worker's inbox, in the order they came,
    /// hands each to `deliver`, and returns them to the pool; returns how many.
    pub(in crate::net) fn drain(
        &self,
        budget: usize,
        mut deliver: impl FnMut(&mut Parcel),
    ) -> usize {
        let Some(inbox) = self.shared.inboxes.get(self.me) else {
            return 0;
        };
        let mut n = 0;
        while n < budget {
            let Some(mut p) = inbox.queue.pop() else {
                break;
            };
            deliver(&mut p);
            let _ = self.shared.pool.push(p);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn pair() -> (HandoverPort, HandoverPort) {
        let ip = "127.0.0.1".parse().unwrap();
        let h = Handover::new(2, [Some((ip, ip)), None], &[])
            .unwrap()
            .unwrap();
        (HandoverPort::new(h.clone(), 0), HandoverPort::new(h, 1))
    }

    fn drained(p: &HandoverPort) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        p.drain(usize::MAX, |parcel| {
            let (to, from) = (parcel.to, parcel.from);
            let (buf, range) = parcel.payload();
            assert!(range.start >= PEER_HEADROOM && range.end + PEER_TAILROOM <= buf.len());
            got.push((to, from, buf[range].to_vec()));
        });
        got
    }

    #[test]
    fn nothing_to_hand_over_with_one_worker_or_no_relay_address() {
        let lo = "127.0.0.1".parse().unwrap();
        let any = "0.0.0.0".parse().unwrap();
        assert!(
            Handover::new(1, [Some((lo, lo)), None], &[])
                .unwrap()
                .is_none()
        );
        assert!(
            Handover::new(2, [Some((any, lo)), None], &[])
                .unwrap()
                .is_none()
        );
        assert!(
            Handover::new(2, [Some((lo, lo)), None], &[])
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn the_advertised_address_names_the_same_relay() {
        let (bound, adv) = ("10.0.0.5".parse().unwrap(), "203.0.113.5".parse().unwrap());
        let h = Handover::new(2, [Some((bound, adv)), None], &[])
            .unwrap()
            .unwrap();
        let (mut a, b) = (HandoverPort::new(h.clone(), 0), HandoverPort::new(h, 1));
        let (ra, rb) = (v4("203.0.113.5:50000"), v4("10.0.0.5:50001"));
        b.claim(&rb);
        assert!(a.send(v4("203.0.113.5:50001"), ra, b"to the advertised address"));
        assert!(a.send(rb, ra, b"to the bound address"));
        assert!(!a.send(v4("203.0.113.6:50001"), ra, b"not ours"));
        assert_eq!(drained(&b).len(), 2);
    }

    #[test]
    fn every_relay_address_of_a_family_takes_the_hand_over() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let extra: [IpAddr; 3] = [
            "127.0.0.2".parse().unwrap(),
            "127.0.0.3".parse().unwrap(),
            lo,
        ];
        let h = Handover::new(2, [Some((lo, lo)), None], &extra)
            .unwrap()
            .unwrap();
        assert_eq!(h.extra.len(), 2, "the first address is not listed twice");
        let (mut a, b) = (HandoverPort::new(h.clone(), 0), HandoverPort::new(h, 1));
        let ra = v4("127.0.0.1:50000");
        let (rb2, rb3) = (v4("127.0.0.2:50001"), v4("127.0.0.3:50001"));
        b.claim(&rb2);
        b.claim(&rb3);
        assert!(a.send(rb2, ra, b"to the second address"));
        assert!(a.send(rb3, rb2, b"to the third"));
        assert!(!a.send(v4("127.0.0.2:50002"), ra, b"nobody's port"));
        assert!(!a.send(v4("127.0.0.4:50001"), ra, b"not a relay address"));
        b.release(&rb2);
        assert!(!a.send(rb2, ra, b"released"));
        let got = drained(&b);
        assert_eq!(
            got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
            vec![(rb2, ra), (rb3, rb2)]
        );
    }

    #[test]
    fn hands_datagrams_to_the_owner_in_order() {
        let (mut a, b) = pair();
        let (ra, rb) = (v4("127.0.0.1:50000"), v4("127.0.0.1:50001"));
        a.claim(&ra);
        b.claim(&rb);
        // Not another worker's relay address: the kernel's.
        assert!(!a.send(ra, ra, b"own"));
        assert!(!a.send(v4("127.0.0.1:50002"), ra, b"nobody's"));
        assert!(!a.send(v4("127.0.0.2:50001"), ra, b"another address"));
        assert!(a.send(rb, ra, b"one"));
        assert!(a.send(rb, ra, b""));
        assert!(a.send(rb, ra, b"three"));
        assert_eq!(a.sent, 3);
        assert_eq!(
            drained(&b),
            vec![
                (rb, ra, b"one".to_vec()),
                (rb, ra, Vec::new()),
                (rb, ra, b"three".to_vec())
            ]
        );
        // Too large for a parcel: the kernel's.
        assert!(!a.send(rb, ra, &vec![0; PARCEL_PAYLOAD + 1]));
        assert!(a.send(rb, ra, &vec![1; PARCEL_PAYLOAD]));
        assert_eq!(drained(&b)[0].2.len(), PARCEL_PAYLOAD);
        // Released: no longer handed over.
        b.release(&rb);
        assert!(!a.send(rb, ra, b"closed"));
        // Another worker's release does not clear a claim.
        b.claim(&rb);
        a.release(&rb);
        assert!(a.send(rb, ra, b"still b's"));
    }

    #[test]
    fn a_full_inbox_leaves_the_rest_to_the_kernel_and_loses_no_parcel() {
        let (mut a, b) = pair();
        let (ra, rb) = (v4("127.0.0.1:50000"), v4("127.0.0.1:50001"));
        b.claim(&rb);
        let mut went = 0;
        for i in 0..PARCELS_PER_WORKER + 10 {
            if a.send(rb, ra, &(i as u32).to_be_bytes()) {
                went += 1;
            }
        }
        assert_eq!(went, PARCELS_PER_WORKER);
        let got = drained(&b);
        assert_eq!(got.len(), PARCELS_PER_WORKER);
        for (i, (_, _, d)) in got.iter().enumerate() {
            assert_eq!(d, &(i as u32).to_be_bytes());
        }
        // The parcels are back in the pool: the next ones go again, without new ones.
        let created = a.shared.created.load(Ordering::Relaxed);
        assert!(a.send(rb, ra, b"again"));
        assert_eq!(a.shared.created.load(Ordering::Relaxed), created);
    }

    /// The wake protocol under real concurrency: a sender thread hands over parcels one at
    /// a time, each after the receiver has taken the previous one (so each lands in the
    /// window where the receiver may be going idle), then a burst that fills the inbox;
    /// the receiver drains, goes idle and waits on its eventfd as a worker does. A lost
    /// wakeup leaves the receiver waiting with a parcel in its inbox: the wait has a hang
    /// guard far above any scheduling delay.
    #[test]
    fn no_wakeup_is_lost_between_two_threads() {
        use std::sync::atomic::AtomicU32;
        const ONE_BY_ONE: u32 = 20_000;
        const TOTAL: u32 = ONE_BY_ONE + 5 * PARCELS_PER_WORKER as u32;
        let (mut a, b) = pair();
        let (ra, rb) = (v4("127.0.0.1:50000"), v4("127.0.0.1:50001"));
        b.claim(&rb);
        let taken = Arc::new(AtomicU32::new(0));
        let seen = taken.clone();
        let sender = std::thread::spawn(move || {
            for i in 0..TOTAL {
                while !a.send(rb, ra, &i.to_be_bytes()) {
                    // Full: wake the receiver and let it drain.
                    a.notify();
                    std::thread::yield_now();
                }
                a.notify();
                // Bounded by the receiver, which takes every parcel or fails the test.
                while i < ONE_BY_ONE && seen.load(Ordering::Acquire) <= i {
                    std::hint::spin_loop();
                }
            }
        });
        let mut next = 0u32;
        while next < TOTAL {
            b.busy();
            b.drain(usize::MAX, |p| {
                let (buf, range) = p.payload();
                assert_eq!(buf[range], next.to_be_bytes(), "in order, none lost");
                next += 1;
                taken.store(next, Ordering::Release);
            });
            if next == TOTAL || b.going_idle() {
                continue;
            }
            let mut pfd = libc::pollfd {
                fd: b.wake_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, 60_000) };
            assert_eq!(ready, 1, "woken (after {next} parcels)");
            b.acknowledge();
        }
        sender.join().expect("the sender finishes");
    }

    #[test]
    fn wakes_an_idle_receiver_only() {
        let (mut a, b) = pair();
        let (ra, rb) = (v4("127.0.0.1:50000"), v4("127.0.0.1:50001"));
        b.claim(&rb);
        let readable = |fd: RawFd| {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no wait.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        assert!(!readable(b.wake_fd()));
        a.notify();
        assert!(!readable(b.wake_fd()), "nothing sent, nothing to wake");
        // Idle (a fresh worker is): woken, once for several parcels and notifications.
        assert!(a.send(rb, ra, b"x"));
        a.notify();
        assert!(readable(b.wake_fd()));
        b.acknowledge();
        assert!(!readable(b.wake_fd()));
        assert!(a.send(rb, ra, b"y"));
        a.notify();
        assert!(!readable(b.wake_fd()), "woken already, not idle since");
        // Busy: not woken; it looks before it goes idle and finds the parcels.
        b.busy();
        assert!(a.send(rb, ra, b"z"));
        a.notify();
        assert!(!readable(b.wake_fd()));
        assert!(b.going_idle(), "parcels wait: do not sleep");
        assert_eq!(drained(&b).len(), 3);
        assert!(!b.going_idle());
        assert!(a.send(rb, ra, b"w"));
        a.notify();
        assert!(readable(b.wake_fd()), "idle again: woken");
    }
}
