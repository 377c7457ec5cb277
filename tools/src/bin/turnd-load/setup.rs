//! The control side of the load: Allocate, CreatePermission / ChannelBind and the final
//! Refresh(0), with the long-term credential mechanism (RFC 8489 §9.2), pipelined over many
//! client sockets in windows so 10,000 allocations set up in a few round trips. Over TCP
//! and TLS (one connection per client) the same requests go one per connection at a time,
//! the connections of a window in parallel; a stream needs no retransmission.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use turnd::auth::{Key, PasswordAlgorithm, long_term_key};
use turnd::stun::{Class, Message, MessageWriter, attr, method};

use crate::stream::StreamConn;

/// Requests in flight per thread before waiting for answers.
const WINDOW: usize = 128;
/// Transmissions of one request before the allocation counts as failed.
const MAX_ATTEMPTS: u32 = 7;
/// How long a window waits for answers after its first transmission; doubled after each
/// retransmission up to [`MAX_ANSWER_WAIT`] (RFC 8489 §6.2.1 backs off the same way), so
/// 7 transmissions span about 10 s.
const ANSWER_WAIT: Duration = Duration::from_millis(250);
const MAX_ANSWER_WAIT: Duration = Duration::from_secs(2);
/// The wait for one more socket once the window's wait is over.
const POLL_WAIT: Duration = Duration::from_millis(1);

/// The username and password the tool presents (a static user or a REST credential).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// How a client reaches the server.
pub enum Conn {
    /// A UDP socket connected to the server.
    Udp(UdpSocket),
    /// A TCP or TLS connection (non-blocking).
    Stream(Box<StreamConn>),
}

/// One client: its connection to the server, what the server told it, and its peer.
pub struct Client {
    pub conn: Conn,
    pub nonce: Option<Vec<u8>>,
    pub realm: Option<String>,
    key: Option<Key>,
    pub relay: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// Why setup failed, if it did.
    pub failed: Option<String>,
    txid_seq: u32,
    id: u32,
}

/// What one step asks of the server.
#[derive(Clone, Copy)]
pub enum Step {
    Allocate,
    /// CreatePermission for the client's peer (Send mode).
    Permission,
    /// ChannelBind of `channel` to the client's peer (channel mode).
    Channel(u16),
    /// Refresh with LIFETIME 0: deallocate.
    Release,
}

impl Client {
    pub fn new(conn: Conn, id: u32) -> Client {
        Client {
            conn,
            nonce: None,
            realm: None,
            key: None,
            relay: None,
            peer: None,
            failed: None,
            txid_seq: 0,
            id,
        }
    }

    fn next_txid(&mut self) -> [u8; 12] {
        self.txid_seq = self.txid_seq.wrapping_add(1);
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&self.id.to_be_bytes());
        t[4..8].copy_from_slice(&self.txid_seq.to_be_bytes());
        t[8..].copy_from_slice(&std::process::id().to_be_bytes());
        t
    }

    /// Encodes the request for `step` (authenticated once a nonce is known) into `buf`.
    fn build(&mut self, step: Step, creds: &Credentials, buf: &mut Vec<u8>) -> [u8; 12] {
        let txid = self.next_txid();
        let m = match step {
            Step::Allocate => method::ALLOCATE,
            Step::Permission => method::CREATE_PERMISSION,
            Step::Channel(_) => method::CHANNEL_BIND,
            Step::Release => method::REFRESH,
        };
        let mut w = MessageWriter::new(buf, m, Class::Request, txid);
        match step {
            Step::Allocate => {
                w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            }
            Step::Permission => {
                if let Some(p) = self.peer {
                    w.xor_address(attr::XOR_PEER_ADDRESS, p);
                }
            }
            Step::Channel(ch) => {
                let c = ch.to_be_bytes();
                w.attr(attr::CHANNEL_NUMBER, &[c[0], c[1], 0, 0]);
                if let Some(p) = self.peer {
                    w.xor_address(attr::XOR_PEER_ADDRESS, p);
                }
            }
            Step::Release => {
                w.u32_attr(attr::LIFETIME, 0);
            }
        }
        if let (Some(nonce), Some(realm)) = (&self.nonce, &self.realm) {
            let key = self.key.get_or_insert_with(|| {
                long_term_key(
                    PasswordAlgorithm::Md5,
                    &creds.username,
                    realm,
                    &creds.password,
                )
            });
            w.attr(attr::USERNAME, creds.username.as_bytes())
                .attr(attr::REALM, realm.as_bytes())
                .attr(attr::NONCE, nonce)
                .integrity(key.as_bytes());
        }
        w.fingerprint();
        txid
    }

    /// Handles the answer to `txid`: `Some(true)` done, `Some(false)` send again (new nonce),
    /// `None` not the answer (stale or unrelated datagram). Failures are recorded in
    /// `self.failed` and count as done.
    fn handle(&mut self, step: Step, txid: [u8; 12], datagram: &[u8]) -> Option<bool> {
        let msg = Message::parse(datagram).ok()?;
        if msg.transaction_id() != txid {
            return None;
        }
        match msg.class() {
            Class::Success => {
                if let Step::Allocate = step {
                    match msg.xor_address(attr::XOR_RELAYED_ADDRESS) {
                        Some(Ok(a)) => self.relay = Some(a),
                        _ => {
                            self.failed = Some("Allocate success without a relayed address".into())
                        }
                    }
                }
                Some(true)
            }
            Class::Error => {
                let code = msg
                    .get(attr::ERROR_CODE)
                    .filter(|v| v.len() >= 4)
                    .map(|v| u16::from(v[2] & 7) * 100 + u16::from(v[3]))
                    .unwrap_or(0);
                let nonce = msg.get(attr::NONCE);
                let fresh_challenge = (code == 401 && self.key.is_none()) || code == 438;
                if fresh_challenge && let Some(n) = nonce {
                    self.nonce = Some(n.to_vec());
                    if let Some(r) = msg.get(attr::REALM) {
                        let realm = String::from_utf8_lossy(r).into_owned();
                        if self.realm.as_deref() != Some(realm.as_str()) {
                            self.key = None;
                        }
                        self.realm = Some(realm);
                    }
                    return Some(false);
                }
                // A Refresh(0) after the allocation already went is fine (437).
                if matches!(step, Step::Release) && code == 437 {
                    return Some(true);
                }
                self.failed = Some(format!("{} error {code}", step_name(step)));
                Some(true)
            }
            _ => None,
        }
    }
}

pub fn step_name(step: Step) -> &'static str {
    match step {
        Step::Allocate => "Allocate",
        Step::Permission => "CreatePermission",
        Step::Channel(_) => "ChannelBind",
        Step::Release => "Refresh",
    }
}

/// Runs `step` for every client that has not failed, `WINDOW` at a time, retransmitting
/// lost requests; stops at `deadline` (the clients still pending then count as failed).
pub fn run_step(clients: &mut [Client], step: Step, creds: &Credentials, deadline: Instant) {
    if clients
        .first()
        .is_some_and(|c| matches!(c.conn, Conn::Stream(_)))
    {
        return run_step_stream(clients, step, creds, deadline);
    }
    let mut buf = Vec::with_capacity(512);
    let mut rx = vec![0u8; 2048];
    let live: Vec<usize> = (0..clients.len())
        .filter(|&i| clients[i].failed.is_none())
        .filter(|&i| !matches!(step, Step::Release) || clients[i].relay.is_some())
        .collect();
    for window in live.chunks(WINDOW) {
        // (client index, txid, transmissions, done); the request bytes, kept so a
        // retransmission is the same message with the same transaction id (RFC 8489 §6.2.1).
        let mut pending: Vec<(usize, [u8; 12], u32, bool)> =
            window.iter().map(|&i| (i, [0; 12], 0, false)).collect();
        let mut requests: Vec<Vec<u8>> = vec![Vec::new(); pending.len()];
        let mut resend: Vec<usize> = (0..pending.len()).collect();
        let mut wait = ANSWER_WAIT;
        while !resend.is_empty() {
            if Instant::now() >= deadline {
                for &p in &resend {
                    let c = &mut clients[pending[p].0];
                    c.failed = Some(format!("{} timed out (setup deadline)", step_name(step)));
                }
                break;
            }
            for &p in &resend {
                let (ci, ..) = pending[p];
                let c = &mut clients[ci];
                if pending[p].2 >= MAX_ATTEMPTS {
                    c.failed = Some(format!("{} unanswered", step_name(step)));
                    pending[p].3 = true;
                    continue;
                }
                if requests[p].is_empty() {
                    pending[p].1 = c.build(step, creds, &mut buf);
                    requests[p].clone_from(&buf);
                }
                pending[p].2 += 1;
                // A failed send is a lost request: the retransmission covers it.
                if let Conn::Udp(sock) = &c.conn {
                    let _ = sock.send(&requests[p]);
                }
            }
            resend.retain(|&p| !pending[p].3);
            if resend.is_empty() {
                break;
            }
            resend.clear();
            let wait_until = Instant::now() + wait;
            wait = (wait * 2).min(MAX_ANSWER_WAIT);
            for (p, entry) in pending.iter_mut().enumerate() {
                if entry.3 {
                    continue;
                }
                let c = &mut clients[entry.0];
                let mut outcome = None;
                // Bounded: at most 64 reads, each waiting until `wait_until` or, past it,
                // POLL_WAIT.
                for _ in 0..64 {
                    let Conn::Udp(sock) = &c.conn else { break };
                    let left = wait_until.saturating_duration_since(Instant::now());
                    let _ = sock.set_read_timeout(Some(left.max(POLL_WAIT)));
                    match sock.recv(&mut rx) {
                        Ok(n) => {
                            if let Some(done) = c.handle(step, entry.1, &rx[..n]) {
                                outcome = Some(done);
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::TimedOut => break,
                        // ICMP port unreachable from an earlier send, say: keep waiting.
                        Err(_) => {}
                    }
                }
                match outcome {
                    Some(true) => entry.3 = true,
                    // A fresh nonce: a new request, sent at once.
                    Some(false) => {
                        requests[p].clear();
                        resend.push(p);
                    }
                    None => resend.push(p),
                }
            }
        }
    }
}

/// [`run_step`] over streams: for every client that has not failed, one request at a time
/// on its connection (again after a 401/438 with a fresh nonce, at most
/// `MAX_ATTEMPTS` times), until `deadline`.
fn run_step_stream(clients: &mut [Client], step: Step, creds: &Credentials, deadline: Instant) {
    let mut buf = Vec::with_capacity(512);
    for c in clients.iter_mut() {
        if c.failed.is_some() || (matches!(step, Step::Release) && c.relay.is_none()) {
            continue;
        }
        // Bounded: at most MAX_ATTEMPTS requests.
        for attempt in 1..=MAX_ATTEMPTS {
            buf.clear();
            let txid = c.build(step, creds, &mut buf);
            let Conn::Stream(conn) = &mut c.conn else {
                break;
            };
            let answer = conn.exchange(&buf, deadline, |m| {
                Message::parse(m).is_ok_and(|msg| msg.transaction_id() == txid)
            });
            match answer {
                Ok(m) => match c.handle(step, txid, &m) {
                    Some(false) if attempt < MAX_ATTEMPTS => continue,
                    Some(false) => c.failed = Some(format!("{} unanswered", step_name(step))),
                    Some(true) | None => {}
                },
                Err(e) => c.failed = Some(format!("{}: {e}", step_name(step))),
            }
            break;
        }
    }
}
