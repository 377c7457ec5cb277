//! Batched UDP system calls: `recvmmsg` into one shared set of buffers per worker, and a send
//! queue flushed with `sendmmsg`, one call per socket per flush.
//!
//! Everything is allocated once, when the worker starts: receiving, queueing and flushing a
//! datagram allocate nothing.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use crate::turn::{PEER_HEADROOM, PEER_TAILROOM};

/// Most datagrams one `recvmmsg` reads: the bound on work per socket per wakeup.
pub(super) const RX_BATCH: usize = 32;
/// Room for the largest UDP payload.
const MAX_DATAGRAM: usize = 65536;
/// One receive slot: headroom for a Data indication header written in place in front of a
/// peer's datagram, the datagram, and tail room for padding. Rounded up to 64 bytes, which
/// also staggers the slots' starts across cache sets (the stride is 64 more than 16 pages).
const SLOT: usize = (PEER_HEADROOM + MAX_DATAGRAM + PEER_TAILROOM).next_multiple_of(64);

/// Datagrams the send queue holds before it flushes by itself.
const TX_BATCH: usize = 64;
/// Bytes the send queue holds; a datagram larger than this is sent on its own.
const TX_BYTES: usize = 128 * 1024;

/// Room for an IPv4 or IPv6 socket address as the kernel reads and writes it.
#[repr(C)]
#[derive(Clone, Copy)]
union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    fn zeroed() -> RawAddr {
        // SAFETY: all-zero is a valid value of both plain C structs.
        unsafe { std::mem::zeroed() }
    }

    /// Writes `a` and returns the length to pass to the kernel.
    fn set(&mut self, a: &SocketAddr) -> libc::socklen_t {
        match a {
            SocketAddr::V4(a) => {
                self.v4 = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                self.v6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }

    /// The address the kernel wrote (as std converts it), or None for another family.
    fn get(&self, len: libc::socklen_t) -> Option<SocketAddr> {
        // SAFETY: the family field sits at the same offset in both variants, and every bit
        // pattern is a valid value of either.
        let family = unsafe { self.v4.sin_family } as libc::c_int;
        match family {
            libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: as above.
                let a = unsafe { self.v4 };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above.
                let a = unsafe { self.v6 };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// One worker's receive buffers: [`RX_BATCH`] slots, each with [`PEER_HEADROOM`] free before
/// the datagram and [`PEER_TAILROOM`] after it, shared by all of the worker's sockets (each
/// batch is handled before the next is read). The slots are 64 KiB each but only the pages
/// datagrams touch become resident.
pub(super) struct RecvBatch {
    bufs: Box<[u8]>,
    names: Box<[RawAddr]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl RecvBatch {
    pub(super) fn new() -> RecvBatch {
        let mut b = RecvBatch {
            bufs: vec![0u8; RX_BATCH * SLOT].into_boxed_slice(),
            names: vec![RawAddr::zeroed(); RX_BATCH].into_boxed_slice(),
            iovs: (0..RX_BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
            hdrs: (0..RX_BATCH)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
        };
        // The boxes never move their contents, so the pointers stay valid for `b`'s life.
        let base = b.bufs.as_mut_ptr();
        for i in 0..RX_BATCH {
            // SAFETY: slot i lies inside `bufs` (RX_BATCH * SLOT bytes).
            b.iovs[i].iov_base = unsafe { base.add(i * SLOT + PEER_HEADROOM) }.cast();
            b.iovs[i].iov_len = MAX_DATAGRAM;
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_name = (&mut b.names[i] as *mut RawAddr).cast();
            h.msg_iov = &mut b.iovs[i];
            h.msg_iovlen = 1;
        }
        b
    }

    /// Reads up to [`RX_BATCH`] datagrams from `fd` without waiting; returns how many
    /// arrived (0 when none was waiting or on error).
    pub(super) fn recv(&mut self, fd: RawFd) -> usize {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = std::mem::size_of::<RawAddr>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at its own live slot, iovec and address room, set up
        // in `new` and owned by `self`, which is borrowed mutably across the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                RX_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        r.max(0) as usize
    }

    /// Datagram `i` of the last [`RecvBatch::recv`]: its sender, and its slot with the
    /// payload's range in it. None for a truncated datagram or an unknown address family.
    pub(super) fn datagram(
        &mut self,
        i: usize,
    ) -> Option<(SocketAddr, &mut [u8], std::ops::Range<usize>)> {
        let h = self.hdrs.get(i)?;
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = (h.msg_len as usize).min(MAX_DATAGRAM);
        let from = self.names.get(i)?.get(h.msg_hdr.msg_namelen)?;
        let slot = self.bufs.get_mut(i * SLOT..(i + 1) * SLOT)?;
        Some((from, slot, PEER_HEADROOM..PEER_HEADROOM + len))
    }
}

/// A queued datagram: the socket it leaves from, where it goes, and its bytes in the arena.
#[derive(Clone, Copy)]
struct Queued {
    fd: RawFd,
    to: SocketAddr,
    off: u32,
    len: u32,
}

/// Datagrams collected while a batch of received ones is handled, sent at the end of it with
/// one `sendmmsg` per socket (in order per socket).
pub(super) struct SendQueue {
    arena: Box<[u8]>,
    used: usize,
    queued: Vec<Queued>,
    names: Box<[RawAddr]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl SendQueue {
    pub(super) fn new() -> SendQueue {
        SendQueue {
            arena: vec![0u8; TX_BYTES].into_boxed_slice(),
            used: 0,
            queued: Vec::with_capacity(TX_BATCH),
            names: vec![RawAddr::zeroed(); TX_BATCH].into_boxed_slice(),
            iovs: (0..TX_BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: all-zero is a valid mmsghdr.
            hdrs: (0..TX_BATCH)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
        }
    }

    /// Queues `data` for `to` from socket `fd`; false when it does not fit (flush first, or
    /// send it on its own if it is larger than the whole queue).
    pub(super) fn push(&mut self, fd: RawFd, to: SocketAddr, data: &[u8]) -> bool {
        if self.queued.len() >= TX_BATCH {
            return false;
        }
        let Some(room) = self.arena.get_mut(self.used..self.used + data.len()) else {
            return false;
        };
        room.copy_from_slice(data);
        self.queued.push(Queued {
            fd,
            to,
            off: self.used as u32,
            len: data.len() as u32,
        });
        self.used += data.len();
        true
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends everything queued, one `sendmmsg` per socket; returns how many datagrams the
    /// kernel refused (full socket buffer), which are dropped as UDP would.
    pub(super) fn flush(&mut self) -> u64 {
        let k = self.queued.len();
        if k == 0 {
            return 0;
        }
        // Group by socket; the arena offset keeps each socket's datagrams in queue order.
        // (An unstable sort does not allocate.)
        self.queued.sort_unstable_by_key(|q| (q.fd, q.off));
        let base = self.arena.as_mut_ptr();
        for (i, q) in self.queued.iter().enumerate() {
            let namelen = self.names[i].set(&q.to);
            // SAFETY: off + len lies inside the arena (checked in `push`).
            self.iovs[i].iov_base = unsafe { base.add(q.off as usize) }.cast();
            self.iovs[i].iov_len = q.len as usize;
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut RawAddr).cast();
            h.msg_hdr.msg_namelen = namelen;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        let mut drops = 0;
        let mut i = 0;
        while i < k {
            let fd = self.queued[i].fd;
            let end = i + self.queued[i..].iter().take_while(|q| q.fd == fd).count();
            // Bounded: each round sends at least one datagram or skips one.
            while i < end {
                // SAFETY: headers i..end point at live names, iovecs and arena bytes.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.hdrs[i..end].as_mut_ptr(),
                        (end - i) as libc::c_uint,
                        0,
                    )
                };
                if r > 0 {
                    i += r as usize;
                } else {
                    drops += 1;
                    i += 1;
                }
            }
        }
        self.queued.clear();
        self.used = 0;
        drops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn addresses_round_trip_both_families() {
        for a in ["127.0.0.1:3478", "[::1]:5000", "[fe80::1%3]:9"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut r = RawAddr::zeroed();
            let len = r.set(&a);
            assert_eq!(r.get(len), Some(a));
        }
        assert_eq!(RawAddr::zeroed().get(16), None, "unknown family");
        let mut r = RawAddr::zeroed();
        let len = r.set(&"[::1]:1".parse().unwrap());
        assert_eq!(r.get(len - 1), None, "short length");
    }

    /// Queued sends leave in order per socket, interleaved sockets included; a batch read
    /// gets them back with their sender, payloads in place after the headroom.
    #[test]
    fn queue_and_batch_receive_over_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_nonblocking(true).unwrap();
        let to = sink.local_addr().unwrap();
        let mut q = SendQueue::new();
        for i in 0..10u8 {
            let from = if i % 2 == 0 { &a } else { &b };
            assert!(q.push(from.as_raw_fd(), to, &[i; 7]));
        }
        assert_eq!(q.flush(), 0);
        assert!(q.is_empty());
        let mut rx = RecvBatch::new();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < 10 && std::time::Instant::now() < deadline {
            let n = rx.recv(sink.as_raw_fd());
            for i in 0..n {
                let (from, slot, range) = rx.datagram(i).unwrap();
                assert_eq!(range.start, PEER_HEADROOM);
                assert!(slot.len() >= range.end + PEER_TAILROOM);
                got.push((from, slot[range].to_vec()));
            }
        }
        assert_eq!(got.len(), 10);
        let from_a: Vec<u8> = got
            .iter()
            .filter(|(f, _)| *f == a.local_addr().unwrap())
            .map(|(_, d)| d[0])
            .collect();
        let from_b: Vec<u8> = got
            .iter()
            .filter(|(f, _)| *f == b.local_addr().unwrap())
            .map(|(_, d)| d[0])
            .collect();
        assert_eq!(from_a, vec![0, 2, 4, 6, 8]);
        assert_eq!(from_b, vec![1, 3, 5, 7, 9]);
        assert!(got.iter().all(|(_, d)| d.len() == 7));
    }

    /// The driver's per-packet machinery allocates nothing once built: queueing, `sendmmsg`,
    /// `recvmmsg` and the hand-over between allocations of one worker, over loopback
    /// (tests/hot_path_alloc.rs covers the core).
    #[test]
    fn batches_allocate_nothing_per_packet() {
        use crate::net::local::LocalQueue;
        use crate::turn::RelayId;
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sink.local_addr().unwrap();
        let (mut q, mut rx, mut local) = (SendQueue::new(), RecvBatch::new(), LocalQueue::new());
        let mut received = 0;
        let mut delivered = 0;
        let mut round = |count: bool| {
            counting::set(count);
            for i in 0..16u8 {
                assert!(q.push(a.as_raw_fd(), to, &[i; 200]));
            }
            q.flush();
            // The datagrams are in the sink's queue once sendmmsg returns (loopback); a few
            // rounds cover a late one.
            for _ in 0..4 {
                let n = rx.recv(sink.as_raw_fd());
                for i in 0..n {
                    let (from, slot, range) = rx.datagram(i).expect("datagram");
                    assert!(local.push(RelayId(1), from, &slot[range]));
                    received += 1;
                }
                local.drain(|_, _, buf, range| {
                    buf[range.start - 4..range.start].fill(0);
                    delivered += 1;
                });
            }
            counting::set(false);
        };
        round(false);
        let before = counting::allocations();
        for _ in 0..50 {
            round(true);
        }
        assert_eq!(
            counting::allocations(),
            before,
            "allocations on the packet path"
        );
        assert!(received > 0 && received == delivered);
    }

    #[test]
    fn queue_refuses_what_does_not_fit() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = s.local_addr().unwrap();
        let mut q = SendQueue::new();
        assert!(!q.push(s.as_raw_fd(), to, &vec![0u8; TX_BYTES + 1]));
        for _ in 0..TX_BATCH {
            assert!(q.push(s.as_raw_fd(), to, b"x"));
        }
        assert!(!q.push(s.as_raw_fd(), to, b"x"), "full by count");
        q.flush();
        assert!(q.push(s.as_raw_fd(), to, b"x"));
        q.flush();
    }
}

/// A global allocator for this crate's unit tests that counts, on threads that ask, how many
/// allocations happen (the rest of the tests are unaffected: it only delegates to the system's).
#[cfg(test)]
pub(crate) mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static ON: Cell<bool> = const { Cell::new(false) };
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    fn note() {
        if ON.with(|c| c.get()) {
            COUNT.with(|n| n.set(n.get() + 1));
        }
    }

    // SAFETY: every call is passed on unchanged to the system allocator.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            note();
            unsafe { System.alloc(l) }
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            note();
            unsafe { System.alloc_zeroed(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            unsafe { System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            note();
            unsafe { System.realloc(p, l, n) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Starts or stops counting on this thread.
    pub(crate) fn set(on: bool) {
        ON.with(|c| c.set(on));
    }

    /// Allocations counted on this thread so far.
    pub(crate) fn allocations() -> u64 {
        COUNT.with(|n| n.get())
    }
}
