#!/usr/bin/env bash
# Installs what tests/it/browser.rs needs: Debian's chromium, node/npm, and playwright-core
# (pinned in tests/browser/package-lock.json). Idempotent: does nothing when all are there.
# playwright-core drives the system chromium; it never downloads a browser build.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-browser: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "setup-browser: warning: node $(node --version) is older than playwright-core needs (20)" >&2
fi

dir=tests/browser
want=$(grep -m1 -A1 '"node_modules/playwright-core"' "$dir/package-lock.json" \
    | sed -n 's/.*"version": "\(.*\)".*/\1/p')
have=$(sed -n 's/^  "version": "\(.*\)".*/\1/p' "$dir/node_modules/playwright-core/package.json" 2>/dev/null || true)
if [ -z "$want" ] || [ "$want" != "$have" ]; then
    echo "setup-browser: npm ci in $dir (playwright-core ${want:-?})"
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
/usr/bin/chromium --version 2>/dev/null || true
echo "setup-browser: node $(node --version), playwright-core $(cd "$dir" && node -p 'require("playwright-core/package.json").version')"
