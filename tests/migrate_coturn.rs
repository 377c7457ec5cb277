//! `turnd migrate-coturn PATH` on realistic coturn files (tests/data/coturn/: comments,
//! `key=value`, `key value` and `--key=value` lines, bare flags, repeated keys): the TOML on
//! stdout loads as a turnd config meaning the same thing, and every option not carried over
//! is named on stderr with a reason, without echoing secrets.

mod common;

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

    for option in [
        "cert",
        "pkey",
        "tls-listening-port",
        "max-bps",
        "bps-capacity",
        "prometheus",
        "log-file",
        "pidfile",
        "no-cli",
    ] {
        let line = note(&stderr, option);
        assert!(line.contains("line "), "{line}");
    }
    assert!(note(&stderr, "max-bps").contains("bandwidth"));
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

#[test]
fn unreadable_file_fails() {
    let (code, _, stderr) = run_turnd(
        &["migrate-coturn", "/nonexistent/turnserver.conf"],
        Duration::from_secs(20),
    );
    assert_ne!(code, Some(0));
    assert!(stderr.contains("cannot read"), "{stderr}");
}
