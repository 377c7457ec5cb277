//! The command line: `turnd [FLAGS]` serves, `turnd credentials ...` mints a REST credential,
//! `turnd migrate-coturn PATH` translates a coturn config, `turnd check-config PATH` checks one,
//! `turnd revoke USER --config PATH` revokes a credential across a fleet, `turnd probe URI`
//! checks a TURN server from the outside.
//!
//! Every serve flag is optional and overrides the matching key of the config file (or of the
//! embedded example when no `--config` is given); see [`ServeArgs::load_config`].

mod overrides;

use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

/// The URI put in the ICE server entry when `--uri` is not given.
pub const DEFAULT_URI: &str = "turn:127.0.0.1:3478?transport=udp";

#[derive(Clone, Debug, Parser)]
#[command(
    name = "turnd",
    version,
    about = "A STUN/TURN relay server",
    long_about = "A STUN/TURN relay server.\n\n\
        With no arguments it serves the embedded example config (loopback only). Flags override \
        the keys of the config file; a list flag given once or more replaces the file's list.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Print a time-limited REST credential as an RTCIceServer JSON object.
    Credentials(CredentialsArgs),
    /// Translate a coturn turnserver.conf into turnserver.toml (on stdout); every option
    /// not carried over is listed, with the reason, on stderr.
    MigrateCoturn(PathArg),
    /// Validate a config file and print the effective settings, secrets masked; exits
    /// non-zero if the config is invalid.
    CheckConfig(PathArg),
    /// Check a TURN server (any, turnd or not) from this machine: allocate twice, permit,
    /// bind channels, relay between the two allocations; exit 0 ok, 2 usage, 3
    /// connectivity, 4 authentication, 5 relay, 6 loss above --max-loss.
    Probe(ProbeArgs),
    /// Revoke a user or a REST username on every node of the fleet (the config's [redis]):
    /// new requests get 401 and live allocations end within two seconds.
    Revoke(RevokeArgs),
    /// Print a one-time link that logs a browser into the admin pages (the self-test page,
    /// or the status page with --page status). Signed with [admin] token; it works once,
    /// for --ttl seconds, and carries no token.
    SelftestLink(SelftestLinkArgs),
}

/// `turnd probe URI`: see [`crate::probe`].
#[derive(Clone, Debug, Args)]
pub struct ProbeArgs {
    /// turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT] (ports 3478 and 5349 by
    /// default; IPv6 in brackets).
    #[arg(value_name = "URI")]
    pub uri: String,
    /// User name of a static user; with --secret, the user part of the REST credential
    /// (default "probe").
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Password of the static user (or TURND_PROBE_PASSWORD in the environment, which the
    /// process list does not show).
    #[arg(long, value_name = "PASSWORD")]
    pub password: Option<String>,
    /// REST API shared secret: the probe mints its own credential (or TURND_PROBE_SECRET in
    /// the environment).
    #[arg(long, value_name = "SECRET")]
    pub secret: Option<String>,
    /// Lifetime of the minted REST credential, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: u64,
    /// Separator between expiry and user in the REST user name (the server's
    /// auth.rest-separator).
    #[arg(long, value_name = "CHAR", default_value_t = ':', value_parser = parse_separator)]
    pub separator: char,
    /// Round trips to relay between the two allocations.
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub count: u32,
    /// Payload bytes of each relayed packet (24-1200).
    #[arg(long, value_name = "BYTES", default_value_t = 100, value_parser = parse_size)]
    pub size: usize,
    /// Time limit of the whole check, seconds (deleting the allocations at the end may add
    /// up to 3 s).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// Loss, in percent of round trips, above which the probe exits 6.
    #[arg(long, value_name = "PERCENT", default_value_t = 10.0, value_parser = parse_percent)]
    pub max_loss: f64,
    /// Ask for a relayed address of this family (REQUESTED-ADDRESS-FAMILY): 4 or 6. Default:
    /// 6 when the server is reached over IPv6, else none (the server gives IPv4).
    #[arg(long, value_name = "4|6", value_parser = parse_family)]
    pub family: Option<u8>,
    /// PEM file of the CA (or self-signed certificate) that signed the server's certificate,
    /// instead of the system's CA bundle (turns: only).
    #[arg(long, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// Do not check the server's certificate at all (turns: only; for test certificates).
    #[arg(long)]
    pub insecure: bool,
    /// Print one JSON object instead of the steps.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (24..=1200).contains(&n) => Ok(n),
        _ => Err("expected a number of bytes from 24 to 1200".to_owned()),
    }
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= 3600.0 => Ok(t),
        _ => Err("expected seconds, more than 0 and at most 3600".to_owned()),
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err("expected a percentage from 0 to 100".to_owned()),
    }
}

fn parse_family(s: &str) -> Result<u8, String> {
    match s {
        "4" | "ipv4" => Ok(4),
        "6" | "ipv6" => Ok(6),
        _ => Err("expected 4 or 6".to_owned()),
    }
}

/// `turnd revoke`: writes a revocation to the fleet's Redis.
#[derive(Clone, Debug, Args)]
pub struct RevokeArgs {
    /// A user (every REST credential of it, and a static user of that name), or one REST
    /// username (`<expiry>:<user>`).
    #[arg(value_name = "USER")]
    pub user: String,
    /// Config file with the [redis] section (and server.realm, auth.max-rest-ttl).
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,
    /// Seconds until the revocation lapses; 0: never. Default: when the credential would
    /// have expired (a REST username's own expiry; for a user, now + auth.max-rest-ttl).
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<u64>,
}

/// `turnd selftest-link`: where the admin listener is and the token come from the config.
#[derive(Clone, Debug, Args)]
pub struct SelftestLinkArgs {
    /// Config file of the running server (TOML). Default: the embedded example config.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The admin listener's address, if the server was started with --admin-listen.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// The admin token, if the server was started with --admin-token (visible in the process
    /// list: prefer the config file).
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Seconds the link stays usable (at most 3600).
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ttl: u64,
    /// The page to land on.
    #[arg(long, value_name = "PAGE", default_value = "selftest",
          value_parser = ["selftest", "status"])]
    pub page: String,
    /// Base URL the browser reaches the admin listener at (a reverse proxy, an SSH tunnel);
    /// default: http:// and the listen address.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
}

/// The link `turnd selftest-link` prints: `<base>/login#next=/<page>&ticket=<ticket>`. The
/// ticket rides in the fragment, which the browser does not send to the server.
pub fn selftest_link(
    args: &SelftestLinkArgs,
    unix_now: u64,
    nonce: [u8; 16],
) -> Result<String, String> {
    let serve = ServeArgs {
        config: args.config.clone(),
        admin_listen: args.admin_listen,
        admin_token: args.admin_token.clone(),
        ..ServeArgs::default()
    };
    let config = serve.load_config().map_err(|e| e.to_string())?;
    let a = &config.admin;
    if !a.enabled {
        return Err("the admin listener is off ([admin] enabled, or --admin-listen)".into());
    }
    if a.token.is_empty() {
        return Err("no admin token ([admin] token): the pages need one".into());
    }
    let base = match &args.base_url {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => format!("http://{}", a.listen),
    };
    let ticket = crate::admin::pages::mint_ticket(&a.token, unix_now, args.ttl, nonce);
    Ok(format!("{base}/login#next=/{}&ticket={ticket}", args.page))
}

/// A subcommand's one file argument.
#[derive(Clone, Debug, Args)]
pub struct PathArg {
    /// The file to read.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

/// Flags of the server; each overrides the config key named in its help.
#[derive(Clone, Debug, Default, Args)]
pub struct ServeArgs {
    /// Config file (TOML). Default: the embedded example config.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// UDP and TCP listen address; repeatable [server.listen]. Without a config file and without
    /// --relay-ip, the relay IPs follow these addresses.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Authentication realm [server.realm].
    #[arg(long, value_name = "REALM")]
    pub realm: Option<String>,
    /// Static user; repeatable [auth.users]. Split at the first ':'. Visible to other local
    /// users in the process list: prefer the config file for real passwords.
    #[arg(long, value_name = "NAME:PASSWORD")]
    pub user: Vec<UserArg>,
    /// REST API shared secret; repeatable [auth.secrets].
    #[arg(long, value_name = "SECRET")]
    pub auth_secret: Vec<String>,
    /// Address relay sockets bind to; repeatable, several per family allowed [relay.ips].
    #[arg(long, value_name = "IP")]
    pub relay_ip: Vec<IpAddr>,
    /// Address advertised instead of the relay IP (behind NAT), one per family; repeatable
    /// [relay.external-ips].
    #[arg(long, value_name = "IP")]
    pub external_ip: Vec<IpAddr>,
    /// Lowest relay port [relay.min-port].
    #[arg(long, value_name = "PORT")]
    pub min_port: Option<u16>,
    /// Highest relay port [relay.max-port].
    #[arg(long, value_name = "PORT")]
    pub max_port: Option<u16>,
    /// Peer prefix to allow despite the default deny list; repeatable [peers.allow].
    #[arg(long, value_name = "CIDR")]
    pub allow_peer: Vec<String>,
    /// Peer prefix to deny; repeatable [peers.deny].
    #[arg(long, value_name = "CIDR")]
    pub deny_peer: Vec<String>,
    /// Most live allocations per user, 0 for no limit [allocation.user-quota].
    #[arg(long, value_name = "N")]
    pub user_quota: Option<u32>,
    /// Most live allocations on the server, 0 for no limit [allocation.total-quota].
    #[arg(long, value_name = "N")]
    pub total_quota: Option<u32>,
    /// Bandwidth limit of each allocation, bits per second each way, 0 for none
    /// [allocation.max-bps].
    #[arg(long, value_name = "N")]
    pub max_bps: Option<u64>,
    /// Token bucket size in bytes, 0 for a quarter second at max-bps [allocation.bps-burst].
    #[arg(long, value_name = "BYTES")]
    pub bps_burst: Option<u64>,
    /// Most the limits of live allocations may add up to, bits per second; over it
    /// Allocate gets 508; 0 for none [allocation.bps-capacity].
    #[arg(long, value_name = "N")]
    pub bps_capacity: Option<u64>,
    /// Enables the admin HTTP listener (metrics, sessions) on this address
    /// [admin.listen, admin.enabled].
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token of the admin API [admin.token]. Visible in the process list: prefer the
    /// config file.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Worker threads, 0 for one per CPU core [server.workers].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Do not use the kernel's UDP segmentation offloads, GSO and GRO
    /// [server.udp-offload = false].
    #[arg(long)]
    pub no_udp_offload: bool,
    /// Do not send through io_uring [server.udp-io-uring = false].
    #[arg(long)]
    pub no_udp_io_uring: bool,
    /// ChannelBind grants only RFC 8656's channel numbers 0x4000-0x4FFF, not RFC 5766's
    /// 0x4000-0x7FFF [server.strict-channel-numbers = true].
    #[arg(long)]
    pub strict_channel_numbers: bool,
    /// The kernel fast path: auto, on or off [server.kernel-offload].
    #[arg(long, value_name = "MODE")]
    pub kernel_offload: Option<crate::net::xdp::Mode>,
    /// Do not observe relayed payloads for call quality [telemetry.enabled = false].
    #[arg(long)]
    pub no_telemetry: bool,
    /// error, warn, info, debug or trace [log.level].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// TLS listen address (turns:); repeatable [tls.listen]. Needs --cert and --key.
    #[arg(long, value_name = "ADDR:PORT")]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for TLS, leaf first [tls.cert].
    #[arg(long, value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// PEM private key for TLS [tls.key].
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// First-contact allowance, in answers per second, for unauthenticated UDP requests
    /// beyond twice the bytes a source sent; 0 for no limit [limits.unauth-rate].
    #[arg(long, value_name = "N")]
    pub unauth_rate: Option<u32>,
    /// The allowance's burst, in answers [limits.unauth-burst].
    #[arg(long, value_name = "N")]
    pub unauth_burst: Option<u32>,
    /// Most live allocations per client IP, 0 for no limit [limits.allocations-per-ip].
    #[arg(long, value_name = "N")]
    pub allocations_per_ip: Option<u32>,
    /// Most permissions per allocation [limits.permissions-per-allocation].
    #[arg(long, value_name = "N")]
    pub permissions_per_allocation: Option<usize>,
    /// Most channel bindings per allocation [limits.channels-per-allocation].
    #[arg(long, value_name = "N")]
    pub channels_per_allocation: Option<usize>,
}

/// `--user NAME:PASSWORD`, split at the first ':' (the password may contain more).
#[derive(Clone, PartialEq, Eq)]
pub struct UserArg {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for UserArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserArg")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl FromStr for UserArg {
    type Err = String;
    fn from_str(s: &str) -> Result<UserArg, String> {
        let Some((name, password)) = s.split_once(':') else {
            return Err("expected NAME:PASSWORD".to_owned());
        };
        if name.is_empty() {
            return Err("the user name before ':' is empty".to_owned());
        }
        if password.is_empty() {
            return Err("the password after ':' is empty".to_owned());
        }
        Ok(UserArg {
            name: name.to_owned(),
            password: password.to_owned(),
        })
    }
}

/// `turnd credentials`: a REST credential (username `<expiry><sep><user>`, password
/// base64(HMAC-SHA1(secret, username))) wrapped as an RTCIceServer JSON object.
#[derive(Clone, Debug, Args)]
pub struct CredentialsArgs {
    /// Shared secret, one of the server's auth.secrets.
    #[arg(long, value_name = "SECRET")]
    pub secret: String,
    /// User the credential is issued to.
    #[arg(long, value_name = "USER")]
    pub user: String,
    /// Lifetime of the credential in seconds (the server refuses more than its
    /// auth.max-rest-ttl, default 90000).
    #[arg(long, value_name = "SECONDS", default_value_t = 86400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: u64,
    /// TURN/STUN URI for the ICE server entry; repeatable.
    #[arg(long, value_name = "URI", default_value = DEFAULT_URI)]
    pub uri: Vec<String>,
    /// Separator between expiry and user; must match the server's auth.rest-separator.
    #[arg(long, value_name = "CHAR", default_value_t = ':', value_parser = parse_separator)]
    pub separator: char,
}

fn parse_separator(s: &str) -> Result<char, String> {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if !c.is_ascii_digit() && !c.is_whitespace() => Ok(c),
        (Some(_), None) => Err("must not be a digit or whitespace".to_owned()),
        _ => Err("must be exactly one character".to_owned()),
    }
}

/// The RTCIceServer JSON for a credential valid until `unix_now + ttl`.
pub fn credentials_json(args: &CredentialsArgs, unix_now: u64) -> String {
    let (username, password) = crate::auth::mint_rest_credential(
        &args.secret,
        &args.user,
        unix_now,
        args.ttl,
        args.separator,
    );
    let default_uris = [DEFAULT_URI.to_owned()];
    let uris: &[String] = if args.uri.is_empty() {
        &default_uris
    } else {
        &args.uri
    };
    crate::auth::ice_server_json(uris, &username, &password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("turnd").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn user_splits_at_the_first_colon() {
        let u: UserArg = "alice:a:b:c".parse().unwrap();
        assert_eq!((u.name.as_str(), u.password.as_str()), ("alice", "a:b:c"));
        assert!("alice".parse::<UserArg>().is_err());
        assert!(":pw".parse::<UserArg>().is_err());
        assert!("alice:".parse::<UserArg>().is_err());
        assert!(!format!("{u:?}").contains("a:b:c"));
    }

    #[test]
    fn no_arguments_serve() {
        let cli = parse(&[]).unwrap();
        assert!(cli.command.is_none());
        assert!(cli.serve.config.is_none() && cli.serve.listen.is_empty());
    }

    #[test]
    fn file_subcommands_take_a_path() {
        let cli = parse(&["migrate-coturn", "/etc/turnserver.conf"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::MigrateCoturn(a)) if a.path == std::path::Path::new("/etc/turnserver.conf"))
        );
        let cli = parse(&["check-config", "t.toml"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::CheckConfig(a)) if a.path == std::path::Path::new("t.toml"))
        );
        assert!(parse(&["check-config"]).is_err());
        assert!(parse(&["migrate-coturn"]).is_err());
    }

    #[test]
    fn cli_rejects_bad_flags() {
        assert!(parse(&["--listen", "127.0.0.1"]).is_err());
        assert!(parse(&["--user", "nopassword"]).is_err());
        assert!(parse(&["--user", ":pw"]).is_err());
        assert!(parse(&["--user", "name:"]).is_err());
        assert!(parse(&["--relay-ip", "not-an-ip"]).is_err());
        assert!(parse(&["--min-port", "70000"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        let cli = parse(&["credentials", "--secret", "s", "--user", "u"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Credentials(_))));
    }

    #[test]
    fn credentials_defaults() {
        let cli = parse(&["credentials", "--secret", "s", "--user", "u"]).unwrap();
        let Some(Command::Credentials(c)) = cli.command else {
            panic!("expected credentials")
        };
        assert_eq!(c.ttl, 86400);
        assert_eq!(c.uri, vec![DEFAULT_URI]);
        assert_eq!(c.separator, ':');

        let cli = parse(&[
            "credentials",
            "--secret",
            "s",
            "--user",
            "u",
            "--ttl",
            "60",
            "--uri",
            "turn:a",
            "--uri",
            "turns:b",
            "--separator",
            "-",
        ])
        .unwrap();
        let Some(Command::Credentials(c)) = cli.command else {
            panic!("expected credentials")
        };
        assert_eq!(c.ttl, 60);
        assert_eq!(c.uri, vec!["turn:a", "turns:b"]);
        assert_eq!(c.separator, '-');
    }

    #[test]
    fn credentials_json_is_an_ice_server() {
        let cli = parse(&[
            "credentials",
            "--secret",
            "s3",
            "--user",
            "alice",
            "--ttl",
            "3600",
            "--uri",
            "turn:a:3478",
            "--uri",
            "turns:b:5349",
        ])
        .unwrap();
        let Some(Command::Credentials(args)) = cli.command else {
            panic!("expected credentials")
        };
        let json = credentials_json(&args, 1_700_000_000);
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let (username, password) = crate::auth::rest_credential("s3", "alice", 1_700_003_600, ':');
        assert_eq!(username, "1700003600:alice");
        assert_eq!(v["username"], username.as_str());
        assert_eq!(v["credential"], password.as_str());
        // RTCIceServer.urls: both URIs, in order.
        let urls = v["urls"].to_string();
        let (a, b) = (urls.find("turn:a:3478"), urls.find("turns:b:5349"));
        assert!(matches!((a, b), (Some(a), Some(b)) if a < b), "{json}");
    }

    #[test]
    fn probe_arguments() {
        let cli = parse(&["probe", "turn:h", "--user", "u", "--password", "p"]).unwrap();
        let Some(Command::Probe(p)) = cli.command else {
            panic!("expected probe")
        };
        assert_eq!((p.count, p.size, p.ttl), (10, 100, 600));
        assert_eq!((p.timeout, p.max_loss, p.family), (10.0, 10.0, None));
        assert!(!p.json && !p.insecure && p.ca.is_none());
        let cli = parse(&[
            "probe", "turns:h", "--secret", "s", "--family", "6", "--json",
        ])
        .unwrap();
        let Some(Command::Probe(p)) = cli.command else {
            panic!("expected probe")
        };
        assert_eq!(
            (p.family, p.json, p.secret.as_deref()),
            (Some(6), true, Some("s"))
        );
        for bad in [
            &["probe"][..],
            &["probe", "turn:h", "--count", "0"],
            &["probe", "turn:h", "--size", "10"],
            &["probe", "turn:h", "--size", "5000"],
            &["probe", "turn:h", "--timeout", "0"],
            &["probe", "turn:h", "--timeout", "nan"],
            &["probe", "turn:h", "--max-loss", "101"],
            &["probe", "turn:h", "--family", "5"],
            &["probe", "turn:h", "--ttl", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_rejects_bad_arguments() {
        let minted = ["credentials", "--secret", "s", "--user", "u"];
        assert!(parse(&["credentials", "--user", "u"]).is_err());
        assert!(parse(&["credentials", "--secret", "s"]).is_err());
        for extra in [["--ttl", "0"], ["--separator", "1"], ["--separator", "::"]] {
            let args: Vec<&str> = minted.iter().chain(&extra).copied().collect();
            assert!(parse(&args).is_err(), "{args:?}");
        }
        assert!(parse(&[&["--realm", "r"][..], &minted].concat()).is_err());
    }
}
