"""Driver for tests/aiortc.rs: two aiortc RTCPeerConnections (ICE by aioice) in one process,
each with turnd as its only ICE server and iceTransportPolicy "relay", negotiate in-process,
open a data channel and send messages both ways: pc1 sends each message, pc2 answers each one
with a message of the same size. Then it reads each side's nominated candidate pair from aioice.

Prints one JSON object on stdout, then keeps both peers connected until its standard input
closes (the Rust test reads turnd's /sessions meanwhile), so the allocations are still live.

usage: tests/clients/.venv/bin/python aiortc_relay.py URL USERNAME CREDENTIAL
       (URL: turn:127.0.0.1:PORT?transport=udp|tcp or turns:localhost:PORT?transport=tcp)
       aiortc_relay.py --check      (prints the aiortc and aioice versions)

For turns:, aioice opens TLS with Python's default context (ssl.create_default_context, which
verifies the chain and the host name), so the caller trusts the server's certificate by
pointing SSL_CERT_FILE at it; verification stays on.

.ci/setup-clients.sh installs aiortc (pinned in requirements.txt) into tests/clients/.venv.
"""

import asyncio
import json
import re
import sys
import time

import aioice
import aiortc
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy

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


def candidate_json(c):
    return {
        "candidateType": c.type,
        "transport": c.transport.lower(),
        "address": c.host,
        "port": c.port,
    }


def selected_pair(pc):
    """The nominated pair of the data channel's ICE connection (component 1)."""
    connection = pc.sctp.transport.transport._connection
    pair = connection._nominated.get(1)
    if pair is None:
        return None
    return {
        "local": candidate_json(pair.local_candidate),
        "remote": candidate_json(pair.remote_candidate),
    }


def sdp_candidates(sdp):
    return re.findall(r"^a=(candidate:.*?)\r?$", sdp, re.M)


async def exchange(pcs, received, all_received):
    dc1 = pcs[0].createDataChannel("turnd", ordered=True)
    dc2_ready = asyncio.get_running_loop().create_future()

    def on_message(i, channel):
        def handler(message):
            received[i].append(message)
            k = len(received[i])
            if i == 1 and k <= len(SIZES):
                channel.send(payload("pc2", SIZES[k - 1]))
            if k == len(SIZES) and not all_received[i].done():
                all_received[i].set_result(None)

        return handler

    dc1.on("message", on_message(0, dc1))

    @pcs[1].on("datachannel")
    def on_datachannel(channel):
        note("pc2 data channel announced")
        channel.on("message", on_message(1, channel))
        if not dc2_ready.done():
            dc2_ready.set_result(channel)

    opened = asyncio.get_running_loop().create_future()

    @dc1.on("open")
    def on_open():
        note("pc1 data channel open")
        opened.set_result(None)

    # ICE gave up: no need to wait for the hang guard.
    failed = asyncio.get_running_loop().create_future()
    for i, pc in enumerate(pcs):

        def on_state(i=i, pc=pc):
            note(f"pc{i + 1} ice {pc.iceConnectionState}")
            if pc.iceConnectionState == "failed" and not failed.done():
                failed.set_exception(RuntimeError(f"pc{i + 1} ICE connection failed"))

        pc.on("iceconnectionstatechange", on_state)

    # aiortc gathers every candidate in setLocalDescription and puts them in the SDP. With
    # the relay policy a side without one (its Allocate failed) cannot connect.
    def gathered(i):
        if not sdp_candidates(pcs[i].localDescription.sdp):
            raise RuntimeError(f"pc{i + 1} gathered no relay candidate (no allocation)")

    await pcs[0].setLocalDescription(await pcs[0].createOffer())
    gathered(0)
    await pcs[1].setRemoteDescription(pcs[0].localDescription)
    await pcs[1].setLocalDescription(await pcs[1].createAnswer())
    gathered(1)
    await pcs[0].setRemoteDescription(pcs[1].localDescription)
    note("offer/answer exchanged")
    done, _ = await asyncio.wait([opened, failed], return_when=asyncio.FIRST_COMPLETED)
    for f in done:
        f.result()
    for n in SIZES:
        dc1.send(payload("pc1", n))
    await dc2_ready
    await asyncio.gather(*all_received)
    note("all messages received")


async def main(url, username, credential):
    config = RTCConfiguration(
        iceServers=[RTCIceServer(urls=[url], username=username, credential=credential)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )
    pcs = [RTCPeerConnection(config), RTCPeerConnection(config)]
    received = [[], []]
    loop = asyncio.get_running_loop()
    all_received = [loop.create_future(), loop.create_future()]
    error = None
    try:
        await asyncio.wait_for(exchange(pcs, received, all_received), TIMEOUT_S)
    except asyncio.TimeoutError:
        error = f"timed out after {TIMEOUT_S} s"
    except Exception as e:  # noqa: BLE001 -- reported to the test, which fails on it
        error = f"{type(e).__name__}: {e}"
    if error:
        note(f"error: {error}")

    selected = []
    for pc in pcs:
        try:
            selected.append(selected_pair(pc))
        except AttributeError:
            selected.append(None)
    result = {
        "error": error,
        "aiortcVersion": aiortc.__version__,
        "aioiceVersion": aioice.__version__,
        "pc1ReceivedAll": received[0] == [payload("pc2", n) for n in SIZES],
        "pc2ReceivedAll": received[1] == [payload("pc1", n) for n in SIZES],
        "pc1Received": len(received[0]),
        "pc2Received": len(received[1]),
        "selected": selected,
        "candidates": [
            sdp_candidates(pc.localDescription.sdp) if pc.localDescription else [] for pc in pcs
        ],
        "log": log,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    # Keep the allocations live (aioice refreshes them) until the test is done with /sessions.
    await loop.run_in_executor(None, sys.stdin.read)
    for pc in pcs:
        await pc.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        print(f"aiortc {aiortc.__version__}, aioice {aioice.__version__}")
        sys.exit(0)
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(*sys.argv[1:]))
