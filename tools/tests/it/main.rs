//! The tools' integration tests, in one test binary: the load tool (`turnd-load`) and the
//! floor forwarder (`turnd-floor`) against the real turnd on loopback (found and kept up to
//! date by [`common::turnd_bin`]) and against each other.

mod common;
mod floor_gso;
mod floor_syscall_cost;
mod load_tool;
mod load_tool_bursts;
mod load_tool_kernel;
mod load_tool_rtp;
