//! First-Allocate latency: how long a new client waits from its first Allocate (answered
//! 401 with a nonce) to its authenticated Allocate's success, one client after another, each
//! on a fresh UDP socket, each allocation released (Refresh 0) before the next. Prints
//! p50/p90/p99/max in microseconds. Run it against a static user of the file and against a
//! user that lives only in the fleet's Redis to see what the Redis store adds:
//!
//! ```sh
//! cargo run --release -p turnd-tools --example first_allocate -- 127.0.0.1:3478 alice:wonderland 2000
//! ```
//!
//! Loopback only: the server address must be on 127.0.0.0/8 or ::1.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use turnd::auth::{PasswordAlgorithm, long_term_key};
use turnd::stun::{Class, Message, MessageWriter, attr, method};

/// An answer: its error code (0: success), NONCE and REALM.
type Answer = (u16, Option<Vec<u8>>, Option<String>);

fn request(
    sock: &UdpSocket,
    m: u16,
    txid: [u8; 12],
    lifetime: Option<u32>,
    auth: Option<(&str, &str, &[u8], &[u8])>,
) -> Result<Answer, String> {
    let mut buf = Vec::with_capacity(512);
    let mut w = MessageWriter::new(&mut buf, m, Class::Request, txid);
    if m == method::ALLOCATE {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    }
    if let Some(l) = lifetime {
        w.u32_attr(attr::LIFETIME, l);
    }
    if let Some((user, realm, nonce, key)) = auth {
        w.attr(attr::USERNAME, user.as_bytes())
            .attr(attr::REALM, realm.as_bytes())
            .attr(attr::NONCE, nonce)
            .integrity(key);
    }
    w.fingerprint();
    sock.send(&buf).map_err(|e| e.to_string())?;
    let mut rbuf = [0u8; 1500];
    loop {
        let n = sock
            .recv(&mut rbuf)
            .map_err(|e| format!("no answer: {e}"))?;
        let Ok(msg) = Message::parse(&rbuf[..n]) else {
            continue;
        };
        if msg.transaction_id() != txid {
            continue;
        }
        let code = match msg.class() {
            Class::Success => 0,
            _ => msg
                .get(attr::ERROR_CODE)
                .filter(|v| v.len() >= 4)
                .map_or(0, |v| u16::from(v[2] & 7) * 100 + u16::from(v[3])),
        };
        let nonce = msg.get(attr::NONCE).map(<[u8]>::to_vec);
        let realm = msg
            .get(attr::REALM)
            .map(|r| String::from_utf8_lossy(r).into_owned());
        return Ok((code, nonce, realm));
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, creds, n] = args.as_slice() else {
        return Err("usage: first_allocate SERVER:PORT USER:PASSWORD COUNT".into());
    };
    let server: SocketAddr = server.parse().map_err(|e| format!("server: {e}"))?;
    if !server.ip().to_canonical().is_loopback() {
        return Err("the server must be on loopback".into());
    }
    let (user, pass) = creds.split_once(':').ok_or("USER:PASSWORD")?;
    let n: u32 = n.parse().map_err(|e| format!("count: {e}"))?;
    let n = n.clamp(1, 100_000);
    let mut micros = Vec::with_capacity(n as usize);
    let bind = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    for i in 0..n {
        let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        sock.connect(server).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut txid = [0u8; 12];
        txid[..4].copy_from_slice(&i.to_be_bytes());
        let started = Instant::now();
        let (code, nonce, realm) = request(&sock, method::ALLOCATE, txid, None, None)?;
        let (Some(nonce), Some(realm), 401) = (nonce, realm, code) else {
            return Err(format!(
                "first Allocate: expected 401 with a nonce, got {code}"
            ));
        };
        let key = long_term_key(PasswordAlgorithm::Md5, user, &realm, pass);
        txid[4] = 1;
        let auth = Some((user, realm.as_str(), nonce.as_slice(), key.as_bytes()));
        let (code, _, _) = request(&sock, method::ALLOCATE, txid, None, auth)?;
        let took = started.elapsed();
        if code != 0 {
            return Err(format!("authenticated Allocate: error {code}"));
        }
        micros.push(took.as_micros() as u64);
        txid[4] = 2;
        request(&sock, method::REFRESH, txid, Some(0), auth)?;
    }
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
    println!(
        "first Allocate (401 + authenticated Allocate), {} clients, user {user}: \
         p50 {} us, p90 {} us, p99 {} us, max {} us",
        micros.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
