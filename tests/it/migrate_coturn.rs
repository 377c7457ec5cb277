//! `turnd migrate-coturn PATH` on realistic coturn files (tests/data/coturn/: comments,
//! `key=value`, `key value` and `--key=value` lines, bare flags, repeated keys): the TOML on
//! stdout loads as a turnd config meaning the same thing, and every option not carried over
//! is named on stderr with a reason, without echoing secrets.

use crate::admin_http;
use crate::common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::run_turnd;
use turnd::config::Config;

/// Runs the subcommand on a file of tests/data/coturn; returns (config, stderr).
fn migrate(name: &str) -> (Config, String) {
    let path = format!("{}/tests/data/coturn/{name}", env!("CARGO_MANIFEST_DIR"));
    let (code, stdout, stderr) = run_turnd(&["migrate-coturn", &path], Duration::from_secs(20));
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let config = Config::from_toml_str(&stdout)
        .unwrap_or_else(|e| panic!("generated TOML does not load: {e}\n{stdout}"));
    (config, stderr)
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// The stderr line for a coturn option, which must exist.
fn note<'a>(stderr: &'a str, option: &str) -> &'a str {
    stderr
        .lines()
        .find(|l| l.contains(&format!(": {option}")))
        .unwrap_or_else(|| panic!("{option} not reported:\n{stderr}"))
}

#[test]
fn rest_api_server_behind_nat() {
    let (c, stderr) = migrate("rest-api-behind-nat.conf");
    assert_eq!(c.server.listen, addrs(&["10.0.0.5:3478"]));
    assert_eq!(c.server.realm, "app.example.com");
    assert_eq!(c.relay.ips, ips(&["10.0.0.5"]));
    assert_eq!(c.relay.external_ips, ips(&["203.0.113.10"]));
    assert_eq!(
        c.external_ip_for("10.0.0.5".parse().unwrap()),
        ips(&["203.0.113.10"])[0]
    );
    assert_eq!((c.relay.min_port, c.relay.max_port), (49160, 49999));
    // Repeated static-auth-secret: both kept, in order (rotation).
    assert_eq!(
        c.auth.secrets,
        vec!["north-secret-2024", "south-secret-2023"]
    );
    assert!(c.auth.users.is_empty());
    assert_eq!(c.auth.nonce_lifetime, 600);
    assert_eq!(
        (c.allocation.user_quota, c.allocation.total_quota),
        (12, 1200)
    );
    assert_eq!(c.log.level, "info");
    // Ranges became prefixes meaning the same addresses.
    assert_eq!(
        c.peers.deny,
        vec!["0.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    );
    assert_eq!(c.peers.allow, vec!["10.0.0.20"]);
    let policy = {
        let (allow, deny) = c.peer_rules();
        turnd::turn::peer_policy::PeerPolicy::new(allow, deny)
    };
    assert!(
        policy.is_allowed("10.0.0.20".parse().unwrap()),
        "allowed-peer-ip wins"
    );
    assert!(!policy.is_allowed("10.0.0.21".parse().unwrap()));
    assert!(!policy.is_allowed("172.20.1.1".parse().unwrap()));
    assert!(
        !policy.is_allowed("198.18.0.1".parse::<IpAddr>().unwrap()),
        "default deny list"
    );

    // TLS: coturn's default 5349 on the listening IP, either port taking both kinds.
    assert_eq!(
        c.tls.cert.as_deref(),
        Some(std::path::Path::new(
            "/etc/letsencrypt/live/turn.example.com/fullchain.pem"
        ))
    );
    assert_eq!(
        c.tls.key.as_deref(),
        Some(std::path::Path::new(
            "/etc/letsencrypt/live/turn.example.com/privkey.pem"
        ))
    );
    assert_eq!(c.tls.listen, addrs(&["10.0.0.5:5349"]));
    assert!(c.tls.mux && c.tcp.enabled && c.tls_enabled());
    // coturn's max-bps is bytes per second, turnd's bits per second.
    assert_eq!(c.allocation.max_bps, 24_000_000);
    assert_eq!(c.allocation.bps_capacity, 0);
    // prometheus: a metrics-only admin listener on coturn's port, loopback.
    assert!(c.admin.enabled && c.admin.metrics_open_on_loopback);
    assert_eq!(c.admin.listen, "127.0.0.1:9641".parse().unwrap());
    assert!(c.admin.token.is_empty(), "no token is invented");
    assert!(stderr.contains("admin.token"), "{stderr}");
    assert!(stderr.contains("DTLS"), "{stderr}");

    for option in ["log-file", "pidfile", "no-cli"] {
        let line = note(&stderr, option);
        assert!(line.contains("line "), "{line}");
    }
    for secret in ["north-secret-2024", "south-secret-2023"] {
        assert!(!stderr.contains(secret), "secret echoed: {stderr}");
    }
    // Carried options are not reported.
    for carried in [
        "realm",
        "relay-ip",
        "static-auth-secret",
        "denied-peer-ip",
        "user-quota",
        "cert",
        "pkey",
        "tls-listening-port",
        "max-bps",
        "bps-capacity",
        "prometheus",
        "no-tlsv1",
    ] {
        assert!(
            !stderr.contains(&format!(": {carried}")),
            "{carried}: {stderr}"
        );
    }
}

#[test]
fn static_users_dual_stack() {
    let (c, stderr) = migrate("static-users.conf");
    assert_eq!(
        c.server.listen,
        addrs(&["192.0.2.7:3479", "[2001:db8::7]:3479"])
    );
    assert_eq!(c.relay.ips, ips(&["192.0.2.7", "2001:db8::7"]));
    assert_eq!(c.server.realm, "turn.office.example");
    let users: Vec<(&str, Option<&str>, Option<&str>)> = c
        .auth
        .users
        .iter()
        .map(|u| (u.name.as_str(), u.password.as_deref(), u.key.as_deref()))
        .collect();
    assert_eq!(
        users,
        vec![
            ("alice", Some("wonderland"), None),
            ("bob", None, Some("0x7e8a7c2c55e3b1c0e43ad7a40cbf1c6d")),
            ("carol", Some("pass:with:colons"), None),
        ]
    );
    assert!(c.auth.secrets.is_empty());
    assert_eq!(c.allocation.max_lifetime, 1800);
    assert_eq!(
        c.auth.nonce_lifetime, 600,
        "bare stale-nonce is coturn's 600 s"
    );
    assert_eq!(c.server.alternate_server, addrs(&["192.0.2.8:3478"]));
    assert_eq!(c.log.level, "debug", "Verbose");
    // allow-loopback-peers opens loopback of both families.
    let (allow, deny) = c.peer_rules();
    let policy = turnd::turn::peer_policy::PeerPolicy::new(allow, deny);
    assert!(policy.is_allowed("127.0.0.1".parse().unwrap()));
    assert!(policy.is_allowed("::1".parse().unwrap()));
    assert!(!policy.is_allowed("198.51.100.7".parse().unwrap()));
    for option in ["proc-user", "proc-group", "mobility"] {
        note(&stderr, option);
    }
    assert!(!stderr.contains("wonderland"), "{stderr}");
}

#[test]
fn docker_style_dashed_options() {
    let (c, stderr) = migrate("minimal-docker.conf");
    assert_eq!(c.server.listen, addrs(&["127.0.0.1:3478"]));
    assert_eq!(c.relay.ips, ips(&["127.0.0.1"]));
    assert_eq!(c.server.realm, "docker.local");
    assert_eq!(c.auth.users.len(), 1);
    assert_eq!(c.auth.users[0].name, "demo");
    assert_eq!(c.auth.users[0].password.as_deref(), Some("demo-password"));
    assert_eq!(c.auth.rest_separator, '-');
    assert_eq!(c.server.software, "");
    assert_eq!(
        (c.allocation.default_lifetime, c.allocation.max_lifetime),
        (300, 300)
    );
    note(&stderr, "userdb");
    note(&stderr, "no-tcp-relay");
    assert!(stderr.contains("multicast"), "{stderr}");
}

/// coturn 4.17's `rfc5766-channel-numbers` is written as `server.strict-channel-numbers =
/// false`; a file without it (coturn 4.6 had no such option and always granted RFC 5766's
/// range) keeps turnd's default, which is the same.
#[test]
fn rfc5766_channel_numbers() {
    let (c, stderr) = migrate("rfc5766-channel-numbers.conf");
    assert!(!c.server.strict_channel_numbers);
    assert!(!stderr.contains(": rfc5766"), "carried over: {stderr}");
    let path = format!(
        "{}/tests/data/coturn/rfc5766-channel-numbers.conf",
        env!("CARGO_MANIFEST_DIR")
    );
    let (_, stdout, _) = run_turnd(&["migrate-coturn", &path], Duration::from_secs(20));
    assert!(
        stdout.contains("strict-channel-numbers = false"),
        "written explicitly: {stdout}"
    );
    let (c, stderr) = migrate("minimal-docker.conf");
    assert!(!c.server.strict_channel_numbers);
    assert!(!stderr.contains("channel"), "nothing to say: {stderr}");
}

#[test]
fn tls_bandwidth_and_prometheus() {
    let (c, stderr) = migrate("tls-bandwidth-prometheus.conf");
    assert_eq!(
        c.server.listen,
        addrs(&["198.51.100.20:3478", "[2001:db8:20::20]:3478"])
    );
    assert_eq!(
        c.tls.listen,
        addrs(&["198.51.100.20:443", "[2001:db8:20::20]:443"])
    );
    assert_eq!(
        c.tls.cert.as_deref(),
        Some(std::path::Path::new(
            "/etc/letsencrypt/live/meet.example.net/fullchain.pem"
        ))
    );
    assert_eq!(
        c.tls.key.as_deref(),
        Some(std::path::Path::new(
            "/etc/letsencrypt/live/meet.example.net/privkey.pem"
        ))
    );
    assert!(c.tls.mux && c.tcp.enabled);
    // 250000 B/s = 2 Mbit/s per allocation and direction; 100 MB/s = 800 Mbit/s in all.
    assert_eq!(c.allocation.max_bps, 2_000_000);
    assert_eq!(c.allocation.bps_capacity, 800_000_000);
    assert_eq!(
        (c.allocation.user_quota, c.allocation.total_quota),
        (10, 2000)
    );
    assert!(c.admin.enabled && c.admin.metrics_open_on_loopback);
    assert_eq!(c.admin.listen, "127.0.0.1:9100".parse().unwrap());
    assert_eq!(c.auth.secrets, vec!["Zr9xv1rotate-me-quarterly"]);
    assert!(note(&stderr, "cipher-list").contains("rustls"));
    assert!(note(&stderr, "prometheus-username-labels").contains("per-user"));
    // no-dtls given: no DTLS note; TLS 1.0/1.1 refusal is what turnd always does.
    assert!(!stderr.contains("DTLS"), "{stderr}");
    for carried in ["no-tlsv1", "no-dtls", "max-bps", "bps-capacity", "pkey"] {
        assert!(
            !stderr.contains(&format!(": {carried}")),
            "{carried}: {stderr}"
        );
    }
    assert!(!stderr.contains("Zr9xv1"), "secret echoed: {stderr}");
}

#[test]
fn tls_only_without_udp_and_tcp() {
    let (c, stderr) = migrate("tls-only.conf");
    assert_eq!(c.server.listen, addrs(&["203.0.113.30:3478"]));
    assert!(!c.tcp.enabled, "no-tcp");
    assert_eq!(c.tls.listen, addrs(&["203.0.113.30:5349"]));
    assert!(!c.tls.mux, "no plain TCP to share a port with");
    assert_eq!(
        c.tls.cert.as_deref(),
        Some(std::path::Path::new("/etc/coturn/turn.pem"))
    );
    assert!(!c.admin.enabled);
    assert!(note(&stderr, "no-tlsv1_2").contains("cannot"));
    assert!(note(&stderr, "pkey-pwd").contains("unencrypted"));
    assert!(
        stderr.contains("no-udp: turnd always serves UDP"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "secret echoed: {stderr}");
}

/// A coturn file with TLS (relative certificate paths, as coturn resolves them against the
/// file's directory) and prometheus, migrated and run: TLS is served on coturn's TLS port,
/// `/metrics` answers loopback without a token and the rest of the admin API stays closed.
#[test]
fn migrated_tls_and_prometheus_config_runs() {
    use common::stream::{StreamClient, TempDir, TestCert, free_tcp_port};
    let dir = TempDir::new("migrate-tls");
    let _cert = TestCert::new(&dir);
    let tls_port = free_tcp_port();
    let prom_port = free_tcp_port();
    let coturn = dir.write(
        "turnserver.conf",
        &format!(
            "listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nrealm=turnd.test\nlt-cred-mech\n\
             user=alice:wonderland\ntls-listening-port={tls_port}\ncert=cert.pem\n\
             pkey=key.pem\nmax-bps=125000\nprometheus\nprometheus-port={prom_port}\n"
        ),
    );
    let (code, toml, stderr) = run_turnd(
        &["migrate-coturn", coturn.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let c = Config::from_toml_str(&toml).unwrap();
    assert_eq!(c.tls.cert.as_deref(), Some(_cert.cert.as_path()));
    assert_eq!(c.allocation.max_bps, 1_000_000);
    // check-config accepts it as the server will.
    let path = dir.write("turnd.toml", &toml);
    let (code, _, err) = run_turnd(
        &["check-config", path.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{err}");
    // The test harness moves the plain listener to a free port (coturn's 3478 may be taken).
    let _server = common::TestServer::start("127.0.0.1", &["--config", path.to_str().unwrap()]);
    let tls: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let mut client = StreamClient::tls(tls, _cert.client_config(true, &[]));
    let reply = client.request(stun::message::METHOD_ALLOCATE, &[common::udp_transport()]);
    assert_eq!(
        reply.code(),
        None,
        "Allocate over TLS with the migrated user"
    );
    let admin: SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let (status, body) = admin_http::http(admin, "GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("turn_total_allocations{type=\"TLS\"} 1"),
        "{body}"
    );
    for (method, path) in [("GET", "/sessions"), ("POST", "/drain"), ("GET", "/health")] {
        assert_eq!(
            admin_http::http(admin, method, path, None).0,
            401,
            "{method} {path}"
        );
        // An empty bearer token does not match the unset token.
        assert_eq!(
            admin_http::http(admin, method, path, Some("")).0,
            401,
            "{method} {path} with an empty token"
        );
    }
}

#[test]
fn unreadable_file_fails() {
    let (code, _, stderr) = run_turnd(
        &["migrate-coturn", "/nonexistent/turnserver.conf"],
        Duration::from_secs(20),
    );
    assert_ne!(code, Some(0));
    assert!(stderr.contains("cannot read"), "{stderr}");
}
