#!/usr/bin/env bash
# The Debian package, end to end, on this machine (as root): installs cargo-deb when missing,
# builds target/debian/turnd_<version>-1_<arch>.deb (`cargo deb`, a release build), installs
# it with `dpkg -i`, checks what it installed (binary, unit and its drop-in, which
# `systemd-analyze verify` must pass, the conffile
# owned root:turnd 0640, the turnd system user) and runs the installed
# `turnd check-config /etc/turnd/turnserver.toml`, then purges it and checks that the user,
# the binary and /etc/turnd are gone. Any failing step fails the script (and CI).
#
# A turnd package already installed here (an operator's) is left alone: the script stops
# with an error instead of replacing and purging it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
fail() { echo "package: $*" >&2; exit 1; }

if ! cargo deb --version >/dev/null 2>&1; then
    echo "package: installing cargo-deb"
    cargo install cargo-deb --locked
fi
# dpkg-shlibdeps computes the package's library dependencies ($auto in Cargo.toml);
# adduser is what the maintainer scripts call.
missing=()
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
command -v adduser >/dev/null || missing+=(adduser)
if [ "${#missing[@]}" -gt 0 ]; then
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if dpkg-query -W -f='${db:Status-Status}' turnd 2>/dev/null | grep -qv '^not-installed$'; then
    fail "a turnd package is already installed on this machine; not touching it"
fi

echo "package: $(cargo deb --version)"
deb=$(cargo deb --locked | tail -n 1)
[ -f "$deb" ] || fail "cargo deb printed no package path (got: $deb)"
echo "package: built $deb ($(stat -c %s "$deb") bytes)"
dpkg-deb --info "$deb" | sed -n 's/^ \(Depends\|Version\):/package:   &/p'

purge() { $sudo dpkg --purge turnd >/dev/null 2>&1 || true; }
trap purge EXIT
$sudo dpkg -i "$deb"

[ -x /usr/bin/turnd ] || fail "/usr/bin/turnd is not installed"
[ -f /lib/systemd/system/turnd.service ] || fail "the systemd unit is not installed"
grep -q '^ExecStart=/usr/bin/turnd --config /etc/turnd/turnserver.toml$' \
    /lib/systemd/system/turnd.service.d/package.conf || fail "the unit's drop-in does not start /usr/bin/turnd"
# The unit as installed, with the package's drop-in (systemd-analyze from .ci/setup-systemd.sh;
# it checks that the commands exist, so a drop-in naming another path fails here).
verify_out=$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify turnd.service 2>&1) \
    || fail "systemd-analyze verify turnd.service: $verify_out"
[ -z "$verify_out" ] || fail "systemd-analyze verify turnd.service warns: $verify_out"
dpkg-query -W -f='${Conffiles}\n' turnd | grep -q '/etc/turnd/turnserver.toml' \
    || fail "/etc/turnd/turnserver.toml is not a conffile"
getent passwd turnd >/dev/null || fail "the turnd system user was not created"
[ "$(stat -c '%U:%G %a' /etc/turnd/turnserver.toml)" = "root:turnd 640" ] \
    || fail "/etc/turnd/turnserver.toml is $(stat -c '%U:%G %a' /etc/turnd/turnserver.toml), not root:turnd 640"
/usr/bin/turnd --version
$sudo /usr/bin/turnd check-config /etc/turnd/turnserver.toml \
    || fail "turnd check-config /etc/turnd/turnserver.toml failed"
# The service runs as turnd (User=turnd in the unit): that user must be able to read it too.
$sudo runuser -u turnd -- /usr/bin/turnd check-config /etc/turnd/turnserver.toml >/dev/null \
    || fail "user turnd cannot check /etc/turnd/turnserver.toml"
echo "package: check-config of the installed /etc/turnd/turnserver.toml passed (as root and as turnd)"

$sudo dpkg --purge turnd
trap - EXIT
! getent passwd turnd >/dev/null || fail "the turnd user is still there after purge"
! getent group turnd >/dev/null || fail "the turnd group is still there after purge"
[ ! -e /usr/bin/turnd ] || fail "/usr/bin/turnd is still there after purge"
[ ! -e /etc/turnd ] || fail "/etc/turnd is still there after purge"
echo "package: installed, checked and purged"
