//! The serve flags applied over the config file: the command line's side of loading a
//! config. The `config` module knows nothing of the command line.

use super::ServeArgs;
use crate::config::{Config, ConfigError, UserEntry};

impl ServeArgs {
    /// Reads the file given by `--config` (or the embedded
    /// [`DEFAULT_CONFIG`](crate::config::DEFAULT_CONFIG)), applies the command-line overrides,
    /// then validates the result.
    ///
    /// A list flag given on the command line replaces the file's list; a scalar flag replaces
    /// the file's value. Two conveniences apply only to the embedded example config: `--listen`
    /// without `--relay-ip` makes the relay IPs follow the new listen addresses (instead of the
    /// example's loopback ones), and `--user` or `--auth-secret` drops the example user.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::parse_file(path)?,
            None => {
                let mut config = Config::parse_embedded()?;
                if !self.listen.is_empty() && self.relay_ip.is_empty() {
                    config.relay.ips.clear();
                }
                if !self.user.is_empty() || !self.auth_secret.is_empty() {
                    config.auth.users.clear();
                }
                config
            }
        };
        self.apply_overrides(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Applies the command-line flags over `config` (the file's values), without validating.
    pub fn apply_overrides(&self, config: &mut Config) {
        let cli = self;
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
        replace(&mut config.server.listen, &cli.listen);
        set(&mut config.server.realm, &cli.realm);
        set(&mut config.server.workers, &cli.workers);
        if cli.no_udp_offload {
            config.server.udp_offload = false;
        }
        if cli.no_udp_io_uring {
            config.server.udp_io_uring = false;
        }
        set(&mut config.server.kernel_offload, &cli.kernel_offload);
        if cli.no_telemetry {
            config.telemetry.enabled = false;
        }
        if cli.strict_channel_numbers {
            config.server.strict_channel_numbers = true;
        }
        if !cli.user.is_empty() {
            config.auth.users = cli
                .user
                .iter()
                .map(|u| UserEntry {
                    name: u.name.clone(),
                    password: Some(u.password.clone()),
                    key: None,
                })
                .collect();
        }
        replace(&mut config.auth.secrets, &cli.auth_secret);
        replace(&mut config.relay.ips, &cli.relay_ip);
        replace(&mut config.relay.external_ips, &cli.external_ip);
        set(&mut config.relay.min_port, &cli.min_port);
        set(&mut config.relay.max_port, &cli.max_port);
        set(&mut config.allocation.user_quota, &cli.user_quota);
        set(&mut config.allocation.total_quota, &cli.total_quota);
        set(&mut config.allocation.max_bps, &cli.max_bps);
        set(&mut config.allocation.bps_burst, &cli.bps_burst);
        set(&mut config.allocation.bps_capacity, &cli.bps_capacity);
        if let Some(a) = cli.admin_listen {
            config.admin.listen = a;
            config.admin.enabled = true;
        }
        set(&mut config.admin.token, &cli.admin_token);
        replace(&mut config.peers.allow, &cli.allow_peer);
        replace(&mut config.peers.deny, &cli.deny_peer);
        set(&mut config.log.level, &cli.log_level);
        replace(&mut config.tls.listen, &cli.tls_listen);
        if cli.cert.is_some() {
            config.tls.cert = cli.cert.clone();
        }
        if cli.key.is_some() {
            config.tls.key = cli.key.clone();
        }
        set(&mut config.limits.unauth_rate, &cli.unauth_rate);
        set(&mut config.limits.unauth_burst, &cli.unauth_burst);
        set(
            &mut config.limits.allocations_per_ip,
            &cli.allocations_per_ip,
        );
        set(
            &mut config.limits.permissions_per_allocation,
            &cli.permissions_per_allocation,
        );
        set(
            &mut config.limits.channels_per_allocation,
            &cli.channels_per_allocation,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;
    use std::net::IpAddr;

    fn serve(args: &[&str]) -> ServeArgs {
        let argv = std::iter::once("turnd").chain(args.iter().copied());
        Cli::try_parse_from(argv).expect("args parse").serve
    }

    fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        args.load_config()
    }

    fn apply(config: &mut Config, args: &ServeArgs) {
        args.apply_overrides(config);
    }

    #[test]
    fn cli_without_flags_uses_the_embedded_example() {
        let c = load(&serve(&[])).unwrap();
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
        apply(&mut c, &serve(&[]));
        assert_eq!(c.server.realm, "file");
        assert_eq!(c.auth.users.len(), 1);
        assert_eq!(c.peers.allow, vec!["10.0.0.0/8"]);

        let mut c = file.clone();
        apply(
            &mut c,
            &serve(&[
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
            ]),
        );
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
        let e = load(&serve(&["--log-level", "loud"])).unwrap_err();
        assert_eq!(e.key(), "log.level");
        let e = load(&serve(&["--min-port", "60000", "--max-port", "50000"])).unwrap_err();
        assert_eq!(e.key(), "relay.min-port");
        // The example user is refused off loopback...
        let e = load(&serve(&["--listen", "192.0.2.1:3478"])).unwrap_err();
        assert_eq!(e.key(), "auth.users");
        // ...and dropped by --user or --auth-secret; relay IPs then follow --listen.
        let c = load(&serve(&[
            "--listen",
            "192.0.2.1:3478",
            "--auth-secret",
            "s",
        ]))
        .unwrap();
        assert!(c.auth.users.is_empty());
        assert_eq!(c.relay_ips(), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        let c = load(&serve(&[
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
        let c = load(&serve(&["--config", p])).unwrap();
        assert_eq!(c.server.realm, "from-file");
        // File mode: no embedded-example conveniences, defaults apply to missing keys.
        assert!(c.auth.users.is_empty());
        let c = load(&serve(&["--config", p, "--log-level", "trace"])).unwrap();
        assert_eq!(c.log.level, "trace");

        std::fs::write(&path, "[server]\nbogus = 1\n").unwrap();
        let e = load(&serve(&["--config", p])).unwrap_err();
        assert_eq!(e.key(), format!("{p}: server.bogus"));
        assert!(e.to_string().contains("bogus"), "{e}");

        let missing = dir.join("missing.toml");
        let m = missing.to_str().unwrap();
        let e = load(&serve(&["--config", m])).unwrap_err();
        assert_eq!(e.key(), m);
        assert!(e.message().starts_with("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn limits_flags_override() {
        let mut c = Config::from_toml_str("").expect("valid");
        apply(
            &mut c,
            &serve(&[
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
            ]),
        );
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

    #[test]
    fn tls_flags_override_the_file() {
        let cli = Cli::try_parse_from([
            "turnd",
            "--tls-listen",
            "127.0.0.1:5349",
            "--tls-listen",
            "[::1]:443",
            "--cert",
            "/c.pem",
            "--key",
            "/k.pem",
        ])
        .unwrap();
        let mut c = Config::from_toml_str(
            "[tls]\nlisten = [\"127.0.0.1:1\"]\ncert = \"/old.pem\"\nkey = \"/old.key\"\n",
        )
        .unwrap();
        apply(&mut c, &cli.serve);
        assert_eq!(
            c.tls.listen,
            vec![
                "127.0.0.1:5349".parse().unwrap(),
                "[::1]:443".parse().unwrap()
            ]
        );
        assert_eq!(c.tls.cert.as_deref(), Some(std::path::Path::new("/c.pem")));
        assert_eq!(c.tls.key.as_deref(), Some(std::path::Path::new("/k.pem")));
        c.validate().unwrap();
        assert!(Cli::try_parse_from(["turnd", "--tls-listen", "nope"]).is_err());
    }

    #[test]
    fn strict_channel_numbers_from_the_flag() {
        let mut c = Config::default();
        apply(&mut c, &serve(&[]));
        assert!(!c.server.strict_channel_numbers);
        apply(&mut c, &serve(&["--strict-channel-numbers"]));
        assert!(c.server.strict_channel_numbers);
    }

    #[test]
    fn admin_and_bandwidth_flags() {
        let c = load(&serve(&[
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
        let e = load(&serve(&["--admin-listen", "127.0.0.1:9999"])).unwrap_err();
        assert_eq!(e.key(), "admin.token");
    }
}
