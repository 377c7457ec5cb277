//! `turnd-load`: a TURN load generator made for measuring (the project's counterpart of
//! coturn's `turnutils_uclient`).
//!
//! It opens N allocations with long-term credentials (RFC 8656 §7), each over its own UDP
//! socket or, with `--transport tcp|tls`, its own TCP or TLS connection (the allocation
//! still relays over UDP, as a browser's `turn:...?transport=tcp` does), gives each a
//! peer (the tool's own echo sockets, or the relayed address of a partner allocation),
//! installs a permission (Send mode) or a channel (channel mode), then sends timestamped
//! packets at a fixed offered rate or flat out for a bounded time. It prints offered and
//! delivered packets per second, loss, latency percentiles and, given `--server-pid`, the
//! server's CPU seconds per million relayed packets; the last line (`RESULT k=v ...`) is
//! for scripts. Traffic goes to loopback or to the benchmarking ranges 198.18.0.0/15 and
//! 2001:2::/48 only (bench/offload.sh puts those on a veth pair between network namespaces
//! with no route out): any other server, client, peer or relayed address is refused. `--burst K` makes each allocation send K packets back to back (a video frame's
//! shape), and `--gso` sends each burst as one UDP_SEGMENT message (see `turnd_tools::gso`).

mod hist;
mod kernel;
mod setup;
mod stream;
mod traffic;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use turnd::stun::{Class, MessageWriter, attr, channel_data, method};
use turnd_tools::addr::{BENCH_ADDRESSES, bench_address, loopback_of};
use turnd_tools::sys::SystemCpu;
use turnd_tools::{gso, sys};

use hist::Histogram;
use setup::{Client, Conn, Credentials, Step, run_step};
use stream::{StreamConn, StreamFlow, TlsSetup};
use traffic::{Flow, MAGIC, MAX_BURST_LEN, MIN_PAYLOAD, MIN_RTP_PAYLOAD, Plan, RTP_HEADER, Shared};

/// The channel every allocation binds (each has its own 5-tuple, so one number suffices).
const CHANNEL: u16 = 0x4000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// ChannelBind, then ChannelData both ways (RFC 8656 §12).
    Channel,
    /// CreatePermission, then Send and Data indications (RFC 8656 §11).
    Send,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// One UDP socket per allocation.
    Udp,
    /// One TCP connection per allocation (RFC 8656 §3.1): control and data on the stream,
    /// ChannelData padded to 4 bytes (§12.5).
    Tcp,
    /// One TLS connection per allocation (`turns:`), ALPN `stun.turn` (RFC 7443).
    Tls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Topology {
    /// Each allocation's peer is one of the tool's echo sockets, which sends every packet
    /// back: latency is the round trip client -> server -> peer -> server -> client.
    Peer,
    /// Allocations in pairs, each the other's peer (relayed address to relayed address, the
    /// browser-to-browser case): latency is one way, client -> server -> client.
    Pair,
}

#[derive(Debug, Parser)]
#[command(
    name = "turnd-load",
    version,
    about = "TURN load generator: relays timestamped packets through a server on loopback \
             and reports rate, loss, latency and the server's CPU per relayed packet"
)]
struct Args {
    /// The server's address (its UDP, TCP or TLS listener, per --transport); must be a
    /// loopback address or one from 198.18.0.0/15 or 2001:2::/48.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:3478")]
    server: SocketAddr,
    /// The address the clients' sockets bind to (default: the loopback address of the
    /// server's family); loopback or 198.18.0.0/15, 2001:2::/48.
    #[arg(long, value_name = "IP")]
    client_ip: Option<IpAddr>,
    /// The addresses the echo peers bind to, comma-separated, used in turn (default: the
    /// clients' address); loopback or 198.18.0.0/15, 2001:2::/48.
    #[arg(long, value_name = "IP,...", value_delimiter = ',')]
    peer_ip: Vec<IpAddr>,
    /// How each client reaches the server: its own UDP socket, TCP or TLS connection.
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
    /// --transport tls: trust the certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    ca: Option<String>,
    /// --transport tls: accept any server certificate (a self-signed one on loopback).
    #[arg(long)]
    insecure: bool,
    /// --transport tls: the server name to send (SNI) and to verify the certificate for.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    tls_name: String,
    /// Static long-term user NAME:PASSWORD.
    #[arg(long, value_name = "NAME:PASSWORD", conflicts_with = "secret")]
    user: Option<String>,
    /// REST shared secret: the tool mints `<expiry>:<rest-user>` credentials with it.
    #[arg(long, value_name = "SECRET")]
    secret: Option<String>,
    /// User part of REST credentials.
    #[arg(long, value_name = "USER", default_value = "load")]
    rest_user: String,
    /// Number of allocations (an even number in pair topology).
    #[arg(long, short = 'n', default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=20_000))]
    allocations: u32,
    #[arg(long, value_enum, default_value_t = Mode::Channel)]
    mode: Mode,
    #[arg(long, value_enum, default_value_t = Topology::Peer)]
    topology: Topology,
    /// Offered packets per second, all allocations together; 0 sends flat out.
    #[arg(long, default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5.0, value_parser = parse_duration)]
    duration: f64,
    /// Seconds to wait for packets still in flight after sending stops.
    #[arg(long, default_value_t = 1.0, value_parser = parse_drain)]
    drain: f64,
    /// Application payload bytes per packet.
    #[arg(long, default_value_t = 200,
          value_parser = clap::value_parser!(u16).range(MIN_PAYLOAD as i64..=1200))]
    size: u16,
    /// Sender/receiver threads (each owns a share of the allocations).
    #[arg(long, default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,
    /// Echo sockets (one thread each) in peer topology; up to 64, or as many as there are
    /// allocations with --kernel-load (there the sockets only hold the ports, each
    /// allocation can have a peer endpoint of its own, and no thread reads them).
    #[arg(long, default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=20_000))]
    peers: u32,
    /// The server's process id: report its CPU time per relayed packet (from /proc).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Packets each allocation sends back to back per turn, as a video frame leaves a
    /// browser (same total rate; over TCP and TLS, K messages written together).
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=MAX_BURST_LEN as i64))]
    burst: u32,
    /// UDP: send each burst as one message with UDP segmentation offload (UDP_SEGMENT),
    /// have the echo peers send runs back the same way, and receive with UDP_GRO.
    #[arg(long)]
    gso: bool,
    /// RTP-shaped payloads: an RTP header (version 2, the allocation's own SSRC, sequence
    /// numbers counting its packets, 48 kHz timestamps from the send time) before the tool's
    /// own, as SRTP leaves it in clear, for what a relay that reads it costs (UDP only;
    /// --size at least 28).
    #[arg(long)]
    rtp: bool,
    /// The data side in the kernel (`bpf/load.bpf.c`): after the setup, an XDP program run
    /// in live-frames mode sends the clients' ChannelData out of IFACE, and one attached to
    /// IFACE echoes for the peers and counts and times what comes back, so the load costs
    /// little next to the server (IPv4 UDP clients, channel mode, peer topology, bursts of
    /// 1; root; for bench/offload.sh --kernel-load).
    #[arg(long, value_name = "IFACE")]
    kernel_load: Option<String>,
    /// Most seconds allowed for setting up (and for releasing) the allocations.
    #[arg(long, default_value_t = 60.0, value_parser = parse_duration)]
    setup_timeout: f64,
}

fn parse_seconds(s: &str, max: f64) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| "not a number of seconds".to_owned())?;
    if v.is_finite() && v > 0.0 && v <= max {
        Ok(v)
    } else {
        Err(format!("must be more than 0 and at most {max}"))
    }
}

/// Sending stops well within the lifetime of a permission (300 s, RFC 8656 §9): the tool
/// does not refresh.
fn parse_duration(s: &str) -> Result<f64, String> {
    parse_seconds(s, 240.0)
}

fn parse_drain(s: &str) -> Result<f64, String> {
    parse_seconds(s, 30.0)
}

fn credentials(args: &Args) -> Result<Credentials, String> {
    if let Some(u) = &args.user {
        let (name, password) = u
            .split_once(':')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
            .ok_or("--user: expected NAME:PASSWORD")?;
        return Ok(Credentials {
            username: name.to_owned(),
            password: password.to_owned(),
        });
    }
    if let Some(secret) = &args.secret {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (username, password) =
            turnd::auth::rest_credential(secret, &args.rest_user, unix + 3600, ':');
        return Ok(Credentials { username, password });
    }
    Err("give --user NAME:PASSWORD or --secret SECRET".to_owned())
}

/// Checks that every address the tool sends from or to is loopback or in a benchmarking
/// range, and returns the clients' and the echo peers' addresses.
fn addresses(args: &Args) -> Result<(IpAddr, Vec<IpAddr>), String> {
    if !bench_address(args.server.ip()) {
        return Err(format!(
            "--server {}: only {BENCH_ADDRESSES} are accepted",
            args.server
        ));
    }
    let client = args
        .client_ip
        .unwrap_or_else(|| loopback_of(args.server.ip()));
    if !bench_address(client) {
        return Err(format!(
            "--client-ip {client}: only {BENCH_ADDRESSES} are accepted"
        ));
    }
    if client.is_ipv4() != args.server.is_ipv4() {
        return Err(format!(
            "--client-ip {client} is not of the family of --server {}",
            args.server
        ));
    }
    let peers = if args.peer_ip.is_empty() {
        vec![client]
    } else {
        args.peer_ip.clone()
    };
    if let Some(p) = peers.iter().find(|p| !bench_address(**p)) {
        return Err(format!(
            "--peer-ip {p}: only {BENCH_ADDRESSES} are accepted"
        ));
    }
    Ok((client, peers))
}

/// CPU time sampled at the start and at the end of the sending window: the whole machine
/// (/proc/stat), the tool's own process and the server's.
struct Window {
    system: Option<SystemCpu>,
    /// The tool's user and system time.
    tool: Option<(f64, f64)>,
    server: Option<f64>,
}

impl Window {
    fn sample(pid: Option<&str>) -> Window {
        Window {
            system: sys::system_cpu(),
            tool: sys::cpu_times("self"),
            server: pid.and_then(sys::cpu_seconds),
        }
    }
}

/// Sleeps until `at` (returns at once if it has passed).
fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// The payload: send time (filled in per packet), MAGIC, flow id, then filler; with `rtp`
/// after an RTP header whose SSRC is the flow id plus one (sequence number and timestamp
/// filled in per packet).
fn payload(size: usize, id: u32, rtp: bool) -> Vec<u8> {
    let mut p = vec![0x5A; size];
    let at = if rtp {
        p[..RTP_HEADER].fill(0);
        p[0] = 0x80;
        p[1] = 111;
        p[8..12].copy_from_slice(&(id + 1).to_be_bytes());
        RTP_HEADER
    } else {
        0
    };
    p[at + 8..at + 12].copy_from_slice(&MAGIC);
    p[at + 12..at + 16].copy_from_slice(&id.to_be_bytes());
    p
}

/// The message a client sends, and where its payload starts. On streams ChannelData is
/// padded to a multiple of 4 bytes (RFC 8656 §12.5 MUST).
fn packet(mode: Mode, peer: SocketAddr, payload: &[u8], id: u32, pad: bool) -> (Vec<u8>, usize) {
    match mode {
        Mode::Channel => {
            let mut p = channel_data::header(CHANNEL, payload.len() as u16).to_vec();
            p.extend_from_slice(payload);
            if pad {
                p.resize(p.len().next_multiple_of(4), 0);
            }
            (p, 4)
        }
        Mode::Send => {
            let mut txid = [0u8; 12];
            txid[..4].copy_from_slice(&id.to_be_bytes());
            let mut buf = Vec::new();
            MessageWriter::new(&mut buf, method::SEND, Class::Indication, txid)
                .xor_address(attr::XOR_PEER_ADDRESS, peer)
                .attr(attr::DATA, payload);
            // DATA is the last attribute: the payload sits before its padding.
            let at = buf.len() - payload.len().next_multiple_of(4);
            (buf, at)
        }
    }
}

/// Runs `step` on every client, the clients split across `threads` threads.
fn parallel_step(
    clients: &mut [Client],
    step: Step,
    creds: &Credentials,
    threads: usize,
    deadline: Instant,
) {
    let chunk = clients.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for part in clients.chunks_mut(chunk) {
            s.spawn(move || run_step(part, step, creds, deadline));
        }
    });
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnd-load: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let (client_ip, peer_ips) = addresses(args)?;
    if args.rtp && (usize::from(args.size) < MIN_RTP_PAYLOAD || args.transport != Transport::Udp) {
        return Err(format!(
            "--rtp needs --transport udp and --size of at least {MIN_RTP_PAYLOAD}"
        ));
    }
    if args.topology == Topology::Pair && !args.allocations.is_multiple_of(2) {
        return Err("--allocations must be even with --topology pair".to_owned());
    }
    if args.gso && args.transport != Transport::Udp {
        return Err("--gso applies to --transport udp only".to_owned());
    }
    if args.transport != Transport::Tls && (args.ca.is_some() || args.insecure) {
        return Err("--ca and --insecure apply to --transport tls only".to_owned());
    }
    if args.kernel_load.is_some()
        && (args.transport != Transport::Udp
            || args.mode != Mode::Channel
            || args.topology != Topology::Peer
            || args.burst != 1
            || args.gso
            || args.rtp
            || !args.server.is_ipv4())
    {
        return Err(
            "--kernel-load takes an IPv4 server, --transport udp, --mode channel, --topology \
             peer and bursts of 1 (no --gso, no --rtp)"
                .to_owned(),
        );
    }
    if args.peers > 64 && args.kernel_load.is_none() {
        return Err(
            "--peers: at most 64 echo sockets (one thread each) without --kernel-load".to_owned(),
        );
    }
    let creds = credentials(args)?;
    let n = args.allocations as usize;
    let threads = (args.threads as usize).min(n).max(1);
    let nofile = sys::raise_nofile_limit();
    if nofile != 0 && (n as u64) + 64 > nofile {
        return Err(format!(
            "{n} allocations need {n} sockets but the open-file limit is {nofile}"
        ));
    }
    let epoch = Instant::now();
    let local = SocketAddr::new(client_ip, 0);

    let mut clients = match args.transport {
        Transport::Udp => {
            let mut clients = Vec::with_capacity(n);
            for i in 0..n {
                let sock = UdpSocket::bind(local).map_err(|e| format!("client socket: {e}"))?;
                sock.connect(args.server)
                    .map_err(|e| format!("connect to {}: {e}", args.server))?;
                clients.push(Client::new(Conn::Udp(sock), i as u32));
            }
            clients
        }
        Transport::Tcp => connect_streams(args.server, None, n, threads)?,
        Transport::Tls => {
            let tls = stream::tls_setup(args.ca.as_deref(), args.insecure, &args.tls_name)?;
            connect_streams(args.server, Some(&tls), n, threads)?
        }
    };
    let setup_deadline = epoch + Duration::from_secs_f64(args.setup_timeout);
    let pid = args.server_pid.map(|p| p.to_string());
    // The server's setup cost and its memory per allocation (with a permission or channel).
    let setup_cpu0 = pid.as_deref().and_then(sys::cpu_seconds);
    let rss0 = pid.as_deref().and_then(sys::rss_kib);

    // Allocate.
    parallel_step(
        &mut clients,
        Step::Allocate,
        &creds,
        threads,
        setup_deadline,
    );
    for c in &mut clients {
        if let Some(r) = c.relay
            && !bench_address(r.ip())
        {
            c.failed = Some(format!(
                "relayed address {r} is not {BENCH_ADDRESSES}: refusing to send traffic there"
            ));
        }
    }

    // Peers.
    let mut echoes = Vec::new();
    match args.topology {
        Topology::Peer => {
            for i in 0..args.peers as usize {
                let ip = peer_ips[i % peer_ips.len()];
                let s = UdpSocket::bind(SocketAddr::new(ip, 0))
                    .map_err(|e| format!("peer socket on {ip}: {e}"))?;
                let s2 = socket2::SockRef::from(&s);
                let _ = s2.set_recv_buffer_size(4 << 20);
                let _ = s2.set_send_buffer_size(4 << 20);
                echoes.push(s);
            }
            let addrs: Vec<SocketAddr> =
                echoes.iter().filter_map(|s| s.local_addr().ok()).collect();
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            println!("echo peers: {}", list.join(" "));
            for (i, c) in clients.iter_mut().enumerate() {
                c.peer = addrs.get(i % addrs.len().max(1)).copied();
            }
        }
        Topology::Pair => {
            for pair in clients.chunks_mut(2) {
                if let [a, b] = pair {
                    match (a.relay, b.relay, &a.failed, &b.failed) {
                        (Some(ra), Some(rb), None, None) => {
                            a.peer = Some(rb);
                            b.peer = Some(ra);
                        }
                        _ => {
                            for c in [a, b] {
                                c.failed.get_or_insert_with(|| "partner failed".to_owned());
                            }
                        }
                    }
                }
            }
        }
    }

    // Permissions or channels.
    let step = match args.mode {
        Mode::Channel => Step::Channel(CHANNEL),
        Mode::Send => Step::Permission,
    };
    parallel_step(&mut clients, step, &creds, threads, setup_deadline);
    if args.topology == Topology::Pair {
        for pair in clients.chunks_mut(2) {
            if let [a, b] = pair
                && (a.failed.is_some() || b.failed.is_some())
            {
                for c in [a, b] {
                    c.failed.get_or_insert_with(|| "partner failed".to_owned());
                }
            }
        }
    }
    let setup_secs = epoch.elapsed().as_secs_f64();
    let setup_cpu = match (pid.as_deref().and_then(sys::cpu_seconds), setup_cpu0) {
        (Some(b), Some(a)) => Some(b - a),
        _ => None,
    };
    let rss1 = pid.as_deref().and_then(sys::rss_kib);
    let failed: Vec<&str> = clients.iter().filter_map(|c| c.failed.as_deref()).collect();
    let ready = n - failed.len();
    for reason in failed.iter().take(5) {
        eprintln!("turnd-load: setup failed: {reason}");
    }
    println!(
        "turnd-load: {} {n} allocations ({:?}, {:?}, {:?}), {}-byte payloads, {threads} threads",
        args.server, args.transport, args.mode, args.topology, args.size
    );
    println!("setup: {ready} of {n} allocations ready in {setup_secs:.2} s");
    let rss_per_alloc = match (rss0, rss1) {
        (Some(a), Some(b)) if ready > 0 => Some((b as f64 - a as f64) / ready as f64),
        _ => None,
    };
    if let (Some(c), Some(m)) = (setup_cpu, rss_per_alloc) {
        println!(
            "setup: server cpu {c:.3} s, resident memory {m:+.2} KiB per allocation (RSS {} -> {} KiB)",
            rss0.unwrap_or(0),
            rss1.unwrap_or(0)
        );
    }
    if ready == 0 {
        return Err("no allocation could be set up".to_owned());
    }

    // Traffic.
    let shared = Shared::default();
    let gso = args.gso
        && match clients.first().map(|c| &c.conn) {
            Some(Conn::Udp(sock)) if !gso::supported(sock) => {
                shared.gso_refused(&std::io::Error::from_raw_os_error(libc::ENOPROTOOPT));
                false
            }
            _ => true,
        };
    let size = args.size as usize;
    let mut kernel_load = match (&args.kernel_load, args.server) {
        (Some(iface), SocketAddr::V4(server)) => {
            let flows: Vec<kernel::KernelFlow> = clients
                .iter()
                .enumerate()
                .filter(|(_, c)| c.failed.is_none() && c.peer.is_some())
                .filter_map(|(i, c)| match &c.conn {
                    Conn::Udp(sock) => match sock.local_addr() {
                        Ok(SocketAddr::V4(a)) => Some(kernel::KernelFlow {
                            client: a,
                            id: i as u32,
                        }),
                        _ => None,
                    },
                    Conn::Stream(_) => None,
                })
                .collect();
            Some(kernel::KernelLoad::prepare(
                iface, server, CHANNEL, size, &flows,
            )?)
        }
        _ => None,
    };
    let mut per_thread: Vec<Vec<Flow>> = (0..threads).map(|_| Vec::new()).collect();
    let mut per_thread_streams: Vec<Vec<StreamFlow>> = (0..threads).map(|_| Vec::new()).collect();
    let mut k = 0usize;
    for (i, c) in clients.iter_mut().enumerate() {
        let (None, Some(peer)) = (&c.failed, c.peer) else {
            continue;
        };
        let pad = !matches!(c.conn, Conn::Udp(_));
        let body = payload(size, i as u32, args.rtp);
        let (packet, payload_at) = packet(args.mode, peer, &body, i as u32, pad);
        match &mut c.conn {
            Conn::Udp(sock) => {
                sock.set_nonblocking(true)
                    .map_err(|e| format!("socket: {e}"))?;
                per_thread[k % threads].push(Flow {
                    sock,
                    packet,
                    payload_at,
                    rtp: args.rtp,
                    seq: std::cell::Cell::new(0),
                });
            }
            Conn::Stream(conn) => {
                per_thread_streams[k % threads].push(StreamFlow::new(conn, packet, payload_at));
            }
        }
        k += 1;
    }
    let burst = args.burst as usize;
    let start = Instant::now() + Duration::from_millis(50);
    let send_until = start + Duration::from_secs_f64(args.duration);
    let plan = Plan {
        epoch,
        start,
        send_until,
        drain_until: send_until + Duration::from_secs_f64(args.drain),
        rate_per_thread: args.rate as f64 / threads as f64,
        threads,
        burst,
        gso,
    };
    let server_cpu0 = pid.as_deref().and_then(sys::cpu_seconds);
    let tool_cpu0 = sys::cpu_seconds("self");
    let mut hist = Histogram::new();
    let (mut sent, mut received, mut send_errors) = (0u64, 0u64, 0u64);
    let (mut unsent, mut broken, mut bursts, mut gso_sends) = (0u64, 0u64, 0u64, 0u64);
    let mut window = None;
    let mut kernel_error = None;
    std::thread::scope(|s| {
        // The sending window's CPU time, sampled by a thread of its own at its two ends.
        let sampler = {
            let (plan, pid) = (&plan, pid.as_deref());
            s.spawn(move || {
                sleep_until(plan.start);
                let first = Window::sample(pid);
                sleep_until(plan.send_until);
                (first, Window::sample(pid), plan.send_until - plan.start)
            })
        };
        if let Some(k) = kernel_load.as_mut() {
            // The echo peers' sockets stay bound (the ports stay theirs); the program on
            // the interface answers for them.
            match k.run(
                args.rate as f64,
                plan.start,
                plan.send_until,
                plan.drain_until,
            ) {
                Ok(r) => {
                    sent = r.sent;
                    received = r.received;
                    shared.peer_received.store(r.echoed, Ordering::SeqCst);
                    hist = r.hist;
                }
                Err(e) => kernel_error = Some(e),
            }
            window = sampler.join().ok();
            return;
        }
        for sock in echoes.drain(..) {
            let (plan, shared) = (&plan, &shared);
            s.spawn(move || traffic::echo(sock, plan, shared));
        }
        let mut handles: Vec<_> = Vec::with_capacity(threads);
        for (flows, streams) in per_thread.into_iter().zip(per_thread_streams) {
            let (plan, shared) = (&plan, &shared);
            handles.push(if args.transport == Transport::Udp {
                s.spawn(move || traffic::run_thread(flows, plan, shared))
            } else {
                s.spawn(move || stream::run_thread(streams, plan, shared))
            });
        }
        for h in handles {
            if let Ok(r) = h.join() {
                sent += r.sent;
                received += r.received;
                send_errors += r.send_errors;
                unsent += r.unsent;
                broken += r.broken;
                bursts += r.bursts;
                gso_sends += r.gso_sends;
                hist.merge(&r.hist);
            }
        }
        window = sampler.join().ok();
    });
    let ended = Instant::now();
    // Detaches the program from the interface: the release below goes through sockets.
    drop(kernel_load);
    if let Some(e) = kernel_error {
        return Err(e);
    }
    let server_cpu = match (pid.as_deref().and_then(sys::cpu_seconds), server_cpu0) {
        (Some(b), Some(a)) => Some(b - a),
        _ => None,
    };
    let tool_cpu = match (sys::cpu_seconds("self"), tool_cpu0) {
        (Some(b), Some(a)) => b - a,
        _ => 0.0,
    };
    let peer_received = shared.peer_received.load(Ordering::SeqCst);
    let peer_gso_sends = shared.peer_gso_sends.load(Ordering::SeqCst);
    // GSO as it was in the end: off if the kernel refused it.
    let gso = gso && !shared.gso_refused.load(Ordering::SeqCst);

    // Release the allocations so the server can be reused for the next run.
    let release_deadline = Instant::now() + Duration::from_secs_f64(args.setup_timeout.min(30.0));
    for c in &mut clients {
        if let Conn::Udp(sock) = &c.conn {
            let _ = sock.set_nonblocking(false);
        }
        c.failed = None;
    }
    parallel_step(
        &mut clients,
        Step::Release,
        &creds,
        threads,
        release_deadline,
    );

    let secs = args.duration;
    let offered_pps = sent as f64 / secs;
    let delivered_pps = received as f64 / secs;
    let loss_pct = if sent > 0 {
        100.0 * (1.0 - received as f64 / sent as f64).max(0.0)
    } else {
        0.0
    };
    let relayed = match args.topology {
        Topology::Peer => peer_received + received,
        Topology::Pair => 2 * received,
    };
    let us = |ns: u64| ns as f64 / 1000.0;
    let (p50, p99, p999, max) = (
        us(hist.quantile(0.50)),
        us(hist.quantile(0.99)),
        us(hist.quantile(0.999)),
        us(hist.max()),
    );
    let requested = if args.rate == 0 {
        "flat out".to_owned()
    } else {
        format!("{} pps requested", args.rate)
    };
    println!(
        "offered: {requested}, {offered_pps:.0} pps sent ({sent} packets in {secs:.2} s, {send_errors} send errors)"
    );
    if args.transport != Transport::Udp {
        println!(
            "streams: {unsent} packets not sent (send queue of {} bytes full), {broken} connections failed",
            stream::MAX_PENDING
        );
    }
    println!(
        "shape: bursts of {burst} packets per allocation ({bursts} whole bursts sent), GSO {} \
         ({gso_sends} GSO messages sent, {peer_gso_sends} by the echo peers)",
        if gso { "on" } else { "off" }
    );
    println!("delivered: {delivered_pps:.0} pps ({received} packets), loss {loss_pct:.3} %");
    let kind = match args.topology {
        Topology::Peer => "round trip",
        Topology::Pair => "one way",
    };
    println!(
        "latency ({kind}, {} samples): p50 {p50:.1} us, p99 {p99:.1} us, p99.9 {p999:.1} us, max {max:.1} us",
        hist.count()
    );
    println!(
        "relayed: {relayed} packets through the server (peers received {peer_received}), {:.2} s from start to end of drain",
        (ended - start).as_secs_f64()
    );
    let cpu_per_m = server_cpu
        .filter(|_| relayed > 0)
        .map(|c| c / (relayed as f64 / 1e6));
    match (server_cpu, cpu_per_m) {
        (Some(c), Some(per)) => println!(
            "server cpu: {c:.2} s, {per:.3} s per million relayed packets ({:.2} us per packet)",
            per
        ),
        (Some(c), None) => println!("server cpu: {c:.2} s, nothing relayed"),
        _ => {}
    }
    println!("tool cpu: {tool_cpu:.2} s");
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    // The sending window: the whole machine's CPU time (all cores, softirq included) and
    // the tool's and server's own, from its start to its end.
    let (win_secs, sys_win, tool_win, tool_user_win, server_win) = match &window {
        Some((a, b, d)) => (
            Some(d.as_secs_f64()),
            b.system.zip(a.system).map(|(b, a)| b.since(&a)),
            b.tool.zip(a.tool).map(|(b, a)| (b.0 + b.1) - (a.0 + a.1)),
            b.tool.zip(a.tool).map(|(b, a)| b.0 - a.0),
            b.server.zip(a.server).map(|(b, a)| b - a),
        ),
        None => (None, None, None, None, None),
    };
    if let (Some(w), Some(c)) = (win_secs, sys_win) {
        println!(
            "system cpu (all {} cores, sending window of {w:.2} s): {:.2} s busy ({:.2} softirq, \
             {:.2} irq, {:.2} steal), the tool {} s ({} s user), the server {} s",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            c.busy,
            c.softirq,
            c.irq,
            c.steal,
            opt(tool_win),
            opt(tool_user_win),
            opt(server_win)
        );
    }
    println!(
        "RESULT allocations={n} ready={ready} transport={:?} mode={:?} topology={:?} size={size} rate={} \
         duration={secs:.3} sent={sent} received={received} peer_received={peer_received} \
         send_errors={send_errors} offered_pps={offered_pps:.0} delivered_pps={delivered_pps:.0} \
         loss_pct={loss_pct:.4} p50_us={p50:.1} p99_us={p99:.1} p999_us={p999:.1} max_us={max:.1} \
         relayed={relayed} server_cpu_s={} cpu_s_per_mpkt={} tool_cpu_s={tool_cpu:.3} setup_s={setup_secs:.3} \
         setup_server_cpu_s={} rss_kib_per_alloc={} unsent={unsent} broken={broken} \
         burst={burst} gso={} bursts={bursts} gso_sends={gso_sends} peer_gso_sends={peer_gso_sends} \
         window_s={} system_busy_s={} system_softirq_s={} system_irq_s={} system_steal_s={} \
         tool_window_cpu_s={} tool_window_user_s={} server_window_cpu_s={}",
        args.transport,
        args.mode,
        args.topology,
        args.rate,
        opt(server_cpu),
        opt(cpu_per_m),
        opt(setup_cpu),
        opt(rss_per_alloc),
        u8::from(gso),
        opt(win_secs),
        opt(sys_win.map(|c| c.busy)),
        opt(sys_win.map(|c| c.softirq)),
        opt(sys_win.map(|c| c.irq)),
        opt(sys_win.map(|c| c.steal)),
        opt(tool_win),
        opt(tool_user_win),
        opt(server_win),
    );
    Ok(())
}

/// Opens `n` stream clients (TCP, or TLS with `tls`), `threads` connecting at once.
fn connect_streams(
    server: SocketAddr,
    tls: Option<&TlsSetup>,
    n: usize,
    threads: usize,
) -> Result<Vec<Client>, String> {
    let chunk = n.div_ceil(threads).max(1);
    let ids: Vec<usize> = (0..n).collect();
    let parts: Vec<Result<Vec<Client>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&i| {
                            let conn = StreamConn::connect(server, tls)?;
                            Ok(Client::new(Conn::Stream(Box::new(conn)), i as u32))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("connecting thread panicked".to_owned()))
            })
            .collect()
    });
    let mut clients = Vec::with_capacity(n);
    for p in parts {
        clients.extend(p?);
    }
    Ok(clients)
}
