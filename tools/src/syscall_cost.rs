//! `turnd-floor --syscall-cost` and `examples/uring_cost.rs`: the kernel's own CPU cost per
//! UDP datagram on loopback, with no server, no TURN and no wakeups. One thread sends 200-byte datagrams with `sendmmsg`, round-robin
//! to N loopback sockets, and reads each socket back with `recvmmsg` right after; the
//! process CPU time (`getrusage`) over the datagrams moved is the floor under any relay
//! that sends and receives each packet once per socket:
//!
//! - (a) one socket, 32 datagrams per call: the best case of batching;
//! - (b) 100 sockets, one datagram per socket per round: one flow sending one packet at a
//!   time, the shape of TURN traffic, where every receive call returns one datagram;
//! - (c) 100 sockets, bursts of 4 and of 8 datagrams per socket per round, each burst one
//!   `UDP_SEGMENT` message (GSO), read back as separate datagrams, and with `UDP_GRO` on
//!   the receivers as one coalesced buffer per burst.

use std::io::{self, ErrorKind};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::gso::{self, Dest, GRO_BUFFER, GsoBatch};
use crate::sys::Mmsg;

/// Payload bytes per datagram.
pub const SIZE: usize = 200;
/// Messages per `sendmmsg`, and slots per `recvmmsg`.
const BATCH: usize = 32;
/// Wall-clock bound of one case, whatever the machine does.
const CASE_LIMIT: Duration = Duration::from_secs(60);

/// One measurement: `sockets` receivers, `segments` datagrams per message (GSO when more
/// than one), `gro` on the receivers.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub name: &'static str,
    pub sockets: usize,
    pub segments: usize,
    pub gro: bool,
}

pub const CASES: [Case; 6] = [
    Case {
        name: "a",
        sockets: 1,
        segments: 1,
        gro: false,
    },
    Case {
        name: "b",
        sockets: 100,
        segments: 1,
        gro: false,
    },
    Case {
        name: "c4",
        sockets: 100,
        segments: 4,
        gro: false,
    },
    Case {
        name: "c8",
        sockets: 100,
        segments: 8,
        gro: false,
    },
    Case {
        name: "c4gro",
        sockets: 100,
        segments: 4,
        gro: true,
    },
    Case {
        name: "c8gro",
        sockets: 100,
        segments: 8,
        gro: true,
    },
];

/// What one case measured.
#[derive(Debug)]
pub struct Outcome {
    pub sent: u64,
    pub received: u64,
    /// `UDP_SEGMENT` messages sent (0 if the kernel refused GSO and plain sends took over).
    pub gso_sends: u64,
    pub cpu_s: f64,
    pub wall_s: f64,
}

impl Outcome {
    /// The result line: microseconds of process CPU (and of wall time) per datagram sent
    /// and received.
    pub fn line(&self, c: &Case) -> String {
        let per = |s: f64| {
            if self.sent > 0 {
                s * 1e6 / self.sent as f64
            } else {
                0.0
            }
        };
        format!(
            "syscall-cost case={} sockets={} segments={} gro={} size={SIZE} sent={} received={} \
             gso_sends={} cpu_us_per_datagram={:.3} wall_us_per_datagram={:.3}",
            c.name,
            c.sockets,
            c.segments,
            u8::from(c.gro),
            self.sent,
            self.received,
            self.gso_sends,
            per(self.cpu_s),
            per(self.wall_s),
        )
    }
}

/// User plus system CPU seconds of this process (every thread).
pub fn process_cpu() -> f64 {
    // SAFETY: all-zero is a valid rusage; getrusage fills it in.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a valid out-parameter.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) } != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(r.ru_utime) + t(r.ru_stime)
}

fn dest(sock: &UdpSocket) -> io::Result<Dest> {
    let addr = socket2::SockAddr::from(sock.local_addr()?);
    // SAFETY: all-zero is a valid sockaddr_storage; SockAddr holds `len` valid bytes,
    // at most the size of a sockaddr_storage.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = (addr.len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    unsafe {
        std::ptr::copy_nonoverlapping(
            addr.as_ptr().cast::<u8>(),
            (&mut name as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        )
    };
    Ok(Dest {
        name,
        len: len as libc::socklen_t,
    })
}

/// Runs one case until `count` datagrams are sent (or [`CASE_LIMIT`] passes). Call it
/// from a process with no other busy thread: the CPU time is the whole process's.
pub fn run(case: &Case, count: u64) -> io::Result<Outcome> {
    let mut rx_socks = Vec::with_capacity(case.sockets);
    let mut dests = Vec::with_capacity(case.sockets);
    for _ in 0..case.sockets.max(1) {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.set_nonblocking(true)?;
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
        if case.gro {
            gso::enable_gro(&s)?;
        }
        dests.push(dest(&s)?);
        rx_socks.push(s);
    }
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    tx.set_nonblocking(true)?;
    let _ = socket2::SockRef::from(&tx).set_send_buffer_size(4 << 20);
    let segments = case.segments.clamp(1, gso::max_segments(SIZE));
    // Room for the plain fallback too: one message per datagram.
    let mut batch = GsoBatch::new(BATCH * segments * SIZE, BATCH * segments, segments > 1);
    let mut rx = if case.gro {
        Mmsg::with_gro(BATCH, GRO_BUFFER)
    } else {
        Mmsg::new(BATCH, 2048)
    };
    let mut refused = false;
    let (mut sent, mut received) = (0u64, 0u64);
    let mut next = 0usize;
    let n = rx_socks.len();
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let deadline = t0 + CASE_LIMIT;
    // Bounded by `count` and by the deadline.
    while sent < count && Instant::now() < deadline {
        let first = next;
        let messages = BATCH;
        for _ in 0..messages {
            let d = dests[next];
            next = (next + 1) % n;
            if let Some(bytes) = batch.reserve(Some(d), SIZE, segments) {
                bytes.fill(0x5A);
            }
        }
        let (went, err) = batch.send(&tx, |_| refused = true);
        sent += went as u64;
        if went == 0 && err.is_some() {
            // Nothing goes (a full buffer would have drained by now): stop rather than spin.
            break;
        }
        // Read back every socket this call wrote to.
        for j in 0..messages.min(n) {
            let Some(s) = rx_socks.get((first + j) % n) else {
                continue;
            };
            // Bounded: each batch read empties up to 32 slots of a finite queue.
            loop {
                match rx.recv(s) {
                    Ok(k) => {
                        for i in 0..k {
                            received +=
                                gso::segments(rx.received(i), rx.gro_size(i)).count() as u64;
                        }
                        if k < rx.slots() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let cpu_s = process_cpu() - cpu0;
    let wall_s = t0.elapsed().as_secs_f64();
    if refused {
        eprintln!(
            "turnd-floor: case {}: the kernel refused UDP GSO, plain datagrams sent",
            case.name
        );
    }
    Ok(Outcome {
        sent,
        received,
        gso_sends: batch.gso_sends,
        cpu_s,
        wall_s,
    })
}
