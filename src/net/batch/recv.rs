//! Receiving: `recvmmsg` into one shared set of buffers per worker, and splitting what UDP GRO
//! coalesced back into datagrams by the segment size the kernel reports.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::{CmsgBuf, RawAddr};
use crate::turn::{PEER_HEADROOM, PEER_TAILROOM};

/// Most datagrams one `recvmmsg` reads: the bound on work per socket per wakeup.
pub(crate) const RX_BATCH: usize = 32;
/// Room for the largest UDP payload.
const MAX_DATAGRAM: usize = 65536;
/// One receive slot: headroom for a Data indication header written in place in front of a
/// peer's datagram, the datagram, and tail room for padding. Rounded up to 64 bytes, which
/// also staggers the slots' starts across cache sets (the stride is 64 more than 16 pages).
const SLOT: usize = (PEER_HEADROOM + MAX_DATAGRAM + PEER_TAILROOM).next_multiple_of(64);

/// One worker's receive buffers: [`RX_BATCH`] slots, each with [`PEER_HEADROOM`] free before
/// the datagram and [`PEER_TAILROOM`] after it, shared by all of the worker's sockets (each
/// batch is handled before the next is read). The slots are 64 KiB each but only the pages
/// datagrams touch become resident.
pub(crate) struct RecvBatch {
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
    pub(crate) fn with_gro(gro: bool) -> RecvBatch {
        let mut b = RecvBatch::new();
        b.gro = gro;
        b
    }

    pub(crate) fn new() -> RecvBatch {
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
    pub(crate) fn recv(&mut self, fd: RawFd) -> usize {
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
    pub(crate) fn datagram(
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
    pub(crate) fn segment_size(&self, i: usize) -> Option<usize> {
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
