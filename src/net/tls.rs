//! TLS for `turns:` ([RFC 8656 §3.1](https://www.rfc-editor.org/rfc/rfc8656#section-3.1)):
//! rustls with the ring provider, TLS 1.2 and 1.3, ALPN `stun.turn`
//! ([RFC 7443 §3](https://www.rfc-editor.org/rfc/rfc7443#section-3)).
//!
//! The server config sits in a [`CertStore`] that each accepted connection reads once, so a
//! reload (SIGHUP) renews the certificate for new connections without touching live ones.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{Error as TlsError, ServerConfig};

use crate::config::{Config, ConfigError};

/// RFC 7443 §3: the ALPN protocol ID of TURN over (D)TLS.
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

/// The current TLS server config, swappable while the server runs.
pub struct CertStore {
    current: RwLock<Arc<ServerConfig>>,
}

impl CertStore {
    /// Loads the certificate chain and key; the error names the key, the file and what is
    /// wrong.
    pub fn load(cert: &Path, key: &Path) -> Result<CertStore, ConfigError> {
        Ok(CertStore::new(server_config(cert, key)?))
    }

    /// A store serving `cfg` to new connections.
    pub fn new(cfg: Arc<ServerConfig>) -> CertStore {
        CertStore {
            current: RwLock::new(cfg),
        }
    }

    /// The config new connections use now.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Loads a new certificate and key for new connections. On error the old ones stay.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), ConfigError> {
        self.replace(server_config(cert, key)?);
        Ok(())
    }

    /// Puts a config built by [`server_config`] in force for new connections.
    pub fn replace(&self, cfg: Arc<ServerConfig>) {
        match self.current.write() {
            Ok(mut g) => *g = cfg,
            Err(p) => *p.into_inner() = cfg,
        }
    }
}

/// The TLS server config `cfg` serves, loaded from its files: None when it serves no TLS.
/// The server's start and `turnd check-config` both load it here, so a certificate or key the
/// server would refuse fails the check too.
pub fn load_config(cfg: &Config) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
    match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(cert), Some(key)) if cfg.tls_enabled() => server_config(cert, key).map(Some),
        _ => Ok(None),
    }
}

/// A rustls server config from PEM files: TLS 1.2 and 1.3 on ring, no client auth, ALPN
/// `stun.turn` offered (a client that sends no ALPN is served too). The error names the key
/// at fault (`tls.cert` or `tls.key`), its file and what is wrong.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ConfigError> {
    let cert_err = |e: &dyn std::fmt::Display| {
        ConfigError::new("tls.cert", format!("{}: {e}", cert.display()))
    };
    let key_err =
        |e: &dyn std::fmt::Display| ConfigError::new("tls.key", format!("{}: {e}", key.display()));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(&e))?;
    if chain.is_empty() {
        return Err(cert_err(&"no PEM certificate found"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError::new("tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| match e {
            TlsError::InconsistentKeys(_) => key_err(&format_args!(
                "does not match the certificate in {}",
                cert.display()
            )),
            TlsError::InvalidCertificate(_) | TlsError::NoCertificatesPresented => cert_err(&e),
            e => key_err(&e),
        })?;
    cfg.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, host: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    /// An in-memory handshake with a client that trusts only `trusted`; true if it completes.
    fn handshake(store: &CertStore, trusted: &Path) -> bool {
        use rustls::pki_types::ServerName;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(trusted).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut ccfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ccfg.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
        let name = ServerName::try_from("turn.test").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(ccfg), name).unwrap();
        let mut server = rustls::ServerConnection::new(store.current()).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                server.read_tls(&mut &buf[..]).unwrap();
                if server.process_new_packets().is_err() {
                    return false;
                }
            }
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                client.read_tls(&mut &buf[..]).unwrap();
                if client.process_new_packets().is_err() {
                    return false;
                }
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                assert_eq!(server.alpn_protocol(), Some(ALPN_STUN_TURN));
                return true;
            }
        }
        false
    }

    #[test]
    fn new_handshakes_see_the_reloaded_certificate() {
        let dir = std::env::temp_dir().join(format!("turnd-certswap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c1, k1) = write_pair(&dir, "one", "turn.test");
        let (c2, k2) = write_pair(&dir, "two", "turn.test");
        let store = CertStore::load(&c1, &k1).unwrap();
        assert!(handshake(&store, &c1));
        assert!(!handshake(&store, &c2), "certificate two is not served yet");
        store.reload(&c2, &k2).unwrap();
        assert!(
            handshake(&store, &c2),
            "new connections get certificate two"
        );
        assert!(!handshake(&store, &c1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reload_swaps_for_new_readers_and_keeps_old_on_error() {
        let dir = std::env::temp_dir().join(format!("turnd-certstore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c1, k1) = write_pair(&dir, "one", "one.test");
        let (c2, k2) = write_pair(&dir, "two", "two.test");
        let store = CertStore::load(&c1, &k1).unwrap();
        let before = store.current();
        assert_eq!(before.alpn_protocols, vec![b"stun.turn".to_vec()]);
        store.reload(&c2, &k2).unwrap();
        let after = store.current();
        assert!(
            !Arc::ptr_eq(&before, &after),
            "new connections get the new config"
        );
        // A bad file leaves the current config in place.
        let bad = dir.join("bad.pem");
        std::fs::write(&bad, "not a pem").unwrap();
        let e = store.reload(&bad, &k2).unwrap_err();
        assert_eq!(e.key(), "tls.cert", "{e}");
        assert!(e.message().contains("bad.pem"), "{e}");
        let e = store.reload(&c2, &bad).unwrap_err();
        assert_eq!(e.key(), "tls.key", "{e}");
        assert!(e.message().contains("bad.pem"), "{e}");
        let e = store.reload(&c2, &dir.join("missing.key")).unwrap_err();
        assert_eq!(e.key(), "tls.key", "{e}");
        assert!(e.message().contains("missing.key"), "{e}");
        // A key that does not match the certificate is refused.
        let e = store.reload(&c1, &k2).unwrap_err();
        assert_eq!(e.key(), "tls.key", "{e}");
        assert!(e.message().contains("does not match"), "{e}");
        // A PEM block that is not a certificate.
        let junk = dir.join("junk.crt");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = store.reload(&junk, &k2).unwrap_err();
        assert_eq!(e.key(), "tls.cert", "{e}");
        assert!(Arc::ptr_eq(&after, &store.current()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
