//! UDP segmentation offload for the load tool (`--gso`) and for the floor's system-call
//! cost measurement: a burst of equal-length datagrams to one destination leaves in one
//! message with a `UDP_SEGMENT` control message (Linux 4.18), and a socket with `UDP_GRO`
//! (Linux 5.0) may receive such a burst as one buffer plus a `UDP_GRO` control message
//! giving the segment size, to be cut back into datagrams.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Most segments the kernel takes in one GSO message (`UDP_MAX_SEGMENTS` of kernels before
/// 6.x; later ones take 128).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes of one GSO message: its segments plus the UDP and IP headers must fit one
/// IP datagram (65,535 bytes).
pub const MAX_GSO_BYTES: usize = 65_000;
/// A receive buffer that holds any datagram, coalesced or not.
pub const GRO_BUFFER: usize = 65_536;

/// How many datagrams of `len` bytes one GSO message may carry.
pub fn max_segments(len: usize) -> usize {
    (MAX_GSO_BYTES / len.max(1)).clamp(1, MAX_SEGMENTS)
}

/// Whether a send error means the kernel (or the route's device) refuses segmentation
/// offload, so the caller should send plain datagrams instead.
pub fn is_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// Whether this kernel knows `UDP_SEGMENT` on UDP sockets (a `getsockopt` probe).
pub fn supported(fd: &impl AsRawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid out-parameters of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0
}

/// Asks the kernel to hand this socket coalesced datagrams (`UDP_GRO`), each with a
/// `UDP_GRO` control message naming the segment size.
pub fn enable_gro(fd: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` lives across the call and has the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Room for one control message of an `int` (or a `u16`), aligned as `cmsghdr` needs.
#[derive(Clone, Copy, Default)]
#[repr(C, align(8))]
pub struct CmsgBuf([u8; 32]);

/// Bytes of control space one `UDP_SEGMENT` (a `u16`) takes.
fn segment_space() -> usize {
    // SAFETY: a pure size computation.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize }
}

/// Points `hdr` at `buf` holding one `UDP_SEGMENT` control message of `size` bytes.
pub fn set_segment(hdr: &mut libc::msghdr, buf: &mut CmsgBuf, size: u16) {
    buf.0.fill(0);
    hdr.msg_control = buf.0.as_mut_ptr().cast();
    hdr.msg_controllen = segment_space();
    // SAFETY: the control buffer is aligned and holds CMSG_SPACE(2) <= 32 bytes, so the
    // first header and its two data bytes lie inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(hdr);
        if c.is_null() {
            return;
        }
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
    }
}

/// Points `hdr` at `buf` for receiving control messages.
pub fn set_recv_control(hdr: &mut libc::msghdr, buf: &mut CmsgBuf) {
    hdr.msg_control = buf.0.as_mut_ptr().cast();
    hdr.msg_controllen = buf.0.len();
}

/// The segment size of a coalesced datagram, from the `UDP_GRO` control message the
/// kernel filled in (`None`: an ordinary datagram).
pub fn gro_size(hdr: &libc::msghdr) -> Option<usize> {
    if hdr.msg_control.is_null() || hdr.msg_controllen == 0 {
        return None;
    }
    // SAFETY: the kernel wrote `msg_controllen` bytes of well-formed control messages into
    // the buffer `msg_control` points at; CMSG_NXTHDR stays inside them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).ok().filter(|&v| v > 0);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// The datagrams of a received buffer: cut every `gro` bytes when it was coalesced (the
/// last one may be shorter), else the whole buffer.
pub fn segments(data: &[u8], gro: Option<usize>) -> std::slice::Chunks<'_, u8> {
    let size = gro.unwrap_or(data.len()).max(1);
    data.chunks(size)
}

/// A destination for an unconnected socket.
#[derive(Clone, Copy)]
pub struct Dest {
    pub name: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

struct Msg {
    start: usize,
    len: usize,
    /// Segment size for a GSO message; 0 for one plain datagram.
    seg: usize,
    to: Option<Dest>,
}

/// Outgoing messages for one `sendmmsg`: bursts of equal-length datagrams to one
/// destination, each one GSO message (or, with GSO off, one message per datagram).
pub struct GsoBatch {
    buf: Vec<u8>,
    used: usize,
    msgs: Vec<Msg>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    ctrl: Vec<CmsgBuf>,
    hdrs: Vec<libc::mmsghdr>,
    /// Send bursts as GSO messages (turned off for good when the kernel refuses).
    pub gso: bool,
    /// GSO messages that went out (each carrying two or more datagrams).
    pub gso_sends: u64,
}

impl GsoBatch {
    /// Room for `bytes` of datagrams in at most `messages` messages.
    pub fn new(bytes: usize, messages: usize, gso: bool) -> GsoBatch {
        GsoBatch {
            buf: vec![0; bytes],
            used: 0,
            msgs: Vec::with_capacity(messages),
            // SAFETY: all-zero is a valid value of these plain C structs.
            names: vec![unsafe { std::mem::zeroed() }; messages],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                messages
            ],
            ctrl: vec![CmsgBuf::default(); messages],
            // SAFETY: as above.
            hdrs: (0..messages)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            gso,
            gso_sends: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Reserves `count` datagrams of `size` bytes each to `to` (`None`: the socket's
    /// connected address) and returns their bytes, back to back, for the caller to fill;
    /// `None` when the batch has no room left (send it first). At most
    /// [`max_segments`]`(size)` datagrams go in one GSO message: a longer burst takes
    /// several.
    pub fn reserve(&mut self, to: Option<Dest>, size: usize, count: usize) -> Option<&mut [u8]> {
        let bytes = size.checked_mul(count)?;
        if size == 0 || count == 0 || self.used + bytes > self.buf.len() {
            return None;
        }
        let per_msg = if self.gso { max_segments(size) } else { 1 };
        if self.msgs.len() + count.div_ceil(per_msg) > self.hdrs.len() {
            return None;
        }
        let start = self.used;
        let mut at = start;
        let mut left = count;
        while left > 0 {
            let n = left.min(per_msg);
            self.msgs.push(Msg {
                start: at,
                len: n * size,
                seg: if n > 1 { size } else { 0 },
                to,
            });
            at += n * size;
            left -= n;
        }
        self.used += bytes;
        self.buf.get_mut(start..start + bytes)
    }

    /// Turns every GSO message from `from` on into plain datagrams (the kernel refused GSO).
    fn split_from(&mut self, from: usize) {
        let rest: Vec<Msg> = self.msgs.drain(from..).collect();
        for m in rest {
            if m.seg == 0 {
                self.msgs.push(m);
                continue;
            }
            let mut at = m.start;
            while at < m.start + m.len {
                let len = m.seg.min(m.start + m.len - at);
                self.msgs.push(Msg {
                    start: at,
                    len,
                    seg: 0,
                    to: m.to,
                });
                at += len;
            }
        }
    }

    /// Points the headers of messages `from..` at their bytes, names and control data.
    fn prepare(&mut self, from: usize) {
        let base = self.buf.as_mut_ptr();
        for i in from..self.msgs.len().min(self.hdrs.len()) {
            let m = &self.msgs[i];
            // SAFETY: `start + len <= used <= buf.len()`, so the range lies inside `buf`.
            self.iovs[i].iov_base = unsafe { base.add(m.start) }.cast();
            self.iovs[i].iov_len = m.len;
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_flags = 0;
            match m.to {
                Some(d) => {
                    self.names[i] = d.name;
                    h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
                    h.msg_hdr.msg_namelen = d.len;
                }
                None => {
                    h.msg_hdr.msg_name = std::ptr::null_mut();
                    h.msg_hdr.msg_namelen = 0;
                }
            }
            if m.seg > 0 {
                set_segment(&mut h.msg_hdr, &mut self.ctrl[i], m.seg as u16);
            } else {
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
            }
        }
    }

    /// Sends everything queued from `fd` and empties the batch. Returns the datagrams that
    /// went and the error that stopped the rest, if any. A GSO refusal turns GSO off (and
    /// `refused` is called once) and the rest goes as plain datagrams.
    pub fn send(
        &mut self,
        fd: &impl AsRawFd,
        mut refused: impl FnMut(&io::Error),
    ) -> (usize, Option<io::Error>) {
        let fd: RawFd = fd.as_raw_fd();
        let mut done = 0;
        let mut datagrams = 0;
        let mut error = None;
        self.prepare(0);
        // Bounded: each round sends at least one message, or splits the GSO messages
        // (once: GSO is then off), or stops.
        while done < self.msgs.len() {
            let k = self.msgs.len() - done;
            // SAFETY: headers `done..` point at live bytes, names and control buffers.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs[done..].as_mut_ptr(), k as u32, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if self.gso && is_refusal(&e) && self.msgs[done..].iter().any(|m| m.seg > 0) {
                    self.gso = false;
                    refused(&e);
                    self.split_from(done);
                    if self.msgs.len() > self.hdrs.len() {
                        self.msgs.truncate(self.hdrs.len());
                    }
                    self.prepare(done);
                    continue;
                }
                error = Some(e);
                break;
            }
            if r == 0 {
                break;
            }
            for m in &self.msgs[done..done + r as usize] {
                if m.seg > 0 {
                    self.gso_sends += 1;
                    datagrams += m.len.div_ceil(m.seg);
                } else {
                    datagrams += 1;
                }
            }
            done += r as usize;
        }
        self.msgs.clear();
        self.used = 0;
        (datagrams, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_coalesced_buffer_is_cut_at_the_segment_size() {
        let data: Vec<u8> = (0..10).collect();
        let parts: Vec<&[u8]> = segments(&data, Some(4)).collect();
        assert_eq!(parts, [&data[..4], &data[4..8], &data[8..]]);
        assert_eq!(segments(&data, None).count(), 1);
    }

    #[test]
    fn a_long_burst_takes_several_gso_messages() {
        let mut b = GsoBatch::new(1 << 20, 16, true);
        assert!(b.reserve(None, 1200, 60).is_some());
        // 54 segments of 1,200 bytes fit 65,000 bytes: 54 + 6.
        assert_eq!(b.len(), 2);
        let mut plain = GsoBatch::new(1 << 20, 16, false);
        assert!(plain.reserve(None, 200, 4).is_some());
        assert_eq!(plain.len(), 4);
        assert!(
            plain.reserve(None, 200, 13).is_none(),
            "more messages than headers"
        );
    }

    #[test]
    fn a_gso_burst_arrives_as_separate_datagrams_or_as_one_coalesced_buffer() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gro = UdpSocket::bind("127.0.0.1:0").unwrap();
        if !supported(&tx) || enable_gro(&gro).is_err() {
            panic!("this kernel has no UDP GSO/GRO");
        }
        for s in [&plain, &gro] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
        }
        let mut b = GsoBatch::new(4096, 4, true);
        for rx in [&plain, &gro] {
            let to = socket2::SockAddr::from(rx.local_addr().unwrap());
            // SAFETY: SockAddr holds a valid sockaddr of `len` bytes.
            let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            unsafe {
                std::ptr::copy_nonoverlapping(
                    to.as_ptr().cast::<u8>(),
                    (&mut name as *mut libc::sockaddr_storage).cast::<u8>(),
                    to.len() as usize,
                )
            };
            let dest = Dest {
                name,
                len: to.len(),
            };
            let bytes = b.reserve(Some(dest), 100, 3).unwrap();
            for (i, seg) in bytes.chunks_mut(100).enumerate() {
                seg.fill(i as u8);
            }
        }
        let (sent, err) = b.send(&tx, |e| panic!("GSO refused: {e}"));
        assert!(err.is_none(), "{err:?}");
        assert_eq!((sent, b.gso_sends), (6, 2));
        let mut buf = [0u8; GRO_BUFFER];
        for i in 0..3u8 {
            let n = plain.recv(&mut buf).unwrap();
            assert_eq!(n, 100);
            assert!(buf[..n].iter().all(|&x| x == i));
        }
        // One read with room for control messages: the three segments in one buffer.
        let mut ctrl = CmsgBuf::default();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: all-zero is a valid msghdr; the pointers below outlive the call.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        set_recv_control(&mut hdr, &mut ctrl);
        // SAFETY: as above.
        let n = unsafe { libc::recvmsg(gro.as_raw_fd(), &mut hdr, 0) };
        assert_eq!(n, 300);
        assert_eq!(gro_size(&hdr), Some(100));
        let parts: Vec<&[u8]> = segments(&buf[..300], gro_size(&hdr)).collect();
        assert_eq!(parts.len(), 3);
        for (i, p) in parts.iter().enumerate() {
            assert!(p.iter().all(|&x| x == i as u8));
        }
    }
}
