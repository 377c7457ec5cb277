//! `--kernel-load IFACE`: the data side of the load below the socket layer.
//!
//! The tool sets up its allocations and channels with its own sockets as always. Then,
//! instead of a `sendto` per packet from 100 UDP sockets and echo peers reading and writing
//! sockets, it writes the clients' ChannelData frames (the same 5-tuples, the tool's
//! timestamped payload, checksums filled in) in batches to a packet socket on `IFACE`
//! (`sendmmsg`, qdisc bypassed), and an XDP program attached to `IFACE`
//! (`bpf/load.bpf.c`) echoes what reaches the peers and counts, times and drops what comes
//! back to the clients. A relayed packet then costs the load a fraction of what it costs
//! the server, so on a small machine the server, not the tool, sets the highest rate
//! (`bench/offload.sh --kernel-load`).
//!
//! (An XDP generator in `BPF_PROG_TEST_RUN`'s live-frames mode was tried first and left:
//! on this kernel every such call ends with an RCU grace period, milliseconds asleep, so
//! frames leave in bursts that overflow a veth's 256-frame ring, and expedited grace
//! periods cost more CPU on a VM than the packet socket does.)
//!
//! IPv4 only, UDP clients, channel mode, echo peers, bursts of 1. The server's MAC comes
//! from the neighbour table, filled in by the setup's exchanges.

use std::net::SocketAddrV4;
use std::time::Instant;

use crate::hist::Histogram;
use crate::traffic::MAGIC;

/// One allocation as its frames carry it.
pub struct KernelFlow {
    /// The client's address (its socket's): the frames' source.
    pub client: SocketAddrV4,
    /// The id the tool's payload carries.
    pub id: u32,
}

/// What the kernel counted.
pub struct KernelResult {
    /// Frames transmitted towards the server.
    pub sent: u64,
    /// ChannelData back at the clients (round trips completed).
    pub received: u64,
    /// Relayed packets the echo peers sent back.
    pub echoed: u64,
    pub hist: Histogram,
}

/// The load for one run, from [`KernelLoad::prepare`] until dropped (which detaches the
/// program from the interface).
pub struct KernelLoad {
    #[cfg(not(turnd_load_no_bpf))]
    inner: imp::Loaded,
}

impl KernelLoad {
    /// Loads both programs, attaches the echo/sink to `iface` and fills in the flows.
    #[cfg_attr(turnd_load_no_bpf, allow(unused_variables))]
    pub fn prepare(
        iface: &str,
        server: SocketAddrV4,
        channel: u16,
        size: usize,
        flows: &[KernelFlow],
    ) -> Result<KernelLoad, String> {
        #[cfg(turnd_load_no_bpf)]
        {
            Err(
                "--kernel-load: this turnd-load was built without its eBPF program (install \
                 clang and libbpf-dev and build again)"
                    .to_owned(),
            )
        }
        #[cfg(not(turnd_load_no_bpf))]
        {
            let frame = Frame::new(iface, server, channel, size)?;
            Ok(KernelLoad {
                inner: imp::Loaded::prepare(iface, frame, flows)?,
            })
        }
    }

    /// Sends at `rate` packets per second (0: flat out) from `start` to `until`, then waits
    /// until `drain_until` for the stragglers.
    pub fn run(
        &mut self,
        rate: f64,
        start: Instant,
        until: Instant,
        drain_until: Instant,
    ) -> Result<KernelResult, String> {
        #[cfg(turnd_load_no_bpf)]
        {
            let _ = (rate, start, until, drain_until);
            unreachable!("prepare refuses without the program")
        }
        #[cfg(not(turnd_load_no_bpf))]
        self.inner.run(rate, start, until, drain_until)
    }
}

/// The ChannelData frame every flow sends, with its source port and checksum left to the
/// program.
#[cfg_attr(turnd_load_no_bpf, allow(dead_code))]
struct Frame {
    bytes: Vec<u8>,
    ifindex: u32,
    /// Where the payload starts.
    payload_at: usize,
}

const ETH: usize = 14;
const IP: usize = 20;
const UDP: usize = 8;
const CD: usize = 4;

#[cfg_attr(turnd_load_no_bpf, allow(dead_code))]
impl Frame {
    fn new(iface: &str, server: SocketAddrV4, channel: u16, size: usize) -> Result<Frame, String> {
        let ifindex = ifindex(iface)?;
        let own = mac_of(iface)?;
        let theirs = neighbour_mac(iface, server)?;
        let udp_len = UDP + CD + size;
        let ip_len = IP + udp_len;
        let mut b = vec![0u8; ETH + ip_len];
        b[0..6].copy_from_slice(&theirs);
        b[6..12].copy_from_slice(&own);
        b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut b[ETH..ETH + IP];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = 17;
        // The source is filled in per flow (all flows share the clients' address).
        ip[16..20].copy_from_slice(&server.ip().octets());
        let u = ETH + IP;
        b[u + 2..u + 4].copy_from_slice(&server.port().to_be_bytes());
        b[u + 4..u + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        b[u + UDP..u + UDP + 2].copy_from_slice(&channel.to_be_bytes());
        b[u + UDP + 2..u + UDP + 4].copy_from_slice(&(size as u16).to_be_bytes());
        let payload_at = u + UDP + CD;
        b[payload_at..].fill(0x5A);
        b[payload_at..payload_at + 8].fill(0);
        b[payload_at + 8..payload_at + 12].copy_from_slice(&MAGIC);
        Ok(Frame {
            bytes: b,
            ifindex,
            payload_at,
        })
    }

    /// Sets the clients' address and the IPv4 header checksum (the same for every flow).
    fn set_source(&mut self, ip: std::net::Ipv4Addr) {
        let h = &mut self.bytes[ETH..ETH + IP];
        h[12..16].copy_from_slice(&ip.octets());
        h[10..12].fill(0);
        let mut sum: u32 = 0;
        for w in h.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        let c = !fold(u64::from(sum)) as u16;
        h[10..12].copy_from_slice(&c.to_be_bytes());
    }

    /// The flow's port and id written in, the send time zero: the folded one's-complement
    /// sum of the UDP pseudo header and datagram (checksum field zero), over 16-bit words in
    /// native order, as the program adds the send time to it with `bpf_csum_diff`.
    fn flow_sum(&mut self, port: u16, id: u32) -> u32 {
        let u = ETH + IP;
        self.bytes[u..u + 2].copy_from_slice(&port.to_be_bytes());
        self.bytes[u + 6..u + 8].fill(0);
        self.bytes[self.payload_at + 12..self.payload_at + 16].copy_from_slice(&id.to_be_bytes());
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&self.bytes[ETH + 12..ETH + 20]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&self.bytes[u + 4..u + 6]);
        let mut sum = 0u64;
        for chunk in [&pseudo[..], &self.bytes[u..]] {
            let mut words = chunk.chunks_exact(2);
            for w in &mut words {
                sum += u64::from(u16::from_ne_bytes([w[0], w[1]]));
            }
            if let [last] = words.remainder() {
                sum += u64::from(u16::from_ne_bytes([*last, 0]));
            }
        }
        fold(sum)
    }
}

fn fold(mut sum: u64) -> u32 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u32
}

fn ifindex(iface: &str) -> Result<u32, String> {
    let name = std::ffi::CString::new(iface).map_err(|_| format!("bad interface name {iface}"))?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 {
        return Err(format!("no interface {iface}"));
    }
    Ok(i)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn mac_of(iface: &str) -> Result<[u8; 6], String> {
    let path = format!("/sys/class/net/{iface}/address");
    let s = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_mac(&s).ok_or_else(|| format!("{path}: not a MAC address: {s}"))
}

/// The server's MAC on `iface`, from the neighbour table (/proc/net/arp), which the setup's
/// exchanges with the server filled in.
fn neighbour_mac(iface: &str, server: SocketAddrV4) -> Result<[u8; 6], String> {
    let arp =
        std::fs::read_to_string("/proc/net/arp").map_err(|e| format!("/proc/net/arp: {e}"))?;
    let ip = server.ip().to_string();
    for line in arp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // IP address, HW type, Flags, HW address, Mask, Device; flag 0x2: complete.
        if let [addr, _, flags, hw, _, dev] = f[..]
            && addr == ip
            && dev == iface
            && u32::from_str_radix(flags.trim_start_matches("0x"), 16).is_ok_and(|f| f & 2 != 0)
            && let Some(mac) = parse_mac(hw)
        {
            return Ok(mac);
        }
    }
    Err(format!(
        "--kernel-load: no neighbour entry for {ip} on {iface} (is the server reached through it?)"
    ))
}

#[cfg(not(turnd_load_no_bpf))]
mod imp {
    use super::*;
    use aya::Ebpf;
    use aya::maps::{MapData, PerCpuArray};
    use aya::programs::{Xdp, XdpMode};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;
    use turnd_tools::sys::Mmsg;

    const PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/load.bpf.o"));
    /// The program's histogram size (hist.rs's layout).
    const BUCKETS: u32 = (64 - 5) * 32 + 32;
    const C_RECEIVED: u32 = 0;
    const C_ECHOED: u32 = 1;
    const C_MAX_NS: u32 = 2;
    /// Frames per `sendmmsg`: at most, at a set rate (what is due every ~50 us), and always
    /// flat out.
    const BATCH: usize = 64;

    pub struct Loaded {
        _ebpf: Ebpf,
        frame: Frame,
        /// Per flow: its client port, id, and the partial checksum without the send time.
        flows: Vec<(u16, u32, u32)>,
        counts: PerCpuArray<MapData, u64>,
        hist: PerCpuArray<MapData, u64>,
    }

    impl Loaded {
        pub fn prepare(
            iface: &str,
            mut frame: Frame,
            flows: &[KernelFlow],
        ) -> Result<Loaded, String> {
            let Some(first) = flows.first() else {
                return Err("--kernel-load: no allocation to send on".to_owned());
            };
            if flows.iter().any(|f| f.client.ip() != first.client.ip()) {
                return Err("--kernel-load: the clients must share one address".to_owned());
            }
            frame.set_source(*first.client.ip());
            let flows = flows
                .iter()
                .map(|f| (f.client.port(), f.id, frame.flow_sum(f.client.port(), f.id)))
                .collect();
            let mut ebpf =
                Ebpf::load(PROGRAM).map_err(|e| format!("loading bpf/load.bpf.o: {e}"))?;
            let sink: &mut Xdp = ebpf
                .program_mut("turnd_sink")
                .ok_or("the eBPF object has no turnd_sink")?
                .try_into()
                .map_err(|e| format!("turnd_sink: {e}"))?;
            sink.load()
                .map_err(|e| format!("the kernel refused turnd_sink: {e}"))?;
            if let Err(native) = sink.attach_to_if_index(frame.ifindex, XdpMode::Driver) {
                sink.attach_to_if_index(frame.ifindex, XdpMode::Skb)
                    .map_err(|generic| {
                        format!("cannot attach to {iface}: native: {native}; generic: {generic}")
                    })?;
            }
            let counts = PerCpuArray::try_from(ebpf.take_map("COUNTS").ok_or("no COUNTS map")?)
                .map_err(|e| format!("COUNTS: {e}"))?;
            let hist = PerCpuArray::try_from(ebpf.take_map("HIST").ok_or("no HIST map")?)
                .map_err(|e| format!("HIST: {e}"))?;
            Ok(Loaded {
                _ebpf: ebpf,
                frame,
                flows,
                counts,
                hist,
            })
        }

        fn count(&self, which: u32) -> Vec<u64> {
            self.counts
                .get(&which, 0)
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default()
        }

        pub fn run(
            &mut self,
            rate: f64,
            start: Instant,
            until: Instant,
            drain_until: Instant,
        ) -> Result<KernelResult, String> {
            let sock = packet_socket(self.frame.ifindex)?;
            let len = self.frame.bytes.len();
            let mut mm = Mmsg::new(BATCH, len);
            for i in 0..BATCH {
                mm.slot(i).copy_from_slice(&self.frame.bytes);
            }
            let at = self.frame.payload_at;
            let u = ETH + IP;
            let mut next_flow = 0usize;
            let mut sent = 0u64;
            crate::sleep_until(start);
            loop {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                let due = if rate > 0.0 {
                    ((now - start).as_secs_f64() * rate) as u64
                } else {
                    sent + BATCH as u64
                };
                let k = due.saturating_sub(sent).min(BATCH as u64) as usize;
                if k == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                let ts = monotonic_ns().to_ne_bytes();
                for i in 0..k {
                    let (port, id, sum) = self.flows[next_flow];
                    next_flow = (next_flow + 1) % self.flows.len();
                    let mut s = u64::from(sum);
                    for w in ts.chunks_exact(2) {
                        s += u64::from(u16::from_ne_bytes([w[0], w[1]]));
                    }
                    let check = match !(fold(s) as u16) {
                        0 => 0xffff,
                        c => c,
                    };
                    let f = mm.slot(i);
                    f[u..u + 2].copy_from_slice(&port.to_be_bytes());
                    f[u + 6..u + 8].copy_from_slice(&check.to_ne_bytes());
                    f[at..at + 8].copy_from_slice(&ts);
                    f[at + 12..at + 16].copy_from_slice(&id.to_be_bytes());
                }
                // A full device queue refuses the rest (ENOBUFS): those are not sent, and
                // are offered again at the next turn.
                match mm.send(&sock, k, |_| len) {
                    Ok(n) => sent += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(e) => {
                        return Err(format!("--kernel-load: sending on the packet socket: {e}"));
                    }
                }
            }
            crate::sleep_until(drain_until);
            let sum = |v: Vec<u64>| v.iter().sum::<u64>();
            let mut hist = Histogram::new();
            for b in 0..BUCKETS {
                if let Ok(v) = self.hist.get(&b, 0) {
                    let n: u64 = v.iter().sum();
                    if n > 0 {
                        hist.record_bucket(b as usize, n);
                    }
                }
            }
            if let Some(max) = self.count(C_MAX_NS).into_iter().max() {
                hist.note_max(max);
            }
            Ok(KernelResult {
                sent,
                received: sum(self.count(C_RECEIVED)),
                echoed: sum(self.count(C_ECHOED)),
                hist,
            })
        }
    }

    /// CLOCK_MONOTONIC in nanoseconds, the clock of the program's `bpf_ktime_get_ns`.
    fn monotonic_ns() -> u64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to write to.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    }

    /// A packet socket that sends whole frames out of interface `ifindex`, around the
    /// queueing discipline (as a NIC driver's own queue would take them).
    fn packet_socket(ifindex: u32) -> Result<OwnedFd, String> {
        // Protocol 0: the socket receives nothing.
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!(
                "--kernel-load: packet socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: fd is a new descriptor we own.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: a sockaddr_ll of the right size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(format!(
                "--kernel-load: binding the packet socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let one: libc::c_int = 1;
        // SAFETY: an int option.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        Ok(sock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program's arithmetic, done here: the flow's partial sum plus the send time,
    /// folded and inverted, makes a datagram whose checksum verifies.
    #[test]
    fn flow_sum_plus_the_send_time_is_the_udp_checksum() {
        let server: SocketAddrV4 = "198.18.0.1:3478".parse().unwrap();
        let size = 200;
        let udp_len = UDP + CD + size;
        let mut b = vec![0u8; ETH + IP + udp_len];
        b[ETH] = 0x45;
        b[ETH + 2..ETH + 4].copy_from_slice(&((IP + udp_len) as u16).to_be_bytes());
        b[ETH + 16..ETH + 20].copy_from_slice(&server.ip().octets());
        let u = ETH + IP;
        b[u + 4..u + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        b[u + UDP..u + UDP + 2].copy_from_slice(&0x4000u16.to_be_bytes());
        b[u + UDP + 4..].fill(0x5A);
        b[u + UDP + 4..u + UDP + 12].fill(0);
        let mut f = Frame {
            bytes: b,
            ifindex: 1,
            payload_at: u + UDP + CD,
        };
        f.set_source("198.18.0.2".parse().unwrap());
        let sum = f.flow_sum(40_000, 7);
        // The program: csum_diff over the 8 bytes of the send time, seeded with the sum.
        let now: u64 = 0x0123_4567_89ab_cdef;
        let ts = now.to_ne_bytes();
        let mut s = u64::from(sum);
        for w in ts.chunks(2) {
            s += u64::from(u16::from_ne_bytes([w[0], w[1]]));
        }
        let check = !(fold(s) as u16);
        let at = f.payload_at;
        f.bytes[at..at + 8].copy_from_slice(&ts);
        f.bytes[u + 6..u + 8].copy_from_slice(&check.to_ne_bytes());
        // Verify the way a receiver does, in network order: the sum over the pseudo header
        // and the datagram is 0xffff.
        let mut v = 0u64;
        let mut add = |bytes: &[u8]| {
            for w in bytes.chunks(2) {
                v += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
            }
        };
        add(&f.bytes[ETH + 12..ETH + 20]);
        add(&[0, 17]);
        add(&(udp_len as u16).to_be_bytes());
        add(&f.bytes[u..]);
        assert_eq!(fold(v), 0xffff);
        assert_eq!(&f.bytes[u..u + 2], &40_000u16.to_be_bytes());
        assert_eq!(&f.bytes[at + 12..at + 16], &7u32.to_be_bytes());
        // And the IPv4 header's checksum verifies.
        let mut h = 0u64;
        for w in f.bytes[ETH..ETH + IP].chunks(2) {
            h += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        assert_eq!(fold(h), 0xffff);
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:ab:00:10:ff:01\n"),
            Some([2, 0xab, 0, 0x10, 0xff, 1])
        );
        assert_eq!(parse_mac("02:ab:00:10:ff"), None);
        assert_eq!(parse_mac("02:ab:00:10:ff:01:02"), None);
    }
}
