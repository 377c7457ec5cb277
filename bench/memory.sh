#!/usr/bin/env bash
# Memory per idle allocation of turnd: starts a fresh turnd on loopback, sets up N
# allocations with turnd-load (channel mode: each with one permission and one channel),
# and prints the growth of turnd's resident memory (VmRSS) and of the kernel's slab
# (system-wide: includes the load tool's own client sockets) per allocation.
#
#   bench/memory.sh [N] [--no-build] [--rate PPS] [-- TURND-FLAGS...]   (default N = 10000)
#
# --rate sets the load's total packets per second (default 1000; 1 leaves the allocations
# idle, as an allocation that relayed nothing yet); flags after -- go to turnd (e.g.
# --no-telemetry). Bounded: the load runs 6 s; turnd is ended by its pid at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
N=10000
BUILD=1
RATE=1000
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
    --no-build) BUILD=0 ;;
    --rate) RATE=$2; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) N=$1 ;;
    esac
    shift
done
[ "$BUILD" = 1 ] && cargo build --release --workspace --bins >&2
BIN=target/release
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp /tmp/turnd-memory.XXXXXX)
"$BIN/turnd" --listen "127.0.0.1:$PORT" --relay-ip 127.0.0.1 --realm bench.test --user bench:pw \
    --allow-peer 127.0.0.0/8 --min-port 10000 --max-port 29999 --workers 2 --log-level warn \
    --unauth-rate 0 "${EXTRA[@]}" >"$LOG" 2>&1 &
TP=$!
trap 'kill $TP 2>/dev/null || true; wait $TP 2>/dev/null || true; rm -f "$LOG" "$LOG.load"' EXIT
sleep 1
kib() { awk -v k="$2" '$1 == k":" {print $2}' "$1"; }
rss0=$(kib /proc/$TP/status VmRSS)
slab0=$(kib /proc/meminfo Slab)
"$BIN/turnd-load" --server "127.0.0.1:$PORT" --user bench:pw -n "$N" --mode channel --rate "$RATE" \
    --duration 6 --threads 2 --peers 2 --server-pid "$TP" --setup-timeout 60 >"$LOG.load" 2>&1 &
LP=$!
# Wait (at most 60 s) until turnd holds a socket per allocation, then let setup settle.
for _ in $(seq 120); do
    [ "$(ls /proc/$TP/fd | wc -l)" -ge "$N" ] && break
    sleep 0.5
done
sleep 2
rss1=$(kib /proc/$TP/status VmRSS)
slab1=$(kib /proc/meminfo Slab)
fds=$(ls /proc/$TP/fd | wc -l)
wait $LP || true
grep '^setup' "$LOG.load" || true
awk -v n="$N" -v r0="$rss0" -v r1="$rss1" -v s0="$slab0" -v s1="$slab1" -v fds="$fds" 'BEGIN {
    printf "allocations %d, turnd fds %d\n", n, fds
    printf "turnd RSS: %d KiB -> %d KiB, %.2f KiB per allocation\n", r0, r1, (r1 - r0) / n
    printf "kernel slab (system-wide, tool sockets included): %.2f KiB per allocation\n", (s1 - s0) / n
}'
