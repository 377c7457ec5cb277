//! `turnd probe`: checks a TURN server from the outside, any server (turnd, coturn, ...), the
//! way a WebRTC client uses it. It resolves the URI's host, connects (UDP, TCP or TLS) and
//! asks a Binding, makes two allocations of its own on two connections, has each permit the
//! other's relayed address (CreatePermission), sends a Send indication each way, binds a
//! channel each way (ChannelBind), relays `--count` ChannelData round trips from one
//! allocation to the other and back, measuring RTT and loss, and deletes both allocations.
//!
//! It prints each step as it ends (or one JSON object with `--json`) and exits with a code
//! monitoring can act on ([`Outcome`]). Every wait is bounded by `--timeout`; requests over
//! UDP are retransmitted as RFC 8489 §6.2.1 says ([`client`]).

pub mod client;
pub mod conn;
pub mod uri;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use serde::Serialize;

use crate::cli::ProbeArgs;
use crate::stun::{MessageWriter, attr, method};
use client::{Client, Credential, Relayed, TxError, failure};
use conn::{Conn, Trust};
use uri::{Transport, TurnUri};

/// The probe's result, and its exit code. Codes are stable: monitoring checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// 0: every step worked and the loss is within `--max-loss`.
    Ok,
    /// 2: the command line is wrong (bad URI, missing credential, unreadable `--ca`).
    Usage,
    /// 3: the server could not be reached or stopped answering: the name does not resolve,
    /// the connection is refused or times out, the TLS handshake fails (certificate), no
    /// answer to a request.
    Connectivity,
    /// 4: the server refused the credential (401 or 438 to a signed request) or its answer
    /// fails our MESSAGE-INTEGRITY check.
    Auth,
    /// 5: the server answered but does not relay: Allocate, CreatePermission or ChannelBind
    /// refused (403 peer policy, 486 quota, 508 capacity, ...), or no data came through.
    Relay,
    /// 6: data came through but more than `--max-loss` percent of the round trips were lost.
    Loss,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Usage => 2,
            Outcome::Connectivity => 3,
            Outcome::Auth => 4,
            Outcome::Relay => 5,
            Outcome::Loss => 6,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Usage => "usage error",
            Outcome::Connectivity => "connectivity failure",
            Outcome::Auth => "authentication failure",
            Outcome::Relay => "relay failure",
            Outcome::Loss => "loss above --max-loss",
        }
    }
}

/// A step that failed, what that means, and why.
#[derive(Debug)]
pub struct Failure {
    pub outcome: Outcome,
    pub step: &'static str,
    pub message: String,
    /// Already recorded as the failed step (before the allocations were released).
    recorded: bool,
}

impl Failure {
    pub fn new(outcome: Outcome, step: &str, message: String) -> Failure {
        Failure {
            outcome,
            step: step_name(step),
            message,
            recorded: false,
        }
    }
}

/// The steps' names, as printed and in the JSON.
const STEPS: [&str; 9] = [
    "setup",
    "resolve",
    "connect",
    "allocate",
    "permission",
    "send-indication",
    "channel-bind",
    "relay",
    "release",
];

fn step_name(step: &str) -> &'static str {
    STEPS
        .iter()
        .find(|s| **s == step)
        .copied()
        .unwrap_or("setup")
}

/// What an I/O error means, in words an operator acts on.
pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => {
            "connection refused (nothing listens on that port, or a firewall rejects it)".to_owned()
        }
        ConnectionReset => "the connection was reset".to_owned(),
        TimedOut | WouldBlock => "timed out".to_owned(),
        HostUnreachable | NetworkUnreachable => format!("unreachable: {e}"),
        InvalidData if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
            format!("TLS: {e}")
        }
        _ => e.to_string(),
    }
}

#[derive(Serialize)]
struct Step {
    step: &'static str,
    ok: bool,
    detail: String,
    ms: f64,
}

#[derive(Serialize)]
struct Rtt {
    min: f64,
    avg: f64,
    max: f64,
}

#[derive(Serialize)]
struct RelayStats {
    /// Round trips started.
    sent: u32,
    /// Packets that reached the second allocation (first direction).
    forward: u32,
    /// Round trips completed (both directions).
    received: u32,
    loss_percent: f64,
    rtt_ms: Option<Rtt>,
}

#[derive(Serialize)]
struct Report {
    uri: String,
    transport: &'static str,
    server: Option<String>,
    realm: Option<String>,
    outcome: Outcome,
    exit_code: u8,
    error: Option<String>,
    steps: Vec<Step>,
    relay: Option<RelayStats>,
}

/// The steps so far, printed as they end unless the report is JSON.
struct Run {
    report: Report,
    json: bool,
    started: Instant,
}

impl Run {
    fn step(&mut self, step: &'static str, ok: bool, detail: String) {
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.started = Instant::now();
        if !self.json {
            let mark = if ok { "ok  " } else { "FAIL" };
            println!("{mark} {step:<16} {detail} ({ms:.1} ms)");
            let _ = std::io::stdout().flush();
        }
        self.report.steps.push(Step {
            step,
            ok,
            detail,
            ms: (ms * 1000.0).round() / 1000.0,
        });
    }
}

/// Runs `turnd probe` and returns its exit code.
pub fn run(args: &ProbeArgs) -> ExitCode {
    let uri = match uri::parse(&args.uri) {
        Ok(u) => u,
        Err(e) => return usage(args, &e),
    };
    let mut run = Run {
        report: Report {
            uri: uri.to_string(),
            transport: uri.transport.as_str(),
            server: None,
            realm: None,
            outcome: Outcome::Ok,
            exit_code: 0,
            error: None,
            steps: Vec::new(),
            relay: None,
        },
        json: args.json,
        started: Instant::now(),
    };
    if !args.json {
        println!("turnd probe {uri}");
    }
    let result = probe(&mut run, args, &uri);
    finish(run, result)
}

/// A usage error before the URI could even be parsed.
fn usage(args: &ProbeArgs, message: &str) -> ExitCode {
    let run = Run {
        report: Report {
            uri: args.uri.clone(),
            transport: "",
            server: None,
            realm: None,
            outcome: Outcome::Usage,
            exit_code: Outcome::Usage.code(),
            error: None,
            steps: Vec::new(),
            relay: None,
        },
        json: args.json,
        started: Instant::now(),
    };
    finish(
        run,
        Err(Failure::new(Outcome::Usage, "setup", message.to_owned())),
    )
}

fn finish(mut run: Run, result: Result<(), Failure>) -> ExitCode {
    let outcome = match result {
        Ok(()) => run.report.outcome,
        Err(f) => {
            if !f.recorded {
                run.step(f.step, false, f.message.clone());
            }
            run.report.error = Some(f.message);
            f.outcome
        }
    };
    run.report.outcome = outcome;
    run.report.exit_code = outcome.code();
    if run.json {
        match serde_json::to_string_pretty(&run.report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("turnd probe: {e}"),
        }
    } else {
        match &run.report.error {
            Some(e) => println!(
                "result: {} (exit {}): {e}",
                outcome.describe(),
                outcome.code()
            ),
            None => println!("result: ok (exit 0)"),
        }
    }
    ExitCode::from(outcome.code())
}

/// The credential from the flags (or the environment): a static user and password, or a
/// REST credential minted from the shared secret.
fn credential(args: &ProbeArgs, unix_now: u64) -> Result<Credential, Failure> {
    let bad = |m: &str| Failure::new(Outcome::Usage, "setup", m.to_owned());
    let password = args
        .password
        .clone()
        .or_else(|| std::env::var("TURND_PROBE_PASSWORD").ok());
    let secret = args
        .secret
        .clone()
        .or_else(|| std::env::var("TURND_PROBE_SECRET").ok());
    match (password, secret) {
        (Some(_), Some(_)) => Err(bad(
            "give either --password or --secret (or their environment variables), not both",
        )),
        (Some(password), None) => {
            let username = args
                .user
                .clone()
                .ok_or_else(|| bad("--password needs --user"))?;
            Ok(Credential { username, password })
        }
        (None, Some(secret)) => {
            let user = args.user.as_deref().unwrap_or("probe");
            let (username, password) = crate::auth::mint_rest_credential(
                &secret,
                user,
                unix_now,
                args.ttl,
                args.separator,
            );
            Ok(Credential { username, password })
        }
        (None, None) => Err(bad(
            "no credential: give --user and --password, or --secret (TURND_PROBE_PASSWORD or \
             TURND_PROBE_SECRET in the environment also do)",
        )),
    }
}

fn probe(run: &mut Run, args: &ProbeArgs, uri: &TurnUri) -> Result<(), Failure> {
    let unix_now = crate::net::now().unix;
    let cred = credential(args, unix_now)?;
    let tls = if uri.transport == Transport::Tls {
        let trust = match (&args.ca, args.insecure) {
            (Some(_), true) => {
                return Err(Failure::new(
                    Outcome::Usage,
                    "setup",
                    "give --ca or --insecure, not both".to_owned(),
                ));
            }
            (Some(path), false) => Trust::CaFile(path),
            (None, true) => Trust::Insecure,
            (None, false) => Trust::System,
        };
        let cfg = conn::tls_config(trust).map_err(|e| Failure::new(Outcome::Usage, "setup", e))?;
        let name = ServerName::try_from(uri.host.clone()).map_err(|e| {
            Failure::new(
                Outcome::Usage,
                "setup",
                format!(
                    "{:?} cannot be checked against a certificate: {e}",
                    uri.host
                ),
            )
        })?;
        Some((cfg, name))
    } else {
        if args.ca.is_some() || args.insecure {
            return Err(Failure::new(
                Outcome::Usage,
                "setup",
                "--ca and --insecure are for turns: URIs".to_owned(),
            ));
        }
        None
    };
    let tls_ref = tls.as_ref().map(|(c, n)| (c, n));
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    run.started = Instant::now();

    // Resolve.
    let addrs = resolve(uri, deadline)?;
    let shown: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    run.step("resolve", true, shown.join(", "));

    // Connect and ask a Binding, trying each address in turn.
    let mut last: Option<Failure> = None;
    let mut first: Option<(Client, SocketAddr)> = None;
    for (i, &addr) in addrs.iter().enumerate() {
        // An address that swallows packets must leave time for the next ones: all but the
        // last get at most half of what is left, and 5 s.
        let attempt_deadline = if i + 1 < addrs.len() {
            let half = deadline.saturating_duration_since(Instant::now()) / 2;
            (Instant::now() + half.min(Duration::from_secs(5))).min(deadline)
        } else {
            deadline
        };
        match reach(uri.transport, addr, attempt_deadline, tls_ref, &cred) {
            Ok((client, detail, mapped)) => {
                run.step("connect", true, detail);
                first = Some((client, mapped));
                break;
            }
            Err(f) => {
                // With several addresses each failure is shown as it happens.
                last = Some(if addrs.len() > 1 { record(run, f) } else { f });
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let Some((mut a, _)) = first else {
        return Err(last.unwrap_or_else(|| {
            Failure::new(
                Outcome::Connectivity,
                "connect",
                "no address to connect to".to_owned(),
            )
        }));
    };
    let server = a.conn.server;
    run.report.server = Some(server.to_string());

    // Two allocations.
    // Over IPv6, ask for an IPv6 relayed address unless told otherwise (without the
    // attribute a server allocates IPv4, RFC 8656 §7.1); over IPv4, ask nothing.
    let family = args.family.or(server.is_ipv6().then_some(6));
    let relay_a = allocate(&mut a, family, deadline, "A")?;
    run.report.realm = a.realm().map(str::to_owned);
    run.step("allocate", true, relay_a.detail.clone());
    let conn_b = Conn::open(uri.transport, server, deadline, tls_ref).map_err(|e| {
        Failure::new(
            Outcome::Connectivity,
            "connect",
            format!("second connection to {server}: {}", io_reason(&e)),
        )
    })?;
    let mut b = Client::new(conn_b, cred.clone());
    let relay_b = match allocate(&mut b, family, deadline, "B") {
        Ok(r) => r,
        Err(f) => {
            let f = record(run, f);
            release(run, &mut [&mut a]);
            return Err(f);
        }
    };
    run.step("allocate", true, relay_b.detail.clone());
    let (ra, rb) = (relay_a.relayed, relay_b.relayed);

    let result =
        relay_between(run, args, &mut a, &mut b, ra, rb, deadline).map_err(|f| record(run, f));
    release(run, &mut [&mut a, &mut b]);
    result
}

/// Records the failed step now, so that it is printed before the release that follows it.
fn record(run: &mut Run, mut f: Failure) -> Failure {
    if !f.recorded {
        run.step(f.step, false, f.message.clone());
        f.recorded = true;
    }
    f
}

/// Resolves the URI's host (bounded by the deadline: the resolver runs on a thread of its own
/// that is left behind if it hangs).
fn resolve(uri: &TurnUri, deadline: Instant) -> Result<Vec<SocketAddr>, Failure> {
    if let Some(ip) = uri.ip() {
        return Ok(vec![SocketAddr::new(ip, uri.port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (host, port) = (uri.host.clone(), uri.port);
    std::thread::spawn(move || {
        let _ = tx.send(
            (host.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>()),
        );
    });
    let wait = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(wait) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(Failure::new(
            Outcome::Connectivity,
            "resolve",
            format!("{} has no address", uri.host),
        )),
        Ok(Err(e)) => Err(Failure::new(
            Outcome::Connectivity,
            "resolve",
            format!("{} does not resolve: {e}", uri.host),
        )),
        Err(_) => Err(Failure::new(
            Outcome::Connectivity,
            "resolve",
            format!("resolving {} timed out", uri.host),
        )),
    }
}

/// Opens the first connection to `addr` and asks a Binding (RFC 8489 §3): the server
/// answers STUN there. Returns the client, the step's words and the reflexive address.
fn reach(
    transport: Transport,
    addr: SocketAddr,
    deadline: Instant,
    tls: Option<(&Arc<rustls::ClientConfig>, &ServerName<'static>)>,
    cred: &Credential,
) -> Result<(Client, String, SocketAddr), Failure> {
    let conn = Conn::open(transport, addr, deadline, tls).map_err(|e| {
        Failure::new(
            Outcome::Connectivity,
            "connect",
            format!("{} {addr}: {}", transport.as_str(), io_reason(&e)),
        )
    })?;
    let tls_words = conn.tls_summary();
    let local = conn.local;
    let mut client = Client::new(conn, cred.clone());
    let answer = client
        .unsigned(method::BINDING, &|_| {}, deadline)
        .map_err(|e| {
            failure(
                "connect",
                &format!("Binding to {} {addr}", transport.as_str()),
                e,
                Outcome::Connectivity,
            )
        })?;
    let mapped = answer
        .xor_address(attr::XOR_MAPPED_ADDRESS)
        .or_else(|| {
            let m = answer.message()?;
            crate::stun::decode_address(m.get(attr::MAPPED_ADDRESS)?)
        })
        .ok_or_else(|| {
            Failure::new(
                Outcome::Connectivity,
                "connect",
                format!("the Binding answer from {addr} has no mapped address"),
            )
        })?;
    let mut detail = format!(
        "{} {addr} from {local}; Binding: reflexive address {mapped}",
        transport.as_str()
    );
    if let Some(t) = tls_words {
        detail = format!("{detail}; {t}");
    }
    Ok((client, detail, mapped))
}

struct Allocation {
    relayed: SocketAddr,
    detail: String,
}

fn allocate(
    c: &mut Client,
    family: Option<u8>,
    deadline: Instant,
    name: &str,
) -> Result<Allocation, Failure> {
    let attrs = |w: &mut MessageWriter| {
        // REQUESTED-TRANSPORT: UDP (RFC 8656 §18.11), then RFFU zeros.
        w.attr(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0]);
        if let Some(f) = family {
            let v = if f == 6 {
                attr::FAMILY_IPV6
            } else {
                attr::FAMILY_IPV4
            };
            w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[v, 0, 0, 0]);
        }
    };
    let what = format!("Allocate {name}");
    let r = c
        .request(method::ALLOCATE, &attrs, deadline)
        .map_err(|e| failure("allocate", &what, e, Outcome::Relay))?;
    let relayed = r.xor_address(attr::XOR_RELAYED_ADDRESS).ok_or_else(|| {
        Failure::new(
            Outcome::Relay,
            "allocate",
            format!("{what}: the success response has no XOR-RELAYED-ADDRESS"),
        )
    })?;
    let mut detail = format!("{name}: relayed address {relayed}");
    if let Some(m) = r.xor_address(attr::XOR_MAPPED_ADDRESS) {
        detail.push_str(&format!(", reflexive {m}"));
    }
    if let Some(l) = r.u32_attr(attr::LIFETIME) {
        detail.push_str(&format!(", lifetime {l} s"));
    }
    if let Some(realm) = c.realm() {
        detail.push_str(&format!(", realm {realm:?}"));
    }
    Ok(Allocation { relayed, detail })
}

/// Channel numbers the two allocations bind, distinct so that either side's traffic is
/// recognisable (RFC 8656 §12: 0x4000-0x4FFF).
const CHANNEL_A: u16 = 0x4000;
const CHANNEL_B: u16 = 0x4001;
/// How long one relayed packet may take to arrive before it counts as lost.
const PACKET_WAIT: Duration = Duration::from_secs(1);
/// Marks the probe's payloads: "turnd probe".
const MAGIC: &[u8; 8] = b"TRNDPRB1";

/// Permissions, a Send indication each way, channels, then the round trips.
fn relay_between(
    run: &mut Run,
    args: &ProbeArgs,
    a: &mut Client,
    b: &mut Client,
    ra: SocketAddr,
    rb: SocketAddr,
    deadline: Instant,
) -> Result<(), Failure> {
    // CreatePermission for the other side's relayed IP, on each allocation.
    let perm = |peer: SocketAddr| {
        move |w: &mut MessageWriter| {
            w.xor_address(attr::XOR_PEER_ADDRESS, peer);
        }
    };
    a.request(method::CREATE_PERMISSION, &perm(rb), deadline)
        .map_err(|e| {
            failure(
                "permission",
                &format!("CreatePermission on A for {}", rb.ip()),
                e,
                Outcome::Relay,
            )
        })?;
    b.request(method::CREATE_PERMISSION, &perm(ra), deadline)
        .map_err(|e| {
            failure(
                "permission",
                &format!("CreatePermission on B for {}", ra.ip()),
                e,
                Outcome::Relay,
            )
        })?;
    run.step(
        "permission",
        true,
        format!("A permits {}, B permits {}", rb.ip(), ra.ip()),
    );

    // One Send indication each way, arriving as a Data indication from the other relay.
    let mut run_id = [0u8; 8];
    let _ = getrandom::fill(&mut run_id);
    let size = args.size;
    let mut payload = vec![0u8; size];
    let token = u32::MAX;
    for reverse in [false, true] {
        let (from, to, from_relay, to_relay, label) = if reverse {
            (&mut *b, &mut *a, rb, ra, "B→A")
        } else {
            (&mut *a, &mut *b, ra, rb, "A→B")
        };
        // Small, so that a bandwidth limit leaves room for the round trips.
        let mut small = [0u8; 24];
        fill(&mut small, &run_id, token, 0);
        let mut arrived = false;
        for _ in 0..3 {
            from.send_indication(to_relay, &small).map_err(|e| {
                Failure::new(
                    Outcome::Connectivity,
                    "send-indication",
                    format!("Send indication {label}: {}", io_reason(&e)),
                )
            })?;
            let until = (Instant::now() + PACKET_WAIT).min(deadline);
            arrived = to
                .recv_relayed(until, &mut |r| match r {
                    Relayed::Indication(peer, data) => {
                        peer == from_relay && is_ours(data, &run_id, token, 0)
                    }
                    Relayed::Channel(..) => false,
                })
                .map_err(|e| {
                    Failure::new(
                        Outcome::Connectivity,
                        "send-indication",
                        format!("waiting for the Data indication {label}: {}", io_reason(&e)),
                    )
                })?;
            if arrived || Instant::now() >= deadline {
                break;
            }
        }
        if !arrived {
            return Err(Failure::new(
                Outcome::Relay,
                "send-indication",
                format!(
                    "a Send indication {label} ({from_relay} to {to_relay}) never arrived as a \
                     Data indication: the server does not relay between its allocations"
                ),
            ));
        }
    }
    run.step(
        "send-indication",
        true,
        "A→B and B→A each arrived as a Data indication from the other relayed address".to_owned(),
    );

    // Channels: A's CHANNEL_A leads to B's relay, B's CHANNEL_B to A's.
    let bind = |channel: u16, peer: SocketAddr| {
        move |w: &mut MessageWriter| {
            w.attr(
                attr::CHANNEL_NUMBER,
                &[(channel >> 8) as u8, channel as u8, 0, 0],
            )
            .xor_address(attr::XOR_PEER_ADDRESS, peer);
        }
    };
    a.request(method::CHANNEL_BIND, &bind(CHANNEL_A, rb), deadline)
        .map_err(|e| {
            failure(
                "channel-bind",
                &format!("ChannelBind 0x{CHANNEL_A:04X} on A to {rb}"),
                e,
                Outcome::Relay,
            )
        })?;
    b.request(method::CHANNEL_BIND, &bind(CHANNEL_B, ra), deadline)
        .map_err(|e| {
            failure(
                "channel-bind",
                &format!("ChannelBind 0x{CHANNEL_B:04X} on B to {ra}"),
                e,
                Outcome::Relay,
            )
        })?;
    run.step(
        "channel-bind",
        true,
        format!("A 0x{CHANNEL_A:04X} → {rb}, B 0x{CHANNEL_B:04X} → {ra}"),
    );

    // Round trips: A → B on A's channel, B echoes on its own channel.
    let io_fail = |what: &str, e: std::io::Error| {
        Failure::new(
            Outcome::Connectivity,
            "relay",
            format!("{what}: {}", io_reason(&e)),
        )
    };
    let (mut sent, mut forward, mut received) = (0u32, 0u32, 0u32);
    let mut rtts: Vec<f64> = Vec::with_capacity(args.count as usize);
    let mut out_of_time = false;
    for seq in 0..args.count {
        if Instant::now() >= deadline {
            out_of_time = true;
            break;
        }
        sent += 1;
        fill(&mut payload, &run_id, seq, 0);
        let t0 = Instant::now();
        a.send_channel_data(CHANNEL_A, &payload)
            .map_err(|e| io_fail("ChannelData A→B", e))?;
        let until = (Instant::now() + PACKET_WAIT).min(deadline);
        let there = b
            .recv_relayed(until, &mut |r| match r {
                Relayed::Channel(ch, data) => ch == CHANNEL_B && is_ours(data, &run_id, seq, 0),
                Relayed::Indication(..) => false,
            })
            .map_err(|e| io_fail("waiting on B", e))?;
        if !there {
            continue;
        }
        forward += 1;
        fill(&mut payload, &run_id, seq, 1);
        b.send_channel_data(CHANNEL_B, &payload)
            .map_err(|e| io_fail("ChannelData B→A", e))?;
        let until = (Instant::now() + PACKET_WAIT).min(deadline);
        let back = a
            .recv_relayed(until, &mut |r| match r {
                Relayed::Channel(ch, data) => ch == CHANNEL_A && is_ours(data, &run_id, seq, 1),
                Relayed::Indication(..) => false,
            })
            .map_err(|e| io_fail("waiting on A", e))?;
        if back {
            received += 1;
            rtts.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let loss = if sent == 0 {
        100.0
    } else {
        100.0 * f64::from(sent - received) / f64::from(sent)
    };
    let rtt = (!rtts.is_empty()).then(|| {
        let min = rtts.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rtts.iter().copied().fold(0.0, f64::max);
        let avg = rtts.iter().sum::<f64>() / rtts.len() as f64;
        let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
        Rtt {
            min: r3(min),
            avg: r3(avg),
            max: r3(max),
        }
    });
    let mut detail = format!(
        "{received}/{sent} round trips of {size} bytes (A→B {forward}/{sent}, B→A \
         {received}/{forward}), loss {loss:.1}%"
    );
    if let Some(r) = &rtt {
        detail.push_str(&format!(
            ", RTT min/avg/max {:.3}/{:.3}/{:.3} ms",
            r.min, r.avg, r.max
        ));
    }
    if out_of_time {
        detail.push_str(&format!(
            "; --timeout ran out after {sent} of {}",
            args.count
        ));
    }
    run.report.relay = Some(RelayStats {
        sent,
        forward,
        received,
        loss_percent: (loss * 1000.0).round() / 1000.0,
        rtt_ms: rtt,
    });
    if received == 0 {
        let why = if forward == 0 {
            "no ChannelData from A reached B"
        } else {
            "ChannelData reached B but none came back to A"
        };
        return Err(Failure::new(
            Outcome::Relay,
            "relay",
            format!("{detail}: {why}"),
        ));
    }
    if loss > args.max_loss {
        run.step("relay", false, detail);
        let mut f = Failure::new(
            Outcome::Loss,
            "relay",
            format!("loss {loss:.1}% is above --max-loss {}%", args.max_loss),
        );
        f.recorded = true;
        return Err(f);
    }
    run.step("relay", true, detail);
    Ok(())
}

/// Writes the probe's payload: magic, run id, sequence number, direction, zeros.
fn fill(buf: &mut [u8], run_id: &[u8; 8], seq: u32, dir: u8) {
    buf.fill(0);
    buf[..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(run_id);
    buf[16..20].copy_from_slice(&seq.to_be_bytes());
    buf[20] = dir;
}

fn is_ours(data: &[u8], run_id: &[u8; 8], seq: u32, dir: u8) -> bool {
    data.len() >= 21
        && &data[..8] == MAGIC
        && &data[8..16] == run_id
        && data[16..20] == seq.to_be_bytes()
        && data[20] == dir
}

/// Deletes the allocations (Refresh with LIFETIME 0, RFC 8656 §7.3); a second or so at most,
/// whatever the deadline. A failure here is reported but does not change the outcome.
fn release(run: &mut Run, clients: &mut [&mut Client]) {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let name = if i == 0 { "A" } else { "B" };
        let until = Instant::now() + Duration::from_millis(1500);
        match c.request(
            method::REFRESH,
            &|w: &mut MessageWriter| {
                w.u32_attr(attr::LIFETIME, 0);
            },
            until,
        ) {
            Ok(_) => done.push(name),
            Err(TxError::Code(code, reason)) => failed.push(format!("{name}: {code} {reason}")),
            Err(TxError::NoAnswer) => failed.push(format!("{name}: no answer")),
            Err(TxError::Io(e)) => failed.push(format!("{name}: {}", io_reason(&e))),
            Err(TxError::BadIntegrity) => failed.push(format!("{name}: bad integrity")),
        }
    }
    if failed.is_empty() {
        run.step("release", true, format!("deleted {}", done.join(" and ")));
    } else {
        // Not a failure of the server's relaying: the allocations expire on their own.
        let detail = format!(
            "not confirmed ({}); the allocations expire by themselves",
            failed.join("; ")
        );
        run.step("release", true, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_stable() {
        let all = [
            Outcome::Ok,
            Outcome::Usage,
            Outcome::Connectivity,
            Outcome::Auth,
            Outcome::Relay,
            Outcome::Loss,
        ];
        let codes: Vec<u8> = all.iter().map(|o| o.code()).collect();
        assert_eq!(codes, [0, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn payloads_are_recognised_exactly() {
        let id = [9u8; 8];
        let mut buf = vec![0u8; 40];
        fill(&mut buf, &id, 7, 1);
        assert!(is_ours(&buf, &id, 7, 1));
        assert!(!is_ours(&buf, &id, 7, 0));
        assert!(!is_ours(&buf, &id, 8, 1));
        assert!(!is_ours(&buf, &[8u8; 8], 7, 1));
        assert!(!is_ours(&buf[..20], &id, 7, 1));
    }

    #[test]
    fn io_reasons_name_a_refused_port() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(io_reason(&e).contains("refused"));
    }
}
