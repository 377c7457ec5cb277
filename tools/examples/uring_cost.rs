//! Does io_uring lower the kernel's cost per relayed datagram? The kernel floor of
//! `turnd-floor --syscall-cost` (case b) measured with io_uring in place of the system
//! calls a relay makes, in one process on loopback, so that the three lines compare.
//!
//! One thread sends 200-byte datagrams round-robin from one socket to 100 loopback
//! sockets, 32 per round, and reads every one back before the next round: each receiving
//! socket gets one datagram at a time, the shape of TURN traffic with bursts of 1. The
//! process CPU (`getrusage`, all threads) over the datagrams moved is printed per datagram
//! sent and received:
//!
//! - `syscalls`: `sendmmsg` of the round, then `recvmmsg` on each socket: the floor's
//!   case b itself (`turnd_tools::syscall_cost`), and what turnd does;
//! - `uring_recv`: `sendmmsg` as above; every socket has one multishot `RECVMSG` armed
//!   with buffers from a provided-buffer ring, so a datagram costs no system call on the
//!   receiving side, and one `io_uring_enter` reaps the round;
//! - `uring_both`: the sends as 32 `SENDMSG` entries too, submitted with the reaping;
//! - `spread_syscalls`: every datagram of a round sent from a different one of the 100
//!   sockets, one `sendmmsg` each, as turnd's relay sockets send to peers; `recvmmsg` on
//!   each receiving socket;
//! - `spread_uring`: those sends as 32 `SENDMSG` entries, with the multishot receive.
//!
//! Run: `cargo run --release -p turnd-tools --example uring_cost [datagrams per case]` (default
//! 1,000,000; each case is also bounded by 60 s of wall time). Needs Linux 6.0 or later
//! with io_uring allowed (`kernel.io_uring_disabled` = 0); BENCHMARKS.md has the numbers.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, types};

// The floor's own case b (`turnd-floor --syscall-cost`), from the tools' library.
use turnd_tools::sys;
use turnd_tools::syscall_cost::{self, SIZE, process_cpu};

const SOCKETS: usize = 100;
const ROUND: usize = 32;
const CASE_LIMIT: Duration = Duration::from_secs(60);
/// Provided buffers (a power of two) and the room of each.
const BUFFERS: usize = 1024;
const BUFFER_LEN: usize = 512;
const GROUP: u16 = 1;
/// Tag in `user_data` of send completions (receive completions carry the socket index).
const SEND_TAG: u64 = 1 << 32;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Case {
    /// The floor's case b: every datagram from one socket.
    Syscalls,
    UringRecv,
    UringBoth,
    /// Every datagram from a different socket, one `sendmmsg` each (turnd's relay sockets
    /// sending to peers).
    SpreadSyscalls,
    /// The same sends as queue entries, with the multishot receive.
    SpreadUring,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Syscalls => "syscalls",
            Case::UringRecv => "uring_recv",
            Case::UringBoth => "uring_both",
            Case::SpreadSyscalls => "spread_syscalls",
            Case::SpreadUring => "spread_uring",
        }
    }
}

struct Rig {
    rx: Vec<UdpSocket>,
    dests: Vec<libc::sockaddr_in>,
    tx: UdpSocket,
    payload: [u8; SIZE],
}

fn sockaddr(a: SocketAddr) -> io::Result<libc::sockaddr_in> {
    let SocketAddr::V4(a) = a else {
        return Err(io::Error::other("IPv4 only"));
    };
    Ok(libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    })
}

impl Rig {
    /// The socket datagram `k` of the spread cases leaves from: the one after its
    /// destination, so that every datagram of a round leaves from a different socket.
    fn spread_source(&self, k: usize) -> &UdpSocket {
        &self.rx[(k + 1) % SOCKETS]
    }

    fn new() -> io::Result<Rig> {
        let mut rx = Vec::with_capacity(SOCKETS);
        let mut dests = Vec::with_capacity(SOCKETS);
        for _ in 0..SOCKETS {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            // As the floor's sockets.
            let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
            dests.push(sockaddr(s.local_addr()?)?);
            rx.push(s);
        }
        let tx = UdpSocket::bind("127.0.0.1:0")?;
        tx.set_nonblocking(true)?;
        let _ = socket2::SockRef::from(&tx).set_send_buffer_size(4 << 20);
        Ok(Rig {
            rx,
            dests,
            tx,
            payload: [0x5A; SIZE],
        })
    }
}

/// One message header per datagram of a round, all pointing at the payload; `point`
/// aims them at the round's destinations.
struct SendRound {
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl SendRound {
    fn new(payload: &[u8; SIZE]) -> SendRound {
        let iov = vec![
            libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: SIZE,
            };
            ROUND
        ];
        // SAFETY: all-zero is a valid mmsghdr.
        let hdrs = vec![unsafe { std::mem::zeroed::<libc::mmsghdr>() }; ROUND];
        SendRound { iov, hdrs }
    }

    /// Aims message `i` at `dest` (which must outlive the send).
    fn point(&mut self, i: usize, dest: &libc::sockaddr_in) {
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_iov = &mut self.iov[i];
        h.msg_iovlen = 1;
        h.msg_name = (dest as *const libc::sockaddr_in).cast_mut().cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    }

    /// Aims the round at the next `ROUND` destinations from `next` on (advancing it);
    /// returns the first destination's index.
    fn aim(&mut self, rig: &Rig, next: &mut usize) -> usize {
        let first = *next;
        for i in 0..ROUND {
            self.point(i, &rig.dests[*next]);
            *next = (*next + 1) % SOCKETS;
        }
        first
    }

    fn sendmmsg(&mut self, tx: &UdpSocket) -> u64 {
        // SAFETY: every header points at the payload and a live destination.
        let r = unsafe { libc::sendmmsg(tx.as_raw_fd(), self.hdrs.as_mut_ptr(), ROUND as u32, 0) };
        r.max(0) as u64
    }
}

/// The provided-buffer ring: `BUFFERS` entries of 16 bytes (address, length, buffer id;
/// the ring's tail overlays the last field of entry 0) over one block of buffers.
struct BufRing {
    ring: *mut u8,
    ring_len: usize,
    data: Vec<u8>,
    tail: u16,
}

impl BufRing {
    fn new() -> io::Result<BufRing> {
        let ring_len = BUFFERS * 16;
        // SAFETY: an anonymous private mapping; checked below.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut r = BufRing {
            ring: ring.cast(),
            ring_len,
            data: vec![0; BUFFERS * BUFFER_LEN],
            tail: 0,
        };
        for id in 0..BUFFERS as u16 {
            r.give(id);
        }
        r.publish();
        Ok(r)
    }

    /// Hands buffer `id` back to the kernel (visible after [`BufRing::publish`]).
    fn give(&mut self, id: u16) {
        let slot = usize::from(self.tail) & (BUFFERS - 1);
        let addr = self.data[usize::from(id) * BUFFER_LEN..].as_mut_ptr() as u64;
        // SAFETY: slot < BUFFERS, so the 16-byte entry lies inside the mapping; the tail
        // field of entry 0 (offset 14) is left alone.
        unsafe {
            let e = self.ring.add(slot * 16);
            e.cast::<u64>().write(addr);
            e.add(8).cast::<u32>().write(BUFFER_LEN as u32);
            e.add(12).cast::<u16>().write(id);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: offset 14 is the ring's 2-byte-aligned tail, shared with the kernel.
        let tail = unsafe { &*self.ring.add(14).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    fn buffer(&self, id: u16) -> &[u8] {
        let start = usize::from(id) * BUFFER_LEN;
        &self.data[start..start + BUFFER_LEN]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the ring that used it is dropped first.
        unsafe { libc::munmap(self.ring.cast(), self.ring_len) };
    }
}

fn arm_recv(ring: &mut IoUring, rig: &Rig, i: usize, template: &libc::msghdr) -> io::Result<()> {
    let e = opcode::RecvMsgMulti::new(types::Fd(rig.rx[i].as_raw_fd()), template, GROUP)
        .build()
        .user_data(i as u64);
    // SAFETY: the template outlives the ring (both live for the whole case).
    unsafe { ring.submission().push(&e) }.map_err(|_| io::Error::other("submission queue full"))
}

/// Runs one case for `count` datagrams; returns (sent, received, CPU seconds).
fn run(case: Case, count: u64) -> io::Result<(u64, u64, f64)> {
    if case == Case::Syscalls {
        let b = syscall_cost::CASES
            .iter()
            .find(|c| c.name == "b")
            .ok_or_else(|| io::Error::other("the floor has no case b"))?;
        let o = syscall_cost::run(b, count)?;
        return Ok((o.sent, o.received, o.cpu_s));
    }
    let rig = Rig::new()?;
    let mut round = SendRound::new(&rig.payload);
    let (mut sent, mut received) = (0u64, 0u64);
    let mut next = 0usize;
    let deadline = Instant::now() + CASE_LIMIT;
    if case == Case::SpreadSyscalls {
        let mut rx = sys::Mmsg::new(ROUND, 2048);
        let cpu0 = process_cpu();
        while sent < count && Instant::now() < deadline {
            let first = round.aim(&rig, &mut next);
            for i in 0..ROUND {
                let from = rig.spread_source(first + i).as_raw_fd();
                // SAFETY: the header points at the payload and a live destination.
                let r = unsafe { libc::sendmmsg(from, &mut round.hdrs[i], 1, 0) };
                sent += r.max(0) as u64;
            }
            for j in 0..ROUND {
                // Bounded: one datagram per socket per round is queued.
                loop {
                    match rx.recv(&rig.rx[(first + j) % SOCKETS]) {
                        Ok(k) => {
                            received += k as u64;
                            if k < rx.slots() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
        }
        return Ok((sent, received, process_cpu() - cpu0));
    }
    // Declared before the ring, so that it is dropped after it.
    let mut bufs = BufRing::new()?;
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(1024)?;
    // SAFETY: the ring memory and buffers outlive the ring (see above).
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.ring as u64, BUFFERS as u16, GROUP, 0)?
    };
    // The multishot receive's template: room for an IPv4 source address, no control data.
    // SAFETY: all-zero is a valid msghdr.
    let mut template: libc::msghdr = unsafe { std::mem::zeroed() };
    template.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    for i in 0..SOCKETS {
        arm_recv(&mut ring, &rig, i, &template)?;
    }
    let mut rearm = Vec::with_capacity(SOCKETS);
    let cpu0 = process_cpu();
    while sent < count && Instant::now() < deadline {
        let first = round.aim(&rig, &mut next);
        let mut sends = 0;
        if case != Case::UringRecv {
            for i in 0..ROUND {
                let from = if case == Case::SpreadUring {
                    rig.spread_source(first + i).as_raw_fd()
                } else {
                    rig.tx.as_raw_fd()
                };
                let e = opcode::SendMsg::new(types::Fd(from), &round.hdrs[i].msg_hdr)
                    .build()
                    .user_data(SEND_TAG | i as u64);
                // SAFETY: the header, payload and destination outlive the completion,
                // which is reaped in this round.
                unsafe { ring.submission().push(&e) }
                    .map_err(|_| io::Error::other("submission queue full"))?;
            }
            sends = ROUND;
        } else {
            sent += round.sendmmsg(&rig.tx);
        }
        let mut got = 0;
        let round_deadline = Instant::now() + Duration::from_secs(1);
        // Bounded: every datagram of the round arrives on loopback, or a second passes.
        while (sends > 0 || got < ROUND) && Instant::now() < round_deadline {
            ring.submit_and_wait(1)?;
            for cqe in ring.completion() {
                let tag = cqe.user_data();
                if tag & SEND_TAG != 0 {
                    sends -= 1;
                    sent += u64::from(cqe.result() > 0);
                    continue;
                }
                if let Some(id) = cqueue::buffer_select(cqe.flags()) {
                    let len = usize::try_from(cqe.result()).unwrap_or(0);
                    let out = types::RecvMsgOut::parse(&bufs.buffer(id)[..len], &template);
                    if out.is_ok_and(|o| o.payload_data().len() == SIZE) {
                        received += 1;
                        got += 1;
                    }
                    bufs.give(id);
                }
                if !cqueue::more(cqe.flags()) {
                    rearm.push(tag as usize);
                }
            }
            bufs.publish();
            for i in rearm.drain(..) {
                arm_recv(&mut ring, &rig, i, &template)?;
            }
        }
    }
    Ok((sent, received, process_cpu() - cpu0))
}

fn main() {
    let count: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "uring-cost: {count} datagrams of {SIZE} bytes per case, {SOCKETS} sockets, one \
         datagram per socket per round of {ROUND}; process CPU per datagram sent and received"
    );
    for case in [
        Case::Syscalls,
        Case::UringRecv,
        Case::UringBoth,
        Case::SpreadSyscalls,
        Case::SpreadUring,
    ] {
        match run(case, count) {
            Ok((sent, received, cpu)) => println!(
                "uring-cost case={} sent={sent} received={received} \
                 cpu_us_per_datagram={:.3}",
                case.name(),
                if sent > 0 {
                    cpu * 1e6 / sent as f64
                } else {
                    0.0
                }
            ),
            Err(e) => {
                eprintln!("uring-cost: case {}: {e}", case.name());
                std::process::exit(1);
            }
        }
    }
}
