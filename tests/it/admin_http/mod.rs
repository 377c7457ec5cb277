//! Helpers for the admin-API tests: start turnd with its admin listener on a free loopback
//! port, a minimal HTTP/1.1 client over std's TcpStream, and ChannelData helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::common::TestServer;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// turnd with the admin listener on 127.0.0.1 and the test token; `extra` flags appended.
pub fn start_with_admin(extra: &[&str]) -> (TestServer, SocketAddr) {
    start_with_admin_on("127.0.0.1", extra)
}

/// As [`start_with_admin`], with turnd listening and relaying on `ip` (the admin listener
/// stays on 127.0.0.1).
pub fn start_with_admin_on(ip: &str, extra: &[&str]) -> (TestServer, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let admin_s = admin.to_string();
    let mut args = vec!["--admin-listen", admin_s.as_str(), "--admin-token", TOKEN];
    args.extend_from_slice(extra);
    let server = TestServer::start(ip, &args);
    (server, admin)
}

/// One HTTP request; returns (status, body). `token` goes in `Authorization: Bearer`.
pub fn http(admin: SocketAddr, method: &str, target: &str, token: Option<&str>) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect_timeout(&admin, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot connect to admin {admin}: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {admin}\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("Content-Length");
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status, body.to_string())
}

/// GET with the token, expecting 200, parsed as JSON.
pub fn get_json(admin: SocketAddr, target: &str) -> serde_json::Value {
    let (status, body) = http(admin, "GET", target, Some(TOKEN));
    assert_eq!(status, 200, "GET {target}: {body}");
    serde_json::from_str(&body).expect("JSON body")
}

pub fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + data.len());
    v.extend(channel.to_be_bytes());
    v.extend((data.len() as u16).to_be_bytes());
    v.extend(data);
    v
}

pub fn channel_bind_attrs(
    channel: u16,
    peer: SocketAddr,
) -> Vec<(stun::attributes::AttrType, Vec<u8>)> {
    let [hi, lo] = channel.to_be_bytes();
    vec![
        (stun::attributes::ATTR_CHANNEL_NUMBER, vec![hi, lo, 0, 0]),
        crate::common::peer_attr(peer),
    ]
}

/// `/metrics` parsed with a Prometheus text parser: samples keyed by `name{k="v",...}`
/// (labels sorted). A histogram gives `name_bucket{...,le="B"}` per bucket (cumulative, as
/// exposed; `le="inf"` for +Inf), `name_sum{...}` and `name_count{...}`.
pub fn scrape_parsed(admin: SocketAddr) -> std::collections::HashMap<String, f64> {
    let (status, body) = http(admin, "GET", "/metrics", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    parse_metrics(&body)
}

/// A scrape's text parsed as [`scrape_parsed`] does: one entry per sample line.
pub fn parse_metrics(body: &str) -> std::collections::HashMap<String, f64> {
    let lines: Vec<std::io::Result<String>> = body.lines().map(|l| Ok(l.to_string())).collect();
    let parsed = prometheus_parse::Scrape::parse(lines.into_iter()).expect("Prometheus text");
    let mut out = std::collections::HashMap::new();
    let key_of = |metric: &str, labels: &prometheus_parse::Labels, extra: Option<String>| {
        let mut labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .chain(extra)
            .collect();
        labels.sort();
        if labels.is_empty() {
            metric.to_string()
        } else {
            format!("{metric}{{{}}}", labels.join(","))
        }
    };
    for s in parsed.samples {
        // A histogram's _sum and _count come as untyped samples of their own names.
        let family = match &s.value {
            prometheus_parse::Value::Untyped(_) => s
                .metric
                .strip_suffix("_sum")
                .or_else(|| s.metric.strip_suffix("_count"))
                .unwrap_or(&s.metric),
            _ => &s.metric,
        };
        assert!(parsed.docs.contains_key(family), "{} has HELP", s.metric);
        let v = match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            prometheus_parse::Value::Untyped(v) if family != s.metric => v,
            prometheus_parse::Value::Histogram(buckets) => {
                for b in buckets {
                    let le = if b.less_than.is_infinite() {
                        "inf".to_string()
                    } else {
                        b.less_than.to_string()
                    };
                    let key = key_of(
                        &format!("{}_bucket", s.metric),
                        &s.labels,
                        Some(format!("le=\"{le}\"")),
                    );
                    assert!(
                        out.insert(key.clone(), b.count).is_none(),
                        "duplicate {key}"
                    );
                }
                continue;
            }
            other => panic!("{}: unexpected type {other:?}", s.metric),
        };
        let key = key_of(&s.metric, &s.labels, None);
        assert!(out.insert(key.clone(), v).is_none(), "duplicate {key}");
    }
    out
}
