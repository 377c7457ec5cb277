//! `turnserver.toml`: the schema, its defaults, and the checks run at load.
//!
//! The struct fields below are the interface the rest of the server reads. Every section has
//! `#[serde(default)]`, so a file only needs the keys it changes; `deny_unknown_fields` makes a
//! misspelt key an error instead of a silently ignored line. [`Config::validate`] checks what the
//! types cannot, and every [`ConfigError`] names the key (`relay.min-port`) and says what is
//! wrong. [`Config::load`] reads the file (or the embedded example) and applies the command-line
//! overrides of [`crate::cli::ServeArgs`].

mod streams;
pub use streams::{TcpSection, TlsSection};

use crate::auth::{AuthConfig, Authenticator, UserSecret};
use crate::cli::ServeArgs;
use crate::turn::peer_policy::Cidr;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The documented example config, embedded so `turnd` runs with no file.
pub const DEFAULT_CONFIG: &str = include_str!("../turnserver.toml");

/// The password of the example user in [`DEFAULT_CONFIG`]; refused off loopback.
pub const EXAMPLE_PASSWORD: &str = "change-me";

/// REALM and SOFTWARE: fewer than 128 characters and at most 763 bytes (RFC 8489 §14.9, §14.14).
const MAX_TEXT_BYTES: usize = 763;
const MAX_TEXT_CHARS: usize = 127;
/// USERNAME: fewer than 513 bytes (RFC 8489 §14.3).
const MAX_USERNAME_BYTES: usize = 512;
const MAX_WORKERS: usize = 1024;
const MAX_LIFETIME_LIMIT: u32 = 604_800;
const NONCE_LIFETIME_RANGE: std::ops::RangeInclusive<u64> = 30..=86_400;
/// `auth.max-rest-ttl`: from a minute (backend and server clocks differ by seconds) to ten
/// years.
const MAX_REST_TTL_RANGE: std::ops::RangeInclusive<u64> = 60..=315_360_000;
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
const LOG_FORMATS: [&str; 2] = ["text", "json"];
/// Longest `server.drain-timeout`, one day.
const MAX_DRAIN_TIMEOUT: u64 = 86_400;

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
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RelaySection {
    /// Addresses relay sockets bind to, at most one per family. Empty: the listen addresses' IPs.
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
    /// URIs put in the `/credentials` answer; empty: one per UDP listen address.
    pub uris: Vec<String>,
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
        }
    }
}

/// Redacts the token.
impl fmt::Debug for AdminSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminSection")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("token", &"<redacted>")
            .field("metrics_open_on_loopback", &self.metrics_open_on_loopback)
            .field("max_connections", &self.max_connections)
            .field("uris", &self.uris)
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

/// Largest unauthenticated-answer allowance a source can be given (answers per second, and
/// burst).
const MAX_UNAUTH_RATE: u32 = 1_000_000;
/// RFC 5766 §11: channel numbers 0x4000 through 0x7FFF.
const MAX_CHANNELS: usize = 0x4000;
/// Upper bound of `limits.permissions-per-allocation`.
const MAX_PERMISSIONS_LIMIT: usize = 65_536;

/// A config that cannot be used: which key, and what is wrong with it.
///
/// Displays as `config error: <key>: <what is wrong>`. For a file that cannot be read or parsed
/// the key is the file's name, and the message carries the TOML error (key, line and column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    key: String,
    message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
    /// The dotted key path (`relay.min-port`), or the file name for read and parse errors.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error: {}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(key: impl Into<String>, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::new(key, message))
}

fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// Loopback, looking through IPv4-mapped IPv6 (`::ffff:127.0.0.1`).
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// At most one address per family; `key` names the list in the error.
fn check_one_per_family(key: &str, ips: &[IpAddr]) -> Result<(), ConfigError> {
    for (i, a) in ips.iter().enumerate() {
        if let Some(b) = ips[..i].iter().find(|b| b.is_ipv4() == a.is_ipv4()) {
            return err(
                key,
                format!(
                    "at most one {} address allowed, got {b} and {a}",
                    family(*a)
                ),
            );
        }
    }
    Ok(())
}

/// A text attribute value (REALM, SOFTWARE) that fits the RFC 8489 limits.
fn check_text(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.len() > MAX_TEXT_BYTES {
        return err(
            key,
            format!(
                "must be at most {MAX_TEXT_BYTES} bytes, got {}",
                value.len()
            ),
        );
    }
    let chars = value.chars().count();
    if chars > MAX_TEXT_CHARS {
        return err(
            key,
            format!("must be fewer than 128 characters, got {chars}"),
        );
    }
    if value.chars().any(char::is_control) {
        return err(key, "must not contain control characters");
    }
    Ok(())
}

/// Decodes a coturn-style key: 32 hex digits, optionally prefixed with `0x`.
pub fn decode_md5_key(key: &str) -> Option<[u8; 16]> {
    let hex = key
        .strip_prefix("0x")
        .or_else(|| key.strip_prefix("0X"))
        .unwrap_or(key)
        .as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    Some(out)
}

impl Config {
    /// Parses and validates a config file's text.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let config = Config::parse(s, "<input>")?;
        config.validate()?;
        Ok(config)
    }

    /// Parses without validating; `source` names the text in errors.
    fn parse(s: &str, source: &str) -> Result<Config, ConfigError> {
        toml::from_str(s).map_err(|e| {
            let key = e
                .span()
                .and_then(|span| key_at(s, span.start))
                .map(|k| format!("{source}: {k}"))
                .unwrap_or_else(|| source.to_string());
            ConfigError::new(key, e.to_string().trim_end())
        })
    }

    /// Reads the file given by `--config` (or the embedded [`DEFAULT_CONFIG`]), applies the
    /// command-line overrides, then validates the result.
    ///
    /// A list flag given on the command line replaces the file's list; a scalar flag replaces
    /// the file's value. Two conveniences apply only to the embedded example config: `--listen`
    /// without `--relay-ip` makes the relay IPs follow the new listen addresses (instead of the
    /// example's loopback ones), and `--user` or `--auth-secret` drops the example user.
    pub fn load(cli: &ServeArgs) -> Result<Config, ConfigError> {
        let mut config = match &cli.config {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::new(name.as_str(), format!("cannot read: {e}")))?;
                Config::parse(&text, &name)?
            }
            None => {
                let mut config = Config::parse(DEFAULT_CONFIG, "<embedded turnserver.toml>")?;
                if !cli.listen.is_empty() && cli.relay_ip.is_empty() {
                    config.relay.ips.clear();
                }
                if !cli.user.is_empty() || !cli.auth_secret.is_empty() {
                    config.auth.users.clear();
                }
                config
            }
        };
        config.apply_overrides(cli);
        config.validate()?;
        Ok(config)
    }

    /// Applies the command-line flags over the file's values, without validating.
    pub fn apply_overrides(&mut self, cli: &ServeArgs) {
        fn replace<T: Clone>(target: &mut Vec<T>, flag: &[T]) {
            if !flag.is_empty() {
                *target = flag.to_vec();
            }
        }
        fn set<T: Clone>(target: &mut T, flag: &Option<T>) {
            if let Some(v) = flag {
                *target = v.clone();
            }
        }
        replace(&mut self.server.listen, &cli.listen);
        set(&mut self.server.realm, &cli.realm);
        set(&mut self.server.workers, &cli.workers);
        if cli.no_udp_offload {
            self.server.udp_offload = false;
        }
        if cli.no_udp_io_uring {
            self.server.udp_io_uring = false;
        }
        if cli.strict_channel_numbers {
            self.server.strict_channel_numbers = true;
        }
        if !cli.user.is_empty() {
            self.auth.users = cli
                .user
                .iter()
                .map(|u| UserEntry {
                    name: u.name.clone(),
                    password: Some(u.password.clone()),
                    key: None,
                })
                .collect();
        }
        replace(&mut self.auth.secrets, &cli.auth_secret);
        replace(&mut self.relay.ips, &cli.relay_ip);
        replace(&mut self.relay.external_ips, &cli.external_ip);
        set(&mut self.relay.min_port, &cli.min_port);
        set(&mut self.relay.max_port, &cli.max_port);
        set(&mut self.allocation.user_quota, &cli.user_quota);
        set(&mut self.allocation.total_quota, &cli.total_quota);
        set(&mut self.allocation.max_bps, &cli.max_bps);
        set(&mut self.allocation.bps_burst, &cli.bps_burst);
        set(&mut self.allocation.bps_capacity, &cli.bps_capacity);
        if let Some(a) = cli.admin_listen {
            self.admin.listen = a;
            self.admin.enabled = true;
        }
        set(&mut self.admin.token, &cli.admin_token);
        replace(&mut self.peers.allow, &cli.allow_peer);
        replace(&mut self.peers.deny, &cli.deny_peer);
        set(&mut self.log.level, &cli.log_level);
        replace(&mut self.tls.listen, &cli.tls_listen);
        if cli.cert.is_some() {
            self.tls.cert = cli.cert.clone();
        }
        if cli.key.is_some() {
            self.tls.key = cli.key.clone();
        }
        set(&mut self.limits.unauth_rate, &cli.unauth_rate);
        set(&mut self.limits.unauth_burst, &cli.unauth_burst);
        set(&mut self.limits.allocations_per_ip, &cli.allocations_per_ip);
        set(
            &mut self.limits.permissions_per_allocation,
            &cli.permissions_per_allocation,
        );
        set(
            &mut self.limits.channels_per_allocation,
            &cli.channels_per_allocation,
        );
    }

    /// Checks everything the types do not; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_relay()?;
        self.validate_allocation()?;
        self.validate_auth()?;
        self.validate_peers()?;
        self.validate_log()?;
        self.validate_streams()?;
        self.validate_limits()?;
        self.validate_admin()?;
        self.validate_abuse_limits()?;
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let a = &self.allocation;
        for (name, u) in &a.users {
            let key = format!("allocation.users.{name}");
            if name.is_empty() || name.len() > MAX_USERNAME_BYTES {
                return err(key, "user names are 1 to 512 bytes");
            }
            if u.user_quota.is_none() && u.max_bps.is_none() {
                return err(key, "sets nothing: give user-quota and/or max-bps");
            }
        }
        if a.bps_capacity > 0 {
            if a.max_bps == 0 {
                return err(
                    "allocation.bps-capacity",
                    "needs allocation.max-bps: an allocation without a limit would take \
                     the whole capacity",
                );
            }
            if let Some((name, _)) = a.users.iter().find(|(_, u)| u.max_bps == Some(0)) {
                return err(
                    format!("allocation.users.{name}.max-bps"),
                    "must not be 0 (no limit) while allocation.bps-capacity is set",
                );
            }
        }
        Ok(())
    }

    fn validate_abuse_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.unauth_rate > MAX_UNAUTH_RATE {
            return err(
                "limits.unauth-rate",
                format!(
                    "must be at most {MAX_UNAUTH_RATE} (0 means no limit), got {}",
                    l.unauth_rate
                ),
            );
        }
        if l.unauth_rate > 0 && l.unauth_burst == 0 {
            return err(
                "limits.unauth-burst",
                "must be at least 1 while limits.unauth-rate is set",
            );
        }
        if l.unauth_burst > MAX_UNAUTH_RATE {
            return err(
                "limits.unauth-burst",
                format!("must be at most {MAX_UNAUTH_RATE}, got {}", l.unauth_burst),
            );
        }
        if !(1..=MAX_PERMISSIONS_LIMIT).contains(&l.permissions_per_allocation) {
            return err(
                "limits.permissions-per-allocation",
                format!(
                    "must be between 1 and {MAX_PERMISSIONS_LIMIT}, got {}",
                    l.permissions_per_allocation
                ),
            );
        }
        if !(1..=MAX_CHANNELS).contains(&l.channels_per_allocation) {
            return err(
                "limits.channels-per-allocation",
                format!(
                    "must be between 1 and {MAX_CHANNELS} (the channel numbers there are), got {}",
                    l.channels_per_allocation
                ),
            );
        }
        Ok(())
    }

    fn validate_admin(&self) -> Result<(), ConfigError> {
        let a = &self.admin;
        if !a.enabled {
            return Ok(());
        }
        // An empty token is allowed only for a metrics-only listener: /metrics served to
        // loopback, every other route refused (see `admin::api::authorized`).
        let metrics_only = a.token.is_empty() && a.metrics_open_on_loopback;
        if a.token.len() < 16 && !metrics_only {
            return err(
                "admin.token",
                "must be at least 16 characters when the admin listener is enabled \
                 (or empty with admin.metrics-open-on-loopback = true, to serve only /metrics \
                 to loopback)",
            );
        }
        if a.token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return err(
                "admin.token",
                "must not contain whitespace or control characters",
            );
        }
        if a.listen.ip().is_multicast() || is_broadcast(a.listen.ip()) {
            return err(
                "admin.listen",
                format!("{} is not a unicast address", a.listen),
            );
        }
        if a.max_connections == 0 {
            return err("admin.max-connections", "must be at least 1");
        }
        Ok(())
    }

    /// The per-user overrides in the form the quotas take.
    pub fn user_limits(&self) -> rustc_hash::FxHashMap<String, crate::turn::quota::UserLimits> {
        self.allocation
            .users
            .iter()
            .map(|(name, u)| {
                (
                    name.clone(),
                    crate::turn::quota::UserLimits {
                        quota: u.user_quota,
                        max_bps: u.max_bps,
                    },
                )
            })
            .collect()
    }

    /// The core's [`crate::turn::Limits`] from `[limits]`.
    pub fn core_limits(&self) -> crate::turn::Limits {
        crate::turn::Limits {
            max_channels: self.limits.channels_per_allocation,
        }
    }

    /// The per-source budget of unauthenticated responses from `[limits]`.
    pub fn unauth_limit(&self) -> crate::turn::rate_limit::RateLimit {
        crate::turn::rate_limit::RateLimit {
            rate: self.limits.unauth_rate,
            burst: self.limits.unauth_burst,
        }
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.listen.is_empty() {
            return err("server.listen", "must list at least one address");
        }
        for (i, a) in s.listen.iter().enumerate() {
            if s.listen[..i].contains(a) {
                return err("server.listen", format!("duplicate address {a}"));
            }
            let ip = a.ip();
            if ip.is_multicast() || is_broadcast(ip) {
                return err("server.listen", format!("{a} is not a unicast address"));
            }
        }
        if s.realm.is_empty() {
            return err("server.realm", "must not be empty");
        }
        check_text("server.realm", &s.realm)?;
        if s.workers > MAX_WORKERS {
            return err(
                "server.workers",
                format!(
                    "must be at most {MAX_WORKERS} (0 means one per CPU core), got {}",
                    s.workers
                ),
            );
        }
        check_text("server.software", &s.software)?;
        check_one_per_family(
            "server.alternate-server",
            &s.alternate_server
                .iter()
                .map(SocketAddr::ip)
                .collect::<Vec<_>>(),
        )?;
        for a in &s.alternate_server {
            let ip = a.ip();
            if ip.is_unspecified() || ip.is_multicast() || is_broadcast(ip) || a.port() == 0 {
                return err(
                    "server.alternate-server",
                    format!("{a} must be a specific unicast address with a port"),
                );
            }
        }
        if s.drain_timeout > MAX_DRAIN_TIMEOUT {
            return err(
                "server.drain-timeout",
                format!(
                    "must be at most {MAX_DRAIN_TIMEOUT} seconds, got {}",
                    s.drain_timeout
                ),
            );
        }
        Ok(())
    }

    fn validate_relay(&self) -> Result<(), ConfigError> {
        let r = &self.relay;
        check_one_per_family("relay.ips", &r.ips)?;
        check_one_per_family("relay.external-ips", &r.external_ips)?;
        let relay_ips = self.relay_ips();
        if relay_ips.is_empty() {
            return err(
                "relay.ips",
                "must be set when every listen address is unspecified (0.0.0.0 or ::): \
                 give the address relay sockets bind to, one per family",
            );
        }
        let key = if r.ips.is_empty() {
            "server.listen"
        } else {
            "relay.ips"
        };
        for ip in &relay_ips {
            if ip.is_unspecified() || ip.is_multicast() || is_broadcast(*ip) {
                return err(
                    key,
                    format!("relay address {ip} must be a specific unicast address"),
                );
            }
        }
        for ip in &r.external_ips {
            if ip.is_unspecified() || ip.is_multicast() || is_broadcast(*ip) {
                return err(
                    "relay.external-ips",
                    format!("{ip} must be a specific unicast address"),
                );
            }
            if !relay_ips.iter().any(|r| r.is_ipv4() == ip.is_ipv4()) {
                return err(
                    "relay.external-ips",
                    format!(
                        "{ip} has no {} relay address to stand for \
                         (set relay.ips or listen on an {} address)",
                        family(*ip),
                        family(*ip)
                    ),
                );
            }
        }
        if r.min_port == 0 {
            return err("relay.min-port", "must be at least 1");
        }
        if r.min_port > r.max_port {
            return err(
                "relay.min-port",
                format!(
                    "must not exceed relay.max-port ({} > {})",
                    r.min_port, r.max_port
                ),
            );
        }
        Ok(())
    }

    fn validate_allocation(&self) -> Result<(), ConfigError> {
        let a = &self.allocation;
        if a.default_lifetime < 1 {
            return err("allocation.default-lifetime", "must be at least 1 second");
        }
        if a.max_lifetime < a.default_lifetime {
            return err(
                "allocation.max-lifetime",
                format!(
                    "must not be less than allocation.default-lifetime ({} < {})",
                    a.max_lifetime, a.default_lifetime
                ),
            );
        }
        if a.max_lifetime > MAX_LIFETIME_LIMIT {
            return err(
                "allocation.max-lifetime",
                format!(
                    "must be at most {MAX_LIFETIME_LIMIT} seconds (7 days), got {}",
                    a.max_lifetime
                ),
            );
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        let mut names = HashSet::new();
        for u in &a.users {
            if u.name.is_empty() {
                return err("auth.users", "a user has an empty name");
            }
            if u.name.len() > MAX_USERNAME_BYTES {
                return err(
                    "auth.users",
                    format!(
                        "user name {:?}... is longer than {MAX_USERNAME_BYTES} bytes",
                        u.name.chars().take(16).collect::<String>()
                    ),
                );
            }
            if u.name.chars().any(char::is_control) {
                return err(
                    "auth.users",
                    format!("user name {:?} contains control characters", u.name),
                );
            }
            if !names.insert(u.name.as_str()) {
                return err("auth.users", format!("duplicate user {:?}", u.name));
            }
            match (&u.password, &u.key) {
                (Some(_), Some(_)) => {
                    return err(
                        "auth.users",
                        format!(
                            "user {:?} has both password and key; give exactly one",
                            u.name
                        ),
                    );
                }
                (None, None) => {
                    return err(
                        "auth.users",
                        format!(
                            "user {:?} has neither password nor key; give exactly one",
                            u.name
                        ),
                    );
                }
                (Some(p), None) if p.is_empty() => {
                    return err(
                        "auth.users",
                        format!("user {:?} has an empty password", u.name),
                    );
                }
                (None, Some(k)) if decode_md5_key(k).is_none() => {
                    return err(
                        "auth.users",
                        format!(
                            "user {:?}: key must be 32 hex digits (optionally prefixed 0x), \
                             MD5(name:realm:password) as `turnadmin -k` prints it",
                            u.name
                        ),
                    );
                }
                _ => {}
            }
        }
        let mut secrets = HashSet::new();
        for (i, s) in a.secrets.iter().enumerate() {
            if s.is_empty() {
                return err("auth.secrets", format!("secret #{} is empty", i + 1));
            }
            if !secrets.insert(s.as_str()) {
                return err(
                    "auth.secrets",
                    format!("secret #{} is a duplicate of an earlier one", i + 1),
                );
            }
        }
        let sep = a.rest_separator;
        if sep.is_ascii_digit() || sep.is_whitespace() {
            return err(
                "auth.rest-separator",
                format!("must not be a digit or whitespace, got {sep:?}"),
            );
        }
        if !NONCE_LIFETIME_RANGE.contains(&a.nonce_lifetime) {
            return err(
                "auth.nonce-lifetime",
                format!(
                    "must be between {} and {} seconds, got {}",
                    NONCE_LIFETIME_RANGE.start(),
                    NONCE_LIFETIME_RANGE.end(),
                    a.nonce_lifetime
                ),
            );
        }
        if !MAX_REST_TTL_RANGE.contains(&a.max_rest_ttl) {
            return err(
                "auth.max-rest-ttl",
                format!(
                    "must be between {} and {} seconds, got {}",
                    MAX_REST_TTL_RANGE.start(),
                    MAX_REST_TTL_RANGE.end(),
                    a.max_rest_ttl
                ),
            );
        }
        let uses_example = a
            .users
            .iter()
            .any(|u| u.password.as_deref() == Some(EXAMPLE_PASSWORD));
        let public = self.server.listen.iter().find(|a| !is_loopback(a.ip()));
        if let (true, Some(addr)) = (uses_example, public) {
            return err(
                "auth.users",
                format!(
                    "the example password {EXAMPLE_PASSWORD:?} may only be used on loopback, \
                     but server.listen has {addr}; replace that user \
                     (or pass --user / --auth-secret)"
                ),
            );
        }
        Ok(())
    }

    fn validate_peers(&self) -> Result<(), ConfigError> {
        for (key, list) in [
            ("peers.allow", &self.peers.allow),
            ("peers.deny", &self.peers.deny),
        ] {
            for s in list {
                if let Err(e) = s.parse::<Cidr>() {
                    return err(key, format!("invalid CIDR {s:?}: {e}"));
                }
            }
        }
        Ok(())
    }

    fn validate_log(&self) -> Result<(), ConfigError> {
        if !LOG_LEVELS.contains(&self.log.level.as_str()) {
            return err(
                "log.level",
                format!(
                    "must be one of {}, got {:?}",
                    LOG_LEVELS.join(", "),
                    self.log.level
                ),
            );
        }
        if !LOG_FORMATS.contains(&self.log.format.as_str()) {
            return err(
                "log.format",
                format!(
                    "must be one of {}, got {:?}",
                    LOG_FORMATS.join(", "),
                    self.log.format
                ),
            );
        }
        Ok(())
    }

    /// The IPs relay sockets bind to: `relay.ips` if set, else the first specific (not
    /// unspecified) listen IP of each family, IPv4 first.
    pub fn relay_ips(&self) -> Vec<IpAddr> {
        if !self.relay.ips.is_empty() {
            return self.relay.ips.clone();
        }
        let first = |v4: bool| {
            self.server
                .listen
                .iter()
                .map(SocketAddr::ip)
                .find(|ip| ip.is_ipv4() == v4 && !ip.is_unspecified())
        };
        [first(true), first(false)].into_iter().flatten().collect()
    }

    /// The address advertised for a relay socket bound to `relay`: the external IP of the same
    /// family, or `relay` itself.
    pub fn external_ip_for(&self, relay: IpAddr) -> IpAddr {
        self.relay
            .external_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == relay.is_ipv4())
            .unwrap_or(relay)
    }

    /// The static users in the form the authenticator takes. Entries that do not validate are
    /// skipped (call [`Config::validate`] first; [`Config::load`] does).
    pub fn user_secrets(&self) -> Vec<(String, UserSecret)> {
        self.auth
            .users
            .iter()
            .filter_map(|u| {
                let secret = match (&u.password, &u.key) {
                    (Some(p), None) => UserSecret::Password(p.clone()),
                    (None, Some(k)) => UserSecret::Md5Key(decode_md5_key(k)?),
                    _ => return None,
                };
                Some((u.name.clone(), secret))
            })
            .collect()
    }

    /// The authenticator of these settings (users, REST secrets, realm, nonce lifetime, the
    /// REST expiry ceiling), nonces signed with `nonce_key`: what start and reload build.
    pub fn authenticator(&self, nonce_key: [u8; 32]) -> Authenticator {
        Authenticator::new(AuthConfig {
            realm: self.server.realm.clone(),
            users: self.user_secrets(),
            secrets: self.auth.secrets.clone(),
            rest_separator: self.auth.rest_separator,
            nonce_lifetime_secs: self.auth.nonce_lifetime,
            nonce_key,
        })
        .with_max_rest_ttl(self.auth.max_rest_ttl)
    }

    /// The operator's peer rules as (allow, deny). Entries that do not parse are skipped (call
    /// [`Config::validate`] first; [`Config::load`] does).
    pub fn peer_rules(&self) -> (Vec<Cidr>, Vec<Cidr>) {
        let parse = |list: &[String]| list.iter().filter_map(|s| s.parse().ok()).collect();
        (parse(&self.peers.allow), parse(&self.peers.deny))
    }
}

/// The dotted key (`relay.min-port`) of the `key = value` line holding byte `offset`, found
/// from the line itself and the last `[table]` header above it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?;
    let (name, _) = line.split_once('=')?;
    let name = name.trim().trim_matches('"');
    if name.is_empty() || name.starts_with('[') {
        return None;
    }
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{name}"),
        _ => name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    /// Parses a config (without validating) and returns the validation error.
    fn invalid(toml: &str) -> ConfigError {
        let config = Config::parse(toml, "<test>").expect("test config parses");
        match config.validate() {
            Ok(()) => panic!("expected a validation error for:\n{toml}"),
            Err(e) => e,
        }
    }

    fn assert_invalid(toml: &str, key: &str, needle: &str) {
        let e = invalid(toml);
        assert_eq!(e.key(), key, "wrong key in {e}");
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("config error: {key}: ")),
            "bad format: {shown}"
        );
        assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
    }

    fn serve(args: &[&str]) -> ServeArgs {
        let argv = std::iter::once("turnd").chain(args.iter().copied());
        Cli::try_parse_from(argv).expect("args parse").serve
    }

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
        assert_eq!(c.relay_ips(), vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn embedded_example_parses_and_validates() {
        let c = Config::from_toml_str(DEFAULT_CONFIG).expect("valid");
        assert_eq!(c.server.realm, "turnd.local");
        assert_eq!(c.relay_ips().len(), 2);
        assert_eq!(c.auth.users.len(), 1);
        assert_eq!(c.auth.users[0].name, "demo");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml_str("[server]\nbogus = 1\n").unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("bogus"), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");
        let e = Config::from_toml_str("[sever]\n").unwrap_err();
        assert!(e.to_string().contains("sever"), "{e}");
    }

    #[test]
    fn type_errors_are_reported() {
        let e = Config::from_toml_str("[relay]\nmin-port = 70000\n").unwrap_err();
        assert!(e.to_string().contains("min-port"), "{e}");
        let e = Config::from_toml_str("[server]\nlisten = [\"nope\"]\n").unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }

    #[test]
    fn server_errors() {
        assert_invalid("[server]\nlisten = []", "server.listen", "at least one");
        assert_invalid(
            "[server]\nlisten = [\"127.0.0.1:3478\", \"127.0.0.1:3478\"]",
            "server.listen",
            "duplicate",
        );
        assert_invalid("[server]\nrealm = \"\"", "server.realm", "empty");
        let long = "r".repeat(764);
        assert_invalid(
            &format!("[server]\nrealm = \"{long}\""),
            "server.realm",
            "763 bytes",
        );
        let long = "é".repeat(128);
        assert_invalid(
            &format!("[server]\nrealm = \"{long}\""),
            "server.realm",
            "128 characters",
        );
        assert_invalid("[server]\nrealm = \"a\\nb\"", "server.realm", "control");
        assert_invalid("[server]\nworkers = 1025", "server.workers", "1024");
        let long = "s".repeat(764);
        assert_invalid(
            &format!("[server]\nsoftware = \"{long}\""),
            "server.software",
            "763",
        );
        Config::from_toml_str("[server]\nworkers = 1024\nsoftware = \"turnd 0.1\"").unwrap();
    }

    #[test]
    fn relay_errors() {
        assert_invalid(
            "[relay]\nips = [\"127.0.0.1\", \"127.0.0.2\"]",
            "relay.ips",
            "at most one IPv4",
        );
        assert_invalid(
            "[relay]\nexternal-ips = [\"::1\", \"::2\"]",
            "relay.external-ips",
            "at most one IPv6",
        );
        assert_invalid(
            "[relay]\nexternal-ips = [\"2001:db8::1\"]",
            "relay.external-ips",
            "no IPv6 relay address",
        );
        assert_invalid(
            "[server]\nlisten = [\"0.0.0.0:3478\", \"[::]:3478\"]",
            "relay.ips",
            "must be set when every listen address is unspecified",
        );
        assert_invalid(
            "[relay]\nips = [\"0.0.0.0\"]",
            "relay.ips",
            "specific unicast",
        );
        assert_invalid(
            "[relay]\nips = [\"ff02::1\"]",
            "relay.ips",
            "specific unicast",
        );
        assert_invalid(
            "[relay]\nips = [\"224.0.0.1\"]",
            "relay.ips",
            "specific unicast",
        );
        assert_invalid(
            "[relay]\nexternal-ips = [\"0.0.0.0\"]",
            "relay.external-ips",
            "specific unicast",
        );
        assert_invalid("[relay]\nmin-port = 0", "relay.min-port", "at least 1");
        let e = invalid("[relay]\nmin-port = 60000\nmax-port = 50000");
        assert_eq!(
            e.to_string(),
            "config error: relay.min-port: must not exceed relay.max-port (60000 > 50000)"
        );
        Config::from_toml_str("[relay]\nmin-port = 50000\nmax-port = 50000").unwrap();
    }

    #[test]
    fn relay_ips_derive_from_listen() {
        let c = Config::from_toml_str(
            "[server]\nlisten = [\"0.0.0.0:3478\", \"[::]:3478\", \"192.0.2.1:3478\", \
             \"192.0.2.2:3478\", \"[2001:db8::1]:3478\"]",
        )
        .unwrap();
        assert_eq!(
            c.relay_ips(),
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        // Unspecified for one family, specific for the other: only the specific family relays.
        let c =
            Config::from_toml_str("[server]\nlisten = [\"0.0.0.0:3478\", \"[2001:db8::1]:3478\"]")
                .unwrap();
        assert_eq!(
            c.relay_ips(),
            vec!["2001:db8::1".parse::<IpAddr>().unwrap()]
        );
        // Explicit relay IPs win.
        let c = Config::from_toml_str(
            "[server]\nlisten = [\"0.0.0.0:3478\"]\n[relay]\nips = [\"192.0.2.7\"]",
        )
        .unwrap();
        assert_eq!(c.relay_ips(), vec!["192.0.2.7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn external_ip_for_picks_the_same_family() {
        let c = Config::from_toml_str(
            "[server]\nlisten = [\"10.0.0.5:3478\", \"[fd00::5]:3478\"]\n\
             [relay]\nexternal-ips = [\"203.0.113.9\"]",
        )
        .unwrap();
        let v4: IpAddr = "10.0.0.5".parse().unwrap();
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(
            c.external_ip_for(v4),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(c.external_ip_for(v6), v6);
    }

    #[test]
    fn allocation_errors() {
        assert_invalid(
            "[allocation]\ndefault-lifetime = 0",
            "allocation.default-lifetime",
            "at least 1",
        );
        assert_invalid(
            "[allocation]\ndefault-lifetime = 700\nmax-lifetime = 600",
            "allocation.max-lifetime",
            "(600 < 700)",
        );
        assert_invalid(
            "[allocation]\nmax-lifetime = 604801",
            "allocation.max-lifetime",
            "604800",
        );
        Config::from_toml_str("[allocation]\ndefault-lifetime = 1\nmax-lifetime = 604800").unwrap();
    }

    #[test]
    fn user_errors() {
        assert_invalid(
            "[auth]\nusers = [{ name = \"\", password = \"p\" }]",
            "auth.users",
            "empty name",
        );
        assert_invalid(
            "[auth]\nusers = [{ name = \"a\", password = \"p\" }, { name = \"a\", password = \"q\" }]",
            "auth.users",
            "duplicate user \"a\"",
        );
        assert_invalid(
            "[auth]\nusers = [{ name = \"a\", password = \"p\", key = \"00112233445566778899aabbccddeeff\" }]",
            "auth.users",
            "both password and key",
        );
        assert_invalid(
            "[auth]\nusers = [{ name = \"a\" }]",
            "auth.users",
            "neither password nor key",
        );
        assert_invalid(
            "[auth]\nusers = [{ name = \"a\", password = \"\" }]",
            "auth.users",
            "empty password",
        );
        for bad in [
            "0011",
            "0x0011223344556677889900aabbccddeeff",
            "zz112233445566778899aabbccddeeff",
            "",
        ] {
            assert_invalid(
                &format!("[auth]\nusers = [{{ name = \"a\", key = \"{bad}\" }}]"),
                "auth.users",
                "32 hex digits",
            );
        }
        let long = "u".repeat(513);
        assert_invalid(
            &format!("[auth]\nusers = [{{ name = \"{long}\", password = \"p\" }}]"),
            "auth.users",
            "512 bytes",
        );
    }

    #[test]
    fn unknown_user_field_fails_parsing() {
        let e = Config::from_toml_str(
            "[auth]\nusers = [{ name = \"a\", password = \"p\", extra = 1 }]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("extra"), "{e}");
    }

    #[test]
    fn secret_and_rest_errors() {
        assert_invalid("[auth]\nsecrets = [\"\"]", "auth.secrets", "empty");
        assert_invalid(
            "[auth]\nsecrets = [\"s1\", \"s1\"]",
            "auth.secrets",
            "duplicate",
        );
        assert_invalid(
            "[auth]\nrest-separator = \"5\"",
            "auth.rest-separator",
            "digit",
        );
        assert_invalid(
            "[auth]\nrest-separator = \" \"",
            "auth.rest-separator",
            "whitespace",
        );
        assert_invalid(
            "[auth]\nnonce-lifetime = 29",
            "auth.nonce-lifetime",
            "between 30 and 86400",
        );
        assert_invalid(
            "[auth]\nnonce-lifetime = 86401",
            "auth.nonce-lifetime",
            "between 30 and 86400",
        );
        Config::from_toml_str(
            "[auth]\nsecrets = [\"a\", \"b\"]\nrest-separator = \"-\"\nnonce-lifetime = 30",
        )
        .unwrap();
        for bad in ["0", "59", "315360001"] {
            assert_invalid(
                &format!("[auth]\nmax-rest-ttl = {bad}"),
                "auth.max-rest-ttl",
                "between 60 and 315360000",
            );
        }
        let c = Config::from_toml_str("[auth]\nmax-rest-ttl = 3600").unwrap();
        assert_eq!(c.auth.max_rest_ttl, 3600);
        // A separator must be one character: the type says so.
        assert!(Config::from_toml_str("[auth]\nrest-separator = \"::\"").is_err());
    }

    #[test]
    fn peer_errors() {
        assert_invalid(
            "[peers]\nallow = [\"10.0.0.0/33\"]",
            "peers.allow",
            "10.0.0.0/33",
        );
        assert_invalid("[peers]\ndeny = [\"not-an-ip\"]", "peers.deny", "not-an-ip");
        let c = Config::from_toml_str(
            "[peers]\nallow = [\"10.0.0.0/8\", \"fd00::1\"]\ndeny = [\"10.1.0.0/16\"]",
        )
        .unwrap();
        let (allow, deny) = c.peer_rules();
        assert_eq!(allow.len(), 2);
        assert_eq!(deny.len(), 1);
        assert_eq!(allow[0].prefix(), 8);
        assert_eq!(deny[0].prefix(), 16);
    }

    #[test]
    fn log_errors() {
        assert_invalid(
            "[log]\nlevel = \"verbose\"",
            "log.level",
            "error, warn, info, debug, trace",
        );
        for level in LOG_LEVELS {
            Config::from_toml_str(&format!("[log]\nlevel = \"{level}\"")).unwrap();
        }
    }

    #[test]
    fn strict_channel_numbers_from_the_file_and_the_flag() {
        assert!(!Config::default().server.strict_channel_numbers);
        let c = Config::from_toml_str("[server]\nstrict-channel-numbers = true").unwrap();
        assert!(c.server.strict_channel_numbers);
        let e = Config::from_toml_str("[server]\nstrict-channel-numbers = 1").unwrap_err();
        assert!(e.to_string().contains("strict-channel-numbers"), "{e}");
        let mut c = Config::default();
        c.apply_overrides(&serve(&[]));
        assert!(!c.server.strict_channel_numbers);
        c.apply_overrides(&serve(&["--strict-channel-numbers"]));
        assert!(c.server.strict_channel_numbers);
    }

    #[test]
    fn log_format_and_drain_errors() {
        assert_invalid("[log]\nformat = \"xml\"", "log.format", "text, json");
        let c = Config::from_toml_str("[log]\nformat = \"json\"").unwrap();
        assert_eq!(c.log.format, "json");
        assert_eq!(Config::default().log.format, "text");
        assert_eq!(Config::default().server.drain_timeout, 300);
        assert!(Config::default().server.udp_offload);
        assert!(
            !Config::from_toml_str("[server]\nudp-offload = false")
                .unwrap()
                .server
                .udp_offload
        );
        assert!(Config::default().server.udp_io_uring);
        assert!(
            !Config::from_toml_str("[server]\nudp-io-uring = false")
                .unwrap()
                .server
                .udp_io_uring
        );
        assert_invalid(
            "[server]\ndrain-timeout = 86401",
            "server.drain-timeout",
            "86400",
        );
        assert_invalid(
            "[server]\nalternate-server = [\"192.0.2.1:3478\", \"192.0.2.2:3478\"]",
            "server.alternate-server",
            "at most one IPv4",
        );
        assert_invalid(
            "[server]\nalternate-server = [\"0.0.0.0:3478\"]",
            "server.alternate-server",
            "specific unicast",
        );
        let c = Config::from_toml_str(
            "[server]\nalternate-server = [\"192.0.2.1:3478\", \"[2001:db8::1]:3478\"]\n\
             drain-timeout = 5",
        )
        .unwrap();
        assert_eq!(c.server.alternate_server.len(), 2);
        assert_eq!(c.server.drain_timeout, 5);
    }

    #[test]
    fn example_password_only_on_loopback() {
        let user = "[auth]\nusers = [{ name = \"demo\", password = \"change-me\" }]\n";
        Config::from_toml_str(&format!(
            "[server]\nlisten = [\"127.0.0.1:3478\", \"[::1]:3478\", \"[::ffff:127.0.0.1]:3479\"]\n{user}"
        ))
        .unwrap();
        for listen in ["0.0.0.0:3478", "192.0.2.1:3478", "[::]:3478"] {
            let e = invalid(&format!(
                "[server]\nlisten = [\"127.0.0.1:3478\", \"{listen}\"]\n\
                 [relay]\nips = [\"127.0.0.1\", \"::1\"]\n{user}"
            ));
            assert_eq!(e.key(), "auth.users", "{e}");
            assert!(
                e.to_string().contains("may only be used on loopback"),
                "{e}"
            );
        }
    }

    #[test]
    fn hex_keys_decode() {
        let want = [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ];
        assert_eq!(
            decode_md5_key("00112233445566778899aabbccddeeff"),
            Some(want)
        );
        assert_eq!(
            decode_md5_key("0x00112233445566778899AABBCCDDEEFF"),
            Some(want)
        );
        assert_eq!(
            decode_md5_key("0X00112233445566778899aAbBcCdDeEfF"),
            Some(want)
        );
        assert_eq!(decode_md5_key("00112233445566778899aabbccddeef"), None);
        assert_eq!(decode_md5_key("00112233445566778899aabbccddeeff0"), None);
        assert_eq!(decode_md5_key("0x0x112233445566778899aabbccddeeff"), None);
        assert_eq!(decode_md5_key("+0112233445566778899aabbccddeeff"), None);
        assert_eq!(decode_md5_key("ü0112233445566778899aabbccddeef"), None);

        let c = Config::from_toml_str(
            "[auth]\nusers = [{ name = \"k\", key = \"0x00112233445566778899aabbccddeeff\" }, \
             { name = \"p\", password = \"pw\" }]",
        )
        .unwrap();
        let users = c.user_secrets();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].0, "k");
        assert!(matches!(users[0].1, UserSecret::Md5Key(k) if k == want));
        assert_eq!(users[1].0, "p");
        assert!(matches!(&users[1].1, UserSecret::Password(p) if p == "pw"));
    }

    /// A key written as `turnadmin -k` prints it decodes to the key turnd derives itself.
    #[test]
    fn hex_key_matches_the_derived_md5_key() {
        use crate::auth::{PasswordAlgorithm, long_term_key};
        let derived = long_term_key(PasswordAlgorithm::Md5, "alice", "turnd.local", "pw");
        let hex: String = derived
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let c = Config::from_toml_str(&format!(
            "[server]\nrealm = \"turnd.local\"\n[auth]\nusers = [{{ name = \"alice\", key = \"0x{hex}\" }}]"
        ))
        .unwrap();
        let users = c.user_secrets();
        assert!(matches!(&users[0].1, UserSecret::Md5Key(k) if k[..] == *derived.as_bytes()));
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

    #[test]
    fn cli_without_flags_uses_the_embedded_example() {
        let c = Config::load(&serve(&[])).unwrap();
        assert_eq!(c.server.realm, "turnd.local");
        assert_eq!(c.server.listen.len(), 2);
        assert_eq!(c.auth.users.len(), 1);
    }

    #[test]
    fn cli_scalars_and_lists_replace_the_file() {
        let file = Config::from_toml_str(
            "[server]\nlisten = [\"127.0.0.1:3478\"]\nrealm = \"file\"\nworkers = 2\n\
             [relay]\nmin-port = 40000\nmax-port = 41000\n\
             [auth]\nusers = [{ name = \"f\", password = \"fp\" }]\nsecrets = [\"fs\"]\n\
             [peers]\nallow = [\"10.0.0.0/8\"]\ndeny = [\"192.0.2.0/24\"]\n",
        )
        .unwrap();

        // No flags: nothing changes.
        let mut c = file.clone();
        c.apply_overrides(&serve(&[]));
        assert_eq!(c.server.realm, "file");
        assert_eq!(c.auth.users.len(), 1);
        assert_eq!(c.peers.allow, vec!["10.0.0.0/8"]);

        let mut c = file.clone();
        c.apply_overrides(&serve(&[
            "--listen",
            "127.0.0.1:4000",
            "--listen",
            "[::1]:4000",
            "--realm",
            "cli",
            "--user",
            "alice:pa:ss",
            "--user",
            "bob:pw",
            "--auth-secret",
            "s1",
            "--relay-ip",
            "127.0.0.1",
            "--relay-ip",
            "::1",
            "--external-ip",
            "203.0.113.1",
            "--min-port",
            "50000",
            "--allow-peer",
            "172.16.0.0/12",
            "--deny-peer",
            "198.51.100.0/24",
            "--deny-peer",
            "2001:db8::/32",
            "--workers",
            "4",
            "--log-level",
            "debug",
        ]));
        assert_eq!(c.server.listen.len(), 2);
        assert_eq!(c.server.realm, "cli");
        assert_eq!(c.server.workers, 4);
        let users: Vec<_> = c
            .auth
            .users
            .iter()
            .map(|u| (u.name.as_str(), u.password.as_deref(), u.key.as_deref()))
            .collect();
        assert_eq!(
            users,
            vec![("alice", Some("pa:ss"), None), ("bob", Some("pw"), None)]
        );
        assert_eq!(c.auth.secrets, vec!["s1"]);
        assert_eq!(c.relay.ips.len(), 2);
        assert_eq!(
            c.relay.external_ips,
            vec!["203.0.113.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!((c.relay.min_port, c.relay.max_port), (50000, 41000));
        assert_eq!(c.peers.allow, vec!["172.16.0.0/12"]);
        assert_eq!(c.peers.deny, vec!["198.51.100.0/24", "2001:db8::/32"]);
        assert_eq!(c.log.level, "debug");
        // --min-port moved above the file's max-port: validation judges the merged result.
        assert_eq!(c.validate().unwrap_err().key(), "relay.min-port");
    }

    #[test]
    fn cli_overrides_are_validated() {
        let e = Config::load(&serve(&["--log-level", "loud"])).unwrap_err();
        assert_eq!(e.key(), "log.level");
        let e = Config::load(&serve(&["--min-port", "60000", "--max-port", "50000"])).unwrap_err();
        assert_eq!(e.key(), "relay.min-port");
        // The example user is refused off loopback...
        let e = Config::load(&serve(&["--listen", "192.0.2.1:3478"])).unwrap_err();
        assert_eq!(e.key(), "auth.users");
        // ...and dropped by --user or --auth-secret; relay IPs then follow --listen.
        let c = Config::load(&serve(&[
            "--listen",
            "192.0.2.1:3478",
            "--auth-secret",
            "s",
        ]))
        .unwrap();
        assert!(c.auth.users.is_empty());
        assert_eq!(c.relay_ips(), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        let c = Config::load(&serve(&[
            "--listen",
            "0.0.0.0:3478",
            "--relay-ip",
            "192.0.2.1",
            "--user",
            "a:b",
        ]))
        .unwrap();
        assert_eq!(c.relay_ips(), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.auth.users.len(), 1);
    }

    #[test]
    fn load_reads_the_config_file() {
        let dir = std::env::temp_dir().join(format!("turnd-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "[server]\nrealm = \"from-file\"\n[log]\nlevel = \"warn\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = Config::load(&serve(&["--config", p])).unwrap();
        assert_eq!(c.server.realm, "from-file");
        // File mode: no embedded-example conveniences, defaults apply to missing keys.
        assert!(c.auth.users.is_empty());
        let c = Config::load(&serve(&["--config", p, "--log-level", "trace"])).unwrap();
        assert_eq!(c.log.level, "trace");

        std::fs::write(&path, "[server]\nbogus = 1\n").unwrap();
        let e = Config::load(&serve(&["--config", p])).unwrap_err();
        assert_eq!(e.key(), format!("{p}: server.bogus"));
        assert!(e.to_string().contains("bogus"), "{e}");

        let missing = dir.join("missing.toml");
        let m = missing.to_str().unwrap();
        let e = Config::load(&serve(&["--config", m])).unwrap_err();
        assert_eq!(e.key(), m);
        assert!(e.message().starts_with("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cli_rejects_bad_flags() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("turnd").chain(args.iter().copied()))
        };
        assert!(parse(&["--listen", "127.0.0.1"]).is_err());
        assert!(parse(&["--user", "nopassword"]).is_err());
        assert!(parse(&["--user", ":pw"]).is_err());
        assert!(parse(&["--user", "name:"]).is_err());
        assert!(parse(&["--relay-ip", "not-an-ip"]).is_err());
        assert!(parse(&["--min-port", "70000"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        let cli = parse(&["credentials", "--secret", "s", "--user", "u"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Credentials(_))));
    }

    #[test]
    fn parse_errors_name_the_dotted_key() {
        let e = Config::from_toml_str("[relay]\nmin-port = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("relay.min-port"), "{e}");
        let e = Config::from_toml_str("[server]\nrealm = \"r\"\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("server.bogus"), "{e}");
        assert_eq!(key_at("a = 1\n[x]\nb = 2", 14).as_deref(), Some("x.b"));
        assert_eq!(key_at("[x]\n", 1), None);
    }

    #[test]
    fn bandwidth_and_user_overrides() {
        let c = Config::from_toml_str(
            "[allocation]\nmax-bps = 1000\nbps-capacity = 5000\n\
             [allocation.users.alice]\nuser-quota = 3\n\
             [allocation.users.bob]\nmax-bps = 2000\n",
        )
        .expect("valid");
        assert_eq!(c.allocation.max_bps, 1000);
        assert_eq!(c.allocation.bps_capacity, 5000);
        let limits = c.user_limits();
        assert_eq!(limits["alice"].quota, Some(3));
        assert_eq!(limits["alice"].max_bps, None);
        assert_eq!(limits["bob"].max_bps, Some(2000));

        assert_invalid(
            "[allocation]\nbps-capacity = 5000\n",
            "allocation.bps-capacity",
            "needs allocation.max-bps",
        );
        assert_invalid(
            "[allocation]\nmax-bps = 1\nbps-capacity = 5\n[allocation.users.x]\nmax-bps = 0\n",
            "allocation.users.x.max-bps",
            "must not be 0",
        );
        assert_invalid(
            "[allocation.users.x]\n",
            "allocation.users.x",
            "sets nothing",
        );
        let e = Config::from_toml_str("[allocation.users.x]\nquota = 1\n").unwrap_err();
        assert!(e.to_string().contains("quota"), "{e}");
    }

    #[test]
    fn admin_section() {
        let c = Config::from_toml_str("").unwrap();
        assert!(!c.admin.enabled);
        assert_eq!(c.admin.listen, "127.0.0.1:9641".parse().unwrap());
        assert!(!c.admin.metrics_open_on_loopback);
        assert_eq!(c.admin.max_connections, 64);
        assert!(!format!("{:?}", c.admin).contains("token: \"\""));

        assert_invalid("[admin]\nenabled = true\n", "admin.token", "at least 16");
        assert_invalid(
            "[admin]\nenabled = true\ntoken = \"0123456789abcdef 0\"\n",
            "admin.token",
            "whitespace",
        );
        assert_invalid(
            "[admin]\nenabled = true\ntoken = \"0123456789abcdef\"\nmax-connections = 0\n",
            "admin.max-connections",
            "at least 1",
        );
        // Metrics-only: no token, /metrics open on loopback.
        Config::from_toml_str("[admin]\nenabled = true\nmetrics-open-on-loopback = true\n")
            .expect("valid");
        assert_invalid(
            "[admin]\nenabled = true\nmetrics-open-on-loopback = true\ntoken = \"short\"\n",
            "admin.token",
            "at least 16",
        );
        // A disabled listener needs no token.
        Config::from_toml_str("[admin]\nlisten = \"0.0.0.0:1\"\n").expect("valid");

        let c = Config::load(&serve(&[
            "--admin-listen",
            "127.0.0.1:9999",
            "--admin-token",
            "0123456789abcdef",
            "--max-bps",
            "64000",
            "--bps-burst",
            "3000",
            "--bps-capacity",
            "640000",
        ]))
        .expect("valid");
        assert!(c.admin.enabled);
        assert_eq!(c.admin.listen.port(), 9999);
        assert_eq!(c.admin.token, "0123456789abcdef");
        assert!(!format!("{:?}", c.admin).contains("0123456789abcdef"));
        assert_eq!(c.allocation.max_bps, 64_000);
        assert_eq!(c.allocation.bps_burst, 3_000);
        assert_eq!(c.allocation.bps_capacity, 640_000);
        let e = Config::load(&serve(&["--admin-listen", "127.0.0.1:9999"])).unwrap_err();
        assert_eq!(e.key(), "admin.token");
    }

    #[test]
    fn limits_defaults_and_errors() {
        let c = Config::from_toml_str("").expect("valid");
        assert_eq!(c.limits.unauth_rate, 1);
        assert_eq!(c.limits.unauth_burst, 8);
        assert_eq!(c.limits.allocations_per_ip, 0);
        assert_eq!(c.limits.permissions_per_allocation, 1024);
        assert_eq!(c.limits.channels_per_allocation, 1024);
        assert_eq!(c.core_limits().max_channels, 1024);
        assert_eq!(c.core_limits(), crate::turn::Limits::default());
        assert_eq!((c.unauth_limit().rate, c.unauth_limit().burst), (1, 8));
        assert!(Config::from_toml_str("[limits]\nunauth-rate = 0\nunauth-burst = 0").is_ok());
        assert_invalid(
            "[limits]\nunauth-burst = 0",
            "limits.unauth-burst",
            "at least 1",
        );
        assert_invalid(
            "[limits]\nunauth-rate = 2000000",
            "limits.unauth-rate",
            "at most",
        );
        assert_invalid(
            "[limits]\npermissions-per-allocation = 0",
            "limits.permissions-per-allocation",
            "between 1",
        );
        assert_invalid(
            "[limits]\nchannels-per-allocation = 16385",
            "limits.channels-per-allocation",
            "between 1 and 16384",
        );
        Config::from_toml_str("[limits]\nchannels-per-allocation = 16384").unwrap();
        let e = Config::from_toml_str("[limits]\nbogus = 1").expect_err("unknown key");
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn limits_flags_override() {
        let mut c = Config::from_toml_str("").expect("valid");
        c.apply_overrides(&serve(&[
            "--unauth-rate",
            "3",
            "--unauth-burst",
            "4",
            "--allocations-per-ip",
            "5",
            "--permissions-per-allocation",
            "6",
            "--channels-per-allocation",
            "7",
        ]));
        let l = &c.limits;
        assert_eq!(
            (
                l.unauth_rate,
                l.unauth_burst,
                l.allocations_per_ip,
                l.permissions_per_allocation,
                l.channels_per_allocation
            ),
            (3, 4, 5, 6, 7)
        );
    }
}
