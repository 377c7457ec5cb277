//! TURN URIs ([RFC 7065](https://www.rfc-editor.org/rfc/rfc7065)): `turn:HOST[:PORT][?transport=udp|tcp]`
//! and `turns:HOST[:PORT][?transport=tcp]`, HOST a name, an IPv4 address or a bracketed IPv6
//! address. The default port is 3478 for `turn:` and 5349 for `turns:` (RFC 7065 §3), the
//! default transport UDP for `turn:` and TCP (under TLS) for `turns:`.

use std::fmt;
use std::net::IpAddr;

/// How the probe reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A parsed TURN URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnUri {
    /// The host as written, without brackets: a name or an IP address.
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

impl TurnUri {
    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for TurnUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.transport {
            Transport::Tls => write!(f, "turns:{host}:{}?transport=tcp", self.port),
            t => write!(f, "turn:{host}:{}?transport={}", self.port, t.as_str()),
        }
    }
}

/// Parses a `turn:` or `turns:` URI; the error says what is wrong with it.
pub fn parse(s: &str) -> Result<TurnUri, String> {
    let s = s.trim();
    let (secure, rest) = if let Some(r) = strip_prefix_ci(s, "turns:") {
        (true, r)
    } else if let Some(r) = strip_prefix_ci(s, "turn:") {
        (false, r)
    } else {
        return Err(format!(
            "{s:?} is not a TURN URI: it must start with turn: or turns:"
        ));
    };
    // A `//` after the scheme is not RFC 7065, but pasted URLs carry it; accept it.
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let (host, port) = split_host_port(hostport)?;
    let port = match port {
        Some(p) => p,
        None if secure => 5349,
        None => 3478,
    };
    let mut transport = if secure {
        Transport::Tls
    } else {
        Transport::Udp
    };
    if let Some(query) = query {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !key.eq_ignore_ascii_case("transport") {
                return Err(format!(
                    "unknown URI parameter {key:?}: only transport= is defined"
                ));
            }
            transport = match (secure, value.to_ascii_lowercase().as_str()) {
                (false, "udp") => Transport::Udp,
                (false, "tcp") => Transport::Tcp,
                (true, "tcp") => Transport::Tls,
                (true, "udp") => {
                    return Err(
                        "turns: with transport=udp is DTLS, which the probe does not speak"
                            .to_owned(),
                    );
                }
                (_, other) => {
                    return Err(format!("transport={other:?}: expected udp or tcp"));
                }
            };
        }
    }
    Ok(TurnUri {
        host,
        port,
        transport,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits `host[:port]` (IPv6 in brackets) into its host and optional port.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: an IPv6 address needs its closing ']'"))?;
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{inside:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{s:?}: expected ':' and a port after ']'"))?,
            ),
        };
        (inside.to_owned(), port)
    } else {
        if s.matches(':').count() > 1 {
            return Err(format!(
                "{s:?}: write an IPv6 address in brackets, as [::1]:3478"
            ));
        }
        match s.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (s.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err("the URI has no host".to_owned());
    }
    if host.contains(['/', '@', ' ']) {
        return Err(format!("{host:?} is not a host name"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("{p:?} is not a port (1-65535)")),
            Ok(n) => Some(n),
        },
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (String, u16, Transport) {
        let u = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (u.host, u.port, u.transport)
    }

    #[test]
    fn defaults_by_scheme() {
        assert_eq!(
            ok("turn:example.org"),
            ("example.org".into(), 3478, Transport::Udp)
        );
        assert_eq!(
            ok("turns:example.org"),
            ("example.org".into(), 5349, Transport::Tls)
        );
        assert_eq!(
            ok("TURN:a.b:1?transport=TCP"),
            ("a.b".into(), 1, Transport::Tcp)
        );
        assert_eq!(
            ok("turns:a.b:443?transport=tcp"),
            ("a.b".into(), 443, Transport::Tls)
        );
        assert_eq!(
            ok("turn:127.0.0.1:3478?transport=udp"),
            ("127.0.0.1".into(), 3478, Transport::Udp)
        );
        assert_eq!(
            ok("turn:[::1]:9?transport=tcp"),
            ("::1".into(), 9, Transport::Tcp)
        );
        assert_eq!(ok("turn:[::1]"), ("::1".into(), 3478, Transport::Udp));
        assert_eq!(ok("turn://h:5"), ("h".into(), 5, Transport::Udp));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "turn:h:1?transport=udp",
            "turn:[::1]:2?transport=tcp",
            "turns:h:3?transport=tcp",
        ] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_uris_are_refused_with_a_reason() {
        for s in [
            "stun:h",
            "http://h",
            "turn:",
            "turn::3478",
            "turn:h:0",
            "turn:h:70000",
            "turn:h:x",
            "turn:::1",
            "turn:[::1",
            "turn:[nope]:1",
            "turn:[::1]x",
            "turn:h?transport=sctp",
            "turn:h?foo=bar",
            "turns:h?transport=udp",
            "turn:user@h",
            "",
        ] {
            assert!(parse(s).is_err(), "{s:?} parsed");
        }
    }
}
