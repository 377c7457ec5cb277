//! Batched UDP system calls: `recvmmsg` into one shared set of buffers per worker, and a send
//! queue flushed with `sendmmsg`, one call per socket per flush.
//!
//! Where the kernel has them, the UDP segmentation offloads go further ([`Offload`]): a run of
//! datagrams of one size from one socket to one destination leaves as one GSO message
//! (`UDP_SEGMENT`, Linux 4.18), which crosses the IP stack once, and a socket with `UDP_GRO`
//! (Linux 5.0) receives a burst of equal datagrams from one sender as one read, which the
//! worker splits back into the datagrams. The sends and reads are the same datagrams either
//! way: only the number of passes through the kernel changes.
//!
//! A flush that would make one system call per socket for many sockets (relay sockets sending
//! one datagram each to their peers, the shape of TURN traffic) hands those messages to the
//! kernel through io_uring instead ([`Offload::io_uring`]): one `SENDMSG` entry per message, all
//! submitted by one `io_uring_enter`.
//!
//! Everything is allocated once, when the worker starts: receiving, queueing and flushing a
//! datagram allocate nothing.

mod recv;
mod ring;
mod send;

pub(crate) use recv::{RX_BATCH, RecvBatch};
pub use send::SendQueue;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use ring::SendRing;

/// Room for one control message holding a `u16` (GSO) or a `c_int` (GRO), 8-byte aligned.
pub(super) type CmsgBuf = [u64; 4];

/// The UDP segmentation offloads a worker uses, and whether it sends through io_uring: what the
/// kernel supports, unless the operator turned them off (`server.udp-offload = false`,
/// `server.udp-io-uring = false`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// Send runs of equal datagrams to one destination as one `UDP_SEGMENT` message.
    pub gso: bool,
    /// Set `UDP_GRO` on the sockets and split what arrives coalesced.
    pub gro: bool,
    /// Send a flush's plain messages through io_uring when two or more sockets have one
    /// message each (see [`SendQueue::flush`]).
    pub io_uring: bool,
}

impl Offload {
    /// What this kernel supports, found by setting the options on a throwaway socket and,
    /// with `io_uring`, by setting up a ring (without, no io_uring call is made).
    pub(crate) fn probe(io_uring: bool) -> Offload {
        // Either loopback will do (a host may have only one of them).
        let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0")
            .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
        else {
            return Offload::default();
        };
        use std::os::fd::AsRawFd;
        let fd = s.as_raw_fd();
        Offload {
            gso: set_int(fd, libc::UDP_SEGMENT, 1200),
            gro: set_int(fd, libc::UDP_GRO, 1),
            io_uring: io_uring && SendRing::new().is_ok(),
        }
    }

    /// Turns GRO on for a socket of a worker using it; false when the kernel refused.
    pub(crate) fn enable_gro(&self, fd: RawFd) -> bool {
        self.gro && set_int(fd, libc::UDP_GRO, 1)
    }
}

/// `setsockopt(fd, SOL_UDP, name, value)`; true when it took.
fn set_int(fd: RawFd, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Room for an IPv4 or IPv6 socket address as the kernel reads and writes it.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    pub(super) fn zeroed() -> RawAddr {
        // SAFETY: all-zero is a valid value of both plain C structs.
        unsafe { std::mem::zeroed() }
    }

    /// Writes `a` and returns the length to pass to the kernel.
    pub(super) fn set(&mut self, a: &SocketAddr) -> libc::socklen_t {
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
    pub(super) fn get(&self, len: libc::socklen_t) -> Option<SocketAddr> {
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

/// One non-blocking `sendto`, straight to the kernel (a full kernel buffer drops, as UDP
/// does): for sends outside a batch, and the datagrams of a GSO message the kernel refused.
pub(crate) fn send_now(fd: RawFd, data: &[u8], to: &SocketAddr) -> std::io::Result<usize> {
    // SAFETY: `fd` is an open socket owned by the worker for the duration of the call.
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&sock).send_to(data, &(*to).into())
}

#[cfg(test)]
mod tests {
    use super::recv::*;
    use super::send::*;
    use super::*;
    use crate::turn::{PEER_HEADROOM, PEER_TAILROOM};
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
        use crate::net::worker::local::LocalQueue;
        use crate::turn::RelayId;
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Four more sockets with one datagram each per round: with io_uring, their sends go
        // through the ring.
        let lone: Vec<UdpSocket> = (0..4)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sink.local_addr().unwrap();
        // With the offloads where the kernel has them: the 16 datagrams below leave as one
        // GSO message and are read back as one GRO read.
        let offload = Offload::probe(true);
        offload.enable_gro(sink.as_raw_fd());
        let (mut q, mut rx, mut local) = (
            SendQueue::with_offload(offload).0,
            RecvBatch::with_gro(offload.gro),
            LocalQueue::new(),
        );
        let mut received = 0;
        let mut delivered = 0;
        let mut round = |count: bool| {
            counting::set(count);
            for i in 0..16u8 {
                assert!(q.push(a.as_raw_fd(), to, &[i; 200]));
            }
            for l in &lone {
                assert!(q.push(l.as_raw_fd(), to, &[99; 100]));
            }
            q.flush();
            // The datagrams are in the sink's queue once sendmmsg returns (loopback); a few
            // rounds cover a late one.
            for _ in 0..4 {
                let n = rx.recv(sink.as_raw_fd());
                for i in 0..n {
                    let step = rx.segment_size(i);
                    let (from, slot, range) = rx.datagram(i).expect("datagram");
                    let step = if range.len() == 100 { None } else { step };
                    for d in slot[range].chunks(step.unwrap_or(200)) {
                        assert!(local.push(RelayId(1), from, d));
                        received += 1;
                    }
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
        assert_eq!(
            q.ring_messages() > 0,
            offload.io_uring,
            "sends through io_uring where the kernel allows it"
        );
    }

    /// Reads `n` datagrams from `s` (a generous hang guard).
    fn read_n(s: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 2048];
        (0..n)
            .map(|_| {
                let (len, _) = s.recv_from(&mut buf).unwrap();
                buf[..len].to_vec()
            })
            .collect()
    }

    #[test]
    fn lone_messages_go_through_io_uring_together_and_gso_runs_through_sendmmsg() {
        let offload = Offload::probe(true);
        let (mut q, err) = SendQueue::with_offload(offload);
        assert!(err.is_none(), "a ring where the probe found one: {err:?}");
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gso_sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (to, to_gso) = (sink.local_addr().unwrap(), gso_sink.local_addr().unwrap());
        // Six sockets with one datagram each, one with two datagrams of different sizes (two
        // plain messages: through the ring too, in order), and one with a GSO run.
        let lone: Vec<UdpSocket> = (0..6)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let two = UdpSocket::bind("127.0.0.1:0").unwrap();
        let run = UdpSocket::bind("127.0.0.1:0").unwrap();
        for (i, l) in lone.iter().enumerate() {
            assert!(q.push(l.as_raw_fd(), to, &[i as u8; 50]));
        }
        assert!(q.push(two.as_raw_fd(), to, &[7; 60]));
        assert!(q.push(two.as_raw_fd(), to, &[8; 70]));
        for i in 0..4u8 {
            assert!(q.push(run.as_raw_fd(), to_gso, &[20 + i; 100]));
        }
        assert_eq!(q.flush(), 0);
        let mut got = read_n(&sink, 8);
        let seven = got.iter().position(|d| d[0] == 7).unwrap();
        let eight = got.iter().position(|d| d[0] == 8).unwrap();
        assert!(seven < eight, "one socket's datagrams in order");
        got.sort();
        let mut want: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 50]).collect();
        want.extend([vec![7; 60], vec![8; 70]]);
        want.sort();
        assert_eq!(got, want);
        assert_eq!(
            read_n(&gso_sink, 4),
            (0..4u8).map(|i| vec![20 + i; 100]).collect::<Vec<_>>()
        );
        if offload.io_uring {
            assert_eq!(
                q.ring_messages(),
                8,
                "the plain messages went through the ring"
            );
        } else {
            assert_eq!(q.ring_messages(), 0);
        }
        if offload.gso {
            assert_eq!(q.gso_counts(), (4, 1), "the run left as one GSO message");
        }

        // One lone message: one system call either way, so no ring.
        let before = q.ring_messages();
        assert!(q.push(lone[0].as_raw_fd(), to, &[1; 10]));
        assert!(q.push(run.as_raw_fd(), to, &[2; 10]));
        assert!(q.push(run.as_raw_fd(), to, &[3; 20]));
        assert_eq!(q.flush(), 0);
        assert_eq!(read_n(&sink, 3).len(), 3);
        assert_eq!(q.ring_messages(), before);
    }

    /// Six sockets with one datagram each go out in one flush, and all six arrive.
    fn six_lone_datagrams_arrive(q: &mut SendQueue) {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sink.local_addr().unwrap();
        let lone: Vec<UdpSocket> = (0..6)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (i, l) in lone.iter().enumerate() {
            assert!(q.push(l.as_raw_fd(), to, &[i as u8; 50]));
        }
        assert_eq!(q.flush(), 0);
        let mut got = read_n(&sink, 6);
        got.sort();
        assert_eq!(got, (0..6u8).map(|i| vec![i; 50]).collect::<Vec<_>>());
    }

    #[test]
    fn a_ring_that_fails_hands_its_messages_to_sendmmsg() {
        let offload = Offload::probe(true);
        let (mut q, _) = SendQueue::with_offload(offload);
        let Some(r) = &q.ring else {
            assert!(!offload.io_uring, "a ring where the probe found one");
            return;
        };
        // The ring's descriptor now names /dev/null: io_uring_enter fails (its mappings stay
        // valid, and dropping the ring closes our own descriptor).
        use std::os::fd::AsRawFd as _;
        let null = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: both descriptors are open and owned by this test.
        assert!(unsafe { libc::dup2(null.as_raw_fd(), r.ring.as_raw_fd()) } >= 0);
        six_lone_datagrams_arrive(&mut q);
        assert_eq!(q.ring_messages(), 0);
        assert!(q.ring.is_none(), "sendmmsg from now on");
    }

    #[test]
    fn without_io_uring_the_same_sends_go_through_sendmmsg() {
        let offload = Offload::probe(false);
        let (mut q, err) = SendQueue::with_offload(offload);
        assert!(err.is_none());
        six_lone_datagrams_arrive(&mut q);
        assert_eq!(q.ring_messages(), 0);
    }

    /// With GSO, a run of equal datagrams from one socket to one destination leaves as one
    /// message (a shorter one may end it), other destinations keep their own messages, and
    /// each destination gets its datagrams whole and in order.
    #[test]
    fn gso_merges_runs_per_destination_in_order() {
        let offload = Offload::probe(true);
        let src = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (ta, tb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut q = SendQueue::with_gso(offload.gso);
        let fd = src.as_raw_fd();
        let to_a: Vec<Vec<u8>> = vec![
            vec![1; 100],
            vec![2; 100],
            vec![3; 100],
            vec![4; 50],
            vec![5; 100],
            vec![6; 1453],
            vec![7; 1453],
        ];
        for (i, d) in to_a.iter().enumerate() {
            assert!(q.push(fd, ta, d));
            if i == 1 {
                assert!(q.push(fd, tb, &[9; 100]));
            }
        }
        assert_eq!(q.flush(), 0);
        if offload.gso {
            // 1, 2, 3 and the shorter 4 in one message; 5, 6, 7 and B's on their own (6 and 7
            // are over the largest merged size).
            assert_eq!(q.gso_counts(), (4, 1));
        } else {
            assert_eq!(q.gso_counts(), (0, 0));
        }
        assert_eq!(read_n(&a, to_a.len()), to_a);
        assert_eq!(read_n(&b, 1), vec![vec![9u8; 100]]);
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

    /// A datagram written in place (`room`, then `commit` of what was written) leaves as a
    /// pushed one does, in queue order; a full queue has no room.
    #[test]
    fn datagrams_written_in_place_leave_in_order() {
        let src = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let to = sink.local_addr().unwrap();
        let mut q = SendQueue::new();
        assert!(q.push(src.as_raw_fd(), to, b"first"));
        let room = q.room(64).expect("room");
        room[..6].copy_from_slice(b"second");
        q.commit(src.as_raw_fd(), to, 6);
        assert!(q.push(src.as_raw_fd(), to, b"third"));
        assert_eq!(q.flush(), 0);
        assert_eq!(
            read_n(&sink, 3),
            [&b"first"[..], b"second", b"third"].map(|d| d.to_vec())
        );
        assert!(q.room(TX_BYTES + 1).is_none(), "larger than the queue");
        for _ in 0..TX_BATCH {
            q.commit(src.as_raw_fd(), to, 1);
        }
        assert!(q.room(1).is_none(), "full by count");
        q.commit(src.as_raw_fd(), to, 1);
        assert_eq!(q.queued.len(), TX_BATCH);
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
