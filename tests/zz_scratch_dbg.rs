mod common;
use common::*;
use stun::attributes::*;
use stun::message::*;
#[test]
fn dbg() {
    let addr: std::net::SocketAddr = std::env::var("SRV").unwrap().parse().unwrap();
    let mut c = RawClient::new(addr, "alice", "wonderland");
    let r = c.request(
        METHOD_ALLOCATE,
        &[
            udp_transport(),
            (ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]),
        ],
    );
    println!(
        "alloc {:?} {:?}",
        r.code(),
        r.xor_addrs(ATTR_XOR_RELAYED_ADDRESS)
    );
    let peer = peer_socket("::1");
    let pa = peer.local_addr().unwrap();
    println!("peer {pa}");
    let r = c.request(METHOD_CREATE_PERMISSION, &[peer_attr(pa)]);
    println!("perm {:?}", r.code());
    c.send_raw(&send_indication(pa, b"xx"));
    let mut buf = [0u8; 100];
    println!("{:?}", peer.recv_from(&mut buf));
}
