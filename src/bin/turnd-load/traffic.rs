//! The data side of the load: paced senders, receivers on epoll, and the echo peers. Every
//! loop ends by the plan's deadlines, whatever the server does.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use turnd::stun::{Class, Message, attr, channel_data, method};

use crate::hist::Histogram;
use crate::sys::{Epoll, event_buffer};

/// Marks the tool's packets: payload = send time (ns, 8 bytes), this, flow id (4 bytes), fill.
pub const MAGIC: [u8; 4] = *b"TLD1";
/// Smallest payload that holds the header above.
pub const MIN_PAYLOAD: usize = 16;
/// Most packets one thread sends between two looks at its sockets.
const MAX_BURST: u64 = 256;
/// Packets per burst when running flat out.
const FLAT_BURST: u64 = 64;
/// Most datagrams read from one socket per wakeup.
const RECV_BATCH: usize = 64;

/// One allocation's traffic: its socket (non-blocking, connected to the server) and the
/// datagram it sends (ChannelData or a Send indication) with the payload at `payload_at`.
pub struct Flow {
    pub sock: UdpSocket,
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
    pub hist: Histogram,
}

/// The payload's send time if the datagram is one of ours: ChannelData or a Data indication.
fn payload_time(datagram: &[u8]) -> Option<u64> {
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

fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos().min(u64::MAX as u128) as u64
}

/// Sends this thread's share of the load round-robin over its flows, receives what comes
/// back on any of them, and records the latency of each packet.
pub fn run_thread(mut flows: Vec<Flow>, plan: &Plan, shared: &Shared) -> ThreadResult {
    let mut result = ThreadResult {
        sent: 0,
        received: 0,
        send_errors: 0,
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
        if let Err(e) = ep.add(&f.sock, i as u64) {
            eprintln!("turnd-load: epoll_ctl: {e}");
        }
    }
    let mut events = event_buffer(256);
    let mut ready = Vec::with_capacity(256);
    let mut buf = vec![0u8; 2048];
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
            for _ in 0..budget {
                let Some(f) = flows.get_mut(next) else { break };
                next = (next + 1) % count;
                let ts = nanos_since(plan.epoch).to_be_bytes();
                if let Some(slot) = f.packet.get_mut(f.payload_at..f.payload_at + 8) {
                    slot.copy_from_slice(&ts);
                }
                match f.sock.send(&f.packet) {
                    Ok(_) => result.sent += 1,
                    Err(_) => {
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
            for _ in 0..RECV_BATCH {
                match f.sock.recv(&mut buf) {
                    Ok(n) => {
                        if let Some(sent_at) = buf.get(..n).and_then(payload_time) {
                            result.received += 1;
                            result
                                .hist
                                .record(nanos_since(plan.epoch).saturating_sub(sent_at));
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

/// An echo peer: sends every datagram back to where it came from (a relayed address on
/// loopback), until the end of the drain.
pub fn echo(sock: UdpSocket, plan: &Plan, shared: &Shared) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 2048];
    let mut count = 0u64;
    while Instant::now() < plan.drain_until {
        for _ in 0..1024 {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    count += 1;
                    if from.ip().is_loopback()
                        && let Some(d) = buf.get(..n)
                    {
                        let _ = sock.send_to(d, from);
                    }
                }
                Err(_) => break,
            }
        }
        if count > 0 {
            shared.peer_received.fetch_add(count, Ordering::SeqCst);
            count = 0;
        }
    }
}
