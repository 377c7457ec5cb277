//! The kernel fast path (`server.kernel-offload`): `bpf/relay.bpf.c`, built by `build.rs`,
//! loaded with aya and attached in XDP to the interfaces that carry the UDP listeners and
//! relay addresses. The core decides what may be relayed ([`crate::turn::FastPathEntry`]);
//! this module writes those decisions into the program's maps and reads its counters back.
//!
//! The attachment is a BPF link: it belongs to this process's file descriptors, so it goes
//! when the process exits, SIGKILL included, and a restart never finds a stale program.
//!
//! A build without clang (`cfg(turnd_no_bpf)`, see `build.rs`) has no program: the loader's
//! helpers are then unused, and [`KernelPath::start`] says why there is no offload.
#![cfg_attr(turnd_no_bpf, allow(dead_code, unused_imports))]

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use crate::turn::{FastPathEntry, KernelCounts};

/// `server.kernel-offload`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Use it where the kernel and privileges allow, else log why not and use sockets.
    Auto,
    /// Use it or refuse to start.
    On,
    /// Sockets only.
    #[default]
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::On => "on",
            Mode::Off => "off",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "on" => Ok(Mode::On),
            "off" => Ok(Mode::Off),
            _ => Err(format!("expected auto, on or off, not {s:?}")),
        }
    }
}

/// What the program did, by the index of its STATS map (`bpf/relay.bpf.c`).
pub const STAT_NAMES: [&str; 9] = [
    "to_peer",
    "from_peer",
    "local",
    "pass_expired",
    "pass_checksum",
    "pass_fragment",
    "pass_route",
    "pass_malformed",
    "pass_no_entry",
];

/// Entries per map and counter slots: the program's `MAX_ENTRIES` and `MAX_SLOTS`.
pub const MAX_ENTRIES: usize = 65536;

/// One interface the program is attached to.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attached {
    pub interface: String,
    pub index: u32,
    /// "driver" (native XDP) or "generic" (XDP in the kernel's stack).
    pub mode: &'static str,
}

/// The kernel's side, as the workers and the admin API see it.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelStats {
    /// By [`STAT_NAMES`].
    pub actions: [u64; 9],
    /// Channels installed now.
    pub entries: u64,
    /// Installs the maps refused (full): those channels stay on the socket path.
    pub install_failures: u64,
}

#[cfg(not(turnd_no_bpf))]
pub use loaded::KernelPath;

#[cfg(turnd_no_bpf)]
pub use missing::KernelPath;

/// Picks the interfaces: those that carry one of `addrs` (not loopback, not a wildcard).
fn interfaces_for(addrs: &[IpAddr]) -> Result<Vec<(String, u32)>, String> {
    let mut out: Vec<(String, u32)> = Vec::new();
    // SAFETY: getifaddrs fills a list we read and free with freeifaddrs; every pointer read
    // is checked for null first.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return Err(format!(
                "cannot list interfaces: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut p = list;
        while !p.is_null() {
            let ifa = &*p;
            p = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let ip = match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes())
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::from(sa.sin6_addr.s6_addr)
                }
                _ => continue,
            };
            if ip.is_loopback() || !addrs.contains(&ip) {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                .to_string_lossy()
                .into_owned();
            let index = libc::if_nametoindex(ifa.ifa_name);
            if index != 0 && !out.iter().any(|(_, i)| *i == index) {
                out.push((name, index));
            }
        }
        libc::freeifaddrs(list);
    }
    Ok(out)
}

/// A socket for interface ioctls, and an `ifreq` naming interface `name` (the rest zeroed).
fn ifreq_for(name: &str) -> std::io::Result<(std::net::UdpSocket, libc::ifreq)> {
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    // SAFETY: ifreq is plain data, valid zeroed.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // At most IFNAMSIZ-1 bytes: the zeroed last one ends the name.
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    Ok((sock, req))
}

/// An interface's MTU (SIOCGIFMTU).
fn mtu_of(name: &str) -> Result<u32, String> {
    let (sock, mut req) =
        ifreq_for(name).map_err(|e| format!("cannot read the MTU of {name}: {e}"))?;
    // SAFETY: the ioctl fills the MTU of the ifreq it is given, which names the interface.
    unsafe {
        use std::os::fd::AsRawFd;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) != 0 {
            return Err(format!(
                "cannot read the MTU of {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(req.ifr_ifru.ifru_mtu as u32)
    }
}

/// An interface's driver name (ETHTOOL_GDRVINFO), e.g. "veth"; empty when it cannot tell.
fn driver_of(name: &str) -> String {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    let Ok((sock, mut req)) = ifreq_for(name) else {
        return String::new();
    };
    // SAFETY: a zeroed ethtool_drvinfo the kernel fills, pointed to by the ifreq naming the
    // interface; both outlive the ioctl.
    unsafe {
        let mut info: DrvInfo = std::mem::zeroed();
        info.cmd = ETHTOOL_GDRVINFO;
        req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
        use std::os::fd::AsRawFd;
        if libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) != 0 {
            return String::new();
        }
        let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
        String::from_utf8_lossy(&info.driver[..end]).into_owned()
    }
}

/// The addresses the program must see: the UDP listeners on a specific address, and the
/// relay addresses.
pub fn offload_addresses(listen: &[SocketAddr], relays: &[IpAddr]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = listen
        .iter()
        .map(|a| a.ip().to_canonical())
        .chain(relays.iter().map(|ip| ip.to_canonical()))
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Nanoseconds of CLOCK_MONOTONIC (the clock `bpf_ktime_get_ns` reads) at an [`Instant`]
/// (which is CLOCK_MONOTONIC on Linux), by a pair of readings taken together.
#[derive(Clone, Copy, Debug)]
struct Clock {
    at: Instant,
    ns: u64,
}

impl Clock {
    fn new() -> Clock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Clock {
            at: Instant::now(),
            ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        }
    }

    fn ns(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.at) {
            Some(d) => self.ns.saturating_add(d.as_nanos() as u64),
            None => self
                .ns
                .saturating_sub(self.at.duration_since(t).as_nanos() as u64),
        }
    }
}

/// The 16-byte form the program keys on (IPv4 as IPv4-mapped IPv6) and the port in network
/// order.
fn wire(a: SocketAddr) -> ([u8; 16], u16) {
    let ip = match a.ip().to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    (ip, a.port().to_be())
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ChanKey {
    client: [u8; 16],
    server: [u8; 16],
    client_port: u16,
    server_port: u16,
    channel: u16,
    pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ChanVal {
    relay: [u8; 16],
    peer: [u8; 16],
    relay_port: u16,
    peer_port: u16,
    slot: u32,
    expires: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PeerKey {
    relay: [u8; 16],
    peer: [u8; 16],
    relay_port: u16,
    peer_port: u16,
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PeerVal {
    client: [u8; 16],
    server: [u8; 16],
    client_port: u16,
    server_port: u16,
    channel: u16,
    pad: u16,
    slot: u32,
    pad2: u32,
    expires: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Iface {
    mtu: u32,
    redirect: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SlotCounters {
    packets_to_peer: u64,
    bytes_to_peer: u64,
    packets_from_peer: u64,
    bytes_from_peer: u64,
}

fn keys(e: &FastPathEntry, slot: u32, expires: u64) -> (ChanKey, ChanVal, PeerKey, PeerVal) {
    let (client, client_port) = wire(e.client.client);
    let (server, server_port) = wire(e.client.server);
    let (relay, relay_port) = wire(e.relay);
    let (peer, peer_port) = wire(e.peer);
    let channel = e.channel.to_be();
    (
        ChanKey {
            client,
            server,
            client_port,
            server_port,
            channel,
            pad: 0,
        },
        ChanVal {
            relay,
            peer,
            relay_port,
            peer_port,
            slot,
            expires,
        },
        PeerKey {
            relay,
            peer,
            relay_port,
            peer_port,
            pad: 0,
        },
        PeerVal {
            client,
            server,
            client_port,
            server_port,
            channel,
            pad: 0,
            slot,
            pad2: 0,
            expires,
        },
    )
}

#[cfg(not(turnd_no_bpf))]
mod loaded {
    use super::*;
    use aya::Ebpf;
    use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
    use aya::programs::{Xdp, XdpMode};
    use aya::util::nr_cpus;

    // SAFETY (all six): plain `repr(C)` structs of integers with explicit padding fields,
    // laid out as the program's structs.
    unsafe impl aya::Pod for ChanKey {}
    unsafe impl aya::Pod for ChanVal {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for PeerVal {}
    unsafe impl aya::Pod for SlotCounters {}
    unsafe impl aya::Pod for Iface {}

    const PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay.bpf.o"));

    struct Maps {
        channels: BpfHashMap<MapData, ChanKey, ChanVal>,
        peers: BpfHashMap<MapData, PeerKey, PeerVal>,
        slots: PerCpuArray<MapData, SlotCounters>,
        free_slots: Vec<u32>,
        entries: u64,
        install_failures: u64,
    }

    /// The loaded, attached program and its maps, shared by the workers.
    pub struct KernelPath {
        maps: Mutex<Maps>,
        stats: PerCpuArray<MapData, u64>,
        attached: Vec<Attached>,
        clock: Clock,
        cpus: usize,
        /// Holds the program and its links: dropping it detaches.
        _ebpf: Mutex<Ebpf>,
    }

    impl std::fmt::Debug for KernelPath {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("KernelPath")
                .field("attached", &self.attached)
                .finish()
        }
    }

    /// The object's maps made and its program through the verifier, attached nowhere.
    pub(super) fn load() -> Result<Ebpf, String> {
        let mut ebpf =
            Ebpf::load(PROGRAM).map_err(|e| format!("cannot load the eBPF maps: {e}"))?;
        program(&mut ebpf)?
            .load()
            .map_err(|e| format!("the kernel refused the XDP program: {e}"))?;
        Ok(ebpf)
    }

    /// A counter slot's counts, summed over the CPUs (zero if it cannot be read).
    pub(super) fn sum_slot(slots: &PerCpuArray<MapData, SlotCounters>, slot: u32) -> KernelCounts {
        let mut k = KernelCounts::default();
        if let Ok(v) = slots.get(&slot, 0) {
            for c in v.iter() {
                k.packets_to_peer += c.packets_to_peer;
                k.bytes_to_peer += c.bytes_to_peer;
                k.packets_from_peer += c.packets_from_peer;
                k.bytes_from_peer += c.bytes_from_peer;
            }
        }
        k
    }

    pub(super) fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, String> {
        ebpf.program_mut("turnd_relay")
            .ok_or("the eBPF object has no turnd_relay program")?
            .try_into()
            .map_err(|e| format!("turnd_relay is not an XDP program: {e}"))
    }

    impl KernelPath {
        /// Loads the program and attaches it to every interface that carries one of
        /// `addrs` (native XDP where the driver has it, generic XDP otherwise). The error
        /// says why not, for the log (`auto`) or the refusal to start (`on`).
        pub fn start(addrs: &[IpAddr]) -> Result<KernelPath, String> {
            let ifaces = interfaces_for(addrs)?;
            if ifaces.is_empty() {
                return Err(
                    "no interface carries a UDP listener or relay address the offload can \
                     serve (listen on a specific, non-loopback address)"
                        .into(),
                );
            }
            let mut ebpf = load()?;
            let prog = program(&mut ebpf)?;
            let mut attached = Vec::new();
            for (name, index) in ifaces {
                let mode = match prog.attach_to_if_index(index, XdpMode::Driver) {
                    Ok(_) => "driver",
                    Err(native) => match prog.attach_to_if_index(index, XdpMode::Skb) {
                        Ok(_) => "generic",
                        Err(generic) => {
                            return Err(format!(
                                "cannot attach XDP to {name}: native: {native}; generic: {generic}"
                            ));
                        }
                    },
                };
                attached.push(Attached {
                    interface: name,
                    index,
                    mode,
                });
            }
            let take = |ebpf: &mut Ebpf, name: &str| {
                ebpf.take_map(name)
                    .ok_or_else(|| format!("the eBPF object has no {name} map"))
            };
            let channels = BpfHashMap::try_from(take(&mut ebpf, "CHANNELS")?)
                .map_err(|e| format!("CHANNELS: {e}"))?;
            let peers = BpfHashMap::try_from(take(&mut ebpf, "PEERS")?)
                .map_err(|e| format!("PEERS: {e}"))?;
            let slots = PerCpuArray::try_from(take(&mut ebpf, "SLOTS")?)
                .map_err(|e| format!("SLOTS: {e}"))?;
            let stats = PerCpuArray::try_from(take(&mut ebpf, "STATS")?)
                .map_err(|e| format!("STATS: {e}"))?;
            let cpus = nr_cpus().map_err(|(_, e)| format!("cannot count CPUs: {e}"))?;
            let mut ifaces_map: BpfHashMap<MapData, u32, Iface> =
                BpfHashMap::try_from(take(&mut ebpf, "IFACES")?)
                    .map_err(|e| format!("IFACES: {e}"))?;
            for a in &attached {
                let iface = Iface {
                    mtu: mtu_of(&a.interface)?,
                    // See the program's `struct iface`.
                    redirect: u32::from(driver_of(&a.interface) == "veth"),
                };
                ifaces_map
                    .insert(a.index, iface, 0)
                    .map_err(|e| format!("IFACES: {e}"))?;
            }
            Ok(KernelPath {
                maps: Mutex::new(Maps {
                    channels,
                    peers,
                    slots,
                    free_slots: (0..MAX_ENTRIES as u32).rev().collect(),
                    entries: 0,
                    install_failures: 0,
                }),
                stats,
                attached,
                clock: Clock::new(),
                cpus,
                _ebpf: Mutex::new(ebpf),
            })
        }

        fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
            match self.maps.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            }
        }

        pub fn attached(&self) -> &[Attached] {
            &self.attached
        }

        /// A counter slot for a new allocation, zeroed; None when all are taken.
        pub fn take_slot(&self) -> Option<u32> {
            let mut m = self.maps();
            let slot = m.free_slots.pop()?;
            let zero = PerCpuValues::try_from(vec![SlotCounters::default(); self.cpus]).ok()?;
            if m.slots.set(slot, zero, 0).is_err() {
                m.free_slots.push(slot);
                return None;
            }
            Some(slot)
        }

        pub fn free_slot(&self, slot: u32) {
            self.maps().free_slots.push(slot);
        }

        /// A slot's counts, summed over the CPUs.
        pub fn read_slot(&self, slot: u32) -> KernelCounts {
            let m = self.maps();
            sum_slot(&m.slots, slot)
        }

        /// Writes (or rewrites, with a new expiry) both directions of a channel. False when
        /// the maps are full: the channel stays on the socket path.
        pub fn install(&self, e: &FastPathEntry, slot: u32) -> bool {
            let (ck, cv, pk, pv) = keys(e, slot, self.clock.ns(e.expires));
            let mut m = self.maps();
            let new = m.channels.get(&ck, 0).is_err();
            // The peer direction first: a client's ChannelData may arrive the moment its
            // entry exists, and the answer should find its way back through the kernel too.
            let ok = m.peers.insert(pk, pv, 0).is_ok() && m.channels.insert(ck, cv, 0).is_ok();
            if !ok {
                let _ = m.channels.remove(&ck);
                let _ = m.peers.remove(&pk);
                m.install_failures += 1;
                return false;
            }
            if new {
                m.entries += 1;
            }
            true
        }

        /// Takes a channel out of both maps.
        pub fn remove(&self, e: &FastPathEntry) {
            let (ck, _, pk, _) = keys(e, 0, 0);
            let mut m = self.maps();
            let had = m.channels.remove(&ck).is_ok();
            let _ = m.peers.remove(&pk);
            if had {
                m.entries = m.entries.saturating_sub(1);
            }
        }

        /// What the program did, summed over the CPUs, and the map's fill.
        pub fn stats(&self) -> KernelStats {
            let mut s = KernelStats::default();
            for (i, v) in s.actions.iter_mut().enumerate() {
                if let Ok(per_cpu) = self.stats.get(&(i as u32), 0) {
                    *v = per_cpu.iter().sum();
                }
            }
            let m = self.maps();
            s.entries = m.entries;
            s.install_failures = m.install_failures;
            s
        }
    }
}

#[cfg(turnd_no_bpf)]
mod missing {
    use super::*;

    /// This build has no program: [`KernelPath::start`] says so.
    #[derive(Debug)]
    pub enum KernelPath {}

    impl KernelPath {
        pub fn start(_addrs: &[IpAddr]) -> Result<KernelPath, String> {
            Err(
                "this turnd was built without the eBPF program (clang or libbpf-dev was \
                 missing at build time)"
                    .into(),
            )
        }
        pub fn attached(&self) -> &[Attached] {
            match *self {}
        }
        pub fn take_slot(&self) -> Option<u32> {
            match *self {}
        }
        pub fn free_slot(&self, _slot: u32) {
            match *self {}
        }
        pub fn read_slot(&self, _slot: u32) -> KernelCounts {
            match *self {}
        }
        pub fn install(&self, _e: &FastPathEntry, _slot: u32) -> bool {
            match *self {}
        }
        pub fn remove(&self, _e: &FastPathEntry) {
            match *self {}
        }
        pub fn stats(&self) -> KernelStats {
            match *self {}
        }
    }
}

/// A worker's view: the shared program and which counter slot each of its allocations has.
pub(crate) struct WorkerKernel {
    pub path: std::sync::Arc<KernelPath>,
    slots: rustc_hash::FxHashMap<u64, u32>,
}

impl WorkerKernel {
    pub fn new(path: std::sync::Arc<KernelPath>) -> WorkerKernel {
        WorkerKernel {
            path,
            slots: Default::default(),
        }
    }

    pub fn install(&mut self, e: &FastPathEntry) {
        let slot = match self.slots.get(&e.alloc) {
            Some(&s) => s,
            None => {
                let Some(s) = self.path.take_slot() else {
                    return;
                };
                self.slots.insert(e.alloc, s);
                s
            }
        };
        self.path.install(e, slot);
    }

    pub fn remove(&mut self, e: &FastPathEntry) {
        self.path.remove(e);
    }

    /// The allocation's last counts; its slot goes back.
    pub fn end(&mut self, alloc: u64) -> Option<KernelCounts> {
        let slot = self.slots.remove(&alloc)?;
        let k = self.path.read_slot(slot);
        self.path.free_slot(slot);
        Some(k)
    }

    /// The counts so far of an allocation with entries.
    pub fn read(&self, alloc: u64) -> Option<KernelCounts> {
        self.slots.get(&alloc).map(|&s| self.path.read_slot(s))
    }
}

/// The program run on frames the test makes (BPF_PROG_TEST_RUN), with entries the test
/// writes: no interface, no socket, no packet leaves. Needs CAP_BPF (root).
#[cfg(all(feature = "testing", not(turnd_no_bpf)))]
pub mod testing {
    use super::*;
    use aya::Ebpf;
    use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
    use std::os::fd::{AsFd, AsRawFd};

    pub struct Harness {
        ebpf: Ebpf,
        channels: BpfHashMap<MapData, ChanKey, ChanVal>,
        peers: BpfHashMap<MapData, PeerKey, PeerVal>,
        ifaces: BpfHashMap<MapData, u32, Iface>,
        neigh: BpfHashMap<MapData, [u8; 16], [u8; 12]>,
        stats: PerCpuArray<MapData, u64>,
        slots: PerCpuArray<MapData, SlotCounters>,
    }

    /// The program's verdicts.
    pub const XDP_PASS: u32 = 2;
    pub const XDP_TX: u32 = 3;
    pub const XDP_REDIRECT: u32 = 4;

    impl Harness {
        pub fn load() -> Result<Harness, String> {
            let mut ebpf = loaded::load()?;
            let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| format!("no {name} map"));
            let channels = BpfHashMap::try_from(take("CHANNELS")?).map_err(|e| e.to_string())?;
            let peers = BpfHashMap::try_from(take("PEERS")?).map_err(|e| e.to_string())?;
            let ifaces = BpfHashMap::try_from(take("IFACES")?).map_err(|e| e.to_string())?;
            let neigh = BpfHashMap::try_from(take("NEIGH")?).map_err(|e| e.to_string())?;
            let stats = PerCpuArray::try_from(take("STATS")?).map_err(|e| e.to_string())?;
            let slots = PerCpuArray::try_from(take("SLOTS")?).map_err(|e| e.to_string())?;
            Ok(Harness {
                ebpf,
                channels,
                peers,
                ifaces,
                neigh,
                stats,
                slots,
            })
        }

        /// Declares interface `index` attached, with its MTU.
        pub fn interface(&mut self, index: u32, mtu: u32) {
            self.ifaces
                .insert(index, Iface { mtu, redirect: 0 }, 0)
                .expect("IFACES");
        }

        /// The previous hop of `ip` (as the program learns it from frames).
        pub fn neighbour(&mut self, ip: IpAddr, mac: [u8; 6], index: u32) {
            let (key, _) = wire(SocketAddr::new(ip, 0));
            let mut v = [0u8; 12];
            v[..6].copy_from_slice(&mac);
            v[8..].copy_from_slice(&index.to_ne_bytes());
            self.neigh.insert(key, v, 0).expect("NEIGH");
        }

        /// Installs `e` with its expiry as CLOCK_MONOTONIC nanoseconds, counted in `slot`.
        pub fn install(&mut self, e: &FastPathEntry, slot: u32, expires_ns: u64) {
            let (ck, cv, pk, pv) = keys(e, slot, expires_ns);
            self.peers.insert(pk, pv, 0).expect("PEERS");
            self.channels.insert(ck, cv, 0).expect("CHANNELS");
        }

        pub fn remove(&mut self, e: &FastPathEntry) {
            let (ck, _, pk, _) = keys(e, 0, 0);
            let _ = self.channels.remove(&ck);
            let _ = self.peers.remove(&pk);
        }

        /// What the program did so far, by [`STAT_NAMES`].
        pub fn stat(&self, name: &str) -> u64 {
            let i = STAT_NAMES
                .iter()
                .position(|n| *n == name)
                .expect("a stat name");
            self.stats
                .get(&(i as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        }

        /// A slot's counts (packets and bytes to the peer, from the peer).
        pub fn slot(&self, slot: u32) -> KernelCounts {
            loaded::sum_slot(&self.slots, slot)
        }

        /// Runs the program once on `frame` as if it came in on interface `ifindex` (which
        /// must exist in the calling thread's network namespace): the verdict and the
        /// frame as the program left it.
        pub fn run(&mut self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
            #[repr(C)]
            #[derive(Default)]
            struct XdpMd {
                data: u32,
                data_end: u32,
                data_meta: u32,
                ingress_ifindex: u32,
                rx_queue_index: u32,
                egress_ifindex: u32,
            }
            #[repr(C)]
            #[derive(Default)]
            struct TestRun {
                prog_fd: u32,
                retval: u32,
                data_size_in: u32,
                data_size_out: u32,
                data_in: u64,
                data_out: u64,
                repeat: u32,
                duration: u32,
                ctx_size_in: u32,
                ctx_size_out: u32,
                ctx_in: u64,
                ctx_out: u64,
                flags: u32,
                cpu: u32,
                batch_size: u32,
            }
            const BPF_PROG_TEST_RUN: libc::c_long = 10;
            let prog = loaded::program(&mut self.ebpf).expect("the program");
            let fd = prog.fd().expect("a loaded program");
            let raw_fd = fd.as_fd().as_raw_fd();
            let mut out = vec![0u8; frame.len() + 512];
            let ctx = XdpMd {
                data_end: frame.len() as u32,
                ingress_ifindex: ifindex,
                ..Default::default()
            };
            let mut attr = TestRun {
                prog_fd: raw_fd as u32,
                data_size_in: frame.len() as u32,
                data_size_out: out.len() as u32,
                data_in: frame.as_ptr() as u64,
                data_out: out.as_mut_ptr() as u64,
                repeat: 1,
                ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
                ctx_in: (&ctx as *const XdpMd) as u64,
                ..Default::default()
            };
            // The struct's 76 bytes without its tail padding: the kernel refuses an attribute
            // whose bytes past what it knows are not zero.
            const ATTR_SIZE: usize = 76;
            // SAFETY: the attribute points at buffers that outlive the call, with their
            // sizes; the kernel writes at most `data_size_out` bytes to `out`.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_PROG_TEST_RUN,
                    &mut attr as *mut TestRun,
                    ATTR_SIZE,
                )
            };
            assert_eq!(
                rc,
                0,
                "BPF_PROG_TEST_RUN: {}",
                std::io::Error::last_os_error()
            );
            out.truncate(attr.data_size_out as usize);
            (attr.retval, out)
        }
    }
}
