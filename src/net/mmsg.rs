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

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use tracing::warn;

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
const TX_BATCH: usize = 256;
/// Bytes the send queue holds; a datagram larger than this is sent on its own.
const TX_BYTES: usize = 256 * 1024;

/// Most datagrams one GSO message carries (the kernel's `UDP_MAX_SEGMENTS` is 64 up to Linux
/// 6.8 and 128 since).
const GSO_SEGMENTS: usize = 64;
/// Most bytes one GSO message carries: the largest UDP payload over IPv4.
const GSO_BYTES: usize = 65507;
/// The largest datagram merged into a GSO message: a UDP payload that fits a 1500-byte IPv6
/// path. The kernel refuses a segment larger than the route's MTU allows (then the datagrams
/// go one by one: see [`SendQueue::flush`]); a larger datagram is IP-fragmented when sent on
/// its own, which GSO cannot do, so it is never merged.
const GSO_MAX_SEGMENT: usize = 1452;
/// Room for one control message holding a `u16` (GSO) or a `c_int` (GRO), 8-byte aligned.
type CmsgBuf = [u64; 4];

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
    /// Control message room per slot, for the GRO segment size; used when `gro` is on.
    cmsgs: Box<[CmsgBuf]>,
    gro: bool,
}

impl RecvBatch {
    /// Buffers for a worker; with `gro`, reads also take the segment size of coalesced
    /// datagrams ([`RecvBatch::segment_size`]).
    pub(super) fn with_gro(gro: bool) -> RecvBatch {
        let mut b = RecvBatch::new();
        b.gro = gro;
        b
    }

    pub(super) fn new() -> RecvBatch {
        let mut b = RecvBatch {
            gro: false,
            cmsgs: vec![[0u64; 4]; RX_BATCH].into_boxed_slice(),
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
        for (h, c) in self.hdrs.iter_mut().zip(self.cmsgs.iter_mut()) {
            h.msg_hdr.msg_namelen = std::mem::size_of::<RawAddr>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
            if self.gro {
                h.msg_hdr.msg_control = c.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = std::mem::size_of::<CmsgBuf>() as _;
            }
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

    /// The size of the datagrams that datagram `i` of the last read coalesces (GRO): every
    /// one but the last is this long. None when it is a single datagram.
    pub(super) fn segment_size(&self, i: usize) -> Option<usize> {
        if !self.gro {
            return None;
        }
        let h = &self.hdrs.get(i)?.msg_hdr;
        if h.msg_controllen == 0 {
            return None;
        }
        // SAFETY: the kernel wrote `msg_controllen` bytes of well-formed control messages
        // into this header's own buffer; the macros stay inside that length.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                    let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    return usize::try_from(size).ok().filter(|&s| s > 0);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
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
pub struct SendQueue {
    arena: Box<[u8]>,
    used: usize,
    queued: Vec<Queued>,
    names: Box<[RawAddr]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// Per message: the GSO control message, and the queued datagrams it carries.
    cmsgs: Box<[CmsgBuf]>,
    spans: Box<[(u16, u16)]>,
    /// Merge runs into GSO messages; turned off for good if the kernel says the device
    /// cannot (EIO).
    gso: bool,
    /// Datagrams that left in GSO messages, and the messages (for the metrics and tests).
    gso_datagrams: u64,
    gso_messages: u64,
    /// io_uring for the sends of a flush with several lone messages; `None` when not in use.
    ring: Option<SendRing>,
    /// The messages of the current flush handed to the ring, in the order of their entries
    /// (`u16::MAX` once reaped).
    in_ring: Box<[u16]>,
    /// Messages sent as io_uring entries.
    ring_messages: u64,
}

impl SendQueue {
    /// A queue that merges runs of equal datagrams into GSO messages when `gso` is on.
    pub(super) fn with_gso(gso: bool) -> SendQueue {
        let mut q = SendQueue::new();
        q.gso = gso;
        q
    }

    /// A queue using the offloads of `o`; without io_uring if this thread cannot set up a
    /// ring (the error says why).
    pub fn with_offload(o: Offload) -> (SendQueue, Option<std::io::Error>) {
        let mut q = SendQueue::with_gso(o.gso);
        if !o.io_uring {
            return (q, None);
        }
        match SendRing::new() {
            Ok(r) => {
                q.ring = Some(r);
                (q, None)
            }
            Err(e) => (q, Some(e)),
        }
    }

    /// Datagrams sent inside GSO messages, and how many messages carried them.
    pub(super) fn gso_counts(&self) -> (u64, u64) {
        (self.gso_datagrams, self.gso_messages)
    }

    /// Messages sent as io_uring entries.
    pub(super) fn ring_messages(&self) -> u64 {
        self.ring_messages
    }

    pub(super) fn new() -> SendQueue {
        SendQueue {
            cmsgs: vec![[0u64; 4]; TX_BATCH].into_boxed_slice(),
            spans: vec![(0u16, 0u16); TX_BATCH].into_boxed_slice(),
            gso: false,
            gso_datagrams: 0,
            gso_messages: 0,
            ring: None,
            in_ring: vec![0u16; TX_BATCH].into_boxed_slice(),
            ring_messages: 0,
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
    pub fn push(&mut self, fd: RawFd, to: SocketAddr, data: &[u8]) -> bool {
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

    /// Room for a datagram of at most `max` bytes, to be written in place (by a sender that
    /// frames what it sends: one copy fewer than [`SendQueue::push`]); `None` when the queue
    /// is full (flush first). [`SendQueue::commit`] queues what was written.
    pub fn room(&mut self, max: usize) -> Option<&mut [u8]> {
        if self.queued.len() >= TX_BATCH {
            return None;
        }
        self.arena.get_mut(self.used..self.used + max)
    }

    /// Queues the first `len` bytes just written into [`SendQueue::room`], for `to` from
    /// socket `fd`; ignored when they do not fit.
    pub fn commit(&mut self, fd: RawFd, to: SocketAddr, len: usize) {
        if self.queued.len() >= TX_BATCH || self.used + len > self.arena.len() {
            return;
        }
        self.queued.push(Queued {
            fd,
            to,
            off: self.used as u32,
            len: len as u32,
        });
        self.used += len;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends everything queued, one `sendmmsg` per socket; returns how many datagrams the
    /// kernel refused (full socket buffer), which are dropped as UDP would.
    ///
    /// With GSO, consecutive datagrams of one socket to one destination, of one size (the
    /// last of a run may be shorter), leave as one message with a `UDP_SEGMENT` control
    /// message. Datagrams to one destination keep their order; only the order between
    /// different destinations of one socket may change, which UDP never promised. If the
    /// kernel refuses a GSO message for its size (a route with a small MTU), its datagrams
    /// go one by one; if it says the device cannot segment (EIO), GSO stays off.
    pub fn flush(&mut self) -> u64 {
        let k = self.queued.len();
        if k == 0 {
            return 0;
        }
        // Group by socket, then by destination; the arena offset keeps each destination's
        // datagrams in queue order. (An unstable sort does not allocate.)
        if self.gso {
            self.queued.sort_unstable_by_key(|q| (q.fd, q.to, q.off));
        } else {
            self.queued.sort_unstable_by_key(|q| (q.fd, q.off));
        }
        let base = self.arena.as_mut_ptr();
        for (i, q) in self.queued.iter().enumerate() {
            // SAFETY: off + len lies inside the arena (checked in `push`).
            self.iovs[i].iov_base = unsafe { base.add(q.off as usize) }.cast();
            self.iovs[i].iov_len = q.len as usize;
        }
        // Messages: runs of datagrams, each message m carrying queued[spans[m]].
        let mut m = 0;
        let mut i = 0;
        while i < k {
            let q = self.queued[i];
            let j = if self.gso { self.run_end(i) } else { i + 1 };
            let namelen = self.names[m].set(&q.to);
            let h = &mut self.hdrs[m];
            h.msg_hdr.msg_name = (&mut self.names[m] as *mut RawAddr).cast();
            h.msg_hdr.msg_namelen = namelen;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = j - i;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
            if j - i > 1 {
                set_gso_cmsg(&mut h.msg_hdr, &mut self.cmsgs[m], q.len as u16);
            }
            self.spans[m] = (i as u16, j as u16);
            m += 1;
            i = j;
        }
        // Messages alone on their socket cost a system call each through `sendmmsg`; with
        // two or more of them, the flush's plain messages go to the kernel together through
        // the ring.
        let mut ring = self.ring.take();
        if ring.is_some() && self.lone_messages(m) < 2 {
            self.ring = ring.take();
        }
        let mut drops = 0;
        let mut in_ring = 0;
        let mut i = 0;
        while i < m {
            let fd = self.fd_of(i);
            let end = i + self.spans[i..m]
                .iter()
                .take_while(|&&(a, _)| self.queued[a as usize].fd == fd)
                .count();
            // A socket's messages go one way or the other, all of them, so that they leave
            // in order; a GSO message stays with `sendmmsg`, whose failure is handled before
            // the next message of its socket leaves.
            if let Some(r) = &mut ring
                && self.spans[i..end].iter().all(|&(a, b)| b - a == 1)
                && r.room() >= end - i
            {
                for j in i..end {
                    r.push(fd, &self.hdrs[j].msg_hdr, in_ring as u64);
                    self.in_ring[in_ring] = j as u16;
                    in_ring += 1;
                }
                i = end;
                continue;
            }
            // Bounded: each round sends at least one message or skips one.
            while i < end {
                // SAFETY: headers i..end point at live names, iovecs, control messages and
                // arena bytes, all owned by `self`.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.hdrs[i..end].as_mut_ptr(),
                        (end - i) as libc::c_uint,
                        0,
                    )
                };
                if r > 0 {
                    for j in i..i + r as usize {
                        self.sent(j);
                    }
                    i += r as usize;
                    continue;
                }
                let err = std::io::Error::last_os_error().raw_os_error();
                drops += self.refused(i, err);
                i += 1;
            }
        }
        if let Some(mut r) = ring {
            if in_ring > 0 {
                drops += self.complete(&mut r, in_ring);
            }
            if r.broken {
                warn!("io_uring failed; sending with sendmmsg from now on");
            } else {
                self.ring = Some(r);
            }
        }
        self.queued.clear();
        self.used = 0;
        drops
    }

    /// The socket message `i` of the current flush leaves from.
    fn fd_of(&self, i: usize) -> RawFd {
        self.queued[self.spans[i].0 as usize].fd
    }

    /// How many of the first `m` messages are the only one of their socket.
    fn lone_messages(&self, m: usize) -> usize {
        let mut lone = 0;
        let mut i = 0;
        while i < m {
            let fd = self.fd_of(i);
            let n = self.spans[i..m]
                .iter()
                .take_while(|&&(a, _)| self.queued[a as usize].fd == fd)
                .count();
            lone += usize::from(n == 1);
            i += n;
        }
        lone
    }

    /// Message `i` went: counts its GSO datagrams.
    fn sent(&mut self, i: usize) {
        let (a, b) = self.spans[i];
        if b - a > 1 {
            self.gso_messages += 1;
            self.gso_datagrams += u64::from(b - a);
        }
    }

    /// Message `i` was refused with `err`; returns the datagrams dropped. A GSO message the
    /// kernel would not take for its size (EINVAL, EMSGSIZE: a route with a small MTU), or
    /// because the device cannot segment (EIO: then GSO stays off), goes datagram by
    /// datagram; anything else (a full socket buffer) drops, as UDP does.
    fn refused(&mut self, i: usize, err: Option<i32>) -> u64 {
        let fd = self.fd_of(i);
        let (a, b) = self.spans[i];
        let (a, b) = (a as usize, b as usize);
        if b - a > 1 && matches!(err, Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)) {
            if err == Some(libc::EIO) {
                // The device cannot checksum or segment: stop asking.
                self.gso = false;
            }
            let mut drops = 0;
            for e in a..b {
                let q = self.queued[e];
                let data = &self.arena[q.off as usize..(q.off + q.len) as usize];
                if send_now(fd, data, &q.to).is_err() {
                    drops += 1;
                }
            }
            drops
        } else {
            (b - a) as u64
        }
    }

    /// Submits the `n` messages pushed on `ring` and waits until the kernel is done with
    /// every one (their headers and bytes are reused by the next flush); returns the
    /// datagrams dropped. If the ring cannot submit, it is marked broken and the messages
    /// go through `sendmmsg` instead.
    fn complete(&mut self, ring: &mut SendRing, n: usize) -> u64 {
        let mut drops = 0;
        let mut done = 0;
        // Bounded: each message is one entry sent with MSG_DONTWAIT, which the kernel
        // completes when it submits it (a full socket buffer completes it with EAGAIN
        // rather than waiting for room), so every pass reaps at least one completion.
        while done < n {
            if let Err(e) = ring.ring.submit_and_wait(n - done) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Nothing was submitted (the kernel consumes entries before it waits): drop
                // the ring, which discards them unsent, and send the rest the usual way.
                ring.broken = true;
                break;
            }
            for cqe in ring.ring.completion() {
                // The tag is the entry's place in `in_ring`, which names the message.
                let Some(slot) = self.in_ring[..n].get_mut(cqe.user_data() as usize) else {
                    continue;
                };
                let i = *slot as usize;
                // Reaped: a ring that breaks later does not send it again.
                *slot = u16::MAX;
                done += 1;
                if cqe.result() >= 0 {
                    self.ring_messages += 1;
                    self.sent(i);
                } else {
                    drops += self.refused(i, Some(-cqe.result()));
                }
            }
        }
        if ring.broken {
            for k in 0..n {
                let i = self.in_ring[k];
                if i == u16::MAX {
                    continue;
                }
                let i = i as usize;
                let fd = self.fd_of(i);
                // SAFETY: header i points at a live name, iovec, control message and arena
                // bytes, all owned by `self`.
                let r = unsafe { libc::sendmmsg(fd, &mut self.hdrs[i], 1, 0) };
                if r == 1 {
                    self.sent(i);
                } else {
                    let err = std::io::Error::last_os_error().raw_os_error();
                    drops += self.refused(i, err);
                }
            }
        }
        drops
    }

    /// The end of the GSO run that starts at queued datagram `i`: the datagrams after it
    /// from the same socket to the same destination, as long as the first one, within the
    /// kernel's limits; one shorter datagram may end the run.
    fn run_end(&self, i: usize) -> usize {
        let q = self.queued[i];
        let size = q.len as usize;
        let mut j = i + 1;
        if size == 0 || size > GSO_MAX_SEGMENT {
            return j;
        }
        let mut total = size;
        while let Some(n) = self.queued.get(j) {
            let len = n.len as usize;
            if n.fd != q.fd
                || n.to != q.to
                || len == 0
                || len > size
                || j - i >= GSO_SEGMENTS
                || total + len > GSO_BYTES
            {
                break;
            }
            total += len;
            j += 1;
            if len < size {
                break;
            }
        }
        j
    }
}

/// An io_uring for a worker's sends (Linux 5.17 or later with `SENDMSG`; refused where
/// io_uring is disabled, e.g. by `kernel.io_uring_disabled` or a seccomp filter). Entries
/// carry `MSG_DONTWAIT`, so the kernel completes each one as it submits it and no send
/// outlives [`SendQueue::flush`].
struct SendRing {
    ring: io_uring::IoUring,
    /// Submitting failed: the queue goes back to `sendmmsg` for good.
    broken: bool,
}

impl SendRing {
    fn new() -> std::io::Result<SendRing> {
        let ring = io_uring::IoUring::builder()
            // One completion per entry, even after an entry fails.
            .setup_submit_all()
            .build(TX_BATCH as u32)?;
        // Linux 5.17 (the feature is only a marker of the version): an entry with
        // MSG_DONTWAIT completes with EAGAIN instead of waiting for room, which `flush`
        // relies on, in every kernel since well before it.
        if !ring.params().is_feature_skip_cqe_on_success() {
            return Err(std::io::Error::other("io_uring is older than Linux 5.17"));
        }
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(io_uring::opcode::SendMsg::CODE) {
            return Err(std::io::Error::other("io_uring cannot SENDMSG"));
        }
        Ok(SendRing {
            ring,
            broken: false,
        })
    }

    /// Free entries in the submission queue.
    fn room(&mut self) -> usize {
        let sq = self.ring.submission();
        sq.capacity() - sq.len()
    }

    /// Queues `hdr` to be sent from `fd` (call [`SendRing::room`] first).
    fn push(&mut self, fd: RawFd, hdr: &libc::msghdr, tag: u64) {
        let e = io_uring::opcode::SendMsg::new(io_uring::types::Fd(fd), hdr)
            .flags(libc::MSG_DONTWAIT as u32)
            .build()
            .user_data(tag);
        // SAFETY: the header and all it points at belong to the send queue, which does not
        // touch them until `SendQueue::complete` has reaped this entry. There is room (the
        // caller checked), so the push cannot fail.
        let _ = unsafe { self.ring.submission().push(&e) };
    }
}

/// Attaches a `UDP_SEGMENT` control message giving the segment size to `h`.
fn set_gso_cmsg(h: &mut libc::msghdr, buf: &mut CmsgBuf, size: u16) {
    h.msg_control = buf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE of a u16 (24 bytes on 64-bit Linux) fits the 32-byte, 8-aligned
    // buffer that `msg_control` now points at, so CMSG_FIRSTHDR is that buffer and the
    // header and its data lie inside it.
    unsafe {
        h.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as _;
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
    }
}

/// One non-blocking `sendto`, straight to the kernel (a full kernel buffer drops, as UDP
/// does): for sends outside a batch, and the datagrams of a GSO message the kernel refused.
pub(super) fn send_now(fd: RawFd, data: &[u8], to: &SocketAddr) -> std::io::Result<usize> {
    // SAFETY: `fd` is an open socket owned by the worker for the duration of the call.
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&sock).send_to(data, &(*to).into())
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
