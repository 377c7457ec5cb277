//! The `[tcp]` and `[tls]` sections: stream listeners, their limits and timeouts, TLS
//! certificates, PROXY protocol v2.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::validate::check_between;
use super::{Config, ConfigError, err};

/// Longest timeout accepted for any of the stream timeouts (one day).
const MAX_TIMEOUT_SECS: u64 = 86_400;
/// RFC 6062 §5.2: a Connect waits at least 30 seconds.
const MIN_CONNECT_TIMEOUT: u64 = 30;
/// Smallest per-connection write queue: one largest STUN message must fit.
const MIN_WRITE_QUEUE: usize = 65_600;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TcpSection {
    /// Also listen for TCP on every `server.listen` address.
    pub enabled: bool,
    /// Most open TCP and TLS client connections on the whole server; 0 means no limit.
    pub max_connections: usize,
    /// Most open TCP and TLS client connections from one client IP; 0 means no limit.
    pub max_connections_per_ip: usize,
    /// Seconds a connection may stay open without an allocation (authenticated request).
    pub auth_timeout: u64,
    /// Seconds without a byte either way after which a connection is closed.
    pub idle_timeout: u64,
    /// Bytes queued toward one client at most; messages past it are dropped and counted.
    pub write_queue_bytes: usize,
    /// Expect a PROXY protocol v2 header on every TCP and TLS connection.
    pub proxy_protocol: bool,
    /// Seconds to wait for an RFC 6062 Connect to a peer (447 after it).
    pub connect_timeout: u64,
}

impl Default for TcpSection {
    fn default() -> TcpSection {
        TcpSection {
            enabled: true,
            max_connections: 10_000,
            max_connections_per_ip: 100,
            auth_timeout: 30,
            idle_timeout: 3600,
            write_queue_bytes: 262_144,
            proxy_protocol: false,
            connect_timeout: 30,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TlsSection {
    /// TLS listen addresses (`turns:`).
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Seconds for the TLS handshake (and the PROXY header) to complete.
    pub handshake_timeout: u64,
    /// Tell plain TCP and TLS apart by the first byte on every stream listener.
    pub mux: bool,
}

impl Default for TlsSection {
    fn default() -> TlsSection {
        TlsSection {
            listen: Vec::new(),
            cert: None,
            key: None,
            handshake_timeout: 10,
            mux: false,
        }
    }
}

fn check_timeout(key: &str, v: u64) -> Result<(), ConfigError> {
    check_between(key, v, 1..=MAX_TIMEOUT_SECS, " seconds")
}

impl Config {
    /// Checks `[tcp]` and `[tls]`.
    pub(super) fn validate_streams(&self) -> Result<(), ConfigError> {
        let t = &self.tcp;
        check_timeout("tcp.auth-timeout", t.auth_timeout)?;
        check_timeout("tcp.idle-timeout", t.idle_timeout)?;
        // RFC 6062 §5.2: the Connect timeout MUST be at least 30 seconds.
        if !(MIN_CONNECT_TIMEOUT..=MAX_TIMEOUT_SECS).contains(&t.connect_timeout) {
            return err(
                "tcp.connect-timeout",
                format!(
                    "must be between {MIN_CONNECT_TIMEOUT} (RFC 6062) and {MAX_TIMEOUT_SECS} seconds, got {}",
                    t.connect_timeout
                ),
            );
        }
        if t.write_queue_bytes < MIN_WRITE_QUEUE {
            return err(
                "tcp.write-queue-bytes",
                format!(
                    "must be at least {MIN_WRITE_QUEUE} (one largest message), got {}",
                    t.write_queue_bytes
                ),
            );
        }
        let s = &self.tls;
        check_timeout("tls.handshake-timeout", s.handshake_timeout)?;
        for (i, a) in s.listen.iter().enumerate() {
            if s.listen[..i].contains(a) {
                return err("tls.listen", format!("duplicate address {a}"));
            }
            if a.ip().is_multicast()
                || matches!(a.ip(), std::net::IpAddr::V4(v4) if v4.is_broadcast())
            {
                return err("tls.listen", format!("{a} is not a unicast address"));
            }
            if t.enabled && a.port() != 0 && self.server.listen.contains(a) {
                return err(
                    "tls.listen",
                    format!(
                        "{a} is also a TCP listen address (server.listen); use tls.mux to serve both on one port"
                    ),
                );
            }
        }
        let needs_cert = !s.listen.is_empty() || s.mux;
        match (&s.cert, &s.key) {
            (None, None) if needs_cert => {
                return err("tls.cert", "required when tls.listen or tls.mux is set");
            }
            (Some(_), None) => return err("tls.key", "required with tls.cert"),
            (None, Some(_)) => return err("tls.cert", "required with tls.key"),
            _ => {}
        }
        Ok(())
    }

    /// Whether TLS is served (a certificate is configured and some listener takes TLS).
    pub fn tls_enabled(&self) -> bool {
        self.tls.cert.is_some() && (!self.tls.listen.is_empty() || self.tls.mux)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn invalid(toml: &str, key: &str) {
        let e = Config::from_toml_str(toml).expect_err("invalid config accepted");
        assert_eq!(e.key(), key, "{e}");
    }

    #[test]
    fn defaults() {
        let c = Config::from_toml_str("").unwrap();
        assert!(c.tcp.enabled);
        assert_eq!(c.tcp.max_connections, 10_000);
        assert_eq!(c.tcp.max_connections_per_ip, 100);
        assert_eq!(c.tcp.auth_timeout, 30);
        assert_eq!(c.tcp.idle_timeout, 3600);
        assert_eq!(c.tcp.write_queue_bytes, 262_144);
        assert!(!c.tcp.proxy_protocol);
        assert_eq!(c.tcp.connect_timeout, 30);
        assert!(c.tls.listen.is_empty() && c.tls.cert.is_none() && c.tls.key.is_none());
        assert_eq!(c.tls.handshake_timeout, 10);
        assert!(!c.tls.mux);
        assert!(!c.tls_enabled());
    }

    #[test]
    fn errors_name_the_key() {
        invalid("[tcp]\nauth-timeout = 0\n", "tcp.auth-timeout");
        invalid("[tcp]\nidle-timeout = 100000\n", "tcp.idle-timeout");
        invalid("[tcp]\nconnect-timeout = 0\n", "tcp.connect-timeout");
        invalid("[tcp]\nconnect-timeout = 29\n", "tcp.connect-timeout");
        invalid("[tcp]\nwrite-queue-bytes = 100\n", "tcp.write-queue-bytes");
        invalid("[tls]\nhandshake-timeout = 0\n", "tls.handshake-timeout");
        invalid("[tls]\nlisten = [\"127.0.0.1:5349\"]\n", "tls.cert");
        invalid("[tls]\nmux = true\n", "tls.cert");
        invalid("[tls]\ncert = \"a.pem\"\n", "tls.key");
        invalid("[tls]\nkey = \"a.pem\"\n", "tls.cert");
        invalid(
            "[tls]\nlisten = [\"127.0.0.1:5349\", \"127.0.0.1:5349\"]\ncert = \"c\"\nkey = \"k\"\n",
            "tls.listen",
        );
        invalid(
            "[server]\nlisten = [\"127.0.0.1:3478\"]\n[tls]\nlisten = [\"127.0.0.1:3478\"]\ncert = \"c\"\nkey = \"k\"\n",
            "tls.listen",
        );
        let ok = Config::from_toml_str(
            "[tls]\nlisten = [\"127.0.0.1:5349\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        )
        .unwrap();
        assert!(ok.tls_enabled());
    }
}
