//! The serde schema of `turnserver.toml`: one struct per `[section]`, each field's default
//! next to it (in the section's `Default`), secrets redacted from `Debug`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::{RedisSection, TcpSection, TlsSection};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    pub server: ServerSection,
    pub relay: RelaySection,
    pub allocation: AllocationSection,
    pub auth: AuthSection,
    pub peers: PeersSection,
    pub log: LogSection,
    pub tcp: TcpSection,
    pub tls: TlsSection,
    pub admin: AdminSection,
    pub limits: LimitsSection,
    /// The shared store of a fleet (`src/fleet/`); absent: a node on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSection>,
    pub telemetry: TelemetrySection,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ServerSection {
    /// UDP listen addresses; TCP listens on them too unless `tcp.enabled` is false.
    pub listen: Vec<SocketAddr>,
    pub realm: String,
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// SOFTWARE attribute value; empty means the attribute is never sent.
    pub software: String,
    /// Also send MAPPED-ADDRESS in Binding responses (for RFC 3489 clients).
    pub mapped_address: bool,
    /// Where a draining server sends new allocations (300 Try Alternate with
    /// ALTERNATE-SERVER), at most one per family; empty: they get 508.
    pub alternate_server: Vec<SocketAddr>,
    /// Seconds a drain (SIGTERM) waits for the live allocations to end before exiting.
    pub drain_timeout: u64,
    /// Use the kernel's UDP segmentation offloads (GSO on send, GRO on receive) where it has
    /// them.
    pub udp_offload: bool,
    /// Send the datagrams of a round that leave from different sockets (relay sockets to
    /// their peers) through io_uring, one system call for all, where the kernel allows it.
    pub udp_io_uring: bool,
    /// ChannelBind grants only RFC 8656 §12's channel numbers, 0x4000-0x4FFF; false (the
    /// default) grants RFC 5766 §11's 0x4000-0x7FFF, which older clients pick from.
    pub strict_channel_numbers: bool,
    /// The kernel fast path: ChannelData relayed in XDP (`auto`, `on`, `off`). See
    /// docs/kernel-offload.md.
    pub kernel_offload: crate::net::xdp::Mode,
}

impl Default for ServerSection {
    fn default() -> ServerSection {
        ServerSection {
            listen: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3478)],
            realm: "turnd".to_owned(),
            workers: 0,
            software: String::new(),
            mapped_address: false,
            alternate_server: Vec::new(),
            drain_timeout: 300,
            udp_offload: true,
            udp_io_uring: true,
            strict_channel_numbers: false,
            kernel_offload: crate::net::xdp::Mode::Off,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RelaySection {
    /// Addresses relay sockets bind to; several of a family each get the whole port range.
    /// Empty: the listen addresses' IPs.
    pub ips: Vec<IpAddr>,
    /// Addresses advertised in XOR-RELAYED-ADDRESS instead of the bound ones, at most one per family.
    pub external_ips: Vec<IpAddr>,
    pub min_port: u16,
    pub max_port: u16,
}

impl Default for RelaySection {
    fn default() -> RelaySection {
        RelaySection {
            ips: Vec::new(),
            external_ips: Vec::new(),
            min_port: 49152,
            max_port: 65535,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AllocationSection {
    pub default_lifetime: u32,
    pub max_lifetime: u32,
    /// Most live allocations one user may hold (REST users counted without the
    /// timestamp); 0 means no limit. Over it: 486.
    pub user_quota: u32,
    /// Most live allocations on the whole server; 0 means no limit. Over it: 508.
    pub total_quota: u32,
    /// Bandwidth limit of each allocation in bits per second, each direction; 0: none.
    pub max_bps: u64,
    /// Token bucket size in bytes; 0: a quarter second at max-bps (at least 1500).
    pub bps_burst: u64,
    /// Most the limits of live allocations may add up to, bits per second; 0: none.
    /// Over it: 508.
    pub bps_capacity: u64,
    /// Per-user overrides of user-quota and max-bps, keyed by user (a REST user without
    /// its timestamp).
    pub users: std::collections::BTreeMap<String, UserLimitsEntry>,
}

/// `[allocation.users.NAME]`: what one user gets instead of the defaults.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserLimitsEntry {
    pub user_quota: Option<u32>,
    pub max_bps: Option<u64>,
}

/// `[admin]`: the HTTP listener for `/metrics` and the session API.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AdminSection {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Bearer token every request must carry.
    pub token: String,
    /// Serve `/metrics` without the token to clients on loopback.
    pub metrics_open_on_loopback: bool,
    /// Most concurrent admin connections.
    pub max_connections: usize,
    /// URIs put in the `/credentials` and `/turn` answers; empty: every configured transport
    /// of every listen address (UDP, TCP, TLS).
    pub uris: Vec<String>,
    /// Keys of the TURN REST API endpoint `/turn` (an app backend's or a media server's):
    /// they open `/turn` only, never the rest of the admin API. Empty: `/turn` is off.
    pub rest_api_keys: Vec<String>,
    /// Lifetime in seconds of the credentials `/turn` mints (at most `auth.max-rest-ttl`).
    pub rest_api_ttl: u64,
    /// `/turn` requests per second from one client IP (bursts of twice as many); 0: no limit.
    pub rest_api_rate: u32,
}

impl Default for AdminSection {
    fn default() -> AdminSection {
        AdminSection {
            enabled: false,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9641),
            token: String::new(),
            metrics_open_on_loopback: false,
            max_connections: 64,
            uris: Vec::new(),
            rest_api_keys: Vec::new(),
            rest_api_ttl: 86_400,
            rest_api_rate: 20,
        }
    }
}

/// Redacts the token and the REST API keys.
impl fmt::Debug for AdminSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminSection")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("token", &"<redacted>")
            .field("metrics_open_on_loopback", &self.metrics_open_on_loopback)
            .field("max_connections", &self.max_connections)
            .field("uris", &self.uris)
            .field(
                "rest_api_keys",
                &vec!["<redacted>"; self.rest_api_keys.len()],
            )
            .field("rest_api_ttl", &self.rest_api_ttl)
            .field("rest_api_rate", &self.rest_api_rate)
            .finish()
    }
}

impl Default for AllocationSection {
    fn default() -> AllocationSection {
        AllocationSection {
            default_lifetime: 600,
            max_lifetime: 3600,
            user_quota: 0,
            total_quota: 0,
            max_bps: 0,
            bps_burst: 0,
            bps_capacity: 0,
            users: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Hex MD5(name:realm:password), as coturn's `turnadmin -k` prints it (optional `0x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Redacts the password and key, so a logged config leaks no credential.
impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserEntry")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AuthSection {
    pub users: Vec<UserEntry>,
    /// REST API shared secrets; several may be active for rotation.
    pub secrets: Vec<String>,
    pub rest_separator: char,
    /// Refuse expired REST credentials on Refresh, CreatePermission and ChannelBind too.
    pub enforce_credential_expiry: bool,
    pub nonce_lifetime: u64,
    /// Seconds ahead of now a REST username's expiry may be; further out is refused (401).
    /// Default a day (the usual TTL, the one the REST API draft suggests) plus an hour for
    /// backend and server clocks that differ.
    pub max_rest_ttl: u64,
}

impl Default for AuthSection {
    fn default() -> AuthSection {
        AuthSection {
            users: Vec::new(),
            secrets: Vec::new(),
            rest_separator: ':',
            enforce_credential_expiry: true,
            nonce_lifetime: 600,
            max_rest_ttl: 90_000,
        }
    }
}

/// Redacts the REST secrets, so a logged config leaks no credential.
impl fmt::Debug for AuthSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSection")
            .field("users", &self.users)
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("rest_separator", &self.rest_separator)
            .field("enforce_credential_expiry", &self.enforce_credential_expiry)
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("max_rest_ttl", &self.max_rest_ttl)
            .finish()
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PeersSection {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LogSection {
    pub level: String,
    /// "text" (human-readable lines) or "json" (one JSON object per line).
    pub format: String,
}

impl Default for LogSection {
    fn default() -> LogSection {
        LogSection {
            level: "info".to_owned(),
            format: "text".to_owned(),
        }
    }
}

/// `[limits]`: budgets against reflection and state exhaustion.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LimitsSection {
    /// The first-contact allowance for answers to unauthenticated UDP requests (Binding,
    /// 401, early errors) sent to an address that holds no allocation (an IPv6 one by its
    /// /64), beyond twice the bytes received from it: answers per second, counted at the
    /// size of the server's 401; 0 turns the budget off.
    pub unauth_rate: u32,
    /// The allowance's burst, in answers.
    pub unauth_burst: u32,
    /// Most live allocations per client IP (IPv6 by /64); 0 means no limit. Over it: 486.
    pub allocations_per_ip: u32,
    /// Most permissions per allocation. Over it: 508.
    pub permissions_per_allocation: usize,
    /// Most channel bindings per allocation (expired ones count during their 5-minute
    /// quarantine). Over it: 508.
    pub channels_per_allocation: usize,
}

impl Default for LimitsSection {
    fn default() -> LimitsSection {
        LimitsSection {
            unauth_rate: 1,
            unauth_burst: 8,
            allocations_per_ip: 0,
            permissions_per_allocation: 1024,
            channels_per_allocation: 1024,
        }
    }
}

/// `[telemetry]`: call quality measured at the relay (RTT per leg, loss, jitter and bitrate
/// per RTP stream) from the headers relayed payloads leave in clear. Reloadable.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TelemetrySection {
    /// Observe relayed payloads: the `quality` object of the sessions API, the
    /// `turnd_quality_*` metrics and the "call quality" log line at the end of a session.
    pub enabled: bool,
}

impl Default for TelemetrySection {
    fn default() -> TelemetrySection {
        TelemetrySection { enabled: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let c = Config::from_toml_str("").expect("empty config is valid");
        assert_eq!(c.server.listen, vec!["127.0.0.1:3478".parse().unwrap()]);
        assert_eq!(c.server.realm, "turnd");
        assert_eq!(c.server.workers, 0);
        assert_eq!(c.server.software, "");
        assert!(!c.server.mapped_address);
        assert!(c.relay.ips.is_empty() && c.relay.external_ips.is_empty());
        assert_eq!((c.relay.min_port, c.relay.max_port), (49152, 65535));
        assert_eq!(c.allocation.default_lifetime, 600);
        assert_eq!(c.allocation.max_lifetime, 3600);
        assert!(c.auth.users.is_empty() && c.auth.secrets.is_empty());
        assert_eq!(c.auth.rest_separator, ':');
        assert!(c.auth.enforce_credential_expiry);
        assert_eq!(c.auth.nonce_lifetime, 600);
        assert_eq!(c.auth.max_rest_ttl, 90_000);
        assert!(c.peers.allow.is_empty() && c.peers.deny.is_empty());
        assert_eq!(c.log.level, "info");
        assert!(c.telemetry.enabled);
        assert_eq!(c.relay_ips(), vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn debug_redacts_credentials() {
        let c = Config::from_toml_str(
            "[auth]\nusers = [{ name = \"alice\", password = \"hunter2\" }]\nsecrets = [\"s3cr3t\"]",
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("alice"));
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }
}
