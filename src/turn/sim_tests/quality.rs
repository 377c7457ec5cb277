//! Call quality fed by the core's data path: both directions of a channel, the session view,
//! the server-wide counters, a reload that turns telemetry off, and the "call quality" log
//! line when the session ends.

use super::*;
use crate::quality::{Direction, Kind, Leg, SessionState};

fn rtp(ssrc: u32, seq: u16, ts: u32) -> Vec<u8> {
    let mut p = vec![0u8; 100];
    p[0] = 0x80;
    p[1] = 111;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

fn binding(ty: u16, id: u8) -> Vec<u8> {
    let mut m = vec![0u8; 20];
    m[0..2].copy_from_slice(&ty.to_be_bytes());
    m[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m[8..20].fill(id);
    m
}

/// Log lines written while `f` runs, as JSON objects.
fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .json()
        .with_writer(move || w.clone())
        .finish();
    tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn both_directions_are_observed_and_summarised_when_the_session_ends() {
    let mut s = sim();
    let mut c = Client::new(ft(1000), "alice", "wonderland");
    assert!(c.allocate(&mut s).is_ok());
    let relay = relay_of(&s, false);
    let p = peer("8.8.8.8:4000");
    assert!(bind(&mut c, &mut s, 0x4000, p).is_ok());
    let id = s.server.sessions(s.now().mono, None)[0].id;
    let q = s.server.session(id, s.now().mono).unwrap().quality.unwrap();
    assert_eq!(q.state, SessionState::Idle);

    // A check towards the peer, answered 40 ms later; one towards the client, 10 ms.
    s.client_send(ft(1000), &channel_data(0x4000, &binding(0x0001, 1)));
    s.elapsed += Duration::from_millis(40);
    assert_eq!(s.peer_send(relay, p, &binding(0x0101, 1)).len(), 1);
    s.peer_send(relay, p, &binding(0x0001, 2));
    s.elapsed += Duration::from_millis(10);
    s.client_send(ft(1000), &channel_data(0x4000, &binding(0x0101, 2)));
    // Two seconds of audio each way, 50 packets a second; the client's loses every 10th.
    for i in 0..100u32 {
        s.elapsed += Duration::from_millis(20);
        if i % 10 != 5 {
            s.client_send(ft(1000), &channel_data(0x4000, &rtp(7, i as u16, i * 960)));
        }
        s.peer_send(relay, p, &rtp(8, i as u16, i * 960));
    }
    let q = s.server.session(id, s.now().mono).unwrap().quality.unwrap();
    assert_eq!(q.state, SessionState::MediaFlowing);
    assert_eq!(q.legs[Leg::Peer as usize].recent_us, Some(40_000));
    assert_eq!(q.legs[Leg::Client as usize].recent_us, Some(10_000));
    let up = q.streams.iter().find(|x| x.ssrc == 7).unwrap();
    assert_eq!(
        (up.direction, up.kind, up.lost, up.packets),
        (Direction::ToPeer, Kind::Audio, 10, 90)
    );
    let down = q.streams.iter().find(|x| x.ssrc == 8).unwrap();
    assert_eq!(
        (down.direction, down.lost, down.packets),
        (Direction::ToClient, 0, 100)
    );
    let st = s.server.stats().quality;
    assert_eq!(st.answered, [1, 1]);
    assert_eq!(
        st.payloads[0][crate::quality::demux::Class::Rtp as usize],
        90
    );

    // A reload that turns telemetry off: the data path stops feeding it.
    let mut r = super::lifecycle::reconfigure_with(&[("alice", "wonderland")], 0);
    r.telemetry = false;
    s.server.reconfigure(r);
    s.client_send(ft(1000), &channel_data(0x4000, &rtp(7, 200, 0)));
    assert_eq!(s.server.stats().quality.payloads[0][2], 90);

    let end = s.now().mono;
    let lines = logged(|| {
        assert!(s.server.end_session(id, end, &mut s.io));
    });
    let line = lines
        .iter()
        .find(|l| l["fields"]["message"] == "call quality")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let f = &line["fields"];
    assert_eq!(f["session"], id);
    assert_eq!(f["peer_rtt_p50_ms"].as_f64().unwrap(), 40.0);
    assert_eq!(f["client_rtt_p50_ms"].as_f64().unwrap(), 10.0);
    assert_eq!(f["bytes_to_peer"], 90 * 100 + 100 + 2 * 20);
    assert_eq!(f["checks_unanswered"], 0);
    // 50 ms of checks and 100 packets 20 ms apart after the allocation: 2 s.
    assert_eq!(f["duration_secs"], 2);
    let streams = f["streams"].as_str().unwrap();
    assert!(
        streams.contains("7/to_peer/audio packets=90 lost=10 loss=10.10%"),
        "{streams}"
    );
    assert!(
        streams.contains("8/to_client/audio packets=100 lost=0"),
        "{streams}"
    );
}
