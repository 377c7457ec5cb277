#!/usr/bin/env bash
# The fleet's costs (docs/fleet.md): first-Allocate latency of a user from the file and of
# a user that lives only in Redis, then with a per-user quota in force (strict fleet
# quotas: each Allocate parked while a lease is taken in Redis), and the Redis commands
# one allocation costs. Starts its
# own redis-server and turnd (release builds) on loopback, ends them by pid at exit.
#
#   bench/fleet.sh          2000 clients per user (N=... to change)
#
# Prints the percentiles of tools/examples/first_allocate.rs, and Redis' own count of the
# commands processed (INFO stats) during each run and at rest.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${N:-2000}
cargo build --release --bin turnd -p turnd -q
cargo build --release -p turnd-tools --example first_allocate -q
BIN=$ROOT/target/release/turnd
EX=$ROOT/target/release/examples/first_allocate
D=$(mktemp -d)
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --dir "$D" --save "" --appendonly no \
    --daemonize no >"$D/redis.log" 2>&1 &
RPID=$!
TPID=
cleanup() {
    kill "$RPID" 2>/dev/null || true
    [ -n "$TPID" ] && kill -9 "$TPID" 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$RP" PING >/dev/null 2>&1 && break; sleep 0.1; done
KEY=$(printf 'gorst:bench.test:hero' | md5sum | cut -d' ' -f1)
redis-cli -p "$RP" SET turn/realm/bench.test/user/gorst/key "$KEY" >/dev/null
cmds() { redis-cli -p "$RP" INFO stats | tr -d '\r' | awk -F: '/^total_commands_processed/{print $2}'; }

for mode in plain redis strict; do
    P=$(free_port)
    {
        echo "[server]"; echo "listen = [\"127.0.0.1:$P\"]"; echo "realm = \"bench.test\""
        echo "workers = 1"
        echo "[auth]"; echo 'users = [{ name = "alice", password = "wonderland" }]'
        # One client address asks thousands of 401s: no reflection budget here.
        echo "[limits]"; echo "unauth-rate = 0"
        # A quota no client reaches: every Allocate takes (and gives back) a lease.
        if [ "$mode" = strict ]; then echo "[allocation]"; echo "user-quota = 1000000"; fi
        if [ "$mode" != plain ]; then echo "[redis]"; echo "url = \"redis://127.0.0.1:$RP\""; fi
    } >"$D/$mode.toml"
    "$BIN" --config "$D/$mode.toml" >"$D/$mode.log" 2>&1 &
    TPID=$!
    sleep 1.5
    users="alice:wonderland"
    [ "$mode" != plain ] && users="alice:wonderland gorst:hero"
    for u in $users; do
        before=$(cmds)
        echo "[$mode] $("$EX" "127.0.0.1:$P" "$u" "$N")"
        if [ "$mode" != plain ]; then
            sleep 2 # the events go out with the node's next round
            after=$(cmds)
            echo "[$mode] $u: $((after - before - 1)) Redis commands for $N allocations (events included, plus about 3 a second at rest)"
        fi
    done
    if [ "$mode" = redis ]; then
        b=$(cmds); sleep 10; a=$(cmds)
        echo "[$mode] at rest: $((a - b - 1)) Redis commands in 10 s"
    fi
    kill -9 "$TPID"; wait "$TPID" 2>/dev/null || true; TPID=
done
