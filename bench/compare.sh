#!/usr/bin/env bash
# Side-by-side benchmark: the same turnd-load runs against turnd, coturn and the floor
# forwarder (turnd-floor), all on loopback, in one run; prints a markdown table and the
# turnd/coturn ratios. See docs/benchmarks.md and BENCHMARKS.md.
#
#   bench/compare.sh            full matrix (about 5 minutes)
#   bench/compare.sh --quick    a short run (about 1 minute)
#
# Every run is bounded (duration + drain + setup timeout) and the whole script stops
# starting new runs after --max-minutes. The servers are started here and ended by their
# pids at exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
ARGS="$*"

DURATION=5
RATES="20000 50000 100000 150000 200000 300000 0"
ALLOCS="100 10000"
MODES="channel send"
TOPOLOGIES="peer pair"
MATRIX_RATE=100000
TCP_RATES="20000 50000"
SERVERS="floor floor_batch floor_gso turnd coturn"
THREADS=2
PEERS=2
SIZE=200
BURST=1
GSO=0
RTP=0
FLOOR_COUNT=1000000
MAX_MINUTES=30
BUILD=1
INSTALL=1
SERVER_CPUS=""
TOOL_CPUS=""
OUT=""

usage() {
    cat <<EOF
usage: bench/compare.sh [--quick] [options]
  --quick               short run: 2 s per point, rates "20000 100000 200000 0",
                        100 and 1000 allocations, channel mode only, 300,000 datagrams
                        per kernel-floor case, 10-minute cap
  --duration S          seconds of sending per point (default $DURATION)
  --rates "R ..."       rate sweep at 100 allocations, channel, peer; 0 = flat out
                        (default "$RATES")
  --allocations "N ..." allocation counts of the matrix (default "$ALLOCS")
  --modes "M ..."       channel and/or send (default "$MODES")
  --topologies "T ..."  peer and/or pair (default "$TOPOLOGIES")
  --matrix-rate R       offered pps of the matrix runs (default $MATRIX_RATE)
  --tcp-rates "R ..."   rates of the TCP rows (turnd and coturn only: 100 allocations,
                        channel, echo peers, clients over TCP); "" for none
                        (default "$TCP_RATES")
  --servers "S ..."     any of floor floor_batch floor_gso turnd turnd_notel coturn
                        (default "$SERVERS");
                        floor_batch is turnd-floor --batch (recvmmsg/sendmmsg),
                        floor_gso is turnd-floor --batch --gso --io-uring (also UDP
                        GSO sends and GRO reads, and sends through io_uring, as turnd
                        does: the fair floor), turnd_notel is turnd --no-telemetry
  --threads N           load tool threads (default $THREADS); --peers N echo sockets
  --size B              payload bytes (default $SIZE)
  --burst K             packets each allocation sends back to back (turnd-load --burst;
                        default $BURST)
  --gso                 send each burst as one UDP GSO message, echo peers and clients
                        receive with GRO (turnd-load --gso; UDP runs only)
  --rtp                 RTP-shaped payloads (turnd-load --rtp: an RTP header with sequence
                        number, timestamp and SSRC, what turnd's call-quality telemetry
                        reads; UDP runs only; --size at least 28)
  --floor-count N       datagrams per case of the kernel-floor measurement run first
                        (turnd-floor --syscall-cost; default $FLOOR_COUNT, 0 skips it)
  --max-minutes M       start no new run after M minutes (default $MAX_MINUTES)
  --server-cpus LIST    pin the servers to these CPUs (taskset -c LIST), e.g. 1
  --tool-cpus LIST      pin the load tool to these CPUs, e.g. 0
  --out FILE            raw RESULT lines (default bench/results/<time>.txt)
  --no-build            use the existing target/release binaries
  --no-install          do not apt-get install coturn when it is missing
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
    --quick)
        DURATION=2
        RATES="20000 100000 200000 0"
        ALLOCS="100 1000"
        MODES="channel"
        TCP_RATES="20000"
        FLOOR_COUNT=300000
        MAX_MINUTES=10
        ;;
    --duration) DURATION=$2; shift ;;
    --rates) RATES=$2; shift ;;
    --allocations) ALLOCS=$2; shift ;;
    --modes) MODES=$2; shift ;;
    --topologies) TOPOLOGIES=$2; shift ;;
    --matrix-rate) MATRIX_RATE=$2; shift ;;
    --tcp-rates) TCP_RATES=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --peers) PEERS=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --burst) BURST=$2; shift ;;
    --gso) GSO=1 ;;
    --rtp) RTP=1 ;;
    --floor-count) FLOOR_COUNT=$2; shift ;;
    --max-minutes) MAX_MINUTES=$2; shift ;;
    --server-cpus) SERVER_CPUS=$2; shift ;;
    --tool-cpus) TOOL_CPUS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-build) BUILD=0 ;;
    --no-install) INSTALL=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

has_server() { case " $SERVERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if [ "$BUILD" = 1 ]; then
    cargo build --release --workspace --bins >&2
fi
BIN="$ROOT/target/release"
for b in turnd turnd-load turnd-floor; do
    [ -x "$BIN/$b" ] || { echo "missing $BIN/$b (build with cargo build --release --workspace --bins)" >&2; exit 1; }
done

if has_server coturn && ! command -v turnserver >/dev/null 2>&1; then
    if [ "$INSTALL" = 1 ]; then
        echo "installing coturn from Debian" >&2
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y coturn >&2
    else
        echo "turnserver not found and --no-install given" >&2
        exit 1
    fi
fi

# 10,000 allocations need 10,000 sockets in the tool and in each server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TMP=$(mktemp -d /tmp/turnd-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

if [ -z "$OUT" ]; then
    mkdir -p bench/results
    OUT="bench/results/$(date -u +%Y%m%dT%H%M%SZ).txt"
fi
: >"$OUT"

USER_NAME=bench
USER_PASS=benchpass
REALM=bench.test
# Relay ports below the kernel's ephemeral range (32768-60999), where the tool's client
# sockets live, so the servers never collide with them.
MIN_PORT=10000
MAX_PORT=29999

free_port() {
    python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

declare -A PORT PID

# Optional CPU pinning; the servers get one worker (relay thread) per CPU they may use.
SERVER_PIN=()
TOOL_PIN=()
[ -n "$SERVER_CPUS" ] && SERVER_PIN=(taskset -c "$SERVER_CPUS")
[ -n "$TOOL_CPUS" ] && TOOL_PIN=(taskset -c "$TOOL_CPUS")
SERVER_THREADS=$("${SERVER_PIN[@]}" nproc)

start_floor() {
    PORT[floor]=$(free_port)
    "${SERVER_PIN[@]}" "$BIN/turnd-floor" --listen "127.0.0.1:${PORT[floor]}" \
        --threads "$SERVER_THREADS" --max-seconds 7200 \
        2>"$TMP/floor.log" &
    PID[floor]=$!
    PIDS+=("${PID[floor]}")
}

start_floor_batch() {
    PORT[floor_batch]=$(free_port)
    "${SERVER_PIN[@]}" "$BIN/turnd-floor" --listen "127.0.0.1:${PORT[floor_batch]}" --batch \
        --threads "$SERVER_THREADS" --max-seconds 7200 \
        2>"$TMP/floor_batch.log" &
    PID[floor_batch]=$!
    PIDS+=("${PID[floor_batch]}")
}

start_floor_gso() {
    PORT[floor_gso]=$(free_port)
    "${SERVER_PIN[@]}" "$BIN/turnd-floor" --listen "127.0.0.1:${PORT[floor_gso]}" --batch --gso --io-uring \
        --threads "$SERVER_THREADS" --max-seconds 7200 \
        2>"$TMP/floor_gso.log" &
    PID[floor_gso]=$!
    PIDS+=("${PID[floor_gso]}")
}

start_turnd() {
    PORT[turnd]=$(free_port)
    # Every allocation comes from 127.0.0.1. The reflection budget lifts for an address once
    # it holds an allocation; --unauth-rate 0 turns it off from the start (coturn has none),
    # as in every earlier run, so results stay comparable.
    "${SERVER_PIN[@]}" "$BIN/turnd" --listen "127.0.0.1:${PORT[turnd]}" --relay-ip 127.0.0.1 \
        --realm "$REALM" --user "$USER_NAME:$USER_PASS" --allow-peer 127.0.0.0/8 \
        --min-port "$MIN_PORT" --max-port "$MAX_PORT" --workers "$SERVER_THREADS" --log-level warn \
        --unauth-rate 0 \
        >"$TMP/turnd.log" 2>&1 &
    PID[turnd]=$!
    PIDS+=("${PID[turnd]}")
}

# turnd with call-quality telemetry off (--no-telemetry), to measure what it costs: run
# with --servers "turnd turnd_notel" --rtp.
start_turnd_notel() {
    PORT[turnd_notel]=$(free_port)
    "${SERVER_PIN[@]}" "$BIN/turnd" --listen "127.0.0.1:${PORT[turnd_notel]}" --relay-ip 127.0.0.1 \
        --realm "$REALM" --user "$USER_NAME:$USER_PASS" --allow-peer 127.0.0.0/8 \
        --min-port "$MIN_PORT" --max-port "$MAX_PORT" --workers "$SERVER_THREADS" --log-level warn \
        --unauth-rate 0 --no-telemetry \
        >"$TMP/turnd_notel.log" 2>&1 &
    PID[turnd_notel]=$!
    PIDS+=("${PID[turnd_notel]}")
}

start_coturn() {
    PORT[coturn]=$(free_port)
    cat >"$TMP/turnserver.conf" <<EOF
listening-ip=127.0.0.1
listening-port=${PORT[coturn]}
relay-ip=127.0.0.1
relay-threads=$SERVER_THREADS
min-port=$MIN_PORT
max-port=$MAX_PORT
lt-cred-mech
user=$USER_NAME:$USER_PASS
realm=$REALM
allow-loopback-peers
no-cli
no-tls
no-dtls
no-software-attribute
log-file=$TMP/coturn.log
simple-log
no-stdout-log
pidfile=$TMP/turnserver.pid
EOF
    "${SERVER_PIN[@]}" turnserver -c "$TMP/turnserver.conf" >"$TMP/coturn.out" 2>&1 &
    PID[coturn]=$!
    PIDS+=("${PID[coturn]}")
}

# Waits until a tiny load gets through (both servers and the floor answer TURN).
wait_ready() {
    local s=$1
    for _ in $(seq 1 40); do
        if "$BIN/turnd-load" --server "127.0.0.1:${PORT[$s]}" --user "$USER_NAME:$USER_PASS" \
            -n 2 --rate 100 --duration 0.2 --drain 0.5 --threads 1 --peers 1 \
            --setup-timeout 2 >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "${PID[$s]}" 2>/dev/null || break
        sleep 0.25
    done
    echo "$s did not start; its log:" >&2
    cat "$TMP/$s".* >&2 || true
    exit 1
}

for s in $SERVERS; do
    "start_$s"
done
for s in $SERVERS; do
    wait_ready "$s"
done

START=$(date +%s)
COTURN_VERSION=$( (turnserver --version 2>/dev/null || true) | head -1)
{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), $(nproc) cores, load average at start:$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# turnd $(git rev-parse --short HEAD 2>/dev/null || echo '?'), coturn ${COTURN_VERSION:-absent}"
    echo "# command: bench/compare.sh $ARGS"
    echo "# servers: $SERVER_THREADS threads each${SERVER_CPUS:+, on CPUs $SERVER_CPUS}; tool: $THREADS threads, $PEERS echo sockets${TOOL_CPUS:+, on CPUs $TOOL_CPUS}"
    echo "# load shape: burst=$BURST gso=$GSO rtp=$RTP (packets per allocation back to back; UDP GSO sends and GRO receives in the tool; RTP-shaped payloads)"
    # Whether floor_gso got the offloads from this kernel (its banner says so).
    if has_server floor_gso; then
        echo "# floor_gso: $(head -2 "$TMP/floor_gso.log" | tr '\n' ' ')"
    fi
    # The kernel's own CPU per loopback datagram (sendmmsg + recvmmsg, one thread, no
    # server), measured before the servers get any load.
    if [ "$FLOOR_COUNT" != 0 ]; then
        "${TOOL_PIN[@]}" "$BIN/turnd-floor" --syscall-cost --syscall-cost-count "$FLOOR_COUNT" \
            2>"$TMP/floor-cost.err" | sed 's/^/# kernel floor: /' ||
            echo "# kernel floor: measurement failed: $(head -3 "$TMP/floor-cost.err")"
    fi
} | tee -a "$OUT" >&2

# One load run against one server; appends "server=S <RESULT fields>" to $OUT. The
# optional 7th argument is the client transport (udp by default).
run() {
    local s=$1 n=$2 mode=$3 topo=$4 rate=$5 phase=$6 transport=${7:-udp}
    if [ $(($(date +%s) - START)) -ge $((MAX_MINUTES * 60)) ]; then
        echo "skipped (over --max-minutes): $s n=$n $mode $topo rate=$rate" >&2
        return 0
    fi
    local line shape=(--burst "$BURST") gso=0
    # GSO is for UDP clients only, and so are RTP-shaped payloads.
    if [ "$GSO" = 1 ] && [ "$transport" = udp ]; then
        shape+=(--gso)
        gso=1
    fi
    if [ "$RTP" = 1 ] && [ "$transport" = udp ]; then
        shape+=(--rtp)
    fi
    line=$("${TOOL_PIN[@]}" "$BIN/turnd-load" --server "127.0.0.1:${PORT[$s]}" --user "$USER_NAME:$USER_PASS" \
        --transport "$transport" "${shape[@]}" \
        -n "$n" --mode "$mode" --topology "$topo" --rate "$rate" --duration "$DURATION" \
        --size "$SIZE" --threads "$THREADS" --peers "$PEERS" --server-pid "${PID[$s]}" \
        --setup-timeout 60 2>"$TMP/load.err" | sed -n 's/^RESULT //p') || true
    if [ -z "$line" ]; then
        echo "run failed: $s n=$n $mode $topo rate=$rate $transport: $(head -3 "$TMP/load.err")" >&2
        line="allocations=$n ready=0 transport=$transport mode=$mode topology=$topo rate=$rate burst=$BURST gso=$gso failed=1"
    fi
    echo "server=$s phase=$phase $line" | tee -a "$OUT" >&2
}

# Rate sweep: 100 allocations, channel, peer; servers interleaved at each rate.
for rate in $RATES; do
    for s in $SERVERS; do
        run "$s" 100 channel peer "$rate" sweep
    done
done
# Matrix at a fixed offered rate.
for n in $ALLOCS; do
    for mode in $MODES; do
        for topo in $TOPOLOGIES; do
            for s in $SERVERS; do
                if [ "$n" = 100 ] && [ "$mode" = channel ] && [ "$topo" = peer ] &&
                    [[ " $RATES " == *" $MATRIX_RATE "* ]]; then
                    continue # already measured by the sweep
                fi
                run "$s" "$n" "$mode" "$topo" "$MATRIX_RATE" matrix
            done
        done
    done
done

# TCP rows: the clients reach the server over TCP (the allocations relay over UDP), on the
# same listening port; the floor forwarders speak UDP only.
for rate in $TCP_RATES; do
    for s in turnd coturn; do
        if has_server "$s"; then
            run "$s" 100 channel peer "$rate" tcp tcp
        fi
    done
done

echo "# finished in $(($(date +%s) - START)) s, load average at end:$(cut -d" " -f1-3 /proc/loadavg)" | tee -a "$OUT" >&2
python3 "$ROOT/bench/table.py" --matrix-rate "$MATRIX_RATE" "$OUT"
echo
echo "raw results: $OUT"
