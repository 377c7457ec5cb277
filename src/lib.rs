//! turnd: a STUN/TURN relay server.
//!
//! The protocol core (`stun`, `auth`, `turn`) does no I/O: time, randomness and sockets are
//! the driver's (`net`). See `../shared/DESIGN.md` for the picture.

pub mod admin;
pub mod auth;
pub mod check_config;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod lifecycle;
pub mod logging;
pub mod migrate;
pub mod net;
pub mod quality;
pub mod sd_notify;
pub mod stun;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod turn;
