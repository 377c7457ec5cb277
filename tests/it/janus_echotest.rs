//! Janus through turnd: Debian's Janus (1.1.2) runs the echotest plugin with turnd as its TURN
//! server, and headless Chromium, relay-only with turnd as its only ICE server, sends audio
//! and video to the echotest over Janus's HTTP API and gets them back
//! (`tests/browser/janus_echotest.mjs`). The offer carries `"force_relay": true` and Janus
//! allows it (`nat.allow_force_relay`), so Janus relays through turnd too: the browser's
//! selected pair is its turnd allocation to Janus's turnd allocation, and both show in
//! turnd's `/sessions` with bytes both ways. Three ways: static credentials with Janus and the
//! browser on UDP, the same on TCP, and Janus's `turn_rest_api` pointed at turnd's `/turn`
//! (through a proxy of the test that records the request Janus sends).
//!
//! Janus never gathers candidates on loopback interfaces, so each case runs in a network
//! namespace of its own (one thread of the test, and turnd, Janus, node and Chromium it
//! starts, moved there with `unshare`) where a veth device has 198.18.0.1 (RFC 2544's
//! benchmarking range; the namespace has no route out). turnd, Janus's HTTP API and the admin
//! API listen there; turnd relays between 198.18.0.1 addresses, so it runs with
//! `--allow-peer 198.18.0.0/15`. Needs root (CAP_SYS_ADMIN), as the CI runs, `janus`
//! (`bash .ci/setup-integrations.sh`) and the browser (`bash .ci/setup-browser.sh`).

use crate::admin_http::{TOKEN, free_tcp_port, get_json};
use crate::browser::{ONE_BROWSER, prerequisites, run_node_driver};
use crate::common::TestServer;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use turnd::testing::process::TempDir;

/// The address of the dummy device in the test's namespace.
const IP: &str = "198.18.0.1";
const JANUS_USER: &str = "janus";
const JANUS_PASS: &str = "janus-pw-Wren-4410";
const REST_KEY: &str = "janus-rest-key-Ibis-77120";
const SECRET: &str = "janus-rest-secret-Vole-3088";
/// Janus's username in its TURN REST API requests: the handle's opaque_id.
const OPAQUE_ID: &str = "janus-echotest";
const JANUS_HINT: &str = "run `bash .ci/setup-integrations.sh` (installs Debian's janus)";

/// Runs `f` on a thread moved into a fresh network namespace with `lo` up and [`IP`] on a
/// veth (or dummy) device. Processes the thread starts live in that namespace too.
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let t = std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET only changes this thread's network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {} (this test needs root)",
            std::io::Error::last_os_error()
        );
        ip(&["link", "set", "lo", "up"]);
        // A veth pair, both ends here, the address on one end: a plain non-loopback
        // interface. A dummy device where veth is missing (containers often lack one of the
        // two modules).
        let veth = Command::new("ip")
            .args([
                "link", "add", "janus0", "type", "veth", "peer", "name", "janus1",
            ])
            .status()
            .is_ok_and(|s| s.success());
        if veth {
            ip(&["link", "set", "janus1", "up"]);
        } else {
            ip(&["link", "add", "janus0", "type", "dummy"]);
        }
        ip(&["addr", "add", &format!("{IP}/32"), "dev", "janus0"]);
        ip(&["link", "set", "janus0", "up"]);
        f()
    });
    match t.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip(8)");
    assert!(st.success(), "ip {args:?} failed");
}

/// A Janus process, killed by its pid and reaped on drop.
struct Janus {
    child: Child,
    log: std::path::PathBuf,
    /// Its HTTP API, `http://127.0.0.1:PORT/janus`.
    url: String,
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Janus {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts Janus with the HTTP transport on 127.0.0.1, the echotest plugin and `nat` as its
/// `nat` section (every other plugin, transport, event handler and logger disabled).
fn start_janus(dir: &TempDir, nat: &str) -> Janus {
    let janus = Path::new("/usr/bin/janus");
    assert!(
        janus.is_file(),
        "janus test: /usr/bin/janus not found; {JANUS_HINT}"
    );
    // Debian's plugins live in /usr/lib/<multiarch triplet>/janus.
    let lib = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path().join("janus")))
        .find(|d| d.join("plugins/libjanus_echotest.so").exists())
        .unwrap_or_else(|| {
            panic!("janus test: no /usr/lib/*/janus/plugins/libjanus_echotest.so; {JANUS_HINT}")
        });
    let lib = lib.to_string_lossy();
    let plugins = format!("{lib}/plugins");
    let others = |folder: &str, keep: &str| -> String {
        let mut names: Vec<String> = std::fs::read_dir(format!("{lib}/{folder}"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".so") && n != keep)
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.join(",")
    };
    let port = free_tcp_port();
    let folder = dir.0.to_string_lossy().into_owned();
    dir.write(
        "janus.jcfg",
        &format!(
            "general: {{\n\tconfigs_folder = \"{folder}\"\n\tplugins_folder = \"{plugins}\"\n\
             \ttransports_folder = \"{lib}/transports\"\n\tevents_folder = \"{lib}/events\"\n\
             \tloggers_folder = \"{lib}/loggers\"\n\tdebug_level = 4\n}}\n\
             plugins: {{\n\tdisable = \"{}\"\n}}\n\
             transports: {{\n\tdisable = \"{}\"\n}}\n\
             events: {{\n\tbroadcast = false\n\tdisable = \"{}\"\n}}\n\
             loggers: {{\n\tdisable = \"{}\"\n}}\n\
             media: {{\n\trtp_port_range = \"20000-40000\"\n}}\n\
             nat: {{\n\tice_enforce_list = \"{IP}\"\n\tallow_force_relay = true\n{nat}}}\n",
            others("plugins", "libjanus_echotest.so"),
            others("transports", "libjanus_http.so"),
            others("events", ""),
            others("loggers", ""),
        ),
    );
    dir.write(
        "janus.transport.http.jcfg",
        &format!(
            "general: {{\n\tjson = \"plain\"\n\tbase_path = \"/janus\"\n\thttp = true\n\
             \tport = {port}\n\tip = \"127.0.0.1\"\n\thttps = false\n}}\n\
             admin: {{\n\tadmin_http = false\n\tadmin_https = false\n}}\n"
        ),
    );
    dir.write("janus.plugin.echotest.jcfg", "general: {\n}\n");
    let log = dir.0.join("janus.log");
    let out = std::fs::File::create(&log).expect("janus log");
    let err = out.try_clone().expect("janus log");
    let child = Command::new(janus)
        .args(["-F", &folder, "-C"])
        .arg(dir.0.join("janus.jcfg"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn janus: {e}; {JANUS_HINT}"));
    let mut janus = Janus {
        child,
        log,
        url: format!("http://127.0.0.1:{port}/janus"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    loop {
        if let Ok(Some(st)) = janus.child.try_wait() {
            panic!("janus exited ({st}):\n{}", janus.log());
        }
        if let Ok((200, _)) = http_get(addr, "/janus/info") {
            return janus;
        }
        assert!(
            Instant::now() < deadline,
            "janus did not answer /janus/info within 30 s:\n{}",
            janus.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http_get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

/// An HTTP proxy between Janus and turnd's admin listener that keeps each request as it
/// arrived and the status turnd answered.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<(String, u16)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(upstream: SocketAddr) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the recorder");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(r) = forward(conn, upstream) {
                            seen2.lock().unwrap().push(r);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Recorder {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<(String, u16)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (head and Content-Length body), sends it to `upstream`, relays the
/// answer back; returns the request and the answer's status.
fn forward(mut conn: TcpStream, upstream: SocketAddr) -> Option<(String, u16)> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        req.extend_from_slice(&buf[..n]);
        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if req.len() > 16 * 1024 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&req[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while req.len() < head_end + length {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let mut up = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)).ok()?;
    up.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    up.write_all(&req).ok()?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).ok()?;
    conn.write_all(&answer).ok()?;
    let status = String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Some((String::from_utf8_lossy(&req).into_owned(), status))
}

/// How Janus gets its TURN server.
#[derive(Clone, Copy, Debug)]
enum JanusTurn {
    /// `turn_server`, `turn_user`, `turn_pwd`, over this transport.
    Static(&'static str),
    /// `turn_rest_api` pointed at turnd's `/turn`.
    RestApi,
}

/// One echotest call: the browser on `browser_transport` ("any" in the turn_rest_api case,
/// where it gets every transport from /credentials), Janus as `janus_turn` says.
fn echotest(browser_transport: &'static str, janus_turn: JanusTurn) {
    in_netns(move || {
        let _one = ONE_BROWSER.lock().unwrap_or_else(|p| p.into_inner());
        let chromium = prerequisites();
        let dir = TempDir::new("janus-echotest");
        let config = dir.write(
            "turnd.toml",
            &format!("[admin]\nrest-api-keys = [\"{REST_KEY}\"]\n"),
        );
        let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let (admin_s, config_s) = (admin.to_string(), config.to_string_lossy().into_owned());
        let janus_user = format!("{JANUS_USER}:{JANUS_PASS}");
        let server = TestServer::start(
            IP,
            &[
                "--config",
                &config_s,
                "--admin-listen",
                &admin_s,
                "--admin-token",
                TOKEN,
                "--user",
                "alice:wonderland",
                "--user",
                &janus_user,
                "--auth-secret",
                SECRET,
                "--allow-peer",
                "198.18.0.0/15",
            ],
        );
        let turn_port = server.addr.port();
        let recorder = Recorder::start(admin);
        let nat = match janus_turn {
            JanusTurn::Static(t) => format!(
                "\tturn_server = \"{IP}\"\n\tturn_port = {turn_port}\n\tturn_type = \"{t}\"\n\
                 \tturn_user = \"{JANUS_USER}\"\n\tturn_pwd = \"{JANUS_PASS}\"\n"
            ),
            JanusTurn::RestApi => format!(
                "\tturn_rest_api = \"http://127.0.0.1:{}/turn\"\n\
                 \tturn_rest_api_key = \"{REST_KEY}\"\n\tturn_rest_api_method = \"POST\"\n",
                recorder.port
            ),
        };
        let janus = start_janus(&dir, &nat);
        // The browser's RTCIceServer: alice's static credentials on one transport, or in the
        // turn_rest_api case what an app backend gets from /credentials (a REST credential,
        // every transport).
        let (ice_server, browser_user) = match janus_turn {
            JanusTurn::Static(_) => (
                json!({
                    "urls": [format!("turn:{}?transport={browser_transport}", server.addr)],
                    "username": "alice",
                    "credential": "wonderland",
                }),
                "alice",
            ),
            JanusTurn::RestApi => (get_json(admin, "/credentials?user=browser"), "browser"),
        };
        let args = json!({
            "janus": janus.url,
            "iceServer": ice_server,
            "chromium": chromium,
            "admin": format!("http://{admin}"),
            "token": TOKEN,
            "opaqueId": OPAQUE_ID,
        })
        .to_string();
        let report = run_node_driver("janus_echotest.mjs", &[&args]);
        let context = format!(
            "{}\njanus log:\n{}",
            serde_json::to_string_pretty(&report).unwrap_or_default(),
            janus.log()
        );
        eprintln!(
            "janus echotest ({browser_transport}, {janus_turn:?}): media {}, pair {} -> {}, \
             turnd sessions {}",
            report["media"],
            report["selected"]["local"],
            report["selected"]["remote"],
            report["sessions"]
        );
        check_call(
            &report,
            (browser_user, browser_transport),
            janus_turn,
            &context,
        );
        if let JanusTurn::RestApi = janus_turn {
            check_rest_requests(&recorder.seen(), &context);
        }
        drop(janus);
        drop(server);
    })
}

/// Audio and video came back over a relay/relay pair: the browser's turnd allocation to
/// Janus's turnd allocation, both in `/sessions` with bytes both ways.
fn check_call(
    report: &Value,
    (browser_user, browser_transport): (&str, &str),
    janus_turn: JanusTurn,
    context: &str,
) {
    assert!(report["error"].is_null(), "driver error:\n{context}");
    let media = &report["media"];
    assert!(
        media["audioPackets"].as_u64().unwrap_or(0) >= 50,
        "audio did not come back:\n{context}"
    );
    assert!(
        media["framesDecoded"].as_u64().unwrap_or(0) >= 30,
        "video did not come back:\n{context}"
    );
    // Janus offered only relayed candidates (force_relay), all on turnd.
    let answer = report["answerCandidates"]
        .as_array()
        .expect("answer candidates");
    assert!(
        !answer.is_empty(),
        "no candidates in Janus's answer:\n{context}"
    );
    for c in answer {
        let c = c.as_str().unwrap_or_default();
        assert!(
            c.contains(" typ relay") && c.contains(&format!(" {IP} ")),
            "Janus candidate {c} is not a turnd relay:\n{context}"
        );
    }
    let pair = &report["selected"];
    let (local, remote) = (&pair["local"], &pair["remote"]);
    assert_eq!(local["candidateType"], "relay", "{context}");
    // With every transport offered (/credentials), whichever the browser selected.
    let browser_transport = match browser_transport {
        "any" => local["relayProtocol"].as_str().unwrap_or_default(),
        t => t,
    };
    assert!(
        ["udp", "tcp"].contains(&browser_transport),
        "browser relayed over {browser_transport}:\n{context}"
    );
    assert_eq!(local["relayProtocol"], browser_transport, "{context}");
    assert_eq!(local["address"], IP, "{context}");
    assert_eq!(remote["candidateType"], "relay", "{context}");
    assert_eq!(remote["address"], IP, "{context}");
    let relayed = |c: &Value| format!("{IP}:{}", c["port"].as_u64().unwrap_or(0));
    let sessions = report["sessions"]
        .as_array()
        .expect("/sessions while the call is up");
    let find = |addr: &str| {
        sessions
            .iter()
            .find(|s| {
                s["relayed"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|a| a == addr))
            })
            .unwrap_or_else(|| panic!("no turnd allocation relays on {addr}:\n{context}"))
    };
    let browser = find(&relayed(local));
    assert_eq!(browser["user"], browser_user, "{context}");
    assert_eq!(browser["transport"], browser_transport, "{context}");
    let janus = find(&relayed(remote));
    match janus_turn {
        JanusTurn::Static(t) => {
            assert_eq!(janus["user"], JANUS_USER, "{context}");
            assert_eq!(janus["transport"], t, "{context}");
        }
        JanusTurn::RestApi => {
            assert_eq!(janus["user"], OPAQUE_ID, "{context}");
            let username = janus["username"].as_str().unwrap_or_default();
            assert!(
                username.ends_with(&format!(":{OPAQUE_ID}")),
                "Janus's allocation uses a REST credential from /turn:\n{context}"
            );
        }
    }
    for s in [browser, janus] {
        for k in ["bytes_to_peer", "bytes_from_peer"] {
            assert!(
                s[k].as_u64().unwrap_or(0) > 10_000,
                "{} {k}: media did not cross turnd:\n{context}",
                s["user"]
            );
        }
    }
}

/// Janus's requests to `/turn` as they arrived: the draft's form in the query and (the same)
/// in a POST body, the key as `api=` and `key=`, no Authorization header; turnd said 200.
fn check_rest_requests(seen: &[(String, u16)], context: &str) {
    assert!(!seen.is_empty(), "Janus never called /turn:\n{context}");
    for (req, status) in seen {
        assert_eq!(*status, 200, "turnd answered {status} to\n{req}\n{context}");
        let (head, body) = req.split_once("\r\n\r\n").expect("head and body");
        assert_eq!(
            head.lines().next(),
            Some(&*format!("POST /turn?{body} HTTP/1.1")),
            "{req}"
        );
        for field in [
            "service=turn".to_string(),
            format!("username={OPAQUE_ID}"),
            format!("api={REST_KEY}"),
            format!("key={REST_KEY}"),
        ] {
            assert!(body.split('&').any(|f| f == field), "{field} in {req}");
        }
        assert!(
            !head.to_ascii_lowercase().contains("\nauthorization:"),
            "{req}"
        );
    }
}

#[test]
fn echotest_through_turnd_over_udp_with_static_credentials() {
    echotest("udp", JanusTurn::Static("udp"));
}

#[test]
fn echotest_through_turnd_over_tcp_with_static_credentials() {
    echotest("tcp", JanusTurn::Static("tcp"));
}

#[test]
fn echotest_through_turnd_with_janus_turn_rest_api() {
    echotest("any", JanusTurn::RestApi);
}
