//! The transaction ids of the Data indications turnd starts are unpredictable: they come from
//! a CSPRNG seeded by the OS. Before, they were SplitMix64 outputs, whose output function is
//! invertible: the first 8 bytes of one id gave the generator's state, which predicted the
//! rest of that id, the next ids and the next relay port. This test runs that prediction
//! against the real server and requires it to fail.

use crate::common;

use std::collections::HashSet;

use common::{RawClient, TestServer, peer_attr, peer_socket, send_indication, udp_transport};
use stun::message::{METHOD_ALLOCATE, METHOD_CREATE_PERMISSION};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
const M1: u64 = 0xBF58_476D_1CE4_E5B9;
const M2: u64 = 0x94D0_49BB_1331_11EB;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(M1);
    z = (z ^ (z >> 27)).wrapping_mul(M2);
    z ^ (z >> 31)
}

fn unxorshift(y: u64, s: u32) -> u64 {
    let mut x = y;
    for _ in 0..64 / s + 1 {
        x = y ^ (x >> s);
    }
    x
}

fn inverse(c: u64) -> u64 {
    // Newton's iteration for the inverse of an odd number modulo 2^64.
    let mut x = c;
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(c.wrapping_mul(x)));
    }
    x
}

fn unmix(z: u64) -> u64 {
    let z = unxorshift(z, 31).wrapping_mul(inverse(M2));
    let z = unxorshift(z, 27).wrapping_mul(inverse(M1));
    unxorshift(z, 30)
}

/// What SplitMix64 would put in bytes 8..12 of an id whose bytes 0..8 are `first`.
fn splitmix_prediction(first: u64) -> [u8; 4] {
    let next = mix(unmix(first).wrapping_add(GAMMA)).to_le_bytes();
    [next[0], next[1], next[2], next[3]]
}

#[test]
fn the_predictor_works_on_splitmix64() {
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut out = || {
        state = state.wrapping_add(GAMMA);
        mix(state)
    };
    let (a, b) = (out(), out());
    assert_eq!(unmix(mix(a)), a);
    assert_eq!(splitmix_prediction(a), b.to_le_bytes()[..4]);
}

#[test]
fn data_indication_transaction_ids_are_not_predictable() {
    let server = TestServer::start("127.0.0.1", &["--allow-peer", "127.0.0.1/32"]);
    let mut c = RawClient::new(server.addr, "alice", "wonderland");
    assert_eq!(c.request(METHOD_ALLOCATE, &[udp_transport()]).code(), None);
    let peer = peer_socket("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(
        c.request(METHOD_CREATE_PERMISSION, &[peer_attr(peer_addr)])
            .code(),
        None
    );
    c.send_raw(&send_indication(peer_addr, b"hello"));
    let mut buf = [0u8; 1500];
    let (_, relayed) = peer.recv_from(&mut buf).expect("the peer receives");
    let mut ids = HashSet::new();
    let mut predicted = 0;
    for i in 0..20u8 {
        peer.send_to(&[i; 8], relayed).unwrap();
        let raw = c.recv_raw().expect("a Data indication");
        assert_eq!(&raw[0..2], &[0x00, 0x17], "a Data indication");
        let id: [u8; 12] = raw[8..20].try_into().unwrap();
        let first = u64::from_le_bytes(id[..8].try_into().unwrap());
        if splitmix_prediction(first) == id[8..12] {
            predicted += 1;
        }
        ids.insert(id);
    }
    assert_eq!(ids.len(), 20, "every id differs");
    assert_eq!(predicted, 0, "SplitMix64 predicted {predicted} of 20 ids");
}
