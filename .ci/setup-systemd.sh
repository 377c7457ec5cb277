#!/usr/bin/env bash
# Installs what tests/it/systemd_unit.rs needs: `systemd-analyze` (package systemd) and the
# `kill` the unit's ExecReload runs (package procps). Idempotent: installs only what is missing.
set -euo pipefail
missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || missing+=(procps)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
systemd-analyze --version | head -n 1
