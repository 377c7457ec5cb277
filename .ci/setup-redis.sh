#!/usr/bin/env bash
# Installs what the fleet tests (tests/it/fleet_*.rs) need: Debian's redis-server and
# redis-cli. The tests start their own redis-server on loopback, on a port and in a data
# directory of their own, and end it by pid; the package's own service is not wanted, so
# it is kept from starting (as setup-coturn.sh does for coturn). Idempotent: does nothing
# when both binaries are there.
set -euo pipefail

if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    echo "setup-redis: $(redis-server --version | cut -d' ' -f1-3)"
    exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# setup-redis.sh: no service starts while redis-server installs\nexit 101\n' \
        | $sudo tee "$policy" >/dev/null
    $sudo chmod 0755 "$policy"
    made_policy=1
fi
remove_policy() {
    if [ -n "$made_policy" ]; then
        $sudo rm -f "$policy"
    fi
}
trap remove_policy EXIT

echo "setup-redis: installing redis-server"
$sudo apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server redis-tools

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    $sudo systemctl disable --now redis-server.service >/dev/null 2>&1 || true
fi
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "setup-redis: redis-server is installed but redis-server or redis-cli is not on PATH" >&2
    exit 1
fi
echo "setup-redis: $(redis-server --version | cut -d' ' -f1-3)"
