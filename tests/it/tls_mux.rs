//! `tls.mux = true`: one TCP port serves plain STUN/TURN and TLS, told apart by the first
//! byte (0x16 starts a TLS handshake); UDP on the same port is unaffected.

use crate::common;

use common::stream::{StreamClient, TempDir, TestCert, build_request, mapped, start_with_config};
use stun::message::METHOD_BINDING;

fn binding(c: &mut StreamClient) -> std::net::SocketAddr {
    let req = build_request(METHOD_BINDING, &[], None);
    c.send_raw(&req.raw);
    mapped(
        &c.recv_response(req.transaction_id)
            .expect("binding response"),
    )
}

#[test]
fn plain_and_tls_on_one_port() {
    let dir = TempDir::new("mux");
    let cert = TestCert::new(&dir);
    let config = format!(
        "[tls]\nmux = true\ncert = {:?}\nkey = {:?}\n",
        cert.cert, cert.key
    );
    let server = start_with_config(&dir, &config, &[]);
    let mut plain = StreamClient::tcp(server.addr);
    assert_eq!(binding(&mut plain), plain.local);
    let mut tls = StreamClient::tls(server.addr, cert.client_config(true, &[]));
    assert_eq!(binding(&mut tls), tls.local);
    // And once more each way, interleaved on live connections.
    assert_eq!(binding(&mut plain), plain.local);
    assert_eq!(binding(&mut tls), tls.local);
}
