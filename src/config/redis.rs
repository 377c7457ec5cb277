//! The `[redis]` section: the shared store of a fleet of turnd nodes (`src/fleet/`). Absent,
//! nothing changes: every node is an island as before.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::validate::check_between;
use super::{Config, ConfigError, err};

/// Longest interval for the periodic resync and the node entry's expiry (one hour).
const MAX_INTERVAL_SECS: u64 = 3600;
/// Most entries the allocation event stream may be capped at.
const MAX_EVENTS_MAXLEN: u64 = 100_000_000;

#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RedisSection {
    /// `redis://host:port/db` or `rediss://host:port/db` (TLS, the system's trust roots).
    pub url: String,
    /// Password (Redis AUTH); overrides one in the URL. Empty: none, or the URL's.
    pub password: String,
    /// Database number; overrides one in the URL's path.
    pub database: Option<u32>,
    /// PEM file of the CA certificates a `rediss://` server's certificate is checked
    /// against, instead of the system's trust roots. Empty: the system's.
    pub tls_ca_file: String,
    /// This node's name in the fleet: unique per node. Empty: the first `server.listen`
    /// address.
    pub node: String,
    /// Seconds between full resyncs of the user database (the backstop behind keyspace
    /// notifications).
    pub resync_interval: u64,
    /// Set Redis' `notify-keyspace-events` so that changes written by any tool (redis-cli,
    /// turnadmin) reach every node at once; when Redis refuses (managed Redis, ACLs), the
    /// periodic resync alone carries them.
    pub configure_notifications: bool,
    /// Milliseconds a Redis command may take before it counts as failed (the store is then
    /// treated as down: nothing in turnd waits longer than this on Redis).
    pub command_timeout_ms: u64,
    /// Seconds a node's entry (health, load, allocation counts) lives without being renewed:
    /// a node killed outright leaves the fleet, and gives back its quota leases, after this.
    pub node_ttl: u64,
    /// Addresses other nodes send redirected clients to (ALTERNATE-SERVER), at most one per
    /// family. Empty: the `server.listen` addresses.
    pub advertise: Vec<SocketAddr>,
    /// ALTERNATE-DOMAIN sent with a redirect to this node's TLS clients' new server: the
    /// name on this node's certificate. Empty: none is sent.
    pub advertise_domain: String,
    /// Redirect new allocations (300 Try Alternate) while this node holds at least this many
    /// allocations; 0: never for this reason.
    pub redirect_allocations: u64,
    /// Redirect new allocations while this node's relayed bandwidth (bits per second, both
    /// ways) is at least this; 0: never for this reason.
    pub redirect_bps: u64,
    /// Redirect new allocations while this node's CPU use (percent of one core, over the
    /// last second) is at least this; 0: never for this reason.
    pub redirect_cpu_percent: u32,
    /// Count `allocation.user-quota` and `allocation.total-quota` (and coturn's realm
    /// `user-quota`/`total-quota`) across the fleet instead of per node.
    pub fleet_quotas: bool,
    /// Redis Stream that allocation events are appended to; empty: none.
    pub events_stream: String,
    /// The stream's approximate cap (XADD MAXLEN ~).
    pub events_maxlen: u64,
}

impl Default for RedisSection {
    fn default() -> RedisSection {
        RedisSection {
            url: "redis://127.0.0.1:6379".to_owned(),
            password: String::new(),
            database: None,
            tls_ca_file: String::new(),
            node: String::new(),
            resync_interval: 30,
            configure_notifications: true,
            command_timeout_ms: 500,
            node_ttl: 5,
            advertise: Vec::new(),
            advertise_domain: String::new(),
            redirect_allocations: 0,
            redirect_bps: 0,
            redirect_cpu_percent: 0,
            fleet_quotas: true,
            events_stream: "turnd/events".to_owned(),
            events_maxlen: 1_000_000,
        }
    }
}

/// Redacts the password (and a password inside the URL).
impl fmt::Debug for RedisSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSection")
            .field("url", &redact_url(&self.url))
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("node", &self.node)
            .field("resync_interval", &self.resync_interval)
            .field("configure_notifications", &self.configure_notifications)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("node_ttl", &self.node_ttl)
            .field("advertise", &self.advertise)
            .field("advertise_domain", &self.advertise_domain)
            .field("redirect_allocations", &self.redirect_allocations)
            .field("redirect_bps", &self.redirect_bps)
            .field("redirect_cpu_percent", &self.redirect_cpu_percent)
            .field("fleet_quotas", &self.fleet_quotas)
            .field("events_stream", &self.events_stream)
            .field("events_maxlen", &self.events_maxlen)
            .finish()
    }
}

/// The URL with any `user:password@` replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}<redacted>{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

impl RedisSection {
    /// This node's name: `redis.node`, else the first listen address.
    pub fn node_name(&self, cfg: &Config) -> String {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        cfg.server
            .listen
            .first()
            .map_or_else(|| "turnd".to_owned(), ToString::to_string)
    }

    /// Where redirected clients are sent: `redis.advertise`, else the listen addresses.
    pub fn advertised(&self, cfg: &Config) -> Vec<SocketAddr> {
        if self.advertise.is_empty() {
            cfg.server.listen.clone()
        } else {
            self.advertise.clone()
        }
    }
}

impl Config {
    pub(super) fn validate_redis(&self) -> Result<(), ConfigError> {
        let Some(r) = &self.redis else {
            return Ok(());
        };
        let scheme_ok = r.url.starts_with("redis://") || r.url.starts_with("rediss://");
        if !scheme_ok {
            return err(
                "redis.url",
                format!(
                    "must start with redis:// or rediss:// (TLS), got {:?}",
                    redact_url(&r.url)
                ),
            );
        }
        if redis::Client::open(r.url.as_str()).is_err() {
            return err(
                "redis.url",
                format!("is not a valid Redis URL: {:?}", redact_url(&r.url)),
            );
        }
        if !r.tls_ca_file.is_empty() && !r.url.starts_with("rediss://") {
            return err(
                "redis.tls-ca-file",
                "is only used with a rediss:// URL (TLS)",
            );
        }
        if let Some(db) = r.database {
            check_between("redis.database", db, 0..=65_535, "")?;
        }
        if r.node.chars().any(|c| c.is_control() || c.is_whitespace()) || r.node.len() > 128 {
            return err(
                "redis.node",
                "must be at most 128 characters without whitespace or control characters",
            );
        }
        check_between(
            "redis.resync-interval",
            r.resync_interval,
            1..=MAX_INTERVAL_SECS,
            " seconds",
        )?;
        check_between(
            "redis.command-timeout-ms",
            r.command_timeout_ms,
            10..=10_000,
            " ms",
        )?;
        check_between(
            "redis.node-ttl",
            r.node_ttl,
            2..=MAX_INTERVAL_SECS,
            " seconds",
        )?;
        let mut families = [0u8; 2];
        for a in &r.advertise {
            let f = usize::from(a.is_ipv6());
            families[f] += 1;
            if families[f] > 1 {
                return err("redis.advertise", "at most one address per family");
            }
            if a.ip().is_unspecified() || a.port() == 0 {
                return err(
                    "redis.advertise",
                    format!("{a} is not an address a client can reach (unspecified IP or port 0)"),
                );
            }
        }
        if r.advertise.is_empty() && self.server.listen.iter().any(|l| l.ip().is_unspecified()) {
            return err(
                "redis.advertise",
                "must name this node's reachable addresses when server.listen holds 0.0.0.0 or [::]",
            );
        }
        let d = &r.advertise_domain;
        if d.len() > 253
            || d.chars()
                .any(|c| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
        {
            return err(
                "redis.advertise-domain",
                "must be a DNS name (letters, digits, '.', '-'; at most 253 characters)",
            );
        }
        if r.redirect_cpu_percent > 100_000 {
            return err("redis.redirect-cpu-percent", "must be at most 100000");
        }
        if r.events_stream.chars().any(char::is_control) {
            return err("redis.events-stream", "must not contain control characters");
        }
        check_between(
            "redis.events-maxlen",
            r.events_maxlen,
            1..=MAX_EVENTS_MAXLEN,
            "",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(toml: &str) -> ConfigError {
        match Config::from_toml_str(toml) {
            Ok(_) => panic!("accepted: {toml}"),
            Err(e) => e,
        }
    }

    #[test]
    fn absent_section_is_none_and_defaults_apply() {
        let c = Config::from_toml_str("[server]\nlisten = [\"127.0.0.1:3478\"]\n").expect("valid");
        assert!(c.redis.is_none());
        let c = Config::from_toml_str("[redis]\n").expect("valid");
        let r = c.redis.as_ref().expect("section");
        assert_eq!(r.url, "redis://127.0.0.1:6379");
        assert_eq!(r.node_name(&c), "127.0.0.1:3478");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("url = \"http://x\"", "redis.url"),
            ("url = \"redis://[::1\"", "redis.url"),
            ("resync-interval = 0", "redis.resync-interval"),
            ("command-timeout-ms = 1", "redis.command-timeout-ms"),
            ("node-ttl = 1", "redis.node-ttl"),
            ("node = \"a b\"", "redis.node"),
            (
                "advertise = [\"127.0.0.1:1\", \"127.0.0.2:1\"]",
                "redis.advertise",
            ),
            ("advertise = [\"0.0.0.0:3478\"]", "redis.advertise"),
            ("advertise-domain = \"a b\"", "redis.advertise-domain"),
            ("events-maxlen = 0", "redis.events-maxlen"),
            ("tls-ca-file = \"/etc/ca.pem\"", "redis.tls-ca-file"),
            ("colour = 1", "redis"),
        ];
        for (line, key) in cases {
            let e = invalid(&format!("[redis]\n{line}\n"));
            assert!(e.key().contains(key), "{line}: {e}");
        }
        let e = invalid(
            "[server]\nlisten = [\"0.0.0.0:3478\"]\n[relay]\nips = [\"192.0.2.1\"]\n[redis]\n",
        );
        assert_eq!(e.key(), "redis.advertise", "{e}");
    }

    #[test]
    fn password_is_redacted() {
        let c = Config::from_toml_str(
            "[redis]\nurl = \"redis://u:hunter2@127.0.0.1:6379/2\"\npassword = \"hunter3\"\n",
        )
        .expect("valid");
        let shown = format!("{:?}", c.redis);
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("127.0.0.1:6379/2"), "{shown}");
    }
}
