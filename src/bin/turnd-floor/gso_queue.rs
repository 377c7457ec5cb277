//! `turnd-floor --batch --gso`: the send queue of the floor with UDP segmentation offload,
//! by the same rules as turnd's own (`src/net/mmsg.rs`, `SendQueue::flush`): datagrams are
//! queued while a round of reads is handled and leave at its end, one `sendmmsg` per
//! socket, and a run of queued datagrams from one socket to one destination of one size
//! (the last may be shorter) leaves as one message with a `UDP_SEGMENT` control message.
//! So the floor pays the kernel what turnd pays for bursty traffic, and no more.
//!
//! With `--io-uring`, as turnd with `server.udp-io-uring`: when two or more sockets have one
//! message each in a flush, every socket whose messages are all plain (no GSO message) hands
//! them to the kernel as io_uring `SENDMSG` entries with `MSG_DONTWAIT`, one `io_uring_enter`
//! for all, reaped before the flush returns.

use std::net::SocketAddrV4;
use std::os::fd::RawFd;

use crate::gso::CmsgBuf;

/// Datagrams the queue holds before it must be flushed (turnd's `TX_BATCH`).
const ENTRIES: usize = 256;
/// Bytes the queue holds (turnd's `TX_BYTES`).
const BYTES: usize = 256 * 1024;
/// Most datagrams in one GSO message (`UDP_MAX_SEGMENTS` before Linux 6.9).
const GSO_SEGMENTS: usize = 64;
/// Most bytes in one GSO message: the largest UDP payload over IPv4.
const GSO_BYTES: usize = 65507;
/// The largest datagram merged: one that fits a 1500-byte path (turnd's
/// `GSO_MAX_SEGMENT`); larger ones leave on their own.
const GSO_MAX_SEGMENT: usize = 1452;

#[derive(Clone, Copy)]
struct Queued {
    fd: RawFd,
    to: SocketAddrV4,
    off: usize,
    len: usize,
}

/// Queued datagrams of any of a worker's sockets, sent with GSO at [`GsoQueue::flush`].
pub struct GsoQueue {
    arena: Vec<u8>,
    used: usize,
    queued: Vec<Queued>,
    names: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<CmsgBuf>,
    /// Per message: the queued datagrams it carries.
    spans: Vec<(usize, usize)>,
    /// Merge runs into GSO messages; off for good once the kernel says the device cannot.
    pub gso: bool,
    /// GSO messages sent, and the datagrams they carried.
    pub gso_messages: u64,
    pub gso_datagrams: u64,
    /// `--io-uring`: the ring the plain messages of a flush go through.
    ring: Option<io_uring::IoUring>,
    /// Messages sent through the ring.
    pub ring_messages: u64,
}

impl GsoQueue {
    /// A queue that also sends through io_uring (`--io-uring`); the error when this kernel
    /// or process cannot set up a ring that sends.
    pub fn with_io_uring() -> std::io::Result<GsoQueue> {
        let ring = io_uring::IoUring::builder()
            .setup_submit_all()
            .build(ENTRIES as u32)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        // As turnd: Linux 5.17 or later, so that MSG_DONTWAIT entries never wait.
        if !probe.is_supported(io_uring::opcode::SendMsg::CODE)
            || !ring.params().is_feature_skip_cqe_on_success()
        {
            return Err(std::io::Error::other("io_uring cannot SENDMSG here"));
        }
        let mut q = GsoQueue::new();
        q.ring = Some(ring);
        Ok(q)
    }

    pub fn new() -> GsoQueue {
        GsoQueue {
            arena: vec![0; BYTES],
            used: 0,
            queued: Vec::with_capacity(ENTRIES),
            // SAFETY: all-zero is a valid value of these plain C structs.
            names: vec![unsafe { std::mem::zeroed() }; ENTRIES],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                ENTRIES
            ],
            // SAFETY: as above.
            hdrs: (0..ENTRIES)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            cmsgs: vec![CmsgBuf::default(); ENTRIES],
            spans: vec![(0, 0); ENTRIES],
            gso: true,
            gso_messages: 0,
            gso_datagrams: 0,
            ring: None,
            ring_messages: 0,
        }
    }

    /// Room for a datagram of at most `max` bytes; `None` when the queue is full (flush
    /// first). Write it, then [`GsoQueue::commit`] its length.
    pub fn room(&mut self, max: usize) -> Option<&mut [u8]> {
        if self.queued.len() >= ENTRIES {
            return None;
        }
        self.arena.get_mut(self.used..self.used + max)
    }

    /// Queues the `len` bytes just written into [`GsoQueue::room`], to go from `fd` to `to`.
    pub fn commit(&mut self, fd: RawFd, to: SocketAddrV4, len: usize) {
        if self.queued.len() >= ENTRIES || self.used + len > self.arena.len() {
            return;
        }
        self.queued.push(Queued {
            fd,
            to,
            off: self.used,
            len,
        });
        self.used += len;
    }

    /// Queues a copy of `data`; false when it does not fit (flush first).
    pub fn push(&mut self, fd: RawFd, to: SocketAddrV4, data: &[u8]) -> bool {
        let Some(room) = self.room(data.len()) else {
            return false;
        };
        room.copy_from_slice(data);
        self.commit(fd, to, data.len());
        true
    }

    /// Sends everything queued, one `sendmmsg` per socket, runs merged into GSO messages;
    /// returns how many datagrams the kernel refused (dropped, as UDP may). Datagrams to
    /// one destination keep their order. A GSO message refused for its size or by the
    /// device goes out datagram by datagram; EIO (the device cannot segment) turns GSO off.
    pub fn flush(&mut self) -> u64 {
        let k = self.queued.len();
        if k == 0 {
            return 0;
        }
        self.queued
            .sort_unstable_by_key(|q| (q.fd, *q.to.ip(), q.to.port(), q.off));
        let base = self.arena.as_mut_ptr();
        for (i, q) in self.queued.iter().enumerate() {
            // SAFETY: off + len lies inside the arena (checked in `commit`).
            self.iovs[i].iov_base = unsafe { base.add(q.off) }.cast();
            self.iovs[i].iov_len = q.len;
        }
        let mut m = 0;
        let mut i = 0;
        while i < k {
            let q = self.queued[i];
            let j = if self.gso { self.run_end(i) } else { i + 1 };
            self.names[m] = sockaddr(q.to);
            let h = &mut self.hdrs[m];
            h.msg_hdr.msg_name = (&mut self.names[m] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = j - i;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
            if j - i > 1 {
                crate::gso::set_segment(&mut h.msg_hdr, &mut self.cmsgs[m], q.len as u16);
            }
            self.spans[m] = (i, j);
            m += 1;
            i = j;
        }
        let mut drops = 0;
        let mut ring = self.ring.take();
        let mut in_ring = 0;
        if ring.is_some() && self.lone_messages(m) < 2 {
            self.ring = ring.take();
        }
        let mut i = 0;
        while i < m {
            let fd = self.queued[self.spans[i].0].fd;
            let end = i + self.spans[i..m]
                .iter()
                .take_while(|&&(a, _)| self.queued[a].fd == fd)
                .count();
            if let Some(r) = &mut ring
                && self.spans[i..end].iter().all(|&(a, b)| b - a == 1)
            {
                for h in &self.hdrs[i..end] {
                    let e = io_uring::opcode::SendMsg::new(io_uring::types::Fd(fd), &h.msg_hdr)
                        .flags(libc::MSG_DONTWAIT as u32)
                        .build();
                    // SAFETY: the header and what it points at stay untouched until the
                    // entry is reaped below; at most ENTRIES entries fit a ring of ENTRIES.
                    let _ = unsafe { r.submission().push(&e) };
                    in_ring += 1;
                }
                i = end;
                continue;
            }
            // Bounded: each round sends at least one message or gives one up.
            while i < end {
                // SAFETY: headers i..end point at live names, iovecs, control buffers and
                // arena bytes, all owned by `self`.
                let r = unsafe {
                    libc::sendmmsg(fd, self.hdrs[i..end].as_mut_ptr(), (end - i) as u32, 0)
                };
                if r > 0 {
                    for &(a, b) in &self.spans[i..i + r as usize] {
                        if b - a > 1 {
                            self.gso_messages += 1;
                            self.gso_datagrams += (b - a) as u64;
                        }
                    }
                    i += r as usize;
                    continue;
                }
                let err = std::io::Error::last_os_error().raw_os_error();
                let (a, b) = self.spans[i];
                if b - a > 1 && matches!(err, Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)) {
                    if err == Some(libc::EIO) {
                        self.gso = false;
                    }
                    for q in &self.queued[a..b] {
                        let name = sockaddr(q.to);
                        // SAFETY: the bytes lie inside the arena and `name` is a valid
                        // sockaddr_in of the length given.
                        let r = unsafe {
                            libc::sendto(
                                fd,
                                self.arena.as_ptr().add(q.off).cast(),
                                q.len,
                                0,
                                (&name as *const libc::sockaddr_in).cast(),
                                std::mem::size_of::<libc::sockaddr_in>() as u32,
                            )
                        };
                        if r < 0 {
                            drops += 1;
                        }
                    }
                } else {
                    drops += (b - a) as u64;
                }
                i += 1;
            }
        }
        if let Some(mut r) = ring {
            let mut done = 0;
            // Bounded: MSG_DONTWAIT entries complete as they are submitted; a ring that
            // cannot submit is dropped (with its entries, unsent: counted as drops).
            while done < in_ring {
                match r.submit_and_wait(in_ring - done) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        drops += (in_ring - done) as u64;
                        in_ring = usize::MAX;
                        break;
                    }
                }
                for cqe in r.completion() {
                    done += 1;
                    if cqe.result() >= 0 {
                        self.ring_messages += 1;
                    } else {
                        drops += 1;
                    }
                }
            }
            if in_ring != usize::MAX {
                self.ring = Some(r);
            }
        }
        self.queued.clear();
        self.used = 0;
        drops
    }

    /// How many of the first `m` messages are the only one of their socket.
    fn lone_messages(&self, m: usize) -> usize {
        let (mut lone, mut i) = (0, 0);
        while i < m {
            let fd = self.queued[self.spans[i].0].fd;
            let n = self.spans[i..m]
                .iter()
                .take_while(|&&(a, _)| self.queued[a].fd == fd)
                .count();
            lone += usize::from(n == 1);
            i += n;
        }
        lone
    }

    /// The end of the run that starts at queued datagram `i`: the datagrams after it from
    /// the same socket to the same destination, as long as the first, within the kernel's
    /// limits; one shorter datagram may end the run.
    fn run_end(&self, i: usize) -> usize {
        let q = self.queued[i];
        let size = q.len;
        let mut j = i + 1;
        if size == 0 || size > GSO_MAX_SEGMENT {
            return j;
        }
        let mut total = size;
        while let Some(n) = self.queued.get(j) {
            if n.fd != q.fd
                || n.to != q.to
                || n.len == 0
                || n.len > size
                || j - i >= GSO_SEGMENTS
                || total + n.len > GSO_BYTES
            {
                break;
            }
            total += n.len;
            j += 1;
            if n.len < size {
                break;
            }
        }
        j
    }
}

fn sockaddr(to: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn v4(s: &UdpSocket) -> SocketAddrV4 {
        match s.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        }
    }

    #[test]
    fn runs_per_socket_and_destination_become_gso_messages_in_order() {
        let tx1 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx2 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        assert!(crate::gso::supported(&tx1), "this kernel has no UDP GSO");
        let mut q = GsoQueue::new();
        // Interleaved: tx1 -> a three of 100 bytes and a shorter one; tx1 -> b one;
        // tx2 -> a two of 50; then tx1 -> a one more of 100 (a new run: after a short one).
        let plan: [(&UdpSocket, &UdpSocket, u8, usize); 8] = [
            (&tx1, &a, 1, 100),
            (&tx1, &b, 2, 100),
            (&tx1, &a, 3, 100),
            (&tx2, &a, 4, 50),
            (&tx1, &a, 5, 100),
            (&tx2, &a, 6, 50),
            (&tx1, &a, 7, 60),
            (&tx1, &a, 8, 100),
        ];
        for (from, to, tag, len) in plan {
            assert!(q.push(from.as_raw_fd(), v4(to), &vec![tag; len]));
        }
        assert_eq!(q.flush(), 0);
        // tx1 -> a: [1, 3, 5, 7] (7 is short and ends the run), then [8] alone;
        // tx2 -> a: [4, 6].
        assert_eq!((q.gso_messages, q.gso_datagrams), (2, 6));
        assert!(q.queued.is_empty());
        let mut buf = [0u8; 2048];
        let mut from_tx1 = Vec::new();
        let mut from_tx2 = Vec::new();
        for _ in 0..7 {
            let (n, src) = a.recv_from(&mut buf).unwrap();
            let tag = buf[0];
            assert!(buf[..n].iter().all(|&x| x == tag));
            if src == tx1.local_addr().unwrap() {
                from_tx1.push((tag, n));
            } else {
                from_tx2.push((tag, n));
            }
        }
        assert_eq!(from_tx1, [(1, 100), (3, 100), (5, 100), (7, 60), (8, 100)]);
        assert_eq!(from_tx2, [(4, 50), (6, 50)]);
        let (n, _) = b.recv_from(&mut buf).unwrap();
        assert_eq!((n, buf[0]), (100, 2));
    }

    #[test]
    fn large_or_long_runs_are_cut_at_the_kernel_limits() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut q = GsoQueue::new();
        for _ in 0..3 {
            assert!(q.push(tx.as_raw_fd(), v4(&rx), &[0u8; 1500]));
        }
        assert_eq!(q.run_end(0), 1, "larger than a 1500-byte path: alone");
        q.queued.clear();
        q.used = 0;
        for _ in 0..70 {
            assert!(q.push(tx.as_raw_fd(), v4(&rx), &[0u8; 100]));
        }
        assert_eq!(q.run_end(0), GSO_SEGMENTS);
        assert_eq!(q.run_end(GSO_SEGMENTS), 70);
        q.queued.clear();
        q.used = 0;
        for _ in 0..50 {
            assert!(q.push(tx.as_raw_fd(), v4(&rx), &[0u8; 1400]));
        }
        // 46 * 1400 = 64,400 <= 65,507 < 47 * 1400.
        assert_eq!(q.run_end(0), 46);
    }

    #[test]
    fn with_io_uring_lone_plain_messages_go_through_the_ring() {
        // Whether this kernel and process allow a ring that sends, asked directly.
        let allowed = io_uring::IoUring::new(8).is_ok_and(|r| {
            let mut p = io_uring::Probe::new();
            r.submitter().register_probe(&mut p).is_ok()
                && p.is_supported(io_uring::opcode::SendMsg::CODE)
                && r.params().is_feature_skip_cqe_on_success()
        });
        let q = GsoQueue::with_io_uring();
        assert_eq!(
            q.is_ok(),
            allowed,
            "a ring exactly where io_uring is allowed"
        );
        let Ok(mut q) = q else {
            return;
        };
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let to = v4(&sink);
        let lone: Vec<UdpSocket> = (0..5)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (i, l) in lone.iter().enumerate() {
            assert!(q.push(l.as_raw_fd(), to, &[i as u8; 30]));
        }
        let run = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 {
            assert!(q.push(run.as_raw_fd(), to, &[9; 40]));
        }
        assert_eq!(q.flush(), 0);
        let mut buf = [0u8; 2048];
        let mut got: Vec<Vec<u8>> = (0..8)
            .map(|_| {
                let (n, _) = sink.recv_from(&mut buf).unwrap();
                buf[..n].to_vec()
            })
            .collect();
        got.sort();
        let mut want: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 30]).collect();
        want.extend(std::iter::repeat_n(vec![9u8; 40], 3));
        want.sort();
        assert_eq!(got, want);
        let plain_run = if q.gso { 0 } else { 3 };
        assert_eq!(
            q.ring_messages,
            5 + plain_run,
            "the lone messages through the ring"
        );
    }

    #[test]
    fn a_full_queue_refuses_more() {
        let mut q = GsoQueue::new();
        let to: SocketAddrV4 = "127.0.0.1:9".parse().unwrap();
        for _ in 0..ENTRIES {
            assert!(q.push(0, to, &[0u8; 10]));
        }
        assert!(!q.push(0, to, &[0u8; 10]));
        assert!(q.room(10).is_none());
        q.queued.clear();
        q.used = 0;
        assert!(q.push(0, to, &[0u8; 200 * 1024]));
        assert!(!q.push(0, to, &[0u8; 100 * 1024]), "over the arena");
    }
}
