//! Test support, compiled only for tests (the `testing` feature, which the crate's own tests,
//! benches, the tools' examples and `fuzz/` turn on; release builds leave it out): the one
//! STUN client and the simulated driver of everything that drives the sans-IO core without
//! sockets, [`ServerConfig::testing`](crate::turn::ServerConfig::testing), the fuzz
//! target bodies ([`fuzz`]), and what the integration tests of turnd and of the tools use to
//! run the real binary ([`process`]).
//!
//! Not part of the server's API.

mod client;
mod config;
pub mod fuzz;
mod io;
pub mod process;

pub use client::{LastToClient, TestClient};
pub use io::{CountingIo, SimIo, TcpCalls};
