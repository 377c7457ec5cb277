#!/usr/bin/env bash
# Many allocations on one node (docs/benchmarks.md, docs/fleet.md): a release turnd with
# seven relay addresses (127.0.0.2 .. 127.0.0.8, each with the whole port range), and
# tools/examples/many_allocations.rs setting up N allocations from eight client addresses
# (127.0.1.1 ..), refreshing them all, and relaying through a sample. Prints turnd's RSS and
# memory per allocation, its descriptors, and its CPU idle and under the sample's traffic.
#
#   bench/many_allocations.sh [N] [--no-build]     (default N = 100000)
#
# turnd needs a descriptor per allocation: the script raises RLIMIT_NOFILE (ulimit -n, up
# to fs.nr_open as root). Where the hard limit cannot be raised (a container without
# CAP_SYS_RESOURCE), N is cut to what the limit allows, and the script says so.
# Loopback only; bounded (setup at most N Allocates, 10 s of traffic); turnd ended by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
N=100000
BUILD=1
for a in "$@"; do
    case "$a" in
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) N=$a ;;
    esac
done
if [ "$BUILD" = 1 ]; then
    cargo build --release --bin turnd -p turnd -q
    cargo build --release -p turnd-tools --example many_allocations -q
fi
want=$((N + 1000))
ulimit -Hn "$want" 2>/dev/null || true
ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
limit=$(ulimit -n)
if [ "$limit" -lt "$want" ]; then
    echo "RLIMIT_NOFILE is $limit here and cannot be raised (no CAP_SYS_RESOURCE):" \
        "N cut from $N to $((limit - 1000))"
    N=$((limit - 1000))
fi
D=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$D/turnd.toml" <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
realm = "bench.test"
workers = 2
[relay]
ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8"]
[auth]
users = [{ name = "bench", password = "pw" }]
[peers]
allow = ["127.0.0.0/8"]
[limits]
unauth-rate = 0
[log]
level = "warn"
TOML
target/release/turnd --config "$D/turnd.toml" >"$D/turnd.log" 2>&1 &
TP=$!
trap 'kill -9 $TP 2>/dev/null || true; wait $TP 2>/dev/null || true; rm -rf "$D"' EXIT
sleep 1
kill -0 "$TP" || { cat "$D/turnd.log"; exit 1; }
target/release/examples/many_allocations "127.0.0.1:$PORT" bench:pw "$N" 8 "$TP" 200 10
echo "turnd log warnings: $(grep -c . "$D/turnd.log" || true)"
