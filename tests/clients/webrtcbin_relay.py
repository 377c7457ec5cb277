#!/usr/bin/python3
"""Driver for tests/gstreamer_webrtcbin.rs: two GStreamer webrtcbin elements (ICE by libnice)
in one pipeline, each with turnd as its only TURN server and ice-transport-policy "relay",
negotiate in-process, open a data channel and send messages both ways: webrtcbin 1 sends each
message, webrtcbin 2 answers each one with a message of the same size. Then it reads each side's
selected candidate pair from the libnice agent.

Prints one JSON object on stdout, then keeps both peers connected until its standard input
closes (the Rust test reads turnd's /sessions meanwhile), so the allocations are still live.

usage: /usr/bin/python3 webrtcbin_relay.py turn://USER:PASS@127.0.0.1:PORT[?transport=tcp]
       /usr/bin/python3 webrtcbin_relay.py --check   (prints the versions, fails if an element
                                                      the test needs is missing)

Needs Debian's python3-gi, gir1.2-gst-plugins-bad-1.0, gir1.2-nice-0.1, gstreamer1.0-nice and
gstreamer1.0-plugins-{base,good,bad}: .ci/setup-clients.sh installs them.
"""

import ctypes
import json
import os
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstWebRTC, Nice  # noqa: E402

# Hang guard inside the driver; the Rust test has its own, longer one around this process.
TIMEOUT_S = 60
# Messages of several sizes; the largest is split by SCTP into several relayed packets.
SIZES = [1, 100, 1200, 16000]

START = time.monotonic()
log = []


def note(s):
    log.append(f"{round((time.monotonic() - START) * 1000)}ms {s}")


def payload(sender, n):
    return f"{sender}:{n}:" + "x" * n


class Peer:
    def __init__(self, index, pipeline, url):
        self.index = index
        self.name = f"pc{index + 1}"
        self.webrtc = Gst.ElementFactory.make("webrtcbin", self.name)
        self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        self.webrtc.set_property("ice-transport-policy", GstWebRTC.WebRTCICETransportPolicy.RELAY)
        self.webrtc.set_property("turn-server", url)
        pipeline.add(self.webrtc)
        self.candidates = []
        self.received = []
        self.channel = None
        self.selected = None
        self.agent = self.nice_agent()
        self.agent.connect("new-selected-pair-full", self.on_selected_pair)
        # libnice leaves loopback interfaces out when it picks local addresses by itself; with
        # one given, it uses only that, so it reaches turnd on 127.0.0.1 from 127.0.0.1.
        local = Nice.Address.new()
        local.set_from_string("127.0.0.1")
        if not self.agent.add_local_address(local):
            raise RuntimeError("nice_agent_add_local_address(127.0.0.1) failed")

    def nice_agent(self):
        ice = self.webrtc.get_property("ice-agent")
        # With GStreamer 1.22 the object read from webrtcbin's ice-agent property holds one
        # reference, PyGObject's, although webrtcbin keeps using it and unrefs it at dispose:
        # once the wrapper goes, the agent is freed under webrtcbin (a second read of the
        # property finds a dead object). Give webrtcbin its own reference (PyGObject's hash of
        # a GObject wrapper is the object's address; PyGObject does not expose g_object_ref).
        if ice.ref_count == 1:
            gobject = ctypes.CDLL("libgobject-2.0.so.0")
            gobject.g_object_ref.argtypes = [ctypes.c_void_p]
            gobject.g_object_ref.restype = ctypes.c_void_p
            gobject.g_object_ref(hash(ice))
        self.ice = ice
        return ice.get_property("agent")

    def on_selected_pair(self, _agent, _stream, component_id, local, remote):
        note(f"{self.name} selected pair {local.addr.dup_string()}:{local.addr.get_port()} -> "
             f"{remote.addr.dup_string()}:{remote.addr.get_port()}")
        if component_id == 1:
            self.selected = {"local": candidate_json(local), "remote": candidate_json(remote)}


def candidate_json(c):
    return {
        "candidateType": CANDIDATE_TYPES.get(int(c.type), str(c.type)),
        "transport": TRANSPORTS.get(int(c.transport), str(c.transport)),
        "address": c.addr.dup_string(),
        "port": c.addr.get_port(),
    }


CANDIDATE_TYPES = {
    int(Nice.CandidateType.HOST): "host",
    int(Nice.CandidateType.SERVER_REFLEXIVE): "srflx",
    int(Nice.CandidateType.PEER_REFLEXIVE): "prflx",
    int(Nice.CandidateType.RELAYED): "relay",
}
TRANSPORTS = {
    int(Nice.CandidateTransport.UDP): "udp",
    int(Nice.CandidateTransport.TCP_ACTIVE): "tcp-active",
    int(Nice.CandidateTransport.TCP_PASSIVE): "tcp-passive",
    int(Nice.CandidateTransport.TCP_SO): "tcp-so",
}


# webrtcbin and what it builds for a data channel: libnice's elements, DTLS, SCTP, rtpbin.
ELEMENTS = ["webrtcbin", "nicesrc", "nicesink", "dtlsenc", "dtlsdec", "sctpenc", "sctpdec", "rtpbin"]


def check():
    Gst.init(None)
    missing = [e for e in ELEMENTS if Gst.ElementFactory.find(e) is None]
    if missing:
        print(f"missing GStreamer elements: {' '.join(missing)}", file=sys.stderr)
        sys.exit(1)
    print(f"{Gst.version_string()}, libnice {Gst.ElementFactory.find('nicesrc').get_plugin().get_version()}")


def main():
    if sys.argv[1:] == ["--check"]:
        check()
        return
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    url = sys.argv[1]
    Gst.init(None)
    loop = GLib.MainLoop()
    pipeline = Gst.Pipeline.new("relay")
    peers = [Peer(0, pipeline, url), Peer(1, pipeline, url)]
    result = {"error": None}

    def finish(error=None):
        # Runs on the main loop.
        if result["error"] is None and error is not None:
            result["error"] = error
            note(f"error: {error}")
        loop.quit()
        return False

    def fail(error):
        GLib.idle_add(finish, error)

    def check_done():
        if all(len(p.received) >= len(SIZES) for p in peers):
            note("all messages received")
            GLib.idle_add(finish)

    for p in peers:
        other = peers[1 - p.index]

        def on_candidate(_webrtc, mline, candidate, p=p, other=other):
            p.candidates.append(candidate)
            GLib.idle_add(lambda: other.webrtc.emit("add-ice-candidate", mline, candidate) and False)

        p.webrtc.connect("on-ice-candidate", on_candidate)

        def on_state(webrtc, _pspec, p=p):
            state = webrtc.get_property("ice-connection-state")
            note(f"{p.name} ice {state.value_nick}")
            if state == GstWebRTC.WebRTCICEConnectionState.FAILED:
                fail(f"{p.name} ICE connection failed")

        p.webrtc.connect("notify::ice-connection-state", on_state)

        # webrtcbin 1.22 reports no ICE state for a transport that carries only data
        # channels; libnice's component states say when ICE gave up.
        def on_component_state(_agent, _stream, component, state, p=p):
            if state == Nice.ComponentState.FAILED:
                fail(f"{p.name} ICE failed (libnice component {component})")

        p.agent.connect("component-state-changed", on_component_state)

        # With the relay policy a side without a candidate (its Allocate failed) cannot
        # connect.
        def on_gathering(webrtc, _pspec, p=p):
            state = webrtc.get_property("ice-gathering-state")
            note(f"{p.name} gathering {state.value_nick}")
            if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not p.candidates:
                fail(f"{p.name} gathered no relay candidate (no allocation)")

        p.webrtc.connect("notify::ice-gathering-state", on_gathering)

    def on_message(_channel, data, p):
        p.received.append(data)
        k = len(p.received)
        if p.index == 1 and k <= len(SIZES):
            p.channel.emit("send-string", payload("pc2", SIZES[k - 1]))
        check_done()

    def watch_channel(p, channel):
        p.channel = channel
        channel.connect("on-message-string", on_message, p)
        channel.connect("on-error", lambda _c, err: fail(f"{p.name} data channel error: {err}"))

    def on_open(channel):
        note("pc1 data channel open")
        for n in SIZES:
            channel.emit("send-string", payload("pc1", n))

    def on_data_channel(_webrtc, channel):
        note("pc2 data channel announced")
        watch_channel(peers[1], channel)

    peers[1].webrtc.connect("on-data-channel", on_data_channel)

    # webrtcbin answers its promises on its own thread, which must not wait for another of
    # its operations: each step of the negotiation runs on the main loop instead.
    def set_description(webrtc, signal, desc):
        promise = Gst.Promise.new()
        webrtc.emit(signal, desc, promise)
        promise.wait()

    def then(step):
        return Gst.Promise.new_with_change_func(lambda promise, _: GLib.idle_add(step, promise), None)

    def on_answer(promise):
        reply = promise.get_reply()
        answer = reply.get_value("answer") if reply else None
        if answer is None:
            return finish(f"create-answer failed: {reply.to_string() if reply else None}")
        set_description(peers[1].webrtc, "set-local-description", answer)
        set_description(peers[0].webrtc, "set-remote-description", answer)
        note("offer/answer exchanged")
        return False

    def on_offer(promise):
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply else None
        if offer is None:
            return finish(f"create-offer failed: {reply.to_string() if reply else None}")
        set_description(peers[0].webrtc, "set-local-description", offer)
        set_description(peers[1].webrtc, "set-remote-description", offer)
        peers[1].webrtc.emit("create-answer", None, then(on_answer))
        return False

    def on_negotiation_needed(webrtc):
        note("pc1 negotiation needed")
        webrtc.emit("create-offer", None, then(on_offer))

    peers[0].webrtc.connect("on-negotiation-needed", on_negotiation_needed)

    def on_bus(_bus, msg):
        if msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            fail(f"pipeline error: {err.message} ({dbg})")
        return True

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_bus)

    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        fail("pipeline does not start")
    channel = peers[0].webrtc.emit("create-data-channel", "turnd", None)
    if channel is None:
        fail("create-data-channel returned nothing")
    else:
        watch_channel(peers[0], channel)
        channel.connect("on-open", on_open)

    GLib.timeout_add_seconds(TIMEOUT_S, lambda: finish(f"timed out after {TIMEOUT_S} s"))
    loop.run()

    result.update(
        {
            "gstreamerVersion": Gst.version_string(),
            "pc1ReceivedAll": peers[0].received == [payload("pc2", n) for n in SIZES],
            "pc2ReceivedAll": peers[1].received == [payload("pc1", n) for n in SIZES],
            "pc1Received": len(peers[0].received),
            "pc2Received": len(peers[1].received),
            "selected": [p.selected for p in peers],
            "candidates": [p.candidates for p in peers],
            "log": log,
        }
    )
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    # Keep the allocations live until the test is done with /sessions.
    sys.stdin.read()
    pipeline.set_state(Gst.State.NULL)
    os._exit(0)


if __name__ == "__main__":
    main()
