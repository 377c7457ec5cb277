//! The driver side of RFC 6062 TCP allocations: relay listeners, outgoing connections to
//! peers, handing a peer connection to the worker that holds its client data connection, and
//! piping bytes between the two. What is allowed is decided in `crate::turn` (tcp_relay).

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::rc::Weak;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::debug;

use super::Worker;
use super::streams::TcpIo;
use crate::net::now;
use crate::turn::error::RequestError;
use crate::turn::{BindError, ConnectionId, FiveTuple, RelayId, connection_owner};

/// A TCP listener on a relayed address. SO_REUSEPORT lets the outgoing connections of
/// Connect bind the same address (RFC 6062 §5.2: the local endpoint is the relayed address).
fn relay_listener(addr: SocketAddr) -> io::Result<StdTcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s.into())
}

async fn connect_from(from: SocketAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    let s = if from.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(from)?;
    s.connect(peer).await
}

impl TcpIo {
    pub(super) fn listen_relay(
        &mut self,
        relay: RelayId,
        addr: SocketAddr,
    ) -> Result<(), BindError> {
        let l = match relay_listener(addr) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(BindError::AddrInUse),
            Err(e) => {
                debug!(%addr, error = %e, "cannot open TCP relay listener");
                return Err(BindError::Other);
            }
        };
        let l = TcpListener::from_std(l).map_err(|_| BindError::Other)?;
        let task = tokio::task::spawn_local(relay_accept_loop(self.me.clone(), l, relay));
        self.relay_listeners.insert(relay, task.abort_handle());
        Ok(())
    }

    pub(super) fn close_relay(&mut self, relay: RelayId) {
        if let Some(t) = self.relay_listeners.remove(&relay) {
            t.abort();
        }
    }

    pub(super) fn connect_peer(
        &mut self,
        id: ConnectionId,
        from: SocketAddr,
        peer: SocketAddr,
    ) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let limit = shared.cfg.connect_timeout;
        let me = self.me.clone();
        let task = tokio::task::spawn_local(async move {
            let stream = match tokio::time::timeout(limit, connect_from(from, peer)).await {
                Ok(Ok(s)) => Some(s),
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "connect to peer failed");
                    None
                }
                Err(_) => {
                    debug!(%peer, "connect to peer timed out (tcp.connect-timeout)");
                    None
                }
            };
            let Some(st) = me.upgrade() else {
                return;
            };
            let mut g = st.borrow_mut();
            let w = &mut *g;
            w.io.tcp.connecting.remove(&id);
            let ok = stream.is_some();
            if w.core.handle_peer_connected(now(), id, ok, &mut w.io)
                && let Some(s) = stream
            {
                w.io.tcp.pending_peers.insert(id, s);
            }
        });
        self.connecting.insert(id, task.abort_handle());
        true
    }

    pub(super) fn close_peer_connection(&mut self, id: ConnectionId) {
        self.pending_peers.remove(&id);
        if let Some(t) = self.connecting.remove(&id) {
            t.abort();
        }
        if let Some(t) = self.splices.remove(&id) {
            t.abort();
        }
        if let Some(w) = self.moved.remove(&id)
            && let Some(tx) = self.jobs.get(w)
        {
            let _ = tx.send(Box::new(move |_, io| {
                if let Some(t) = io.tcp.splices.remove(&id) {
                    t.abort();
                }
            }));
        }
    }

    /// Tells the worker owning `id` that its data connection is gone.
    pub(super) fn notify_closed(&mut self, id: ConnectionId) {
        if let Some(tx) = self.jobs.get(connection_owner(id)) {
            let _ = tx.send(Box::new(move |core, io| {
                core.handle_peer_connection_closed(id);
                io.tcp.moved.remove(&id);
            }));
        }
    }

    pub(super) fn claim_connection(&mut self, id: ConnectionId, data: &FiveTuple, username: &str) {
        if let Some(o) = self.conns.get(data) {
            o.claiming.set(true);
        }
        let data = *data;
        let here = self.index;
        let Some(reply) = self.jobs.get(here).cloned() else {
            return;
        };
        let owner = connection_owner(id);
        let username = username.to_string();
        let ask = move |core: &mut crate::turn::Server, io: &mut super::DriverIo| {
            let mut res = core.take_connection(id, &username);
            let mut stream = None;
            if res.is_ok() {
                match io
                    .tcp
                    .pending_peers
                    .remove(&id)
                    .and_then(|s| s.into_std().ok())
                {
                    Some(s) => {
                        stream = Some(s);
                        io.tcp.moved.insert(id, here);
                    }
                    None => {
                        core.handle_peer_connection_closed(id);
                        res = Err(RequestError::BadRequest);
                    }
                }
            }
            let _ = reply.send(Box::new(move |core, io| {
                if let Some(s) = stream {
                    io.tcp.arriving.insert(data, (id, s));
                }
                let bound = core.handle_connection_claimed(&data, id, res, io);
                io.tcp.arriving.remove(&data);
                if !bound {
                    if res.is_ok() {
                        io.tcp.notify_closed(id);
                    }
                    if let Some(o) = io.tcp.conns.get(&data) {
                        o.claiming.set(false);
                        o.reader_wake.notify_one();
                    }
                }
            }));
        };
        match self.jobs.get(owner) {
            Some(tx) => {
                let _ = tx.send(Box::new(ask));
            }
            // No such worker: nobody can own the id.
            None => {
                if let Some(me) = self.jobs.get(here) {
                    let _ = me.send(Box::new(move |core, io| {
                        core.handle_connection_claimed(
                            &data,
                            id,
                            Err(RequestError::BadRequest),
                            io,
                        );
                        if let Some(o) = io.tcp.conns.get(&data) {
                            o.claiming.set(false);
                            o.reader_wake.notify_one();
                        }
                    }));
                }
            }
        }
    }

    pub(super) fn bind_data_connection(&mut self, id: ConnectionId, data: &FiveTuple) {
        let Some((_, s)) = self.arriving.remove(data) else {
            return;
        };
        match self.conns.get(data) {
            Some(o) => {
                *o.handoff.borrow_mut() = Some((id, s));
                o.reader_wake.notify_one();
            }
            None => self.notify_closed(id),
        }
    }
}

async fn relay_accept_loop(state: Weak<RefCell<Worker>>, l: TcpListener, relay: RelayId) {
    loop {
        let (sock, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(?relay, error = %e, "relay accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(st) = state.upgrade() else {
            return;
        };
        let mut g = st.borrow_mut();
        let w = &mut *g;
        if let Some(id) = w.core.handle_peer_connection(now(), relay, peer, &mut w.io) {
            let _ = sock.set_nodelay(true);
            w.io.tcp.pending_peers.insert(id, sock);
        }
    }
}
