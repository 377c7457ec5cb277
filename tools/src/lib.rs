//! What turnd's tools share: the load tool (`turnd-load`), the benchmark floor
//! (`turnd-floor`) and the cost examples. Linux only.
//!
//! - [`addr`]: where the tools may send traffic (loopback and the benchmarking ranges);
//! - [`gso`]: UDP segmentation offload (GSO sends, GRO reads) for bursts;
//! - [`sys`]: epoll, the open-file limit, CPU time (per process and system-wide) and
//!   memory from /proc, batched `sendmmsg`/`recvmmsg`;
//! - [`syscall_cost`]: the kernel's CPU cost per loopback datagram, with and without the
//!   offloads (`turnd-floor --syscall-cost`, `examples/uring_cost.rs`).
//!
//! The floor's send queue is turnd's own ([`turnd::net::SendQueue`]), so the floor pays the
//! kernel exactly what turnd pays.

pub mod addr;
pub mod gso;
pub mod sys;
pub mod syscall_cost;
