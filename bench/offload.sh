#!/usr/bin/env bash
# System-wide benchmark for the kernel fast path (issue 19): the same turnd-load runs
# against the floor, turnd with and without --kernel-offload, Debian's coturn and coturn
# 4.17.1, with the server in one network namespace and the load tool and its echo peers in
# another, joined by one veth pair. CPU is counted for the whole machine (/proc/stat, all
# cores, softirq included) over each sending window, and the tool's own CPU is subtracted.
# See docs/benchmarks.md ("bench/offload.sh").
#
#   bench/offload.sh             the 100k pps point and the rate sweep (about 5 minutes)
#   bench/offload.sh --check     a smoke run: 1 s at 100k pps, the rows that exist
#
# Must run as root (it makes namespaces and a veth pair). Addresses come from the
# benchmarking ranges only (198.18.0.0/15, 2001:2::/48) and no namespace has a default
# route: nothing leaves them. Every run is bounded (duration + drain + setup timeout, and a
# timeout around it), the script starts no new run after --max-minutes, and everything it
# made (servers, namespaces, the veth pair, temporary files) is removed at exit, on failure
# too.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
ARGS="$*"

DURATION=5
RATES="20000 50000 100000 200000 0"
TARGET_RATE=100000
SERVERS="floor turnd turnd_offload coturn coturn417"
ALLOCS=100
SIZE=200
BURST=1
GSO=
THREADS=2
PEERS=2
REPEAT=1
MAX_MINUTES=20
QUIET=0.3
QUIET_WAIT=60
NAPI_THREADS=0
KERNEL_LOAD=0
BUILD=1
INSTALL=1
CHECK=0
OUT=""

usage() {
    cat <<EOF
usage: bench/offload.sh [--check] [options]     (as root)
  --check               smoke run: 1 s at 100k pps, the rows that exist, nothing installed
                        but ethtool, results to a temporary file
  --servers "S ..."     rows, any of floor turnd turnd_offload coturn coturn417
                        (default "$SERVERS"); floor is turnd-floor --batch --gso --io-uring,
                        turnd_offload is turnd --kernel-offload on (skipped with a note when
                        this turnd has no such flag), coturn417 is the binary named by
                        COTURN417=/path/to/turnserver, run with --multiplex-peer --udp-gso
                        (skipped with a note when unset)
  --rates "R ..."       offered pps of the sweep, 0 = flat out (default "$RATES"); the
                        highest delivered rate with under 1% loss is taken from these
  --target-rate R       the rate CPU per packet and p99 are compared at (default $TARGET_RATE;
                        run once more if not among --rates)
  --duration S          seconds of sending per run (default $DURATION)
  --repeat N            the whole sweep N times, rows interleaved (default $REPEAT)
  --threads N           load tool threads (default $THREADS); --peers N echo sockets
  --max-minutes M       start no new run after M minutes (default $MAX_MINUTES)
  --quiet C             before each run, wait until the machine is busy with less than C
                        cores (1 s samples of /proc/stat with the server idle; default $QUIET)
  --quiet-wait S        ... but at most S seconds, then run anyway (default $QUIET_WAIT; 0
                        does not wait). What the last sample saw goes into bg_cores=
  --out FILE            raw RESULT lines (default bench/results/offload-<time>.txt)
  --burst K             packets each allocation sends back to back (turnd-load --burst;
                        default 1, the issue's CPU measure); with --gso each burst is one
                        UDP GSO send: a cheaper load tool, for the highest-rate question
  --gso                 (see --burst)
  --napi-threads        receive processing in NAPI kernel threads on both veth ends (GRO
                        on and tx checksumming off on both, threaded NAPI on both), so
                        that none of it is charged to the load tool or the server process:
                        "all cores - tool" then counts the receive path of both directions
                        (and any XDP program) as the relay's, for every row alike
  --kernel-load         the load's data side in the kernel (turnd-load --kernel-load vl0):
                        an XDP program sends the clients' ChannelData out of vl0 and one on
                        vl0 echoes for the peers and counts what comes back, so the tool
                        costs little next to the server and the server sets the highest
                        rate; needs GRO on and tx checksumming off on both ends (set for
                        every row). Combine with --napi-threads for fair accounting
  --no-build            use the existing target/release binaries
  --no-install          do not apt-get install coturn when it is missing (skip the row)
The load of every run: $ALLOCS allocations, ${SIZE}-byte payloads, channel mode, bursts of $BURST,
echo peers (peer topology), clients over UDP.
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
    --check) CHECK=1 ;;
    --servers) SERVERS=$2; shift ;;
    --rates) RATES=$2; shift ;;
    --target-rate) TARGET_RATE=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --peers) PEERS=$2; shift ;;
    --max-minutes) MAX_MINUTES=$2; shift ;;
    --quiet) QUIET=$2; shift ;;
    --quiet-wait) QUIET_WAIT=$2; shift ;;
    --out) OUT=$2; shift ;;
    --napi-threads) NAPI_THREADS=1 ;;
    --kernel-load) KERNEL_LOAD=1 ;;
    --burst) BURST=$2; shift ;;
    --gso) GSO=--gso ;;
    --no-build) BUILD=0 ;;
    --no-install) INSTALL=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# --kernel-load: every allocation gets an echo peer endpoint of its own (the program on vl0
# answers for any port; the sockets only hold the ports). coturn's --multiplex-peer
# demultiplexes a relay thread's shared socket by peer IP:port and refuses a second
# allocation on an endpoint another already uses: with 2 echo sockets it sets up 4 of
# 100 allocations.
if [ "$KERNEL_LOAD" = 1 ] && [[ " $ARGS " != *" --peers "* ]]; then
    PEERS=$ALLOCS
fi
if [ "$CHECK" = 1 ]; then
    DURATION=1
    RATES="100000"
    TARGET_RATE=100000
    REPEAT=1
    MAX_MINUTES=3
    QUIET_WAIT=0
    INSTALL=0
fi
for v in "$DURATION" "$TARGET_RATE" "$REPEAT" "$THREADS" "$PEERS" "$MAX_MINUTES" "$QUIET" "$QUIET_WAIT"; do
    case "$v" in
    '' | *[!0-9.]*) echo "not a number: '$v'" >&2; exit 2 ;;
    esac
done
for s in $SERVERS; do
    case "$s" in
    floor | turnd | turnd_offload | coturn | coturn417) ;;
    *) echo "unknown server row: $s" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" != 0 ]; then
    echo "bench/offload.sh makes network namespaces: run it as root" >&2
    exit 1
fi

NS_S=turnd-bs # the server under test
NS_L=turnd-bl # the load tool and its echo peers
SRV_IP=198.18.0.1
LOAD_IP=198.18.0.2
PEER_IPS=198.18.0.3,198.18.0.4
SRV_IP6=2001:2::1
LOAD_IP6=2001:2::2
USER_NAME=bench
USER_PASS=benchpass
REALM=bench.test
# Inside the server's namespace nothing else listens: fixed ports, relay ports below the
# kernel's ephemeral range.
PORT=3478
MIN_PORT=10000
MAX_PORT=29999
IN_S=(ip netns exec "$NS_S")
IN_L=(ip netns exec "$NS_L")

TMP=$(mktemp -d /tmp/turnd-obench.XXXXXX)
SERVER_PID=""
NETNS_MADE=0
cleanup() {
    local rc=$?
    if [ -n "$SERVER_PID" ]; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "$NETNS_MADE" = 1 ]; then
        # Any process still in a namespace (a load run cut short) is ours: end it by pid.
        for ns in "$NS_S" "$NS_L"; do
            for p in $(ip netns pids "$ns" 2>/dev/null); do
                kill -KILL "$p" 2>/dev/null || true
            done
        done
        # Deleting the namespaces deletes the veth pair with them.
        ip netns del "$NS_S" 2>/dev/null || true
        ip netns del "$NS_L" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- binaries and packages ------------------------------------------------------------------

if [ "$BUILD" = 1 ]; then
    cargo build --release --workspace --bins >&2
fi
BIN="$ROOT/target/release"
for b in turnd turnd-load turnd-floor; do
    [ -x "$BIN/$b" ] || { echo "missing $BIN/$b (cargo build --release --workspace --bins)" >&2; exit 1; }
done

apt_install() {
    echo "installing $* from Debian" >&2
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2
}
command -v ethtool >/dev/null 2>&1 || apt_install ethtool

ROWS=""
NOTES=()
for s in $SERVERS; do
    case "$s" in
    coturn)
        if ! command -v turnserver >/dev/null 2>&1; then
            if [ "$INSTALL" = 1 ]; then
                apt_install coturn
            else
                NOTES+=("coturn: skipped, turnserver is not installed (apt-get install coturn)")
                continue
            fi
        fi
        ;;
    coturn417)
        if [ -z "${COTURN417:-}" ]; then
            NOTES+=("coturn417: skipped, COTURN417=/path/to/turnserver (4.17.1) is not set")
            continue
        fi
        if [ ! -x "$COTURN417" ]; then
            NOTES+=("coturn417: skipped, COTURN417=$COTURN417 is not an executable")
            continue
        fi
        ;;
    turnd_offload)
        if ! "$BIN/turnd" --help 2>/dev/null | grep -q -- '--kernel-offload'; then
            NOTES+=("turnd_offload: skipped, this turnd has no --kernel-offload")
            continue
        fi
        ;;
    esac
    ROWS="$ROWS $s"
done
ROWS=${ROWS# }
for n in "${NOTES[@]}"; do
    echo "note: $n" >&2
done
[ -n "$ROWS" ] || { echo "no server row to run" >&2; exit 1; }

# 100 allocations: 100 sockets in the tool and in each server, and then some.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- the namespaces ----------------------------------------------------------------------------

# A namespace left by a run that was killed (SIGKILL skips the trap) is removed if nothing
# runs in it; one with processes in it belongs to a run still going: stop.
for ns in "$NS_S" "$NS_L"; do
    if ip netns list | grep -qw "^$ns"; then
        if [ -n "$(ip netns pids "$ns" 2>/dev/null)" ]; then
            echo "namespace $ns exists with processes in it: another bench/offload.sh run, or one" \
                "that was SIGKILLed (its processes: ip netns pids $ns)" >&2
            exit 1
        fi
        echo "removing namespace $ns left by an earlier run" >&2
        ip netns del "$ns"
    fi
done

NETNS_MADE=1
ip netns add "$NS_S"
ip netns add "$NS_L"
ip link add vs0 netns "$NS_S" type veth peer name vl0 netns "$NS_L"
"${IN_S[@]}" ip link set lo up
"${IN_L[@]}" ip link set lo up
"${IN_S[@]}" ip addr add "$SRV_IP/24" dev vs0
"${IN_S[@]}" ip addr add "$SRV_IP6/64" dev vs0 nodad
"${IN_L[@]}" ip addr add "$LOAD_IP/24" dev vl0
for p in ${PEER_IPS//,/ }; do
    "${IN_L[@]}" ip addr add "$p/24" dev vl0
done
"${IN_L[@]}" ip addr add "$LOAD_IP6/64" dev vl0 nodad
"${IN_S[@]}" ip link set vs0 up
"${IN_L[@]}" ip link set vl0 up
# What the offload needs of the veth pair, applied for every row so the comparison is fair:
# - tx checksumming off on the load end: the tool's and the peers' packets then carry full
#   UDP checksums, as they do on a real wire. With it on, the kernel leaves them
#   CHECKSUM_PARTIAL (to be filled in by a NIC that a veth does not have), which an XDP
#   program on the server end cannot see and cannot fix up.
# - GRO on on the load end: frames the server end sends back with XDP_TX or a redirect
#   arrive through ndo_xdp_xmit, which a veth serves only when its peer receives through
#   NAPI; GRO on turns NAPI on. (UDP packets to plain sockets are not coalesced by it.)
"${IN_L[@]}" ethtool -K vl0 tx off >"$TMP/ethtool.out" 2>&1 || { cat "$TMP/ethtool.out" >&2; exit 1; }
"${IN_L[@]}" ethtool -K vl0 gro on >"$TMP/ethtool.out" 2>&1 || { cat "$TMP/ethtool.out" >&2; exit 1; }
# --napi-threads: who pays for the receive path. By default a packet sent into a veth is
# received (IP, UDP, the socket queue; an XDP program under NAPI too) in softirq on the
# sender's CPU, right inside its send, and with tick-based CPU accounting that time is
# charged to the sending process: the server's receive path to the load tool, and an XDP
# program on vs0 too. With NAPI on both ends for every packet (GRO on; tx checksumming off,
# without which a veth passes packets from a sender with TSO around NAPI) and threaded
# NAPI, it all runs in the kernel threads napi/vs0-* and napi/vl0-*, charged to neither.
# --kernel-load: the tool's frames are XDP frames sent into vl0, and the echoes leave vl0 by
# redirect: the server end must receive through NAPI too (GRO on), and the server's packets
# must carry full checksums (tx off) for the echo program, which swaps addresses and ports
# and leaves the checksum as it found it.
if [ "$KERNEL_LOAD" = 1 ]; then
    "${IN_S[@]}" ethtool -K vs0 tx off gro on >"$TMP/ethtool.out" 2>&1 || { cat "$TMP/ethtool.out" >&2; exit 1; }
fi
if [ "$NAPI_THREADS" = 1 ]; then
    for end in "$NS_S vs0" "$NS_L vl0"; do
        read -r ns dev <<<"$end"
        ip netns exec "$ns" ethtool -K "$dev" tx off gro on >"$TMP/ethtool.out" 2>&1 || { cat "$TMP/ethtool.out" >&2; exit 1; }
        ip netns exec "$ns" sh -c "echo 1 > /sys/class/net/$dev/threaded" ||
            { echo "threaded NAPI on $dev refused" >&2; exit 1; }
    done
fi
# No default route in either namespace: only the /24 and /64 on the link are reachable.
if "${IN_S[@]}" ip route show default | grep -q . || "${IN_L[@]}" ip route show default | grep -q .; then
    echo "a namespace has a default route: refusing to run" >&2
    exit 1
fi
# Whether the pair passes traffic shows at once: every run first waits for a tiny load to
# get through the server (wait_ready).

NCPU=$(nproc)

# --- the servers ------------------------------------------------------------------------------

# Each run gets a fresh server, alone in its namespace (a kernel program attached to vs0 by
# turnd_offload must not sit under the other rows' traffic), ended by its pid after the run.
start_server() {
    local s=$1
    case "$s" in
    floor)
        "${IN_S[@]}" "$BIN/turnd-floor" --listen "$SRV_IP:$PORT" --batch --gso --io-uring \
            --threads "$NCPU" --max-seconds 600 >"$TMP/server.log" 2>&1 &
        ;;
    turnd | turnd_offload)
        local extra=()
        [ "$s" = turnd_offload ] && extra=(--kernel-offload on)
        # --unauth-rate 0 as in bench/compare.sh: every allocation comes from one address.
        "${IN_S[@]}" "$BIN/turnd" --listen "$SRV_IP:$PORT" --relay-ip "$SRV_IP" \
            --realm "$REALM" --user "$USER_NAME:$USER_PASS" --allow-peer 198.18.0.0/15 \
            --min-port "$MIN_PORT" --max-port "$MAX_PORT" --workers "$NCPU" --log-level warn \
            --unauth-rate 0 "${extra[@]}" >"$TMP/server.log" 2>&1 &
        ;;
    coturn | coturn417)
        local bin=turnserver extra=()
        if [ "$s" = coturn417 ]; then
            bin=$COTURN417
            extra=(--multiplex-peer --udp-gso)
        fi
        cat >"$TMP/turnserver.conf" <<EOF
listening-ip=$SRV_IP
listening-port=$PORT
relay-ip=$SRV_IP
relay-threads=$NCPU
min-port=$MIN_PORT
max-port=$MAX_PORT
lt-cred-mech
user=$USER_NAME:$USER_PASS
realm=$REALM
no-cli
no-tls
no-dtls
no-software-attribute
log-file=$TMP/coturn.log
simple-log
no-stdout-log
pidfile=$TMP/turnserver.pid
EOF
        "${IN_S[@]}" "$bin" -c "$TMP/turnserver.conf" "${extra[@]}" >"$TMP/server.log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
}

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        # SIGKILL: turnd drains on SIGTERM; nothing to keep from a benchmark server.
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}

load() {
    timeout -s KILL $((${DURATION%.*} + 100)) "${IN_L[@]}" "$BIN/turnd-load" \
        --server "$SRV_IP:$PORT" --client-ip "$LOAD_IP" --peer-ip "$PEER_IPS" \
        --user "$USER_NAME:$USER_PASS" "$@"
}

# Waits until a tiny load gets through.
wait_ready() {
    local s=$1
    for _ in $(seq 1 40); do
        if load -n 2 --rate 100 --duration 0.2 --drain 0.5 --threads 1 --peers 1 \
            --setup-timeout 2 >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.25
    done
    echo "$s did not start; its log:" >&2
    cat "$TMP/server.log" "$TMP"/coturn*.log >&2 2>/dev/null || true
    return 1
}

# Where a kernel program sits on the server's interface (xdp, tc, or none).
attached() {
    local a=""
    "${IN_S[@]}" ip -d link show vs0 | grep -q 'prog/xdp\|xdpgeneric\|xdpdrv\| xdp ' && a=xdp
    if "${IN_S[@]}" tc filter show dev vs0 ingress 2>/dev/null | grep -q bpf; then
        a=${a:+$a+}tc
    fi
    echo "${a:-none}"
}

# Where packets were dropped, for the loss column: the veth pair's drop and error counters
# (ethtool -S of both ends: queue drops, XDP drops, XDP_TX and ndo_xdp_xmit errors, but not
# vl0's XDP drops under --kernel-load, which are turnd-load's sink consuming what came back; and the
# interfaces' rx_dropped and tx_dropped: a full NAPI ring drops at the sender) and the
# UDP receive-buffer overflows of each namespace (/proc/net/snmp) and the machine's backlog
# drops (/proc/net/softnet_stat, all CPUs: packets that found netdev_max_backlog full), as
# "veth srv_udp load_udp backlog".
drop_counts() {
    local veth=0 v
    for v in $("${IN_S[@]}" ethtool -S vs0 2>/dev/null | awk '/drops|errors/ { s += $2 } END { print s + 0 }') \
        $("${IN_L[@]}" ethtool -S vl0 2>/dev/null | awk -v kl="$KERNEL_LOAD" '
            kl == 1 && /xdp_drops/ { next }   # --kernel-load: the sink taking the round trips back
            /drops|errors/ { s += $2 } END { print s + 0 }') \
        $("${IN_S[@]}" cat /sys/class/net/vs0/statistics/rx_dropped /sys/class/net/vs0/statistics/tx_dropped) \
        $("${IN_L[@]}" cat /sys/class/net/vl0/statistics/rx_dropped /sys/class/net/vl0/statistics/tx_dropped); do
        veth=$((veth + v))
    done
    echo "$veth $(udp_rcvbuf_errors "${IN_S[@]}") $(udp_rcvbuf_errors "${IN_L[@]}") $(backlog_drops)"
}

# The second column of /proc/net/softnet_stat (hexadecimal), summed over the CPUs.
backlog_drops() {
    local sum=0 _p dropped _rest
    while read -r _p dropped _rest; do
        sum=$((sum + 16#$dropped))
    done </proc/net/softnet_stat
    echo "$sum"
}

# RcvbufErrors of UDP and UDP6 in the namespace the command prefix enters.
udp_rcvbuf_errors() {
    "$@" cat /proc/net/snmp /proc/net/snmp6 2>/dev/null | awk '
        $1 == "Udp:" && $2 == "InDatagrams" { for (i = 2; i <= NF; i++) if ($i == "RcvbufErrors") col = i; next }
        $1 == "Udp:" && col { s += $col }
        $1 == "Udp6RcvbufErrors" { s += $2 }
        END { print s + 0 }'
}

# The machine's busy CPU time in clock ticks (/proc/stat: all but idle and iowait).
busy_ticks() {
    local _cpu user nice system _idle _iowait irq softirq steal _rest
    read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}

if [ -z "$OUT" ]; then
    if [ "$CHECK" = 1 ]; then
        OUT="$TMP/check.txt"
    else
        mkdir -p bench/results
        OUT="bench/results/offload-$(date -u +%Y%m%dT%H%M%SZ).txt"
    fi
fi
: >"$OUT"

START=$(date +%s)
HZ=$(getconf CLK_TCK)
{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), $NCPU cores, load average at start:$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# turnd $(git rev-parse --short HEAD 2>/dev/null || echo '?'), coturn $( (turnserver --version 2>/dev/null || echo absent) | head -1), coturn417 ${COTURN417:-unset}"
    echo "# command: bench/offload.sh $ARGS"
    echo "# namespaces: server $NS_S ($SRV_IP, $SRV_IP6 on vs0), load $NS_L ($LOAD_IP, peers $PEER_IPS, $LOAD_IP6 on vl0), one veth pair, no default route"
    echo "# vl0: $("${IN_L[@]}" ethtool -k vl0 | grep -E '^(tx-checksumming|generic-receive-offload):' | tr -s ' \n' ' ')threaded NAPI $("${IN_L[@]}" cat /sys/class/net/vl0/threaded)"
    echo "# vs0: $("${IN_S[@]}" ethtool -k vs0 | grep -E '^(tx-checksumming|generic-receive-offload):' | tr -s ' \n' ' ')threaded NAPI $("${IN_S[@]}" cat /sys/class/net/vs0/threaded)"
    [ "$KERNEL_LOAD" = 1 ] && echo "# load data side in the kernel (turnd-load --kernel-load vl0): frames from a packet socket, XDP echo and sink on vl0, $PEERS echo endpoints"
    echo "# load: $ALLOCS allocations, $SIZE-byte payloads, channel, peer, burst $BURST${GSO:+ (GSO)}, UDP, $THREADS threads, $PEERS echo sockets; servers: $NCPU threads each, a fresh one per run"
    echo "# rows: $ROWS"
    for n in "${NOTES[@]}"; do
        echo "# note: $n"
    done
} | tee -a "$OUT" >&2

# One load run against a fresh server; appends "server=S phase=P bg_cores=B attached=A <RESULT>".
run() {
    local s=$1 rate=$2 phase=$3 line bg0 bg1
    if [ $(($(date +%s) - START)) -ge $((MAX_MINUTES * 60)) ]; then
        echo "skipped (over --max-minutes): $s rate=$rate" >&2
        return 0
    fi
    start_server "$s"
    if ! wait_ready "$s"; then
        stop_server
        echo "server=$s phase=$phase allocations=$ALLOCS rate=$rate failed=1" | tee -a "$OUT" >&2
        return 0
    fi
    # What the machine is busy with while the server idles, in the second before the run:
    # other work on a shared machine shows up here, and in the system-wide numbers below.
    # Wait (bounded) for a quiet second.
    local bg waited=0
    while :; do
        bg0=$(busy_ticks)
        sleep 1
        bg1=$(busy_ticks)
        bg=$(awk -v t=$((bg1 - bg0)) -v hz="$HZ" 'BEGIN { printf "%.2f", t / hz }')
        if awk -v b="$bg" -v q="$QUIET" 'BEGIN { exit !(b < q) }' || [ "$waited" -ge "${QUIET_WAIT%.*}" ]; then
            break
        fi
        waited=$((waited + 1))
    done
    local att d0 d1
    att=$(attached)
    d0=$(drop_counts)
    local kl=()
    [ "$KERNEL_LOAD" = 1 ] && kl=(--kernel-load vl0)
    # shellcheck disable=SC2086 # $GSO is empty or one flag
    line=$(load -n "$ALLOCS" --mode channel --topology peer --burst "$BURST" $GSO "${kl[@]}" --rate "$rate" \
        --duration "$DURATION" --size "$SIZE" --threads "$THREADS" --peers "$PEERS" \
        --server-pid "$SERVER_PID" --setup-timeout 30 2>"$TMP/load.err" |
        sed -n 's/^RESULT //p') || true
    d1=$(drop_counts)
    stop_server
    if [ -z "$line" ]; then
        echo "run failed: $s rate=$rate: $(head -3 "$TMP/load.err")" >&2
        line="allocations=$ALLOCS rate=$rate failed=1"
    fi
    local drops
    # shellcheck disable=SC2086 # word splitting of the three counts is the point
    drops=$(paste -d' ' <(printf '%s\n' $d0) <(printf '%s\n' $d1) |
        awk 'BEGIN { split("veth_drops srv_udp_rcvbuf_errors load_udp_rcvbuf_errors backlog_drops", k, " ") }
            { printf "%s=%d ", k[NR], $2 - $1 }')
    echo "server=$s phase=$phase bg_cores=$bg quiet_wait_s=$waited attached=$att ${drops}$line" | tee -a "$OUT" >&2
}

for _ in $(seq 1 "$REPEAT"); do
    for rate in $RATES; do
        for s in $ROWS; do
            run "$s" "$rate" sweep
        done
    done
    if [[ " $RATES " != *" $TARGET_RATE "* ]]; then
        for s in $ROWS; do
            run "$s" "$TARGET_RATE" target
        done
    fi
done

echo "# finished in $(($(date +%s) - START)) s, load average at end:$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT" >&2
python3 "$ROOT/bench/offload_table.py" --target-rate "$TARGET_RATE" "$OUT"
echo
if [ "$CHECK" = 1 ]; then
    if grep -q 'failed=1' "$OUT"; then
        echo "check: a run failed" >&2
        exit 1
    fi
    echo "check: every row ran"
else
    echo "raw results: $OUT"
fi
