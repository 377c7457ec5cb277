//! The data side of the load: paced senders, receivers on epoll, and the echo peers. Every
//! loop ends by the plan's deadlines, whatever the server does.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use turnd::stun::{Class, Message, attr, channel_data, method};

use turnd_tools::gso::{self, Dest, GRO_BUFFER, GsoBatch};
use turnd_tools::sys::{Epoll, Mmsg, event_buffer};

use crate::hist::Histogram;

/// Marks the tool's packets: payload = send time (ns, 8 bytes), this, flow id (4 bytes), fill.
pub const MAGIC: [u8; 4] = *b"TLD1";
/// Smallest payload that holds the header above.
pub const MIN_PAYLOAD: usize = 16;
/// `--rtp`: the payload starts with an RTP fixed header (RFC 3550 §5.1; version 2, payload
/// type 111, the flow's SSRC, a sequence number counting the flow's packets and a 48 kHz
/// timestamp from the send time), and the tool's header follows it.
pub const RTP_HEADER: usize = 12;
/// Smallest `--rtp` payload.
pub const MIN_RTP_PAYLOAD: usize = RTP_HEADER + MIN_PAYLOAD;
/// Most packets one thread sends between two looks at its sockets.
const MAX_BURST: u64 = 256;
/// Packets per burst when running flat out.
const FLAT_BURST: u64 = 64;
/// Datagrams per recvmmsg on a client socket.
const RECV_BATCH: usize = 32;
/// Most datagrams of one allocation per sendmmsg (unless a burst is longer).
const SEND_BATCH: usize = 16;
/// Longest burst `--burst` takes.
pub const MAX_BURST_LEN: usize = 64;
/// Largest datagram the tool sends (payload at most 1,200 bytes plus a Send indication's
/// header).
const MAX_DATAGRAM: usize = 1500;

/// One allocation's traffic: its socket (non-blocking, connected to the server) and the
/// datagram it sends (ChannelData or a Send indication) with the payload at `payload_at`.
pub struct Flow<'a> {
    pub sock: &'a UdpSocket,
    pub packet: Vec<u8>,
    pub payload_at: usize,
    /// The payload is RTP-shaped (`--rtp`): each copy gets the next sequence number.
    pub rtp: bool,
    pub seq: std::cell::Cell<u16>,
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
    /// Packets each allocation sends back to back (`--burst`), 1 to [`MAX_BURST_LEN`].
    pub burst: usize,
    /// UDP: send each burst as one GSO message, and receive with `UDP_GRO` (`--gso`).
    pub gso: bool,
}

/// Counters every thread adds to, read to end the drain early.
#[derive(Default)]
pub struct Shared {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub senders_done: AtomicUsize,
    pub peer_received: AtomicU64,
    /// GSO messages the echo peers sent.
    pub peer_gso_sends: AtomicU64,
    /// The kernel refused a GSO send: the run went on with plain sends.
    pub gso_refused: AtomicBool,
}

impl Shared {
    /// This thread has sent all it will (`sent` datagrams; 0 when it could not start).
    pub fn finish_sending(&self, sent: u64) {
        self.sent.fetch_add(sent, Ordering::SeqCst);
        self.senders_done.fetch_add(1, Ordering::SeqCst);
    }

    /// Adds what this thread received since the last call (`*flushed` of `received`).
    pub fn publish_received(&self, flushed: &mut u64, received: u64) {
        if received > *flushed {
            self.received
                .fetch_add(received - *flushed, Ordering::SeqCst);
            *flushed = received;
        }
    }

    /// Every one of `threads` senders is done and everything sent has come back.
    pub fn all_back(&self, threads: usize) -> bool {
        self.senders_done.load(Ordering::SeqCst) >= threads
            && self.received.load(Ordering::SeqCst) >= self.sent.load(Ordering::SeqCst)
    }

    /// Notes that the kernel refused GSO, saying so on stderr once per run.
    pub fn gso_refused(&self, e: &std::io::Error) {
        if !self.gso_refused.swap(true, Ordering::SeqCst) {
            eprintln!("turnd-load: the kernel refused UDP GSO ({e}): sending plain datagrams");
        }
    }
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
    /// Whole bursts sent: `--burst` packets of one allocation back to back.
    pub bursts: u64,
    /// GSO messages sent (each two or more datagrams).
    pub gso_sends: u64,
    pub hist: Histogram,
}

impl ThreadResult {
    pub fn new() -> ThreadResult {
        ThreadResult {
            sent: 0,
            received: 0,
            send_errors: 0,
            unsent: 0,
            broken: 0,
            bursts: 0,
            gso_sends: 0,
            hist: Histogram::new(),
        }
    }
}

/// Spreads each round's budget of packets over the flows round-robin, in whole bursts: a
/// flow gets a multiple of `burst` packets in a row, at least one burst, more when the
/// budget allows (up to `max_per_flow`). What is left of the budget below one burst is not
/// sent this round; the caller's pacing owes it to the next round, so at low rates a flow
/// still sends its burst in one go, only less often.
pub struct Rounds {
    next: usize,
    burst: usize,
    max_per_flow: usize,
    /// Visit each flow at most once per round (the stream transports, whose bounded
    /// queues should not take a whole budget at once).
    one_pass: bool,
}

impl Rounds {
    pub fn new(burst: usize, max_per_flow: usize, one_pass: bool) -> Rounds {
        let burst = burst.clamp(1, MAX_BURST_LEN);
        Rounds {
            next: 0,
            burst,
            max_per_flow: max_per_flow.max(burst),
            one_pass,
        }
    }

    pub fn burst(&self) -> usize {
        self.burst
    }

    /// Hands `send(flow, k)` the round's packets, `k` a multiple of the burst. `send`
    /// returns how many went (`None`: this flow is out of the run, skip it). Stops at the
    /// first short send. Returns the packets sent.
    pub fn round(
        &mut self,
        budget: usize,
        flows: usize,
        mut send: impl FnMut(usize, usize) -> Option<usize>,
    ) -> usize {
        if flows == 0 {
            return 0;
        }
        let bursts = budget / self.burst;
        let per_flow = bursts
            .div_ceil(flows)
            .clamp(1, (self.max_per_flow / self.burst).max(1))
            * self.burst;
        let mut left = bursts * self.burst;
        let (mut sent, mut visited, mut skipped) = (0, 0, 0);
        // Bounded: every round takes `k >= 1` off `left`, or skips a flow (at most `flows`
        // in a row), or stops; one pass at most with `one_pass`.
        while left > 0 && skipped < flows && !(self.one_pass && visited >= flows) {
            let f = self.next % flows;
            self.next = (f + 1) % flows;
            visited += 1;
            let k = per_flow.min(left);
            match send(f, k) {
                None => skipped += 1,
                Some(n) => {
                    skipped = 0;
                    sent += n;
                    left -= n.min(left);
                    if n < k {
                        break;
                    }
                }
            }
        }
        sent
    }
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
    let mut head = data.get(..MIN_PAYLOAD)?;
    if head[8..12] != MAGIC {
        // `--rtp`: the tool's header after the RTP header.
        head = data.get(RTP_HEADER..MIN_RTP_PAYLOAD)?;
        if head[8..12] != MAGIC {
            return None;
        }
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
pub fn run_thread(flows: Vec<Flow<'_>>, plan: &Plan, shared: &Shared) -> ThreadResult {
    let mut result = ThreadResult::new();
    let ep = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("turnd-load: epoll: {e}");
            shared.finish_sending(0);
            return result;
        }
    };
    for (i, f) in flows.iter().enumerate() {
        if let Err(e) = ep.add(f.sock, i as u64) {
            eprintln!("turnd-load: epoll_ctl: {e}");
        }
        if plan.gso {
            // Bursts relayed back with GSO may then arrive as one coalesced buffer.
            let _ = gso::enable_gro(f.sock);
        }
    }
    let mut events = event_buffer(256);
    let mut ready = Vec::with_capacity(256);
    let mut rx = if plan.gso {
        Mmsg::with_gro(RECV_BATCH, GRO_BUFFER)
    } else {
        Mmsg::new(RECV_BATCH, 2048)
    };
    let burst = plan.burst.clamp(1, MAX_BURST_LEN);
    let max_per_flow = SEND_BATCH.max(burst);
    let mut rounds = Rounds::new(burst, max_per_flow, false);
    let mut tx = Mmsg::new(max_per_flow, MAX_DATAGRAM);
    let mut gtx = GsoBatch::new(max_per_flow * MAX_DATAGRAM, max_per_flow, plan.gso);
    let mut flushed = 0u64;
    let mut done_sending = flows.is_empty();
    if done_sending {
        shared.finish_sending(0);
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
                FLAT_BURST.max(burst as u64)
            };
            // Consecutive packets of one allocation leave in one sendmmsg (or, with GSO,
            // each burst in one message): whole bursts, more than one per allocation when
            // the budget exceeds one burst each.
            let (mut bursts, mut errors) = (0u64, 0u64);
            let sent = rounds.round(budget as usize, flows.len(), |i, k| {
                let f = flows.get(i)?;
                let n = if plan.gso {
                    send_gso(f, k, &mut gtx, plan, shared)
                } else {
                    send_plain(f, k, &mut tx, plan)
                };
                bursts += (n / burst) as u64;
                if n < k {
                    // Socket buffer full (or an ICMP error queued): count it, try later.
                    errors += 1;
                }
                Some(n)
            });
            result.sent += sent as u64;
            result.bursts += bursts;
            result.send_errors += errors;
        } else if !done_sending {
            done_sending = true;
            shared.finish_sending(result.sent);
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
                            // A coalesced buffer holds several datagrams: each counts.
                            for d in gso::segments(rx.received(i), rx.gro_size(i)) {
                                if let Some(sent_at) = payload_time(d) {
                                    result.received += 1;
                                    result.hist.record(now.saturating_sub(sent_at));
                                }
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
        shared.publish_received(&mut flushed, result.received);
        if done_sending && shared.all_back(plan.threads) {
            break;
        }
    }
    if !done_sending {
        shared.finish_sending(result.sent);
    }
    result.gso_sends = gtx.gso_sends;
    result
}

/// Writes the send time into the payload of one copy of the flow's datagram.
fn stamp(datagram: &mut [u8], payload_at: usize, epoch: Instant) {
    let ts = nanos_since(epoch).to_be_bytes();
    if let Some(t) = datagram.get_mut(payload_at..payload_at + 8) {
        t.copy_from_slice(&ts);
    }
}

/// [`stamp`] for one copy of a flow's datagram; with `--rtp` also the RTP sequence number
/// (the flow's next) and timestamp (the send time at 48 kHz).
fn stamp_flow(f: &Flow<'_>, datagram: &mut [u8], epoch: Instant) {
    if !f.rtp {
        return stamp(datagram, f.payload_at, epoch);
    }
    let now = nanos_since(epoch);
    let seq = f.seq.get();
    f.seq.set(seq.wrapping_add(1));
    let at = f.payload_at;
    if let Some(h) = datagram.get_mut(at + 2..at + 8) {
        h[..2].copy_from_slice(&seq.to_be_bytes());
        h[2..].copy_from_slice(&((now / 1_000 * 48 / 1_000) as u32).to_be_bytes());
    }
    if let Some(t) = datagram.get_mut(at + RTP_HEADER..at + RTP_HEADER + 8) {
        t.copy_from_slice(&now.to_be_bytes());
    }
}

/// Sends `k` packets of flow `f` in one sendmmsg; returns how many went.
fn send_plain(f: &Flow<'_>, k: usize, tx: &mut Mmsg, plan: &Plan) -> usize {
    let len = f.packet.len().min(MAX_DATAGRAM);
    let k = k.min(tx.slots());
    for i in 0..k {
        let slot = tx.slot(i);
        slot[..len].copy_from_slice(&f.packet[..len]);
        stamp_flow(f, slot, plan.epoch);
    }
    tx.send(f.sock, k, |_| len).unwrap_or_default()
}

/// Sends `k` packets of flow `f` as GSO messages of one burst each (all the same length,
/// as GSO requires); returns how many went.
fn send_gso(f: &Flow<'_>, k: usize, tx: &mut GsoBatch, plan: &Plan, shared: &Shared) -> usize {
    let len = f.packet.len().min(MAX_DATAGRAM);
    let burst = plan.burst.clamp(1, MAX_BURST_LEN);
    let mut queued = 0;
    // Bounded: `k` packets in bursts of at most `burst`.
    while queued < k {
        let n = burst.min(k - queued);
        let Some(bytes) = tx.reserve(None, len, n) else {
            break;
        };
        for d in bytes.chunks_mut(len) {
            d.copy_from_slice(&f.packet[..len]);
            stamp_flow(f, d, plan.epoch);
        }
        queued += n;
    }
    let (sent, _err) = tx.send(f.sock, |e| shared.gso_refused(e));
    sent
}

/// Datagrams moved per echo system call.
const ECHO_BATCH: usize = 64;

/// An echo peer: sends every datagram back to where it came from (a relayed address on
/// loopback or in a benchmarking range), until the end of the drain. Batched with recvmmsg/sendmmsg so the echo costs
/// the tool two system calls per batch rather than two per packet.
pub fn echo(sock: UdpSocket, plan: &Plan, shared: &Shared) {
    use std::os::fd::AsRawFd;
    if plan.gso {
        return echo_gso(sock, plan, shared);
    }
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
        let mut all_echoable = true;
        for i in 0..n {
            iovs[i].iov_len = hdrs[i].msg_len as usize;
            all_echoable &= echoable(&names[i]);
        }
        if !all_echoable {
            // Not ours: echo only what came from loopback or a benchmarking range, one by one.
            for i in 0..n {
                if echoable(&names[i]) {
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

/// Coalesced buffers read per echo system call with `--gso`.
const ECHO_GSO_SLOTS: usize = 16;

/// The echo peer with `--gso`: `UDP_GRO` on, so a burst relayed with GSO may arrive as one
/// buffer, cut back into datagrams by its segment size; every run of datagrams from one
/// source with one length goes back as one GSO message (the kernel refusing GSO: as plain
/// datagrams, said once on stderr).
fn echo_gso(sock: UdpSocket, plan: &Plan, shared: &Shared) {
    use std::os::fd::AsRawFd;
    let _ = gso::enable_gro(&sock);
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let fd = sock.as_raw_fd();
    let mut bufs = vec![0u8; ECHO_GSO_SLOTS * GRO_BUFFER];
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut names: Vec<libc::sockaddr_storage> =
        vec![unsafe { std::mem::zeroed() }; ECHO_GSO_SLOTS];
    let mut iovs = vec![
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        ECHO_GSO_SLOTS
    ];
    let mut ctrl = vec![gso::CmsgBuf::default(); ECHO_GSO_SLOTS];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; ECHO_GSO_SLOTS];
    // Every datagram of a batch may go alone: as many messages as segments can arrive.
    let mut out = GsoBatch::new(
        ECHO_GSO_SLOTS * GRO_BUFFER,
        ECHO_GSO_SLOTS * gso::MAX_SEGMENTS,
        true,
    );
    // (slot, offset, length) of each datagram received, and the runs among them as
    // (first index, count).
    let mut segs: Vec<(usize, usize, usize)> = Vec::with_capacity(ECHO_GSO_SLOTS * 64);
    let mut runs: Vec<(usize, usize)> = Vec::with_capacity(ECHO_GSO_SLOTS * 64);
    let mut count = 0u64;
    while Instant::now() < plan.drain_until {
        let base = bufs.as_mut_ptr();
        for i in 0..ECHO_GSO_SLOTS {
            // SAFETY: slot i lies inside `bufs`.
            iovs[i].iov_base = unsafe { base.add(i * GRO_BUFFER) }.cast();
            iovs[i].iov_len = GRO_BUFFER;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            gso::set_recv_control(h, &mut ctrl[i]);
            h.msg_flags = 0;
            hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the lengths given; MSG_WAITFORONE
        // blocks (up to the socket's read timeout) for the first datagram only.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                ECHO_GSO_SLOTS as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        segs.clear();
        runs.clear();
        for (i, h) in hdrs.iter().enumerate().take(n as usize) {
            if !echoable(&names[i]) {
                continue;
            }
            let len = (h.msg_len as usize).min(GRO_BUFFER);
            let size = gso::gro_size(&h.msg_hdr).unwrap_or(len).max(1);
            let mut off = 0;
            while off < len {
                let l = size.min(len - off);
                segs.push((i, off, l));
                off += l;
            }
        }
        count += segs.len() as u64;
        for (j, &(slot, _, len)) in segs.iter().enumerate() {
            match runs.last_mut() {
                Some((first, k))
                    if *k < gso::max_segments(len)
                        && segs[*first].2 == len
                        && same_source(&hdrs[segs[*first].0].msg_hdr, &hdrs[slot].msg_hdr) =>
                {
                    *k += 1;
                }
                _ => runs.push((j, 1)),
            }
        }
        for &(first, k) in &runs {
            let (slot, _, len) = segs[first];
            let to = Dest {
                name: names[slot],
                len: hdrs[slot].msg_hdr.msg_namelen,
            };
            let Some(dst) = out.reserve(Some(to), len, k) else {
                break;
            };
            for (d, &(s, off, l)) in dst.chunks_mut(len).zip(&segs[first..first + k]) {
                d.copy_from_slice(&bufs[s * GRO_BUFFER + off..s * GRO_BUFFER + off + l]);
            }
        }
        let _ = out.send(&sock, |e| shared.gso_refused(e));
        if count >= 4096 {
            shared.peer_received.fetch_add(count, Ordering::SeqCst);
            count = 0;
        }
    }
    shared.peer_received.fetch_add(count, Ordering::SeqCst);
    shared
        .peer_gso_sends
        .fetch_add(out.gso_sends, Ordering::SeqCst);
}

/// Whether two received datagrams came from the same address (as the kernel wrote it).
fn same_source(a: &libc::msghdr, b: &libc::msghdr) -> bool {
    if a.msg_namelen != b.msg_namelen || a.msg_name.is_null() || b.msg_name.is_null() {
        return false;
    }
    let len = (a.msg_namelen as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: both names point at sockaddr_storage buffers of at least `len` bytes.
    unsafe {
        std::slice::from_raw_parts(a.msg_name.cast::<u8>(), len)
            == std::slice::from_raw_parts(b.msg_name.cast::<u8>(), len)
    }
}

/// Whether a source address filled in by the kernel is one the tool may answer: loopback or
/// a benchmarking range ([`turnd_tools::addr::bench_address`]).
fn echoable(name: &libc::sockaddr_storage) -> bool {
    let ip = match name.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            std::net::IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            std::net::IpAddr::from(sin6.sin6_addr.s6_addr)
        }
        _ => return false,
    };
    turnd_tools::addr::bench_address(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100k pps over 100 allocations on two threads: each thread owes 50 flows 50 packets
    /// a millisecond, paced in rounds of uneven length.
    #[test]
    fn at_a_hundred_thousand_pps_over_a_hundred_allocations_every_flow_sends_whole_bursts() {
        for burst in [1, 4, 8, 64] {
            let mut rounds = Rounds::new(burst, SEND_BATCH.max(burst), false);
            let mut per_flow = [0usize; 50];
            let (mut sent, mut t_us) = (0usize, 0usize);
            for step in 0..4000 {
                t_us += [300, 1000, 1700][step % 3];
                let target = t_us * 50 / 1000;
                let budget = (target - sent).min(MAX_BURST as usize);
                sent += rounds.round(budget, 50, |f, k| {
                    assert!(k >= burst && k % burst == 0, "{k} packets, burst {burst}");
                    per_flow[f] += k;
                    Some(k)
                });
                // What is left is less than one burst, carried to the next round.
                assert!(target - sent < burst, "{target} owed, {sent} sent");
            }
            assert!(sent > 0);
            let (min, max) = (per_flow.iter().min(), per_flow.iter().max());
            assert!(
                max.unwrap() - min.unwrap() <= burst,
                "uneven: {min:?}..{max:?}"
            );
        }
    }

    #[test]
    fn with_burst_one_a_large_budget_is_spread_sixteen_per_flow() {
        let mut rounds = Rounds::new(1, SEND_BATCH, false);
        let mut sends = Vec::new();
        let sent = rounds.round(256, 2, |f, k| {
            sends.push((f, k));
            Some(k)
        });
        assert_eq!(sent, 256);
        assert!(sends.iter().all(|&(_, k)| k == SEND_BATCH), "{sends:?}");
        assert_eq!(sends[..2], [(0, 16), (1, 16)]);
    }

    #[test]
    fn a_budget_below_one_burst_sends_nothing_yet() {
        let mut rounds = Rounds::new(8, SEND_BATCH, false);
        assert_eq!(rounds.round(7, 3, |_, _| panic!("sent a partial burst")), 0);
        assert_eq!(
            rounds.round(8, 3, |f, k| Some(if f == 0 { k } else { 0 })),
            8
        );
    }

    #[test]
    fn one_pass_visits_each_flow_once_and_skips_flows_out_of_the_run() {
        let mut rounds = Rounds::new(2, 16, true);
        let mut seen = Vec::new();
        let sent = rounds.round(256, 3, |f, k| {
            seen.push(f);
            (f != 1).then_some(k)
        });
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(sent, 32);
        // A short send stops the round; the next round starts at the following flow.
        let mut seen = Vec::new();
        rounds.round(256, 3, |f, _| {
            seen.push(f);
            Some(0)
        });
        assert_eq!(seen, [0]);
        // Every flow out of the run: the round ends after one look at each.
        let mut looks = 0;
        assert_eq!(
            Rounds::new(1, 16, false).round(100, 4, |_, _| {
                looks += 1;
                None
            }),
            0
        );
        assert_eq!(looks, 4);
    }
}
