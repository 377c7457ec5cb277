//! One constructor of [`ServerConfig`] for everything that drives the core without the
//! network driver: the simulation tests, the fuzz harness, the allocation test, the
//! benchmarks and the cost example. The driver (`crate::net::start`) builds its own from the
//! parsed config.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::Authenticator;
use crate::turn::peer_policy::PeerPolicy;
use crate::turn::ports::RelayPorts;
use crate::turn::quota::Quotas;
use crate::turn::rate_limit::{RateLimit, ResponseLimiter};
use crate::turn::{Limits, Reconfigure, ServerConfig, challenge_len};

impl ServerConfig {
    /// A configuration with what an empty `turnserver.toml` gives (a unit test below keeps
    /// them equal), but for what callers always choose themselves: the authenticator, the
    /// relay addresses per family (0: IPv4, 1: IPv6; bound, advertised), the relay port
    /// range and the random bytes. Callers change any other field with struct update syntax
    /// (`ServerConfig { max_permissions: 4, ..ServerConfig::testing(..) }`).
    ///
    /// The core draws no randomness (it is passed in): `secret` seeds the server and its
    /// last 16 bytes key the unauthenticated-response limiter. The REST separator is the
    /// authenticator's, as in the driver.
    pub fn testing(
        auth: Arc<Authenticator>,
        relay_ips: [Option<(IpAddr, IpAddr)>; 2],
        ports: RangeInclusive<u16>,
        secret: [u8; 32],
    ) -> ServerConfig {
        let limiter_key: [u8; 16] = std::array::from_fn(|i| secret[16 + i]);
        let answer_bytes = challenge_len(auth.realm());
        ServerConfig {
            rest_separator: auth.rest_separator(),
            live: Reconfigure {
                auth,
                policy: PeerPolicy::new(vec![], vec![]),
                user_quota: 0,
                total_quota: 0,
                default_lifetime: Duration::from_secs(600),
                max_lifetime: Duration::from_secs(3600),
                software: None,
                mapped_address: false,
                enforce_credential_expiry: true,
                strict_channel_numbers: false,
                telemetry: true,
            },
            ports: Arc::new(Mutex::new(RelayPorts::new(
                *ports.start(),
                *ports.end(),
                &relay_ips
                    .iter()
                    .flatten()
                    .map(|(bind, _)| *bind)
                    .collect::<Vec<_>>(),
            ))),
            quotas: Arc::new(Quotas::new(0, 0)),
            relay_ips,
            max_permissions: 1024,
            secret,
            limits: Limits::default(),
            unauth_limiter: Arc::new(ResponseLimiter::new(
                RateLimit { rate: 1, burst: 8 },
                answer_bytes,
                limiter_key,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthConfig;
    use crate::config::Config;

    /// `ServerConfig::testing` gives what the driver would build from an empty config file.
    #[test]
    fn testing_config_has_the_defaults_of_an_empty_config_file() {
        let d = Config::default();
        let auth = Arc::new(Authenticator::new(AuthConfig {
            realm: d.server.realm.clone(),
            users: vec![],
            secrets: vec![],
            rest_separator: '-',
            nonce_lifetime_secs: d.auth.nonce_lifetime,
            nonce_key: [1; 32],
        }));
        let relay = Some((IpAddr::from([192, 0, 2, 1]), IpAddr::from([203, 0, 113, 1])));
        let c = ServerConfig::testing(auth, [relay, None], 50000..=50009, [4; 32]);

        assert_eq!(
            c.live.default_lifetime,
            Duration::from_secs(u64::from(d.allocation.default_lifetime))
        );
        assert_eq!(
            c.live.max_lifetime,
            Duration::from_secs(u64::from(d.allocation.max_lifetime))
        );
        assert_eq!(
            c.live.software,
            (!d.server.software.is_empty()).then(|| d.server.software.clone())
        );
        assert_eq!(c.live.mapped_address, d.server.mapped_address);
        assert_eq!(
            c.live.enforce_credential_expiry,
            d.auth.enforce_credential_expiry
        );
        assert_eq!(
            c.live.strict_channel_numbers,
            d.server.strict_channel_numbers
        );
        assert_eq!(c.live.telemetry, d.telemetry.enabled);
        assert_eq!(c.max_permissions, d.limits.permissions_per_allocation);
        assert_eq!(c.limits, d.core_limits());
        assert_eq!(c.unauth_limiter.limit(), d.unauth_limit());
        assert_eq!(
            c.quotas.limits(),
            (d.allocation.user_quota, d.allocation.total_quota)
        );
        assert_eq!(c.quotas.bps_capacity(), d.allocation.bps_capacity);
        assert_eq!((c.live.user_quota, c.live.total_quota), c.quotas.limits());
        let (allow, deny) = d.peer_rules();
        assert!(allow.is_empty() && deny.is_empty());
        assert!(c.live.policy.own_addresses().is_empty());

        // What the caller passed, and the separator from the authenticator.
        assert_eq!(c.rest_separator, '-');
        assert_eq!(c.relay_ips, [relay, None]);
        assert_eq!(c.ports.lock().unwrap().capacity(), 10);
        assert_eq!(c.secret, [4; 32]);
    }
}
