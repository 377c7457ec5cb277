//! `/turn`: the TURN REST API of draft-uberti-behave-turn-rest-00 §2, the call Janus's
//! `turn_rest_api` and other media servers and app backends make to get TURN credentials.
//!
//! A request (GET, or POST with a form-encoded body; Janus 1.1.2 sends the same string in the
//! query and the body) carries `service=turn`, an optional `username` (the user id the
//! credential is for) and an API key as `key=` (the draft) or `api=` (what Janus adds). The
//! answer is the draft's `{"username", "password", "ttl", "uris"}`, minted with the first of
//! `auth.secrets` as `auth::mint_rest_credential` does for `/credentials`.
//!
//! The keys (`admin.rest-api-keys`) open this route only; the admin token does not open it
//! and is not needed. Requests are rate limited per client IP before the key is checked, so a
//! key cannot be guessed at speed either; no key or secret is ever logged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;
use tracing::debug;

use super::Settings;
use super::http::{Request, Response};
use crate::config::Config;

/// The path of the endpoint.
pub const PATH: &str = "/turn";

/// Client IPs whose buckets are remembered at most; a full bucket is forgotten first.
const MAX_TRACKED: usize = 4096;

/// Answers a request for [`PATH`].
pub fn handle(req: &Request, peer: SocketAddr, s: &Settings) -> Response {
    if req.method != "GET" && req.method != "POST" {
        return Response::error(405, "method not allowed");
    }
    // The keys are `[admin]`'s, read at start (a reload names changes to them as needing a
    // restart); after a reload the secrets and the ceiling in force are the lifecycle's.
    let keys = s.rest_api_keys.as_slice();
    let live = s.lifecycle.as_ref().map(|l| {
        let c = l.config();
        (c.auth.secrets.first().cloned(), c.auth.max_rest_ttl)
    });
    let (secret, max_ttl) = match live {
        Some((secret, max)) => (secret, max),
        None => (s.rest_secret.clone(), s.max_rest_ttl),
    };
    let ttl = s.rest_api_ttl;
    if keys.is_empty() {
        return Response::error(404, "no such endpoint");
    }
    if !s.rest_rate.admit(peer.ip(), Instant::now()) {
        debug!(%peer, "TURN REST API request refused: rate limit");
        return Response::error(429, "too many requests");
    }
    let given = req.param("key").or_else(|| req.param("api"));
    let Some(given) = given.filter(|k| !k.is_empty()) else {
        debug!(%peer, "TURN REST API request without a key");
        return Response::error(401, "key: required");
    };
    if !keys
        .iter()
        .any(|k| constant_time_eq(given.as_bytes(), k.as_bytes()))
    {
        debug!(%peer, "TURN REST API request with a wrong key");
        return Response::error(403, "wrong key");
    }
    if req.param("service") != Some("turn") {
        return Response::error(400, "service: must be \"turn\"");
    }
    let user = req.param("username").unwrap_or_default();
    if user.len() > 256 || user.chars().any(char::is_control) {
        return Response::error(400, "username: at most 256 bytes, no control characters");
    }
    let Some(secret) = secret else {
        return Response::error(
            409,
            "no REST secret configured (auth.secrets): cannot mint credentials",
        );
    };
    let ttl = match super::api::requested_ttl(req, ttl, max_ttl) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let (username, password) = crate::auth::mint_rest_credential(
        &secret,
        user,
        crate::net::now().unix,
        ttl,
        s.rest_separator,
    );
    Response::json(
        200,
        json!({
            "username": username,
            "password": password,
            "ttl": ttl,
            "uris": s.uris,
        })
        .to_string(),
    )
}

/// Equal bytes, compared without an early exit (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The URIs the admin API advertises: `admin.uris` when set, else every configured transport
/// of every listen address, in the order that connects fastest (UDP, then TCP, then TLS). A
/// wildcard listen address is named by `relay.external-ips` of its family, or left out.
pub fn advertised_uris(cfg: &Config) -> Vec<String> {
    if !cfg.admin.uris.is_empty() {
        return cfg.admin.uris.clone();
    }
    let named = |a: &SocketAddr| -> Option<SocketAddr> {
        if !a.ip().is_unspecified() {
            return Some(*a);
        }
        cfg.relay
            .external_ips
            .iter()
            .find(|ip| ip.is_ipv4() == a.is_ipv4())
            .map(|ip| SocketAddr::new(*ip, a.port()))
    };
    let listen: Vec<SocketAddr> = cfg.server.listen.iter().filter_map(named).collect();
    let mut uris: Vec<String> = listen
        .iter()
        .map(|a| format!("turn:{a}?transport=udp"))
        .collect();
    if cfg.tcp.enabled {
        uris.extend(listen.iter().map(|a| format!("turn:{a}?transport=tcp")));
        if cfg.tls.mux && cfg.tls.cert.is_some() {
            uris.extend(listen.iter().map(|a| format!("turns:{a}?transport=tcp")));
        }
    }
    uris.extend(
        cfg.tls
            .listen
            .iter()
            .filter_map(named)
            .map(|a| format!("turns:{a}?transport=tcp")),
    );
    uris.dedup();
    uris
}

/// Token buckets per client IP: `rate` requests a second, bursts of `2 * rate`.
pub struct RateLimit {
    rate: u32,
    table: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `rate` 0: no limit.
    pub fn new(rate: u32) -> RateLimit {
        RateLimit {
            rate,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request's token for `ip`; false when its bucket is empty (or every tracked
    /// client is mid-burst and the table is full).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let rate = f64::from(self.rate);
        let burst = 2.0 * rate;
        let refill = |b: &Bucket| {
            let dt = now.saturating_duration_since(b.at).as_secs_f64();
            (b.tokens + dt * rate).min(burst)
        };
        let mut t = match self.table.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if !t.contains_key(&ip) && t.len() >= MAX_TRACKED {
            // Forget the clients whose buckets have filled up again: a new bucket is full.
            t.retain(|_, b| refill(b) < burst);
            if t.len() >= MAX_TRACKED {
                return false;
            }
        }
        let b = t.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = refill(b);
        if tokens < 1.0 {
            b.tokens = tokens;
            b.at = now;
            return false;
        }
        b.tokens = tokens - 1.0;
        b.at = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_hold_a_burst_and_refill() {
        let r = RateLimit::new(5);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!((0..10).all(|_| r.admit(a, t0)), "a burst of 2 * rate");
        assert!(!r.admit(a, t0), "then empty");
        assert!(r.admit(b, t0), "another client has its own bucket");
        assert!(
            r.admit(a, t0 + Duration::from_millis(200)),
            "one token per 1/rate s"
        );
        assert!(!r.admit(a, t0 + Duration::from_millis(200)));
        assert!(RateLimit::new(0).admit(a, t0), "0: no limit");
    }

    #[test]
    fn a_full_table_forgets_refilled_buckets() {
        let r = RateLimit::new(1);
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            assert!(r.admit(IpAddr::from(i.to_be_bytes()), t0));
        }
        let new: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(!r.admit(new, t0), "every tracked client is mid-burst");
        assert!(
            r.admit(new, t0 + Duration::from_secs(2)),
            "refilled ones forgotten"
        );
    }

    fn config(toml: &str) -> Config {
        Config::from_toml_str(toml).expect("valid config")
    }

    #[test]
    fn uris_name_every_transport() {
        let c = config("[server]\nlisten = [\"127.0.0.1:3478\", \"[::1]:3478\"]\n");
        assert_eq!(
            advertised_uris(&c),
            [
                "turn:127.0.0.1:3478?transport=udp",
                "turn:[::1]:3478?transport=udp",
                "turn:127.0.0.1:3478?transport=tcp",
                "turn:[::1]:3478?transport=tcp",
            ]
        );
        let c = config(
            "[server]\nlisten = [\"0.0.0.0:3478\"]\n\
             [relay]\nips = [\"10.0.0.5\"]\nexternal-ips = [\"203.0.113.7\"]\n\
             [tcp]\nenabled = false\n\
             [tls]\nlisten = [\"0.0.0.0:443\"]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n",
        );
        assert_eq!(
            advertised_uris(&c),
            [
                "turn:203.0.113.7:3478?transport=udp",
                "turns:203.0.113.7:443?transport=tcp",
            ]
        );
        let c = config("[admin]\nuris = [\"turn:turn.example.org:3478\"]\n");
        assert_eq!(advertised_uris(&c), ["turn:turn.example.org:3478"]);
    }
}
