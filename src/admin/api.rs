//! The routes of the admin API. Every route needs `Authorization: Bearer <admin.token>`,
//! except `/metrics` from loopback when `admin.metrics-open-on-loopback` is set, and the
//! TURN REST API `/turn`, which takes its own keys (`rest_api.rs`) and nothing else.
//!
//! Session ids are `<worker>-<allocation id>`: the allocation id is unique within its
//! worker's life, the worker index makes it unique on the server.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{Value, json};

use super::Settings;
use super::http::{Request, Response};
use super::metrics;
use super::rest_api;
use crate::net::Control;
use crate::quality::demux::{Class, rtcp_name};
use crate::quality::{Direction, Leg, LegReport};
use crate::turn::stats::{DropReason, SessionInfo};

/// Lifetime of the credentials `/credentials` mints unless asked (at most `auth.max-rest-ttl`).
const DEFAULT_TTL: u64 = 86_400;

pub async fn route(req: &Request, peer: SocketAddr, control: &Control, s: &Settings) -> Response {
    if req.path == rest_api::PATH {
        return rest_api::handle(req, peer, s);
    }
    tracing::trace!(method = %req.method, path = %req.path, %peer, "admin request");
    if let Some(r) = super::pages::route(req, peer, control, s).await {
        return r;
    }
    let open_metrics = req.path == "/metrics"
        && s.metrics_open_on_loopback
        && peer.ip().to_canonical().is_loopback();
    // The pages' cookie opens what only reads.
    let by_cookie = req.method == "GET" && super::pages::cookie_ok(req, s);
    if !open_metrics && !by_cookie && !authorized(req, s) {
        let mut r = Response::error(401, "missing or wrong bearer token");
        r.challenge = true;
        return r;
    }
    let segments: Vec<&str> = req.path.split('/').skip(1).collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["metrics"]) => metrics_page(control, s).await,
        ("GET", ["health"]) => health(control, s).await,
        ("GET", ["sessions"]) => list_sessions(control, req.param("user")).await,
        ("GET", ["sessions", id]) => show_session(control, id).await,
        ("DELETE", ["sessions", id]) => end_session(control, id).await,
        ("GET", ["users"]) => users(control).await,
        ("GET", ["credentials"]) => credentials(req, s),
        ("POST", ["reload"]) => reload(s).await,
        ("POST", ["drain"]) => drain(s),
        ("GET", ["cluster"]) => cluster(s),
        ("POST", ["revoke"]) => revoke(req, s).await,
        ("DELETE", ["revoke"]) => unrevoke(req, s).await,
        (
            _,
            [
                "metrics" | "health" | "sessions" | "users" | "credentials" | "reload" | "drain"
                | "cluster" | "revoke",
            ],
        )
        | (_, ["sessions", _]) => Response::error(405, "method not allowed"),
        _ => Response::error(404, "no such endpoint"),
    }
}

/// Compares the bearer token in constant time (for equal lengths).
pub(super) fn authorized(req: &Request, s: &Settings) -> bool {
    let Some(given) = req.bearer.as_deref() else {
        return false;
    };
    let (a, b) = (given.as_bytes(), s.token.as_bytes());
    // No token configured (a metrics-only listener): nothing else is served.
    if b.is_empty() || a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics_page(control: &Control, s: &Settings) -> Response {
    let workers = metrics::gather(control).await;
    let total = metrics::sum(&workers);
    let q = control.quotas();
    let mut body = metrics::render(
        &total,
        workers.len(),
        q.bps_reserved(),
        q.bps_capacity(),
        s.started.elapsed().as_secs(),
    );
    if let Some(streams) = &s.streams {
        body.push_str(&metrics::render_streams(&streams.snapshot()));
    }
    if let Some(fleet) = &s.fleet {
        body.push_str(&fleet.render_metrics());
    }
    if let Some(k) = &s.kernel {
        body.push_str(&metrics::render_kernel(k));
    }
    Response {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body,
        challenge: false,
        headers: Vec::new(),
    }
}

async fn health(control: &Control, s: &Settings) -> Response {
    let answering = control
        .on_each_worker(|core, _| core.allocation_count())
        .await;
    let all = answering.len() == control.workers();
    let body = json!({
        "status": if all { "ok" } else { "degraded" },
        "workers": control.workers(),
        "workers_answering": answering.len(),
        "allocations": answering.iter().sum::<usize>(),
        "uptime_seconds": s.started.elapsed().as_secs(),
    });
    Response::json(if all { 200 } else { 503 }, body.to_string())
}

pub(super) fn session_json(worker: usize, a: &SessionInfo) -> Value {
    let drops: serde_json::Map<String, Value> = DropReason::ALL
        .iter()
        .map(|r| (r.as_str().to_string(), json!(a.drops[*r as usize])))
        .collect();
    json!({
        "id": format!("{worker}-{}", a.id),
        "user": a.user,
        "username": a.username,
        "client": a.client.to_string(),
        "server": a.server.to_string(),
        "transport": a.transport.as_str(),
        "relayed": a.relayed.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "started_unix": a.started_unix,
        "lifetime_left_seconds": a.lifetime_left_secs,
        "peers": a.peers,
        "channels": a.channels,
        "max_bps": a.max_bps,
        "packets_to_peer": a.packets_to_peer,
        "bytes_to_peer": a.bytes_to_peer,
        "packets_from_peer": a.packets_from_peer,
        "bytes_from_peer": a.bytes_from_peer,
        "dropped": drops,
        "quality": quality_json(a),
        "kernel": {
            "channels": a.kernel_channels,
            "packets_to_peer": a.kernel.packets_to_peer,
            "bytes_to_peer": a.kernel.bytes_to_peer,
            "packets_from_peer": a.kernel.packets_from_peer,
            "bytes_from_peer": a.kernel.bytes_from_peer,
        },
    })
}

fn ms(us: Option<u32>) -> Value {
    us.map_or(Value::Null, |u| json!(f64::from(u) / 1000.0))
}

/// The `quality` object of a session: RTT per leg, checks, state, RTP streams. RFC 6062 TCP
/// allocations say that their data is not observed; with telemetry off it is null.
fn quality_json(a: &SessionInfo) -> Value {
    if a.tcp_relay {
        return json!({ "state": "not_observed", "reason": "rfc6062_tcp_relay" });
    }
    let Some(q) = &a.quality else {
        return Value::Null;
    };
    let leg = |l: &LegReport| {
        json!({
            "recent": ms(l.recent_us),
            "smoothed": ms(l.smoothed_us),
            "p50": ms(l.p50_us),
            "p95": ms(l.p95_us),
            "samples": l.samples,
            "checks": l.checks,
            "answered": l.answered,
            "unanswered": l.unanswered,
        })
    };
    let streams: Vec<Value> = q
        .streams
        .iter()
        .map(|s| {
            let rtcp: serde_json::Map<String, Value> = s
                .rtcp
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (rtcp_name(i).to_string(), json!(n)))
                .collect();
            json!({
                "ssrc": s.ssrc,
                "direction": s.direction.as_str(),
                "kind": s.kind.as_str(),
                "clock_rate": s.clock_rate,
                "packets": s.packets,
                "bytes": s.bytes,
                "bitrate_bps": s.bitrate_bps,
                "lost": s.lost,
                "loss_ratio": s.loss_ratio,
                "jitter_ms": ms(s.jitter_us),
                "fps": s.fps,
                "rtcp": rtcp,
            })
        })
        .collect();
    let payloads: serde_json::Map<String, Value> = Direction::ALL
        .iter()
        .map(|d| {
            let by_class: serde_json::Map<String, Value> = Class::ALL
                .iter()
                .map(|c| {
                    (
                        c.as_str().to_string(),
                        json!(q.payloads[*d as usize][*c as usize]),
                    )
                })
                .collect();
            (d.as_str().to_string(), Value::Object(by_class))
        })
        .collect();
    json!({
        "state": q.state.as_str(),
        "client_rtt_ms": leg(&q.legs[Leg::Client as usize]),
        "peer_rtt_ms": leg(&q.legs[Leg::Peer as usize]),
        "checks_unanswered": q.checks_unanswered,
        "streams": streams,
        "streams_untracked": q.streams_untracked,
        "payloads": payloads,
    })
}

pub(super) async fn all_sessions(
    control: &Control,
    user: Option<String>,
) -> Vec<(usize, SessionInfo)> {
    control
        .on_each_worker_indexed(move |_, core, _| {
            core.sessions(crate::net::now().mono, user.as_deref())
        })
        .await
        .into_iter()
        .flat_map(|(w, list)| list.into_iter().map(move |a| (w, a)))
        .collect()
}

async fn list_sessions(control: &Control, user: Option<&str>) -> Response {
    let list: Vec<Value> = all_sessions(control, user.map(str::to_string))
        .await
        .iter()
        .map(|(w, a)| session_json(*w, a))
        .collect();
    Response::json(200, Value::Array(list).to_string())
}

fn parse_id(id: &str) -> Option<(usize, u64)> {
    let (w, a) = id.split_once('-')?;
    Some((w.parse().ok()?, a.parse().ok()?))
}

async fn show_session(control: &Control, id: &str) -> Response {
    let Some((w, a)) = parse_id(id) else {
        return Response::error(404, "no such session");
    };
    let found = control
        .on_worker(w, move |core, _| core.session(a, crate::net::now().mono))
        .await
        .flatten();
    match found {
        Some(s) => Response::json(200, session_json(w, &s).to_string()),
        None => Response::error(404, "no such session"),
    }
}

async fn end_session(control: &Control, id: &str) -> Response {
    let Some((w, a)) = parse_id(id) else {
        return Response::error(404, "no such session");
    };
    let ended = control
        .on_worker(w, move |core, io| {
            core.end_session(a, crate::net::now().mono, io)
        })
        .await
        .unwrap_or(false);
    if ended {
        Response::json(200, json!({ "ended": id }).to_string())
    } else {
        Response::error(404, "no such session")
    }
}

/// Per-user totals over live allocations (users without one are not listed, so the list
/// stays as small as the live sessions).
async fn users(control: &Control) -> Response {
    #[derive(Default)]
    struct U {
        allocations: u64,
        peers: u64,
        channels: u64,
        max_bps: u64,
        packets_to_peer: u64,
        bytes_to_peer: u64,
        packets_from_peer: u64,
        bytes_from_peer: u64,
        dropped: u64,
    }
    let mut by_user: BTreeMap<String, U> = BTreeMap::new();
    for (_, a) in all_sessions(control, None).await {
        let u = by_user.entry(a.user.clone()).or_default();
        u.allocations += 1;
        u.peers += a.peers as u64;
        u.channels += a.channels as u64;
        u.max_bps += a.max_bps;
        u.packets_to_peer += a.packets_to_peer;
        u.bytes_to_peer += a.bytes_to_peer;
        u.packets_from_peer += a.packets_from_peer;
        u.bytes_from_peer += a.bytes_from_peer;
        u.dropped += a.drops.iter().sum::<u64>();
    }
    let list: Vec<Value> = by_user
        .into_iter()
        .map(|(name, u)| {
            json!({
                "user": name,
                "allocations": u.allocations,
                "peers": u.peers,
                "channels": u.channels,
                "max_bps": u.max_bps,
                "packets_to_peer": u.packets_to_peer,
                "bytes_to_peer": u.bytes_to_peer,
                "packets_from_peer": u.packets_from_peer,
                "bytes_from_peer": u.bytes_from_peer,
                "dropped": u.dropped,
            })
        })
        .collect();
    Response::json(200, Value::Array(list).to_string())
}

/// `POST /reload`: the reload SIGHUP runs. 200 with the keys that need a restart, or 422
/// with the error (naming the key) when the config file does not load; the old config then
/// stays in force.
async fn reload(s: &Settings) -> Response {
    let Some(lifecycle) = &s.lifecycle else {
        return Response::error(503, "reload is not available on this listener");
    };
    tracing::info!("reload requested through the admin API");
    match lifecycle.reload_reported().await {
        Ok(report) => Response::json(
            200,
            json!({
                "reloaded": true,
                "needs_restart": report.needs_restart,
            })
            .to_string(),
        ),
        Err(e) => Response::json(
            422,
            json!({
                "reloaded": false,
                "error": e.to_string(),
                "key": e.key(),
            })
            .to_string(),
        ),
    }
}

/// `POST /drain`: starts the drain SIGTERM starts (new allocations refused, live ones kept
/// until they end or `server.drain-timeout` passes, then exit 0). 202 when this request
/// started it, 200 when a drain was already under way.
fn drain(s: &Settings) -> Response {
    let Some(lifecycle) = &s.lifecycle else {
        return Response::error(503, "drain is not available on this listener");
    };
    let started = lifecycle.request_drain();
    if started {
        tracing::info!("drain requested through the admin API");
    }
    Response::json(
        if started { 202 } else { 200 },
        json!({ "draining": true, "started_now": started }).to_string(),
    )
}

/// The RTCIceServer JSON `turnd credentials` prints, signed with the first REST secret.
fn credentials(req: &Request, s: &Settings) -> Response {
    let (secret, max_ttl) = live_rest_secret(s);
    let Some(secret) = secret else {
        return Response::error(
            409,
            "no REST secret configured (auth.secrets): cannot mint credentials",
        );
    };
    let user = match req.param("user") {
        Some(u) if !u.is_empty() && u.len() <= 256 && !u.chars().any(char::is_control) => u,
        _ => return Response::error(400, "user: required, 1 to 256 bytes, no control characters"),
    };
    // The server refuses REST credentials that expire further ahead than auth.max-rest-ttl.
    let ttl = match requested_ttl(req, DEFAULT_TTL, max_ttl) {
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
        crate::auth::ice_server_json(&s.uris, &username, &password),
    )
}

/// `GET /cluster`: every node of the fleet as it last published itself (load, draining,
/// addresses), this one included; 404 without a `[redis]` section.
fn cluster(s: &Settings) -> Response {
    let Some(fleet) = &s.fleet else {
        return Response::error(404, "no fleet: the config has no [redis] section");
    };
    let nodes: Vec<Value> = fleet
        .cluster()
        .into_iter()
        .map(|n| {
            json!({
                "node": n.node,
                "self": n.node == fleet.node(),
                "addresses": n.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "domain": n.domain,
                "allocations": n.allocations,
                "bps": n.bps,
                "cpu_percent": n.cpu_percent,
                "draining": n.draining,
                "overloaded": n.overloaded,
                "healthy": n.healthy(),
                "unix": n.unix,
            })
        })
        .collect();
    Response::json(
        200,
        json!({ "node": fleet.node(), "redis_up": fleet.is_up(), "nodes": nodes }).to_string(),
    )
}

/// The `user` parameter of `/revoke`: a user, a REST username or a static user's name.
fn revoke_name(req: &Request) -> Result<&str, Response> {
    match req.param("user") {
        Some(u)
            if !u.is_empty()
                && u.len() <= 512
                && !u
                    .chars()
                    .any(|c| c.is_control() || c == '*' || c == '?' || c == '[') =>
        {
            Ok(u)
        }
        _ => Err(Response::error(
            400,
            "user: required, 1 to 512 bytes, no control characters or glob characters",
        )),
    }
}

/// `POST /revoke?user=NAME[&ttl=SECONDS]`: revokes NAME on every node of the fleet (new
/// requests 401, live allocations ended). The revocation lapses with the credential (see
/// `fleet::revocation_until`); `ttl=0`: never.
async fn revoke(req: &Request, s: &Settings) -> Response {
    let Some(fleet) = &s.fleet else {
        return Response::error(404, "no fleet: the config has no [redis] section");
    };
    let name = match revoke_name(req) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let ttl = match req.param("ttl").map(str::parse::<u64>) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => return Response::error(400, "ttl: seconds (0: never lapses)"),
    };
    match fleet.revoke(name, ttl, crate::net::now().unix).await {
        Ok(until) => {
            tracing::info!(user = name, until, "revoked through the admin API");
            Response::json(
                200,
                json!({ "revoked": name, "until_unix": until }).to_string(),
            )
        }
        Err(e) => Response::error(503, &format!("Redis unavailable: {e}")),
    }
}

/// `DELETE /revoke?user=NAME`: lifts a revocation.
async fn unrevoke(req: &Request, s: &Settings) -> Response {
    let Some(fleet) = &s.fleet else {
        return Response::error(404, "no fleet: the config has no [redis] section");
    };
    let name = match revoke_name(req) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match fleet.unrevoke(name).await {
        Ok(found) => Response::json(
            if found { 200 } else { 404 },
            json!({ "lifted": found, "user": name }).to_string(),
        ),
        Err(e) => Response::error(503, &format!("Redis unavailable: {e}")),
    }
}

/// The REST secret credentials are minted with (the first of `auth.secrets`) and the longest
/// lifetime allowed (`auth.max-rest-ttl`): after a reload, those in force.
pub(super) fn live_rest_secret(s: &Settings) -> (Option<String>, u64) {
    match &s.lifecycle {
        Some(l) => {
            let c = l.config();
            (c.auth.secrets.first().cloned(), c.auth.max_rest_ttl)
        }
        None => (s.rest_secret.clone(), s.max_rest_ttl),
    }
}

/// The `ttl` parameter of a credential request: `default` when absent (both capped by
/// `auth.max-rest-ttl`, which the server enforces on REST credentials), else 1 to `max_ttl`.
pub(super) fn requested_ttl(req: &Request, default: u64, max_ttl: u64) -> Result<u64, Response> {
    match req.param("ttl").map(str::parse::<u64>) {
        None => Ok(default.min(max_ttl)),
        Some(Ok(t)) if (1..=max_ttl).contains(&t) => Ok(t),
        _ => Err(Response::error(
            400,
            &format!("ttl: seconds, 1 to {max_ttl} (auth.max-rest-ttl)"),
        )),
    }
}
