#!/usr/bin/env bash
# Installs what tests/it/coturn_uclient.rs needs: Debian's coturn package, for coturn's test
# client turnutils_uclient and its echo peer turnutils_peer. Idempotent: does nothing when
# both are there.
#
# Only the tools are wanted, never coturn's server: the package enables coturn.service,
# which would start turnserver on 0.0.0.0:3478 (and 3479). A policy-rc.d that refuses every
# start (exit 101) keeps the package scripts from starting it during the install, and the
# unit is then disabled and stopped, so it does not come up at the next boot either. A
# policy-rc.d already in place (containers ship one) is left as it is.
set -euo pipefail

if command -v turnutils_uclient >/dev/null && command -v turnutils_peer >/dev/null; then
    echo "setup-coturn: $(dpkg-query -W -f='coturn ${Version}' coturn 2>/dev/null || echo 'turnutils present')"
    exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# setup-coturn.sh: no service starts while coturn installs\nexit 101\n' \
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

echo "setup-coturn: installing coturn"
$sudo apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends coturn

# The package enabled coturn.service; turn it off where systemd runs (and keep it off).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    $sudo systemctl disable --now coturn.service >/dev/null 2>&1 || true
fi
if pgrep -x turnserver >/dev/null; then
    echo "setup-coturn: warning: a turnserver is running (not started by this script)" >&2
fi
if ! command -v turnutils_uclient >/dev/null || ! command -v turnutils_peer >/dev/null; then
    echo "setup-coturn: coturn is installed but turnutils_uclient or turnutils_peer is not on PATH" >&2
    exit 1
fi
echo "setup-coturn: $(dpkg-query -W -f='coturn ${Version}' coturn)"
