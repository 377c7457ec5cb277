//! The data side of the load: paced senders, receivers on epoll, and the echo peers. Every
//! loop ends by the plan's deadlines, whatever the server does.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use turnd::stun::{Class, Message, attr, channel_data, method};

use crate::hist::Histogram;
use crate::sys::{Epoll, Mmsg, event_buffer};

/// Marks the tool's packets: payload = send time (ns, 8 bytes), this, flow id (4 bytes), fill.
pub const MAGIC: [u8; 4] = *b"TLD1";
/// Smallest payload that holds the header above.
pub const MIN_PAYLOAD: usize = 16;
/// Most packets one thread sends between two looks at its sockets.
const MAX_BURST: u64 = 256;
/// Packets per burst when running flat out.
const FLAT_BURST: u64 = 64;
/// Datagrams per recvmmsg on a client socket.
const RECV_BATCH: usize = 32;
/// Most datagrams of one allocation per sendmmsg.
const SEND_BATCH: usize = 16;

/// One allocation's traffic: its socket (non-blocking, connected to the server) and the
/// datagram it sends (ChannelData or a Send indication) with the payload at `payload_at`.
pub struct Flow<'a> {
    pub sock: &'a UdpSocket,
    pub packet: Vec<u8>,
    pub payload_at: usize,
}

/// When to send and for how long to wait for the stragglers.
pub struct Plan {
    pub epoch: Instant,
    pub start: Instant,
    pub send_until: Instant,
    pub drain_until: Instant,
    /// Packets per second for one thread; 0 for flat out.
    pub rate_per_thread: f64,
    pub threads: usize,
}

/// Counters every thread adds to, read to end the drain early.
#[derive(Default)]
pub struct Shared {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub senders_done: AtomicUsize,
    pub peer_received: AtomicU64,
}

pub struct ThreadResult {
    pub sent: u64,
    pub received: u64,
    pub send_errors: u64,
    /// Stream transports: packets that did not fit in their connection's bounded send
    /// queue, so were not sent (not offered).
    pub unsent: u64,
    /// Stream transports: connections that failed during the traffic.
    pub broken: u64,
    pub hist: Histogram,
}

/// The payload's send time if the datagram is one of ours: ChannelData or a Data indication.
pub fn payload_time(datagram: &[u8]) -> Option<u64> {
    let data = match datagram.first() {
        Some(&b) if channel_data::is_channel_data(b) => channel_data::parse(datagram)?.1,
        Some(_) => {
            let msg = Message::parse(datagram).ok()?;
            if msg.method() != method::DATA || msg.class() != Class::Indication {
                return None;
            }
            msg.get(attr::DATA)?
        }
        None => return None,
    };
    let head = data.get(..MIN_PAYLOAD)?;
    if head[8..12] != MAGIC {
        return None;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&head[..8]);
    Some(u64::from_be_bytes(ts))
}

pub fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos().min(u64::MAX as u128) as u64
}

/// Sends this thread's share of the load round-robin over its flows, receives what comes
/// back on any of them, and records the latency of each packet.
pub fn run_thread(mut flows: Vec<Flow<'_>>, plan: &Plan, shared: &Shared) -> ThreadResult {
    let mut result = ThreadResult {
        sent: 0,
        received: 0,
        send_errors: 0,
        unsent: 0,
        broken: 0,
        hist: Histogram::new(),
    };
    let ep = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("turnd-load: epoll: {e}");
            shared.senders_done.fetch_add(1, Ordering::SeqCst);
            return result;
        }
    };
    for (i, f) in flows.iter().enumerate() {
        if let Err(e) = ep.add(f.sock, i as u64) {
            eprintln!("turnd-load: epoll_ctl: {e}");
        }
    }
    let mut events = event_buffer(256);
    let mut ready = Vec::with_capacity(256);
    let mut rx = Mmsg::new(RECV_BATCH, 2048);
    let mut tx = Mmsg::new(SEND_BATCH, 1500);
    let mut next = 0usize;
    let mut flushed = 0u64;
    let mut done_sending = flows.is_empty();
    if done_sending {
        shared.senders_done.fetch_add(1, Ordering::SeqCst);
    }
    loop {
        let now = Instant::now();
        if now >= plan.drain_until {
            break;
        }
        let mut behind = false;
        if now < plan.start {
            std::thread::sleep(plan.start - now);
            continue;
        }
        if !done_sending && now < plan.send_until {
            let budget = if plan.rate_per_thread > 0.0 {
                let target = ((now - plan.start).as_secs_f64() * plan.rate_per_thread) as u64;
                let owed = target.saturating_sub(result.sent);
                behind = owed > MAX_BURST;
                owed.min(MAX_BURST)
            } else {
                behind = true;
                FLAT_BURST
            };
            let count = flows.len().max(1);
            // Consecutive packets of one allocation leave in one sendmmsg: a few per
            // allocation when the budget exceeds one packet each.
            let per_flow = (budget as usize).div_ceil(count).clamp(1, SEND_BATCH);
            let mut left = budget as usize;
            // Bounded: every round sends at least one packet or stops.
            while left > 0 {
                let Some(f) = flows.get_mut(next) else { break };
                next = (next + 1) % count;
                let k = per_flow.min(left);
                let len = f.packet.len().min(1500);
                for i in 0..k {
                    let slot = tx.slot(i);
                    slot[..len].copy_from_slice(&f.packet[..len]);
                    let ts = nanos_since(plan.epoch).to_be_bytes();
                    if let Some(t) = slot.get_mut(f.payload_at..f.payload_at + 8) {
                        t.copy_from_slice(&ts);
                    }
                }
                match tx.send(f.sock, k, |_| len) {
                    Ok(n) if n > 0 => {
                        result.sent += n as u64;
                        left -= n;
                        if n < k {
                            break;
                        }
                    }
                    _ => {
                        // Socket buffer full (or an ICMP error queued): count it, try later.
                        result.send_errors += 1;
                        break;
                    }
                }
            }
        } else if !done_sending {
            done_sending = true;
            shared.sent.fetch_add(result.sent, Ordering::SeqCst);
            shared.senders_done.fetch_add(1, Ordering::SeqCst);
        }
        let timeout = if behind {
            Duration::ZERO
        } else {
            Duration::from_millis(1)
        };
        ep.wait(&mut events, timeout, &mut ready);
        for &token in &ready {
            let Some(f) = flows.get(token as usize) else {
                continue;
            };
            // Bounded: at most four batches per socket per wakeup.
            for _ in 0..4 {
                match rx.recv(f.sock) {
                    Ok(n) => {
                        let now = nanos_since(plan.epoch);
                        for i in 0..n {
                            if let Some(sent_at) = payload_time(rx.received(i)) {
                                result.received += 1;
                                result.hist.record(now.saturating_sub(sent_at));
                            }
                        }
                        if n < rx.slots() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // ECONNREFUSED from an ICMP error, say: the next read goes on.
                    Err(_) => {}
                }
            }
        }
        if result.received > flushed {
            shared
                .received
                .fetch_add(result.received - flushed, Ordering::SeqCst);
            flushed = result.received;
        }
        if done_sending
            && shared.senders_done.load(Ordering::SeqCst) >= plan.threads
            && shared.received.load(Ordering::SeqCst) >= shared.sent.load(Ordering::SeqCst)
        {
            break;
        }
    }
    if !done_sending {
        shared.sent.fetch_add(result.sent, Ordering::SeqCst);
        shared.senders_done.fetch_add(1, Ordering::SeqCst);
    }
    result
}

/// Datagrams moved per echo system call.
const ECHO_BATCH: usize = 64;

/// An echo peer: sends every datagram back to where it came from (a relayed address on
/// loopback), until the end of the drain. Batched with recvmmsg/sendmmsg so the echo costs
/// the tool two system calls per batch rather than two per packet.
pub fn echo(sock: UdpSocket, plan: &Plan, shared: &Shared) {
    use std::os::fd::AsRawFd;
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; 2048]; ECHO_BATCH];
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; ECHO_BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; ECHO_BATCH];
    let mut count = 0u64;
    while Instant::now() < plan.drain_until {
        for i in 0..ECHO_BATCH {
            iovs[i].iov_len = 2048;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the lengths given; MSG_WAITFORONE
        // blocks (up to the socket's read timeout) for the first datagram only.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                ECHO_BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let n = n as usize;
        count += n as u64;
        let mut all_loopback = true;
        for i in 0..n {
            iovs[i].iov_len = hdrs[i].msg_len as usize;
            all_loopback &= is_loopback(&names[i]);
        }
        if !all_loopback {
            // Not ours: echo only what came from loopback, one by one.
            for i in 0..n {
                if is_loopback(&names[i]) {
                    // SAFETY: a header filled in by recvmmsg above.
                    unsafe { libc::sendmsg(fd, &hdrs[i].msg_hdr, 0) };
                }
            }
            continue;
        }
        let mut done = 0;
        // Bounded: each round sends at least one datagram or gives up on the batch.
        while done < n {
            // SAFETY: the first `n` headers hold the received datagrams and their sources.
            let sent =
                unsafe { libc::sendmmsg(fd, hdrs[done..].as_mut_ptr(), (n - done) as u32, 0) };
            if sent <= 0 {
                break;
            }
            done += sent as usize;
        }
        if count >= 4096 {
            shared.peer_received.fetch_add(count, Ordering::SeqCst);
            count = 0;
        }
    }
    shared.peer_received.fetch_add(count, Ordering::SeqCst);
}

/// Whether a source address filled in by the kernel is on loopback.
fn is_loopback(name: &libc::sockaddr_storage) -> bool {
    match name.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            u32::from_be(sin.sin_addr.s_addr) >> 24 == 127
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).is_loopback()
        }
        _ => false,
    }
}
