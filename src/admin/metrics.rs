//! `/metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! Names follow coturn where coturn has the same thing (`turn_total_allocations{type}`,
//! `turn_total_traffic_*`, `stun_binding_*`) so existing dashboards keep working; the rest
//! are `turnd_*`. Unlike coturn's, the traffic counters are live (they move while sessions
//! run, not when they end), and no label carries a user, a session or an address.

use std::fmt::Write as _;

use crate::net::Control;
use crate::quality::demux::{Class, rtcp_name};
use crate::quality::rtt::RTT_BOUNDS_US;
use crate::quality::{Direction, JITTER_BOUNDS_US, Kind, LOSS_BOUNDS_PPM, Leg, QualityStats};
use crate::turn::Stats;
use crate::turn::stats::{
    CODE_SLOTS, DropReason, Gauges, METHOD_SLOTS, TRANSPORT_NAMES, code_name, method_name,
};

/// What one worker reports at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerSnapshot {
    pub stats: Stats,
    pub gauges: Gauges,
    /// Datagrams the kernel refused to take (full socket buffer).
    pub send_drops: u64,
    /// What the UDP segmentation offloads (GSO, GRO) did.
    pub offload: crate::net::OffloadCounts,
}

/// Asks every worker for its counters.
pub async fn gather(control: &Control) -> Vec<WorkerSnapshot> {
    control
        .on_each_worker(|core, io| WorkerSnapshot {
            stats: core.stats(),
            gauges: core.gauges(crate::net::now().mono),
            send_drops: io.send_drops(),
            offload: io.offload_counts(),
        })
        .await
}

/// The sum over workers.
pub fn sum(workers: &[WorkerSnapshot]) -> WorkerSnapshot {
    let mut t = WorkerSnapshot::default();
    for w in workers {
        let (s, o) = (&mut t.stats, &w.stats);
        s.malformed += o.malformed;
        s.requests += o.requests;
        s.error_responses += o.error_responses;
        s.auth_failures += o.auth_failures;
        s.allocations_created += o.allocations_created;
        s.allocations_deleted += o.allocations_deleted;
        s.relayed_to_peer += o.relayed_to_peer;
        s.relayed_from_peer += o.relayed_from_peer;
        s.dropped += o.dropped;
        s.traffic.add(&o.traffic);
        let (l, ol) = (&mut s.leases, &o.leases);
        l.parked += ol.parked;
        l.granted += ol.granted;
        l.refused += ol.refused;
        l.unavailable += ol.unavailable;
        l.timeouts += ol.timeouts;
        l.overflow += ol.overflow;
        l.retransmits += ol.retransmits;
        l.abandoned += ol.abandoned;
        s.quality.add(&o.quality);
        for (a, b) in s.drops.iter_mut().zip(o.drops) {
            *a += b;
        }
        for (a, b) in s.requests_by_method.iter_mut().zip(o.requests_by_method) {
            *a += b;
        }
        for (row, orow) in s.errors_by_method.iter_mut().zip(o.errors_by_method) {
            for (a, b) in row.iter_mut().zip(orow) {
                *a += b;
            }
        }
        for (a, b) in t.gauges.allocations.iter_mut().zip(w.gauges.allocations) {
            *a += b;
        }
        t.gauges.permissions += w.gauges.permissions;
        t.gauges.channels += w.gauges.channels;
        t.send_drops += w.send_drops;
        t.offload.gso_datagrams += w.offload.gso_datagrams;
        t.offload.gso_messages += w.offload.gso_messages;
        t.offload.gro_reads += w.offload.gro_reads;
        t.offload.gro_datagrams += w.offload.gro_datagrams;
        t.offload.local_datagrams += w.offload.local_datagrams;
        t.offload.handover_datagrams += w.offload.handover_datagrams;
        t.offload.io_uring_messages += w.offload.io_uring_messages;
    }
    t
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // Label values here are fixed identifiers: no escaping needed.
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A histogram's cumulative buckets (bounds divided by `per_unit` into the exposed unit),
    /// `+Inf`, sum and count.
    fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        counts: &[u64],
        bounds: &[u32],
        per_unit: f64,
        sum: u64,
    ) {
        let mut lbl = String::new();
        for (k, v) in labels {
            let _ = write!(lbl, "{k}=\"{v}\",");
        }
        let mut cum = 0u64;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            match bounds.get(i) {
                Some(b) => {
                    let le = f64::from(*b) / per_unit;
                    let _ = writeln!(self.0, "{name}_bucket{{{lbl}le=\"{le}\"}} {cum}");
                }
                None => {
                    let _ = writeln!(self.0, "{name}_bucket{{{lbl}le=\"+Inf\"}} {cum}");
                }
            }
        }
        let lbl = lbl.trim_end_matches(',');
        let _ = writeln!(self.0, "{name}_sum{{{lbl}}} {}", sum as f64 / per_unit);
        let _ = writeln!(self.0, "{name}_count{{{lbl}}} {cum}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Renders the scrape.
pub fn render(
    t: &WorkerSnapshot,
    workers: usize,
    bps_reserved: u64,
    bps_capacity: u64,
    uptime_secs: u64,
) -> String {
    let s = &t.stats;
    let g = &t.gauges;
    let mut o = Out(String::with_capacity(8 * 1024));

    o.family(
        "turn_total_allocations",
        "gauge",
        "Live allocations by client transport.",
    );
    for (i, name) in TRANSPORT_NAMES.iter().enumerate() {
        o.sample(
            "turn_total_allocations",
            &[("type", name)],
            g.allocations[i],
        );
    }
    o.single(
        "turnd_allocations_created_total",
        "counter",
        "Allocations created.",
        s.allocations_created,
    );
    o.family(
        "turnd_fleet_parked_allocates_total",
        "counter",
        "Allocates parked for a fleet quota lease in Redis (strict fleet quotas), by outcome; timeout, unavailable and overflow were decided by per-node counting.",
    );
    let l = &s.leases;
    for (outcome, n) in [
        ("parked", l.parked),
        ("granted", l.granted),
        ("refused", l.refused),
        ("unavailable", l.unavailable),
        ("timeout", l.timeouts),
        ("overflow", l.overflow),
        ("retransmit", l.retransmits),
        ("abandoned", l.abandoned),
    ] {
        o.sample(
            "turnd_fleet_parked_allocates_total",
            &[("outcome", outcome)],
            n,
        );
    }
    o.single(
        "turnd_allocations_deleted_total",
        "counter",
        "Allocations ended (refreshed to 0, expired, ended by the admin API or shutdown).",
        s.allocations_deleted,
    );
    o.single(
        "turnd_permissions",
        "gauge",
        "Live permissions over all allocations.",
        g.permissions,
    );
    o.single(
        "turnd_channels",
        "gauge",
        "Live channel bindings over all allocations.",
        g.channels,
    );

    let tr = &s.traffic;
    for (name, help, v) in [
        (
            "turn_total_traffic_rcvp",
            "Relayed data packets received from clients.",
            tr.rcvp,
        ),
        (
            "turn_total_traffic_rcvb",
            "Relayed payload bytes received from clients.",
            tr.rcvb,
        ),
        (
            "turn_total_traffic_sentp",
            "Relayed data packets sent to clients.",
            tr.sentp,
        ),
        (
            "turn_total_traffic_sentb",
            "Relayed payload bytes sent to clients.",
            tr.sentb,
        ),
        (
            "turn_total_traffic_peer_rcvp",
            "Packets received from peers on relay sockets.",
            tr.peer_rcvp,
        ),
        (
            "turn_total_traffic_peer_rcvb",
            "Payload bytes received from peers on relay sockets.",
            tr.peer_rcvb,
        ),
        (
            "turn_total_traffic_peer_sentp",
            "Packets relayed to peers.",
            tr.peer_sentp,
        ),
        (
            "turn_total_traffic_peer_sentb",
            "Payload bytes relayed to peers.",
            tr.peer_sentb,
        ),
    ] {
        o.single(name, "counter", help, v);
    }

    o.family(
        "turnd_dropped_packets_total",
        "counter",
        "Relayed packets dropped, by reason.",
    );
    for r in DropReason::ALL {
        o.sample(
            "turnd_dropped_packets_total",
            &[("reason", r.as_str())],
            s.drops[r as usize],
        );
    }
    o.sample(
        "turnd_dropped_packets_total",
        &[("reason", "send_failed")],
        t.send_drops,
    );

    let g = &t.offload;
    for (name, help, v) in [
        (
            "turnd_udp_gso_datagrams_total",
            "UDP datagrams sent inside GSO messages (one pass through the kernel per message).",
            g.gso_datagrams,
        ),
        (
            "turnd_udp_gso_messages_total",
            "GSO messages sent.",
            g.gso_messages,
        ),
        (
            "turnd_udp_gro_datagrams_total",
            "UDP datagrams received coalesced by GRO.",
            g.gro_datagrams,
        ),
        (
            "turnd_udp_gro_reads_total",
            "Reads that returned GRO-coalesced datagrams.",
            g.gro_reads,
        ),
        (
            "turnd_udp_io_uring_messages_total",
            "UDP messages sent as io_uring entries, many per system call (server.udp-io-uring).",
            g.io_uring_messages,
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &[], v);
    }

    o.family(
        "turnd_relay_internal_datagrams_total",
        "counter",
        "Datagrams relayed from one allocation to another of this server without the \
         kernel, by path: both on one worker, or handed to another worker.",
    );
    for (path, v) in [
        ("same_worker", g.local_datagrams),
        ("other_worker", g.handover_datagrams),
    ] {
        o.sample("turnd_relay_internal_datagrams_total", &[("path", path)], v);
    }

    o.family(
        "turnd_requests_total",
        "counter",
        "STUN/TURN requests received, by method.",
    );
    for m in 0..METHOD_SLOTS {
        o.sample(
            "turnd_requests_total",
            &[("method", method_name(m))],
            s.requests_by_method[m],
        );
    }
    o.family(
        "turnd_error_responses_total",
        "counter",
        "Error responses sent, by method and error code (only pairs seen so far).",
    );
    for m in 0..METHOD_SLOTS {
        for c in 0..CODE_SLOTS {
            let v = s.errors_by_method[m][c];
            if v > 0 {
                let code = code_name(c);
                o.sample(
                    "turnd_error_responses_total",
                    &[("method", method_name(m)), ("code", &code)],
                    v,
                );
            }
        }
    }
    let binding = s.requests_by_method[0];
    let binding_errors: u64 = s.errors_by_method[0].iter().sum();
    o.single(
        "stun_binding_request",
        "counter",
        "STUN Binding requests received.",
        binding,
    );
    o.single(
        "stun_binding_response",
        "counter",
        "STUN Binding success responses sent.",
        binding.saturating_sub(binding_errors),
    );
    o.single(
        "stun_binding_error",
        "counter",
        "STUN Binding error responses sent.",
        binding_errors,
    );
    o.single(
        "turnd_auth_failures_total",
        "counter",
        "Requests refused for a wrong realm, unknown user or bad MESSAGE-INTEGRITY.",
        s.auth_failures,
    );
    o.single(
        "turnd_malformed_packets_total",
        "counter",
        "Datagrams from clients that did not parse as STUN or ChannelData.",
        s.malformed,
    );
    o.single(
        "turnd_bps_reserved",
        "gauge",
        "Sum of the bandwidth limits of live allocations, bits per second.",
        bps_reserved,
    );
    o.single(
        "turnd_bps_capacity",
        "gauge",
        "Configured bandwidth capacity, bits per second (0: none).",
        bps_capacity,
    );
    o.single(
        "turnd_workers",
        "gauge",
        "Worker threads answering.",
        workers as u64,
    );
    o.single(
        "turnd_uptime_seconds",
        "gauge",
        "Seconds since the admin listener started.",
        uptime_secs,
    );
    render_quality(&mut o, &s.quality);
    o.0
}

/// The call-quality families (`telemetry.enabled`): RTT by leg, loss ratio and jitter by
/// direction and media kind (one observation per stream per second), and counters. Labels
/// are the fixed leg, direction, kind, payload class and RTCP type: no session, no user.
fn render_quality(o: &mut Out, q: &QualityStats) {
    o.family(
        "turnd_quality_rtt_seconds",
        "histogram",
        "Round-trip times of ICE Binding transactions crossing the relay, by leg (client: \
         relay to client and back; peer: relay to peer and back).",
    );
    for leg in Leg::ALL {
        o.histogram(
            "turnd_quality_rtt_seconds",
            &[("leg", leg.as_str())],
            &q.rtt[leg as usize].counts,
            &RTT_BOUNDS_US,
            1e6,
            q.rtt[leg as usize].sum,
        );
    }
    o.family(
        "turnd_quality_loss_ratio",
        "histogram",
        "RTP loss before the relay per stream and second (RFC 3550 A.3), by direction \
         (to_peer: lost on the client leg; to_client: on the peer leg) and media kind.",
    );
    for d in Direction::ALL {
        for k in Kind::ALL {
            let h = &q.loss[d as usize][k as usize];
            o.histogram(
                "turnd_quality_loss_ratio",
                &[("direction", d.as_str()), ("kind", k.as_str())],
                &h.counts,
                &LOSS_BOUNDS_PPM,
                1e6,
                h.sum,
            );
        }
    }
    o.family(
        "turnd_quality_jitter_seconds",
        "histogram",
        "RTP interarrival jitter at the relay (RFC 3550 A.8) per stream and second, by \
         direction and media kind.",
    );
    for d in Direction::ALL {
        for k in Kind::ALL {
            let h = &q.jitter[d as usize][k as usize];
            o.histogram(
                "turnd_quality_jitter_seconds",
                &[("direction", d.as_str()), ("kind", k.as_str())],
                &h.counts,
                &JITTER_BOUNDS_US,
                1e6,
                h.sum,
            );
        }
    }
    for (name, help, v) in [
        (
            "turnd_quality_rtp_expected_total",
            "RTP packets expected (RFC 3550 A.3) over closed one-second windows.",
            &q.expected,
        ),
        (
            "turnd_quality_rtp_lost_total",
            "RTP packets lost before the relay over closed one-second windows.",
            &q.lost,
        ),
    ] {
        o.family(name, "counter", help);
        for d in Direction::ALL {
            for k in Kind::ALL {
                o.sample(
                    name,
                    &[("direction", d.as_str()), ("kind", k.as_str())],
                    v[d as usize][k as usize],
                );
            }
        }
    }
    o.family(
        "turnd_quality_payloads_total",
        "counter",
        "Relayed payloads by direction and RFC 7983 class (stun, dtls, rtp, rtcp, other).",
    );
    for d in Direction::ALL {
        for c in Class::ALL {
            o.sample(
                "turnd_quality_payloads_total",
                &[("direction", d.as_str()), ("class", c.as_str())],
                q.payloads[d as usize][c as usize],
            );
        }
    }
    for (name, help, v) in [
        (
            "turnd_quality_checks_total",
            "ICE Binding requests relayed, by the leg they time.",
            &q.checks,
        ),
        (
            "turnd_quality_checks_answered_total",
            "ICE Binding requests answered through the relay, by leg.",
            &q.answered,
        ),
        (
            "turnd_quality_checks_unanswered_total",
            "ICE Binding requests not answered within 5 seconds, by leg.",
            &q.unanswered,
        ),
    ] {
        o.family(name, "counter", help);
        for leg in Leg::ALL {
            o.sample(name, &[("leg", leg.as_str())], v[leg as usize]);
        }
    }
    o.family(
        "turnd_quality_rtcp_packets_total",
        "counter",
        "RTCP packets relayed, by direction and the type of their first packet.",
    );
    for d in Direction::ALL {
        for (slot, v) in q.rtcp[d as usize].iter().enumerate() {
            o.sample(
                "turnd_quality_rtcp_packets_total",
                &[("direction", d.as_str()), ("type", rtcp_name(slot))],
                *v,
            );
        }
    }
    o.single(
        "turnd_quality_streams_untracked_total",
        "counter",
        "RTP streams not tracked because their allocation's stream table was full.",
        q.streams_untracked,
    );
}

/// The TCP/TLS listeners' families: open connections by transport, refusals by the cap that
/// refused, timeouts by kind, handshake failures and write-queue drops. Every label value is
/// one of a fixed few.
/// The kernel fast path's families (`server.kernel-offload`): what the XDP program did with
/// the packets it saw, the channels installed and the installs the full maps refused.
pub fn render_kernel(k: &crate::net::xdp::KernelPath) -> String {
    let s = k.stats();
    let mut o = Out(String::with_capacity(1024));
    o.family(
        "turnd_kernel_packets_total",
        "counter",
        "Packets the kernel fast path (XDP) relayed (to_peer, from_peer, local: to another \
         allocation's client) or passed up to the socket path, by reason.",
    );
    for (name, v) in crate::net::xdp::STAT_NAMES.iter().zip(s.actions) {
        o.sample("turnd_kernel_packets_total", &[("action", name)], v);
    }
    o.single(
        "turnd_kernel_channels",
        "gauge",
        "Channels installed in the kernel fast path.",
        s.entries,
    );
    o.single(
        "turnd_kernel_install_failures_total",
        "counter",
        "Channels the kernel's maps had no room for (they stay on the socket path).",
        s.install_failures,
    );
    o.single(
        "turnd_kernel_interfaces",
        "gauge",
        "Interfaces the XDP program is attached to.",
        k.attached().len() as u64,
    );
    o.0
}

pub fn render_streams(t: &crate::net::StreamSnapshot) -> String {
    let mut o = Out(String::with_capacity(2 * 1024));
    o.family(
        "turnd_stream_connections",
        "gauge",
        "Open TCP and TLS client connections, by transport.",
    );
    o.sample(
        "turnd_stream_connections",
        &[("transport", "tcp")],
        t.open_tcp,
    );
    o.sample(
        "turnd_stream_connections",
        &[("transport", "tls")],
        t.open_tls,
    );
    o.single(
        "turnd_stream_connections_accepted_total",
        "counter",
        "TCP and TLS client connections accepted.",
        t.accepted,
    );
    o.family(
        "turnd_stream_connections_refused_total",
        "counter",
        "TCP and TLS client connections refused, by the cap that refused them \
         (tcp.max-connections, tcp.max-connections-per-ip).",
    );
    o.sample(
        "turnd_stream_connections_refused_total",
        &[("limit", "total")],
        t.refused_total,
    );
    o.sample(
        "turnd_stream_connections_refused_total",
        &[("limit", "per_ip")],
        t.refused_per_ip,
    );
    o.family(
        "turnd_stream_timeouts_total",
        "counter",
        "TCP and TLS connections closed by a timeout, by kind (tls.handshake-timeout, \
         tcp.auth-timeout, tcp.idle-timeout).",
    );
    for (kind, v) in [
        ("handshake", t.handshake_timeouts),
        ("auth", t.auth_timeouts),
        ("idle", t.idle_timeouts),
    ] {
        o.sample("turnd_stream_timeouts_total", &[("kind", kind)], v);
    }
    o.single(
        "turnd_stream_handshake_failures_total",
        "counter",
        "Failed PROXY headers and TLS handshakes (timeouts not included).",
        t.handshake_failures,
    );
    o.single(
        "turnd_stream_write_queue_drops_total",
        "counter",
        "Messages to TCP and TLS clients dropped because the connection's write queue \
         (tcp.write-queue-bytes) was full.",
        t.queue_drops,
    );
    o.0
}
