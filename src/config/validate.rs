//! The checks run at load: everything the types cannot say. Every error names the dotted key
//! (`relay.min-port`) and says what is wrong.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use super::{Config, ConfigError, EXAMPLE_PASSWORD, err};
use crate::turn::peer_policy::Cidr;

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

/// Largest unauthenticated-answer allowance a source can be given (answers per second, and
/// burst).
const MAX_UNAUTH_RATE: u32 = 1_000_000;
/// RFC 5766 §11: channel numbers 0x4000 through 0x7FFF.
const MAX_CHANNELS: usize = 0x4000;
/// Upper bound of `limits.permissions-per-allocation`.
const MAX_PERMISSIONS_LIMIT: usize = 65_536;

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

/// `value` at most `max`, or an error naming `key`: "must be at most MAX{unit}, got VALUE".
fn check_at_most<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    max: T,
    unit: &str,
) -> Result<(), ConfigError> {
    if value > max {
        return err(key, format!("must be at most {max}{unit}, got {value}"));
    }
    Ok(())
}

/// `value` within `range`, or an error naming `key`: "must be between LOW and HIGH{unit}, got
/// VALUE".
pub(super) fn check_between<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
    unit: &str,
) -> Result<(), ConfigError> {
    if !range.contains(&value) {
        let (low, high) = range.into_inner();
        return err(
            key,
            format!("must be between {low} and {high}{unit}, got {value}"),
        );
    }
    Ok(())
}

/// A text attribute value (REALM, SOFTWARE) that fits the RFC 8489 limits.
fn check_text(key: &str, value: &str) -> Result<(), ConfigError> {
    check_at_most(key, value.len(), MAX_TEXT_BYTES, " bytes")?;
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
        self.validate_redis()?;
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
        check_at_most(
            "limits.unauth-rate",
            l.unauth_rate,
            MAX_UNAUTH_RATE,
            " (0 means no limit)",
        )?;
        if l.unauth_rate > 0 && l.unauth_burst == 0 {
            return err(
                "limits.unauth-burst",
                "must be at least 1 while limits.unauth-rate is set",
            );
        }
        check_at_most("limits.unauth-burst", l.unauth_burst, MAX_UNAUTH_RATE, "")?;
        check_between(
            "limits.permissions-per-allocation",
            l.permissions_per_allocation,
            1..=MAX_PERMISSIONS_LIMIT,
            "",
        )?;
        check_between(
            "limits.channels-per-allocation",
            l.channels_per_allocation,
            1..=MAX_CHANNELS,
            " (the channel numbers there are)",
        )?;
        Ok(())
    }

    fn validate_admin(&self) -> Result<(), ConfigError> {
        let a = &self.admin;
        if !a.enabled {
            return Ok(());
        }
        // An empty token is allowed only for a listener that serves no admin route: /metrics
        // to loopback and/or the TURN REST API behind its own keys, every other route refused
        // (see `admin::api::authorized`).
        let no_admin_routes =
            a.token.is_empty() && (a.metrics_open_on_loopback || !a.rest_api_keys.is_empty());
        if a.token.len() < 16 && !no_admin_routes {
            return err(
                "admin.token",
                "must be at least 16 characters when the admin listener is enabled \
                 (or empty with admin.metrics-open-on-loopback = true or admin.rest-api-keys \
                 set, to serve only /metrics to loopback or only /turn)",
            );
        }
        let mut keys = std::collections::HashSet::new();
        for k in &a.rest_api_keys {
            if k.len() < 16 || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return err(
                    "admin.rest-api-keys",
                    "each key must be at least 16 characters, without whitespace or control \
                     characters",
                );
            }
            if !k.bytes().all(|b| b.is_ascii_graphic()) || k.contains(['&', '=', '%', '+']) {
                return err(
                    "admin.rest-api-keys",
                    "each key must be printable ASCII without '&', '=', '%' or '+' (clients \
                     put it in a query string unescaped)",
                );
            }
            if *k == a.token {
                return err(
                    "admin.rest-api-keys",
                    "a key must differ from admin.token (it would hand out the admin API)",
                );
            }
            if !keys.insert(k.as_str()) {
                return err("admin.rest-api-keys", "keys must be unique");
            }
        }
        if a.rest_api_ttl == 0 {
            return err("admin.rest-api-ttl", "must be at least 1 second");
        }
        if !a.rest_api_keys.is_empty() && self.auth.secrets.is_empty() {
            return err(
                "admin.rest-api-keys",
                "the TURN REST API mints credentials with auth.secrets: set at least one secret",
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
        check_at_most(
            "server.workers",
            s.workers,
            MAX_WORKERS,
            " (0 means one per CPU core)",
        )?;
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
        check_at_most(
            "server.drain-timeout",
            s.drain_timeout,
            MAX_DRAIN_TIMEOUT,
            " seconds",
        )?;
        Ok(())
    }

    fn validate_relay(&self) -> Result<(), ConfigError> {
        let r = &self.relay;
        check_one_per_family("relay.external-ips", &r.external_ips)?;
        for (i, a) in r.ips.iter().enumerate() {
            if r.ips[..i].contains(a) {
                return err("relay.ips", format!("{a} is listed twice"));
            }
            let same_family = r.ips.iter().filter(|b| b.is_ipv4() == a.is_ipv4()).count();
            if same_family > 1 && r.external_ips.iter().any(|e| e.is_ipv4() == a.is_ipv4()) {
                return err(
                    "relay.ips",
                    format!(
                        "several {} relay addresses cannot share relay.external-ips (1:1 NAT \
                         maps one address): list one, or drop the {} external IP",
                        family(*a),
                        family(*a)
                    ),
                );
            }
        }
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
        check_at_most(
            "allocation.max-lifetime",
            a.max_lifetime,
            MAX_LIFETIME_LIMIT,
            " seconds (7 days)",
        )?;
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
        check_between(
            "auth.nonce-lifetime",
            a.nonce_lifetime,
            NONCE_LIFETIME_RANGE,
            " seconds",
        )?;
        check_between(
            "auth.max-rest-ttl",
            a.max_rest_ttl,
            MAX_REST_TTL_RANGE,
            " seconds",
        )?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserSecret;

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
        // Several per family: each has the whole port range (coturn's repeated relay-ip).
        let c = Config::from_toml_str("[relay]\nips = [\"127.0.0.1\", \"127.0.0.2\", \"::1\"]")
            .unwrap();
        assert_eq!(
            c.port_pool()
                .addresses(crate::turn::ports::Family::V4)
                .count(),
            2
        );
        assert_invalid(
            "[relay]\nips = [\"127.0.0.1\", \"127.0.0.1\"]",
            "relay.ips",
            "listed twice",
        );
        assert_invalid(
            "[relay]\nips = [\"127.0.0.1\", \"127.0.0.2\"]\nexternal-ips = [\"192.0.2.1\"]",
            "relay.ips",
            "cannot share relay.external-ips",
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
    fn strict_channel_numbers_from_the_file() {
        assert!(!Config::default().server.strict_channel_numbers);
        let c = Config::from_toml_str("[server]\nstrict-channel-numbers = true").unwrap();
        assert!(c.server.strict_channel_numbers);
        let e = Config::from_toml_str("[server]\nstrict-channel-numbers = 1").unwrap_err();
        assert!(e.to_string().contains("strict-channel-numbers"), "{e}");
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
}
