#!/usr/bin/env bash
# Installs what the kernel fast path (server.kernel-offload, bpf/relay.bpf.c) needs to build
# and what its tests use: clang (compiles the XDP program in build.rs), libbpf-dev (its
# bpf_helpers.h), ethtool (the tests set the veth offloads in their namespaces) and iproute2
# (ip netns, veth). Idempotent: does nothing when all are there.
set -euo pipefail

have() {
    command -v clang >/dev/null && [ -e /usr/include/bpf/bpf_helpers.h ] &&
        command -v ethtool >/dev/null && command -v ip >/dev/null
}
if have; then
    echo "setup-bpf: $(clang --version | head -1)"
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "setup-bpf: installing clang, libbpf-dev, ethtool, iproute2"
$sudo apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    clang libbpf-dev ethtool iproute2
have || { echo "setup-bpf: installed, but something is still missing" >&2; exit 1; }
echo "setup-bpf: $(clang --version | head -1)"
