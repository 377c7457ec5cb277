//! Many allocations on one node (`bench/many_allocations.sh`): sets up COUNT allocations
//! from CLIENT_IPS client addresses (127.0.1.1, 127.0.1.2, ...; explicit ports from 20000,
//! so one address's ephemeral ports are no limit), keeps a socket open for SAMPLE of them
//! only (the others are re-bound to refresh them, so the tool needs few descriptors), then
//! prints turnd's RSS and descriptors, its CPU while idle, its CPU while the sample relays
//! Send indications to an echo peer for SECONDS, and the time to refresh every allocation.
//!
//! ```sh
//! many_allocations 127.0.0.1:3478 alice:wonderland 100000 8 $TURND_PID 200 10
//! ```
//!
//! Loopback only: the server, the clients and the peer are on 127.0.0.0/8. Bounded: every
//! wait has a timeout, the traffic runs SECONDS (at most 60).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use turnd::auth::{PasswordAlgorithm, long_term_key};
use turnd::stun::{Class, Message, MessageWriter, attr, method};

const FIRST_PORT: u16 = 20_000;
const LIFETIME: u32 = 3600;

struct Creds {
    user: String,
    realm: String,
    key: Vec<u8>,
    pass: String,
    nonce: Vec<u8>,
}

/// Sends a request (signed when a nonce is known), retrying after 401/438 with the nonce it
/// brings; returns the final error code (0: success).
fn request(
    sock: &UdpSocket,
    creds: &mut Creds,
    m: u16,
    txid: &mut [u8; 12],
    build: &dyn Fn(&mut MessageWriter),
) -> Result<u16, String> {
    for _ in 0..3 {
        txid[11] = txid[11].wrapping_add(1);
        let mut buf = Vec::with_capacity(256);
        let mut w = MessageWriter::new(&mut buf, m, Class::Request, *txid);
        build(&mut w);
        if !creds.nonce.is_empty() {
            w.attr(attr::USERNAME, creds.user.as_bytes())
                .attr(attr::REALM, creds.realm.as_bytes())
                .attr(attr::NONCE, &creds.nonce)
                .integrity(&creds.key);
        }
        w.fingerprint();
        sock.send(&buf).map_err(|e| e.to_string())?;
        let mut rbuf = [0u8; 1500];
        let (code, nonce, realm) = loop {
            let n = sock
                .recv(&mut rbuf)
                .map_err(|e| format!("no answer: {e}"))?;
            let Ok(msg) = Message::parse(&rbuf[..n]) else {
                continue;
            };
            if msg.transaction_id() != *txid {
                continue;
            }
            let code = match msg.class() {
                Class::Success => 0,
                _ => msg
                    .get(attr::ERROR_CODE)
                    .filter(|v| v.len() >= 4)
                    .map_or(0, |v| u16::from(v[2] & 7) * 100 + u16::from(v[3])),
            };
            let realm = msg
                .get(attr::REALM)
                .map(|r| String::from_utf8_lossy(r).into_owned());
            break (code, msg.get(attr::NONCE).map(<[u8]>::to_vec), realm);
        };
        match (code, nonce) {
            (401 | 438, Some(n)) => {
                if let Some(r) = realm
                    && r != creds.realm
                {
                    creds.key = long_term_key(PasswordAlgorithm::Md5, &creds.user, &r, &creds.pass)
                        .as_bytes()
                        .to_vec();
                    creds.realm = r;
                }
                creds.nonce = n;
            }
            (c, _) => return Ok(c),
        }
    }
    Err("challenge loop".into())
}

fn client_addr(i: u32, ips: u32) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 0, 1, (1 + i % ips) as u8);
    SocketAddr::new(IpAddr::V4(ip), FIRST_PORT + (i / ips) as u16)
}

fn bind(addr: SocketAddr, server: SocketAddr) -> Result<UdpSocket, String> {
    let s = UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    s.connect(server).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// (RSS KiB, open descriptors, CPU ticks) of a process, from /proc.
fn proc_stats(pid: u32) -> (u64, usize, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let g = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            g(11) + g(12)
        })
        .unwrap_or(0);
    (rss, fds, ticks)
}

/// CPU use of `pid` over `d`, percent of one core (USER_HZ 100).
fn cpu_over(pid: u32, d: Duration, during: &mut dyn FnMut(Instant)) -> f64 {
    let t0 = proc_stats(pid).2;
    let start = Instant::now();
    during(start + d);
    let secs = start.elapsed().as_secs_f64();
    let t1 = proc_stats(pid).2;
    (t1.saturating_sub(t0)) as f64 / 100.0 / secs * 100.0
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, creds, n, ips, pid, sample, secs] = args.as_slice() else {
        return Err(
            "usage: many_allocations SERVER:PORT USER:PASSWORD COUNT CLIENT_IPS PID SAMPLE SECONDS"
                .into(),
        );
    };
    let server: SocketAddr = server.parse().map_err(|e| format!("server: {e}"))?;
    if !server.ip().is_loopback() || !server.is_ipv4() {
        return Err("the server must be on 127.0.0.0/8".into());
    }
    let (user, pass) = creds.split_once(':').ok_or("USER:PASSWORD")?;
    let n: u32 = n
        .parse::<u32>()
        .map_err(|e| e.to_string())?
        .clamp(1, 200_000);
    let ips: u32 = ips.parse::<u32>().map_err(|e| e.to_string())?.clamp(1, 250);
    if n / ips > u32::from(u16::MAX - FIRST_PORT) {
        return Err("too few client addresses for so many allocations".into());
    }
    let pid: u32 = pid.parse().map_err(|e| format!("pid: {e}"))?;
    let sample: u32 = sample.parse::<u32>().map_err(|e| e.to_string())?.min(n);
    let secs: u64 = secs.parse::<u64>().map_err(|e| e.to_string())?.clamp(1, 60);
    let mut creds = Creds {
        user: user.to_owned(),
        realm: String::new(),
        key: Vec::new(),
        pass: pass.to_owned(),
        nonce: Vec::new(),
    };

    let (rss0, fds0, _) = proc_stats(pid);
    let started = Instant::now();
    let mut kept = Vec::new();
    let mut failed = 0u32;
    for i in 0..n {
        let addr = client_addr(i, ips);
        let sock = match bind(addr, server) {
            Ok(s) => s,
            Err(_) => {
                failed += 1;
                continue;
            }
        };
        let mut txid = [0u8; 12];
        txid[..4].copy_from_slice(&i.to_be_bytes());
        let code = request(&sock, &mut creds, method::ALLOCATE, &mut txid, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .u32_attr(attr::LIFETIME, LIFETIME);
        });
        match code {
            Ok(0) if i < sample => kept.push((sock, txid)),
            Ok(0) => {}
            _ => failed += 1,
        }
        if (i + 1) % 10_000 == 0 {
            eprintln!(
                "{} allocations in {:.1} s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let setup = started.elapsed();
    let made = n - failed;
    std::thread::sleep(Duration::from_secs(1));
    let (rss1, fds1, _) = proc_stats(pid);
    println!(
        "setup: {made} allocations ({failed} failed) from {ips} client addresses in {:.1} s ({:.0}/s)",
        setup.as_secs_f64(),
        f64::from(made) / setup.as_secs_f64()
    );
    println!(
        "turnd: RSS {rss0} KiB -> {rss1} KiB ({:.2} KiB per allocation), descriptors {fds0} -> {fds1}",
        (rss1.saturating_sub(rss0)) as f64 / f64::from(made.max(1))
    );
    let idle = cpu_over(pid, Duration::from_secs(5), &mut |until| {
        std::thread::sleep(until.saturating_duration_since(Instant::now()))
    });
    println!("turnd CPU idle with {made} allocations: {idle:.1}% of one core (5 s)");

    // The sample relays: a permission for the echo peer, then Send indications.
    let peer = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let peer_addr = peer.local_addr().map_err(|e| e.to_string())?;
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    for (sock, txid) in &mut kept {
        request(sock, &mut creds, method::CREATE_PERMISSION, txid, &|w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
        })?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let mut echoed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((len, from)) = peer.recv_from(&mut buf) {
                    let _ = peer.send_to(&buf[..len], from);
                    echoed += 1;
                }
            }
            echoed
        })
    };
    let payload = [0x5au8; 160];
    let (mut sent, mut got) = (0u64, 0u64);
    let per_round = Duration::from_millis(20);
    let busy = cpu_over(pid, Duration::from_secs(secs), &mut |until| {
        let mut buf = [0u8; 1500];
        while Instant::now() < until {
            let round = Instant::now();
            for (sock, _) in &kept {
                let mut out = Vec::with_capacity(256);
                let mut w = MessageWriter::new(&mut out, method::SEND, Class::Indication, [7; 12]);
                w.xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
                    .attr(attr::DATA, &payload);
                if sock.send(&out).is_ok() {
                    sent += 1;
                }
            }
            std::thread::sleep(per_round.saturating_sub(round.elapsed()));
            for (sock, _) in &kept {
                while sock.recv(&mut buf).is_ok() {
                    got += 1;
                }
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    for (sock, _) in &kept {
        let mut buf = [0u8; 1500];
        while sock.recv(&mut buf).is_ok() {
            got += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let echoed = echo.join().unwrap_or(0);
    println!(
        "turnd CPU with {} of them relaying ({:.0} pps each way, {secs} s): {busy:.1}% of one core; \
         sent {sent}, echoed {echoed}, back {got}",
        kept.len(),
        sent as f64 / secs as f64
    );

    // Refresh every allocation from its own 5-tuple.
    let started = Instant::now();
    let mut refreshed = 0u32;
    for (sock, txid) in &mut kept {
        sock.set_nonblocking(false).map_err(|e| e.to_string())?;
        if request(sock, &mut creds, method::REFRESH, txid, &|w| {
            w.u32_attr(attr::LIFETIME, LIFETIME);
        }) == Ok(0)
        {
            refreshed += 1;
        }
    }
    let busy_refresh = cpu_over(pid, Duration::ZERO, &mut |_| {
        for i in sample..n {
            let Ok(sock) = bind(client_addr(i, ips), server) else {
                continue;
            };
            let mut txid = [0u8; 12];
            txid[..4].copy_from_slice(&i.to_be_bytes());
            txid[4] = 1;
            if request(&sock, &mut creds, method::REFRESH, &mut txid, &|w| {
                w.u32_attr(attr::LIFETIME, LIFETIME);
            }) == Ok(0)
            {
                refreshed += 1;
            }
        }
    });
    let (rss2, _, _) = proc_stats(pid);
    println!(
        "refresh: {refreshed} allocations refreshed in {:.1} s (turnd CPU {busy_refresh:.1}% of one core meanwhile); RSS {rss2} KiB",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
