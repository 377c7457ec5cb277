//! The probe's TURN client: one allocation on one [`Conn`]. Requests are retransmitted over
//! UDP on RFC 8489 §6.2.1's schedule (RTO 500 ms doubling, Rc = 7 sends, then Rm = 16 RTOs),
//! and over TCP/TLS wait the same 39.5 s once (§6.2.2), both cut short by the probe's
//! deadline. Authentication is the long-term mechanism (§9.2): the first request goes
//! unsigned, the 401 teaches the realm and nonce, the rest are signed with MD5 key and
//! MESSAGE-INTEGRITY, and a 438 renews the nonce.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::{Failure, Outcome};
use crate::auth::{Key, PasswordAlgorithm, long_term_key};
use crate::stun::{Class, Message, MessageWriter, attr, channel_data, decode_error_code, method};

/// RFC 8489 §6.2.1: initial RTO, number of sends and the last wait in RTOs.
const RTO: Duration = Duration::from_millis(500);
const RC: u32 = 7;
const RM: u32 = 16;

/// Why a transaction did not give a success response.
pub enum TxError {
    /// An error response: its code and reason phrase.
    Code(u16, String),
    /// No answer before the deadline (or the RFC's last wait).
    NoAnswer,
    /// The connection failed (refused, reset, closed, out of frame).
    Io(std::io::Error),
    /// A success response whose MESSAGE-INTEGRITY does not verify with our key.
    BadIntegrity,
}

/// The user name and password of the long-term credential.
#[derive(Clone)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

/// A client of one allocation on one connection.
pub struct Client {
    pub conn: Conn,
    cred: Credential,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    key: Option<Key>,
    buf: Vec<u8>,
    rx: Vec<u8>,
}

/// A success response, owned.
pub struct Response(Vec<u8>);

impl Response {
    pub fn message(&self) -> Option<Message<'_>> {
        Message::parse(&self.0).ok()
    }

    /// An XOR-encoded address attribute of the response.
    pub fn xor_address(&self, ty: u16) -> Option<SocketAddr> {
        self.message()?.xor_address(ty)?.ok()
    }

    pub fn u32_attr(&self, ty: u16) -> Option<u32> {
        self.message()?.u32_attr(ty)?.ok()
    }
}

fn txid() -> [u8; 12] {
    let mut id = [0u8; 12];
    if getrandom::fill(&mut id).is_err() {
        // Without OS randomness, a time-derived id still keeps transactions apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        id.copy_from_slice(&t.to_be_bytes()[4..16]);
    }
    id
}

impl Client {
    pub fn new(conn: Conn, cred: Credential) -> Client {
        Client {
            conn,
            cred,
            realm: None,
            nonce: None,
            key: None,
            buf: Vec::with_capacity(1500),
            rx: Vec::with_capacity(1500),
        }
    }

    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    /// Sends the request `method` (attributes written by `attrs`) without credentials and
    /// waits for its answer: a Binding, say.
    pub fn unsigned(
        &mut self,
        method: u16,
        attrs: &dyn Fn(&mut MessageWriter),
        deadline: Instant,
    ) -> Result<Response, TxError> {
        let id = txid();
        let mut w = MessageWriter::new(&mut self.buf, method, Class::Request, id);
        attrs(&mut w);
        w.fingerprint();
        let req = std::mem::take(&mut self.buf);
        let answer = self.transact(&req, id, deadline);
        self.buf = req;
        answer?;
        self.check(false)
    }

    /// Sends the request `method` with the long-term credential, learning the realm and
    /// nonce from a 401 and renewing the nonce on 438 (twice at most). A 401 to a signed
    /// request means the server refused the credential.
    pub fn request(
        &mut self,
        method: u16,
        attrs: &dyn Fn(&mut MessageWriter),
        deadline: Instant,
    ) -> Result<Response, TxError> {
        let mut renewals = 0;
        loop {
            let id = txid();
            let signed = self.nonce.is_some();
            let mut w = MessageWriter::new(&mut self.buf, method, Class::Request, id);
            attrs(&mut w);
            if let (Some(realm), Some(nonce), Some(key)) = (&self.realm, &self.nonce, &self.key) {
                w.attr(attr::USERNAME, self.cred.username.as_bytes())
                    .attr(attr::REALM, realm.as_bytes())
                    .attr(attr::NONCE, nonce)
                    .integrity(key.as_bytes());
            }
            w.fingerprint();
            let req = std::mem::take(&mut self.buf);
            let answer = self.transact(&req, id, deadline);
            self.buf = req;
            answer?;
            match self.check(signed) {
                Err(TxError::Code(401, _)) if !signed => {
                    if !self.learn_challenge() {
                        return Err(TxError::Code(
                            401,
                            "Unauthorized, without a REALM and NONCE to answer".to_owned(),
                        ));
                    }
                }
                Err(TxError::Code(438, _)) if renewals < 2 => {
                    renewals += 1;
                    if !self.learn_challenge() {
                        return Err(TxError::Code(
                            438,
                            "Stale Nonce, without a new NONCE".to_owned(),
                        ));
                    }
                }
                other => return other,
            }
        }
    }

    /// Reads REALM and NONCE from the error response in `rx` and derives the key.
    fn learn_challenge(&mut self) -> bool {
        let Ok(msg) = Message::parse(&self.rx) else {
            return false;
        };
        let (Some(realm), Some(nonce)) = (msg.get(attr::REALM), msg.get(attr::NONCE)) else {
            return false;
        };
        let Ok(realm) = std::str::from_utf8(realm) else {
            return false;
        };
        self.key = Some(long_term_key(
            PasswordAlgorithm::Md5,
            &self.cred.username,
            realm,
            &self.cred.password,
        ));
        self.realm = Some(realm.to_owned());
        self.nonce = Some(nonce.to_vec());
        true
    }

    /// Turns the answer in `rx` into a response or an error; a signed request's success
    /// must verify with our key when it carries an integrity attribute.
    fn check(&mut self, signed: bool) -> Result<Response, TxError> {
        let msg = Message::parse(&self.rx).map_err(|_| TxError::NoAnswer)?;
        match msg.class() {
            Class::Success => {
                if signed
                    && msg.has_integrity()
                    && let Some(key) = &self.key
                    && msg.verify_integrity(key.as_bytes()).is_none()
                {
                    return Err(TxError::BadIntegrity);
                }
                Ok(Response(self.rx.clone()))
            }
            _ => {
                let (code, reason) = msg
                    .get(attr::ERROR_CODE)
                    .and_then(decode_error_code)
                    .map(|(c, r)| (c, r.to_owned()))
                    .unwrap_or((0, "an error response without a valid ERROR-CODE".to_owned()));
                Err(TxError::Code(code, reason))
            }
        }
    }

    /// Sends `req` and waits for the response with transaction id `id` (kept in `rx`),
    /// retransmitting over UDP; other messages that arrive meanwhile are dropped.
    fn transact(&mut self, req: &[u8], id: [u8; 12], deadline: Instant) -> Result<(), TxError> {
        let stream = self.conn.is_stream();
        let mut rto = RTO;
        let sends = if stream { 1 } else { RC };
        for n in 1..=sends {
            self.conn.send(req).map_err(TxError::Io)?;
            let wait = if stream {
                RTO * ((1 << (RC - 1)) - 1 + RM)
            } else if n == sends {
                RTO * RM
            } else {
                rto
            };
            rto *= 2;
            let until = (Instant::now() + wait).min(deadline);
            loop {
                match self.conn.recv(&mut self.rx, until) {
                    Ok(false) => break,
                    Ok(true) => {
                        if let Ok(m) = Message::parse(&self.rx)
                            && m.transaction_id() == id
                            && matches!(m.class(), Class::Success | Class::Error)
                        {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(TxError::Io(e)),
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(TxError::NoAnswer)
    }

    /// Sends a Send indication carrying `data` to `peer` (RFC 8656 §11.1).
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> std::io::Result<()> {
        let mut w = MessageWriter::new(&mut self.buf, method::SEND, Class::Indication, txid());
        w.xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, data);
        self.conn.send(&self.buf)
    }

    /// Sends `data` as ChannelData on `channel`, padded to 4 bytes (needed on streams,
    /// allowed on UDP; RFC 8656 §12.5).
    pub fn send_channel_data(&mut self, channel: u16, data: &[u8]) -> std::io::Result<()> {
        let len = u16::try_from(data.len())
            .map_err(|_| std::io::Error::other("ChannelData payload over 65535 bytes"))?;
        self.buf.clear();
        self.buf
            .extend_from_slice(&channel_data::header(channel, len));
        self.buf.extend_from_slice(data);
        let pad = (4 - data.len() % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self.conn.send(&self.buf)
    }

    /// Waits for relayed data until `deadline`: the next Data indication (its peer and
    /// data) or ChannelData (its channel) that `accept` takes. Other messages are dropped.
    pub fn recv_relayed(
        &mut self,
        deadline: Instant,
        accept: &mut dyn FnMut(Relayed<'_>) -> bool,
    ) -> std::io::Result<bool> {
        while self.conn.recv(&mut self.rx, deadline)? {
            let relayed = if let Some((channel, data)) = channel_data::parse(&self.rx) {
                Some(Relayed::Channel(channel, data))
            } else if let Ok(m) = Message::parse(&self.rx)
                && m.method() == method::DATA
                && m.class() == Class::Indication
                && let (Some(Ok(peer)), Some(data)) =
                    (m.xor_address(attr::XOR_PEER_ADDRESS), m.get(attr::DATA))
            {
                Some(Relayed::Indication(peer, data))
            } else {
                None
            };
            if let Some(r) = relayed
                && accept(r)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Data that came back through the relay.
pub enum Relayed<'a> {
    Channel(u16, &'a [u8]),
    Indication(SocketAddr, &'a [u8]),
}

/// The failure a transaction error in `step` means for monitoring: no answer or a broken
/// connection is connectivity, a refused credential is authentication, anything else the
/// server refused is `refused` (relay or allocation).
pub fn failure(step: &str, what: &str, e: TxError, refused: Outcome) -> Failure {
    match e {
        TxError::NoAnswer => Failure::new(
            Outcome::Connectivity,
            step,
            format!("{what}: no answer from the server in time"),
        ),
        TxError::Io(e) => Failure::new(
            Outcome::Connectivity,
            step,
            format!("{what}: {}", super::io_reason(&e)),
        ),
        TxError::BadIntegrity => Failure::new(
            Outcome::Auth,
            step,
            format!(
                "{what}: the success response's MESSAGE-INTEGRITY does not match our key \
                 (the server holds another password for this user, or the answer was altered)"
            ),
        ),
        TxError::Code(code @ (401 | 438), reason) => Failure::new(
            Outcome::Auth,
            step,
            format!(
                "{what}: {code} {reason}: the server refused the credential (wrong user or \
                 password, an expired or mis-signed REST credential, or another realm)"
            ),
        ),
        TxError::Code(code, reason) => {
            let hint = match code {
                300 => {
                    ": the server sends clients elsewhere (ALTERNATE-SERVER: it is draining, or redirects all)"
                }
                403 => ": the server forbids it (for a peer, its peer policy denies the address)",
                437 => ": the server has no allocation for this connection",
                440 => ": the server cannot relay this address family",
                441 => ": the server holds another credential for this allocation",
                442 => ": the server does not relay this transport",
                486 => ": the user's allocation quota is full",
                508 => ": the server is out of capacity",
                _ => "",
            };
            Failure::new(refused, step, format!("{what}: {code} {reason}{hint}"))
        }
    }
}
