//! The kernel fast path (`server.kernel-offload`, issue 19), through the real server in two
//! network namespaces the test makes (`common::netns`): traffic through the XDP program
//! arrives whole and in order both ways and its counters move while the socket path's do
//! not; the end of an allocation stops it at once; a denied peer is never reached; IPv6,
//! mixed families, and two allocations of the server relaying to each other; the program
//! detaches on exit and SIGKILL; and a server that may not load it runs on sockets (`auto`)
//! or refuses to start (`on`).

use std::net::{SocketAddr, UdpSocket};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::admin_http::{TOKEN, channel_bind_attrs, channel_data, http, parse_metrics};
use crate::common::netns::{LOAD4, LOAD6, Pair, SERVER4, SERVER6, kill};
use crate::common::{REALM, RawClient, udp_transport};
use stun::attributes::{ATTR_LIFETIME, ATTR_REQUESTED_ADDRESS_FAMILY, ATTR_XOR_RELAYED_ADDRESS};
use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_REFRESH};
use turnd::testing::process::TempDir;

const ADMIN: &str = "198.18.0.1:8080";
const PACKETS: u32 = 300;

struct Offloaded {
    pair: Pair,
    child: Child,
    dir: TempDir,
}

impl Drop for Offloaded {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn config(dir: &TempDir, mode: &str, extra: &str) -> std::path::PathBuf {
    dir.write(
        "turnd.toml",
        &format!(
            "[server]\nlisten = [\"{SERVER4}:3478\", \"[{SERVER6}]:3478\"]\nrealm = \"{REALM}\"\n\
             workers = 2\nkernel-offload = \"{mode}\"\n\n\
             [relay]\nips = [\"{SERVER4}\", \"{SERVER6}\"]\n\n\
             \
             [peers]\nallow = [\"198.18.0.0/15\", \"2001:2::/48\"]\n{extra}\n\n\
             [admin]\nenabled = true\nlisten = \"{ADMIN}\"\ntoken = \"{TOKEN}\"\n"
        ),
    )
}

fn start(mode: &str, extra: &str) -> Offloaded {
    let pair = Pair::new();
    let dir = TempDir::new("kernel-offload");
    let cfg = config(&dir, mode, extra);
    let log = dir.0.join("turnd.log");
    let listen: SocketAddr = format!("{SERVER4}:3478").parse().unwrap();
    let Some(child) = pair.start_turnd(&cfg, &[], listen, &log) else {
        panic!(
            "turnd did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    Offloaded { pair, child, dir }
}

impl Offloaded {
    fn metrics(&self) -> std::collections::HashMap<String, f64> {
        self.pair.in_load(|| {
            let (status, body) = http(ADMIN.parse().unwrap(), "GET", "/metrics", Some(TOKEN));
            assert_eq!(status, 200);
            parse_metrics(&body)
        })
    }

    fn kernel(&self, action: &str) -> u64 {
        let m = self.metrics();
        m.get(&format!(
            "turnd_kernel_packets_total{{action=\"{action}\"}}"
        ))
        .copied()
        .unwrap_or_else(|| panic!("no turnd_kernel_packets_total for {action}")) as u64
    }

    /// The program's counters, for a failure's message.
    fn kernel_summary(&self) -> String {
        let mut v: Vec<String> = self
            .metrics()
            .into_iter()
            .filter(|(k, _)| k.starts_with("turnd_kernel"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        v.sort();
        v.join(" ")
    }

    fn sessions(&self) -> Vec<serde_json::Value> {
        self.pair.in_load(|| {
            let (status, body) = http(ADMIN.parse().unwrap(), "GET", "/sessions", Some(TOKEN));
            assert_eq!(status, 200);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v.as_array().cloned().unwrap_or_default()
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("turnd.log")).unwrap_or_default()
    }
}

/// A client socket in the load namespace on `ip`, talking to `server`.
fn client(o: &Offloaded, ip: &str, server: SocketAddr) -> RawClient {
    let ip = ip.to_string();
    let sock = o.pair.in_load(move || {
        let s = UdpSocket::bind((ip.as_str(), 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    });
    RawClient {
        sock,
        server,
        user: "alice".into(),
        pass: "wonderland".into(),
        nonce: None,
        realm: REALM.into(),
    }
}

fn peer(o: &Offloaded, ip: &str) -> UdpSocket {
    let ip = ip.to_string();
    o.pair.in_load(move || {
        let s = UdpSocket::bind((ip.as_str(), 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    })
}

fn allocate(c: &mut RawClient, family: Option<u8>) -> SocketAddr {
    let mut attrs = vec![udp_transport()];
    if let Some(f) = family {
        attrs.push((ATTR_REQUESTED_ADDRESS_FAMILY, vec![f, 0, 0, 0]));
    }
    let r = c.request(METHOD_ALLOCATE, &attrs);
    assert_eq!(r.code(), None, "allocate");
    r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS)[0]
}

fn bind(c: &mut RawClient, channel: u16, peer: SocketAddr) -> Option<u16> {
    c.request(METHOD_CHANNEL_BIND, &channel_bind_attrs(channel, peer))
        .code()
}

/// The next ChannelData on `c` (skipping anything else): (channel, data).
fn recv_channel(c: &RawClient, within: Duration) -> Option<(u16, Vec<u8>)> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let Some(raw) = c.recv_raw() else {
            continue;
        };
        if raw.len() >= 4 && (0x40..=0x4F).contains(&raw[0]) {
            let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
            assert!(raw.len() >= 4 + len, "ChannelData shorter than its length");
            return Some((
                u16::from_be_bytes([raw[0], raw[1]]),
                raw[4..4 + len].to_vec(),
            ));
        }
    }
    None
}

fn payload(i: u32, len: usize) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    v.extend((0..len.saturating_sub(4)).map(|k| (k as u32 * 7 + i) as u8));
    v
}

/// One warm-up round trip (the socket path answers until the program has seen both ends'
/// packets and knows where to send), then `PACKETS` each way, one at a time, each checked
/// whole, in order and from the right address. Returns nothing: panics on a difference.
fn relay_both_ways(
    o: &Offloaded,
    c: &RawClient,
    channel: u16,
    p: &UdpSocket,
    relayed: SocketAddr,
    sizes: &[usize],
) {
    let mut buf = [0u8; 2048];
    // Warm-up, until a round trip completes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no warm-up round trip");
        c.send_raw(&channel_data(channel, b"warm-up"));
        let Ok((n, from)) = p.recv_from(&mut buf) else {
            continue;
        };
        assert_eq!(&buf[..n], b"warm-up");
        assert_eq!(from, relayed, "the peer sees the relayed address");
        p.send_to(b"warm-up back", relayed).unwrap();
        if let Some((ch, d)) = recv_channel(c, Duration::from_secs(2)) {
            assert_eq!((ch, d.as_slice()), (channel, &b"warm-up back"[..]));
            break;
        }
    }
    // Warm-ups that crossed each other: read and dropped before the counted packets.
    while let Ok((n, _)) = p.recv_from(&mut buf) {
        assert_eq!(&buf[..n], b"warm-up");
    }
    while let Some((_, d)) = recv_channel(c, Duration::from_millis(500)) {
        assert_eq!(d, b"warm-up back");
    }
    for i in 0..PACKETS {
        let len = sizes[i as usize % sizes.len()];
        let data = payload(i, len);
        c.send_raw(&channel_data(channel, &data));
        let (n, from) = p.recv_from(&mut buf).unwrap_or_else(|e| {
            panic!(
                "packet {i} ({len} bytes) to the peer: {e}; {}",
                o.kernel_summary()
            )
        });
        assert_eq!(
            &buf[..n],
            data.as_slice(),
            "packet {i} to the peer, {len} bytes"
        );
        assert_eq!(from, relayed);
        let back = payload(i ^ 0xffff, len);
        p.send_to(&back, relayed).unwrap();
        let (ch, d) = recv_channel(c, Duration::from_secs(5)).unwrap_or_else(|| {
            panic!(
                "packet {i} ({len} bytes) to the client: nothing; {}",
                o.kernel_summary()
            )
        });
        assert_eq!(ch, channel);
        assert_eq!(d, back, "packet {i} to the client, {len} bytes");
    }
}

fn session_kernel(o: &Offloaded, relayed: SocketAddr) -> (u64, u64, u64, u64) {
    let s = o
        .sessions()
        .into_iter()
        .find(|s| {
            s["relayed"]
                .as_array()
                .is_some_and(|r| r.iter().any(|a| a.as_str() == Some(&relayed.to_string())))
        })
        .expect("the session");
    // The totals include what the kernel relayed: credited at least once a second.
    (
        s["packets_to_peer"].as_u64().unwrap(),
        s["kernel"]["packets_to_peer"].as_u64().unwrap(),
        s["packets_from_peer"].as_u64().unwrap(),
        s["kernel"]["packets_from_peer"].as_u64().unwrap(),
    )
}

fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

#[test]
fn ipv4_channel_traffic_goes_through_the_kernel_whole_and_in_order_until_the_allocation_ends() {
    let o = start("on", "");
    assert!(o.pair.xdp_attached(), "XDP on vs0: {}", o.log());
    let server: SocketAddr = format!("{SERVER4}:3478").parse().unwrap();
    let mut c = client(&o, LOAD4[0], server);
    let relayed = allocate(&mut c, None);
    let p = peer(&o, LOAD4[1]);
    let peer_addr = p.local_addr().unwrap();
    assert_eq!(bind(&mut c, 0x4001, peer_addr), None, "ChannelBind");

    relay_both_ways(&o, &c, 0x4001, &p, relayed, &[1, 3, 200, 1000, 1400]);
    // After the warm-up nothing went up: the kernel relayed all of them, the socket path none
    // (its part is the warm-up packets, at most a few).
    let to_peer = o.kernel("to_peer");
    let from_peer = o.kernel("from_peer");
    assert!(to_peer >= u64::from(PACKETS), "kernel to_peer {to_peer}");
    assert!(
        from_peer >= u64::from(PACKETS),
        "kernel from_peer {from_peer}"
    );
    assert!(
        wait_for(Duration::from_secs(5), || {
            let (total_to, k_to, total_from, k_from) = session_kernel(&o, relayed);
            k_to >= u64::from(PACKETS)
                && k_from >= u64::from(PACKETS)
                && total_to - k_to <= 20
                && total_from - k_from <= 20
        }),
        "the session's counters: {:?} {:?}",
        session_kernel(&o, relayed),
        o.sessions()
    );
    let m = o.metrics();
    assert_eq!(m["turnd_kernel_channels"], 1.0);
    assert!(m["turn_total_traffic_peer_sentp"] >= f64::from(PACKETS));

    // The allocation ends: its channel leaves the kernel at once, and nothing more reaches
    // the peer through either path.
    let r = c.request(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]);
    assert_eq!(r.code(), None, "Refresh 0");
    assert_eq!(o.metrics()["turnd_kernel_channels"], 0.0);
    let before = o.kernel("to_peer");
    for i in 0..20 {
        c.send_raw(&channel_data(0x4001, &payload(i, 100)));
    }
    let mut buf = [0u8; 2048];
    assert!(p.recv_from(&mut buf).is_err(), "nothing after the end");
    assert_eq!(o.kernel("to_peer"), before);
}

/// coturn's own client (`turnutils_uclient`, default mode: RTP and RTCP allocations with
/// EVEN-PORT and channels) and echo peer (`turnutils_peer`), both in the load namespace:
/// every message comes back, and the kernel relayed them.
#[test]
fn coturn_uclient_relays_through_the_kernel() {
    use crate::coturn_uclient::{parse_totals, tool};
    let o = start("on", "");
    let uclient = tool("turnutils_uclient");
    let mut peer = std::process::Command::new("ip")
        .args(["netns", "exec", &o.pair.load])
        .arg(tool("turnutils_peer"))
        .args(["-L", LOAD4[1], "-p", "3480"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn turnutils_peer");
    // Until the echo peer answers.
    let peer_addr: SocketAddr = format!("{}:3480", LOAD4[1]).parse().unwrap();
    let echoing = o.pair.in_load(|| {
        let s = UdpSocket::bind((LOAD4[2], 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 64];
        (0..50).any(|_| {
            let _ = s.send_to(b"ping", peer_addr);
            s.recv_from(&mut buf).is_ok()
        })
    });
    assert!(echoing, "turnutils_peer does not echo");
    let (to, from) = (o.kernel("to_peer"), o.kernel("from_peer"));
    let uclient = uclient.display().to_string();
    let argv = [
        "netns",
        "exec",
        &o.pair.load,
        &uclient,
        "-u",
        "alice",
        "-w",
        "wonderland",
        "-e",
        LOAD4[1],
        "-r",
        "3480",
        "-L",
        LOAD4[0],
        "-n",
        "200",
        "-m",
        "2",
        "-l",
        "200",
        "-p",
        "3478",
        SERVER4,
    ];
    let (code, stdout, stderr) = crate::common::run_binary("ip", &argv, Duration::from_secs(120));
    kill(&mut peer);
    let output = format!("{stdout}{stderr}");
    assert_eq!(code, Some(0), "uclient: {output}");
    let t = parse_totals(&output).unwrap_or_else(|| panic!("no totals: {output}"));
    // Two clients, 200 messages each.
    assert_eq!((t.sent, t.received, t.lost), (400, 400, 0), "{output}");
    let (to2, from2) = (o.kernel("to_peer"), o.kernel("from_peer"));
    assert!(
        to2 > to && from2 > from,
        "kernel to_peer {to}->{to2}, from_peer {from}->{from2}; {}",
        o.kernel_summary()
    );
}

#[test]
fn ipv6_and_mixed_family_allocations_go_through_the_kernel() {
    let o = start("on", "");
    // IPv6 client, IPv6 relay and peer.
    let server6: SocketAddr = format!("[{SERVER6}]:3478").parse().unwrap();
    let mut c6 = client(&o, LOAD6[0], server6);
    let relayed6 = allocate(&mut c6, Some(2));
    assert!(relayed6.is_ipv6());
    let p6 = peer(&o, LOAD6[1]);
    assert_eq!(bind(&mut c6, 0x4002, p6.local_addr().unwrap()), None);
    let before = o.kernel("to_peer");
    relay_both_ways(&o, &c6, 0x4002, &p6, relayed6, &[200, 1200]);
    assert!(o.kernel("to_peer") >= before + u64::from(PACKETS));

    // IPv4 client, IPv6 relay and peer (RFC 8656 REQUESTED-ADDRESS-FAMILY): the program
    // changes the IP version on the way.
    let server4: SocketAddr = format!("{SERVER4}:3478").parse().unwrap();
    let mut c4 = client(&o, LOAD4[0], server4);
    let relayed = allocate(&mut c4, Some(2));
    assert!(relayed.is_ipv6());
    let p = peer(&o, LOAD6[2]);
    assert_eq!(bind(&mut c4, 0x4003, p.local_addr().unwrap()), None);
    let (to, from) = (o.kernel("to_peer"), o.kernel("from_peer"));
    relay_both_ways(&o, &c4, 0x4003, &p, relayed, &[1, 200, 1200]);
    assert!(o.kernel("to_peer") >= to + u64::from(PACKETS));
    assert!(o.kernel("from_peer") >= from + u64::from(PACKETS));
}

#[test]
fn two_allocations_of_the_server_relay_to_each_other_in_the_kernel() {
    let o = start("on", "");
    let server: SocketAddr = format!("{SERVER4}:3478").parse().unwrap();
    let mut a = client(&o, LOAD4[0], server);
    let mut b = client(&o, LOAD4[1], server);
    let ra = allocate(&mut a, None);
    let rb = allocate(&mut b, None);
    assert_eq!(bind(&mut a, 0x4010, rb), None);
    assert_eq!(bind(&mut b, 0x4020, ra), None);
    // Warm-up both ways until each side hears the other.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no warm-up");
        a.send_raw(&channel_data(0x4010, b"hi b"));
        b.send_raw(&channel_data(0x4020, b"hi a"));
        let got_b = recv_channel(&b, Duration::from_secs(1));
        let got_a = recv_channel(&a, Duration::from_secs(1));
        if got_a.is_some() && got_b.is_some() {
            break;
        }
    }
    // Drain anything left of the warm-up.
    while recv_channel(&a, Duration::from_millis(300)).is_some() {}
    while recv_channel(&b, Duration::from_millis(300)).is_some() {}
    let local = o.kernel("local");
    for i in 0..PACKETS {
        let data = payload(i, 300);
        a.send_raw(&channel_data(0x4010, &data));
        let (ch, d) = recv_channel(&b, Duration::from_secs(5)).expect("B receives");
        assert_eq!((ch, &d), (0x4020, &data), "packet {i} A to B");
        b.send_raw(&channel_data(0x4020, &data));
        let (ch, d) = recv_channel(&a, Duration::from_secs(5)).expect("A receives");
        assert_eq!((ch, &d), (0x4010, &data), "packet {i} B to A");
    }
    assert!(
        o.kernel("local") >= local + 2 * u64::from(PACKETS) - 4,
        "kernel local {} (was {local})",
        o.kernel("local")
    );
}

#[test]
fn a_denied_peer_is_never_reached_through_the_kernel() {
    // 198.18.0.5 is denied on top of the allowed range.
    let o = start("on", "deny = [\"198.18.0.5/32\"]");
    let server: SocketAddr = format!("{SERVER4}:3478").parse().unwrap();
    let mut c = client(&o, LOAD4[0], server);
    allocate(&mut c, None);
    let denied = peer(&o, LOAD4[3]);
    assert_eq!(
        bind(&mut c, 0x4005, denied.local_addr().unwrap()),
        Some(403)
    );
    for i in 0..50 {
        c.send_raw(&channel_data(0x4005, &payload(i, 100)));
    }
    let mut buf = [0u8; 2048];
    assert!(
        denied.recv_from(&mut buf).is_err(),
        "the denied peer got a packet"
    );
    assert_eq!(o.metrics()["turnd_kernel_channels"], 0.0);
    assert_eq!(o.kernel("to_peer"), 0);
}

#[test]
fn the_program_detaches_when_turnd_exits_and_when_it_is_killed() {
    let o = start("on", "");
    assert!(o.pair.xdp_attached());
    // SIGKILL: the BPF link goes with the process's descriptors.
    let mut o = o;
    kill(&mut o.child);
    assert!(
        wait_for(Duration::from_secs(5), || !o.pair.xdp_attached()),
        "XDP still attached after SIGKILL"
    );
    // A restart attaches again; SIGINT twice ends it at once, detached again.
    let cfg = o.dir.0.join("turnd.toml");
    let log = o.dir.0.join("turnd2.log");
    let listen: SocketAddr = format!("{SERVER4}:3478").parse().unwrap();
    let mut child = o
        .pair
        .start_turnd(&cfg, &[], listen, &log)
        .expect("turnd restarts");
    assert!(o.pair.xdp_attached(), "attached after the restart");
    for _ in 0..2 {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(&mut child);
    assert!(!o.pair.xdp_attached(), "XDP still attached after exit");
}

/// turnd without capabilities (an empty bounding set, so even root gets none): `auto` logs
/// why and relays on sockets; `on` refuses to start and says why.
#[test]
fn without_the_privileges_to_load_auto_runs_on_sockets_and_on_refuses_to_start() {
    let pair = Pair::new();
    let dir = TempDir::new("kernel-offload-refused");
    let listen: SocketAddr = format!("{SERVER4}:3478").parse().unwrap();
    let no_caps = [
        "setpriv",
        "--bounding-set",
        "-all",
        "--inh-caps",
        "-all",
        "--",
    ];

    let cfg = config(&dir, "on", "");
    let log = dir.0.join("on.log");
    let child = pair.start_turnd_with(&no_caps, &cfg, &[], listen, &log);
    assert!(
        child.is_none(),
        "turnd started with kernel-offload = on and no CAP_BPF"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("server.kernel-offload = on"), "{text}");

    let cfg = config(&dir, "auto", "");
    let log = dir.0.join("auto.log");
    let child = pair
        .start_turnd_with(&no_caps, &cfg, &[], listen, &log)
        .expect("turnd starts with kernel-offload = auto");
    let o = Offloaded { pair, child, dir };
    assert!(!o.pair.xdp_attached());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("kernel offload not in use"), "{text}");
    // It relays on sockets.
    let mut c = client(&o, LOAD4[0], listen);
    let relayed = allocate(&mut c, None);
    let p = peer(&o, LOAD4[1]);
    assert_eq!(bind(&mut c, 0x4001, p.local_addr().unwrap()), None);
    c.send_raw(&channel_data(0x4001, b"on sockets"));
    let mut buf = [0u8; 2048];
    let (n, from) = p.recv_from(&mut buf).expect("relayed on sockets");
    assert_eq!((&buf[..n], from), (&b"on sockets"[..], relayed));
}
