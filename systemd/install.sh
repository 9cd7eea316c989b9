#!/usr/bin/env bash
# Install (or remove) the edge visual-inspection agent on a camera (Raspberry Pi OS Bookworm, Debian).
#
#   sudo systemd/install.sh                 install from this checkout and enable the service and timer
#   sudo systemd/install.sh --uninstall     remove it; keep /etc/edge-agent and /var/lib/edge-agent{,-<instance>}
#   sudo systemd/install.sh --uninstall --purge   ... and delete them and the edge-agent user too
#
# Options: --root DIR (install into DIR instead of /, for packaging and tests: no user, no apt, no systemctl),
#          --package SPEC (what pip installs, default: this checkout), --no-apt, --no-pip, --no-enable.
# Running it twice changes nothing. The device install never pulls TensorFlow (no converter extra).
#
# The camera stack comes from apt, never from pip: python3-picamera2 (Raspberry Pi OS's archive; absent from
# plain Debian, which is reported and skipped) and python3-numpy, which picamera2's compiled parts (simplejpeg,
# ...) are built against. The venv sees them through --system-site-packages, and $PREFIX/constraints.txt
# (written by write_constraints below, the one place that rule lives) pins numpy to the version the system
# python3 imports, so pip can never put a second numpy in the venv that shadows apt's: with a numpy 2 there,
# apt's extensions fail with "numpy.dtype size changed" (picamera2 issues #1088, #1211).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
ROOT=""
PACKAGE="$REPO"
PIP=1
APT=1
ENABLE=1
UNINSTALL=0
PURGE=0

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="$(realpath -m "$2")"; shift 2 ;;
        --package) PACKAGE="$2"; shift 2 ;;
        --no-pip) PIP=0; shift ;;
        --no-apt) APT=0; shift ;;
        --no-enable) ENABLE=0; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

PREFIX="$ROOT/opt/edge-agent"
UNITS="$ROOT/etc/systemd/system"
RULES="$ROOT/etc/udev/rules.d"
CONF="$ROOT/etc/edge-agent"
STATE="$ROOT/var/lib/edge-agent"
LIVE=0; [ -z "$ROOT" ] && LIVE=1

say() { echo "install.sh: $*"; }

if [ "$LIVE" = 1 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo), or give --root DIR" >&2
    exit 1
fi

die() { echo "install.sh: $*" >&2; exit 1; }

# Copy a file only when its content differs, so a second run leaves every file (and its mtime) alone.
put() {  # put MODE SRC DST
    if ! cmp -s "$2" "$3"; then
        install -D -m "$1" "$2" "$3"
        say "wrote $3"
    fi
}

systemctl_live() { [ "$LIVE" = 1 ] && command -v systemctl >/dev/null && systemctl "$@"; }

if [ "$UNINSTALL" = 1 ]; then
    systemctl_live disable --now edge-agent-retrain.timer edge-agent.service 2>/dev/null || true
    systemctl_live stop 'edge-agent@*.service' 2>/dev/null || true  # one per camera (edge-agent@.service)
    rm -f "$UNITS/edge-agent.service" "$UNITS/edge-agent@.service" "$UNITS/edge-agent-retrain.service" \
          "$UNITS/edge-agent-retrain.timer" "$RULES/60-edge-agent-coral.rules" \
          "$UNITS"/multi-user.target.wants/edge-agent@*.service
    rm -rf "$PREFIX"
    systemctl_live daemon-reload || true
    if [ "$PURGE" = 1 ]; then
        rm -rf "$CONF" "$STATE" "$STATE"-*  # -*: the state of each edge-agent@ instance
        if [ "$LIVE" = 1 ] && id edge-agent >/dev/null 2>&1; then userdel edge-agent; fi
        say "removed, including configuration, fitted models and the verdict spool"
    else
        say "removed; kept $CONF and $STATE (use --purge to delete them)"
    fi
    exit 0
fi

# 1. The unprivileged user, in the groups that reach the camera and the Coral.
if [ "$LIVE" = 1 ]; then
    for g in video plugdev; do getent group "$g" >/dev/null || groupadd --system "$g"; done
    if ! id edge-agent >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/edge-agent --no-create-home --shell /usr/sbin/nologin \
                --groups video,plugdev edge-agent
        say "created user edge-agent"
    fi
fi

# 2. The system packages, from apt (live installs only): the venv module, numpy, and picamera2 where the apt
#    sources have it (Raspberry Pi OS does; plain Debian does not, and a USB/RTSP camera or a folder needs none).
apt_candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print ($2 == "(none)" ? "" : $2) }'; }
if [ "$LIVE" = 1 ] && [ "$APT" = 1 ] && command -v apt-get >/dev/null; then
    # No candidate for python3-venv means the package lists were never downloaded (a fresh image): fetch them.
    [ -n "$(apt_candidate python3-venv)" ] || apt-get update -q || die "apt-get update failed; fix the apt sources"
    pkgs="python3-venv python3-numpy"
    if [ -n "$(apt_candidate python3-picamera2)" ]; then
        pkgs="$pkgs python3-picamera2"
    else
        say "python3-picamera2 is not in this system's apt sources (plain Debian, not Raspberry Pi OS): skipped;" \
            "[source] kind = \"picamera2\" needs it, kind = \"opencv\" or \"folder\" do not"
    fi
    # --no-install-recommends: what picamera2's README gives for Raspberry Pi OS Lite (no GUI/preview stack).
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs \
        || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs; } \
        || die "apt-get install $pkgs failed (see above); fix apt, or rerun with --no-apt to skip this step"
fi

# 3. The virtual environment; system site packages so apt's picamera2 and numpy are seen.
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    python3 -m venv --system-site-packages "$PREFIX/venv"
    say "created $PREFIX/venv"
fi

# The numpy the system python3 imports (apt's on Raspberry Pi OS), as "VERSION PATH"; empty when it has none.
# -s: not the user's ~/.local site. It is asked, not the venv, whose own numpy (from an older install) would hide it.
system_numpy() {
    python3 -s -c 'import os, numpy; print(numpy.__version__, os.path.dirname(numpy.__file__))' 2>/dev/null || true
}

# The pip constraints for the venv, in one place. With a system numpy: pin exactly that version, so pip keeps
# using apt's (installed, visible through --system-site-packages) and never installs another. With a numpy 1.x
# there: also keep OpenCV's wheel below 4.12, the first opencv-python-headless to require numpy>=2 (4.11.0.86
# accepts numpy>=1.23.5 on Python 3.11; 4.12.0.88 wants numpy>=2,<2.3, 4.13 and 5.x numpy>=2, per their wheel
# METADATA). ai-edge-litert (every release 1.4.0-2.3.0) asks only numpy>=1.23.2. Without a system numpy nothing
# from apt can break, so pip chooses freely.
write_constraints() {  # write_constraints FILE
    local version path tmp
    read -r version path <<<"$(system_numpy)" || true
    tmp="$(mktemp)"
    {
        echo "# Written by systemd/install.sh: keeps pip from replacing the system numpy in this venv (see install.sh)."
        if [ -n "${version:-}" ]; then
            echo "# numpy: what the system python3 imports, from $path"
            echo "numpy==$version"
            case "$version" in
                0.*|1.*) echo "opencv-python-headless<4.12" ;;
            esac
        else
            echo "# The system python3 imports no numpy: nothing to protect, pip chooses."
        fi
    } >"$tmp"
    put 0644 "$tmp" "$1"
    rm -f "$tmp"
}
write_constraints "$PREFIX/constraints.txt"

if [ "$PIP" = 1 ]; then
    read -r sys_version sys_path <<<"$(system_numpy)" || true
    venv_numpy() { "$PREFIX/venv/bin/python" -c 'import os, numpy; print(numpy.__version__, os.path.dirname(numpy.__file__))' 2>/dev/null || true; }
    # Repair an install made before the constraint: a numpy of the venv's own shadows apt's, so remove it.
    if [ -n "${sys_version:-}" ]; then
        read -r v_version v_path <<<"$(venv_numpy)" || true
        if [ -n "${v_version:-}" ] && [ "$v_path" != "$sys_path" ]; then
            say "removing numpy $v_version from the venv ($v_path): it shadows the system's $sys_version"
            "$PREFIX/venv/bin/pip" uninstall --quiet --yes numpy
        fi
    fi
    "$PREFIX/venv/bin/pip" install --quiet --upgrade --constraint "$PREFIX/constraints.txt" "$PACKAGE"
    # Prove it: the venv must import the system's numpy, and apt's picamera2 (built against it) must import.
    if [ -n "${sys_version:-}" ]; then
        read -r v_version v_path <<<"$(venv_numpy)" || true
        [ "${v_path:-}" = "$sys_path" ] \
            || die "the venv imports numpy ${v_version:-?} from ${v_path:-?}, not the system's $sys_version from $sys_path: apt's picamera2 would break; report this with $PREFIX/constraints.txt"
        say "numpy $sys_version from $sys_path (the system's), as pinned in $PREFIX/constraints.txt"
    fi
    if [ "$LIVE" = 1 ] && python3 -s -c 'import picamera2' 2>/dev/null; then
        err="$("$PREFIX/venv/bin/python" -c 'import picamera2' 2>&1)" \
            || die "the venv cannot import apt's picamera2 (the system python3 can): ${err##*$'\n'}"
        say "picamera2 (apt) imports in the venv"
    fi
fi

# 4. Units, udev rules, example configuration (never overwriting the operator's).
for unit in edge-agent.service edge-agent@.service edge-agent-retrain.service edge-agent-retrain.timer; do
    put 0644 "$HERE/$unit" "$UNITS/$unit"
done
put 0644 "$HERE/60-edge-agent-coral.rules" "$RULES/60-edge-agent-coral.rules"
mkdir -p "$CONF"
[ -e "$CONF/config.toml" ] || { install -m 0640 "$HERE/config.example.toml" "$CONF/config.toml"; say "wrote $CONF/config.toml"; }
[ -e "$CONF/edge-agent.env" ] || { install -m 0640 "$HERE/edge-agent.env.example" "$CONF/edge-agent.env"; say "wrote $CONF/edge-agent.env"; }
if [ "$LIVE" = 1 ]; then
    chgrp edge-agent "$CONF/config.toml" "$CONF/edge-agent.env"
    command -v udevadm >/dev/null && udevadm control --reload-rules && udevadm trigger --subsystem-match=usb || true
fi

# 5. Start it, and the shift-start timer.
systemctl_live daemon-reload || true
if [ "$ENABLE" = 1 ]; then
    systemctl_live enable --now edge-agent.service edge-agent-retrain.timer || true
fi
say "done: configure $CONF/config.toml, then: systemctl restart edge-agent; journalctl -u edge-agent -f"
