//! The one conversion from a validated [`Config`] into the core's settings, used by both
//! the start (`crate::net::start`) and the reload (`crate::lifecycle`) paths:
//!
//! * [`Config::live_settings`]: the [`Reconfigure`] a reload swaps into every worker, and the
//!   part of each worker's [`ServerConfig`] a reload can change;
//! * [`Config::server_config`]: a worker's whole [`ServerConfig`], those live settings plus the
//!   restart-only keys and what only the driver has ([`DriverParts`]);
//! * [`Config::quotas`] and [`Config::apply_quotas`]: the shared allocation and bandwidth
//!   quotas, built at start and updated in place (live counts kept) on reload.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Config;
use super::decode_md5_key;
use crate::auth::{AuthConfig, Authenticator, UserSecret};
use crate::turn::peer_policy::{Cidr, PeerPolicy};
use crate::turn::ports::RelayPorts;
use crate::turn::quota::Quotas;
use crate::turn::rate_limit::ResponseLimiter;
use crate::turn::{Reconfigure, ServerConfig};

/// What a worker's core needs besides the config: the tables all workers share, the relay
/// addresses and the server's own addresses as bound, and randomness. The driver has these.
pub struct DriverParts {
    /// From [`Config::port_pool`], shared by every worker.
    pub ports: Arc<Mutex<RelayPorts>>,
    /// From [`Config::quotas`], shared by every worker.
    pub quotas: Arc<Quotas>,
    /// Per family (0: IPv4, 1: IPv6): the relay IP to bind and the IP to advertise
    /// ([`Config::relay_addresses`]).
    pub relay_ips: [Option<(IpAddr, IpAddr)>; 2],
    /// Every address the server answers on, never a peer (see
    /// [`PeerPolicy::with_own_addresses`]).
    pub own_addresses: Vec<SocketAddr>,
    /// Random bytes from the OS: seeds the core's transaction ids and reservation tokens.
    pub secret: [u8; 32],
    /// From [`Config::unauth_limiter`], shared by every worker.
    pub unauth_limiter: Arc<ResponseLimiter>,
}

impl Config {
    /// The settings a reload may change on a live server, with nonces signed by `nonce_key`
    /// (a reload passes the running key, so issued nonces stay valid).
    pub fn live_settings(&self, nonce_key: [u8; 32]) -> Reconfigure {
        let (allow, deny) = self.peer_rules();
        Reconfigure {
            auth: Arc::new(self.authenticator(nonce_key)),
            policy: PeerPolicy::new(allow, deny),
            user_quota: self.allocation.user_quota,
            total_quota: self.allocation.total_quota,
            default_lifetime: Duration::from_secs(u64::from(self.allocation.default_lifetime)),
            max_lifetime: Duration::from_secs(u64::from(self.allocation.max_lifetime)),
            software: (!self.server.software.is_empty()).then(|| self.server.software.clone()),
            mapped_address: self.server.mapped_address,
            enforce_credential_expiry: self.auth.enforce_credential_expiry,
            strict_channel_numbers: self.server.strict_channel_numbers,
            telemetry: self.telemetry.enabled,
        }
    }

    /// One worker's core settings: `live` (from [`Config::live_settings`], shared by the
    /// workers), the keys that need a restart, and the driver's `parts`. The quota limits in
    /// force are those of `parts.quotas` ([`Config::quotas`], built from the same config).
    pub fn server_config(&self, live: Reconfigure, parts: DriverParts) -> ServerConfig {
        ServerConfig {
            live: Reconfigure {
                policy: live.policy.with_own_addresses(parts.own_addresses),
                ..live
            },
            ports: parts.ports,
            quotas: parts.quotas,
            relay_ips: parts.relay_ips,
            rest_separator: self.auth.rest_separator,
            max_permissions: self.limits.permissions_per_allocation,
            secret: parts.secret,
            limits: self.core_limits(),
            unauth_limiter: parts.unauth_limiter,
        }
    }

    /// The allocation quotas of `[allocation]` and `limits.allocations-per-ip`, with no
    /// allocation counted yet.
    pub fn quotas(&self) -> Quotas {
        let quotas = Quotas::new(0, 0);
        self.apply_quotas(&quotas);
        quotas
    }

    /// Sets the limits of `quotas` to this config's (what a reload does); the live counts are
    /// kept.
    pub fn apply_quotas(&self, quotas: &Quotas) {
        let a = &self.allocation;
        quotas.set_limits(a.user_quota, a.total_quota);
        quotas.set_bandwidth(a.max_bps, a.bps_burst, a.bps_capacity, self.user_limits());
        quotas.set_ip_quota(self.limits.allocations_per_ip);
    }

    /// The relay port range, `relay.min-port` to `relay.max-port`.
    /// `relay.min-port..=max-port` on every relay address ([`Config::relay_ips`]).
    pub fn port_pool(&self) -> RelayPorts {
        RelayPorts::new(self.relay.min_port, self.relay.max_port, &self.relay_ips())
    }

    /// Per family (0: IPv4, 1: IPv6) the relay IP to bind ([`Config::relay_ips`]) and the IP
    /// to advertise for it ([`Config::external_ip_for`]).
    pub fn relay_addresses(&self) -> [Option<(IpAddr, IpAddr)>; 2] {
        let mut relay_ips = [None, None];
        for ip in self.relay_ips() {
            let fam = usize::from(ip.is_ipv6());
            relay_ips[fam].get_or_insert((ip, self.external_ip_for(ip)));
        }
        relay_ips
    }

    /// The budget of answers to unauthenticated requests ([`Config::unauth_limit`]), each
    /// counted at the size of this realm's 401, sources hashed with `key`.
    pub fn unauth_limiter(&self, key: [u8; 16]) -> ResponseLimiter {
        ResponseLimiter::new(
            self.unauth_limit(),
            crate::turn::challenge_len(&self.server.realm),
            key,
        )
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
    /// skipped (call [`Config::validate`] first; loading does).
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
    /// [`Config::validate`] first; loading does).
    pub fn peer_rules(&self) -> (Vec<Cidr>, Vec<Cidr>) {
        let parse = |list: &[String]| list.iter().filter_map(|s| s.parse().ok()).collect();
        (parse(&self.peers.allow), parse(&self.peers.deny))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserSecret;

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

    /// Start and reload build the core's settings from one conversion: a worker's
    /// `ServerConfig` carries what `live_settings` says, and reloading quotas in place gives
    /// the limits a fresh start would.
    #[test]
    fn start_and_reload_settings_agree() {
        let c = Config::from_toml_str(
            "[server]\nlisten = [\"127.0.0.1:3478\"]\nsoftware = \"turnd test\"\n\
             mapped-address = true\nstrict-channel-numbers = true\n\
             [relay]\nexternal-ips = [\"203.0.113.9\"]\nmin-port = 50000\nmax-port = 50009\n\
             [allocation]\ndefault-lifetime = 60\nmax-lifetime = 120\nuser-quota = 3\n\
             total-quota = 9\nmax-bps = 1000\nbps-capacity = 5000\n\
             [allocation.users.alice]\nmax-bps = 2000\n\
             [auth]\nsecrets = [\"s\"]\nrest-separator = \"-\"\n\
             enforce-credential-expiry = false\n\
             [peers]\nallow = [\"10.0.0.0/8\"]\n\
             [limits]\nallocations-per-ip = 4\npermissions-per-allocation = 7\n\
             channels-per-allocation = 5\n",
        )
        .expect("valid");
        let live = c.live_settings([7; 32]);
        assert_eq!(live.auth.realm(), c.server.realm);
        assert_eq!((live.user_quota, live.total_quota), (3, 9));
        assert_eq!(live.software.as_deref(), Some("turnd test"));
        let own: SocketAddr = "127.0.0.1:3478".parse().expect("addr");
        let relay_ips = c.relay_addresses();
        assert_eq!(
            relay_ips,
            [
                Some((
                    "127.0.0.1".parse().expect("ip"),
                    "203.0.113.9".parse().expect("ip")
                )),
                None
            ]
        );
        let quotas = Arc::new(c.quotas());
        let core = c.server_config(
            live.clone(),
            DriverParts {
                ports: Arc::new(Mutex::new(c.port_pool())),
                quotas: quotas.clone(),
                relay_ips,
                own_addresses: vec![own],
                secret: [1; 32],
                unauth_limiter: Arc::new(c.unauth_limiter([2; 16])),
            },
        );
        assert_eq!(core.live.default_lifetime, live.default_lifetime);
        assert_eq!(core.live.max_lifetime, live.max_lifetime);
        assert_eq!(core.live.software, live.software);
        assert!(core.live.mapped_address && core.live.strict_channel_numbers);
        assert!(!core.live.enforce_credential_expiry);
        assert_eq!(core.rest_separator, '-');
        assert_eq!(core.max_permissions, 7);
        assert_eq!(core.limits.max_channels, 5);
        assert_eq!(core.unauth_limiter.limit(), c.unauth_limit());
        assert_eq!(core.live.policy.own_addresses(), &[own]);
        assert_eq!(
            (core.live.user_quota, core.live.total_quota),
            quotas.limits()
        );
        assert!(
            core.live
                .policy
                .is_allowed_addr("10.1.2.3:9".parse().expect("addr"))
        );

        // A reload into quotas built from defaults lands on what a start builds.
        let reloaded = Config::default().quotas();
        c.apply_quotas(&reloaded);
        assert_eq!(reloaded.limits(), quotas.limits());
        assert_eq!(reloaded.bps_capacity(), quotas.bps_capacity());
        assert_eq!(reloaded.rate_for("alice"), quotas.rate_for("alice"));
        assert_eq!(reloaded.rate_for("bob"), quotas.rate_for("bob"));
    }
}
