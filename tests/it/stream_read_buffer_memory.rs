//! A TCP or TLS connection's read buffer grows with the bytes that arrive, not with the
//! length a header announces: 200 connections that each send a STUN header announcing
//! 65,532 bytes (and nothing more) cost the server a few KiB each, not the 64 KiB buffer the
//! announced message would need.
//!
//! Each connection first sends a whole Binding request in the same write as the header; its
//! answer shows the server has read both (the header is examined in the same pass as the
//! request before it). The bound is on memory, never on time.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::stream::{StreamClient, TempDir, TestCert, build_request, rss_kib, start_with_config};
use rustls::ClientConfig;
use stun::message::METHOD_BINDING;

/// Connections measured (each transport).
const CONNS: usize = 200;
/// Connections opened before the baseline is taken, so that the server's allocator and
/// tables have warmed up.
const WARMUP: usize = 20;
/// Most resident memory one such connection may cost over TCP (about 11 KiB in a debug build),
/// and over TLS with its session (about 18 KiB). With a read buffer sized by the announced
/// length it is about 70 KiB more.
const MAX_KIB_TCP: u64 = 16;
const MAX_KIB_TLS: u64 = 32;

/// A Binding request, then the 20-byte header of a Binding request announcing 65,532 bytes
/// of attributes that never come, in one write; returns once the Binding is answered.
fn stall_after_binding(c: &mut StreamClient) {
    let req = build_request(METHOD_BINDING, &[], None);
    let mut bytes = req.raw.clone();
    let mut header = req.raw[..20].to_vec();
    header[2..4].copy_from_slice(&65_532u16.to_be_bytes());
    header[8] ^= 0xFF; // another transaction id
    bytes.extend_from_slice(&header);
    c.send_raw(&bytes);
    assert!(
        c.recv_response(req.transaction_id).is_some(),
        "the Binding before the header is answered"
    );
}

/// Opens `n` stalled connections with `connect`, and returns them with the server's RSS
/// growth over them, in KiB per connection.
fn growth_per_connection(
    pid: u32,
    n: usize,
    connect: &dyn Fn() -> StreamClient,
) -> (Vec<StreamClient>, u64) {
    let mut held = Vec::new();
    for _ in 0..WARMUP {
        let mut c = connect();
        stall_after_binding(&mut c);
        held.push(c);
    }
    let before = rss_kib(pid);
    for _ in 0..n {
        let mut c = connect();
        stall_after_binding(&mut c);
        held.push(c);
    }
    let after = rss_kib(pid);
    (held, after.saturating_sub(before) / n as u64)
}

fn start(dir: &TempDir, cert: &TestCert, tls: SocketAddr) -> common::TestServer {
    let config = format!(
        "[tcp]\nmax-connections-per-ip = 0\nauth-timeout = 600\n\
         [tls]\nlisten = [\"{tls}\"]\ncert = {:?}\nkey = {:?}\n",
        cert.cert, cert.key
    );
    start_with_config(dir, &config, &[])
}

#[test]
fn announced_length_costs_no_memory_until_it_arrives() {
    let dir = TempDir::new("read-buffer");
    let cert = TestCert::new(&dir);
    let tls: SocketAddr = format!("127.0.0.1:{}", common::stream::free_tcp_port())
        .parse()
        .unwrap();
    let server = start(&dir, &cert, tls);
    let pid = server.pid();

    let addr = server.addr;
    let (tcp_held, tcp_kib) = growth_per_connection(pid, CONNS, &|| StreamClient::tcp(addr));
    assert!(
        tcp_kib < MAX_KIB_TCP,
        "TCP: {tcp_kib} KiB of server memory per connection holding a 20-byte header \
         (at most {MAX_KIB_TCP})"
    );

    let config: Arc<ClientConfig> = cert.client_config(true, &[]);
    let (tls_held, tls_kib) =
        growth_per_connection(pid, CONNS, &|| StreamClient::tls(tls, config.clone()));
    assert!(
        tls_kib < MAX_KIB_TLS,
        "TLS: {tls_kib} KiB of server memory per connection holding a 20-byte header \
         (at most {MAX_KIB_TLS})"
    );
    eprintln!("KiB per stalled connection: tcp {tcp_kib}, tls {tls_kib}");
    drop((tcp_held, tls_held));
}
