//! A renewed certificate (new files at the configured paths) is served to new TLS connections
//! after SIGHUP, while a TLS connection opened before the reload keeps its allocation and
//! keeps being answered. A reload whose certificate cannot be loaded changes nothing.

use crate::common;
use crate::lifecycle_util;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::stream::{StreamClient, free_tcp_port, relayed};
use common::udp_transport;
use lifecycle_util::{NotifiedServer, Scratch};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use stun::message::{METHOD_ALLOCATE, METHOD_REFRESH};

struct Cert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn new_cert() -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Cert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

/// A client that trusts only `cert`.
fn trusting(cert: &Cert) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS handshake; Err when the client refuses the server's certificate.
fn handshake(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> Result<StreamOwned<ClientConnection, TcpStream>, rustls::Error> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        if let Err(e) = s.conn.complete_io(&mut s.sock) {
            return Err(e
                .into_inner()
                .and_then(|i| i.downcast::<rustls::Error>().ok())
                .map(|b| *b)
                .unwrap_or(rustls::Error::General("handshake failed".into())));
        }
    }
    Ok(s)
}

fn config(tls_port: u16, dir: &Scratch) -> String {
    format!(
        "[auth]\nusers = [{{ name = \"alice\", password = \"wonderland\" }}]\n\
         [tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.path("cert.pem").display(),
        dir.path("key.pem").display()
    )
}

#[test]
fn renewed_certificate_is_served_after_sighup() {
    let scratch = Scratch::new("tls-reload");
    let (old, renewed) = (new_cert(), new_cert());
    scratch.write("cert.pem", &old.cert_pem);
    scratch.write("key.pem", &old.key_pem);
    let tls_port = free_tcp_port();
    let path = scratch.write("turnd.toml", &config(tls_port, &scratch));
    let mut server = NotifiedServer::start(&scratch, &path, false);
    let tls: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();

    // Before: the old certificate is served; a client trusting only the renewed one refuses it.
    assert!(handshake(tls, trusting(&renewed)).is_err());
    let s = handshake(tls, trusting(&old)).expect("old certificate served");
    let local = s.sock.local_addr().unwrap();
    let mut live = StreamClient::new(s, local);
    let reply = live.request(METHOD_ALLOCATE, &[udp_transport()]);
    assert_eq!(reply.code(), None, "allocate over TLS");
    let relay = relayed(&reply);

    // Renew: new files at the same paths, then SIGHUP.
    scratch.write("cert.pem", &renewed.cert_pem);
    scratch.write("key.pem", &renewed.key_pem);
    let status = server.reload();
    assert!(status.contains("STATUS=config reloaded"), "{status}");

    assert!(
        handshake(tls, trusting(&old)).is_err(),
        "the old certificate is no longer served to new connections"
    );
    let s = handshake(tls, trusting(&renewed)).expect("renewed certificate served");
    let local = s.sock.local_addr().unwrap();
    let mut fresh = StreamClient::new(s, local);
    assert_eq!(
        fresh.request(METHOD_ALLOCATE, &[udp_transport()]).code(),
        None,
        "allocate over a connection made after the reload"
    );

    // The connection opened before the reload still has its allocation.
    let reply = live.request(METHOD_REFRESH, &[]);
    assert_eq!(reply.code(), None, "refresh of {relay} after the reload");

    // A certificate file that cannot be loaded: the reload fails and the renewed cert stays.
    scratch.write("cert.pem", "not a certificate");
    let status = server.reload();
    assert!(status.contains("STATUS=reload failed"), "{status}");
    assert!(status.contains("tls.cert"), "{status}");
    assert!(handshake(tls, trusting(&renewed)).is_ok());
}
