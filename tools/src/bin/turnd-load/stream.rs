//! TURN over TCP and TLS for the load tool (`--transport tcp|tls`): one stream per
//! allocation, carrying its control messages and its ChannelData / Send / Data traffic
//! (RFC 8656 §3.1; the allocation itself relays over UDP, as a browser's
//! `turn:...?transport=tcp` does).
//!
//! Writes never block: each connection queues whole messages in a send buffer bounded by
//! [`MAX_PENDING`] bytes, flushed with non-blocking writes as the socket takes them. A
//! message that does not fit is not sent at all and counts as `unsent` (not offered), so a
//! server that stops reading slows the tool's offered rate instead of deadlocking it.
//! Reads cut the byte stream into STUN and ChannelData messages with
//! [`turnd::stun::framing::next_frame`] (RFC 8656 §12.5: ChannelData padded to 4 bytes).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use turnd::stun::framing::{Frame, next_frame};

use turnd_tools::sys::{Epoll, event_buffer};

use crate::traffic::{Plan, Rounds, Shared, ThreadResult, nanos_since, payload_time};

/// Most bytes one connection holds queued for sending (its bound against a full socket).
pub const MAX_PENDING: usize = 16 * 1024;
/// SO_SNDBUF asked for each connection (Linux doubles it).
const SNDBUF: usize = 64 * 1024;
/// Input buffer per connection: larger than any message the server sends the tool.
const IN_CAP: usize = 8 * 1024;
/// Most packets one thread queues between two looks at its sockets.
const MAX_BURST: u64 = 256;
/// Packets per burst when running flat out.
const FLAT_BURST: u64 = 64;
/// Most packets of one allocation queued before one write (unless a burst is longer).
const PER_FLOW: usize = 16;
/// Reads of one connection per wakeup before it yields to the others.
const READS_PER_WAKEUP: usize = 8;
/// Connect and TLS handshake time limit per connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS settings for `--transport tls`.
pub struct TlsSetup {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

/// Builds the TLS client configuration: trusting the certificates in `ca` (PEM), or with
/// `insecure` any certificate (signatures are still checked; only for a self-signed
/// server on loopback, which is the only place the tool sends to). Offers ALPN
/// `stun.turn` (RFC 7443).
pub fn tls_setup(ca: Option<&str>, insecure: bool, name: &str) -> Result<TlsSetup, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let mut config = match (ca, insecure) {
        (Some(path), _) => {
            let mut roots = RootCertStore::empty();
            for cert in
                CertificateDer::pem_file_iter(path).map_err(|e| format!("--ca {path}: {e}"))?
            {
                let cert = cert.map_err(|e| format!("--ca {path}: {e}"))?;
                roots.add(cert).map_err(|e| format!("--ca {path}: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("--ca {path}: no certificate in the file"));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (None, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        (None, false) => {
            return Err("--transport tls needs --ca FILE or --insecure".to_owned());
        }
    };
    config.alpn_protocols = vec![b"stun.turn".to_vec()];
    let name = ServerName::try_from(name.to_owned()).map_err(|e| format!("--tls-name: {e}"))?;
    Ok(TlsSetup {
        config: Arc::new(config),
        name,
    })
}

/// `--insecure`: accepts whatever certificate the server shows, but still checks that the
/// handshake is signed by its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One non-blocking TCP (or TLS over TCP) connection to the server with its bounded send
/// queue and its input buffer.
pub struct StreamConn {
    sock: TcpStream,
    tls: Option<Box<ClientConnection>>,
    /// Whole messages queued; `out[out_at..]` not yet written.
    out: Vec<u8>,
    out_at: usize,
    /// Received bytes; `inb[in_at..in_end]` not yet cut into messages.
    inb: Vec<u8>,
    in_at: usize,
    in_end: usize,
}

impl StreamConn {
    /// Connects (and with `tls`, completes the handshake) within [`CONNECT_TIMEOUT`], then
    /// switches the socket to non-blocking.
    pub fn connect(server: SocketAddr, tls: Option<&TlsSetup>) -> Result<StreamConn, String> {
        let mut sock = TcpStream::connect_timeout(&server, CONNECT_TIMEOUT)
            .map_err(|e| format!("connect to {server}: {e}"))?;
        let _ = sock.set_nodelay(true);
        // A small kernel send buffer, so a server that falls behind fills the tool's own
        // bounded queue (packets then count as unsent) rather than megabytes of socket
        // buffer that only add latency.
        let _ = socket2::SockRef::from(&sock).set_send_buffer_size(SNDBUF);
        let tls = match tls {
            None => None,
            Some(t) => {
                let mut conn = ClientConnection::new(t.config.clone(), t.name.clone())
                    .map_err(|e| format!("tls: {e}"))?;
                let _ = sock.set_read_timeout(Some(CONNECT_TIMEOUT));
                let _ = sock.set_write_timeout(Some(CONNECT_TIMEOUT));
                let until = Instant::now() + CONNECT_TIMEOUT;
                // Bounded: each round moves handshake bytes or fails by the socket timeouts,
                // and the whole handshake by `until`.
                while conn.is_handshaking() {
                    if Instant::now() >= until {
                        return Err(format!("tls handshake with {server}: timed out"));
                    }
                    conn.complete_io(&mut sock)
                        .map_err(|e| format!("tls handshake with {server}: {e}"))?;
                }
                Some(Box::new(conn))
            }
        };
        sock.set_nonblocking(true)
            .map_err(|e| format!("socket: {e}"))?;
        Ok(StreamConn {
            sock,
            tls,
            out: Vec::new(),
            out_at: 0,
            inb: Vec::new(),
            in_at: 0,
            in_end: 0,
        })
    }

    /// Bytes queued and not yet handed to the socket (or to TLS).
    pub fn pending(&self) -> usize {
        self.out.len() - self.out_at
    }

    fn has_output(&self) -> bool {
        self.pending() > 0 || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Queues one whole message if it fits in the [`MAX_PENDING`] bound; `false` if not
    /// (nothing queued).
    pub fn queue(&mut self, msg: &[u8]) -> bool {
        if self.pending() + msg.len() > MAX_PENDING {
            return false;
        }
        if self.out_at > 0 && self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        }
        self.out.extend_from_slice(msg);
        true
    }

    /// Writes as much of the queue as the socket takes without blocking. With TLS, new
    /// plaintext goes to the TLS layer only once its records are all written, so what TLS
    /// holds stays within one queue's worth.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            None => {
                while self.out_at < self.out.len() {
                    match (&self.sock).write(&self.out[self.out_at..]) {
                        Ok(0) => return Err(ErrorKind::WriteZero.into()),
                        Ok(n) => self.out_at += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Some(tls) => {
                // Bounded: each round writes records, takes plaintext, or stops.
                loop {
                    while tls.wants_write() {
                        match tls.write_tls(&mut self.sock) {
                            Ok(0) => return Err(ErrorKind::WriteZero.into()),
                            Ok(_) => {}
                            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    if self.out_at == self.out.len() {
                        break;
                    }
                    let n = tls.writer().write(&self.out[self.out_at..])?;
                    if n == 0 && !tls.wants_write() {
                        break;
                    }
                    self.out_at += n;
                }
            }
        }
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        } else if self.out_at >= MAX_PENDING / 2 {
            self.out.drain(..self.out_at);
            self.out_at = 0;
        }
        Ok(())
    }

    /// Reads what is available into the input buffer: `Ok(true)` if bytes came, `Ok(false)`
    /// at the end of the stream; `WouldBlock` when there is nothing to read.
    pub fn fill(&mut self) -> io::Result<bool> {
        if self.inb.is_empty() {
            self.inb = vec![0; IN_CAP];
        }
        if self.in_at > 0 {
            self.inb.copy_within(self.in_at..self.in_end, 0);
            self.in_end -= self.in_at;
            self.in_at = 0;
        }
        if self.in_end == self.inb.len() {
            // A message larger than the buffer: the server sends the tool none.
            return Err(io::Error::new(ErrorKind::InvalidData, "message too large"));
        }
        match &mut self.tls {
            None => loop {
                match (&self.sock).read(&mut self.inb[self.in_end..]) {
                    Ok(0) => return Ok(false),
                    Ok(n) => {
                        self.in_end += n;
                        return Ok(true);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
            Some(tls) => {
                // Bounded: each round returns or has read bytes off the socket, which ends
                // in WouldBlock once the socket is drained.
                loop {
                    match tls.reader().read(&mut self.inb[self.in_end..]) {
                        Ok(0) => return Ok(false),
                        Ok(n) => {
                            self.in_end += n;
                            return Ok(true);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                    match tls.read_tls(&mut self.sock) {
                        Ok(0) => return Ok(false),
                        Ok(_) => {
                            tls.process_new_packets()
                                .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// The next whole message received, if any; `Err` if the stream cannot be framed.
    pub fn next_message(&mut self) -> Result<Option<&[u8]>, ()> {
        let buf = self.inb.get(self.in_at..self.in_end).unwrap_or(&[]);
        match next_frame(buf) {
            Frame::Complete(n) => {
                let at = self.in_at;
                self.in_at += n;
                Ok(self.inb.get(at..at + n))
            }
            Frame::NeedMore(_) => Ok(None),
            Frame::Invalid => Err(()),
        }
    }

    /// Waits at most `timeout` for the socket to become readable (or writable, when
    /// there is output queued).
    pub fn wait(&self, timeout: Duration) {
        let mut events = libc::POLLIN;
        if self.has_output() {
            events |= libc::POLLOUT;
        }
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    /// Sends one request and returns its answer (a copy of the first message `answer`
    /// accepts), waiting until `deadline`.
    pub fn exchange(
        &mut self,
        request: &[u8],
        deadline: Instant,
        mut accept: impl FnMut(&[u8]) -> bool,
    ) -> Result<Vec<u8>, String> {
        // Traffic may still fill the queue (at release): wait for room, bounded by
        // `deadline`, every round waiting at most 100 ms.
        while !self.queue(request) {
            self.flush().map_err(|e| format!("write: {e}"))?;
            // Traffic coming back is read and dropped meanwhile: the answer cannot come
            // before the request goes.
            match self.fill() {
                Ok(false) => return Err("connection closed by the server".to_owned()),
                Err(e) if e.kind() != ErrorKind::WouldBlock => return Err(format!("read: {e}")),
                _ => {}
            }
            while let Ok(Some(_)) = self.next_message() {}
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("send queue full until the setup deadline".to_owned());
            }
            self.wait(left.min(Duration::from_millis(100)));
        }
        // Bounded by `deadline`: every round waits at most 100 ms.
        loop {
            self.flush().map_err(|e| format!("write: {e}"))?;
            loop {
                match self.next_message() {
                    Ok(Some(m)) => {
                        if accept(m) {
                            return Ok(m.to_vec());
                        }
                    }
                    Ok(None) => break,
                    Err(()) => return Err("unframeable bytes from the server".to_owned()),
                }
            }
            match self.fill() {
                Ok(true) => continue,
                Ok(false) => return Err("connection closed by the server".to_owned()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("read: {e}")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out (setup deadline)".to_owned());
            }
            self.wait(left.min(Duration::from_millis(100)));
        }
    }
}

impl AsRawFd for StreamConn {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// One allocation's traffic over its stream: the message it sends (ChannelData padded to
/// a multiple of 4, RFC 8656 §12.5, or a Send indication) with the payload at
/// `payload_at`.
pub struct StreamFlow<'a> {
    pub conn: &'a mut StreamConn,
    pub packet: Vec<u8>,
    pub payload_at: usize,
    broken: bool,
}

impl<'a> StreamFlow<'a> {
    pub fn new(conn: &'a mut StreamConn, packet: Vec<u8>, payload_at: usize) -> StreamFlow<'a> {
        StreamFlow {
            conn,
            packet,
            payload_at,
            broken: false,
        }
    }
}

/// The stream counterpart of [`crate::traffic::run_thread`]: queues this thread's share of
/// the load round-robin over its connections (pacing by packets attempted, so a full queue
/// does not cause a burst later), flushes without blocking, and cuts what comes back into
/// messages. A connection that fails is dropped from the run and counted in `broken`.
pub fn run_thread(mut flows: Vec<StreamFlow<'_>>, plan: &Plan, shared: &Shared) -> ThreadResult {
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
        if let Err(e) = ep.add(&*f.conn, i as u64) {
            eprintln!("turnd-load: epoll_ctl: {e}");
        }
    }
    let mut first_error: Option<String> = None;
    let mut events = event_buffer(256);
    let mut ready = Vec::with_capacity(256);
    // Connections with bytes still queued, and connections with input left unread.
    let mut backlog: Vec<usize> = Vec::with_capacity(flows.len());
    let mut in_backlog = vec![false; flows.len()];
    let mut again: Vec<u64> = Vec::new();
    let mut flushed = 0u64;
    let mut done_sending = flows.is_empty();
    if done_sending {
        shared.finish_sending(0);
    }
    let count = flows.len();
    let mut rounds = Rounds::new(plan.burst, PER_FLOW, true);
    loop {
        let now = Instant::now();
        if now >= plan.drain_until {
            break;
        }
        if now < plan.start {
            std::thread::sleep(plan.start - now);
            continue;
        }
        let mut behind = false;
        if !done_sending && now < plan.send_until {
            let attempted = result.sent + result.unsent;
            let budget = if plan.rate_per_thread > 0.0 {
                let target = ((now - plan.start).as_secs_f64() * plan.rate_per_thread) as u64;
                let owed = target.saturating_sub(attempted);
                behind = owed > MAX_BURST;
                owed.min(MAX_BURST)
            } else {
                behind = true;
                FLAT_BURST.max(rounds.burst() as u64)
            };
            // Whole bursts (`--burst` messages of one allocation queued back to back and
            // written together), each connection visited once per round at most.
            let burst = rounds.burst();
            let (mut sent, mut unsent, mut bursts) = (0u64, 0u64, 0u64);
            rounds.round(budget as usize, count, |i, k| {
                let f = flows.get_mut(i)?;
                if f.broken {
                    return None;
                }
                let mut whole = 0;
                for b in 0..k {
                    let ts = nanos_since(plan.epoch).to_be_bytes();
                    if let Some(t) = f.packet.get_mut(f.payload_at..f.payload_at + 8) {
                        t.copy_from_slice(&ts);
                    }
                    if f.conn.queue(&f.packet) {
                        sent += 1;
                        whole += 1;
                    } else {
                        unsent += 1;
                    }
                    if (b + 1) % burst == 0 {
                        if whole == burst {
                            bursts += 1;
                        }
                        whole = 0;
                    }
                }
                if let Err(e) = f.conn.flush() {
                    f.broken = true;
                    result.broken += 1;
                    ep.remove(&*f.conn);
                    first_error.get_or_insert_with(|| format!("write: {e}"));
                } else if f.conn.has_output() && !in_backlog[i] {
                    in_backlog[i] = true;
                    backlog.push(i);
                }
                // Attempted, whether queued or not: pacing counts both.
                Some(k)
            });
            result.sent += sent;
            result.unsent += unsent;
            result.bursts += bursts;
        } else if !done_sending {
            done_sending = true;
            shared.finish_sending(result.sent);
        }
        // Retry the connections whose socket was full.
        backlog.retain(|&i| {
            let Some(f) = flows.get_mut(i) else {
                return false;
            };
            if !f.broken {
                match f.conn.flush() {
                    Ok(()) if f.conn.has_output() => return true,
                    Ok(()) => {}
                    Err(e) => {
                        f.broken = true;
                        result.broken += 1;
                        ep.remove(&*f.conn);
                        first_error.get_or_insert_with(|| format!("write: {e}"));
                    }
                }
            }
            in_backlog[i] = false;
            false
        });
        let timeout = if behind || !again.is_empty() {
            Duration::ZERO
        } else {
            Duration::from_millis(1)
        };
        ep.wait(&mut events, timeout, &mut ready);
        ready.append(&mut again);
        for &token in &ready {
            let Some(f) = flows.get_mut(token as usize) else {
                continue;
            };
            if f.broken {
                continue;
            }
            let mut error = None;
            let mut more = true;
            for _ in 0..READS_PER_WAKEUP {
                match f.conn.fill() {
                    Ok(true) => {}
                    Ok(false) => {
                        error = Some("connection closed by the server".to_owned());
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        more = false;
                        break;
                    }
                    Err(e) => {
                        error = Some(format!("read: {e}"));
                        break;
                    }
                }
                let now = nanos_since(plan.epoch);
                loop {
                    match f.conn.next_message() {
                        Ok(Some(m)) => {
                            if let Some(sent_at) = payload_time(m) {
                                result.received += 1;
                                result.hist.record(now.saturating_sub(sent_at));
                            }
                        }
                        Ok(None) => break,
                        Err(()) => {
                            error = Some("unframeable bytes from the server".to_owned());
                            break;
                        }
                    }
                }
                if error.is_some() {
                    break;
                }
            }
            if let Some(e) = error {
                f.broken = true;
                result.broken += 1;
                ep.remove(&*f.conn);
                first_error.get_or_insert(e);
            } else {
                if more {
                    // Input left after this wakeup's share of reads: come back to it.
                    again.push(token);
                }
                // TLS may have records to answer with (a key update, say).
                let i = token as usize;
                if f.conn.has_output() && !in_backlog[i] {
                    in_backlog[i] = true;
                    backlog.push(i);
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
    if let Some(e) = first_error {
        eprintln!(
            "turnd-load: {} connection(s) failed during traffic, first: {e}",
            result.broken
        );
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (StreamConn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let conn = StreamConn::connect(l.local_addr().unwrap(), None).unwrap();
        let (server, _) = l.accept().unwrap();
        (conn, server)
    }

    #[test]
    fn a_peer_that_never_reads_fills_the_bounded_queue_without_blocking() {
        let (mut conn, _server) = pair();
        let msg = [0x40u8; 208];
        let mut refused = 0;
        // Bounded: 64 MiB offered at most; the kernel buffers hold far less.
        for _ in 0..(64 << 20) / msg.len() {
            if conn.queue(&msg) {
                conn.flush().unwrap();
            } else {
                refused += 1;
                break;
            }
        }
        assert_eq!(refused, 1, "the queue never filled");
        assert!(conn.pending() <= MAX_PENDING);
    }

    #[test]
    fn stream_bytes_are_cut_into_padded_channel_data_and_stun_messages() {
        let (mut conn, mut server) = pair();
        let mut bytes = turnd::stun::channel_data::header(0x4000, 5).to_vec();
        bytes.extend_from_slice(b"hello\0\0\0");
        let mut stun = vec![0x01, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        bytes.extend_from_slice(&stun);
        // Split mid-message: the first read holds a partial ChannelData.
        server.write_all(&bytes[..6]).unwrap();
        let mut got = Vec::new();
        let mut wrote_rest = false;
        // Bounded: 200 rounds of at most 100 ms.
        for _ in 0..200 {
            while let Some(m) = conn.next_message().unwrap() {
                got.push(m.to_vec());
            }
            if got.len() == 2 {
                break;
            }
            if !wrote_rest {
                server.write_all(&bytes[6..]).unwrap();
                wrote_rest = true;
            }
            conn.wait(Duration::from_millis(100));
            match conn.fill() {
                Ok(true) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], bytes[..12]);
        assert_eq!(got[1], stun);
        drop(server);
        let mut end = false;
        for _ in 0..200 {
            conn.wait(Duration::from_millis(100));
            if let Ok(false) = conn.fill() {
                end = true;
                break;
            }
        }
        assert!(end, "the end of the stream was not seen");
    }
}
