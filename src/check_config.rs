//! `turnd check-config PATH`: loads and validates a config file exactly as the server would
//! (the TLS certificate and key too), then prints the effective settings (every key, defaults filled in) as TOML with secrets
//! masked. Exit code 0 when the config is valid, 2 when it is not (the error names the key).

use std::process::ExitCode;

use crate::cli::{PathArg, ServeArgs};
use crate::config::Config;

/// What a masked secret is shown as.
pub const MASK: &str = "********";

/// Whether a key holds a credential: its name mentions a secret, password, token or key, and
/// it is not the name of a file or path (a TLS key file's path is not itself secret).
fn is_secret_key(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let secret = ["secret", "password", "token", "key"]
        .iter()
        .any(|w| n.contains(w));
    secret && !(n.ends_with("file") || n.ends_with("path"))
}

/// Dotted keys whose value is the path of a file, shown as they are even where the key's
/// name mentions a secret word (`tls.key` names the private key's file, not the key).
const FILE_PATH_KEYS: &[&str] = &["tls.cert", "tls.key"];

/// Replaces every string under a secret key (and in arrays under it) with [`MASK`]; `path`
/// is the dotted key of `value`.
fn mask(value: &mut toml::Value, path: &str, secret: bool) {
    match value {
        toml::Value::String(s) if secret => *s = MASK.to_owned(),
        // A Redis URL may carry `user:password@`.
        toml::Value::String(s) if path == "redis.url" => *s = crate::config::redact_url(s),
        toml::Value::Array(items) => items.iter_mut().for_each(|v| mask(v, path, secret)),
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let key = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let is_path = FILE_PATH_KEYS.contains(&key.as_str());
                mask(v, &key, secret || (is_secret_key(k) && !is_path));
            }
        }
        _ => {}
    }
}

/// The effective settings of `config` as TOML, secrets masked.
pub fn effective_toml(config: &Config) -> Result<String, String> {
    let mut value = toml::Value::try_from(config).map_err(|e| e.to_string())?;
    mask(&mut value, "", false);
    toml::to_string(&value).map_err(|e| e.to_string())
}

/// Runs the subcommand.
pub fn run(args: &PathArg) -> ExitCode {
    let serve = ServeArgs {
        config: Some(args.path.clone()),
        ..ServeArgs::default()
    };
    // The TLS certificate and key are loaded as the server loads them at start.
    let config = match serve
        .load_config()
        .and_then(|c| crate::net::tls::load_config(&c).map(|_| c))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("turnd: {e}");
            return ExitCode::from(2);
        }
    };
    match effective_toml(&config) {
        Ok(text) => {
            println!(
                "# Effective settings of {} (defaults filled in, secrets masked)",
                args.path.display()
            );
            print!("{text}");
        }
        Err(e) => {
            eprintln!("turnd: cannot print the settings: {e}");
            return ExitCode::from(1);
        }
    }
    if config.auth.users.is_empty() && config.auth.secrets.is_empty() {
        eprintln!("turnd: warning: no users and no auth secrets: every Allocate will be refused");
    }
    eprintln!("turnd: {}: config OK", args.path.display());
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_the_rest_shown() {
        let c = Config::from_toml_str(
            "[server]\nrealm = \"example.org\"\n\
             [auth]\nusers = [{ name = \"alice\", password = \"hunter2\" }, \
             { name = \"bob\", key = \"0x00112233445566778899aabbccddeeff\" }]\n\
             secrets = [\"s3cr3t-one\", \"s3cr3t-two\"]\n",
        )
        .unwrap();
        let text = effective_toml(&c).unwrap();
        for secret in ["hunter2", "s3cr3t", "00112233445566778899aabbccddeeff"] {
            assert!(!text.contains(secret), "{secret} shown in:\n{text}");
        }
        assert!(text.contains("alice") && text.contains("bob"), "{text}");
        assert!(text.contains("example.org"), "{text}");
        assert!(text.contains(MASK), "{text}");
        // Defaults are filled in.
        assert!(text.contains("max-lifetime = 3600"), "{text}");
        // The masked output is still a config of the same shape.
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.auth.secrets, vec![MASK, MASK]);
        assert_eq!(back.auth.users.len(), 2);
    }

    #[test]
    fn redis_password_and_url_credentials_are_masked() {
        let c = Config::from_toml_str(
            "[redis]\nurl = \"rediss://turn:urlpass@redis.internal:6380/2\"\npassword = \"pw-9f8e\"\n",
        )
        .unwrap();
        let text = effective_toml(&c).unwrap();
        assert!(
            !text.contains("urlpass") && !text.contains("pw-9f8e"),
            "{text}"
        );
        assert!(text.contains("redis.internal:6380/2"), "{text}");
    }

    #[test]
    fn file_paths_are_shown_and_user_keys_masked() {
        let c = Config::from_toml_str(
            "[tls]\nlisten = [\"127.0.0.1:5349\"]\ncert = \"/etc/turnd/fullchain.pem\"\n\
             key = \"/etc/turnd/privkey.pem\"\n\
             [auth]\nusers = [{ name = \"bob\", key = \"0x00112233445566778899aabbccddeeff\" }]\n",
        )
        .unwrap();
        let text = effective_toml(&c).unwrap();
        assert!(text.contains("key = \"/etc/turnd/privkey.pem\""), "{text}");
        assert!(
            text.contains("cert = \"/etc/turnd/fullchain.pem\""),
            "{text}"
        );
        assert!(!text.contains("00112233445566778899aabbccddeeff"), "{text}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.auth.users[0].key.as_deref(), Some(MASK));
    }

    #[test]
    fn secret_key_names() {
        for k in ["secrets", "password", "key", "auth-token", "api-secret"] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["name", "realm", "key-file", "cert-path", "listen"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
