//! Sending: the queue a worker collects its sends in while it handles a batch, flushed with
//! one `sendmmsg` per socket; runs of equal datagrams to one destination leave as one UDP GSO
//! message, and a flush of many lone messages goes through the io_uring ([`super::ring`]).

use std::net::SocketAddr;
use std::os::fd::RawFd;

use tracing::warn;

use super::ring::SendRing;
use super::{CmsgBuf, Offload, RawAddr, send_now};

/// Datagrams the send queue holds before it flushes by itself.
pub(super) const TX_BATCH: usize = 256;
/// Bytes the send queue holds; a datagram larger than this is sent on its own.
pub(super) const TX_BYTES: usize = 256 * 1024;

/// Most datagrams one GSO message carries (the kernel's `UDP_MAX_SEGMENTS` is 64 up to Linux
/// 6.8 and 128 since).
pub(super) const GSO_SEGMENTS: usize = 64;
/// Most bytes one GSO message carries: the largest UDP payload over IPv4.
pub(super) const GSO_BYTES: usize = 65507;
/// The largest datagram merged into a GSO message: a UDP payload that fits a 1500-byte IPv6
/// path. The kernel refuses a segment larger than the route's MTU allows (then the datagrams
/// go one by one: see [`SendQueue::flush`]); a larger datagram is IP-fragmented when sent on
/// its own, which GSO cannot do, so it is never merged.
pub(super) const GSO_MAX_SEGMENT: usize = 1452;

/// A queued datagram: the socket it leaves from, where it goes, and its bytes in the arena.
#[derive(Clone, Copy)]
pub(super) struct Queued {
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
    pub(super) queued: Vec<Queued>,
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
    pub(super) ring: Option<SendRing>,
    /// The messages of the current flush handed to the ring, in the order of their entries
    /// (`u16::MAX` once reaped).
    in_ring: Box<[u16]>,
    /// Messages sent as io_uring entries.
    ring_messages: u64,
}

impl SendQueue {
    /// A queue that merges runs of equal datagrams into GSO messages when `gso` is on.
    pub(crate) fn with_gso(gso: bool) -> SendQueue {
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
    pub(crate) fn gso_counts(&self) -> (u64, u64) {
        (self.gso_datagrams, self.gso_messages)
    }

    /// Messages sent as io_uring entries.
    pub(crate) fn ring_messages(&self) -> u64 {
        self.ring_messages
    }

    pub(crate) fn new() -> SendQueue {
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

    pub(crate) fn is_empty(&self) -> bool {
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
