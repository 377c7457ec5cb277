//! Readiness for systemd `Type=notify`: with `$NOTIFY_SOCKET` set (a path, or `@name` in the
//! abstract namespace), turnd sends READY=1 once its listeners are bound (a Binding request
//! sent after it is answered), and STOPPING=1 when told to stop; with no allocation live a
//! SIGTERM then exits 0.

use crate::common;
use crate::lifecycle_util;

use std::net::UdpSocket;
use std::time::Duration;

use common::binding_request;
use lifecycle_util::{GUARD, NotifiedServer, Scratch};

fn binding_answered(server: &NotifiedServer) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(&binding_request(), server.addr).unwrap();
    let mut buf = [0u8; 1500];
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if n >= 20 && buf[..2] == [0x01, 0x01])
}

fn ready_then_stopping(abstract_socket: bool) {
    let scratch = Scratch::new("sd-notify");
    let path = scratch.write(
        "turnd.toml",
        "[auth]\nusers = [{ name = \"alice\", password = \"wonderland\" }]\n",
    );
    // start() returns once READY=1 has arrived on the socket.
    let mut server = NotifiedServer::start(&scratch, &path, abstract_socket);
    assert!(
        abstract_socket == server.notify_name.starts_with('@'),
        "{}",
        server.notify_name
    );
    assert!(binding_answered(&server), "listening when READY=1 is sent");
    server.signal("TERM");
    let stopping = server.expect_notify("STOPPING=1").expect("STOPPING=1");
    assert!(
        stopping.contains("STATUS=draining 0 allocations"),
        "{stopping}"
    );
    assert_eq!(server.wait_exit(GUARD), Some(0));
}

#[test]
fn ready_and_stopping_on_a_path_socket() {
    ready_then_stopping(false);
}

#[test]
fn ready_and_stopping_on_an_abstract_socket() {
    ready_then_stopping(true);
}
