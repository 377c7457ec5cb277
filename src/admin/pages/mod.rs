//! The operator's pages on the admin listener: `/status` (live sessions, totals, the last
//! hour's plot, the fleet's nodes) and `/selftest` (relay-only WebRTC pairs in the operator's
//! browser over every advertised transport), with `/login` in front of them. Every asset is
//! embedded in the binary; the pages load nothing from elsewhere (their Content-Security-Policy
//! says so).
//!
//! Way in: the admin token posted in the login form's body, or a one-time link from
//! `turnd selftest-link` (`ticket.rs`); either sets an HttpOnly, SameSite=Strict cookie. No
//! token, ticket or credential is ever part of a request line, so none reaches a log that
//! records URLs. The cookie opens the pages, their data, the admin API's GET routes and the
//! self-test's two POSTs; changing the server (DELETE, reload, drain) still needs the token.

mod history;
mod ticket;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};

use super::Settings;
use super::api;
use super::http::{COOKIE, Request, Response};
use super::metrics;
use crate::net::Control;

pub use history::{History, Sample};
pub use ticket::{MAX_TICKET_TTL, mint_ticket};

/// How often the server samples its totals for the plot.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: one hour.
pub const SAMPLES: usize = 720;
/// Lifetime of the credential a self-test mints for one URI (at most `auth.max-rest-ttl`):
/// a connection timeout, pings, a bulk transfer and the media check fit in it.
const SELFTEST_TTL: u64 = 90;
/// The user part of self-test credentials starts with this.
const SELFTEST_PREFIX: &str = "selftest-";

const LOGIN_HTML: &str = include_str!("assets/login.html");
const STATUS_HTML: &str = include_str!("assets/status.html");
const SELFTEST_HTML: &str = include_str!("assets/selftest.html");
const STYLE_CSS: &str = include_str!("assets/style.css");
const LOGIN_JS: &str = include_str!("assets/login.js");
const STATUS_JS: &str = include_str!("assets/status.js");
const SELFTEST_JS: &str = include_str!("assets/selftest.js");

/// The pages' state: cookie keys, one-time links taken, the plot's samples.
pub struct Pages {
    /// None when the OS gave no randomness for the cookie key: then nobody logs in.
    keys: Mutex<Option<ticket::Keys>>,
    history: Mutex<History>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Bytes from the OS's random source; None (logged) if it fails.
fn random<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    match getrandom::fill(&mut b) {
        Ok(()) => Some(b),
        Err(e) => {
            tracing::error!(error = %e, "no OS randomness for the pages");
            None
        }
    }
}

impl Pages {
    pub fn new() -> Pages {
        Pages {
            keys: Mutex::new(random().map(ticket::Keys::new)),
            history: Mutex::new(History::new(SAMPLES)),
        }
    }
}

impl Default for Pages {
    fn default() -> Self {
        Pages::new()
    }
}

/// Whether the request carries a live session cookie of this server.
pub(crate) fn cookie_ok(req: &Request, s: &Settings) -> bool {
    let Some(c) = req.cookie.as_deref() else {
        return false;
    };
    !s.token.is_empty()
        && lock(&s.pages.keys)
            .as_ref()
            .is_some_and(|k| k.session_valid(c, crate::net::now().unix))
}

/// Samples the server's totals every [`SAMPLE_INTERVAL`] into the plot's ring buffer.
pub(crate) async fn sample(control: Control, settings: Arc<Settings>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t = metrics::sum(&metrics::gather(&control).await);
        let tr = &t.stats.traffic;
        let s = Sample {
            unix: crate::net::now().unix,
            relayed_bytes: tr.peer_rcvb + tr.peer_sentb,
            allocations: t.gauges.allocations.iter().sum(),
        };
        lock(&settings.pages.history).push(s);
    }
}

/// The pages' routes; None for every other path.
pub(crate) async fn route(
    req: &Request,
    peer: SocketAddr,
    control: &Control,
    s: &Settings,
) -> Option<Response> {
    let m = req.method.as_str();
    let r = match req.path.as_str() {
        "/login" => match m {
            "GET" => page(200, LOGIN_HTML),
            "POST" => login(req, peer, s),
            _ => Response::error(405, "method not allowed"),
        },
        "/logout" if m == "POST" => {
            let mut r = redirect("/login");
            r.headers.push((
                "Set-Cookie",
                format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
            ));
            r
        }
        "/pages/style.css" => asset("text/css; charset=utf-8", STYLE_CSS),
        "/pages/login.js" => asset("text/javascript; charset=utf-8", LOGIN_JS),
        "/pages/status.js" => asset("text/javascript; charset=utf-8", STATUS_JS),
        "/pages/selftest.js" => asset("text/javascript; charset=utf-8", SELFTEST_JS),
        "/status" | "/selftest" | "/status.json" | "/selftest/credential" | "/selftest/end" => {
            if !(cookie_ok(req, s) || api::authorized(req, s)) {
                return Some(unauthorized(req));
            }
            match (m, req.path.as_str()) {
                ("GET", "/status") => page(200, STATUS_HTML),
                ("GET", "/selftest") => page(200, SELFTEST_HTML),
                ("GET", "/status.json") => status_json(control, s).await,
                ("POST", "/selftest/credential") => selftest_credential(s),
                ("POST", "/selftest/end") => selftest_end(req, control).await,
                _ => Response::error(405, "method not allowed"),
            }
        }
        _ => return None,
    };
    Some(r)
}

/// 401: the login page for a page, JSON for data.
fn unauthorized(req: &Request) -> Response {
    let mut r = if req.method == "GET" && matches!(req.path.as_str(), "/status" | "/selftest") {
        page(401, LOGIN_HTML)
    } else {
        Response::error(401, "log in first (/login) or send the bearer token")
    };
    r.challenge = true;
    r
}

/// Headers every page carries: nothing loads from elsewhere, no framing, no referrer.
fn page(status: u16, html: &str) -> Response {
    let mut r = Response::json(status, html.to_string());
    r.content_type = "text/html; charset=utf-8";
    r.headers.extend([
        (
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
                .to_string(),
        ),
        ("X-Frame-Options", "DENY".to_string()),
        ("X-Content-Type-Options", "nosniff".to_string()),
        ("Referrer-Policy", "no-referrer".to_string()),
    ]);
    r
}

fn asset(content_type: &'static str, body: &str) -> Response {
    let mut r = Response::json(200, body.to_string());
    r.content_type = content_type;
    r.headers
        .push(("X-Content-Type-Options", "nosniff".to_string()));
    r
}

fn redirect(to: &str) -> Response {
    let mut r = Response::text(303, to);
    r.headers.push(("Location", to.to_string()));
    r
}

/// `POST /login` with `token` (the login form) or `ticket` (a one-time link) in the body;
/// `next` picks the page to land on.
fn login(req: &Request, peer: SocketAddr, s: &Settings) -> Response {
    let now = crate::net::now().unix;
    let by_token = req.body_param("token").is_some_and(|t| {
        let probe = Request {
            method: String::new(),
            path: String::new(),
            query: Vec::new(),
            bearer: Some(t.to_string()),
            cookie: None,
            body_from: 0,
        };
        api::authorized(&probe, s)
    });
    let by_ticket = !by_token
        && req.body_param("ticket").is_some_and(|t| {
            lock(&s.pages.keys)
                .as_mut()
                .is_some_and(|k| k.take_ticket(&s.token, t, now))
        });
    if !(by_token || by_ticket) {
        tracing::debug!(%peer, "pages login refused");
        let mut r = page(401, LOGIN_HTML);
        r.headers.push(("X-Turnd-Login", "refused".to_string()));
        return r;
    }
    tracing::info!(%peer, how = if by_token { "token" } else { "one-time link" }, "pages login");
    let next = match req.body_param("next") {
        Some("/selftest") => "/selftest",
        _ => "/status",
    };
    let cookie = lock(&s.pages.keys)
        .as_ref()
        .zip(random())
        .map(|(k, nonce)| k.session(now, nonce));
    let Some(cookie) = cookie else {
        return Response::error(503, "no OS randomness: cannot open a session");
    };
    let mut r = redirect(next);
    r.headers.push((
        "Set-Cookie",
        format!(
            "{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            ticket::SESSION_TTL
        ),
    ));
    r
}

/// What the status page shows: sessions, totals, the plot's samples.
async fn status_json(control: &Control, s: &Settings) -> Response {
    let now = crate::net::now();
    let workers = metrics::gather(control).await;
    let t = metrics::sum(&workers);
    let tr = &t.stats.traffic;
    let sessions: Vec<Value> = api::all_sessions(control, None)
        .await
        .iter()
        .map(|(w, a)| {
            let mut v = api::session_json(*w, a);
            if let Some(o) = v.as_object_mut() {
                // The user (without the REST timestamp) is what the page shows.
                o.remove("username");
                o.insert(
                    "age_seconds".into(),
                    json!(now.unix.saturating_sub(a.started_unix)),
                );
            }
            v
        })
        .collect();
    let samples: Vec<Value> = lock(&s.pages.history)
        .iter()
        .map(|x| json!([x.unix, x.relayed_bytes, x.allocations]))
        .collect();
    let body = json!({
        "now_unix": now.unix,
        "uptime_seconds": s.started.elapsed().as_secs(),
        "workers": workers.len(),
        "totals": {
            "allocations": t.gauges.allocations.iter().sum::<u64>(),
            "allocations_udp": t.gauges.allocations[0],
            "allocations_tcp": t.gauges.allocations[1],
            "allocations_tls": t.gauges.allocations[2],
            "allocations_created": t.stats.allocations_created,
            "relayed_bytes": tr.peer_rcvb + tr.peer_sentb,
            "relayed_packets": tr.peer_rcvp + tr.peer_sentp,
            "dropped": t.stats.dropped,
            "auth_failures": t.stats.auth_failures,
        },
        "sessions": sessions,
        "history": {
            "interval_seconds": SAMPLE_INTERVAL.as_secs(),
            "samples": samples,
        },
    });
    Response::json(200, body.to_string())
}

/// `POST /selftest/credential`: a REST credential for one URI's test, `SELFTEST_TTL` seconds
/// long, for a user of its own (`selftest-<random>`), with the advertised URIs.
fn selftest_credential(s: &Settings) -> Response {
    let (secret, max_ttl) = api::live_rest_secret(s);
    let Some(secret) = secret else {
        return Response::error(
            409,
            "no REST secret configured (auth.secrets): the self-test cannot mint a credential",
        );
    };
    let ttl = SELFTEST_TTL.min(max_ttl);
    let Some(id) = random::<4>() else {
        return Response::error(503, "no OS randomness: cannot mint a credential");
    };
    let user = format!(
        "{SELFTEST_PREFIX}{}",
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let (username, password) = crate::auth::mint_rest_credential(
        &secret,
        &user,
        crate::net::now().unix,
        ttl,
        s.rest_separator,
    );
    tracing::info!(user = %user, ttl, "self-test credential minted");
    Response::json(
        200,
        json!({
            "user": user,
            "username": username,
            "password": password,
            "ttl": ttl,
            "uris": s.uris,
        })
        .to_string(),
    )
}

/// `POST /selftest/end` with `user`: ends every session of that self-test user.
async fn selftest_end(req: &Request, control: &Control) -> Response {
    let user = match req.body_param("user") {
        Some(u) if u.starts_with(SELFTEST_PREFIX) && u.len() <= 64 => u.to_string(),
        _ => return Response::error(400, "user: a self-test user (selftest-...)"),
    };
    let mut ended = 0;
    for (w, a) in api::all_sessions(control, Some(user.clone())).await {
        let id = a.id;
        let done = control
            .on_worker(w, move |core, io| {
                core.end_session(id, crate::net::now().mono, io)
            })
            .await
            .unwrap_or(false);
        ended += usize::from(done);
    }
    tracing::info!(user = %user, ended, "self-test ended");
    Response::json(200, json!({ "ended": ended }).to_string())
}
