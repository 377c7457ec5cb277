//! A worker's own epoll set for its UDP sockets (listeners and relay sockets).
//!
//! The set is level-triggered and registered with the worker's tokio reactor as one file
//! descriptor (`AsyncFd`), so thousands of relay sockets cost tokio nothing: no task, no
//! registration and no buffer each. A socket leaves the set and closes synchronously in
//! [`Epoll::remove`] + drop, so its port is free again before the next line of the caller
//! runs (a Refresh with LIFETIME 0 frees the port before its response is sent).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An epoll instance, closed on drop.
pub(super) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(super) fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `fd` for readability (level-triggered), reporting `token` with each event.
    pub(super) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` lives across the call; the kernel checks `fd`.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` (the caller closes it next). Errors (not watched) are harmless.
    pub(super) fn remove(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`.
        unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// The ready sockets, without waiting: fills `events` and returns how many are set.
    pub(super) fn poll_now(&self, events: &mut [libc::epoll_event]) -> usize {
        let cap = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` is a valid buffer of `cap` entries.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), cap, 0) };
        n.max(0) as usize
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An empty event buffer for [`Epoll::poll_now`].
pub(super) fn event_buffer(n: usize) -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; n]
}
