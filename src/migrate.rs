//! `turnd migrate-coturn PATH`: translates a coturn `turnserver.conf` into a
//! `turnserver.toml` of the same meaning (stdout), and lists on stderr every option it could
//! not carry over, with the reason.
//!
//! coturn's file is one option a line: `name=value`, `name value` or a bare flag `name`,
//! optionally with coturn's command-line `--` prefix; lines starting with `#` are comments;
//! list options (`user`, `listening-ip`, `denied-peer-ip`, ...) may repeat.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use crate::cli::PathArg;

/// coturn's default listening port.
const COTURN_PORT: u16 = 3478;
/// coturn's `stale-nonce` value when the flag is given bare.
const COTURN_STALE_NONCE: u64 = 600;
/// coturn's default `tls-listening-port`.
const COTURN_TLS_PORT: u16 = 5349;
/// coturn's default `prometheus-port`.
const COTURN_PROMETHEUS_PORT: u16 = 9641;

/// The result of a translation.
#[derive(Clone, Debug, Default)]
pub struct Migration {
    /// The turnserver.toml text.
    pub toml: String,
    /// One line per option not carried over: `line N: option: why`.
    pub skipped: Vec<String>,
}

/// One option of the coturn file.
struct Opt<'a> {
    line: usize,
    name: String,
    value: &'a str,
}

fn parse_line(line_no: usize, line: &str) -> Option<Opt<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, value) = match line.split_once('=') {
        Some((n, v)) => (n.trim(), v.trim()),
        None => match line.split_once(char::is_whitespace) {
            Some((n, v)) => (n, v.trim()),
            None => (line, ""),
        },
    };
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    Some(Opt {
        line: line_no,
        // coturn's option names are case-sensitive (`-v` verbose, `-V` very verbose).
        name: name.trim_start_matches('-').to_owned(),
        value,
    })
}

/// What was read from the coturn file, before it is written as TOML.
#[derive(Default)]
struct Coturn {
    listening_port: Option<u16>,
    listening_ips: Vec<IpAddr>,
    relay_ips: Vec<IpAddr>,
    /// (public, private) pairs of `external-ip`.
    external_ips: Vec<(IpAddr, Option<IpAddr>)>,
    min_port: Option<u16>,
    max_port: Option<u16>,
    realm: Option<String>,
    lt_cred_mech: bool,
    users: Vec<(String, String)>,
    use_auth_secret: bool,
    secrets: Vec<String>,
    rest_separator: Option<char>,
    user_quota: Option<u32>,
    total_quota: Option<u32>,
    allow: Vec<String>,
    deny: Vec<String>,
    allow_loopback: bool,
    no_multicast: bool,
    stale_nonce: Option<u64>,
    max_lifetime: Option<u32>,
    alternate: Vec<SocketAddr>,
    verbose: Option<&'static str>,
    software_off: bool,
    /// `cert` and `pkey` (paths as written).
    cert: Option<String>,
    pkey: Option<String>,
    tls_port: Option<u16>,
    no_tls: bool,
    no_tcp: bool,
    no_udp: bool,
    no_dtls: bool,
    /// coturn's `max-bps` and `bps-capacity`, in bytes per second.
    max_bytes_per_sec: Option<u64>,
    capacity_bytes_per_sec: Option<u64>,
    prometheus: bool,
    prometheus_port: Option<u16>,
    /// `rfc5766-channel-numbers` (coturn 4.17): Some(true) accepts 0x4000-0x7FFF, Some(false)
    /// only RFC 8656's 0x4000-0x4FFF.
    rfc5766_channels: Option<bool>,
    skipped: Vec<String>,
}

impl Coturn {
    fn skip(&mut self, o: &Opt<'_>, why: &str) {
        let shown = if o.value.is_empty() || is_sensitive(&o.name) {
            o.name.clone()
        } else {
            format!("{}={}", o.name, o.value)
        };
        self.skipped
            .push(format!("line {}: {shown}: {why}", o.line));
    }

    fn number<T: std::str::FromStr>(&mut self, o: &Opt<'_>) -> Option<T> {
        match o.value.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.skip(o, "not a valid number");
                None
            }
        }
    }

    fn path(&mut self, o: &Opt<'_>) -> Option<String> {
        if o.value.is_empty() {
            self.skip(o, "no file given");
            None
        } else {
            Some(o.value.to_owned())
        }
    }

    fn ip(&mut self, o: &Opt<'_>) -> Option<IpAddr> {
        match o.value.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.skip(
                    o,
                    "not an IP address (turnd takes addresses, not device or host names)",
                );
                None
            }
        }
    }

    fn read(&mut self, o: &Opt<'_>) {
        match o.name.as_str() {
            "listening-port" | "port" | "p" => self.listening_port = self.number(o),
            "listening-ip" | "l" => {
                if let Some(ip) = self.ip(o) {
                    self.listening_ips.push(ip);
                }
            }
            "relay-ip" | "e" => {
                if let Some(ip) = self.ip(o) {
                    self.relay_ips.push(ip);
                }
            }
            "external-ip" | "x" => {
                let (public, private) = match o.value.split_once('/') {
                    Some((p, q)) => (p.trim().parse(), Some(q.trim().parse())),
                    None => (o.value.parse(), None),
                };
                match (public, private) {
                    (Ok(p), None) => self.external_ips.push((p, None)),
                    (Ok(p), Some(Ok(q))) => self.external_ips.push((p, Some(q))),
                    _ => self.skip(o, "expected IP or PUBLIC-IP/PRIVATE-IP"),
                }
            }
            "min-port" => self.min_port = self.number(o),
            "max-port" => self.max_port = self.number(o),
            "realm" | "r" => self.realm = Some(o.value.to_owned()),
            "lt-cred-mech" | "a" => self.lt_cred_mech = true,
            "user" | "u" => match o.value.split_once(':') {
                Some((n, p)) if !n.is_empty() && !p.is_empty() => {
                    self.users.push((n.to_owned(), p.to_owned()))
                }
                _ => self.skip(o, "expected NAME:PASSWORD or NAME:0xKEY"),
            },
            "use-auth-secret" => self.use_auth_secret = true,
            "static-auth-secret" => {
                if o.value.is_empty() {
                    self.skip(o, "no secret given");
                } else {
                    self.secrets.push(o.value.to_owned());
                }
            }
            "rest-api-separator" => {
                let mut c = o.value.chars();
                match (c.next(), c.next()) {
                    (Some(ch), None) => self.rest_separator = Some(ch),
                    _ => self.skip(o, "must be exactly one character"),
                }
            }
            "user-quota" => self.user_quota = self.number(o),
            "total-quota" => self.total_quota = self.number(o),
            "denied-peer-ip" => match range_to_cidrs(o.value) {
                Some(c) => self.deny.extend(c),
                None => self.skip(o, "expected IP, IP-IP range or CIDR"),
            },
            "allowed-peer-ip" => match range_to_cidrs(o.value) {
                Some(c) => self.allow.extend(c),
                None => self.skip(o, "expected IP, IP-IP range or CIDR"),
            },
            "allow-loopback-peers" => self.allow_loopback = true,
            "no-multicast-peers" => self.no_multicast = true,
            "stale-nonce" => {
                self.stale_nonce = if o.value.is_empty() {
                    Some(COTURN_STALE_NONCE)
                } else {
                    self.number(o)
                }
            }
            "max-allocate-lifetime" => self.max_lifetime = self.number(o),
            "alternate-server" => {
                let parsed = o.value.parse::<SocketAddr>().ok().or_else(|| {
                    o.value
                        .parse::<IpAddr>()
                        .ok()
                        .map(|ip| SocketAddr::new(ip, COTURN_PORT))
                });
                match parsed {
                    Some(a) => self.alternate.push(a),
                    None => self.skip(o, "expected IP or IP:PORT"),
                }
            }
            "rfc5766-channel-numbers" => match coturn_bool(o.value) {
                Some(on) => self.rfc5766_channels = Some(on),
                None => self.skip(o, "expected no value, or yes/no, true/false, on/off, 1/0"),
            },
            "verbose" | "v" => self.verbose = Some("info"),
            "Verbose" | "V" => self.verbose = Some("debug"),
            "no-software-attribute" => self.software_off = true,
            // Always so in turnd: nothing to write.
            "fingerprint" | "f" | "no-loopback-peers" | "no-stun-backward-compatibility" => {}
            "cert" => self.cert = self.path(o),
            "pkey" => self.pkey = self.path(o),
            "tls-listening-port" => self.tls_port = self.number(o),
            "no-tls" => self.no_tls = true,
            "no-tcp" => self.no_tcp = true,
            "no-udp" => self.no_udp = true,
            "no-dtls" => self.no_dtls = true,
            // turnd speaks TLS 1.2 and 1.3 only: these are always so.
            "no-tlsv1" | "no-tlsv1_1" => {}
            "no-tlsv1_2" => self.skip(
                o,
                "turnd offers TLS 1.2 and 1.3 and cannot turn 1.2 off (older clients would \
                 fail to connect with 1.3 only)",
            ),
            "pkey-pwd" => self.skip(
                o,
                "turnd reads unencrypted PEM keys only; decrypt the key once \
                 (openssl pkey -in KEY -out KEY.plain) and point tls.key at it",
            ),
            "cipher-list" | "ec-curve-name" | "dh-file" | "dh566" | "dh2066" => self.skip(
                o,
                "turnd uses rustls' fixed set of modern cipher suites and key exchanges",
            ),
            "ca-cert" | "CA-file" => self.skip(o, "turnd does not verify client certificates"),
            "alt-tls-listening-port" => {
                self.skip(o, "RFC 5780 alternate ports are not served by turnd")
            }
            "max-bps" => self.max_bytes_per_sec = self.number(o),
            "bps-capacity" => self.capacity_bytes_per_sec = self.number(o),
            "prometheus" => self.prometheus = true,
            "prometheus-port" => self.prometheus_port = self.number(o),
            "prometheus-username-labels" => self.skip(
                o,
                "turnd's metrics carry no per-user labels (they would grow without bound); \
                 GET /users on the admin API gives per-user totals",
            ),
            "channel-lifetime" | "permission-lifetime" => self.skip(
                o,
                "turnd uses the RFC 8656 lifetimes (permissions 300 s, channels 600 s)",
            ),
            "log-file"
            | "syslog"
            | "simple-log"
            | "new-log-timestamp"
            | "no-stdout-log"
            | "new-log-timestamp-format"
            | "log-binding" => self.skip(
                o,
                "turnd logs to stdout (journald under systemd); set log.format = \"json\" \
                 for machine-readable lines",
            ),
            "pidfile" | "proc-user" | "proc-group" | "daemon" | "o" => self.skip(
                o,
                "process management is systemd's job (systemd/turnd.service)",
            ),
            "userdb" | "b" | "psql-userdb" | "mysql-userdb" | "mongo-userdb" | "redis-userdb"
            | "redis-statsdb" | "secret-ttl" => self.skip(
                o,
                "turnd reads users and secrets from turnserver.toml only (no database)",
            ),
            "no-auth" | "z" => self.skip(
                o,
                "turnd always authenticates TURN requests (RFC 8656 §5); configure users or \
                 secrets",
            ),
            "no-tcp-relay" => self.skip(
                o,
                "turnd always offers RFC 6062 TCP allocations to clients on TCP and TLS",
            ),
            "no-udp-relay" => self.skip(o, "turnd always offers UDP allocations"),
            "tcp-proxy-port" => self.skip(
                o,
                "no turnd equivalent; behind a load balancer use tcp.proxy-protocol",
            ),
            "cli-ip"
            | "cli-port"
            | "cli-password"
            | "no-cli"
            | "web-admin"
            | "web-admin-ip"
            | "web-admin-port"
            | "web-admin-listen-on-workers" => self.skip(o, "turnd has no telnet CLI or web admin"),
            "server-name"
            | "oauth"
            | "mobility"
            | "m"
            | "relay-threads"
            | "general-threads"
            | "listening-device"
            | "relay-device"
            | "aux-server"
            | "udp-self-balance"
            | "stun-only"
            | "no-stun"
            | "secure-stun"
            | "check-origin-consistency"
            | "alt-listening-port"
            | "response-origin-only-with-rfc5780"
            | "no-rfc5780" => self.skip(o, "no turnd equivalent"),
            _ => self.skip(o, "unknown to this migration; no turnd equivalent known"),
        }
    }
}

/// A coturn flag's optional value: none, or yes/no, true/false, on/off, 1/0.
fn coturn_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "" | "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

fn is_sensitive(name: &str) -> bool {
    matches!(
        name,
        "user" | "u" | "static-auth-secret" | "pkey-pwd" | "cli-password"
    ) || name.ends_with("userdb")
}

/// `a.b.c.d`, `a.b.c.d/n`, or coturn's `FIRST-LAST` range as the fewest CIDR prefixes.
pub fn range_to_cidrs(value: &str) -> Option<Vec<String>> {
    let value = value.trim();
    if value.contains('/') {
        // A prefix is carried as the operator wrote it.
        return value
            .parse::<crate::turn::peer_policy::Cidr>()
            .ok()
            .map(|_| vec![value.to_owned()]);
    }
    let cidrs = crate::turn::peer_policy::parse_range(value).ok()?;
    Some(
        cidrs
            .iter()
            .map(|c| {
                let host = if c.addr().is_ipv4() { 32 } else { 128 };
                if c.prefix() == host {
                    c.addr().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

fn ip_list(ips: &[IpAddr]) -> toml::Value {
    toml::Value::Array(ips.iter().map(|i| i.to_string().into()).collect())
}

fn str_list(items: &[String]) -> toml::Value {
    toml::Value::Array(items.iter().map(|s| s.clone().into()).collect())
}

/// Translates the text of a coturn config file; relative `cert`/`pkey` paths stay relative.
pub fn migrate(text: &str) -> Migration {
    migrate_from(text, None)
}

/// Translates the text of a coturn config file read from the directory `base`: relative
/// `cert` and `pkey` paths are taken relative to it, as coturn does.
pub fn migrate_from(text: &str, base: Option<&std::path::Path>) -> Migration {
    let mut c = Coturn::default();
    for (i, line) in text.lines().enumerate() {
        if let Some(o) = parse_line(i + 1, line) {
            c.read(&o);
        }
    }
    let mut notes = std::mem::take(&mut c.skipped);
    let mut server = toml::Table::new();
    let mut relay = toml::Table::new();
    let mut allocation = toml::Table::new();
    let mut auth = toml::Table::new();
    let mut peers = toml::Table::new();
    let mut log = toml::Table::new();
    let mut tcp = toml::Table::new();
    let mut tls = toml::Table::new();
    let mut admin = toml::Table::new();

    let port = c.listening_port.unwrap_or(COTURN_PORT);
    let listen_ips: Vec<IpAddr> = if c.listening_ips.is_empty() {
        // coturn listens on every address when no listening-ip is given.
        vec![
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        ]
    } else {
        c.listening_ips.clone()
    };
    let listen: Vec<toml::Value> = listen_ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, port).to_string().into())
        .collect();
    server.insert("listen".into(), toml::Value::Array(listen));
    if let Some(r) = &c.realm {
        server.insert("realm".into(), r.clone().into());
    }
    if !c.alternate.is_empty() {
        let alts: Vec<toml::Value> = c.alternate.iter().map(|a| a.to_string().into()).collect();
        server.insert("alternate-server".into(), toml::Value::Array(alts));
    }
    if c.software_off {
        server.insert("software".into(), String::new().into());
    }
    // Without the option coturn 4.6 (Debian's) grants RFC 5766's channel numbers and 4.17
    // only RFC 8656's; turnd's default grants the former, which serves the clients of both.
    // The option given says which range the operator chose: write it down.
    if let Some(rfc5766) = c.rfc5766_channels {
        server.insert("strict-channel-numbers".into(), (!rfc5766).into());
    }

    // Relay addresses: relay-ip (several per family, as coturn takes them, unless that
    // family has an external-ip: 1:1 NAT maps one address), else the private side of
    // PUBLIC/PRIVATE external-ips, one per family.
    let mut relay_ips: Vec<IpAddr> = Vec::new();
    let private: Vec<IpAddr> = c.external_ips.iter().filter_map(|(_, q)| *q).collect();
    let candidates = if c.relay_ips.is_empty() {
        &private
    } else {
        &c.relay_ips
    };
    for ip in candidates {
        let natted = c
            .external_ips
            .iter()
            .any(|(p, _)| p.is_ipv4() == ip.is_ipv4());
        let several_ok = !c.relay_ips.is_empty() && !natted;
        if relay_ips.contains(ip) {
            continue;
        }
        if !several_ok && relay_ips.iter().any(|r| r.is_ipv4() == ip.is_ipv4()) {
            notes.push(format!(
                "relay-ip={ip}: turnd relays from one address per family behind external-ip; kept {}",
                relay_ips
                    .iter()
                    .find(|r| r.is_ipv4() == ip.is_ipv4())
                    .map(IpAddr::to_string)
                    .unwrap_or_default()
            ));
        } else {
            relay_ips.push(*ip);
        }
    }
    if relay_ips.is_empty() && c.listening_ips.iter().all(IpAddr::is_unspecified) {
        notes.push(
            "relay-ip: not set and coturn listens on every address; set relay.ips to the \
             address relay sockets bind to (turnd needs one per family)"
                .to_owned(),
        );
    }
    if !relay_ips.is_empty() {
        relay.insert("ips".into(), ip_list(&relay_ips));
    }
    let mut external: Vec<IpAddr> = Vec::new();
    for (public, _) in &c.external_ips {
        if external.iter().any(|e| e.is_ipv4() == public.is_ipv4()) {
            notes.push(format!(
                "external-ip={public}: turnd advertises one external address per family; \
                 kept the first"
            ));
        } else {
            external.push(*public);
        }
    }
    if !external.is_empty() {
        relay.insert("external-ips".into(), ip_list(&external));
    }
    if let Some(p) = c.min_port {
        relay.insert("min-port".into(), i64::from(p).into());
    }
    if let Some(p) = c.max_port {
        relay.insert("max-port".into(), i64::from(p).into());
    }

    if let Some(n) = c.max_lifetime {
        allocation.insert("max-lifetime".into(), i64::from(n).into());
        if n < 600 {
            // coturn's default lifetime is 600 s too; turnd needs default <= max.
            allocation.insert("default-lifetime".into(), i64::from(n).into());
        }
    }
    if let Some(n) = c.user_quota {
        allocation.insert("user-quota".into(), i64::from(n).into());
    }
    if let Some(n) = c.total_quota {
        allocation.insert("total-quota".into(), i64::from(n).into());
    }

    if !c.users.is_empty() {
        if !c.lt_cred_mech && c.use_auth_secret {
            notes.push(
                "user: coturn ignores static users when only use-auth-secret is set; \
                 carried over anyway (turnd accepts both)"
                    .to_owned(),
            );
        }
        let users: Vec<toml::Value> = c
            .users
            .iter()
            .map(|(name, secret)| {
                let mut t = toml::Table::new();
                t.insert("name".into(), name.clone().into());
                let is_key = secret.len() == 34
                    && (secret.starts_with("0x") || secret.starts_with("0X"))
                    && crate::config::decode_md5_key(secret).is_some();
                if is_key {
                    t.insert("key".into(), secret.clone().into());
                } else {
                    t.insert("password".into(), secret.clone().into());
                }
                toml::Value::Table(t)
            })
            .collect();
        auth.insert("users".into(), toml::Value::Array(users));
    }
    if c.use_auth_secret && !c.secrets.is_empty() {
        auth.insert("secrets".into(), str_list(&c.secrets));
    } else if c.use_auth_secret {
        notes.push(
            "use-auth-secret: no static-auth-secret given (coturn would read it from its \
             database); add auth.secrets"
                .to_owned(),
        );
    } else if !c.secrets.is_empty() {
        notes.push(
            "static-auth-secret: ignored by coturn without use-auth-secret, so not carried over"
                .to_owned(),
        );
    }
    if let Some(sep) = c.rest_separator {
        auth.insert("rest-separator".into(), sep.to_string().into());
    }
    if let Some(n) = c.stale_nonce {
        let clamped = n.clamp(30, 86_400);
        if clamped != n {
            notes.push(format!(
                "stale-nonce={n}: turnd takes 30 to 86400 seconds; using {clamped}"
            ));
        }
        auth.insert(
            "nonce-lifetime".into(),
            i64::try_from(clamped).unwrap_or(600).into(),
        );
    }

    let mut allow = c.allow.clone();
    if c.allow_loopback {
        allow.extend(["127.0.0.0/8".to_owned(), "::1".to_owned()]);
    }
    if !allow.is_empty() {
        peers.insert("allow".into(), str_list(&allow));
    }
    if !c.deny.is_empty() {
        peers.insert("deny".into(), str_list(&c.deny));
    }
    if !c.no_multicast {
        notes.push(
            "(no no-multicast-peers): coturn would relay to multicast peers; turnd denies \
             them by default"
                .to_owned(),
        );
    }
    notes.push(
        "(peer policy): turnd also denies private, loopback, link-local and other \
         special-purpose peer ranges by default, which coturn relays to unless denied-peer-ip \
         says otherwise; add peers.allow entries for networks the relay must reach"
            .to_owned(),
    );
    if let Some(level) = c.verbose {
        log.insert("level".into(), level.into());
    }
    streams(&c, base, &listen_ips, port, &mut tcp, &mut tls, &mut notes);
    bandwidth(&c, &mut allocation);
    prometheus(&c, &mut admin, &mut notes);

    // One section at a time, in the order of the documented turnserver.toml.
    let mut body = String::new();
    for (name, t) in [
        ("server", server),
        ("relay", relay),
        ("allocation", allocation),
        ("auth", auth),
        ("peers", peers),
        ("log", log),
        ("tcp", tcp),
        ("tls", tls),
        ("admin", admin),
    ] {
        if !t.is_empty() {
            let mut root = toml::Table::new();
            root.insert(name.into(), toml::Value::Table(t));
            body.push_str(&toml::to_string(&root).unwrap_or_default());
            body.push('\n');
        }
    }
    Migration {
        toml: format!(
            "# turnserver.toml generated by `turnd migrate-coturn`; check it with\n\
             # `turnd check-config`. Keys not written keep their defaults.\n\n{body}"
        ),
        skipped: notes,
    }
}

/// `[tcp]` and `[tls]`: coturn listens for TCP on the plain port and, when it has a
/// certificate and key, for TLS on `tls-listening-port` (5349) of every listening IP; either
/// port takes both kinds of traffic (coturn tells them apart), which is turnd's `tls.mux`.
fn streams(
    c: &Coturn,
    base: Option<&std::path::Path>,
    listen_ips: &[IpAddr],
    port: u16,
    tcp: &mut toml::Table,
    tls: &mut toml::Table,
    notes: &mut Vec<String>,
) {
    if c.no_udp {
        notes.push(
            "no-udp: turnd always serves UDP on server.listen and cannot turn it off; \
             block UDP to those ports in the firewall if it must not be reachable"
                .to_owned(),
        );
    }
    if c.no_tcp {
        tcp.insert("enabled".into(), false.into());
    }
    if c.no_tls {
        if c.cert.is_some() || c.pkey.is_some() || c.tls_port.is_some() {
            notes.push(
                "cert/pkey/tls-listening-port: not carried over because no-tls is set".to_owned(),
            );
        }
        return;
    }
    let (cert, key) = match (&c.cert, &c.pkey) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            if c.tls_port.is_some() {
                notes.push(
                    "tls-listening-port: no cert and pkey given, so coturn serves no TLS and \
                     neither does this config; set tls.cert, tls.key and tls.listen"
                        .to_owned(),
                );
            }
            return;
        }
        _ => {
            notes.push(
                "cert/pkey: only one of them given (coturn would look for its default \
                 turn_server_cert.pem / turn_server_pkey.pem); set both tls.cert and tls.key \
                 and tls.listen to serve TLS"
                    .to_owned(),
            );
            return;
        }
    };
    let resolve = |p: &str| -> String {
        match base {
            Some(dir) if std::path::Path::new(p).is_relative() => {
                dir.join(p).to_string_lossy().into_owned()
            }
            _ => p.to_owned(),
        }
    };
    let tls_port = c.tls_port.unwrap_or(COTURN_TLS_PORT);
    tls.insert("cert".into(), resolve(cert).into());
    tls.insert("key".into(), resolve(key).into());
    if c.no_tcp || tls_port != port {
        let listen: Vec<toml::Value> = listen_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, tls_port).to_string().into())
            .collect();
        tls.insert("listen".into(), toml::Value::Array(listen));
    }
    if !c.no_tcp {
        // coturn answers TLS on the plain port and plain TCP on the TLS port too.
        tls.insert("mux".into(), true.into());
        if tls_port == port {
            notes.push(format!(
                "tls-listening-port={tls_port}: the same port as listening-port; served as \
                 one port taking both TCP and TLS (tls.mux)"
            ));
        }
    }
    if !c.no_dtls {
        notes.push(
            "(no no-dtls): coturn also serves DTLS on the TLS port; turnd has no DTLS \
             (clients use TURN over UDP, TCP or TLS)"
                .to_owned(),
        );
    }
}

/// coturn's `max-bps` and `bps-capacity` are in bytes per second; turnd's in bits per second.
/// Both apply to each direction separately, as coturn's do.
fn bandwidth(c: &Coturn, allocation: &mut toml::Table) {
    let bits = |bytes: u64| i64::try_from(bytes.saturating_mul(8)).unwrap_or(i64::MAX);
    if let Some(b) = c.max_bytes_per_sec {
        allocation.insert("max-bps".into(), bits(b).into());
    }
    if let Some(b) = c.capacity_bytes_per_sec {
        allocation.insert("bps-capacity".into(), bits(b).into());
    }
}

/// coturn's exporter (`prometheus`, port 9641) becomes the `[admin]` listener with `/metrics`
/// open to loopback. No token is invented: without `admin.token` the listener serves
/// `/metrics` to loopback only, and the API stays closed.
fn prometheus(c: &Coturn, admin: &mut toml::Table, notes: &mut Vec<String>) {
    if !c.prometheus {
        if c.prometheus_port.is_some() {
            notes.push(
                "prometheus-port: ignored by coturn without prometheus, so not carried over"
                    .to_owned(),
            );
        }
        return;
    }
    let port = c.prometheus_port.unwrap_or(COTURN_PROMETHEUS_PORT);
    admin.insert("enabled".into(), true.into());
    admin.insert(
        "listen".into(),
        SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
            .to_string()
            .into(),
    );
    admin.insert("metrics-open-on-loopback".into(), true.into());
    notes.push(format!(
        "prometheus: coturn's exporter answered on every address without authentication; \
         turnd serves /metrics on 127.0.0.1:{port} to loopback clients only. To scrape from \
         another host, or to use the admin API (sessions, /credentials, /reload, /drain), set \
         admin.token (16+ characters) and admin.listen"
    ));
}

/// Runs the subcommand: TOML on stdout, the options not carried over on stderr.
pub fn run(args: &PathArg) -> ExitCode {
    let text = match std::fs::read_to_string(&args.path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("turnd: cannot read {}: {e}", args.path.display());
            return ExitCode::from(2);
        }
    };
    let m = migrate_from(&text, args.path.parent());
    print!("{}", m.toml);
    if !m.skipped.is_empty() {
        eprintln!("turnd: not carried over from {}:", args.path.display());
        for s in &m.skipped {
            eprintln!("  {s}");
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_prefixes() {
        assert_eq!(
            range_to_cidrs("172.17.0.0-172.17.255.255").unwrap(),
            vec!["172.17.0.0/16"]
        );
        assert_eq!(range_to_cidrs("10.0.0.1").unwrap(), vec!["10.0.0.1"]);
        assert_eq!(
            range_to_cidrs("10.0.0.0-10.0.0.2").unwrap(),
            vec!["10.0.0.0/31", "10.0.0.2"]
        );
        assert_eq!(
            range_to_cidrs("0.0.0.0-255.255.255.255").unwrap(),
            vec!["0.0.0.0/0"]
        );
        assert_eq!(
            range_to_cidrs("fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").unwrap(),
            vec!["fc00::/7"]
        );
        assert_eq!(
            range_to_cidrs("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").unwrap(),
            vec!["::/0"]
        );
        assert_eq!(
            range_to_cidrs("192.168.0.0/16").unwrap(),
            vec!["192.168.0.0/16"]
        );
        assert!(range_to_cidrs("10.0.0.2-10.0.0.1").is_none());
        assert!(range_to_cidrs("10.0.0.1-::1").is_none());
        assert!(range_to_cidrs("nope").is_none());
    }

    #[test]
    fn line_forms() {
        let o = parse_line(1, "  --listening-port = 3479 ").unwrap();
        assert_eq!((o.name.as_str(), o.value), ("listening-port", "3479"));
        let o = parse_line(1, "realm \"example.org\"").unwrap();
        assert_eq!((o.name.as_str(), o.value), ("realm", "example.org"));
        let o = parse_line(1, "fingerprint").unwrap();
        assert_eq!((o.name.as_str(), o.value), ("fingerprint", ""));
        assert!(parse_line(1, "# user=a:b").is_none());
        assert!(parse_line(1, "   ").is_none());
    }

    fn load(m: &Migration) -> crate::config::Config {
        crate::config::Config::from_toml_str(&m.toml).unwrap_or_else(|e| panic!("{e}\n{}", m.toml))
    }

    #[test]
    fn every_relay_ip_is_carried_unless_its_family_is_natted() {
        let m = migrate("listening-ip=192.0.2.1\nrelay-ip=192.0.2.1\nrelay-ip=192.0.2.2\n");
        let ips: Vec<String> = load(&m).relay.ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["192.0.2.1", "192.0.2.2"], "{}", m.toml);
        let m = migrate(
            "listening-ip=192.0.2.1\nrelay-ip=192.0.2.1\nrelay-ip=192.0.2.2\n\
             external-ip=203.0.113.1\n",
        );
        assert_eq!(load(&m).relay.ips.len(), 1, "{}", m.toml);
        assert!(
            m.skipped.iter().any(|n| n.contains("relay-ip=192.0.2.2")),
            "{m:?}"
        );
    }

    #[test]
    fn rfc5766_channel_numbers_says_which_range() {
        let base = "listening-ip=192.0.2.1\n";
        for (line, strict) in [
            ("rfc5766-channel-numbers", Some(false)),
            ("--rfc5766-channel-numbers=true", Some(false)),
            ("rfc5766-channel-numbers=1", Some(false)),
            ("rfc5766-channel-numbers=false", Some(true)),
            ("rfc5766-channel-numbers off", Some(true)),
            ("", None),
        ] {
            let m = migrate(&format!("{base}{line}\n"));
            let written = m
                .toml
                .contains("strict-channel-numbers")
                .then(|| load(&m).server.strict_channel_numbers);
            assert_eq!(written, strict, "{line}: {}", m.toml);
            assert!(!m.skipped.iter().any(|n| n.contains("channel")), "{m:?}");
        }
        let m = migrate(&format!("{base}rfc5766-channel-numbers=maybe\n"));
        assert!(!m.toml.contains("strict-channel-numbers"), "{}", m.toml);
        assert!(
            m.skipped
                .iter()
                .any(|n| n.starts_with("line 2: rfc5766-channel-numbers=maybe")),
            "{m:?}"
        );
    }

    #[test]
    fn tls_on_the_plain_port_is_one_muxed_port() {
        let m = migrate(
            "listening-ip=192.0.2.1\nlistening-port=443\ntls-listening-port=443\n\
             cert=/c.pem\npkey=/k.pem\nno-dtls\n",
        );
        let c = load(&m);
        assert!(c.tls.listen.is_empty() && c.tls.mux && c.tls_enabled());
        assert!(m.skipped.iter().any(|n| n.contains("one port")), "{m:?}");
        // Without TCP the same port is a TLS-only listener.
        let c = load(&migrate(
            "listening-ip=192.0.2.1\nlistening-port=443\ntls-listening-port=443\n\
             cert=/c.pem\npkey=/k.pem\nno-tcp\n",
        ));
        assert_eq!(c.tls.listen, vec!["192.0.2.1:443".parse().unwrap()]);
        assert!(!c.tls.mux && !c.tcp.enabled);
    }

    #[test]
    fn tls_needs_cert_and_key_and_no_no_tls() {
        for text in [
            "listening-ip=192.0.2.1\ncert=/c.pem\n",
            "listening-ip=192.0.2.1\ncert=/c.pem\npkey=/k.pem\nno-tls\n",
            "listening-ip=192.0.2.1\ntls-listening-port=5350\n",
        ] {
            let m = migrate(text);
            let c = load(&m);
            assert!(c.tls.cert.is_none() && !c.tls_enabled(), "{text}");
            assert!(!m.skipped.iter().any(|n| n.contains("DTLS")), "{text}");
        }
        // Relative paths are taken from the coturn file's directory.
        let m = migrate_from(
            "listening-ip=192.0.2.1\ncert=tls/c.pem\npkey=/abs/k.pem\n",
            Some(std::path::Path::new("/etc/coturn")),
        );
        let c = load(&m);
        assert_eq!(
            c.tls.cert.as_deref(),
            Some(std::path::Path::new("/etc/coturn/tls/c.pem"))
        );
        assert_eq!(
            c.tls.key.as_deref(),
            Some(std::path::Path::new("/abs/k.pem"))
        );
    }

    #[test]
    fn bandwidth_is_bytes_in_coturn() {
        let c = load(&migrate(
            "listening-ip=192.0.2.1\nmax-bps=1000\nbps-capacity=18446744073709551615\n",
        ));
        assert_eq!(c.allocation.max_bps, 8000);
        assert_eq!(c.allocation.bps_capacity, i64::MAX as u64, "saturates");
        let m = migrate("max-bps=lots\n");
        assert!(m.skipped.iter().any(|n| n.contains("max-bps")), "{m:?}");
    }

    #[test]
    fn prometheus_port_alone_is_not_an_exporter() {
        let m = migrate("listening-ip=192.0.2.1\nprometheus-port=9100\n");
        assert!(!load(&m).admin.enabled);
        let c = load(&migrate("listening-ip=192.0.2.1\nprometheus\n"));
        assert!(c.admin.enabled && c.admin.metrics_open_on_loopback);
        assert_eq!(c.admin.listen, "127.0.0.1:9641".parse().unwrap());
    }

    #[test]
    fn secrets_are_not_echoed_in_notes() {
        let m = migrate("static-auth-secret=topsecret\nuser=bob\n");
        let notes = m.skipped.join("\n");
        assert!(!notes.contains("topsecret"), "{notes}");
        assert!(notes.contains("static-auth-secret"), "{notes}");
    }
}
