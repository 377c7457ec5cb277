//! The few system calls the load tool and the floor forwarder need beyond std: epoll, the
//! open-file limit, CPU time (per process and system-wide) and memory from /proc, and
//! batched `sendmmsg`/`recvmmsg`. Linux only.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use crate::gso::{CmsgBuf, gro_size, set_recv_control};

/// An epoll instance, closed on drop. Level-triggered: a socket drained only partly is
/// reported again by the next wait.
pub struct Epoll {
    fd: RawFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll { fd })
    }

    /// Watches `fd` for readability, reporting `token` with each event.
    pub fn add(&self, fd: &impl AsRawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` lives across the call; the fd is open (borrowed).
        let r = unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn remove(&self, fd: &impl AsRawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; errors (fd not registered) are harmless here.
        unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_DEL, fd.as_raw_fd(), &mut ev) };
    }

    /// Waits at most `timeout` (rounded down to milliseconds) and returns the tokens of the
    /// ready sockets in `out` (cleared first).
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration, out: &mut Vec<u64>) {
        out.clear();
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let cap = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` is a valid buffer of `cap` entries.
        let n = unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), cap, ms) };
        for ev in events.iter().take(n.max(0) as usize) {
            let token = ev.u64;
            out.push(token);
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

/// An empty event buffer for [`Epoll::wait`].
pub fn event_buffer(n: usize) -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; n]
}

/// Raises the soft open-file limit to the hard limit (10,000 allocations need 10,000
/// sockets) and returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-parameter.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// User plus system CPU seconds of a process (`/proc/PID/stat` fields 14 and 15), or `None`
/// if the process is gone or the file does not parse.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    cpu_times(pid).map(|(user, system)| user + system)
}

/// User and system CPU seconds of a process, apart (`/proc/PID/stat` fields 14 and 15). With
/// tick-based accounting the system time includes the softirq work that ran on top of the
/// process (packets it sent, received by someone else in its context).
pub fn cpu_times(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = clock_ticks();
    Some((utime as f64 / hz, stime as f64 / hz))
}

/// The whole machine's CPU time from the `cpu` line of /proc/stat (all cores together), in
/// seconds since boot. Differences of two samples are what a benchmark reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SystemCpu {
    /// Everything but idle and iowait: user + nice + system + irq + softirq + steal.
    pub busy: f64,
    /// Time in softirq context (network receive processing, NAPI and XDP on veth), which
    /// the kernel charges to no process.
    pub softirq: f64,
    /// Time in hard interrupts.
    pub irq: f64,
    /// Time the hypervisor ran something else while this machine wanted to run.
    pub steal: f64,
}

impl SystemCpu {
    /// The CPU time between `earlier` and `self`.
    pub fn since(&self, earlier: &SystemCpu) -> SystemCpu {
        SystemCpu {
            busy: self.busy - earlier.busy,
            softirq: self.softirq - earlier.softirq,
            irq: self.irq - earlier.irq,
            steal: self.steal - earlier.steal,
        }
    }
}

/// A sample of the machine's CPU time (/proc/stat), or `None` if it cannot be read.
pub fn system_cpu() -> Option<SystemCpu> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&stat, clock_ticks())
}

/// Parses the aggregate `cpu` line of /proc/stat (fields in clock ticks: user nice system
/// idle iowait irq softirq steal ...; guest time is already inside user).
fn parse_proc_stat(stat: &str, hz: f64) -> Option<SystemCpu> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let mut f = [0u64; 8];
    let mut fields = line.split_whitespace().skip(1);
    for v in &mut f {
        *v = fields.next()?.parse().ok()?;
    }
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = f;
    let s = |ticks: u64| ticks as f64 / hz;
    Some(SystemCpu {
        busy: s(user + nice + system + irq + softirq + steal),
        softirq: s(softirq),
        irq: s(irq),
        steal: s(steal),
    })
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Resident set size of a process in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Buffers and headers for `recvmmsg`/`sendmmsg` on a connected socket: `n` slots of `cap`
/// bytes each, so one system call moves a batch of datagrams.
pub struct Mmsg {
    bufs: Vec<u8>,
    cap: usize,
    lens: Vec<usize>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Control buffers for receiving the `UDP_GRO` segment size (empty: not asked for).
    ctrl: Vec<CmsgBuf>,
    gro: Vec<Option<usize>>,
}

impl Mmsg {
    pub fn new(n: usize, cap: usize) -> Mmsg {
        Mmsg {
            bufs: vec![0; n * cap],
            cap,
            lens: vec![0; n],
            iovs: (0..n)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
            hdrs: (0..n).map(|_| unsafe { std::mem::zeroed() }).collect(),
            ctrl: Vec::new(),
            gro: vec![None; n],
        }
    }

    /// As [`Mmsg::new`], receiving with room for the `UDP_GRO` control message, so a
    /// coalesced datagram (on a socket with `UDP_GRO` on) reports its segment size in
    /// [`Mmsg::gro_size`]. `cap` should be [`crate::gso::GRO_BUFFER`].
    pub fn with_gro(n: usize, cap: usize) -> Mmsg {
        let mut m = Mmsg::new(n, cap);
        m.ctrl = vec![CmsgBuf::default(); n];
        m
    }

    /// The segment size of datagram `i` of the last [`Mmsg::recv`] if the kernel coalesced
    /// it (see [`crate::gso::segments`]).
    pub fn gro_size(&self, i: usize) -> Option<usize> {
        self.gro.get(i).copied().flatten()
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Slot `i` for writing a datagram of up to `cap` bytes.
    pub fn slot(&mut self, i: usize) -> &mut [u8] {
        let cap = self.cap;
        &mut self.bufs[i * cap..(i + 1) * cap]
    }

    /// Datagram `i` of the last [`Mmsg::recv`].
    pub fn received(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.cap..i * self.cap + self.lens[i].min(self.cap)]
    }

    /// Points the headers at the slots, the first `k` with lengths from `len`.
    fn prepare(&mut self, k: usize, len: impl Fn(usize) -> usize) {
        let base = self.bufs.as_mut_ptr();
        for i in 0..k {
            // SAFETY: i < n, so the slot lies inside `bufs`.
            self.iovs[i].iov_base = unsafe { base.add(i * self.cap) }.cast();
            self.iovs[i].iov_len = len(i).min(self.cap);
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = std::ptr::null_mut();
            h.msg_hdr.msg_namelen = 0;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
    }

    /// Sends the first `k` slots, slot `i` holding `len(i)` bytes; returns how many went.
    pub fn send(
        &mut self,
        fd: &impl AsRawFd,
        k: usize,
        len: impl Fn(usize) -> usize,
    ) -> io::Result<usize> {
        let k = k.min(self.slots());
        self.prepare(k, len);
        // SAFETY: the first k headers point at live slots of `bufs`.
        let r = unsafe { libc::sendmmsg(fd.as_raw_fd(), self.hdrs.as_mut_ptr(), k as u32, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// Receives up to one batch without waiting; returns how many arrived.
    pub fn recv(&mut self, fd: &impl AsRawFd) -> io::Result<usize> {
        let n = self.slots();
        let cap = self.cap;
        self.prepare(n, |_| cap);
        for (h, c) in self.hdrs.iter_mut().zip(self.ctrl.iter_mut()) {
            set_recv_control(&mut h.msg_hdr, c);
        }
        // SAFETY: all n headers point at live slots of `bufs` (and control buffers).
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = r as usize;
        for i in 0..r {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.gro[i] = if self.ctrl.is_empty() {
                None
            } else {
                gro_size(&self.hdrs[i].msg_hdr)
            };
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_is_everything_but_idle_and_iowait() {
        let stat =
            "cpu  100 20 30 5000 70 4 60 8 0 0\ncpu0 50 10 15 2500 35 2 30 4 0 0\nintr 1 2\n";
        let c = parse_proc_stat(stat, 100.0).expect("parses");
        assert_eq!(c.busy, (100 + 20 + 30 + 4 + 60 + 8) as f64 / 100.0);
        assert_eq!(c.softirq, 0.6);
        assert_eq!(c.irq, 0.04);
        assert_eq!(c.steal, 0.08);
        let later = SystemCpu {
            busy: c.busy + 1.5,
            softirq: c.softirq + 0.5,
            ..c
        };
        let d = later.since(&c);
        assert!((d.busy - 1.5).abs() < 1e-9 && (d.softirq - 0.5).abs() < 1e-9);
        assert_eq!(d.irq, 0.0);
    }

    #[test]
    fn proc_stat_without_an_aggregate_line_or_with_short_fields_is_refused() {
        assert_eq!(parse_proc_stat("cpu0 1 2 3 4 5 6 7 8\n", 100.0), None);
        assert_eq!(parse_proc_stat("cpu  1 2 3\n", 100.0), None);
        assert_eq!(parse_proc_stat("cpu  1 2 x 4 5 6 7 8\n", 100.0), None);
        assert_eq!(parse_proc_stat("", 100.0), None);
    }

    #[test]
    fn this_machine_reports_its_cpu_time() {
        let c = system_cpu().expect("/proc/stat is readable on Linux");
        assert!(c.busy > 0.0 && c.busy >= c.softirq + c.irq + c.steal);
    }
}
