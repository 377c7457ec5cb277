#!/usr/bin/env bash
# Installs what tests/it/gstreamer_webrtcbin.rs and tests/it/aiortc.rs need: Debian's GStreamer
# webrtcbin with libnice (and the Python GObject bindings to drive it from /usr/bin/python3),
# and aiortc from PyPI (pinned in tests/clients/requirements.txt) in a virtualenv at
# tests/clients/.venv made with /usr/bin/python3. Idempotent: does nothing when all are there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    python3-venv
    python3-gi
    gir1.2-gstreamer-1.0
    gir1.2-gst-plugins-base-1.0
    gir1.2-gst-plugins-bad-1.0
    gir1.2-nice-0.1
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad
    gstreamer1.0-nice
)
missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-clients: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

dir=tests/clients
venv=$dir/.venv
req=$dir/requirements.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "setup-clients: pip install -r $req into $venv"
    [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$req"
    echo "$want" >"$stamp"
fi
echo "setup-clients: GStreamer $(dpkg-query -W -f='${Version}' gstreamer1.0-plugins-bad)," \
    "libnice $(dpkg-query -W -f='${Version}' gstreamer1.0-nice)," \
    "aiortc $("$venv/bin/python" -c 'import aiortc; print(aiortc.__version__)')"
