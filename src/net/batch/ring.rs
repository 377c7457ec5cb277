//! The io_uring a worker's send queue hands a flush's lone messages to: one `SENDMSG` entry
//! per message, all submitted by one `io_uring_enter`.

use std::os::fd::RawFd;

use super::send::TX_BATCH;

/// An io_uring for a worker's sends (Linux 5.17 or later with `SENDMSG`; refused where
/// io_uring is disabled, e.g. by `kernel.io_uring_disabled` or a seccomp filter). Entries
/// carry `MSG_DONTWAIT`, so the kernel completes each one as it submits it and no send
/// outlives [`SendQueue::flush`].
pub(super) struct SendRing {
    pub(super) ring: io_uring::IoUring,
    /// Submitting failed: the queue goes back to `sendmmsg` for good.
    pub(super) broken: bool,
}

impl SendRing {
    pub(super) fn new() -> std::io::Result<SendRing> {
        let ring = io_uring::IoUring::builder()
            // One completion per entry, even after an entry fails.
            .setup_submit_all()
            .build(TX_BATCH as u32)?;
        // Linux 5.17 (the feature is only a marker of the version): an entry with
        // MSG_DONTWAIT completes with EAGAIN instead of waiting for room, which `flush`
        // relies on, in every kernel since well before it.
        if !ring.params().is_feature_skip_cqe_on_success() {
            return Err(std::io::Error::other("io_uring is older than Linux 5.17"));
        }
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(io_uring::opcode::SendMsg::CODE) {
            return Err(std::io::Error::other("io_uring cannot SENDMSG"));
        }
        Ok(SendRing {
            ring,
            broken: false,
        })
    }

    /// Free entries in the submission queue.
    pub(super) fn room(&mut self) -> usize {
        let sq = self.ring.submission();
        sq.capacity() - sq.len()
    }

    /// Queues `hdr` to be sent from `fd` (call [`SendRing::room`] first).
    pub(super) fn push(&mut self, fd: RawFd, hdr: &libc::msghdr, tag: u64) {
        let e = io_uring::opcode::SendMsg::new(io_uring::types::Fd(fd), hdr)
            .flags(libc::MSG_DONTWAIT as u32)
            .build()
            .user_data(tag);
        // SAFETY: the header and all it points at belong to the send queue, which does not
        // touch them until `SendQueue::complete` has reaped this entry. There is room (the
        // caller checked), so the push cannot fail.
        let _ = unsafe { self.ring.submission().push(&e) };
    }
}
