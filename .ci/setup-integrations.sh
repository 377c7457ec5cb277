#!/usr/bin/env bash
# Installs what tests/it/recipes.rs and tests/it/janus_echotest.rs need: Debian's golang-go
# and openssl (the Go and shell credential recipes; node comes from setup-browser.sh, python3
# is Debian's), Debian's janus (1.1.2) with its HTTP transport and echotest plugin, and
# iproute2 (the Janus test's network namespace). Idempotent: installs only what is missing.
#
# Only Janus's binary and plugins are wanted, never its service: the package enables
# janus.service, so a policy-rc.d that refuses every start (exit 101) keeps the package
# scripts from starting it, and the unit is then disabled and stopped where systemd runs.
# A policy-rc.d already in place (containers ship one) is left as it is.
set -euo pipefail

packages=(golang-go openssl janus iproute2)
missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$p")
done

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
    policy=/usr/sbin/policy-rc.d
    made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# setup-integrations.sh: no service starts while janus installs\nexit 101\n' \
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
    echo "setup-integrations: installing ${missing[*]}"
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        $sudo systemctl disable --now janus.service >/dev/null 2>&1 || true
    fi
fi
if pgrep -x janus >/dev/null; then
    echo "setup-integrations: warning: a janus is running (not started by this script)" >&2
fi
echo "setup-integrations: $(go version), $(openssl version), janus $(dpkg-query -W -f='${Version}' janus)"
