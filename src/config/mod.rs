//! `turnserver.toml`: the schema, its defaults, the checks run at load, and the conversion
//! into the core's settings. It knows nothing of the command line, which reads a file with
//! [`Config::parse_file`] (or [`Config::parse_embedded`]), applies its flags over it, then
//! calls [`Config::validate`].
//!
//! * `schema`: the struct fields are the interface the rest of the server reads. Every
//!   section has `#[serde(default)]`, so a file only needs the keys it changes;
//!   `deny_unknown_fields` makes a misspelt key an error instead of a silently ignored line.
//! * `validate`: [`Config::validate`] checks what the types cannot, and every
//!   [`ConfigError`] names the key (`relay.min-port`) and says what is wrong.
//! * `core`: the one conversion into the core's settings, shared by start and reload.
//! * `streams`: the `[tcp]` and `[tls]` sections, their schema and checks.

mod core;
mod redis;
mod schema;
mod streams;
mod validate;

pub use core::DriverParts;
pub use redis::{RedisSection, redact_url};
pub use schema::{
    AdminSection, AllocationSection, AuthSection, Config, LimitsSection, LogSection, PeersSection,
    RelaySection, ServerSection, TelemetrySection, UserEntry, UserLimitsEntry,
};
pub use streams::{TcpSection, TlsSection};
pub use validate::decode_md5_key;

use std::fmt;
use std::path::Path;

/// The documented example config, embedded so `turnd` runs with no file.
pub const DEFAULT_CONFIG: &str = include_str!("../../turnserver.toml");

/// The password of the example user in [`DEFAULT_CONFIG`]; refused off loopback.
pub const EXAMPLE_PASSWORD: &str = "change-me";

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

    /// Reads and parses the file at `path`, without validating; errors name the file.
    pub fn parse_file(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(name.as_str(), format!("cannot read: {e}")))?;
        Config::parse(&text, &name)
    }

    /// Parses the embedded [`DEFAULT_CONFIG`], without validating.
    pub fn parse_embedded() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_CONFIG, "<embedded turnserver.toml>")
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

    #[test]
    fn embedded_example_parses_and_validates() {
        let c = Config::from_toml_str(DEFAULT_CONFIG).expect("valid");
        assert_eq!(c.server.realm, "turnd.local");
        assert_eq!(c.relay_ips().len(), 2);
        assert_eq!(c.auth.users.len(), 1);
        assert_eq!(c.auth.users[0].name, "demo");
    }

    /// Checks that `toml` does not parse, with an error that shows every one of `needles`.
    fn assert_parse_error(toml: &str, needles: &[&str]) {
        let shown = match Config::from_toml_str(toml) {
            Ok(_) => panic!("expected a parse error for:\n{toml}"),
            Err(e) => e.to_string(),
        };
        for needle in needles {
            assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        assert_parse_error("[server]\nbogus = 1\n", &["bogus", "line 2"]);
        assert_parse_error("[sever]\n", &["sever"]);
    }

    #[test]
    fn type_errors_are_reported() {
        assert_parse_error("[relay]\nmin-port = 70000\n", &["min-port"]);
        assert_parse_error("[server]\nlisten = [\"nope\"]\n", &["listen"]);
    }

    #[test]
    fn unknown_user_field_fails_parsing() {
        let user = "[auth]\nusers = [{ name = \"a\", password = \"p\", extra = 1 }]";
        assert_parse_error(user, &["extra"]);
    }

    #[test]
    fn parse_errors_name_the_dotted_key() {
        assert_parse_error("[relay]\nmin-port = \"x\"\n", &["relay.min-port"]);
        assert_parse_error("[server]\nrealm = \"r\"\nbogus = 1\n", &["server.bogus"]);
        assert_eq!(key_at("a = 1\n[x]\nb = 2", 14).as_deref(), Some("x.b"));
        assert_eq!(key_at("[x]\n", 1), None);
    }
}
