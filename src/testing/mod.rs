//! Test support, compiled only for tests (the `testing` feature, which the crate's own tests,
//! benches, the tools' examples and `fuzz/` turn on; release builds leave it out): the one
//! STUN client and the simulated driver of everything that drives the sans-IO core without
//! sockets, [`ServerConfig::testing`](crate::turn::ServerConfig::testing), and the fuzz
//! target bodies ([`fuzz`]).
//!
//! Not part of the server's API.

mod client;
mod config;
pub mod fuzz;
mod io;

pub use client::{LastToClient, TestClient};
pub use io::{CountingIo, SimIo, TcpCalls};
