//! TCP and TLS client connections ([RFC 8656 §3.1](https://www.rfc-editor.org/rfc/rfc8656#section-3.1)):
//! accept, PROXY v2, TLS handshake, framing, bounded write queues, limits and timeouts.
//!
//! Each worker owns one SO_REUSEPORT listener per stream address, so a connection, the
//! allocation made on it and that allocation's relay live on the worker that accepted it. A
//! connection is two tasks on the worker's LocalSet: the reader cuts frames out of the byte
//! stream ([`crate::stun::framing`]) and hands them to the core; the writer drains a bounded
//! per-connection queue that [`crate::turn::Io::send_to_client`] appends to. When the
//! connection closes, its allocation ends (RFC 8656 §3.1: the allocation is bound to it).

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::Worker;
use super::streams::{Outbox, Shared, TotalSlot, WorkerStreams};
use super::{begin_batch, end_batch};
use crate::net::{now, proxy};
use crate::stun::framing::{Frame, next_frame};
use crate::turn::{ConnectionId, FiveTuple, Transport};

/// Room for the largest STUN message (20 + 65532) or ChannelData (4 + 65535 + pad): the
/// most a connection's read buffer grows to.
const READ_BUF: usize = 65_536 + 64;
/// A connection's read buffer to begin with, and what it shrinks back to; it grows with the
/// bytes that arrive (see [`read_buf_len`]), never with the length a header announces.
const READ_BUF_START: usize = 4096;
/// How long a closing connection may take to flush what is queued for it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed accept (EMFILE and the like), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// TLS record content type "handshake": the first byte of a ClientHello (RFC 8446 §5.1).
const TLS_HANDSHAKE: u8 = 0x16;

/// A TCP listener bound with SO_REUSEPORT so each worker can hold its own.
pub(crate) fn reuseport_tcp(addr: SocketAddr) -> io::Result<StdTcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Starts the accept loops of one worker's stream listeners.
pub(super) fn spawn_listeners(state: &Rc<RefCell<Worker>>, streams: WorkerStreams) {
    {
        let mut g = state.borrow_mut();
        g.core.set_worker_index(streams.index);
        let t = &mut g.io.tcp;
        t.shared = Some(streams.shared.clone());
        t.me = Rc::downgrade(state);
        t.index = streams.index;
        t.jobs = streams.jobs;
    }
    for (addr, l, transport) in streams.listeners {
        match TcpListener::from_std(l) {
            Ok(l) => {
                tokio::task::spawn_local(accept_loop(
                    Rc::downgrade(state),
                    streams.shared.clone(),
                    l,
                    addr,
                    transport,
                ));
            }
            Err(e) => warn!(%addr, error = %e, "cannot register stream listener"),
        }
    }
}

async fn accept_loop(
    state: Weak<RefCell<Worker>>,
    shared: Arc<Shared>,
    listener: TcpListener,
    local: SocketAddr,
    transport: Transport,
) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(%local, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if state.strong_count() == 0 {
            return;
        }
        let Some(slot) = shared.acquire_total() else {
            debug!(%peer, "connection refused: tcp.max-connections reached");
            continue;
        };
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = sock.set_nodelay(true);
        tokio::task::spawn_local(connection(
            state.clone(),
            shared.clone(),
            sock,
            peer,
            local,
            transport,
            slot,
        ));
    }
}

/// Why a connection ended, for the log.
#[derive(Debug)]
enum End {
    /// ConnectionBind succeeded: join with this peer connection, after these bytes.
    Splice(ConnectionId, std::net::TcpStream, Vec<u8>),
    Closed,
    Error,
    Broken,
    Unauthenticated,
    Idle,
    Shutdown,
}

/// One accepted connection: PROXY header, TLS or plain, then the frame loop.
async fn connection(
    state: Weak<RefCell<Worker>>,
    shared: Arc<Shared>,
    mut sock: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    listener: Transport,
    _slot: TotalSlot,
) {
    let hs = shared.cfg.handshake_timeout;
    // Without PROXY the peer is the client: count it before waiting for any byte, so that
    // connections stalled before their first byte (a mux port's peek) count against
    // tcp.max-connections-per-ip too. With PROXY the client is known only after the header.
    let early_slot = if shared.cfg.proxy_protocol {
        None
    } else {
        match shared.acquire_ip(peer.ip()) {
            Some(s) => Some(s),
            None => {
                debug!(%peer, "connection refused: tcp.max-connections-per-ip reached");
                return;
            }
        }
    };
    let setup = async {
        let client = if shared.cfg.proxy_protocol {
            proxy::read_header(&mut sock).await?.unwrap_or(peer)
        } else {
            peer
        };
        let transport = if shared.cfg.mux && shared.certs.is_some() {
            let mut first = [0u8; 1];
            if sock.peek(&mut first).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if first[0] == TLS_HANDSHAKE {
                Transport::Tls
            } else {
                Transport::Tcp
            }
        } else {
            listener
        };
        Ok::<_, io::Error>((client, transport))
    };
    let (client, transport) = match tokio::time::timeout(hs, setup).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            shared
                .stats
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, error = %e, "connection setup failed");
            return;
        }
        Err(_) => {
            shared
                .stats
                .handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "connection setup timed out");
            return;
        }
    };
    let Some(_ip_slot) = early_slot.or_else(|| shared.acquire_ip(client.ip())) else {
        debug!(%client, "connection refused: tcp.max-connections-per-ip reached");
        return;
    };
    let _open = shared.open_as(transport);
    let ft = FiveTuple {
        client,
        server: local,
        transport,
    };
    if transport == Transport::Tls {
        let Some(certs) = &shared.certs else {
            return;
        };
        let acceptor = TlsAcceptor::from(certs.current());
        match tokio::time::timeout(hs, acceptor.accept(sock)).await {
            Ok(Ok(tls)) => serve(state, &shared, ft, tls).await,
            Ok(Err(e)) => {
                shared
                    .stats
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                debug!(%client, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                shared
                    .stats
                    .handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                debug!(%client, "TLS handshake timed out (tls.handshake-timeout)");
            }
        }
    } else {
        serve(state, &shared, ft, sock).await;
    }
}

/// Runs a connection's reader here and its writer in a task until either ends, then ends
/// the allocation bound to it.
async fn serve<S>(state: Weak<RefCell<Worker>>, shared: &Arc<Shared>, ft: FiveTuple, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let outbox = Rc::new(Outbox::new(shared.cfg.write_queue));
    {
        let Some(st) = state.upgrade() else {
            return;
        };
        let mut g = st.borrow_mut();
        if g.io.tcp.conns.contains_key(&ft) {
            debug!(client = %ft.client, "connection refused: 5-tuple already in use");
            return;
        }
        g.io.tcp.conns.insert(ft, outbox.clone());
    }
    let (mut rd, wr) = tokio::io::split(stream);
    let writer = tokio::task::spawn_local(write_loop(wr, outbox.clone()));
    let end = read_loop(&state, shared, &ft, &mut rd, &outbox).await;
    if let End::Splice(id, peer, leftover) = end {
        if let Some(st) = state.upgrade() {
            st.borrow_mut().io.tcp.conns.remove(&ft);
        }
        outbox.keep_open.set(true);
        outbox.close();
        let abort = writer.abort_handle();
        match tokio::time::timeout(CLOSE_GRACE, writer).await {
            Ok(Ok(wr)) => {
                let stream = rd.unsplit(wr);
                run_splice(&state, id, stream, peer, leftover).await;
            }
            _ => {
                abort.abort();
                if let Some(st) = state.upgrade() {
                    st.borrow_mut().io.tcp.notify_closed(id);
                }
            }
        }
        debug!(client = %ft.client, id, "data connection closed");
        return;
    }
    match end {
        End::Unauthenticated => {
            shared.stats.auth_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        End::Idle => {
            shared.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    if let Some(st) = state.upgrade() {
        let mut g = st.borrow_mut();
        let w = &mut *g;
        w.io.tcp.conns.remove(&ft);
        w.core.close_tuple(&ft, now().mono, &mut w.io);
    }
    outbox.close();
    let abort = writer.abort_handle();
    if tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
        abort.abort();
    }
    debug!(
        client = %ft.client,
        transport = ft.transport.as_str(),
        reason = ?end,
        dropped = outbox.drops(),
        "connection closed"
    );
}

/// Reads and dispatches frames until the stream ends, breaks, or a timeout fires:
/// `tcp.auth-timeout` until the connection holds an allocation, then `tcp.idle-timeout`
/// without a byte either way.
async fn read_loop<R: AsyncRead + Unpin>(
    state: &Weak<RefCell<Worker>>,
    shared: &Shared,
    ft: &FiveTuple,
    rd: &mut R,
    outbox: &Outbox,
) -> End {
    let mut buf = vec![0u8; READ_BUF_START];
    let mut filled = 0;
    let opened = Instant::now();
    let mut authed = false;
    loop {
        let mut start = 0;
        let mut need = 0;
        while !outbox.claiming.get() {
            match next_frame(&buf[start..filled]) {
                Frame::Complete(len) => {
                    let Some(st) = state.upgrade() else {
                        return End::Shutdown;
                    };
                    let mut g = st.borrow_mut();
                    let w = &mut *g;
                    // One frame, one batch: its datagram to another allocation of the
                    // server skips the kernel, as from a UDP client.
                    begin_batch(w);
                    w.core
                        .handle_client(now(), *ft, &buf[start..start + len], &mut w.io);
                    end_batch(w);
                    if !authed {
                        authed = w.core.counters(ft).is_some();
                    }
                    start += len;
                }
                Frame::NeedMore(total) if total <= READ_BUF => {
                    need = total;
                    break;
                }
                Frame::NeedMore(_) | Frame::Invalid => return End::Broken,
            }
        }
        if start > 0 {
            buf.copy_within(start..filled, 0);
            filled -= start;
        }
        let len = read_buf_len(buf.len(), filled, need);
        if len != buf.len() {
            buf.resize(len, 0);
            buf.shrink_to_fit();
        }
        if outbox.claiming.get() {
            // RFC 6062 §5.4: after ConnectionBind the stream carries the peer's bytes, not
            // STUN; wait for the answer before reading on.
            let limit = Instant::now() + shared.cfg.auth_timeout;
            tokio::select! {
                _ = outbox.reader_wake.notified() => {}
                _ = tokio::time::sleep_until(limit.into()) => return End::Unauthenticated,
            }
            if let Some((id, peer)) = outbox.handoff.borrow_mut().take() {
                return End::Splice(id, peer, buf[..filled].to_vec());
            }
            continue;
        }
        let deadline = if authed {
            outbox.active.get() + shared.cfg.idle_timeout
        } else {
            opened + shared.cfg.auth_timeout
        };
        let n = tokio::select! {
            r = rd.read(&mut buf[filled..]) => match r {
                Ok(0) => return End::Closed,
                Ok(n) => n,
                Err(_) => return End::Error,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                if !authed {
                    return End::Unauthenticated;
                }
                if outbox.active.get() + shared.cfg.idle_timeout <= Instant::now() {
                    return End::Idle;
                }
                continue;
            }
        };
        outbox.touch();
        filled += n;
    }
}

/// The length a connection's read buffer of `len` bytes, `filled` of them with the start of
/// a frame that needs `need` bytes in all, should have before the next read. It doubles
/// (up to `need`) only once it is full, so the memory a connection holds follows the bytes
/// it has sent: a header announcing 65,532 bytes costs [`READ_BUF_START`], not 64 KiB. It
/// goes back to [`READ_BUF_START`] once what it holds and the frame it waits for fit there.
fn read_buf_len(len: usize, filled: usize, need: usize) -> usize {
    if filled >= len && need > len {
        return len.saturating_mul(2).clamp(READ_BUF_START, need);
    }
    if len > READ_BUF_START && filled <= READ_BUF_START && need <= READ_BUF_START {
        return READ_BUF_START;
    }
    len
}

/// Drains the outbox into the stream; ends when the outbox is closed and empty or a write
/// fails. At most two buffers of `cap` bytes exist per connection.
async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, outbox: Rc<Outbox>) -> W {
    let mut spare = Vec::new();
    loop {
        if outbox.buf.borrow().is_empty() {
            if outbox.closing.get() {
                if !outbox.keep_open.get() {
                    let _ = wr.shutdown().await;
                }
                break;
            }
            outbox.wake.notified().await;
            continue;
        }
        std::mem::swap(&mut *outbox.buf.borrow_mut(), &mut spare);
        if wr.write_all(&spare).await.is_err() || wr.flush().await.is_err() {
            outbox.closing.set(true);
            break;
        }
        outbox.touch();
        spare.clear();
    }
    wr
}

/// Joins a client data connection with its peer data connection (RFC 6062 §5.4) until
/// either side closes, or the owner closes them (allocation ended); then tells the owner.
async fn run_splice<S>(
    state: &Weak<RefCell<Worker>>,
    id: ConnectionId,
    client: S,
    peer: std::net::TcpStream,
    leftover: Vec<u8>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let task = tokio::task::spawn_local(pipe(client, peer, leftover));
    if let Some(st) = state.upgrade() {
        st.borrow_mut()
            .io
            .tcp
            .splices
            .insert(id, task.abort_handle());
    }
    let aborted = task.await.is_err();
    if !aborted && let Some(st) = state.upgrade() {
        let mut g = st.borrow_mut();
        g.io.tcp.splices.remove(&id);
        g.io.tcp.notify_closed(id);
    }
}

/// Copies both ways with fixed buffers; the first direction to end ends both.
async fn pipe<S: AsyncRead + AsyncWrite + Unpin>(
    client: S,
    peer: std::net::TcpStream,
    leftover: Vec<u8>,
) {
    let Ok(mut peer) = TcpStream::from_std(peer) else {
        return;
    };
    if !leftover.is_empty() && peer.write_all(&leftover).await.is_err() {
        return;
    }
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut pr, mut pw) = peer.split();
    tokio::select! {
        _ = tokio::io::copy(&mut cr, &mut pw) => {}
        _ = tokio::io::copy(&mut pr, &mut cw) => {}
    }
    let _ = cw.shutdown().await;
    let _ = pw.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::worker::streams::StreamConfig;
    use std::net::IpAddr;

    #[test]
    fn outbox_is_bounded_and_counts_drops() {
        let o = Outbox::new(10);
        assert!(o.push(&[1; 6]));
        assert!(!o.push(&[2; 6]), "would pass the cap");
        assert!(o.push(&[3; 4]));
        assert_eq!(o.queued(), 10);
        assert!(!o.push(&[4]));
        assert_eq!(o.drops(), 2);
        o.close();
        assert!(!o.push(&[5]), "nothing is queued after close");
        assert_eq!(o.queued(), 10);
    }

    #[test]
    fn read_buffer_grows_with_bytes_received_and_shrinks_back() {
        const BIG: usize = 20 + 65_532;
        // A header announcing the largest message: no growth until the buffer is full.
        assert_eq!(read_buf_len(READ_BUF_START, 20, BIG), READ_BUF_START);
        assert_eq!(read_buf_len(READ_BUF_START, 4000, BIG), READ_BUF_START);
        // Full: doubles, and never past the frame.
        let mut len = READ_BUF_START;
        let mut steps = Vec::new();
        while len < BIG {
            len = read_buf_len(len, len, BIG);
            steps.push(len);
        }
        assert_eq!(steps, [8192, 16_384, 32_768, 65_536, BIG]);
        assert_eq!(read_buf_len(READ_BUF_START, READ_BUF_START, 5000), 5000);
        // A frame that fits needs no growth even when the buffer is full of a smaller one.
        assert_eq!(
            read_buf_len(READ_BUF_START, READ_BUF_START, READ_BUF_START),
            READ_BUF_START
        );
        // After the big frame: back to the start size once the rest fits there.
        assert_eq!(read_buf_len(BIG, 0, 4), READ_BUF_START);
        assert_eq!(read_buf_len(BIG, 100, 1500), READ_BUF_START);
        // Not while a large frame is still coming in, or more than the start size is held.
        assert_eq!(read_buf_len(BIG, 100, 9000), BIG);
        assert_eq!(read_buf_len(BIG, 5000, 9000), BIG);
    }

    fn cfg(total: usize, per_ip: usize) -> StreamConfig {
        StreamConfig {
            max_connections: total,
            max_per_ip: per_ip,
            auth_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            write_queue: 65_600,
            proxy_protocol: false,
            mux: false,
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn connection_slots_are_capped_and_released() {
        let s = Shared::new(cfg(2, 1), None);
        let a = s.acquire_total().unwrap();
        let _b = s.acquire_total().unwrap();
        assert!(s.acquire_total().is_none());
        drop(a);
        assert!(s.acquire_total().is_some());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let x = s.acquire_ip(ip).unwrap();
        assert!(
            s.acquire_ip(mapped).is_none(),
            "mapped IPv6 counts as the IPv4"
        );
        assert!(s.acquire_ip("192.0.2.2".parse().unwrap()).is_some());
        drop(x);
        assert!(s.acquire_ip(ip).is_some());
        assert_eq!(s.stats.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.refused_per_ip.load(Ordering::Relaxed), 1);
        // IPv6 clients count by their /64.
        let v6 = Shared::new(cfg(0, 2), None);
        let a = v6.acquire_ip("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let _b = v6
            .acquire_ip("2001:db8:1:2:ffff::9".parse().unwrap())
            .unwrap();
        assert!(
            v6.acquire_ip("2001:db8:1:2::3".parse().unwrap()).is_none(),
            "a third address of the same /64 is over the cap"
        );
        assert!(
            v6.acquire_ip("2001:db8:1:3::1".parse().unwrap()).is_some(),
            "another /64 has its own count"
        );
        drop(a);
        assert!(v6.acquire_ip("2001:db8:1:2::3".parse().unwrap()).is_some());
        let unlimited = Shared::new(cfg(0, 0), None);
        let held: Vec<_> = (0..100).filter_map(|_| unlimited.acquire_total()).collect();
        assert_eq!(held.len(), 100);
    }
}
