#!/usr/bin/env bash
# Install (or remove) the edge visual-inspection agent on a camera (Raspberry Pi OS Bookworm, Debian).
#
#   sudo systemd/install.sh                 install from this checkout and enable the service and timer
#   sudo systemd/install.sh --uninstall     remove it; keep /etc/edge-agent and /var/lib/edge-agent
#   sudo systemd/install.sh --uninstall --purge   ... and delete them and the edge-agent user too
#
# Options: --root DIR (install into DIR instead of /, for packaging and tests: no user, no systemctl),
#          --package SPEC (what pip installs, default: this checkout), --no-pip, --no-enable.
# Running it twice changes nothing. The device install never pulls TensorFlow (no converter extra).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
ROOT=""
PACKAGE="$REPO"
PIP=1
ENABLE=1
UNINSTALL=0
PURGE=0

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="$(realpath -m "$2")"; shift 2 ;;
        --package) PACKAGE="$2"; shift 2 ;;
        --no-pip) PIP=0; shift ;;
        --no-enable) ENABLE=0; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
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
    rm -f "$UNITS/edge-agent.service" "$UNITS/edge-agent-retrain.service" "$UNITS/edge-agent-retrain.timer" \
          "$RULES/60-edge-agent-coral.rules"
    rm -rf "$PREFIX"
    systemctl_live daemon-reload || true
    if [ "$PURGE" = 1 ]; then
        rm -rf "$CONF" "$STATE"
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

# 2. The virtual environment; system site packages so picamera2 from apt (python3-picamera2) is seen.
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    python3 -m venv --system-site-packages "$PREFIX/venv"
    say "created $PREFIX/venv"
fi
if [ "$PIP" = 1 ]; then
    "$PREFIX/venv/bin/pip" install --quiet --upgrade "$PACKAGE"
fi

# 3. Units, udev rules, example configuration (never overwriting the operator's).
for unit in edge-agent.service edge-agent-retrain.service edge-agent-retrain.timer; do
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

# 4. Start it, and the shift-start timer.
systemctl_live daemon-reload || true
if [ "$ENABLE" = 1 ]; then
    systemctl_live enable --now edge-agent.service edge-agent-retrain.timer || true
fi
say "done: configure $CONF/config.toml, then: systemctl restart edge-agent; journalctl -u edge-agent -f"
