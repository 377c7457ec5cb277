//! The probe's connections to the server: a connected UDP socket, a TCP stream or TLS over
//! TCP (rustls, ALPN `stun.turn`, RFC 7443), each sending whole messages and receiving the
//! next whole STUN or ChannelData message before a deadline. Blocking I/O: the probe is one
//! short-lived command, not a server.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};

use super::uri::Transport;
use crate::net::tls::ALPN_STUN_TURN;
use crate::stun::framing::{Frame, next_frame};

/// Largest message the probe reads: a stream frame's length field allows 64 KiB + header.
const MAX_MESSAGE: usize = 4 + 0xFFFF + 3;

/// The longest one write to a TCP or TLS stream may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the CA bundle usually is when `--ca` is not given and `SSL_CERT_FILE` is not set
/// (Debian and Ubuntu, Fedora and RHEL, Alpine and others).
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// How TLS checks the server's certificate.
pub enum Trust<'a> {
    /// The system's CA bundle (`SSL_CERT_FILE`, else the usual paths).
    System,
    /// The certificates in this PEM file.
    CaFile(&'a Path),
    /// No check at all (`--insecure`): for test certificates only.
    Insecure,
}

/// Builds the TLS client config: TLS 1.2 and 1.3 on ring, ALPN `stun.turn`.
pub fn tls_config(trust: Trust<'_>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut cfg = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
        Trust::CaFile(path) => builder
            .with_root_certificates(roots_from(path)?)
            .with_no_client_auth(),
        Trust::System => {
            let env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
            let path = env
                .or_else(|| {
                    SYSTEM_CA_FILES
                        .iter()
                        .map(std::path::PathBuf::from)
                        .find(|p| p.is_file())
                })
                .ok_or_else(|| {
                    "no system CA bundle found (SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt): \
                     give --ca FILE"
                        .to_owned()
                })?;
            builder
                .with_root_certificates(roots_from(&path)?)
                .with_no_client_auth()
        }
    };
    cfg.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
    Ok(Arc::new(cfg))
}

fn roots_from(path: &Path) -> Result<RootCertStore, String> {
    let err = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", path.display());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(&e))? {
        let cert = cert.map_err(|e| err(&e))?;
        // A bundle may hold certificates rustls cannot use; the others still count.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(err(&"no usable PEM certificate in it"));
    }
    Ok(roots)
}

/// `--insecure`: accepts any certificate but still checks the handshake signatures, so the
/// connection is encrypted to whoever holds the presented key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
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

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

enum Kind {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

/// One connection (one 5-tuple, so one allocation) to the server.
pub struct Conn {
    kind: Kind,
    pub local: SocketAddr,
    pub server: SocketAddr,
    /// Stream bytes read but not yet cut into messages.
    pending: Vec<u8>,
}

/// Remaining time until `deadline`, at least a millisecond (a zero timeout means "block
/// forever" to the socket API).
fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.checked_duration_since(Instant::now())?;
    Some(left.max(Duration::from_millis(1)))
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Conn {
    /// Opens a connection of `transport` to `server`, giving up at `deadline`. For TLS,
    /// `tls` is the client config and `name` the name the certificate must carry.
    pub fn open(
        transport: Transport,
        server: SocketAddr,
        deadline: Instant,
        tls: Option<(&Arc<ClientConfig>, &ServerName<'static>)>,
    ) -> io::Result<Conn> {
        let kind = match transport {
            Transport::Udp => {
                let bind: SocketAddr = if server.is_ipv6() {
                    "[::]:0".parse().map_err(io::Error::other)?
                } else {
                    "0.0.0.0:0".parse().map_err(io::Error::other)?
                };
                let sock = UdpSocket::bind(bind)?;
                sock.connect(server)?;
                Kind::Udp(sock)
            }
            Transport::Tcp | Transport::Tls => {
                let left = remaining(deadline)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "time ran out"))?;
                let tcp = TcpStream::connect_timeout(&server, left)?;
                tcp.set_nodelay(true)?;
                // A server that stops reading cannot hold a send for long.
                tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
                match (transport, tls) {
                    (Transport::Tls, Some((cfg, name))) => {
                        let conn = ClientConnection::new(cfg.clone(), name.clone())
                            .map_err(io::Error::other)?;
                        let mut s = StreamOwned::new(conn, tcp);
                        while s.conn.is_handshaking() {
                            let left = remaining(deadline).ok_or_else(|| {
                                io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                            })?;
                            s.sock.set_read_timeout(Some(left))?;
                            s.sock.set_write_timeout(Some(left))?;
                            s.conn.complete_io(&mut s.sock)?;
                        }
                        s.sock.set_write_timeout(Some(WRITE_TIMEOUT))?;
                        Kind::Tls(Box::new(s))
                    }
                    _ => Kind::Tcp(tcp),
                }
            }
        };
        let local = match &kind {
            Kind::Udp(s) => s.local_addr()?,
            Kind::Tcp(s) => s.local_addr()?,
            Kind::Tls(s) => s.sock.local_addr()?,
        };
        Ok(Conn {
            kind,
            local,
            server,
            pending: Vec::new(),
        })
    }

    pub fn is_stream(&self) -> bool {
        !matches!(self.kind, Kind::Udp(_))
    }

    /// The TLS version and ALPN protocol the handshake settled on.
    pub fn tls_summary(&self) -> Option<String> {
        let Kind::Tls(s) = &self.kind else {
            return None;
        };
        let version = match s.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
            Some(v) => format!("{v:?}"),
            None => "TLS".to_owned(),
        };
        let alpn = match s.conn.alpn_protocol() {
            Some(p) => format!("ALPN {}", String::from_utf8_lossy(p)),
            None => "no ALPN".to_owned(),
        };
        Some(format!("{version}, {alpn}"))
    }

    /// Sends one whole message (a datagram, or bytes on the stream).
    pub fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        match &mut self.kind {
            Kind::Udp(s) => s.send(msg).map(|_| ()),
            Kind::Tcp(s) => s.write_all(msg),
            Kind::Tls(s) => {
                s.write_all(msg)?;
                s.flush()
            }
        }
    }

    /// Receives the next whole message into `out`; `Ok(false)` when `deadline` passes first.
    pub fn recv(&mut self, out: &mut Vec<u8>, deadline: Instant) -> io::Result<bool> {
        if let Kind::Udp(s) = &self.kind {
            out.resize(MAX_MESSAGE, 0);
            let Some(left) = remaining(deadline) else {
                return Ok(false);
            };
            s.set_read_timeout(Some(left))?;
            return match s.recv(out) {
                Ok(n) => {
                    out.truncate(n);
                    Ok(true)
                }
                Err(e) if timed_out(&e) => Ok(false),
                Err(e) => Err(e),
            };
        }
        loop {
            match next_frame(&self.pending) {
                Frame::Complete(n) => {
                    out.clear();
                    out.extend_from_slice(&self.pending[..n]);
                    self.pending.drain(..n);
                    return Ok(true);
                }
                Frame::Invalid => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the server sent bytes that are neither STUN nor ChannelData",
                    ));
                }
                Frame::NeedMore(_) => {}
            }
            let Some(left) = remaining(deadline) else {
                return Ok(false);
            };
            let mut buf = [0u8; 4096];
            let read = match &mut self.kind {
                Kind::Tcp(s) => {
                    s.set_read_timeout(Some(left))?;
                    s.read(&mut buf)
                }
                Kind::Tls(s) => {
                    s.sock.set_read_timeout(Some(left))?;
                    s.read(&mut buf)
                }
                Kind::Udp(_) => return Ok(false),
            };
            match read {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the server closed the connection",
                    ));
                }
                Ok(n) => {
                    if self.pending.len() + n > 2 * MAX_MESSAGE {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the server's stream is out of frame",
                        ));
                    }
                    self.pending.extend_from_slice(&buf[..n]);
                }
                Err(e) if timed_out(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }
}
